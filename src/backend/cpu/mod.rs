//! The CPU backend: tiles of L rows through the lane recursion, tiles spread over threads.
//!
//! Per tile, the recursion pulls potentials block by block (dequantize, transpose to lanes, NaN
//! policy; `io`) in its forward pass, so input traffic overlaps arithmetic; G is stored after the
//! tile, rows front to back eight at a time (`store`): written block by block from the backward
//! pass, the tile's many short descending row streams cost more than they overlap. The whole tile
//! is compiled for AVX2 + FMA where the CPU has them. `Compute::Auto` redoes
//! a tile in f64 when a value leaves the safe f32 range; a non-finite G from finite input is a
//! singular matrix, located by the oracle and reported with its row and position.

use super::lanes::{Real, Recur, Tile};
use super::{auto_wants_f64, check_call, Backend, Compute, GOutput, SolveInfo, SolveOptions, VInput};
use super::F32_MAX_V;
use crate::error::{BkError, Result};
use crate::problem::{NanPolicy, Problem};
use crate::quant::QComplex;
use crate::reference;
use num_complex::Complex64;
use rayon::prelude::*;

// io and vjp test finiteness branch-free with `x − x` (NaN exactly for ±inf and NaN).
#[allow(clippy::eq_op)]
mod chunked;
#[allow(clippy::eq_op)]
mod io;
mod store;
#[allow(clippy::eq_op)]
mod vjp;

use io::Io;
use store::{q_chunks, store_unfused, Chunk};

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
        if chunked::wanted(rows, p.n(), out) {
            if let Some(info) = chunked::solve(p, &v, rows, mode, out, avx2()) {
                return Ok(info);
            }
        }
        let ctx = Ctx { p, v, rows, n: p.n(), mode, policy: opts.nan_policy };
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

thread_local! {
    /// The last scratch this thread used, kept so repeated calls of one shape allocate nothing.
    static SCRATCH: std::cell::RefCell<Option<Box<dyn std::any::Any>>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` with this thread's scratch for (L, n), creating it if the cached one does not fit.
fn with_scratch<const L: usize, R>(n: usize, f: impl FnOnce(&mut Scratch<L>) -> R) -> R {
    let cached = SCRATCH.with(|c| c.borrow_mut().take());
    let mut s = cached
        .and_then(|b| b.downcast::<Scratch<L>>().ok())
        .filter(|s| s.f32.v.len() == n)
        .unwrap_or_else(|| Box::new(Scratch { f32: Tile::new(n), f64: None, rows: Vec::new() }));
    let r = f(&mut s);
    SCRATCH.with(|c| *c.borrow_mut() = Some(s));
    r
}

/// Per-thread scratch.
struct Scratch<const L: usize> {
    f32: Tile<f32, L>,
    f64: Option<Tile<f64, L>>,
    /// Eight rows of one part of G, for the quantized stores.
    rows: Vec<f32>,
}

struct Ctx<'a> {
    p: &'a Problem,
    v: VInput<'a>,
    rows: usize,
    n: usize,
    mode: Mode,
    policy: NanPolicy,
}

impl Ctx<'_> {
    fn run<const L: usize>(&self, out: &mut GOutput) -> Result<SolveInfo>
    where
        f32: Recur<L>,
        f64: Recur<L>,
    {
        let (rows, n) = (self.rows, self.n);
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
        let tile = |(t, chunk): (usize, Chunk<'_>)| with_scratch::<L, _>(n, |s| self.tile(t, chunk, s));
        let rows_f64: usize = if rows * n >= PARALLEL_MIN_ELEMS && chunks.len() > 1 {
            chunks.into_par_iter().enumerate().map(tile).try_reduce(|| 0, |a, b| Ok(a + b))?
        } else {
            chunks.into_iter().enumerate().map(tile).sum::<Result<usize>>()?
        };
        Ok(SolveInfo { rows, rows_f64, ..Default::default() })
    }

    /// Solves tile `t` into its chunk; returns how many of its rows ran in f64. Runs the whole
    /// tile (transposes, recursion, checks) compiled for AVX2 + FMA where the CPU has them.
    fn tile<const L: usize>(&self, t: usize, chunk: Chunk<'_>, s: &mut Scratch<L>) -> Result<usize>
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
            ) -> Result<usize>
            where
                f32: Recur<L>,
                f64: Recur<L>,
            {
                ctx.tile_body::<L, true>(t, chunk, s)
            }
            if avx2() {
                // SAFETY: the CPU reports AVX2 and FMA, the only requirements of `tile_avx2`.
                return unsafe { tile_avx2(self, t, chunk, s) };
            }
        }
        self.tile_body::<L, false>(t, chunk, s)
    }

    /// With `AVX2`, the caller guarantees the CPU has AVX2 and FMA (only `tile_avx2` sets it).
    #[inline(always)]
    fn tile_body<const L: usize, const AVX2: bool>(
        &self,
        t: usize,
        mut chunk: Chunk<'_>,
        s: &mut Scratch<L>,
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
            // Built on first use and kept with the problem; an f32 call rarely needs the f64
            // constants (only for the tiles that fall back).
            let c32 = self.p.consts_f32();
            // SAFETY: AVX2 is set only by `tile_avx2`, called after checking AVX2 and FMA.
            unsafe { f32::recur::<AVX2>(c32, &mut s.f32, &mut io) };
            let (vmax, bad) = io.finish()?;
            if vmax <= F32_MAX_V && (bad.is_empty() || self.mode == Mode::F32) {
                self.check_singular(r0, &bad, &s.f32)?;
                store_unfused(&s.f32, live, &mut chunk, &mut s.rows);
                return Ok(0);
            }
        }
        let t64 = s.f64.get_or_insert_with(|| Tile::new(self.n));
        let mut io = Io::<f64, L>::new(self, r0, live, &mut chunk);
        let c64 = self.p.consts_f64();
        // SAFETY: as for the f32 pass above.
        unsafe { f64::recur::<AVX2>(c64, t64, &mut io) };
        let (_, bad) = io.finish()?;
        self.check_singular(r0, &bad, t64)?;
        store_unfused(t64, live, &mut chunk, &mut s.rows);
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
