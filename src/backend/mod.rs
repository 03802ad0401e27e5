//! One trait, two implementations: [`cpu::CpuBackend`] everywhere and `CudaBackend` where the
//! kernels were built and a GPU is present. Nothing above this module knows which one runs.

pub mod cpu;
pub use cpu::CpuBackend;
#[cfg(bk_cuda)]
pub mod cuda;
pub mod geometry;
pub(crate) mod device;
pub use device::{Arith, SCAN64_BELOW_IM_Z};
pub(crate) mod lanes;
mod transpose;

use crate::error::{BkError, Result};
use crate::grad::{DvFormat, GradG, Vjp};
use crate::problem::{NanPolicy, Problem};
use crate::quant::{ComplexQuant, QComplex, QTensor};
use half::{bf16, f16};
use num_complex::{Complex, Complex32, Complex64};

/// The potentials of one call: row-major (B, N).
#[derive(Clone, Copy, Debug)]
pub enum VInput<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
    /// IEEE half precision, widened exactly in the load path.
    F16(&'a [f16]),
    /// bfloat16, widened exactly in the load path.
    Bf16(&'a [bf16]),
    /// Codes and parameters; dequantized in the load path.
    Quant(&'a QTensor),
}

impl VInput<'_> {
    pub fn len(&self) -> usize {
        match self {
            VInput::F32(x) => x.len(),
            VInput::F64(x) => x.len(),
            VInput::F16(x) => x.len(),
            VInput::Bf16(x) => x.len(),
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
            VInput::F16(x) => x.len() * 2,
            VInput::Bf16(x) => x.len() * 2,
            VInput::Quant(q) => q.stored_bytes(),
        }
    }
}

/// How G leaves the backend.
#[derive(Clone, Debug, PartialEq)]
pub enum GFormat {
    C64,
    C128,
    /// Real and imaginary parts in IEEE half precision, each rounded to nearest-even once from
    /// the computed value (±∞ beyond ±65504).
    Cf16,
    /// Real and imaginary parts in bfloat16, each rounded to nearest-even once.
    Cbf16,
    /// Re-quantized in the store path, real and imaginary parts separately.
    Quant(ComplexQuant),
}

#[derive(Clone, Debug, PartialEq)]
pub enum GOutput {
    C64(Vec<Complex32>),
    C128(Vec<Complex64>),
    Cf16(Vec<Complex<f16>>),
    Cbf16(Vec<Complex<bf16>>),
    Quant(QComplex),
}

impl GOutput {
    /// A zeroed output of `rows` × `n` in format `fmt`, for [`Backend::solve_into`].
    pub fn alloc(fmt: &GFormat, rows: usize, n: usize) -> Result<GOutput> {
        Ok(match fmt {
            GFormat::C64 => GOutput::C64(vec![Complex32::default(); rows * n]),
            GFormat::C128 => GOutput::C128(vec![Complex64::default(); rows * n]),
            GFormat::Cf16 => GOutput::Cf16(vec![Complex::new(f16::ZERO, f16::ZERO); rows * n]),
            GFormat::Cbf16 => GOutput::Cbf16(vec![Complex::new(bf16::ZERO, bf16::ZERO); rows * n]),
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
            GOutput::Cf16(_) => GFormat::Cf16,
            GOutput::Cbf16(_) => GFormat::Cbf16,
            GOutput::Quant(q) => GFormat::Quant(ComplexQuant { re: q.re.quant(), im: q.im.quant() }),
        }
    }

    /// Number of complex values held.
    pub fn len(&self) -> usize {
        match self {
            GOutput::C64(g) => g.len(),
            GOutput::C128(g) => g.len(),
            GOutput::Cf16(g) => g.len(),
            GOutput::Cbf16(g) => g.len(),
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
            GOutput::Cf16(g) => g.iter().map(|c| Complex32::new(c.re.to_f32(), c.im.to_f32())).collect(),
            GOutput::Cbf16(g) => g.iter().map(|c| Complex32::new(c.re.to_f32(), c.im.to_f32())).collect(),
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
            GOutput::Cf16(g) => g.len() * 4,
            GOutput::Cbf16(g) => g.len() * 4,
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
    /// Whether the rows were cut into chunks, one per lane (the CPU backend's path for calls
    /// of one or two long rows), rather than run one row per lane.
    pub chunked: bool,
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
        let rows = input_rows(p, &v)?;
        let mut g = GOutput::alloc(fmt, rows, p.n())?;
        let info = self.solve_into(p, v, &mut g, opts)?;
        Ok(Solved { g, rows: info.rows, rows_f64: info.rows_f64 })
    }

    /// Seconds per call of `reps` solves, cycling through `inputs` (several input sets, so that
    /// repeated calls do not just measure a cache). The default times `solve_into` on the host
    /// clock, which is exact for a synchronous backend; a device backend overrides it to keep
    /// inputs and output resident on the device and time with device events.
    fn time_solves(&self, p: &Problem, inputs: &[VInput<'_>], fmt: &GFormat, opts: &SolveOptions, reps: usize) -> Result<Vec<f64>> {
        let first = inputs.first().ok_or_else(|| BkError::InvalidArgument("time_solves needs at least one input".into()))?;
        let mut out = GOutput::alloc(fmt, input_rows(p, first)?, p.n())?;
        // One untimed call per input set: first-touch page faults and lazy set-up stay out.
        for v in inputs {
            self.solve_into(p, *v, &mut out, opts)?;
        }
        (0..reps)
            .map(|r| {
                let t = std::time::Instant::now();
                self.solve_into(p, inputs[r % inputs.len()], &mut out, opts)?;
                Ok(t.elapsed().as_secs_f64())
            })
            .collect()
    }

    /// Copy bandwidth of the memory this backend computes from, in bytes per second counting
    /// bytes read plus bytes written, measured on a buffer of `bytes` bytes (the ceiling a
    /// memory-bound solve is compared with). Backends that cannot measure it say so.
    fn copy_bandwidth(&self, bytes: usize) -> Result<f64> {
        let _ = bytes;
        Err(BkError::Unsupported { backend: self.name().into(), op: "measuring copy bandwidth".into() })
    }

    /// The backward pass: given the upstream gradient ḡ = ∂L/∂Re G + i ∂L/∂Im G of every element
    /// of G(v), writes ∂L/∂v per element and ∂L/∂H0, ∂L/∂z summed over rows into `out` (see
    /// [`crate::grad`] for the convention and the method). `v`, `opts` and the arithmetic are
    /// those of [`Backend::solve_into`]. Backends without it return [`BkError::Unsupported`].
    fn vjp_into(&self, p: &Problem, v: VInput<'_>, g_bar: GradG<'_>, out: &mut Vjp, opts: &SolveOptions) -> Result<SolveInfo> {
        let _ = (p, v, g_bar, out, opts);
        Err(BkError::Unsupported { backend: self.name().into(), op: "the backward pass (vjp)".into() })
    }

    /// [`Backend::vjp_into`] into a new output with ∂L/∂v in `fmt`.
    fn vjp(&self, p: &Problem, v: VInput<'_>, g_bar: GradG<'_>, fmt: DvFormat, opts: &SolveOptions) -> Result<Vjp> {
        let rows = input_rows(p, &v)?;
        let mut out = Vjp::alloc(fmt, rows, p.n());
        self.vjp_into(p, v, g_bar, &mut out, opts)?;
        Ok(out)
    }
}

/// Checks shapes and quantization parameters of a call, in one place for every backend.
/// Returns the row count. Non-finite potentials are handled by each backend's load path
/// (the CPU checks them while it loads tiles; see [`crate::problem::apply_nan_policy`]).
pub(crate) fn check_call(p: &Problem, v: &VInput<'_>, out: &GOutput) -> Result<usize> {
    let n = p.n();
    let rows = input_rows(p, v)?;
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
    Ok(rows)
}

/// Rows of an input of this problem's N.
pub(crate) fn input_rows(p: &Problem, v: &VInput<'_>) -> Result<usize> {
    if let VInput::Quant(q) = v {
        if q.n() != p.n() {
            return Err(BkError::shape("v", format!("N = {}", p.n()), format!("N = {}", q.n())));
        }
    }
    p.rows_of("v", v.len())
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
