//! Files in and out: potentials and G as .npy, H0 as safetensors.

use crate::error::{BkError, Result};
use crate::problem::H0;
use num_complex::Complex32;
use npyz::WriterBuilder;
use std::path::Path;

/// A batch of potentials as read from disk, in its stored precision.
#[derive(Clone, Debug, PartialEq)]
pub enum Potentials {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

/// A (rows, n) batch of potentials.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub rows: usize,
    pub n: usize,
    pub data: Potentials,
}

impl Batch {
    /// The potentials in f32 (f64 inputs are rounded).
    pub fn to_f32(&self) -> Vec<f32> {
        match &self.data {
            Potentials::F32(x) => x.clone(),
            Potentials::F64(x) => x.iter().map(|&v| v as f32).collect(),
        }
    }
    pub fn to_f64(&self) -> Vec<f64> {
        match &self.data {
            Potentials::F32(x) => x.iter().map(|&v| v as f64).collect(),
            Potentials::F64(x) => x.clone(),
        }
    }
    pub fn as_input(&self) -> crate::backend::VInput<'_> {
        match &self.data {
            Potentials::F32(x) => crate::backend::VInput::F32(x),
            Potentials::F64(x) => crate::backend::VInput::F64(x),
        }
    }
}

fn file_err(path: &Path, msg: impl Into<String>) -> BkError {
    BkError::File { path: path.to_path_buf(), msg: msg.into() }
}

/// Reads potentials of shape (B, N) or (N,) (one row) from a .npy file of float32, float64 or
/// float16 (C order; Fortran-order 2-D arrays are transposed on read).
pub fn read_potentials(path: &Path) -> Result<Batch> {
    let bytes = std::fs::read(path).map_err(|e| BkError::io(path, e))?;
    read_potentials_bytes(&bytes, path)
}

/// [`read_potentials`] from bytes already in memory; `path` names the source in errors.
pub fn read_potentials_bytes(bytes: &[u8], path: &Path) -> Result<Batch> {
    let npy = npyz::NpyFile::new(bytes).map_err(|e| file_err(path, format!("not a readable .npy file: {e}")))?;
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let (rows, n) = match shape.as_slice() {
        [n] => (1, *n),
        [b, n] => (*b, *n),
        _ => return Err(file_err(path, format!("expected shape (B, N) or (N,), got {shape:?}"))),
    };
    if n == 0 || rows == 0 {
        return Err(file_err(path, format!("empty array of shape {shape:?}: need B ≥ 1 and N ≥ 1")));
    }
    let fortran = npy.order() == npyz::Order::Fortran;
    let descr = npy.dtype().descr().trim_matches('\'').to_string();
    let expected = rows * n;
    let truncated = |e: std::io::Error| file_err(path, format!("cannot read {expected} values of {descr}: {e} (truncated file?)"));
    let data = match descr.trim_start_matches(['<', '|', '=']) {
        "f4" => Potentials::F32(npy.into_vec::<f32>().map_err(truncated)?),
        "f8" => Potentials::F64(npy.into_vec::<f64>().map_err(truncated)?),
        "f2" => Potentials::F32(npy.into_vec::<half::f16>().map_err(truncated)?.into_iter().map(f32::from).collect()),
        other => {
            return Err(file_err(
                path,
                format!("dtype `{other}` is not supported: potentials must be float32, float64 or float16 (little-endian)"),
            ))
        }
    };
    let len = match &data {
        Potentials::F32(x) => x.len(),
        Potentials::F64(x) => x.len(),
    };
    if len != expected {
        return Err(file_err(path, format!("header says {expected} values, file holds {len} (truncated file?)")));
    }
    let data = if fortran && rows > 1 {
        match data {
            Potentials::F32(x) => Potentials::F32(transpose(&x, rows, n)),
            Potentials::F64(x) => Potentials::F64(transpose(&x, rows, n)),
        }
    } else {
        data
    };
    Ok(Batch { rows, n, data })
}

/// Column-major (rows, n) to row-major.
fn transpose<T: Copy>(x: &[T], rows: usize, n: usize) -> Vec<T> {
    (0..rows * n).map(|k| x[(k % n) * rows + k / n]).collect()
}

/// Writes G as complex64 of shape (rows, n).
pub fn write_complex64(path: &Path, rows: usize, n: usize, g: &[Complex32]) -> Result<()> {
    if g.len() != rows * n {
        return Err(BkError::shape("g", format!("({rows}, {n})"), format!("{} values", g.len())));
    }
    let file = std::fs::File::create(path).map_err(|e| BkError::io(path, e))?;
    let mut w = std::io::BufWriter::new(file);
    let io = |e: std::io::Error| BkError::io(path, e);
    let mut writer = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&[rows as u64, n as u64])
        .writer(&mut w)
        .begin_nd()
        .map_err(io)?;
    writer.extend(g.iter().copied()).map_err(io)?;
    writer.finish().map_err(io)?;
    Ok(())
}

/// Writes a float32 array of the given shape (for potentials in tests and examples).
pub fn write_f32(path: &Path, shape: &[usize], x: &[f32]) -> Result<()> {
    let file = std::fs::File::create(path).map_err(|e| BkError::io(path, e))?;
    let mut w = std::io::BufWriter::new(file);
    let io = |e: std::io::Error| BkError::io(path, e);
    let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    let mut writer = npyz::WriteOptions::new().default_dtype().shape(&shape).writer(&mut w).begin_nd().map_err(io)?;
    writer.extend(x.iter().copied()).map_err(io)?;
    writer.finish().map_err(io)?;
    Ok(())
}

/// Reads G written by [`write_complex64`] (or NumPy): (rows, n, values).
pub fn read_complex64(path: &Path) -> Result<(usize, usize, Vec<Complex32>)> {
    let bytes = std::fs::read(path).map_err(|e| BkError::io(path, e))?;
    let npy = npyz::NpyFile::new(&bytes[..]).map_err(|e| file_err(path, format!("not a readable .npy file: {e}")))?;
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let [rows, n] = shape[..] else {
        return Err(file_err(path, format!("expected shape (B, N), got {shape:?}")));
    };
    let g = npy.into_vec::<Complex32>().map_err(|e| file_err(path, format!("not complex64 data: {e}")))?;
    Ok((rows, n, g))
}

/// Reads H0 from a safetensors file with 1-D tensors `h0_diag` (N), `h0_super` and `h0_sub`
/// (N − 1), of dtype F64, F32 or F16.
pub fn read_h0(path: &Path) -> Result<H0> {
    let bytes = std::fs::read(path).map_err(|e| BkError::io(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| file_err(path, format!("not a readable safetensors file: {e}")))?;
    let get = |name: &str| -> Result<Vec<f64>> {
        let t = st.tensor(name).map_err(|_| BkError::ModelTensor {
            path: path.to_path_buf(),
            tensor: name.into(),
            msg: format!("missing (the file holds: {})", st.names().join(", ")),
        })?;
        if t.shape().len() != 1 {
            return Err(BkError::ModelTensor { path: path.to_path_buf(), tensor: name.into(), msg: format!("must be 1-D, has shape {:?}", t.shape()) });
        }
        tensor_to_f64(&t).map_err(|msg| BkError::ModelTensor { path: path.to_path_buf(), tensor: name.into(), msg })
    };
    let h0 = H0 { diag: get("h0_diag")?, sup: get("h0_super")?, sub: get("h0_sub")? };
    h0.validate(h0.n()).map_err(|e| file_err(path, e.to_string()))?;
    Ok(h0)
}

/// Writes H0 as a safetensors file readable by [`read_h0`].
pub fn write_h0(path: &Path, h0: &H0) -> Result<()> {
    let tensors = [("h0_diag", &h0.diag), ("h0_super", &h0.sup), ("h0_sub", &h0.sub)];
    let bytes: Vec<(String, Vec<u8>, usize)> =
        tensors.iter().map(|(name, x)| (name.to_string(), bytemuck::cast_slice::<f64, u8>(x).to_vec(), x.len())).collect();
    let views = bytes
        .iter()
        .map(|(name, b, len)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F64, vec![*len], b).map(|v| (name.clone(), v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| file_err(path, e.to_string()))?;
    let out = safetensors::serialize(views, None).map_err(|e| file_err(path, e.to_string()))?;
    std::fs::write(path, out).map_err(|e| BkError::io(path, e))
}

/// Converts a float tensor's little-endian bytes to f64.
pub(crate) fn tensor_to_f64(t: &safetensors::tensor::TensorView<'_>) -> std::result::Result<Vec<f64>, String> {
    let d = t.data();
    Ok(match t.dtype() {
        safetensors::Dtype::F64 => d.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap_or([0; 8]))).collect(),
        safetensors::Dtype::F32 => d.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap_or([0; 4])) as f64).collect(),
        safetensors::Dtype::F16 => {
            d.chunks_exact(2).map(|b| half::f16::from_le_bytes(b.try_into().unwrap_or([0; 2])).to_f64()).collect()
        }
        other => return Err(format!("dtype {other:?} is not supported (expected F64, F32 or F16)")),
    })
}
