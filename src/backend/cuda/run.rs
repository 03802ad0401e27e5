//! One solve call on the GPU: host-side checks, batch chunks sized to free device memory,
//! launches, the f64 redo of flagged rows, and per-row status turned into results or errors with
//! the CPU backend's semantics (see `cpu.rs`).

use crate::backend::geometry::Geometry;
use super::kernels::kernel_name;
use super::mem::{cu, upload_new, DevBuf};
use crate::backend::GFormat;
use super::{CudaOptions, Device};
use crate::backend::device::{
    check_rows, nan_code, Arith, q_row_bytes, redo_rows, status_problem, HostV, Mode, MEMORY_FRACTION, MEMORY_MARGIN,
};
use crate::backend::lanes::Consts;
use crate::backend::{check_call, GOutput, SolveInfo, SolveOptions, VInput, F32_MAX_V};
use crate::error::{BkError, Result};
use crate::layout::*;
use crate::problem::Problem;
use crate::quant::{QTensor, QuantSpec};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaEvent, CudaStream, LaunchConfig, PushKernelArg};
use std::sync::Arc;

/// Device copies of one quantized tensor for a batch chunk: codes, and the parameters (static:
/// uploaded once; dynamic: rows of the chunk).
struct QDev {
    spec: QuantSpec,
    codes: DevBuf,
    scale: DevBuf,
    zero: Option<DevBuf>,
}

impl QDev {
    fn new(stream: &Arc<CudaStream>, q: &QTensor, chunk_rows: usize, what: &str) -> Result<QDev> {
        let spec = *q.spec();
        let n = q.n();
        let codes = DevBuf::alloc(stream, chunk_rows * spec.bits.row_bytes(n), what)?;
        let (scale, zero) = if spec.dynamic {
            let len = chunk_rows * spec.groups(n);
            let zero = (!spec.symmetric).then(|| DevBuf::alloc(stream, len * 2, what)).transpose()?;
            (DevBuf::alloc(stream, len * 4, what)?, zero)
        } else {
            let p = q.params();
            let zero = p.zero.as_ref().map(|z| upload_new(stream, bytemuck::cast_slice(z), what)).transpose()?;
            (upload_new(stream, bytemuck::cast_slice(&p.scale), what)?, zero)
        };
        Ok(QDev { spec, codes, scale, zero })
    }

    fn desc(&self, stream: &CudaStream, n: usize) -> BkQTensor {
        let zero = self.zero.as_ref().map_or(0, |z| z.ptr(stream));
        BkQTensor::describe(&self.spec, n, self.codes.ptr(stream), self.scale.ptr(stream), zero)
    }

    /// Uploads rows r0..r0 + cnt of `q` (codes, and parameters when dynamic).
    fn upload_rows(&mut self, stream: &Arc<CudaStream>, q: &QTensor, r0: usize, cnt: usize) -> Result<()> {
        let n = q.n();
        let rb = self.spec.bits.row_bytes(n);
        self.codes.upload(stream, &q.codes()[r0 * rb..(r0 + cnt) * rb], "v codes")?;
        if self.spec.dynamic {
            let g = self.spec.groups(n);
            self.scale.upload(stream, bytemuck::cast_slice(&q.params().scale[r0 * g..(r0 + cnt) * g]), "v scales")?;
            if let (Some(zd), Some(z)) = (self.zero.as_mut(), q.params().zero.as_ref()) {
                zd.upload(stream, bytemuck::cast_slice(&z[r0 * g..(r0 + cnt) * g]), "v zero points")?;
            }
        }
        Ok(())
    }

    /// Downloads rows r0..r0 + cnt into `q` (codes, and parameters when dynamic).
    fn download_rows(&self, stream: &Arc<CudaStream>, q: &mut QTensor, r0: usize, cnt: usize) -> Result<()> {
        let n = q.n();
        let (spec, codes, params) = q.parts_mut();
        let rb = spec.bits.row_bytes(n);
        self.codes.download(stream, &mut codes[r0 * rb..(r0 + cnt) * rb], "G codes")?;
        if spec.dynamic {
            let g = spec.groups(n);
            self.scale.download(stream, bytemuck::cast_slice_mut(&mut params.scale[r0 * g..(r0 + cnt) * g]), "G scales")?;
            if let (Some(zd), Some(z)) = (self.zero.as_ref(), params.zero.as_mut()) {
                zd.download(stream, bytemuck::cast_slice_mut(&mut z[r0 * g..(r0 + cnt) * g]), "G zero points")?;
            }
        }
        Ok(())
    }

    /// Fills the per-chunk parts with `byte` (poisoning; static parameters stay).
    fn poison(&mut self, stream: &Arc<CudaStream>, byte: u8) -> Result<()> {
        self.codes.fill(stream, usize::MAX, byte, "G codes")?;
        if self.spec.dynamic {
            self.scale.fill(stream, usize::MAX, byte, "G scales")?;
            if let Some(z) = self.zero.as_mut() {
                z.fill(stream, usize::MAX, byte, "G zero points")?;
            }
        }
        Ok(())
    }
}

/// Device input of a chunk.
enum VDev {
    Float(DevBuf),
    Quant(QDev),
}

/// Device output of a chunk (one per call; the size difference of the variants does not matter).
#[allow(clippy::large_enum_variant)]
enum GDev {
    Complex(DevBuf),
    Quant(QDev, QDev),
}

/// The constants of one compute type on the device.
struct ConstDev {
    c: DevBuf,
    c_lo: DevBuf,
    k: DevBuf,
}

impl ConstDev {
    fn new(stream: &Arc<CudaStream>, p: &Problem, f64: bool) -> Result<ConstDev> {
        fn up<T: bytemuck::Pod>(stream: &Arc<CudaStream>, cs: &Consts<T>) -> Result<ConstDev> {
            Ok(ConstDev {
                c: upload_new(stream, bytemuck::cast_slice(&cs.c), "c")?,
                c_lo: upload_new(stream, bytemuck::cast_slice(&cs.c_lo), "c_lo")?,
                k: upload_new(stream, bytemuck::cast_slice(&cs.k), "k")?,
            })
        }
        if f64 {
            up(stream, p.consts_f64())
        } else {
            up(stream, p.consts_f32())
        }
    }
}

/// One compute type's kernel, geometry and share of the scratch.
struct Pass {
    name: String,
    arith: Arith,
    geom: Geometry,
    /// Blocks that fit on the device at once: the grid when the kernel needs scratch.
    slots: u32,
}

impl Pass {
    /// `rows` and `scratch_budget` cap the resident blocks: scratch for blocks that can never have
    /// a row, or that would not fit, is not allocated (the grid-stride kernel is correct with any
    /// grid size, and a row's result does not depend on it).
    #[allow(clippy::too_many_arguments)]
    fn new(
        dev: &Device,
        in_fmt: u32,
        out_fmt: u32,
        arith: Arith,
        n: usize,
        dynamic_out: bool,
        rows: usize,
        scratch_budget: usize,
    ) -> Result<Pass> {
        let name = kernel_name(in_fmt, out_fmt, arith);
        let geom = Geometry::new(n, arith == Arith::F64, dynamic_out);
        let f = dev.kernels.get(&name)?;
        let per_sm =
            cu(f.occupancy_max_active_blocks_per_multiprocessor(geom.threads, geom.shared_bytes as usize, None), || {
                format!("occupancy of {name}")
            })?;
        let mut slots = dev.sms.saturating_mul(per_sm.max(1)).min(rows.min(u32::MAX as usize) as u32).max(1);
        let per_block = geom.scratch_per_block();
        if let Some(fit) = scratch_budget.checked_div(per_block) {
            slots = slots.min(fit.clamp(1, u32::MAX as usize) as u32);
        }
        Ok(Pass { name, arith, geom, slots })
    }

    fn f64(&self) -> bool {
        self.arith == Arith::F64
    }

    fn scratch_bytes(&self) -> usize {
        self.slots as usize * self.geom.scratch_per_block()
    }
}

/// What every launch of one call shares: formats, the main pass and the f64 redo pass, the
/// constants of each compute type, and the scratch.
struct Setup {
    in_fmt: u32,
    out_fmt: u32,
    /// Device bytes of one row of input and of output.
    in_row: usize,
    out_row: usize,
    main: Pass,
    redo: Option<Pass>,
    consts32: Option<ConstDev>,
    consts64: ConstDev,
    scratch: DevBuf,
}

impl Setup {
    fn new(dev: &Device, stream: &Arc<CudaStream>, p: &Problem, hv: &HostV<'_>, out: &GOutput, mode: Mode, rows: usize) -> Result<Setup> {
        let n = p.n();
        let (in_fmt, in_row) = hv.format(n);
        let (out_fmt, out_row, dynamic_out) = match out {
            GOutput::C64(_) => (FMT_C64, n * 8, false),
            GOutput::C128(_) => (FMT_C128, n * 16, false),
            GOutput::Cf16(_) | GOutput::Cbf16(_) => return Err(half_storage()),
            GOutput::Quant(q) => {
                q.re.spec().validate("g.re")?;
                q.im.spec().validate("g.im")?;
                let (re, im) = (q.re.spec(), q.im.spec());
                (BkQTensor::describe(re, n, 0, 0, 0).format, q_row_bytes(re, n) + q_row_bytes(im, n), re.dynamic || im.dynamic)
            }
        };
        let (free, _) = cu(dev.ctx.mem_get_info(), || format!("reading free memory of {}", dev.name))?;
        let scratch_budget = free / 4;
        let arith = Arith::for_problem(p, mode == Mode::F64);
        let main = Pass::new(dev, in_fmt, out_fmt, arith, n, dynamic_out, rows, scratch_budget)?;
        let redo = (mode != Mode::F64)
            .then(|| Pass::new(dev, in_fmt, out_fmt, Arith::F64, n, dynamic_out, rows, scratch_budget))
            .transpose()?;
        let consts32 = (mode != Mode::F64).then(|| ConstDev::new(stream, p, false)).transpose()?;
        let consts64 = ConstDev::new(stream, p, true)?; // the redo pass may need it in any mode
        let scratch_len = main.scratch_bytes().max(redo.as_ref().map_or(0, |r| r.scratch_bytes()));
        let scratch = DevBuf::alloc(stream, scratch_len, "kernel scratch")?;
        Ok(Setup { in_fmt, out_fmt, in_row, out_row, main, redo, consts32, consts64, scratch })
    }

    /// Rows per batch chunk: as many as fit, `copies` input buffers each, in free memory after
    /// the fixed allocations.
    fn chunk_rows(&self, dev: &Device, rows: usize, copies: usize, max: Option<usize>) -> Result<usize> {
        let (free, _) = cu(dev.ctx.mem_get_info(), || format!("reading free memory of {}", dev.name))?;
        let per_row = copies * self.in_row + self.out_row + 8; // + status and row index words
        let budget = ((free as f64 * MEMORY_FRACTION) as usize).saturating_sub(MEMORY_MARGIN);
        if budget < per_row {
            return Err(BkError::Cuda(format!(
                "{}: one row needs {per_row} bytes of device memory but only {free} bytes are free",
                dev.name
            )));
        }
        Ok((budget / per_row).min(rows).min(max.unwrap_or(usize::MAX)).min(i32::MAX as usize).max(1))
    }

    fn consts(&self, pass: &Pass) -> &ConstDev {
        if pass.f64() {
            &self.consts64
        } else {
            self.consts32.as_ref().expect("f32 constants exist whenever an f32 pass does")
        }
    }

    /// One launch of `pass` over `nrows` rows (rows 0..nrows, or the `row_index` list); with
    /// `time`, the events recorded around it.
    #[allow(clippy::too_many_arguments)]
    fn launch(
        &self,
        dev: &Device,
        stream: &Arc<CudaStream>,
        p: &Problem,
        nan_policy: u32,
        pass: &Pass,
        io: (&VDev, &GDev, &DevBuf),
        nrows: usize,
        row_index: u64,
        time: bool,
    ) -> Result<Option<(CudaEvent, CudaEvent)>> {
        let (vdev, gdev, status_dev) = io;
        let n = p.n();
        let g = &pass.geom;
        let consts = self.consts(pass);
        let (g_ptr, g_re, g_im) = match gdev {
            GDev::Complex(b) => (b.ptr(stream), BkQTensor::default(), BkQTensor::default()),
            GDev::Quant(re, im) => (0, re.desc(stream, n), im.desc(stream, n)),
        };
        let (v_ptr, v_q) = match vdev {
            VDev::Float(b) => (b.ptr(stream), BkQTensor::default()),
            VDev::Quant(q) => (0, q.desc(stream, n)),
        };
        let scratch_base = self.scratch.ptr(stream);
        let grid = if g.scratch_per_block() > 0 { (nrows as u32).min(pass.slots) } else { nrows as u32 };
        let params = BkSolveParams {
            v: v_ptr,
            c: consts.c.ptr(stream),
            c_lo: consts.c_lo.ptr(stream),
            k: consts.k.ptr(stream),
            g: g_ptr,
            status: status_dev.ptr(stream),
            row_index,
            ain: scratch_base,
            stage: scratch_base + (pass.slots as usize * g.ain_bytes.next_multiple_of(256)) as u64,
            v_q,
            g_re,
            g_im,
            d_im: -p.z().im,
            v_limit: if pass.f64() { f64::INFINITY } else { F32_MAX_V },
            rows: nrows as u32,
            n: n as u32,
            in_format: self.in_fmt,
            out_format: self.out_fmt,
            compute: if pass.f64() { FMT_F64 } else { FMT_F32 },
            chunk: g.chunk,
            threads: g.threads,
            nan_policy,
            stage_in_shared: g.stage_in_shared as u32,
            scan64: (pass.arith == Arith::F32Scan64) as u32,
        };
        let f = dev.kernels.get(&pass.name)?;
        let cfg = LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (g.threads, 1, 1), shared_mem_bytes: g.shared_bytes };
        let mut b = stream.launch_builder(f);
        b.arg(&params);
        if time {
            b.record_kernel_launch(CUevent_flags::CU_EVENT_DEFAULT);
        }
        // SAFETY: `params` matches bk_solve_params_t (layout pinned by tests/layout.rs) and the
        // kernel named for its formats and compute type. Every pointer in it is a live allocation
        // of this call sized for at least `nrows` rows of N positions: input and output per their
        // formats, the constants for N, status and row index words (row_index entries < the
        // chunk's rows), and scratch for `grid` ≤ slots blocks of this geometry. The kernel checks
        // the geometry fields against its own and flags the rows instead of running when they
        // disagree.
        cu(unsafe { b.launch(cfg) }, || format!("launching {} ({nrows} rows, N = {n}) on {}", pass.name, dev.name))
    }
}

/// An event recorded now on `stream`, with timing enabled (cudarc's default disables it).
fn timing_event(stream: &Arc<CudaStream>) -> Result<CudaEvent> {
    cu(stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT)), || "recording a timing event".into())
}

/// Milliseconds between a pair of timing events; 0 without them.
fn elapsed_ms(ev: Option<(CudaEvent, CudaEvent)>) -> Result<f64> {
    Ok(match ev {
        Some((a, b)) => cu(a.elapsed_ms(&b), || "reading kernel timing events".into())? as f64,
        None => 0.0,
    })
}

fn alloc_vdev(stream: &Arc<CudaStream>, hv: &HostV<'_>, rows: usize, in_row: usize) -> Result<VDev> {
    Ok(match hv {
        HostV::F32(_) | HostV::F64(_) => VDev::Float(DevBuf::alloc(stream, rows * in_row, "v")?),
        HostV::Quant(q) => VDev::Quant(QDev::new(stream, q, rows, "v")?),
    })
}

fn upload_v(stream: &Arc<CudaStream>, vdev: &mut VDev, hv: &HostV<'_>, n: usize, r0: usize, cnt: usize) -> Result<()> {
    match (vdev, hv) {
        (VDev::Float(b), HostV::F32(x)) => b.upload(stream, bytemuck::cast_slice(&x[r0 * n..(r0 + cnt) * n]), "v"),
        (VDev::Float(b), HostV::F64(x)) => b.upload(stream, bytemuck::cast_slice(&x[r0 * n..(r0 + cnt) * n]), "v"),
        (VDev::Quant(qd), HostV::Quant(q)) => qd.upload_rows(stream, q, r0, cnt),
        _ => unreachable!("device input matches host input by construction"),
    }
}

fn alloc_gdev(stream: &Arc<CudaStream>, out: &GOutput, rows: usize, out_row: usize) -> Result<GDev> {
    Ok(match out {
        GOutput::Quant(q) => GDev::Quant(QDev::new(stream, &q.re, rows, "G.re")?, QDev::new(stream, &q.im, rows, "G.im")?),
        _ => GDev::Complex(DevBuf::alloc(stream, rows * out_row, "G")?),
    })
}

pub(super) fn solve(
    dev: &Device,
    stream: &Arc<CudaStream>,
    copts: &CudaOptions,
    p: &Problem,
    v: VInput<'_>,
    out: &mut GOutput,
    opts: &SolveOptions,
) -> Result<(SolveInfo, Option<f64>)> {
    let rows = check_call(p, &v, out)?;
    let n = p.n();
    // The calling thread may be new to this context (test threads, rayon workers).
    cu(dev.ctx.bind_to_thread(), || format!("binding the context of {}", dev.name))?;
    check_n(n)?;
    let mode = Mode::of(p, opts.compute);
    // The NaN policy for float inputs is applied here, before upload; the kernels apply it to
    // potentials they dequantize themselves.
    let hv = HostV::new(v, n, opts.nan_policy, "cuda")?;
    let setup = Setup::new(dev, stream, p, &hv, out, mode, rows)?;
    let chunk_rows = setup.chunk_rows(dev, rows, 1, copts.max_chunk_rows)?;
    let mut vdev = alloc_vdev(stream, &hv, chunk_rows, setup.in_row)?;
    let mut gdev = alloc_gdev(stream, out, chunk_rows, setup.out_row)?;
    let mut status_dev = DevBuf::alloc(stream, chunk_rows * 4, "row status")?;
    let mut index_dev = DevBuf::alloc(stream, chunk_rows * 4, "row index")?;
    let nan = nan_code(opts.nan_policy);

    let mut rows_f64 = 0usize;
    let mut kernel_ms = 0f64;
    for r0 in (0..rows).step_by(chunk_rows) {
        let cnt = chunk_rows.min(rows - r0);
        upload_v(stream, &mut vdev, &hv, n, r0, cnt)?;
        status_dev.fill(stream, cnt * 4, copts.poison.unwrap_or(0), "row status")?;
        if let Some(byte) = copts.poison {
            match &mut gdev {
                GDev::Complex(b) => b.fill(stream, usize::MAX, byte, "G")?,
                GDev::Quant(re, im) => {
                    re.poison(stream, byte)?;
                    im.poison(stream, byte)?;
                }
            }
        }

        let main = &setup.main;
        let ev = setup.launch(dev, stream, p, nan, main, (&vdev, &gdev, &status_dev), cnt, 0, copts.time_kernels)?;
        let mut status = read_status(stream, &status_dev, cnt, &main.name)?;
        kernel_ms += elapsed_ms(ev)?;
        let mut ran_f64 = vec![main.f64(); cnt];
        if let Some(redo) = &setup.redo {
            // Like the CPU: huge potentials always move a row to f64; a non-finite G does in Auto.
            let idx = redo_rows(&status, mode);
            if !idx.is_empty() {
                index_dev.upload(stream, bytemuck::cast_slice(&idx), "row index")?;
                let io = (&vdev, &gdev, &status_dev);
                let ev = setup.launch(dev, stream, p, nan, redo, io, idx.len(), index_dev.ptr(stream), copts.time_kernels)?;
                status = read_status(stream, &status_dev, cnt, &redo.name)?;
                kernel_ms += elapsed_ms(ev)?;
                for &r in &idx {
                    ran_f64[r as usize] = true;
                }
                rows_f64 += idx.len();
            }
        } else {
            rows_f64 += cnt;
        }

        match (&gdev, &mut *out) {
            (GDev::Complex(b), GOutput::C64(g)) => {
                b.download(stream, bytemuck::cast_slice_mut(&mut g[r0 * n..(r0 + cnt) * n]), "G")?
            }
            (GDev::Complex(b), GOutput::C128(g)) => {
                b.download(stream, bytemuck::cast_slice_mut(&mut g[r0 * n..(r0 + cnt) * n]), "G")?
            }
            (GDev::Quant(re, im), GOutput::Quant(q)) => {
                re.download_rows(stream, &mut q.re, r0, cnt)?;
                im.download_rows(stream, &mut q.im, r0, cnt)?;
            }
            _ => unreachable!("device output matches host output by construction"),
        }
        cu(stream.synchronize(), || format!("waiting for results on {}", dev.name))?;
        check_rows(p, &hv, opts.nan_policy, r0, &status, &ran_f64, |row| first_nonfinite(out, row, n))?;
    }
    Ok((SolveInfo { rows, rows_f64, ..Default::default() }, copts.time_kernels.then_some(kernel_ms)))
}

fn check_n(n: usize) -> Result<()> {
    if n > i32::MAX as usize {
        return Err(BkError::InvalidArgument(format!("N = {n}: the CUDA backend takes rows of at most 2^31 - 1 positions")));
    }
    Ok(())
}

/// Seconds per call of the main kernel, device-resident: every input set is uploaded once, the
/// output stays on the device, and each timed repetition is a run of back-to-back launches
/// between two events (cycling through the sets), divided by their number. The benchmark's
/// inputs never need the f64 redo; a row the kernel did not finish is still an error.
pub(super) fn time(
    dev: &Device,
    stream: &Arc<CudaStream>,
    p: &Problem,
    inputs: &[VInput<'_>],
    fmt: &GFormat,
    opts: &SolveOptions,
    reps: usize,
) -> Result<Vec<f64>> {
    let first = inputs.first().ok_or_else(|| BkError::InvalidArgument("time_solves needs at least one input".into()))?;
    let n = p.n();
    let rows = crate::backend::input_rows(p, first)?;
    cu(dev.ctx.bind_to_thread(), || format!("binding the context of {}", dev.name))?;
    check_n(n)?;
    let out = GOutput::alloc(fmt, rows, n)?;
    let mode = Mode::of(p, opts.compute);
    let hvs = inputs
        .iter()
        .map(|v| {
            if crate::backend::input_rows(p, v)? != rows {
                return Err(BkError::InvalidArgument("time_solves: every input set must have the same rows".into()));
            }
            HostV::new(*v, n, opts.nan_policy, "cuda")
        })
        .collect::<Result<Vec<_>>>()?;
    let setup = Setup::new(dev, stream, p, &hvs[0], &out, mode, rows)?;
    if setup.chunk_rows(dev, rows, hvs.len(), None)? < rows {
        return Err(BkError::Cuda(format!(
            "{}: {} input sets of {rows} rows do not fit in device memory together; time fewer or smaller sets",
            dev.name,
            hvs.len()
        )));
    }
    let mut vdevs = Vec::new();
    for hv in &hvs {
        let mut d = alloc_vdev(stream, hv, rows, setup.in_row)?;
        upload_v(stream, &mut d, hv, n, 0, rows)?;
        vdevs.push(d);
    }
    let gdev = alloc_gdev(stream, &out, rows, setup.out_row)?;
    let mut status_dev = DevBuf::alloc(stream, rows * 4, "row status")?;
    let nan = nan_code(opts.nan_policy);
    let main = &setup.main;
    // Short calls are timed in runs of back-to-back launches (launch gaps included, as a model
    // would see them); long ones one by one.
    let per_run = if rows * n < (1 << 20) { 20 } else { 1 };
    status_dev.fill(stream, rows * 4, 0, "row status")?;
    let mut k = 0usize;
    let mut run = |record: bool| -> Result<f64> {
        let t0 = if record { Some(timing_event(stream)?) } else { None };
        for _ in 0..per_run {
            let io = (&vdevs[k % vdevs.len()], &gdev, &status_dev);
            setup.launch(dev, stream, p, nan, main, io, rows, 0, false)?;
            k += 1;
        }
        match t0 {
            Some(t0) => {
                let t1 = timing_event(stream)?;
                cu(t1.synchronize(), || format!("running {}", main.name))?;
                Ok(elapsed_ms(Some((t0, t1)))? * 1e-3 / per_run as f64)
            }
            None => Ok(0.0),
        }
    };
    for _ in 0..vdevs.len().max(2) {
        run(false)?; // warm-up: module, caches, clocks
    }
    let times = (0..reps.max(1)).map(|_| run(true)).collect::<Result<Vec<f64>>>()?;
    read_status(stream, &status_dev, rows, &main.name)?;
    Ok(times)
}

/// Device-to-device copy bandwidth (bytes read + written per second) over a `bytes`-byte
/// buffer, median of several event-timed copies: the ceiling of a memory-bound kernel.
pub(super) fn copy_bandwidth(dev: &Device, stream: &Arc<CudaStream>, bytes: usize) -> Result<f64> {
    cu(dev.ctx.bind_to_thread(), || format!("binding the context of {}", dev.name))?;
    let (free, _) = cu(dev.ctx.mem_get_info(), || format!("reading free memory of {}", dev.name))?;
    let len = bytes.min(free / 4).max(1 << 20);
    let mut src = DevBuf::alloc(stream, len, "copy source")?;
    let mut dst = DevBuf::alloc(stream, len, "copy destination")?;
    src.fill(stream, len, 0x5a, "copy source")?; // not zeros
    let mut times = Vec::new();
    for rep in 0..9 {
        let t0 = timing_event(stream)?;
        dst.copy_from(stream, &src, "copy bandwidth")?;
        let t1 = timing_event(stream)?;
        cu(t1.synchronize(), || "copying device memory".into())?;
        if rep >= 2 {
            times.push(elapsed_ms(Some((t0, t1)))? * 1e-3);
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(2.0 * len as f64 / times[times.len() / 2])
}

/// Waits for the stream and reads `cnt` status words; a row a kernel did not process, or a
/// launch the kernel rejected, is an internal error.
fn read_status(stream: &Arc<CudaStream>, dev: &DevBuf, cnt: usize, kernel: &str) -> Result<Vec<u32>> {
    let mut s = vec![0u32; cnt];
    dev.download(stream, bytemuck::cast_slice_mut(&mut s), "row status")?;
    cu(stream.synchronize(), || format!("running {kernel}"))?;
    match status_problem(&s, &format!("kernel {kernel}")) {
        Some(msg) => Err(BkError::Cuda(msg)),
        None => Ok(s),
    }
}

/// f16/bf16 storage is widened by `CudaBackend::solve_into` before it gets here.
fn half_storage() -> BkError {
    BkError::Backend { backend: "cuda".into(), msg: "half-precision storage must be widened before the kernels run".into() }
}

fn first_nonfinite(out: &GOutput, row: usize, n: usize) -> Option<usize> {
    match out {
        GOutput::C64(g) => g[row * n..(row + 1) * n].iter().position(|c| !(c.re.is_finite() && c.im.is_finite())),
        GOutput::C128(g) => g[row * n..(row + 1) * n].iter().position(|c| !(c.re.is_finite() && c.im.is_finite())),
        GOutput::Quant(_) | GOutput::Cf16(_) | GOutput::Cbf16(_) => None,
    }
}
