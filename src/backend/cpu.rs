//! The CPU backend: tiles of L rows through the lane recursion, tiles spread over threads.
//!
//! Per tile, the recursion pulls potentials block by block (dequantize, transpose to lanes, NaN
//! policy) in its forward pass and pushes G block by block (transpose back to rows) in its
//! backward pass, so memory traffic overlaps arithmetic; quantized outputs are stored after the
//! tile. The whole tile is compiled for AVX2 + FMA where the CPU has them. `Compute::Auto` redoes
//! a tile in f64 when a value leaves the safe f32 range; a non-finite G from finite input is a
//! singular matrix, located by the oracle and reported with its row and position.

use super::lanes::{Consts, Real, Recur, Tile, TileIo};
use super::{auto_wants_f64, check_call, Backend, Compute, GOutput, SolveInfo, SolveOptions, VInput};
use super::F32_MAX_V;
use crate::error::{BkError, Result};
use crate::problem::{NanPolicy, Problem};
use crate::quant::tensor::row_params;
use crate::quant::{codec, AffineParams, Bits, QComplex, QTensor, QuantSpec};
use crate::reference;
use half::{bf16, f16};
use num_complex::{Complex, Complex32, Complex64};
use rayon::prelude::*;

mod vjp;

/// Complex outputs at least this large are written with non-temporal stores.
const STREAM_MIN_BYTES: usize = 8 << 20;

/// Below this many elements a call runs on the calling thread: waking the pool costs more.
const PARALLEL_MIN_ELEMS: usize = 1 << 15;

#[derive(Clone, Debug, Default)]
pub struct CpuBackend {
    _private: (),
}

impl CpuBackend {
    pub fn new() -> Self {
        CpuBackend { _private: () }
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn device(&self) -> String {
        let simd = if avx2() { "AVX2" } else { "scalar" };
        format!("{}, {} threads, {simd}", cpu_model(), rayon::current_num_threads())
    }

    fn copy_bandwidth(&self, bytes: usize) -> Result<f64> {
        // All threads copy their share of a buffer larger than the caches; median of a few runs.
        let len = (bytes / 8).max(1 << 16);
        let src: Vec<u64> = (0..len as u64).collect();
        let mut dst = vec![0u64; len];
        let chunk = len.div_ceil(rayon::current_num_threads());
        let mut times = Vec::new();
        for _ in 0..7 {
            let t = std::time::Instant::now();
            dst.par_chunks_mut(chunk).zip(src.par_chunks(chunk)).for_each(|(d, s)| d.copy_from_slice(s));
            times.push(t.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        std::hint::black_box(&dst);
        Ok((2 * len * 8) as f64 / times[times.len() / 2])
    }

    fn solve_into(&self, p: &Problem, v: VInput<'_>, out: &mut GOutput, opts: &SolveOptions) -> Result<SolveInfo> {
        let rows = check_call(p, &v, out)?;
        let mode = match opts.compute {
            Compute::F32 => Mode::F32,
            Compute::F64 => Mode::F64,
            Compute::Auto if auto_wants_f64(p) => Mode::F64,
            Compute::Auto => Mode::F32Fallback,
        };
        let stream = rows * p.n() * 8 >= STREAM_MIN_BYTES;
        let ctx = Ctx { p, v, rows, n: p.n(), mode, policy: opts.nan_policy, stream };
        // Fewer lanes for small batches: padding lanes cost as much as real ones.
        match rows {
            0..=8 => ctx.run::<8>(out),
            9..=16 => ctx.run::<16>(out),
            _ => ctx.run::<32>(out),
        }
    }

    fn vjp_into(&self, p: &Problem, v: VInput<'_>, g_bar: crate::grad::GradG<'_>, out: &mut crate::grad::Vjp, opts: &SolveOptions) -> Result<SolveInfo> {
        vjp::vjp_into(p, v, g_bar, out, opts)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    F32,
    F64,
    F32Fallback,
}

fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// One tile's share of a quantized output part (re or im).
struct QChunk<'a> {
    spec: QuantSpec,
    /// Static parameters; `None` when the store path computes them per row.
    params: Option<&'a AffineParams>,
    codes: &'a mut [u8],
    dyn_scale: Option<&'a mut [f32]>,
    dyn_zero: Option<&'a mut [i16]>,
}

/// Splits one quantized part into per-tile views of `tile_rows` rows.
fn q_chunks(q: &mut QTensor, tile_rows: usize) -> Vec<QChunk<'_>> {
    let n = q.n();
    let (spec, codes, params) = q.parts_mut();
    let codes = codes.chunks_mut(tile_rows * spec.bits.row_bytes(n));
    if spec.dynamic {
        let per_tile = tile_rows * spec.groups(n);
        let mut zeros = params.zero.as_mut().map(|z| z.chunks_mut(per_tile));
        codes
            .zip(params.scale.chunks_mut(per_tile))
            .map(|(codes, scale)| QChunk {
                spec,
                params: None,
                codes,
                dyn_scale: Some(scale),
                dyn_zero: zeros.as_mut().and_then(|z| z.next()),
            })
            .collect()
    } else {
        let params = &*params;
        codes.map(|codes| QChunk { spec, params: Some(params), codes, dyn_scale: None, dyn_zero: None }).collect()
    }
}

enum Chunk<'a> {
    C64(&'a mut [Complex32]),
    C128(&'a mut [Complex64]),
    Cf16(&'a mut [Complex<f16>]),
    Cbf16(&'a mut [Complex<bf16>]),
    Quant(QChunk<'a>, QChunk<'a>),
}

thread_local! {
    /// The last scratch this thread used, kept so repeated calls of one shape allocate nothing.
    static SCRATCH: std::cell::RefCell<Option<Box<dyn std::any::Any>>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` with this thread's scratch for (L, n, groups), creating it if the cached one does
/// not fit.
fn with_scratch<const L: usize, R>(n: usize, groups: usize, f: impl FnOnce(&mut Scratch<L>) -> R) -> R {
    let cached = SCRATCH.with(|c| c.borrow_mut().take());
    let mut s = cached
        .and_then(|b| b.downcast::<Scratch<L>>().ok())
        .filter(|s| s.f32.v.len() == n && s.lane_params.len() == groups)
        .unwrap_or_else(|| Box::new(Scratch { f32: Tile::new(n), f64: None, lane_params: vec![[(0.0, 0); L]; groups] }));
    let r = f(&mut s);
    SCRATCH.with(|c| *c.borrow_mut() = Some(s));
    r
}

/// Per-thread scratch.
struct Scratch<const L: usize> {
    f32: Tile<f32, L>,
    f64: Option<Tile<f64, L>>,
    /// Per-(group, lane) parameters for dynamic output quantization.
    lane_params: Vec<[(f32, i32); L]>,
}

struct Ctx<'a> {
    p: &'a Problem,
    v: VInput<'a>,
    rows: usize,
    n: usize,
    mode: Mode,
    policy: NanPolicy,
    /// Output large enough that non-temporal stores pay (it cannot stay in cache anyway).
    stream: bool,
}

impl Ctx<'_> {
    fn run<const L: usize>(&self, out: &mut GOutput) -> Result<SolveInfo>
    where
        f32: Recur<L>,
        f64: Recur<L>,
    {
        let (rows, n) = (self.rows, self.n);
        let groups = match &*out {
            GOutput::Quant(q) if q.re.spec().dynamic => q.re.spec().groups(n),
            _ => 0,
        };
        let chunks: Vec<Chunk<'_>> = match out {
            GOutput::C64(g) => g.chunks_mut(L * n).map(Chunk::C64).collect(),
            GOutput::C128(g) => g.chunks_mut(L * n).map(Chunk::C128).collect(),
            GOutput::Cf16(g) => g.chunks_mut(L * n).map(Chunk::Cf16).collect(),
            GOutput::Cbf16(g) => g.chunks_mut(L * n).map(Chunk::Cbf16).collect(),
            GOutput::Quant(q) => {
                let QComplex { re, im } = q;
                q_chunks(re, L).into_iter().zip(q_chunks(im, L)).map(|(a, b)| Chunk::Quant(a, b)).collect()
            }
        };
        let c32 = Consts::<f32>::new(self.p);
        let c64 = Consts::<f64>::new(self.p);
        let tile = |(t, chunk): (usize, Chunk<'_>)| with_scratch::<L, _>(n, groups, |s| self.tile(t, chunk, s, &c32, &c64));
        let rows_f64: usize = if rows * n >= PARALLEL_MIN_ELEMS && chunks.len() > 1 {
            chunks.into_par_iter().enumerate().map(tile).try_reduce(|| 0, |a, b| Ok(a + b))?
        } else {
            chunks.into_iter().enumerate().map(tile).sum::<Result<usize>>()?
        };
        Ok(SolveInfo { rows, rows_f64 })
    }

    /// Solves tile `t` into its chunk; returns how many of its rows ran in f64. Runs the whole
    /// tile (transposes, recursion, checks) compiled for AVX2 + FMA where the CPU has them.
    fn tile<const L: usize>(&self, t: usize, chunk: Chunk<'_>, s: &mut Scratch<L>, c32: &Consts<f32>, c64: &Consts<f64>) -> Result<usize>
    where
        f32: Recur<L>,
        f64: Recur<L>,
    {
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx2,fma")]
            unsafe fn tile_avx2<const L: usize>(
                ctx: &Ctx<'_>,
                t: usize,
                chunk: Chunk<'_>,
                s: &mut Scratch<L>,
                c32: &Consts<f32>,
                c64: &Consts<f64>,
            ) -> Result<usize>
            where
                f32: Recur<L>,
                f64: Recur<L>,
            {
                ctx.tile_body(t, chunk, s, c32, c64)
            }
            if avx2() {
                // SAFETY: the CPU reports AVX2 and FMA, the only requirements of `tile_avx2`.
                return unsafe { tile_avx2(self, t, chunk, s, c32, c64) };
            }
        }
        self.tile_body(t, chunk, s, c32, c64)
    }

    #[inline(always)]
    fn tile_body<const L: usize>(
        &self,
        t: usize,
        mut chunk: Chunk<'_>,
        s: &mut Scratch<L>,
        c32: &Consts<f32>,
        c64: &Consts<f64>,
    ) -> Result<usize>
    where
        f32: Recur<L>,
        f64: Recur<L>,
    {
        let r0 = t * L;
        let live = L.min(self.rows - r0);
        if self.mode != Mode::F64 {
            // Small pivots cannot reach this f32 path in Auto mode (auto_wants_f64 sent small
            // |Im z| and non-Hermitian H0 to f64, and |α_i| ≥ |Im z| otherwise). What remains is
            // overflow: huge potentials, and anything non-finite, which the f64 pass settles.
            let mut io = Io::<f32, L>::new(self, r0, live, &mut chunk);
            f32::recur(c32, &mut s.f32, &mut io);
            let (vmax, bad) = io.finish()?;
            if vmax <= F32_MAX_V && (bad.is_empty() || self.mode == Mode::F32) {
                self.check_singular(r0, &bad, &s.f32)?;
                store_unfused(&s.f32, live, &mut chunk, &mut s.lane_params, self.stream);
                return Ok(0);
            }
        }
        let t64 = s.f64.get_or_insert_with(|| Tile::new(self.n));
        let mut io = Io::<f64, L>::new(self, r0, live, &mut chunk);
        f64::recur(c64, t64, &mut io);
        let (_, bad) = io.finish()?;
        self.check_singular(r0, &bad, t64)?;
        store_unfused(t64, live, &mut chunk, &mut s.lane_params, self.stream);
        Ok(live)
    }

    /// A non-finite G from a finite row means a singular matrix: locate it with the oracle.
    /// `bad` lists the lanes holding a non-finite G.
    #[inline(always)]
    fn check_singular<T: Real, const L: usize>(&self, r0: usize, bad: &[usize], t: &Tile<T, L>) -> Result<()> {
        for &l in bad {
            let row_v: Vec<f64> = t.v.iter().map(|lane| lane[l].to_f64()).collect();
            if row_v.iter().any(|x| !x.is_finite()) {
                continue; // a NaN-propagate row: its NaN output is what was asked for
            }
            let mut g = vec![Complex64::default(); self.n];
            let pos = match reference::solve_row(self.p, &row_v, &mut g) {
                Err(pos) => pos,
                Ok(()) => (0..self.n).find(|&i| !finite(t.g_re[i][l]) || !finite(t.g_im[i][l])).unwrap_or(0),
            };
            return Err(BkError::SingularPivot { row: r0 + l, pos, im_z: self.p.z().im });
        }
        Ok(())
    }
}

#[inline(always)]
fn finite<T: Real>(x: T) -> bool {
    x.to_f64().is_finite()
}

/// The I/O of one tile: reads rows of the input into lane blocks (dequantizing, applying the
/// NaN policy) and writes complex G blocks back to rows, keeping what the checks need.
struct Io<'c, 'o, T, const L: usize> {
    ctx: &'c Ctx<'c>,
    r0: usize,
    live: usize,
    /// Source row of each lane (padding lanes repeat the last live row, so they behave like
    /// real data).
    rows: [usize; L],
    chunk: &'c mut Chunk<'o>,
    /// Σ (x − x) over G per lane: 0 while every value is finite.
    bad_out: [T; L],
    vmax: [T; L],
    first_bad: Option<(usize, usize, f64)>,
}

impl<'c, 'o, T: Real, const L: usize> Io<'c, 'o, T, L> {
    #[inline(always)]
    fn new(ctx: &'c Ctx<'c>, r0: usize, live: usize, chunk: &'c mut Chunk<'o>) -> Self {
        Io {
            ctx,
            r0,
            live,
            rows: std::array::from_fn(|l| r0 + l.min(live - 1)),
            chunk,
            bad_out: [T::ZERO; L],
            vmax: [T::ZERO; L],
            first_bad: None,
        }
    }

    /// max |v| over the live lanes and the live lanes whose G is not finite; or the NaN-policy
    /// error for the first non-finite potential.
    #[inline(always)]
    fn finish(self) -> Result<(f64, Vec<usize>)> {
        if self.ctx.stream {
            super::transpose::store_fence();
        }
        if let Some((row, pos, value)) = self.first_bad {
            return Err(BkError::NonFinite { tensor: "v".into(), row, pos, value });
        }
        let vmax = self.vmax[..self.live].iter().fold(0f64, |m, x| m.max(x.to_f64()));
        Ok((vmax, (0..self.live).filter(|&l| self.bad_out[l] != T::ZERO).collect()))
    }

    /// Applies the NaN policy to a block holding a non-finite value (the rare path).
    #[cold]
    fn non_finite(&mut self, i0: usize, v: &mut [[T; L]]) {
        match self.ctx.policy {
            NanPolicy::Propagate => {}
            NanPolicy::Zero => v.iter_mut().flat_map(|lane| lane.iter_mut()).for_each(|x| {
                if !finite(*x) {
                    *x = T::ZERO;
                }
            }),
            NanPolicy::Error => {
                for (ii, lane) in v.iter().enumerate() {
                    if let Some(l) = (0..self.live).find(|&l| !finite(lane[l])) {
                        let here = (self.r0 + l, i0 + ii, lane[l].to_f64());
                        // Report the earliest row, then the earliest position in it.
                        if self.first_bad.is_none_or(|(r, p, _)| (here.0, here.1) < (r, p)) {
                            self.first_bad = Some(here);
                        }
                    }
                }
            }
        }
    }

    #[inline(always)]
    fn fill_with(v: &mut [[T; L]], i0: usize, get: impl Fn(usize, usize) -> T) {
        for l in 0..L {
            for (ii, lane) in v.iter_mut().enumerate() {
                lane[l] = get(l, i0 + ii);
            }
        }
    }
}

impl<T: Real, const L: usize> TileIo<T, L> for Io<'_, '_, T, L> {
    #[inline(always)]
    fn fill(&mut self, i0: usize, v: &mut [[T; L]]) {
        let n = self.ctx.n;
        let rows = &self.rows;
        match self.ctx.v {
            VInput::F32(x) => {
                let src: [&[f32]; L] = std::array::from_fn(|l| &x[rows[l] * n..(rows[l] + 1) * n]);
                if !T::fill_block_f32(&src, i0, v) {
                    Self::fill_with(v, i0, |l, i| T::from_f32(src[l][i]));
                }
            }
            VInput::F64(x) => Self::fill_with(v, i0, |l, i| T::from_f64(x[rows[l] * n + i])),
            VInput::F16(x) => Self::fill_with(v, i0, |l, i| T::from_f32(x[rows[l] * n + i].to_f32())),
            VInput::Bf16(x) => Self::fill_with(v, i0, |l, i| T::from_f32(x[rows[l] * n + i].to_f32())),
            VInput::Quant(q) => {
                let spec = *q.spec();
                let g = spec.group_size;
                let codes: [&[u8]; L] = std::array::from_fn(|l| q.row_codes(rows[l]));
                let params: [(&[f32], Option<&[i16]>); L] = std::array::from_fn(|l| row_params(&spec, q.params(), rows[l], n));
                let param = |l: usize, i: usize| {
                    let (scale, zero) = params[l];
                    (scale[i / g], zero.map_or(0, |z| z[i / g] as i32))
                };
                match spec.bits {
                    Bits::Int8 => Self::fill_with(v, i0, |l, i| {
                        let (s, z) = param(l, i);
                        T::from_f32(codec::dequantize(codes[l][i] as i8 as i32, s, z))
                    }),
                    Bits::Int4 => Self::fill_with(v, i0, |l, i| {
                        let (s, z) = param(l, i);
                        T::from_f32(codec::dequantize(codec::int4_at(codes[l], i) as i32, s, z))
                    }),
                }
            }
        }
        // Finiteness, vectorised over lanes.
        let mut bad = [T::ZERO; L];
        for lane in v.iter() {
            for l in 0..L {
                bad[l] = bad[l] + (lane[l] - lane[l]);
            }
        }
        if bad[..self.live].iter().any(|b| *b != T::ZERO) {
            self.non_finite(i0, v);
        }
        // Magnitude, after the policy replaced what it replaces.
        for lane in v.iter() {
            for l in 0..L {
                let a = if lane[l] < T::ZERO { -lane[l] } else { lane[l] };
                self.vmax[l] = if a > self.vmax[l] { a } else { self.vmax[l] };
            }
        }
    }

    #[inline(always)]
    fn drain(&mut self, i0: usize, re: &[[T; L]], im: &[[T; L]]) {
        let (n, live) = (self.ctx.n, self.live);
        match &mut *self.chunk {
            Chunk::C64(_) => {} // stored after the tile, rows front to back (see store_unfused)
            Chunk::C128(out) => {
                for l in 0..live {
                    for ii in 0..re.len() {
                        out[l * n + i0 + ii] = Complex64::new(re[ii][l].to_f64(), im[ii][l].to_f64());
                    }
                }
            }
            Chunk::Quant(..) | Chunk::Cf16(_) | Chunk::Cbf16(_) => {} // stored after the tile (store_unfused)
        }
        for (r, m) in re.iter().zip(im) {
            for l in 0..L {
                self.bad_out[l] = self.bad_out[l] + (r[l] - r[l]) + (m[l] - m[l]);
            }
        }
    }
}

/// Stores what the block-wise drain does not: quantized outputs, from the finished tile.
#[inline(always)]
fn store_unfused<T: Real, const L: usize>(t: &Tile<T, L>, live: usize, chunk: &mut Chunk<'_>, lane_params: &mut [[(f32, i32); L]], stream: bool) {
    let n = t.v.len();
    match chunk {
        Chunk::Quant(qre, qim) => {
            store_quant(&t.g_re, live, qre, lane_params);
            store_quant(&t.g_im, live, qim, lane_params);
        }
        Chunk::C64(out) => {
            let n8 = n / 8 * 8;
            let done = if T::store_block_c64(&t.g_re[..n8], &t.g_im[..n8], live, out, n, 0, stream) { n8 } else { 0 };
            for l in 0..live {
                for i in done..n {
                    out[l * n + i] = Complex32::new(t.g_re[i][l].to_f32(), t.g_im[i][l].to_f32());
                }
            }
            if stream {
                super::transpose::store_fence();
            }
        }
        // One rounding from the computed value (f32 or f64) to the storage type.
        Chunk::Cf16(out) => store_rows(t, live, out, |x| f16::from_f64(x.to_f64())),
        Chunk::Cbf16(out) => store_rows(t, live, out, |x| bf16::from_f64(x.to_f64())),
        Chunk::C128(_) => {}
    }
}

/// Complex G of the first `live` lanes to rows, each part converted by `conv`.
#[inline(always)]
fn store_rows<T: Real, U, const L: usize>(t: &Tile<T, L>, live: usize, out: &mut [Complex<U>], conv: impl Fn(T) -> U) {
    let n = t.v.len();
    for l in 0..live {
        for i in 0..n {
            out[l * n + i] = Complex::new(conv(t.g_re[i][l]), conv(t.g_im[i][l]));
        }
    }
}

/// Codes of position `i` for all lanes, with static `params` or the per-lane dynamic ones.
#[inline(always)]
fn lane_codes<T: Real, const L: usize>(
    g: &[[T; L]],
    i: usize,
    gs: usize,
    spec: &QuantSpec,
    params: Option<&AffineParams>,
    lane_params: &[[(f32, i32); L]],
    out: &mut [i32; L],
) {
    let (qmin, qmax, j) = (spec.qmin(), spec.qmax(), i / gs);
    match params {
        Some(p) => {
            let (s, z) = p.get(j);
            for l in 0..L {
                out[l] = codec::quantize(g[i][l].to_f32(), s, z, qmin, qmax);
            }
        }
        None => {
            let lp = &lane_params[j];
            for l in 0..L {
                out[l] = codec::quantize(g[i][l].to_f32(), lp[l].0, lp[l].1, qmin, qmax);
            }
        }
    }
}

/// Quantizes one part (re or im) of a tile's G into codes, computing per-row parameters first
/// when the spec is dynamic.
#[inline(always)]
fn store_quant<T: Real, const L: usize>(g: &[[T; L]], live: usize, q: &mut QChunk<'_>, lane_params: &mut [[(f32, i32); L]]) {
    let n = g.len();
    let spec = q.spec;
    let gs = spec.group_size;
    if spec.dynamic {
        let groups = spec.groups(n);
        for (j, lp) in lane_params.iter_mut().enumerate() {
            let mut lo = [f32::INFINITY; L];
            let mut hi = [f32::NEG_INFINITY; L];
            for lane in &g[j * gs..((j + 1) * gs).min(n)] {
                for l in 0..L {
                    let x = lane[l].to_f32();
                    lo[l] = lo[l].min(x);
                    hi[l] = hi[l].max(x);
                }
            }
            for l in 0..live {
                let (s, z) = AffineParams::from_range(&spec, lo[l], hi[l]);
                lp[l] = (s, z as i32);
                if let Some(sc) = q.dyn_scale.as_deref_mut() {
                    sc[l * groups + j] = s;
                }
                if let Some(zs) = q.dyn_zero.as_deref_mut() {
                    zs[l * groups + j] = z;
                }
            }
        }
    }
    // Codes of position i for every lane, computed lane-parallel (vectorised), then scattered to
    // the rows.
    let params = q.params;
    let codes_at = |i: usize, out: &mut [i32; L]| lane_codes(g, i, gs, &spec, params, lane_params, out);
    let rb = spec.bits.row_bytes(n);
    let (mut a, mut b) = ([0i32; L], [0i32; L]);
    match spec.bits {
        Bits::Int8 => {
            for i in 0..n {
                codes_at(i, &mut a);
                for l in 0..live {
                    q.codes[l * rb + i] = a[l] as i8 as u8;
                }
            }
        }
        Bits::Int4 => {
            for byte in 0..rb {
                codes_at(2 * byte, &mut a);
                if 2 * byte + 1 < n {
                    codes_at(2 * byte + 1, &mut b);
                } else {
                    b = [0; L];
                }
                for l in 0..live {
                    q.codes[l * rb + byte] = ((a[l] as u8) & 0x0f) | (((b[l] as u8) & 0x0f) << 4);
                }
            }
        }
    }
}
