//! Model files: one safetensors file holds, per BK layer, N, H0, z and the quantization plan
//! (format of v and G, all scales and zero points), plus metadata. Loading validates everything
//! and names the tensor or key at fault.
//!
//! Layout (format version 1), for each layer k:
//! - tensors `layers.{k}.h0_diag` F64 [N], `layers.{k}.h0_super` / `h0_sub` F64 [N−1],
//!   `layers.{k}.z` F64 [2] (re, im);
//! - for each quantized static tensor t ∈ {v, g.re, g.im}: `layers.{k}.{t}.scale` F32 [groups]
//!   and, when asymmetric, `layers.{k}.{t}.zero` I16 [groups];
//! - metadata `layers.{k}.n`, `layers.{k}.{v|g}.precision` (fp32 | int8 | int4),
//!   `.group_size`, `.symmetric`, `.dynamic`.
//!
//! Global metadata: `format` = `bk-infer-model`, `format_version`, `layers`,
//! `calibration_method`, `calibration_samples`, `created_by`.
//!
//! Format version 2 adds per-tensor floating-point storage (see [`crate::precision`]):
//! - `layers.{k}.{v|g}.precision` may also be `fp16` or `bf16` (unquantized v or G stored in it);
//! - `layers.{k}.h0.precision` ∈ fp64 | fp32 | fp16 | bf16 | int8 | int4 (absent: fp64, as in
//!   version 1). Float H0 tensors have that dtype (F64, F32, F16, BF16). Integer H0 stores each
//!   part's codes in `layers.{k}.h0_{diag|super|sub}` (I8, or U8 with two INT4 codes per byte,
//!   low nibble first), with `.scale` F32 and `.zero` I16 per group of
//!   `layers.{k}.h0.group_size` positions (asymmetric, static).
//!
//! Files that use none of this are written as version 1, so older readers still read them;
//! this build reads both versions.

use crate::error::{BkError, Result};
use crate::plan::QuantPlan;
use crate::problem::{Problem, H0};
use crate::precision::{FloatFormat, H0Storage, LayerPrecision, Storage};
use crate::quant::{AffineParams, Bits, ComplexQuant, QTensor, QuantSpec, TensorQuant};
use num_complex::Complex64;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub const FORMAT: &str = "bk-infer-model";
/// The newest version this build writes (only when needed) and reads.
pub const FORMAT_VERSION: u32 = 2;

/// One BK layer: its problem and how its tensors are stored.
#[derive(Clone, Debug)]
pub struct Layer {
    /// H0 here holds the values the stored H0 decodes to.
    pub problem: Problem,
    pub plan: QuantPlan,
    /// Float formats of what the plan leaves unquantized, and H0's storage.
    pub storage: Storage,
}

impl Layer {
    /// The precision of each tensor.
    pub fn precision(&self) -> LayerPrecision {
        LayerPrecision::of(&self.plan, &self.storage)
    }
}

/// Where a model came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelMeta {
    pub calibration_method: String,
    pub calibration_samples: usize,
    pub created_by: String,
}

impl Default for ModelMeta {
    fn default() -> Self {
        ModelMeta {
            calibration_method: "none".into(),
            calibration_samples: 0,
            created_by: format!("bk-infer {}", env!("CARGO_PKG_VERSION")),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Model {
    pub layers: Vec<Layer>,
    pub meta: ModelMeta,
}

impl Model {
    pub fn single(problem: Problem, plan: QuantPlan, meta: ModelMeta) -> Result<Self> {
        plan.validate(problem.n())?;
        Ok(Model { layers: vec![Layer { problem, plan, storage: Storage::default() }], meta })
    }

    /// Layer `k`, or an error naming the valid range.
    pub fn layer(&self, k: usize) -> Result<&Layer> {
        self.layers.get(k).ok_or_else(|| {
            BkError::InvalidArgument(format!("layer {k} does not exist: the model has {} layer(s)", self.layers.len()))
        })
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = self.to_bytes(path)?;
        std::fs::write(path, bytes).map_err(|e| BkError::io(path, e))
    }

    pub fn load(path: &Path) -> Result<Model> {
        let bytes = std::fs::read(path).map_err(|e| BkError::io(path, e))?;
        Self::from_bytes(&bytes, path)
    }

    /// Serialises to safetensors bytes; `path` only names the file in errors.
    pub fn to_bytes(&self, path: &Path) -> Result<Vec<u8>> {
        let mut meta: HashMap<String, String> = HashMap::new();
        meta.insert("format".into(), FORMAT.into());
        let v2 = self.layers.iter().any(|l| l.storage != Storage::default());
        meta.insert("format_version".into(), if v2 { FORMAT_VERSION } else { 1 }.to_string());
        meta.insert("layers".into(), self.layers.len().to_string());
        meta.insert("calibration_method".into(), self.meta.calibration_method.clone());
        meta.insert("calibration_samples".into(), self.meta.calibration_samples.to_string());
        meta.insert("created_by".into(), self.meta.created_by.clone());
        let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        let f64s = |x: &[f64]| x.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
        for (k, layer) in self.layers.iter().enumerate() {
            let p = &layer.problem;
            let n = p.n();
            let pre = format!("layers.{k}");
            meta.insert(format!("{pre}.n"), n.to_string());
            put_h0(&mut tensors, &mut meta, &pre, p.h0(), &layer.storage.h0, path)?;
            tensors.push((format!("{pre}.z"), Dtype::F64, vec![2], f64s(&[p.z().re, p.z().im])));
            let mut put = |name: String, tq: Option<&TensorQuant>, float: FloatFormat| {
                let Some(tq) = tq else {
                    meta.insert(format!("{name}.precision"), float.precision().label());
                    return;
                };
                let s = tq.spec;
                meta.insert(format!("{name}.precision"), bits_name(s.bits).into());
                meta.insert(format!("{name}.group_size"), s.group_size.to_string());
                meta.insert(format!("{name}.symmetric"), s.symmetric.to_string());
                meta.insert(format!("{name}.dynamic"), s.dynamic.to_string());
                if let Some(params) = &tq.params {
                    let scale: Vec<u8> = params.scale.iter().flat_map(|v| v.to_le_bytes()).collect();
                    tensors.push((format!("{name}.scale"), Dtype::F32, vec![params.scale.len()], scale));
                    if let Some(z) = &params.zero {
                        let zero: Vec<u8> = z.iter().flat_map(|v| v.to_le_bytes()).collect();
                        tensors.push((format!("{name}.zero"), Dtype::I16, vec![z.len()], zero));
                    }
                }
            };
            put(format!("{pre}.v"), layer.plan.v.as_ref(), layer.storage.v);
            match &layer.plan.g {
                Some(g) => {
                    put(format!("{pre}.g.re"), Some(&g.re), FloatFormat::F32);
                    put(format!("{pre}.g.im"), Some(&g.im), FloatFormat::F32);
                    meta.insert(format!("{pre}.g.precision"), bits_name(g.re.spec.bits).into());
                }
                None => put(format!("{pre}.g"), None, layer.storage.g),
            }
        }
        let views = tensors
            .iter()
            .map(|(name, dt, shape, data)| {
                TensorView::new(*dt, shape.clone(), data).map(|v| (name.clone(), v)).map_err(|e| BkError::ModelTensor {
                    path: path.to_path_buf(),
                    tensor: name.clone(),
                    msg: e.to_string(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        safetensors::serialize(views, Some(meta)).map_err(|e| BkError::Model { path: path.to_path_buf(), msg: e.to_string() })
    }

    /// Parses and validates safetensors bytes; `path` names the file in errors.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Model> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| BkError::Model {
            path: path.to_path_buf(),
            msg: format!("not a readable safetensors file: {e}"),
        })?;
        let (_, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| BkError::Model { path: path.to_path_buf(), msg: format!("unreadable header: {e}") })?;
        let meta = header.metadata().clone().unwrap_or_default();
        let r = Reader { path: path.to_path_buf(), st, meta };
        if r.meta.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(r.err(format!("metadata `format` must be `{FORMAT}`: this is not a bk-infer model file")));
        }
        let version: u32 = r.parse("format_version")?;
        if !(1..=FORMAT_VERSION).contains(&version) {
            return Err(r.err(format!("format_version {version} is not supported (this build reads 1 to {FORMAT_VERSION})")));
        }
        let count: usize = r.parse("layers")?;
        if count == 0 {
            return Err(r.err("`layers` must be at least 1"));
        }
        let layers = (0..count).map(|k| r.layer(k)).collect::<Result<Vec<_>>>()?;
        let meta = ModelMeta {
            calibration_method: r.meta.get("calibration_method").cloned().unwrap_or_else(|| "unknown".into()),
            calibration_samples: r.parse_or("calibration_samples", 0)?,
            created_by: r.meta.get("created_by").cloned().unwrap_or_default(),
        };
        Ok(Model { layers, meta })
    }
}

fn bits_name(b: Bits) -> &'static str {
    match b {
        Bits::Int8 => "int8",
        Bits::Int4 => "int4",
    }
}

struct Reader<'a> {
    path: PathBuf,
    st: SafeTensors<'a>,
    meta: HashMap<String, String>,
}

impl Reader<'_> {
    fn err(&self, msg: impl Into<String>) -> BkError {
        BkError::Model { path: self.path.clone(), msg: msg.into() }
    }
    fn tensor_err(&self, tensor: &str, msg: impl Into<String>) -> BkError {
        BkError::ModelTensor { path: self.path.clone(), tensor: tensor.into(), msg: msg.into() }
    }

    fn parse<T: std::str::FromStr>(&self, key: &str) -> Result<T> {
        let s = self.meta.get(key).ok_or_else(|| self.err(format!("metadata key `{key}` is missing")))?;
        s.parse().map_err(|_| self.err(format!("metadata `{key}` = `{s}` is not a valid {}", std::any::type_name::<T>())))
    }

    fn parse_or<T: std::str::FromStr>(&self, key: &str, default: T) -> Result<T> {
        if self.meta.contains_key(key) {
            self.parse(key)
        } else {
            Ok(default)
        }
    }

    /// A 1-D tensor of `len` elements of `dtype`, as raw little-endian bytes.
    fn raw(&self, name: &str, dtype: Dtype, len: usize) -> Result<&[u8]> {
        let t = self.st.tensor(name).map_err(|_| self.tensor_err(name, "missing"))?;
        if t.dtype() != dtype {
            return Err(self.tensor_err(name, format!("dtype {:?}, expected {dtype:?}", t.dtype())));
        }
        if t.shape() != [len] {
            return Err(self.tensor_err(name, format!("shape {:?}, expected [{len}]", t.shape())));
        }
        Ok(t.data())
    }

    fn f64s(&self, name: &str, len: usize) -> Result<Vec<f64>> {
        let d = self.raw(name, Dtype::F64, len)?;
        let v: Vec<f64> = d.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap_or([0; 8]))).collect();
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(self.tensor_err(name, format!("element {i} is {}", v[i])));
        }
        Ok(v)
    }

    fn layer(&self, k: usize) -> Result<Layer> {
        let pre = format!("layers.{k}");
        let n: usize = self.parse(&format!("{pre}.n"))?;
        if n == 0 {
            return Err(self.err(format!("`{pre}.n` must be at least 1")));
        }
        let (h0, h0_storage) = self.h0(&pre, n)?;
        let z = self.f64s(&format!("{pre}.z"), 2)?;
        let problem = Problem::new(h0, Complex64::new(z[0], z[1])).map_err(|e| self.err(format!("layer {k}: {e}")))?;
        let v_key = format!("{pre}.v.precision");
        let v_float = self.float_format(&v_key)?;
        let v = if v_float.is_some() { None } else { self.tensor_quant(&format!("{pre}.v"), &format!("{pre}.v"), n)? };
        let g_key = format!("{pre}.g.precision");
        let g_float = self.float_format(&g_key)?;
        let g = if g_float.is_some() {
            None
        } else {
            let re = self.tensor_quant(&format!("{pre}.g.re"), &format!("{pre}.g.re"), n)?;
            let im = self.tensor_quant(&format!("{pre}.g.im"), &format!("{pre}.g.im"), n)?;
            match (re, im) {
                (Some(re), Some(im)) => Some(ComplexQuant { re, im }),
                _ => return Err(self.err(format!("`{pre}.g.re` and `{pre}.g.im` must both be quantized"))),
            }
        };
        let plan = QuantPlan { v, g };
        plan.validate(n).map_err(|e| self.err(format!("layer {k}: {e}")))?;
        let storage = Storage { v: v_float.unwrap_or_default(), g: g_float.unwrap_or_default(), h0: h0_storage };
        Ok(Layer { problem, plan, storage })
    }

    /// `Some` float format when the precision at `key` is fp32, fp16 or bf16; `None` for int8/int4.
    fn float_format(&self, key: &str) -> Result<Option<FloatFormat>> {
        let prec: String = self.parse(key)?;
        Ok(match prec.as_str() {
            "fp32" => Some(FloatFormat::F32),
            "fp16" => Some(FloatFormat::F16),
            "bf16" => Some(FloatFormat::Bf16),
            "int8" | "int4" => None,
            other => return Err(self.err(format!("`{key}` = `{other}`: expected fp32, fp16, bf16, int8 or int4"))),
        })
    }

    /// H0 of a layer as stored (any precision), and its storage.
    fn h0(&self, pre: &str, n: usize) -> Result<(H0, H0Storage)> {
        let key = format!("{pre}.h0.precision");
        let prec = if self.meta.contains_key(&key) { self.parse::<String>(&key)? } else { "fp64".to_string() };
        let names = [format!("{pre}.h0_diag"), format!("{pre}.h0_super"), format!("{pre}.h0_sub")];
        let lens = [n, n - 1, n - 1];
        let float = |dtype: Dtype, width: usize, conv: fn(&[u8]) -> f64| -> Result<Vec<Vec<f64>>> {
            names
                .iter()
                .zip(lens)
                .map(|(name, len)| {
                    let v: Vec<f64> = self.raw(name, dtype, len)?.chunks_exact(width).map(conv).collect();
                    match v.iter().position(|x| !x.is_finite()) {
                        Some(i) => Err(self.tensor_err(name, format!("element {i} is {}", v[i]))),
                        None => Ok(v),
                    }
                })
                .collect()
        };
        let (parts, storage) = match prec.as_str() {
            "fp64" => (float(Dtype::F64, 8, |b| f64::from_le_bytes(b.try_into().unwrap_or([0; 8])))?, H0Storage::F64),
            "fp32" => (float(Dtype::F32, 4, |b| f32::from_le_bytes(b.try_into().unwrap_or([0; 4])) as f64)?, H0Storage::F32),
            "fp16" => (float(Dtype::F16, 2, |b| half::f16::from_le_bytes(b.try_into().unwrap_or([0; 2])).to_f64())?, H0Storage::F16),
            "bf16" => (float(Dtype::BF16, 2, |b| half::bf16::from_le_bytes(b.try_into().unwrap_or([0; 2])).to_f64())?, H0Storage::Bf16),
            "int8" | "int4" => {
                let bits = if prec == "int8" { Bits::Int8 } else { Bits::Int4 };
                let group: usize = self.parse(&format!("{pre}.h0.group_size"))?;
                let spec = QuantSpec { bits, group_size: group, symmetric: false, dynamic: false };
                spec.validate(&format!("{pre}.h0")).map_err(|e| self.err(e.to_string()))?;
                let mut tqs = Vec::with_capacity(3);
                let mut parts = Vec::with_capacity(3);
                for (name, len) in names.iter().zip(lens) {
                    let (tq, vals) = self.h0_part(name, spec, len)?;
                    tqs.push(tq);
                    parts.push(vals);
                }
                let sub = tqs.pop().unwrap_or_else(|| TensorQuant::dynamic(spec));
                let sup = tqs.pop().unwrap_or_else(|| TensorQuant::dynamic(spec));
                let diag = tqs.pop().unwrap_or_else(|| TensorQuant::dynamic(spec));
                (parts, H0Storage::Quant { diag, sup, sub })
            }
            other => return Err(self.err(format!("`{key}` = `{other}`: expected fp64, fp32, fp16, bf16, int8 or int4"))),
        };
        let mut it = parts.into_iter();
        let (diag, sup, sub) = (it.next().unwrap_or_default(), it.next().unwrap_or_default(), it.next().unwrap_or_default());
        Ok((H0 { diag, sup, sub }, storage))
    }

    /// One integer H0 part: its codes, scales and zero points, and the values they decode to.
    fn h0_part(&self, name: &str, spec: QuantSpec, len: usize) -> Result<(TensorQuant, Vec<f64>)> {
        let groups = spec.groups(len);
        let (code_dtype, code_len) = match spec.bits {
            Bits::Int8 => (Dtype::I8, len),
            Bits::Int4 => (Dtype::U8, len.div_ceil(2)),
        };
        let codes = self.raw(name, code_dtype, code_len)?.to_vec();
        let scale: Vec<f32> = self
            .raw(&format!("{name}.scale"), Dtype::F32, groups)?
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap_or([0; 4])))
            .collect();
        let zero: Vec<i16> = self
            .raw(&format!("{name}.zero"), Dtype::I16, groups)?
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes(b.try_into().unwrap_or([0; 2])))
            .collect();
        let params = AffineParams { scale, zero: Some(zero) };
        let tq = TensorQuant::new_static(spec, params.clone());
        if len == 0 {
            return Ok((tq, vec![]));
        }
        let q = QTensor::from_parts(name, spec, 1, len, codes, params).map_err(|e| self.tensor_err(name, e.to_string()))?;
        Ok((tq, q.dequantize().into_iter().map(f64::from).collect()))
    }

    /// The format of one real tensor (`None` for fp32) with its static parameters.
    fn tensor_quant(&self, key: &str, tensor: &str, n: usize) -> Result<Option<TensorQuant>> {
        let prec: String = self.parse(&format!("{key}.precision"))?;
        let bits = match prec.as_str() {
            "fp32" => return Ok(None),
            "int8" => Bits::Int8,
            "int4" => Bits::Int4,
            other => return Err(self.err(format!("`{key}.precision` = `{other}`: expected fp32, int8 or int4"))),
        };
        let spec = QuantSpec {
            bits,
            group_size: self.parse(&format!("{key}.group_size"))?,
            symmetric: self.parse(&format!("{key}.symmetric"))?,
            dynamic: self.parse(&format!("{key}.dynamic"))?,
        };
        spec.validate(tensor).map_err(|e| self.err(e.to_string()))?;
        if spec.dynamic {
            return Ok(Some(TensorQuant::dynamic(spec)));
        }
        let groups = spec.groups(n);
        let scale_name = format!("{tensor}.scale");
        let scale: Vec<f32> = self
            .raw(&scale_name, Dtype::F32, groups)?
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap_or([0; 4])))
            .collect();
        if let Some(i) = scale.iter().position(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(self.tensor_err(&scale_name, format!("scale[{i}] = {} must be finite and > 0", scale[i])));
        }
        let zero_name = format!("{tensor}.zero");
        let zero = if spec.symmetric {
            if self.st.tensor(&zero_name).is_ok() {
                return Err(self.tensor_err(&zero_name, "present, but the tensor is symmetric"));
            }
            None
        } else {
            Some(
                self.raw(&zero_name, Dtype::I16, groups)?
                    .chunks_exact(2)
                    .map(|b| i16::from_le_bytes(b.try_into().unwrap_or([0; 2])))
                    .collect(),
            )
        };
        Ok(Some(TensorQuant::new_static(spec, AffineParams { scale, zero })))
    }
}

/// Writes H0 in its storage format (see the module docs).
fn put_h0(
    tensors: &mut Vec<(String, Dtype, Vec<usize>, Vec<u8>)>,
    meta: &mut HashMap<String, String>,
    pre: &str,
    h0: &H0,
    storage: &H0Storage,
    path: &Path,
) -> Result<()> {
    let names = [format!("{pre}.h0_diag"), format!("{pre}.h0_super"), format!("{pre}.h0_sub")];
    let parts = [&h0.diag, &h0.sup, &h0.sub];
    if *storage != H0Storage::F64 {
        meta.insert(format!("{pre}.h0.precision"), storage.precision().label().split('-').next().unwrap_or("fp64").to_string());
    }
    let float = |tensors: &mut Vec<(String, Dtype, Vec<usize>, Vec<u8>)>, dtype: Dtype, conv: &dyn Fn(f64) -> Vec<u8>| {
        for (name, x) in names.iter().zip(parts) {
            tensors.push((name.clone(), dtype, vec![x.len()], x.iter().flat_map(|&v| conv(v)).collect()));
        }
    };
    match storage {
        H0Storage::F64 => float(tensors, Dtype::F64, &|v| v.to_le_bytes().to_vec()),
        H0Storage::F32 => float(tensors, Dtype::F32, &|v| (v as f32).to_le_bytes().to_vec()),
        H0Storage::F16 => float(tensors, Dtype::F16, &|v| crate::precision::f16_from_f64(v).to_le_bytes().to_vec()),
        H0Storage::Bf16 => float(tensors, Dtype::BF16, &|v| crate::precision::bf16_from_f64(v).to_le_bytes().to_vec()),
        H0Storage::Quant { diag, sup, sub } => {
            meta.insert(format!("{pre}.h0.group_size"), diag.spec.group_size.to_string());
            for ((name, x), tq) in names.iter().zip(parts).zip([diag, sup, sub]) {
                let params = tq.params.as_ref().ok_or_else(|| BkError::ModelTensor {
                    path: path.to_path_buf(),
                    tensor: name.clone(),
                    msg: "integer H0 needs static scales".into(),
                })?;
                // The stored H0 already holds decoded values: re-quantizing them with the same
                // parameters gives back the same codes.
                let xs: Vec<f32> = x.iter().map(|&v| v as f32).collect();
                let (dtype, codes) = if xs.is_empty() {
                    (if tq.spec.bits == Bits::Int8 { Dtype::I8 } else { Dtype::U8 }, vec![])
                } else {
                    let q = QTensor::quantize(name, tq, &xs, 1, xs.len())?;
                    (if tq.spec.bits == Bits::Int8 { Dtype::I8 } else { Dtype::U8 }, q.codes().to_vec())
                };
                let clen = codes.len();
                tensors.push((name.clone(), dtype, vec![clen], codes));
                tensors.push((format!("{name}.scale"), Dtype::F32, vec![params.scale.len()], params.scale.iter().flat_map(|v| v.to_le_bytes()).collect()));
                let z = params.zero.as_deref().unwrap_or(&[]);
                tensors.push((format!("{name}.zero"), Dtype::I16, vec![z.len()], z.iter().flat_map(|v| v.to_le_bytes()).collect()));
            }
        }
    }
    Ok(())
}
