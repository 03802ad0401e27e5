//! The CUDA backend: the hand-written kernels of `kernels/` (embedded fatbins) launched through
//! cudarc's driver API.
//!
//! cudarc panics when libcuda is missing, so every entry point checks for the driver first and
//! returns a typed error instead. Kernels are loaded once per device and shared by every
//! `CudaBackend` on it. Calls on one backend are serialized (one stream).

mod kernels;
mod mem;
mod run;
mod vjp;

pub use super::geometry::Geometry;
pub use kernels::{all_kernel_names, kernel_name, ARCHS, FATBINS, NVCC_VERSION};

use super::{Backend, GFormat, GOutput, SolveInfo, SolveOptions, VInput};
use crate::error::{BkError, Result};
use crate::grad::{GradG, Vjp};
use crate::problem::Problem;
use cudarc::driver::sys::CUdevice_attribute;
use cudarc::driver::{CudaContext, CudaStream, DeviceRepr};
use kernels::Loaded;
use mem::cu;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

// SAFETY: BkSolveParams is #[repr(C)], plain old data (u64/f64/u32/i32 fields), and its layout is
// pinned to bk_solve_params_t by const asserts and tests/layout.rs: the kernels read it by value.
unsafe impl DeviceRepr for crate::layout::BkSolveParams {}

/// One device's context and loaded kernels, created once per process.
pub(crate) struct Device {
    ctx: Arc<CudaContext>,
    kernels: Loaded,
    name: String,
    cc: (i32, i32),
    sms: u32,
}

fn devices() -> &'static Mutex<HashMap<usize, Arc<Device>>> {
    static D: OnceLock<Mutex<HashMap<usize, Arc<Device>>>> = OnceLock::new();
    D.get_or_init(Default::default)
}

/// Whether the CUDA driver library can be loaded. Nothing in cudarc may be called when it cannot.
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen libcuda under its usual names; no CUDA call is made.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

fn no_driver() -> BkError {
    BkError::Backend { backend: "cuda".into(), msg: "no CUDA driver found (libcuda could not be loaded)".into() }
}

/// Number of visible CUDA devices (0 without a driver).
pub fn device_count() -> Result<usize> {
    if !driver_present() {
        return Err(no_driver());
    }
    cu(cudarc::driver::result::init(), || "initialising the CUDA driver".into())?;
    let n = cu(CudaContext::device_count(), || "counting CUDA devices".into())?;
    Ok(n.max(0) as usize)
}

impl Device {
    fn get(ordinal: usize) -> Result<Arc<Device>> {
        let count = device_count()?;
        if ordinal >= count {
            return Err(BkError::Backend {
                backend: "cuda".into(),
                msg: if count == 0 {
                    "the CUDA driver sees no GPU".into()
                } else {
                    format!("no CUDA device {ordinal} ({count} visible)")
                },
            });
        }
        let mut map = devices().lock().map_err(|_| BkError::Cuda("device registry poisoned".into()))?;
        if let Some(d) = map.get(&ordinal) {
            return Ok(d.clone());
        }
        let ctx = cu(CudaContext::new(ordinal), || format!("creating a context on CUDA device {ordinal}"))?;
        // SAFETY: every device buffer of this crate lives within one call and is used only on the
        // stream of the backend making that call (allocation, copies, launches and the free are
        // all ordered on it), so cudarc's cross-stream event tracking has nothing to order; off,
        // it no longer creates and records two events per allocation.
        unsafe { ctx.disable_event_tracking() };
        let name = cu(ctx.name(), || format!("naming CUDA device {ordinal}"))?;
        let cc = cu(ctx.compute_capability(), || format!("reading the compute capability of {name}"))?;
        if cc.0 < 8 {
            return Err(BkError::Backend {
                backend: "cuda".into(),
                msg: format!(
                    "{name} is sm_{}{}; the kernels need compute capability 8.0 or newer ({})",
                    cc.0,
                    cc.1,
                    ARCHS.join(", ")
                ),
            });
        }
        let sms = cu(ctx.attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT), || {
            format!("reading the multiprocessor count of {name}")
        })?;
        let label = format!("{name} (sm_{}{})", cc.0, cc.1);
        let kernels = Loaded::load(&ctx, &label)?;
        let d = Arc::new(Device { ctx, kernels, name, cc, sms: sms.max(1) as u32 });
        map.insert(ordinal, d.clone());
        Ok(d)
    }
}

/// Test and tuning knobs. The defaults are what a user wants.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CudaOptions {
    /// Largest batch chunk in rows (default: as many rows as fit in free device memory).
    pub max_chunk_rows: Option<usize>,
    /// Fill device outputs and status words with this byte before every launch, so that a test
    /// can prove every element was written.
    pub poison: Option<u8>,
    /// Time the kernels of each call with device events (see [`CudaBackend::last_kernel_ms`]).
    pub time_kernels: bool,
}

pub struct CudaBackend {
    ordinal: usize,
    dev: Arc<Device>,
    stream: Arc<CudaStream>,
    opts: CudaOptions,
    /// One call at a time on the stream; holds the kernel time of the last call when timed.
    lock: Mutex<Option<f64>>,
}

impl CudaBackend {
    /// The backend on device `ordinal`. Fails with a typed error (never a panic) when there is no
    /// driver, no such device, or the kernels do not load on it.
    pub fn new(ordinal: usize) -> Result<Self> {
        let dev = Device::get(ordinal)?;
        let stream = cu(dev.ctx.new_stream(), || format!("creating a stream on {}", dev.name))?;
        Ok(CudaBackend { ordinal, dev, stream, opts: CudaOptions::default(), lock: Mutex::new(None) })
    }

    pub fn with_options(mut self, opts: CudaOptions) -> Self {
        self.opts = opts;
        self
    }

    pub fn options(&self) -> CudaOptions {
        self.opts
    }

    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// Free and total device memory in bytes.
    pub fn memory(&self) -> Result<(usize, usize)> {
        cu(self.dev.ctx.mem_get_info(), || format!("reading free memory of {}", self.dev.name))
    }

    /// Milliseconds the kernels of the last call took on the device (all batch chunks and f64
    /// redo launches), when [`CudaOptions::time_kernels`] is set.
    pub fn last_kernel_ms(&self) -> Option<f64> {
        self.lock.lock().ok().and_then(|g| *g)
    }

    /// Holds the stream for one call; the guard carries the last call's kernel time.
    fn one_call(&self) -> Result<MutexGuard<'_, Option<f64>>> {
        self.lock.lock().map_err(|_| BkError::Cuda("backend lock poisoned by an earlier panic".into()))
    }

    /// Number of kernels loaded (every entry point of [`all_kernel_names`]).
    pub fn loaded_kernels(&self) -> usize {
        self.dev.kernels.len()
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn device(&self) -> String {
        format!("{} (sm_{}{}, {} SMs)", self.dev.name, self.dev.cc.0, self.dev.cc.1, self.dev.sms)
    }

    fn solve_into(&self, p: &Problem, v: VInput<'_>, out: &mut GOutput, opts: &SolveOptions) -> Result<SolveInfo> {
        // Half-precision storage travels as f32 in and complex128 out: widening f16/bf16 is exact,
        // and rounding the complex128 result once on the host gives exactly the CPU backend's
        // values (one rounding from the computed value, f32 or f64 rows alike). The kernels
        // themselves read and write only the formats of bk_formats.h.
        crate::backend::check_call(p, &v, out)?;
        let mut widened = Vec::new();
        let v = crate::backend::device::widen_half(v, &mut widened);
        let half_out = matches!(out, GOutput::Cf16(_) | GOutput::Cbf16(_));
        let mut wide = if half_out { Some(GOutput::alloc(&GFormat::C128, out.len() / p.n(), p.n())?) } else { None };
        let mut last = self.one_call()?;
        *last = None;
        let (info, ms) = run::solve(&self.dev, &self.stream, &self.opts, p, v, wide.as_mut().unwrap_or(out), opts)?;
        *last = ms;
        if let Some(GOutput::C128(w)) = wide {
            match out {
                GOutput::Cf16(g) => g.iter_mut().zip(&w).for_each(|(o, c)| {
                    *o = num_complex::Complex::new(crate::precision::f16_from_f64(c.re), crate::precision::f16_from_f64(c.im))
                }),
                GOutput::Cbf16(g) => g.iter_mut().zip(&w).for_each(|(o, c)| {
                    *o = num_complex::Complex::new(crate::precision::bf16_from_f64(c.re), crate::precision::bf16_from_f64(c.im))
                }),
                _ => {}
            }
        }
        Ok(info)
    }

    fn time_solves(&self, p: &Problem, inputs: &[VInput<'_>], fmt: &GFormat, opts: &SolveOptions, reps: usize) -> Result<Vec<f64>> {
        let mut bufs = vec![Vec::new(); inputs.len()];
        let wide: Vec<VInput<'_>> =
            inputs.iter().zip(bufs.iter_mut()).map(|(v, b)| crate::backend::device::widen_half(*v, b)).collect();
        let _one_call = self.one_call()?;
        run::time(&self.dev, &self.stream, p, &wide, fmt, opts, reps)
    }

    fn copy_bandwidth(&self, bytes: usize) -> Result<f64> {
        let _one_call = self.one_call()?;
        run::copy_bandwidth(&self.dev, &self.stream, bytes)
    }

    fn vjp_into(&self, p: &Problem, v: VInput<'_>, g_bar: GradG<'_>, out: &mut Vjp, opts: &SolveOptions) -> Result<SolveInfo> {
        let mut last = self.one_call()?;
        *last = None;
        vjp::vjp(&self.dev, &self.stream, &self.opts, p, v, g_bar, out, opts)
    }
}

/// What `bk-infer info` prints about CUDA: the compiled targets and the devices visible. Safe
/// without a driver.
pub fn info() -> Vec<String> {
    let mut lines = vec![format!(
        "CUDA kernels: {} ({} entry points in {} fatbins, nvcc {NVCC_VERSION})",
        ARCHS.join(", "),
        all_kernel_names().len(),
        FATBINS.len()
    )];
    if !driver_present() {
        lines.push("CUDA devices: no CUDA driver found".into());
        return lines;
    }
    let mut version = 0i32;
    // SAFETY: the driver library is present (checked above); the call only writes `version`.
    let got = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut version) };
    if got == cudarc::driver::sys::CUresult::CUDA_SUCCESS {
        lines.push(format!("CUDA driver: {}.{}", version / 1000, (version % 1000) / 10));
    }
    match device_count() {
        Err(e) => lines.push(format!("CUDA devices: {e}")),
        Ok(0) => lines.push("CUDA devices: none visible".into()),
        Ok(n) => {
            for i in 0..n {
                lines.push(match Device::get(i) {
                    Ok(d) => {
                        let mem = cu(d.ctx.total_mem(), || "total memory".into())
                            .map_or(String::new(), |m| format!(", {:.1} GiB", m as f64 / (1u64 << 30) as f64));
                        format!("cuda:{i}: {} (sm_{}{}, {} SMs{mem}), kernels loaded", d.name, d.cc.0, d.cc.1, d.sms)
                    }
                    Err(e) => format!("cuda:{i}: unusable: {e}"),
                });
            }
        }
    }
    lines
}
