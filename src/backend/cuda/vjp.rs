//! The backward pass on the GPU: [`crate::grad::gpu::run`] (chunks, f64 redo, reduction, errors)
//! on a CUDA device, through [`VjpDevice`] implemented with this backend's buffers and stream.

use super::mem::{cu, DevBuf};
use super::{CudaOptions, Device};
use crate::backend::{SolveInfo, SolveOptions, VInput};
use crate::error::Result;
use crate::grad::gpu::{self, BkVjpParams, BkVjpReduceParams, VjpDevice, VjpRunOptions, VJP_KERNEL_F32, VJP_KERNEL_F64, VJP_REDUCE_KERNEL, VJP_THREADS};
use crate::grad::{GradG, Vjp};
use crate::problem::Problem;
use cudarc::driver::{CudaStream, DeviceRepr, LaunchConfig, PushKernelArg};
use std::sync::Arc;

// SAFETY: both structs are #[repr(C)], plain old data (u64/f64/u32/i32 fields), and their layouts
// are pinned to bk_vjp_params_t / bk_vjp_reduce_params_t by const asserts in grad::gpu and by
// tests/vjp_emu.rs (which compiles kernels/bk_vjp.h): the kernels read them by value.
unsafe impl DeviceRepr for BkVjpParams {}
// SAFETY: as above.
unsafe impl DeviceRepr for BkVjpReduceParams {}

/// One call's view of the device: every operation is ordered on `stream`.
struct Cuda<'a> {
    dev: &'a Device,
    stream: &'a Arc<CudaStream>,
}

impl Cuda<'_> {
    fn launch<P: DeviceRepr>(&self, name: &str, p: &P, grid: (u32, u32), what: impl FnOnce() -> String) -> Result<()> {
        let f = self.dev.kernels.get(name)?;
        let cfg = LaunchConfig { grid_dim: (grid.0, grid.1, 1), block_dim: (VJP_THREADS, 1, 1), shared_mem_bytes: 0 };
        let mut b = self.stream.launch_builder(f);
        b.arg(p);
        // SAFETY: `p` is the parameter struct of kernel `name` (grad::gpu::run builds each struct
        // for the kernel it names, and the layouts are pinned to the header). Every pointer in it
        // is a live allocation of this call made through `alloc` below and sized by grad::gpu::run
        // for the chunk: inputs and dL/dG for `stride` rows of N, per-row gradients for N (dv) and
        // N − 1 (dk) positions of `stride` rows, status and row-index words for `stride` rows
        // (row-index entries < stride), scratch for `rows` ≤ stride launch rows, partial sums for
        // ceil(stride / block_rows) blocks. The grid is ceil(rows / VJP_THREADS) blocks (reduction:
        // ceil(N / VJP_THREADS) × blocks ≤ 65 535). The kernels check formats, compute type and
        // block size against their own and flag the rows instead of running when they disagree.
        cu(unsafe { b.launch(cfg) }, || format!("launching {name} ({}) on {}", what(), self.dev.name)).map(|_| ())
    }
}

impl VjpDevice for Cuda<'_> {
    type Buf = DevBuf;

    fn name(&self) -> String {
        "cuda".into()
    }

    fn free_bytes(&mut self) -> Result<usize> {
        let (free, _) = cu(self.dev.ctx.mem_get_info(), || format!("reading free memory of {}", self.dev.name))?;
        Ok(free)
    }

    fn alloc(&mut self, bytes: usize, what: &str) -> Result<DevBuf> {
        DevBuf::alloc(self.stream, bytes, what)
    }

    fn addr(&self, buf: &DevBuf) -> u64 {
        buf.ptr(self.stream)
    }

    fn upload(&mut self, buf: &mut DevBuf, src: &[u8], what: &str) -> Result<()> {
        buf.upload(self.stream, src, what)
    }

    fn download(&mut self, buf: &DevBuf, dst: &mut [u8], what: &str) -> Result<()> {
        buf.download(self.stream, dst, what)?;
        // The trait promises that `dst` holds the data on return.
        cu(self.stream.synchronize(), || format!("waiting for {what} on {}", self.dev.name))
    }

    fn fill(&mut self, buf: &mut DevBuf, bytes: usize, value: u8, what: &str) -> Result<()> {
        buf.fill(self.stream, bytes, value, what)
    }

    fn launch_vjp(&mut self, f64: bool, p: &BkVjpParams, grid: u32) -> Result<()> {
        let name = if f64 { VJP_KERNEL_F64 } else { VJP_KERNEL_F32 };
        self.launch(name, p, (grid, 1), || format!("{} rows, N = {}", p.rows, p.n))
    }

    fn launch_reduce(&mut self, p: &BkVjpReduceParams, grid: (u32, u32)) -> Result<()> {
        self.launch(VJP_REDUCE_KERNEL, p, grid, || format!("{} rows, N = {}", p.stride, p.n))
    }
}

#[allow(clippy::too_many_arguments)]
/// `CudaBackend::vjp_into`: host checks (shapes, finite dL/dG, N, the NaN policy, formats) are
/// those of `grad::gpu::run`, before anything touches the device.
pub(super) fn vjp(
    dev: &Device,
    stream: &Arc<CudaStream>,
    copts: &CudaOptions,
    p: &Problem,
    v: VInput<'_>,
    g_bar: GradG<'_>,
    out: &mut Vjp,
    opts: &SolveOptions,
) -> Result<SolveInfo> {
    // The calling thread may be new to this context (test threads, rayon workers).
    cu(dev.ctx.bind_to_thread(), || format!("binding the context of {}", dev.name))?;
    let ro = VjpRunOptions { max_chunk_rows: copts.max_chunk_rows, poison: copts.poison };
    gpu::run(&mut Cuda { dev, stream }, p, v, g_bar, out, opts, &ro)
}
