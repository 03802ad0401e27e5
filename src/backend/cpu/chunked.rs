//! Calls of few, long rows: each row cut into chunks, one per lane ([`crate::backend::lanes::chunked`]),
//! where one row per lane would leave most lanes (and threads) idle and run one long chain of
//! divisions per row.
//!
//! Anything out of the ordinary (a non-finite potential, one beyond the f32 range in an f32 call,
//! a non-finite G, a quantized output) returns `None` before or after computing, and the call runs
//! the batch path, which owns the NaN policies, the f64 fallback and the singular-pivot report.

use super::io::widen_span;
use super::store::{store_lane, store_unfused, Chunk};
use super::Mode;
use crate::backend::lanes::chunked::{fix_backward, fix_forward, ChunkTile, Chunked};
use crate::backend::lanes::{with_avx2, Consts, Real};
use crate::backend::{GOutput, SolveInfo, VInput, F32_MAX_V};
use crate::problem::Problem;
use rayon::prelude::*;
use std::sync::Mutex;

/// From this many values on a call spreads over the threads (rows on threads of their own, a
/// single row's tiles over them): below, waking the pool cost more than it saved (scratch loop,
/// medians, one thread vs two: 1 × 16 384 53 vs 151 µs, 1 × 65 536 270 vs 322 µs, 2 × 16 384
/// 90 vs 146 µs; but 2 × 65 536 519 vs 339 µs).
const PARALLEL_MIN_ELEMS: usize = 1 << 17;

/// Lanes of a chunk tile: four AVX2 chains of f32 (eight of f64).
const L: usize = 32;
/// The shortest chunk: a guessed edge value needs a few dozen positions to fall onto the true
/// chain (more near the real axis), and each chunk's fix-up reruns that many one lane at a time.
const MIN_CHUNK: usize = 128;
/// The fewest positions for which chunking one row pays: a row must fill a tile's lanes with
/// chunks of [`MIN_CHUNK`].
const MIN_N: usize = L * MIN_CHUNK;
/// The most rows a chunked call takes. Measured against the batch path (scratch loop over
/// `solve_into`, medians of 200 calls, z = i, 2-core Xeon VM), chunked wins at 1 × 4096 (16 vs
/// 42 µs), 1 × 65 536 (0.25 vs 0.85 ms), 2 × 8192 (51 vs 85 µs), 4 × 65 536 (0.57 vs 0.94 ms), and
/// loses at 4 × 16 384 (218 vs 197 µs, one thread; 214 on two) and 8 × 16 384 (294 vs 241 µs):
/// with several rows the batch path's tiles hold several chains, and the chunked path runs
/// both chains and G in separate passes. So: one row from [`MIN_N`] positions, two from
/// 2·[`MIN_N`], up to four when the call is large enough to spread over the threads.
const MAX_ROWS: usize = 4;

/// How rows are cut: `tiles` tiles of L chunks of `c` positions per row (c a multiple of 8,
/// for the transposes).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Geometry {
    tiles: usize,
    c: usize,
}

impl Geometry {
    /// Enough tiles to give every thread work, none shorter than [`MIN_CHUNK`], none empty.
    fn new(rows: usize, n: usize, threads: usize) -> Self {
        let mut tiles = threads.div_ceil(rows).clamp(1, (n / (L * MIN_CHUNK)).max(1));
        loop {
            let c = n.div_ceil(tiles * L).next_multiple_of(8);
            if tiles == 1 || (tiles - 1) * L * c < n {
                return Geometry { tiles, c };
            }
            tiles -= 1;
        }
    }
    /// Positions per tile.
    fn span(&self) -> usize {
        L * self.c
    }
}

/// Whether this call goes the chunked way.
pub(super) fn wanted(rows: usize, n: usize, out: &GOutput) -> bool {
    let long = match rows {
        1 | 2 => n >= rows * MIN_N,
        3..=MAX_ROWS => rows * n >= 2 * PARALLEL_MIN_ELEMS,
        _ => false,
    };
    long && !matches!(out, GOutput::Quant(_))
}

/// Scratch tiles kept between calls (a 65 536-position row needs ≈ 1.8 MB of f32 tiles; fresh
/// pages on every call cost as much as the solve).
static SCRATCH: Mutex<Option<Box<dyn std::any::Any + Send>>> = Mutex::new(None);

fn take_tiles<T: Real>(count: usize, c: usize) -> Vec<ChunkTile<T, L>> {
    let cached = SCRATCH.lock().ok().and_then(|mut s| s.take());
    let mut tiles = cached.and_then(|b| b.downcast::<Vec<ChunkTile<T, L>>>().ok()).map(|b| *b).unwrap_or_default();
    tiles.retain(|t| t.len() == c);
    tiles.truncate(count);
    while tiles.len() < count {
        tiles.push(ChunkTile::new(c));
    }
    tiles
}

/// The most scratch kept between calls (≈ 36 bytes per position in f32: rows up to ≈ 7 M
/// positions); a larger call's tiles are freed with it. Fresh tiles cost their page faults: at
/// 1 × 4 M positions (151 MB of tiles), 70 ms per call against 20 ms with the tiles kept (the
/// batch path: 109 ms).
const KEEP_MAX_BYTES: usize = 256 << 20;

fn keep_tiles<T: Real>(tiles: Vec<ChunkTile<T, L>>) {
    // Seven planes of L values per position, and the staged row.
    let bytes: usize = tiles.iter().map(|t| 8 * L * t.len() * std::mem::size_of::<T>()).sum();
    if let Ok(mut s) = SCRATCH.lock() {
        *s = (bytes <= KEEP_MAX_BYTES).then(|| Box::new(tiles) as Box<dyn std::any::Any + Send>);
    }
}

/// Solves the call chunked, or returns `None` (having written nothing final) where the batch
/// path must: see the module docs.
pub(super) fn solve(p: &Problem, v: &VInput<'_>, rows: usize, mode: Mode, out: &mut GOutput, avx2: bool) -> Option<SolveInfo> {
    // f32 potentials beyond F32_MAX_V take the batch path's f64 fallback (found in phase 1).
    let ok = if mode == Mode::F64 {
        run::<f64>(p, p.consts_f64(), v, rows, None, out, avx2)
    } else {
        run::<f32>(p, p.consts_f32(), v, rows, Some(F32_MAX_V), out, avx2)
    };
    ok.then_some(SolveInfo { rows, rows_f64: if mode == Mode::F64 { rows } else { 0 }, chunked: true })
}

/// What every tile of a call shares.
struct Call<'a, T> {
    cs: &'a Consts<T>,
    v: &'a VInput<'a>,
    n: usize,
    g: Geometry,
    /// The largest |v| the compute type takes (the batch path falls back to f64 beyond).
    too_big: T,
    avx2: bool,
}

/// The three phases in compute type T; false where the batch path must take over: a
/// non-finite potential, one beyond `vmax` (the f32 range), or a non-finite G.
fn run<T: Real + Chunked<L>>(p: &Problem, cs: &Consts<T>, v: &VInput<'_>, rows: usize, vmax: Option<f64>, out: &mut GOutput, avx2: bool) -> bool {
    let n = p.n();
    let threads = rayon::current_num_threads();
    let parallel = rows * n >= PARALLEL_MIN_ELEMS && threads > 1;
    let g = Geometry::new(rows, n, if parallel { threads } else { 1 });
    let Some(mut outs) = tile_outputs(out, n, rows, g) else {
        return false;
    };
    let mut tiles = take_tiles::<T>(rows * g.tiles, g.c);
    let call = Call { cs, v, n, g, too_big: vmax.map_or(T::from_f64(f64::INFINITY), T::from_f64), avx2 };
    let rows_of = |(r, (tiles, outs)): (usize, (&mut [ChunkTile<T, L>], &mut [Chunk<'_>]))| call.row(r, tiles, outs, parallel);
    // Rows on threads of their own where there are several; one row's tiles share the threads.
    let ok = if parallel && rows > 1 {
        tiles.par_chunks_mut(g.tiles).zip(outs.par_chunks_mut(g.tiles)).enumerate().all(rows_of)
    } else {
        tiles.chunks_mut(g.tiles).zip(outs.chunks_mut(g.tiles)).enumerate().all(rows_of)
    };
    keep_tiles(tiles);
    ok
}

impl<T: Real + Chunked<L>> Call<'_, T> {
    /// Row r through the three phases: its tiles from guessed edges, its chains fixed in row
    /// order, G. With `parallel`, a row of several tiles spreads them over the threads.
    fn row(&self, r: usize, tiles: &mut [ChunkTile<T, L>], outs: &mut [Chunk<'_>], parallel: bool) -> bool {
        let ok = if parallel && tiles.len() > 1 {
            tiles.par_iter_mut().enumerate().all(|(t, ct)| self.speculate(r, t, ct))
        } else {
            tiles.iter_mut().enumerate().all(|(t, ct)| self.speculate(r, t, ct))
        };
        if !ok {
            return false;
        }
        // Phase 2: both chains of every chunk rerun from the true edge values, forward in row
        // order and backward in reverse. (The two directions are independent, but running them
        // on two threads measured slower: waking the second thread cost more than the reruns,
        // 1 × 8192 25 → 43 µs.)
        let chunks = self.n.div_ceil(self.g.c);
        fix_forward(tiles, chunks, self.cs.d_im);
        fix_backward(tiles, chunks, self.cs.d_im);
        let c = self.g.c;
        // SAFETY: `avx2` is true only where the caller found AVX2 and FMA.
        let finish = |(ct, chunk): (&mut ChunkTile<T, L>, &mut Chunk<'_>)| unsafe {
            with_avx2(
                self.avx2,
                #[inline(always)]
                || finish_tile(ct, chunk, c, self.avx2),
            )
        };
        if parallel && tiles.len() > 1 {
            tiles.par_iter_mut().zip(outs).all(finish)
        } else {
            tiles.iter_mut().zip(outs).all(finish)
        }
    }

    /// Phase 1 for tile t of row r: Re d formed as the batch recursion forms it (padding: d = 1),
    /// checked, transposed into lanes with the couplings, both chains from guessed edges.
    fn speculate(&self, r: usize, t: usize, ct: &mut ChunkTile<T, L>) -> bool {
        // SAFETY: `avx2` is true only where the caller found AVX2 and FMA.
        unsafe {
            with_avx2(
                self.avx2,
                #[inline(always)]
                || self.speculate_body(r, t, ct),
            )
        }
    }

    #[inline(always)]
    fn speculate_body(&self, r: usize, t: usize, ct: &mut ChunkTile<T, L>) -> bool {
        let (g, n, cs) = (self.g, self.n, self.cs);
        let first = t * g.span();
        let live = n.min(first + g.span()) - first;
        // Re d = (c + v) + c_lo straight from the input where it is f32 or f64, through
        // f32 scratch for the half and quantized formats; checked on the way.
        let (c, c_lo) = (&cs.c[first..first + live], &cs.c_lo[first..first + live]);
        let d = &mut ct.d_row[..live];
        let span = r * n + first..r * n + first + live;
        let (bad, big) = match self.v {
            VInput::F32(x) => form_d(&x[span], T::from_f32, c, c_lo, d),
            VInput::F64(x) => form_d(&x[span], T::from_f64, c, c_lo, d),
            v => {
                ct.f32s.resize(live, 0.0);
                widen_span(v, r, n, first, &mut ct.f32s);
                form_d(&ct.f32s, T::from_f32, c, c_lo, d)
            }
        };
        if bad != T::ZERO || big > self.too_big {
            return false;
        }
        ct.d_row[live..].fill(T::from_f64(1.0));
        let d_rows: [&[T]; L] = std::array::from_fn(|l| &ct.d_row[l * g.c..][..g.c]);
        T::fill_lanes(&d_rows, &mut ct.t.v);
        // The couplings: k_i for i < n − 1, 0 after (none past the row's end); read in
        // place where a chunk lies inside k, from a padded copy for the row's last.
        let k = &cs.k[..n - 1];
        let tail = first + (k.len().saturating_sub(first) / g.c).min(L) * g.c;
        ct.k_row.clear();
        ct.k_row.extend((tail..first + g.span()).map(|i| if i < k.len() { k[i] } else { T::ZERO }));
        let k_rows: [&[T]; L] = std::array::from_fn(|l| {
            let at = first + l * g.c;
            if at < tail {
                &k[at..at + g.c]
            } else {
                &ct.k_row[at - tail..][..g.c]
            }
        });
        T::fill_lanes(&k_rows, &mut ct.k);
        ct.k_in = std::array::from_fn(|l| {
            let at = first + l * g.c;
            if at == 0 || at > k.len() {
                T::ZERO
            } else {
                k[at - 1]
            }
        });
        ct.guess_edges(cs.d_im);
        // SAFETY: `avx2` is true only where the caller found AVX2 and FMA.
        unsafe {
            if self.avx2 {
                T::speculate::<true>(ct, cs.d_im)
            } else {
                T::speculate::<false>(ct, cs.d_im)
            }
        }
        true
    }
}

/// Phase 3 for one tile: G, checked for finiteness, stored into the tile's share of the
/// output (`c` positions per chunk, the row's last chunk possibly shorter). False for a
/// non-finite G.
fn finish_tile<T: Real + Chunked<L>>(ct: &mut ChunkTile<T, L>, chunk: &mut Chunk<'_>, c: usize, avx2: bool) -> bool {
    // SAFETY: `avx2` is true only where the caller found AVX2 and FMA.
    let finite = unsafe {
        if avx2 {
            T::finish::<true>(ct)
        } else {
            T::finish::<false>(ct)
        }
    };
    if !finite {
        return false;
    }
    let len = chunk.len();
    let (full, part) = (len / c, len % c);
    if full > 0 && !matches!(chunk, Chunk::C128(_)) {
        store_unfused(&ct.t, full, chunk, &mut ct.f32s);
    } else {
        for l in 0..full {
            store_lane(&ct.t, l, c, chunk, l * c);
        }
    }
    if part > 0 {
        store_lane(&ct.t, full, part, chunk, full * c);
    }
    true
}

/// d_i = (c_i + v_i) + c_lo_i for v_i = conv(src_i), as the batch recursion forms Re d, with
/// Σ (v − v) (0 exactly when every v is finite) and max |v| (a NaN never counts as larger), each
/// folded in eight running folds so that the loop vectorises.
#[inline(always)]
fn form_d<T: Real, U: Copy>(src: &[U], conv: impl Fn(U) -> T, c: &[T], c_lo: &[T], d: &mut [T]) -> (T, T) {
    let abs = |x: T| if x < T::ZERO { -x } else { x };
    let max = |m: T, a: T| if a > m { a } else { m };
    let (mut bad, mut big) = ([T::ZERO; 8], [T::ZERO; 8]);
    let len = d.len();
    let (src, c, c_lo) = (&src[..len], &c[..len], &c_lo[..len]);
    let mut step = |j: usize, x: U, c: T, lo: T, d: &mut T| {
        let x = conv(x);
        bad[j] = bad[j] + (x - x);
        big[j] = max(big[j], abs(x));
        *d = c + x + lo;
    };
    let (mut dd, mut ss, mut cc, mut ll) = (d.chunks_exact_mut(8), src.chunks_exact(8), c.chunks_exact(8), c_lo.chunks_exact(8));
    for (((d, s), c), lo) in (&mut dd).zip(&mut ss).zip(&mut cc).zip(&mut ll) {
        for j in 0..8 {
            step(j, s[j], c[j], lo[j], &mut d[j]);
        }
    }
    for (((d, &s), &c), &lo) in dd.into_remainder().iter_mut().zip(ss.remainder()).zip(cc.remainder()).zip(ll.remainder()) {
        step(0, s, c, lo, d);
    }
    (bad.iter().fold(T::ZERO, |a, &b| a + b), big.iter().fold(T::ZERO, |m, &a| max(m, a)))
}

/// The output cut into each tile's share, row by row (the last of a row shorter); `None` for a
/// quantized output, which quantizes whole rows (the batch path's job).
fn tile_outputs(out: &mut GOutput, n: usize, rows: usize, g: Geometry) -> Option<Vec<Chunk<'_>>> {
    let span = g.span();
    let outs: Vec<Chunk<'_>> = match out {
        GOutput::C64(o) => o.chunks_mut(n).flat_map(|r| r.chunks_mut(span)).map(Chunk::C64).collect(),
        GOutput::C128(o) => o.chunks_mut(n).flat_map(|r| r.chunks_mut(span)).map(Chunk::C128).collect(),
        GOutput::Cf16(o) => o.chunks_mut(n).flat_map(|r| r.chunks_mut(span)).map(Chunk::Cf16).collect(),
        GOutput::Cbf16(o) => o.chunks_mut(n).flat_map(|r| r.chunks_mut(span)).map(Chunk::Cbf16).collect(),
        GOutput::Quant(_) => return None,
    };
    // Geometry::new leaves no tile empty, so every tile has its share.
    (outs.len() == rows * g.tiles).then_some(outs)
}
