//! One trait, two implementations: [`cpu::CpuBackend`] everywhere and `CudaBackend` where the
//! kernels were built and a GPU is present. Nothing above this module knows which one runs.

pub mod cpu;
pub use cpu::CpuBackend;
#[cfg(bk_cuda)]
pub mod cuda;
pub mod geometry;
mod lanes;
mod transpose;

use crate::error::{BkError, Result};
use crate::problem::{NanPolicy, Problem};
use crate::quant::{ComplexQuant, QComplex, QTensor};
use num_complex::{Complex32, Complex64};

/// The potentials of one call: row-major (B, N).
#[derive(Clone, Copy, Debug)]
pub enum VInput<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
    /// Codes and parameters; dequantized in the load path.
    Quant(&'a QTensor),
}

impl VInput<'_> {
    pub fn len(&self) -> usize {
        match self {
            VInput::F32(x) => x.len(),
            VInput::F64(x) => x.len(),
            VInput::Quant(q) => q.rows() * q.n(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Bytes of the input as stored (codes + scales + zero points for quantized inputs).
    pub fn stored_bytes(&self) -> usize {
        match self {
            VInput::F32(x) => x.len() * 4,
            VInput::F64(x) => x.len() * 8,
            VInput::Quant(q) => q.stored_bytes(),
        }
    }
}

/// How G leaves the backend.
#[derive(Clone, Debug, PartialEq)]
pub enum GFormat {
    C64,
    C128,
    /// Re-quantized in the store path, real and imaginary parts separately.
    Quant(ComplexQuant),
}

#[derive(Clone, Debug, PartialEq)]
pub enum GOutput {
    C64(Vec<Complex32>),
    C128(Vec<Complex64>),
    Quant(QComplex),
}

impl GOutput {
    /// A zeroed output of `rows` × `n` in format `fmt`, for [`Backend::solve_into`].
    pub fn alloc(fmt: &GFormat, rows: usize, n: usize) -> Result<GOutput> {
        Ok(match fmt {
            GFormat::C64 => GOutput::C64(vec![Complex32::default(); rows * n]),
            GFormat::C128 => GOutput::C128(vec![Complex64::default(); rows * n]),
            GFormat::Quant(q) => {
                q.validate("g", n)?;
                GOutput::Quant(QComplex { re: QTensor::zeroed(&q.re, rows, n), im: QTensor::zeroed(&q.im, rows, n) })
            }
        })
    }

    /// The format this output is stored in.
    pub fn format(&self) -> GFormat {
        match self {
            GOutput::C64(_) => GFormat::C64,
            GOutput::C128(_) => GFormat::C128,
            GOutput::Quant(q) => GFormat::Quant(ComplexQuant { re: q.re.quant(), im: q.im.quant() }),
        }
    }

    /// Number of complex values held.
    pub fn len(&self) -> usize {
        match self {
            GOutput::C64(g) => g.len(),
            GOutput::C128(g) => g.len(),
            GOutput::Quant(q) => q.rows() * q.n(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// G as complex64 (dequantized if needed).
    pub fn to_c64(&self) -> Vec<Complex32> {
        match self {
            GOutput::C64(g) => g.clone(),
            GOutput::C128(g) => g.iter().map(|c| Complex32::new(c.re as f32, c.im as f32)).collect(),
            GOutput::Quant(q) => q.dequantize(),
        }
    }
    /// G as complex128 (widened or dequantized if needed), for statistics.
    pub fn to_c128(&self) -> Vec<Complex64> {
        match self {
            GOutput::C128(g) => g.clone(),
            other => other.to_c64().iter().map(|c| Complex64::new(c.re as f64, c.im as f64)).collect(),
        }
    }
    pub fn stored_bytes(&self) -> usize {
        match self {
            GOutput::C64(g) => g.len() * 8,
            GOutput::C128(g) => g.len() * 16,
            GOutput::Quant(q) => q.stored_bytes(),
        }
    }
}

/// Arithmetic of the recursion.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compute {
    F32,
    F64,
    /// f32, upgraded to f64 for the whole call when |Im z| < [`AUTO_F64_IM_Z`] or H0 is not
    /// Hermitian-like (some h0_super·h0_sub < 0: then pivots can get arbitrarily small), and for
    /// any block of rows whose potentials or results leave the safe f32 range.
    #[default]
    Auto,
}

impl std::str::FromStr for Compute {
    type Err = BkError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Compute::F32),
            "f64" => Ok(Compute::F64),
            "auto" => Ok(Compute::Auto),
            _ => Err(BkError::InvalidArgument(format!("unknown compute precision `{s}` (expected f32, f64 or auto)"))),
        }
    }
}

/// Below this |Im z|, `Compute::Auto` runs in f64: f32 error grows like 1/|Im z| and passes
/// 1e-6 relative L2 near |Im z| ≈ 0.02.
pub const AUTO_F64_IM_Z: f64 = 0.05;
/// Rows of a tile with potentials beyond this magnitude run in f64 whatever the compute mode:
/// squared pivot moduli would overflow f32 near 1e19.
pub const F32_MAX_V: f64 = 1e15;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SolveOptions {
    pub compute: Compute,
    pub nan_policy: NanPolicy,
}

/// How a call was computed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SolveInfo {
    pub rows: usize,
    /// Rows computed in f64 (all of them for `Compute::F64`).
    pub rows_f64: usize,
}

/// What [`Backend::solve`] returns: G and how it was computed.
#[derive(Clone, Debug)]
pub struct Solved {
    pub g: GOutput,
    pub rows: usize,
    pub rows_f64: usize,
}

pub trait Backend: Send + Sync {
    /// `cpu` or `cuda`.
    fn name(&self) -> &'static str;
    /// The device in words, e.g. `AMD EPYC, 2 threads, AVX2` or `NVIDIA H200 (sm_90)`.
    fn device(&self) -> String;

    /// G for every row of `v`, written into a caller-owned output (reuse it across calls: a
    /// fresh multi-megabyte buffer per call costs page faults). The variant of `out` is the
    /// format; its length must be rows × N. A quantized `out` is written with its own static
    /// parameters, or with parameters computed per row when its spec is dynamic.
    fn solve_into(&self, p: &Problem, v: VInput<'_>, out: &mut GOutput, opts: &SolveOptions) -> Result<SolveInfo>;

    /// G for every row of `v`, in a new output of format `fmt`.
    fn solve(&self, p: &Problem, v: VInput<'_>, fmt: &GFormat, opts: &SolveOptions) -> Result<Solved> {
        let rows = p.rows_of("v", v.len())?;
        let mut g = GOutput::alloc(fmt, rows, p.n())?;
        let info = self.solve_into(p, v, &mut g, opts)?;
        Ok(Solved { g, rows: info.rows, rows_f64: info.rows_f64 })
    }
}

/// Checks shapes and quantization parameters of a call, in one place for every backend.
/// Returns the row count. Non-finite potentials are handled by each backend's load path
/// (the CPU checks them while it loads tiles; see [`crate::problem::apply_nan_policy`]).
pub(crate) fn check_call(p: &Problem, v: &VInput<'_>, out: &GOutput) -> Result<usize> {
    let n = p.n();
    let rows = p.rows_of("v", v.len())?;
    if out.len() != rows * n {
        return Err(BkError::shape("g", format!("({rows}, {n}) output"), format!("{} values", out.len())));
    }
    if let GOutput::Quant(q) = out {
        if q.re.n() != n || q.im.n() != n {
            return Err(BkError::shape("g", format!("N = {n}"), format!("N = {}", q.n())));
        }
        if q.re.spec().bits != q.im.spec().bits || q.re.spec().group_size != q.im.spec().group_size {
            return Err(BkError::quant("g", "real and imaginary parts must share bits and group size"));
        }
    }
    if let VInput::Quant(q) = v {
        if q.n() != n {
            return Err(BkError::shape("v", format!("N = {n}"), format!("N = {}", q.n())));
        }
    }
    Ok(rows)
}

/// Whether `Compute::Auto` starts in f64 for this problem.
pub(crate) fn auto_wants_f64(p: &Problem) -> bool {
    p.z().im.abs() < AUTO_F64_IM_Z || !p.is_hermitian_like()
}

/// The backend `--device` names: `cpu`, `cuda`, or `auto` (CUDA when usable, else CPU).
pub fn select(device: &str) -> Result<Box<dyn Backend>> {
    match device {
        "cpu" => Ok(Box::new(cpu::CpuBackend::new())),
        "cuda" => cuda_backend(),
        "auto" => Ok(cuda_backend().unwrap_or_else(|_| Box::new(cpu::CpuBackend::new()))),
        other => Err(BkError::InvalidArgument(format!("unknown device `{other}` (expected auto, cpu or cuda)"))),
    }
}

/// What this build and machine offer for CUDA, one line each: the targets the embedded kernels
/// were compiled for and the devices visible (for `bk-infer info`). Safe without a driver.
pub fn cuda_info() -> Vec<String> {
    #[cfg(bk_cuda)]
    {
        cuda::info()
    }
    #[cfg(not(bk_cuda))]
    {
        vec!["CUDA kernels: none (built without nvcc; see README)".into()]
    }
}

#[cfg(bk_cuda)]
fn cuda_backend() -> Result<Box<dyn Backend>> {
    Ok(Box::new(cuda::CudaBackend::new(0)?))
}

#[cfg(not(bk_cuda))]
fn cuda_backend() -> Result<Box<dyn Backend>> {
    Err(BkError::Backend {
        backend: "cuda".into(),
        msg: "this build has no CUDA kernels (nvcc was not found when it was built; see `bk-infer info`)".into(),
    })
}
