//! The backward pass on a GPU, host side, without CUDA: the kernels' parameter structs (the Rust
//! mirror of `kernels/bk_vjp.h`) and the whole call — batch chunks sized to device memory, the
//! f64 redo of flagged rows, the deterministic reduction over rows, and the CPU backend's errors —
//! written against [`VjpDevice`], a minimal device interface. The CUDA backend implements it with
//! device memory and kernel launches; `tests/vjp_emu.rs` implements it by running the real kernel
//! source on the CPU (tests/emu), so everything here but the device itself is exercised without a
//! GPU.
//!
//! Semantics follow [`crate::backend::cpu`]'s `vjp_into`: `Compute::F64` runs every row in f64;
//! `Compute::F32` runs f32 and redoes in f64 the rows whose potentials leave the safe f32 range;
//! `Compute::Auto` is f64 near the real axis or for non-Hermitian H0, else f32 redoing in f64 also
//! the rows whose gradient is not finite. One difference: the CPU decides per tile of 8 or 16 rows,
//! the GPU per row (as its forward does), so a row next to a flagged one stays in f32 here.

use super::{check_vjp, Dv, GradG, Vjp};
use crate::backend::device::{
    check_rows, nan_code, redo_rows, status_problem, widen_half, HostV, Mode, MEMORY_FRACTION, MEMORY_MARGIN,
};
use crate::backend::lanes::Consts;
use crate::backend::{input_rows, SolveInfo, SolveOptions, VInput, F32_MAX_V};
use crate::error::{BkError, Result};
use crate::layout::*;
use crate::problem::Problem;
use crate::quant::{QTensor, QuantSpec};
use bytemuck::{Pod, Zeroable};
use num_complex::Complex64;
use std::mem::{offset_of, size_of};

/// `bk_vjp_params_t`: one launch of `bk_vjp` / `bk_vjp_f64` (see the header for each field).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct BkVjpParams {
    pub v: u64,
    pub g_bar: u64,
    pub c: u64,
    pub c_lo: u64,
    pub k: u64,
    pub dv_row: u64,
    pub dk_row: u64,
    pub dz_row: u64,
    pub status: u64,
    pub row_index: u64,
    pub scratch: u64,
    pub v_q: BkQTensor,
    pub d_im: f64,
    pub v_limit: f64,
    pub rows: u32,
    pub stride: u32,
    pub n: u32,
    pub in_format: u32,
    pub gbar_format: u32,
    pub compute: u32,
    pub nan_policy: u32,
    pub threads: u32,
}

/// `bk_vjp_reduce_params_t`: one launch of `bk_vjp_reduce` over a chunk.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct BkVjpReduceParams {
    pub dv_row: u64,
    pub dk_row: u64,
    pub dv: u64,
    pub part: u64,
    pub stride: u32,
    pub n: u32,
    pub dv_format: u32,
    pub block_rows: u32,
}

const _: () = assert!(size_of::<BkVjpParams>() == 192);
const _: () = assert!(offset_of!(BkVjpParams, v_q) == 88);
const _: () = assert!(offset_of!(BkVjpParams, d_im) == 144);
const _: () = assert!(offset_of!(BkVjpParams, rows) == 160);
const _: () = assert!(size_of::<BkVjpReduceParams>() == 48);
const _: () = assert!(offset_of!(BkVjpReduceParams, stride) == 32);

/// Threads per block of both kernels (`BK_VJP_THREADS`).
pub const VJP_THREADS: u32 = 64;
/// Rows per partial sum of the reduction (`BK_VJP_BLOCK_ROWS`); chunks start on multiples of it.
pub const VJP_BLOCK_ROWS: u32 = 64;
/// Compute-type values of scratch per position and row (`BK_VJP_SCRATCH_VALUES`).
pub const VJP_SCRATCH_VALUES: usize = 9;

/// Entry points: f32 arithmetic, f64 arithmetic, the reduction.
pub const VJP_KERNEL_F32: &str = "bk_vjp";
pub const VJP_KERNEL_F64: &str = "bk_vjp_f64";
pub const VJP_REDUCE_KERNEL: &str = "bk_vjp_reduce";
/// Every VJP entry point a backend loads.
pub const VJP_KERNELS: [&str; 3] = [VJP_KERNEL_F32, VJP_KERNEL_F64, VJP_REDUCE_KERNEL];

/// (C expression, Rust value) pairs: every size and field offset of the mirrored structs.
pub const VJP_FIELDS: &[(&str, usize)] = &[
    ("sizeof(bk_vjp_params_t)", size_of::<BkVjpParams>()),
    ("offsetof(bk_vjp_params_t, v)", offset_of!(BkVjpParams, v)),
    ("offsetof(bk_vjp_params_t, g_bar)", offset_of!(BkVjpParams, g_bar)),
    ("offsetof(bk_vjp_params_t, c)", offset_of!(BkVjpParams, c)),
    ("offsetof(bk_vjp_params_t, c_lo)", offset_of!(BkVjpParams, c_lo)),
    ("offsetof(bk_vjp_params_t, k)", offset_of!(BkVjpParams, k)),
    ("offsetof(bk_vjp_params_t, dv_row)", offset_of!(BkVjpParams, dv_row)),
    ("offsetof(bk_vjp_params_t, dk_row)", offset_of!(BkVjpParams, dk_row)),
    ("offsetof(bk_vjp_params_t, dz_row)", offset_of!(BkVjpParams, dz_row)),
    ("offsetof(bk_vjp_params_t, status)", offset_of!(BkVjpParams, status)),
    ("offsetof(bk_vjp_params_t, row_index)", offset_of!(BkVjpParams, row_index)),
    ("offsetof(bk_vjp_params_t, scratch)", offset_of!(BkVjpParams, scratch)),
    ("offsetof(bk_vjp_params_t, v_q)", offset_of!(BkVjpParams, v_q)),
    ("offsetof(bk_vjp_params_t, d_im)", offset_of!(BkVjpParams, d_im)),
    ("offsetof(bk_vjp_params_t, v_limit)", offset_of!(BkVjpParams, v_limit)),
    ("offsetof(bk_vjp_params_t, rows)", offset_of!(BkVjpParams, rows)),
    ("offsetof(bk_vjp_params_t, stride)", offset_of!(BkVjpParams, stride)),
    ("offsetof(bk_vjp_params_t, n)", offset_of!(BkVjpParams, n)),
    ("offsetof(bk_vjp_params_t, in_format)", offset_of!(BkVjpParams, in_format)),
    ("offsetof(bk_vjp_params_t, gbar_format)", offset_of!(BkVjpParams, gbar_format)),
    ("offsetof(bk_vjp_params_t, compute)", offset_of!(BkVjpParams, compute)),
    ("offsetof(bk_vjp_params_t, nan_policy)", offset_of!(BkVjpParams, nan_policy)),
    ("offsetof(bk_vjp_params_t, threads)", offset_of!(BkVjpParams, threads)),
    ("sizeof(bk_vjp_reduce_params_t)", size_of::<BkVjpReduceParams>()),
    ("offsetof(bk_vjp_reduce_params_t, dv_row)", offset_of!(BkVjpReduceParams, dv_row)),
    ("offsetof(bk_vjp_reduce_params_t, dk_row)", offset_of!(BkVjpReduceParams, dk_row)),
    ("offsetof(bk_vjp_reduce_params_t, dv)", offset_of!(BkVjpReduceParams, dv)),
    ("offsetof(bk_vjp_reduce_params_t, part)", offset_of!(BkVjpReduceParams, part)),
    ("offsetof(bk_vjp_reduce_params_t, stride)", offset_of!(BkVjpReduceParams, stride)),
    ("offsetof(bk_vjp_reduce_params_t, n)", offset_of!(BkVjpReduceParams, n)),
    ("offsetof(bk_vjp_reduce_params_t, dv_format)", offset_of!(BkVjpReduceParams, dv_format)),
    ("offsetof(bk_vjp_reduce_params_t, block_rows)", offset_of!(BkVjpReduceParams, block_rows)),
];

/// (C expression, value) pairs for the constants shared with the header.
pub const VJP_CONSTANTS: &[(&str, i64)] = &[
    ("BK_VJP_THREADS", VJP_THREADS as i64),
    ("BK_VJP_BLOCK_ROWS", VJP_BLOCK_ROWS as i64),
    ("BK_VJP_SCRATCH_VALUES", VJP_SCRATCH_VALUES as i64),
];

/// What the backward pass needs from a device. Buffers are opaque; `addr` is what a kernel
/// parameter struct carries. Every call completes before it returns (downloads included), so the
/// host can read what it downloaded at once.
pub trait VjpDevice {
    type Buf;
    /// Names the device in errors.
    fn name(&self) -> String;
    /// Device memory free for this call, in bytes.
    fn free_bytes(&mut self) -> Result<usize>;
    /// A buffer of at least `bytes` bytes (at least one, so that it has an address).
    fn alloc(&mut self, bytes: usize, what: &str) -> Result<Self::Buf>;
    fn addr(&self, buf: &Self::Buf) -> u64;
    /// Copies `src` to the start of `buf`.
    fn upload(&mut self, buf: &mut Self::Buf, src: &[u8], what: &str) -> Result<()>;
    /// Copies the start of `buf` into `dst`.
    fn download(&mut self, buf: &Self::Buf, dst: &mut [u8], what: &str) -> Result<()>;
    /// Sets the first `bytes` bytes of `buf` to `value`.
    fn fill(&mut self, buf: &mut Self::Buf, bytes: usize, value: u8, what: &str) -> Result<()>;
    /// Launches `bk_vjp` (f32) or `bk_vjp_f64` on `grid` blocks of [`VJP_THREADS`] threads.
    fn launch_vjp(&mut self, f64: bool, p: &BkVjpParams, grid: u32) -> Result<()>;
    /// Launches `bk_vjp_reduce` on a (x, y) grid of blocks of [`VJP_THREADS`] threads.
    fn launch_reduce(&mut self, p: &BkVjpReduceParams, grid: (u32, u32)) -> Result<()>;
}

/// Knobs of [`run`] for tests and tuning; the defaults are what a user wants.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VjpRunOptions {
    /// Largest batch chunk in rows (default: as many as fit in free device memory).
    pub max_chunk_rows: Option<usize>,
    /// Fill every device output with this byte before the launches, so that a test can prove
    /// that every element was written.
    pub poison: Option<u8>,
}

/// The reduction's grid has at most 65 535 blocks in y: one per VJP_BLOCK_ROWS rows of a chunk.
const MAX_CHUNK_ROWS: usize = 65_535 * VJP_BLOCK_ROWS as usize;

/// The recursion constants in the compute type, as every backend forms them (see
/// `bk_solve_params_t`): c = h0_diag − Re z rounded, c_lo its rounding error, k.
fn consts_bytes(p: &Problem, f64: bool) -> [Vec<u8>; 3] {
    fn bytes<T: bytemuck::Pod>(cs: &Consts<T>) -> [Vec<u8>; 3] {
        [bytemuck::cast_slice(&cs.c).to_vec(), bytemuck::cast_slice(&cs.c_lo).to_vec(), bytemuck::cast_slice(&cs.k).to_vec()]
    }
    if f64 {
        bytes(p.consts_f64())
    } else {
        bytes(p.consts_f32())
    }
}

/// Device copies of the constants of one compute type.
struct ConstBufs<B> {
    c: B,
    c_lo: B,
    k: B,
}

fn upload_new<D: VjpDevice>(dev: &mut D, src: &[u8], what: &str) -> Result<D::Buf> {
    let mut b = dev.alloc(src.len(), what)?;
    dev.upload(&mut b, src, what)?;
    Ok(b)
}

fn consts<D: VjpDevice>(dev: &mut D, p: &Problem, f64: bool) -> Result<ConstBufs<D::Buf>> {
    let [c, lo, k] = consts_bytes(p, f64);
    Ok(ConstBufs { c: upload_new(dev, &c, "c")?, c_lo: upload_new(dev, &lo, "c_lo")?, k: upload_new(dev, &k, "k")? })
}

/// Quantized potentials on the device: codes of a chunk, and parameters (static: uploaded once;
/// dynamic: the chunk's rows).
struct QBufs<B> {
    spec: QuantSpec,
    codes: B,
    scale: B,
    zero: Option<B>,
}

impl<B> QBufs<B> {
    fn new<D: VjpDevice<Buf = B>>(dev: &mut D, q: &QTensor, chunk_rows: usize) -> Result<Self> {
        let spec = *q.spec();
        let n = q.n();
        let codes = dev.alloc(chunk_rows * spec.bits.row_bytes(n), "v codes")?;
        let (scale, zero) = if spec.dynamic {
            let len = chunk_rows * spec.groups(n);
            let zero = (!spec.symmetric).then(|| dev.alloc(len * 2, "v zero points")).transpose()?;
            (dev.alloc(len * 4, "v scales")?, zero)
        } else {
            let p = q.params();
            let zero = p.zero.as_ref().map(|z| upload_new(dev, bytemuck::cast_slice(z), "v zero points")).transpose()?;
            (upload_new(dev, bytemuck::cast_slice(&p.scale), "v scales")?, zero)
        };
        Ok(QBufs { spec, codes, scale, zero })
    }

    fn upload_rows<D: VjpDevice<Buf = B>>(&mut self, dev: &mut D, q: &QTensor, r0: usize, cnt: usize) -> Result<()> {
        let n = q.n();
        let rb = self.spec.bits.row_bytes(n);
        dev.upload(&mut self.codes, &q.codes()[r0 * rb..(r0 + cnt) * rb], "v codes")?;
        if self.spec.dynamic {
            let g = self.spec.groups(n);
            dev.upload(&mut self.scale, bytemuck::cast_slice(&q.params().scale[r0 * g..(r0 + cnt) * g]), "v scales")?;
            if let (Some(zd), Some(z)) = (self.zero.as_mut(), q.params().zero.as_ref()) {
                dev.upload(zd, bytemuck::cast_slice(&z[r0 * g..(r0 + cnt) * g]), "v zero points")?;
            }
        }
        Ok(())
    }

    fn desc<D: VjpDevice<Buf = B>>(&self, dev: &D, n: usize) -> BkQTensor {
        let zero = self.zero.as_ref().map_or(0, |z| dev.addr(z));
        BkQTensor::describe(&self.spec, n, dev.addr(&self.codes), dev.addr(&self.scale), zero)
    }
}

enum VBufs<B> {
    Float(B),
    Quant(QBufs<B>),
}

/// Rows per chunk: what fits in `budget` bytes at `per_row` bytes a row, at most `cap`, and a
/// multiple of [`VJP_BLOCK_ROWS`] unless the whole batch fits (so that the reduction's blocks of
/// rows, and with them the bits of the sums, do not depend on the chunking).
pub fn chunk_rows(rows: usize, per_row: usize, budget: usize, cap: Option<usize>) -> usize {
    let cap = cap.unwrap_or(usize::MAX).clamp(1, MAX_CHUNK_ROWS);
    let fit = (budget / per_row.max(1)).clamp(1, cap);
    if fit >= rows {
        return rows.max(1);
    }
    let b = VJP_BLOCK_ROWS as usize;
    if fit >= b {
        fit / b * b
    } else {
        fit
    }
}

/// Device bytes one row of a chunk needs (inputs, outputs, per-row gradients, scratch).
fn per_row_bytes(n: usize, in_row: usize, gbar_row: usize, dv_elem: usize, scratch_elem: usize) -> usize {
    in_row
        + gbar_row
        + n * dv_elem
        + n * 8 // dv_row
        + n.saturating_sub(1).max(1) * 8 // dk_row
        + 16 + 4 + 4 // dz_row, status, row index
        + VJP_SCRATCH_VALUES * n * scratch_elem
        + (2 * n) * 8 / VJP_BLOCK_ROWS as usize + 8 // the reduction's partial sums
}

/// The backward pass of every row of `v` on `dev`, into `out` (see [`crate::grad`]).
pub fn run<D: VjpDevice>(
    dev: &mut D,
    p: &Problem,
    v: VInput<'_>,
    g_bar: GradG<'_>,
    out: &mut Vjp,
    opts: &SolveOptions,
    ropts: &VjpRunOptions,
) -> Result<SolveInfo> {
    let rows = input_rows(p, &v)?;
    check_vjp(p, rows, &g_bar, out)?;
    let n = p.n();
    if n > i32::MAX as usize {
        return Err(BkError::InvalidArgument(format!("N = {n}: the GPU backward pass takes rows of at most 2^31 - 1 positions")));
    }
    let mode = Mode::of(p, opts.compute);
    // Half precision widens exactly to f32 (as the CUDA forward does); the NaN policy of float
    // inputs applies here, before upload; the kernel applies it to what it dequantizes.
    let mut widened = Vec::new();
    let v = widen_half(v, &mut widened);
    let name = dev.name();
    let hv = HostV::new(v, n, opts.nan_policy, &name)?;
    let mut sums = Sums::new(n);
    if rows == 0 {
        sums.finish(p, out);
        return Ok(SolveInfo::default());
    }
    let (in_fmt, in_row) = hv.format(n);
    let (gbar_fmt, gbar_row) = match g_bar {
        GradG::C64(_) => (FMT_C64, n * 8),
        GradG::C128(_) => (FMT_C128, n * 16),
    };
    let (dv_fmt, dv_elem) = match out.dv {
        Dv::F32(_) => (FMT_F32, 4),
        Dv::F64(_) => (FMT_F64, 8),
    };
    // f64-sized scratch whatever the mode: the f64 redo may need it for every row of a chunk.
    let scratch_elem = 8;

    let consts32 = (mode != Mode::F64).then(|| consts(dev, p, false)).transpose()?;
    let consts64 = consts(dev, p, true)?;
    let per_row = per_row_bytes(n, in_row, gbar_row, dv_elem, scratch_elem);
    let free = dev.free_bytes()?;
    let budget = ((free as f64 * MEMORY_FRACTION) as usize).saturating_sub(MEMORY_MARGIN);
    if budget < per_row {
        return Err(BkError::Backend {
            backend: name,
            msg: format!("one row of N = {n} needs {per_row} bytes of device memory for the backward pass, but only {free} bytes are free"),
        });
    }
    let chunk = chunk_rows(rows, per_row, budget, ropts.max_chunk_rows);
    let blocks = chunk.div_ceil(VJP_BLOCK_ROWS as usize);

    let mut vbuf = match &hv {
        HostV::F32(_) | HostV::F64(_) => VBufs::Float(dev.alloc(chunk * in_row, "v")?),
        HostV::Quant(q) => VBufs::Quant(QBufs::new(dev, q, chunk)?),
    };
    let mut gbuf = dev.alloc(chunk * gbar_row, "dL/dG")?;
    let mut dv_row = dev.alloc(n * chunk * 8, "dL/dv per row")?;
    let mut dk_row = dev.alloc(n.saturating_sub(1) * chunk * 8, "dL/dk per row")?;
    let mut dz_row = dev.alloc(chunk * 16, "dL/dz per row")?;
    let mut status = dev.alloc(chunk * 4, "row status")?;
    let mut index = dev.alloc(chunk * 4, "row index")?;
    let scratch = dev.alloc(VJP_SCRATCH_VALUES * n * chunk * scratch_elem, "backward scratch")?;
    let mut dv_out = dev.alloc(chunk * n * dv_elem, "dL/dv")?;
    let part_len = 2 * n - 1;
    let mut part = dev.alloc(blocks * part_len * 8, "partial sums")?;

    let mut rows_f64 = 0usize;
    let mut host_part = vec![0f64; blocks * part_len];
    let mut host_dz = vec![0f64; 2 * chunk];
    for r0 in (0..rows).step_by(chunk) {
        let cnt = chunk.min(rows - r0);
        match (&mut vbuf, &hv) {
            (VBufs::Float(b), HostV::F32(x)) => dev.upload(b, bytemuck::cast_slice(&x[r0 * n..(r0 + cnt) * n]), "v")?,
            (VBufs::Float(b), HostV::F64(x)) => dev.upload(b, bytemuck::cast_slice(&x[r0 * n..(r0 + cnt) * n]), "v")?,
            (VBufs::Quant(qb), HostV::Quant(q)) => qb.upload_rows(dev, q, r0, cnt)?,
            _ => unreachable!("device input matches host input by construction"),
        }
        match g_bar {
            GradG::C64(x) => dev.upload(&mut gbuf, bytemuck::cast_slice(&x[r0 * n..(r0 + cnt) * n]), "dL/dG")?,
            GradG::C128(x) => dev.upload(&mut gbuf, bytemuck::cast_slice(&x[r0 * n..(r0 + cnt) * n]), "dL/dG")?,
        }
        dev.fill(&mut status, cnt * 4, ropts.poison.unwrap_or(0), "row status")?;
        if let Some(byte) = ropts.poison {
            for (b, len, what) in [
                (&mut dv_row, n * cnt * 8, "dL/dv per row"),
                (&mut dk_row, (n - 1) * cnt * 8, "dL/dk per row"),
                (&mut dz_row, cnt * 16, "dL/dz per row"),
                (&mut dv_out, cnt * n * dv_elem, "dL/dv"),
                (&mut part, cnt.div_ceil(VJP_BLOCK_ROWS as usize) * part_len * 8, "partial sums"),
            ] {
                dev.fill(b, len, byte, what)?;
            }
        }
        let (v_ptr, v_q) = match &vbuf {
            VBufs::Float(b) => (dev.addr(b), BkQTensor::default()),
            VBufs::Quant(q) => (0, q.desc(dev, n)),
        };
        let c32 = consts32.as_ref().map(|cs| [dev.addr(&cs.c), dev.addr(&cs.c_lo), dev.addr(&cs.k)]);
        let c64 = [dev.addr(&consts64.c), dev.addr(&consts64.c_lo), dev.addr(&consts64.k)];
        let base = BkVjpParams {
            v: v_ptr,
            g_bar: dev.addr(&gbuf),
            dv_row: dev.addr(&dv_row),
            dk_row: dev.addr(&dk_row),
            dz_row: dev.addr(&dz_row),
            status: dev.addr(&status),
            scratch: dev.addr(&scratch),
            v_q,
            d_im: -p.z().im,
            stride: cnt as u32,
            n: n as u32,
            in_format: in_fmt,
            gbar_format: gbar_fmt,
            nan_policy: nan_code(opts.nan_policy),
            threads: VJP_THREADS,
            ..BkVjpParams::default()
        };
        let params = |f64: bool, launch_rows: usize, row_index: u64| {
            let [c, c_lo, k] = if f64 { c64 } else { c32.expect("f32 constants for an f32 pass") };
            BkVjpParams {
                c,
                c_lo,
                k,
                row_index,
                v_limit: if f64 { f64::INFINITY } else { F32_MAX_V },
                rows: launch_rows as u32,
                compute: if f64 { FMT_F64 } else { FMT_F32 },
                ..base
            }
        };
        let grid = |launch_rows: usize| launch_rows.div_ceil(VJP_THREADS as usize).min(u32::MAX as usize) as u32;

        let index_addr = dev.addr(&index);
        let main_f64 = mode == Mode::F64;
        let pm = params(main_f64, cnt, 0);
        dev.launch_vjp(main_f64, &pm, grid(cnt))?;
        let mut st = read_status(dev, &status, cnt, &name)?;
        let mut ran_f64 = vec![main_f64; cnt];
        if main_f64 {
            rows_f64 += cnt;
        } else {
            // Like the CPU: huge potentials always move a row to f64; a non-finite gradient does
            // in Auto.
            let idx = redo_rows(&st, mode);
            if !idx.is_empty() {
                dev.upload(&mut index, bytemuck::cast_slice(&idx), "row index")?;
                let pr = params(true, idx.len(), index_addr);
                dev.launch_vjp(true, &pr, grid(idx.len()))?;
                st = read_status(dev, &status, cnt, &name)?;
                for &r in &idx {
                    ran_f64[r as usize] = true;
                }
                rows_f64 += idx.len();
            }
        }
        check_rows(p, &hv, opts.nan_policy, r0, &st, &ran_f64, |_| None)?;

        let rp = BkVjpReduceParams {
            dv_row: dev.addr(&dv_row),
            dk_row: dev.addr(&dk_row),
            dv: dev.addr(&dv_out),
            part: dev.addr(&part),
            stride: cnt as u32,
            n: n as u32,
            dv_format: dv_fmt,
            block_rows: VJP_BLOCK_ROWS,
        };
        let cblocks = cnt.div_ceil(VJP_BLOCK_ROWS as usize);
        dev.launch_reduce(&rp, ((n.div_ceil(VJP_THREADS as usize)) as u32, cblocks as u32))?;
        let hp = &mut host_part[..cblocks * part_len];
        dev.download(&part, bytemuck::cast_slice_mut(hp), "partial sums")?;
        let hz = &mut host_dz[..2 * cnt];
        dev.download(&dz_row, bytemuck::cast_slice_mut(hz), "dL/dz per row")?;
        match &mut out.dv {
            Dv::F32(x) => dev.download(&dv_out, bytemuck::cast_slice_mut(&mut x[r0 * n..(r0 + cnt) * n]), "dL/dv")?,
            Dv::F64(x) => dev.download(&dv_out, bytemuck::cast_slice_mut(&mut x[r0 * n..(r0 + cnt) * n]), "dL/dv")?,
        }
        sums.add_chunk(n, hp, hz);
    }
    sums.finish(p, out);
    Ok(SolveInfo { rows, rows_f64, ..Default::default() })
}

/// Sums over rows, added in row order: blocks of [`VJP_BLOCK_ROWS`] rows from the reduction, and
/// the per-row sums for ∂L/∂z.
struct Sums {
    dd: Vec<f64>,
    dk: Vec<f64>,
    dz: Complex64,
}

impl Sums {
    fn new(n: usize) -> Self {
        Sums { dd: vec![0.0; n], dk: vec![0.0; n.saturating_sub(1)], dz: Complex64::default() }
    }

    /// `part`: per block, n sums of ∂L/∂v then n − 1 of ∂L/∂k; `dz`: (re, im) per row.
    fn add_chunk(&mut self, n: usize, part: &[f64], dz: &[f64]) {
        for b in part.chunks_exact(2 * n - 1) {
            self.dd.iter_mut().zip(&b[..n]).for_each(|(a, x)| *a += x);
            self.dk.iter_mut().zip(&b[n..]).for_each(|(a, x)| *a += x);
        }
        for z in dz.chunks_exact(2) {
            self.dz += Complex64::new(z[0], z[1]);
        }
    }

    fn finish(self, p: &Problem, out: &mut Vjp) {
        out.dh0_diag.copy_from_slice(&self.dd);
        out.set_dk(p, &self.dk);
        out.dz = -self.dz.conj();
    }
}

/// Downloads `cnt` status words; a row a kernel did not process, or a launch the kernel
/// rejected, is an internal error.
fn read_status<D: VjpDevice>(dev: &mut D, buf: &D::Buf, cnt: usize, name: &str) -> Result<Vec<u32>> {
    let mut s = vec![0u32; cnt];
    dev.download(buf, bytemuck::cast_slice_mut(&mut s), "row status")?;
    match status_problem(&s, "the backward kernel") {
        Some(msg) => Err(BkError::Backend { backend: name.into(), msg }),
        None => Ok(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_align_to_the_reduction_blocks_unless_the_batch_fits() {
        let b = VJP_BLOCK_ROWS as usize;
        assert_eq!(chunk_rows(100, 10, 10_000, None), 100);
        assert_eq!(chunk_rows(1000, 10, 5_000, None), 500 / b * b);
        assert_eq!(chunk_rows(1000, 10, 100, None), 10); // fewer than a block fit: still runs
        assert_eq!(chunk_rows(1000, 10, usize::MAX, Some(130)), 128);
        assert_eq!(chunk_rows(0, 10, 100, None), 1);
        assert!(chunk_rows(usize::MAX / 2, 1, usize::MAX, None) <= MAX_CHUNK_ROWS);
    }
}
