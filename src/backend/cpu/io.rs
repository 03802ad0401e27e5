//! The per-tile I/O of the CPU backend: rows of the input into lane blocks (dequantizing and
//! applying the NaN policy) and complex G blocks back to rows, with what the checks need.

use super::store::Chunk;
use super::{finite, Ctx};
use crate::backend::lanes::{Real, TileIo, BLOCK};
use crate::backend::VInput;
use crate::error::{BkError, Result};
use crate::problem::NanPolicy;
use crate::backend::transpose::prefetch;
use crate::quant::tensor::{dequantize_span, row_params};
use crate::quant::Bits;
use num_complex::Complex64;

/// The I/O of one tile: reads rows of the input into lane blocks (dequantizing, applying the
/// NaN policy) and writes complex G blocks back to rows, keeping what the checks need.
pub(super) struct Io<'c, 'o, T, const L: usize> {
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
    /// One block of every lane's row as f32, for sources converted before the transpose.
    stage: [[f32; BLOCK]; L],
}

impl<'c, 'o, T: Real, const L: usize> Io<'c, 'o, T, L> {
    #[inline(always)]
    pub(super) fn new(ctx: &'c Ctx<'c>, r0: usize, live: usize, chunk: &'c mut Chunk<'o>) -> Self {
        Io {
            ctx,
            r0,
            live,
            rows: std::array::from_fn(|l| r0 + l.min(live - 1)),
            chunk,
            bad_out: [T::ZERO; L],
            vmax: [T::ZERO; L],
            first_bad: None,
            stage: [[0.0; BLOCK]; L],
        }
    }

    /// max |v| over the live lanes and the live lanes whose G is not finite; or the NaN-policy
    /// error for the first non-finite potential.
    #[inline(always)]
    pub(super) fn finish(self) -> Result<(f64, Vec<usize>)> {
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
                        if self.first_bad.map_or(true, |(r, p, _)| (here.0, here.1) < (r, p)) {
                            self.first_bad = Some(here);
                        }
                    }
                }
            }
        }
    }

    /// Fills a block from a source whose values are f32 numbers: `row(r, i0, out)` writes
    /// positions i0..i0 + out.len() of row r as f32.
    #[inline(always)]
    fn fill_staged(&mut self, i0: usize, v: &mut [[T; L]], row: impl Fn(usize, usize, &mut [f32])) {
        let len = v.len();
        debug_assert!(len <= BLOCK);
        for l in 0..L {
            row(self.rows[l], i0, &mut self.stage[l][..len]);
        }
        let stage = &self.stage;
        let src: [&[f32]; L] = std::array::from_fn(|l| &stage[l][..len]);
        if !T::fill_block_f32(&src, 0, v) {
            Self::fill_with(v, 0, |l, i| T::from_f32(src[l][i]));
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

/// Per lane, f of every row's value folded with `op` (a sum or a maximum; f ≥ 0 or NaN) from
/// 0. Narrow tiles (under four AVX2 registers of lanes) fold in four running folds, so that the
/// steps of one lane do not wait on each other: with one, each block's checks were a chain of
/// 64–128 dependent adds (≈ 12 % of an 8 × 512 call). Wide tiles have that parallelism across
/// their registers already, and four folds of them would not fit in registers.
#[inline(always)]
fn lane_fold<T: Real, const L: usize>(rows: &[[T; L]], f: impl Fn(T) -> T, op: impl Fn(T, T) -> T) -> [T; L] {
    let step = |acc: &mut [T; L], row: &[T; L]| {
        for l in 0..L {
            acc[l] = op(acc[l], f(row[l]));
        }
    };
    let mut a = [T::ZERO; L];
    if L * std::mem::size_of::<T>() >= 128 {
        for row in rows {
            step(&mut a, row);
        }
        return a;
    }
    let (mut b, mut c, mut d) = ([T::ZERO; L], [T::ZERO; L], [T::ZERO; L]);
    let mut quads = rows.chunks_exact(4);
    for q in &mut quads {
        step(&mut a, &q[0]);
        step(&mut b, &q[1]);
        step(&mut c, &q[2]);
        step(&mut d, &q[3]);
    }
    for row in quads.remainder() {
        step(&mut a, row);
    }
    std::array::from_fn(|l| op(op(a[l], b[l]), op(c[l], d[l])))
}

/// The block of `row` two blocks after the one at `at` (`block` elements per block; clipped to
/// the row): what a block load asks for ahead, as the f32 transpose does.
#[inline(always)]
fn ahead<E>(row: &[E], at: usize, block: usize) -> &[E] {
    let from = (at + 2 * block).min(row.len());
    &row[from..(from + block).min(row.len())]
}

/// Positions i0..i0 + out.len() of row r (rows of n) of a half-precision or quantized input,
/// widened exactly to f32, after asking for the row's lines two blocks further on (rows are too
/// short for the hardware prefetcher to lock on to). f32 and f64 inputs are read in place by
/// every caller and leave `out` untouched.
#[inline(always)]
pub(super) fn widen_span(v: &VInput<'_>, r: usize, n: usize, i0: usize, out: &mut [f32]) {
    let span = i0..i0 + out.len();
    match v {
        VInput::F16(x) => {
            let row = &x[r * n..(r + 1) * n];
            prefetch(ahead(row, i0, BLOCK));
            half::slice::HalfFloatSliceExt::convert_to_f32_slice(&row[span], out)
        }
        VInput::Bf16(x) => {
            let row = &x[r * n..(r + 1) * n];
            prefetch(ahead(row, i0, BLOCK));
            half::slice::HalfFloatSliceExt::convert_to_f32_slice(&row[span], out)
        }
        VInput::Quant(q) => {
            let spec = *q.spec();
            let codes = q.row_codes(r);
            prefetch(match spec.bits {
                Bits::Int8 => ahead(codes, i0, BLOCK),
                Bits::Int4 => ahead(codes, i0 / 2, BLOCK / 2),
            });
            let (scale, zero) = row_params(&spec, q.params(), r, n);
            dequantize_span(&spec, scale, zero, codes, i0, out)
        }
        VInput::F32(_) | VInput::F64(_) => {}
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
            // f32-valued sources: each row's block to f32 first (contiguous, vectorised), then
            // the same transpose as f32 input.
            src @ (VInput::F16(_) | VInput::Bf16(_) | VInput::Quant(_)) => {
                self.fill_staged(i0, v, #[inline(always)] |r, i0, out| widen_span(&src, r, n, i0, out))
            }
        }
        // Finiteness, vectorised over lanes.
        let bad = lane_fold(v, |x| x - x, |a, b| a + b);
        if bad[..self.live].iter().any(|b| *b != T::ZERO) {
            self.non_finite(i0, v);
        }
        // Magnitude, after the policy replaced what it replaces (a NaN left by the propagate
        // policy is skipped: `a > m` is false).
        let max = |m: T, a: T| if a > m { a } else { m };
        let vmax = lane_fold(v, |x| if x < T::ZERO { -x } else { x }, max);
        for l in 0..L {
            self.vmax[l] = max(self.vmax[l], vmax[l]);
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
        let (bad_re, bad_im) = (lane_fold(re, |x| x - x, |a, b| a + b), lane_fold(im, |x| x - x, |a, b| a + b));
        for l in 0..L {
            self.bad_out[l] = self.bad_out[l] + bad_re[l] + bad_im[l];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::lane_fold;

    /// Every row reaches the fold, in narrow and wide tiles and every length around the
    /// four-way split: the sum equals the plain one, and a NaN in any row is seen.
    #[test]
    fn lane_fold_sees_every_row() {
        fn check<const L: usize>() {
            for n in (0..10).chain([63, 64, 65]) {
                let rows: Vec<[f32; L]> = (0..n).map(|i| std::array::from_fn(|l| (i * L + l) as f32)).collect();
                let sum = lane_fold(&rows, |x| x, |a, b| a + b);
                let max = lane_fold(&rows, |x| -x, |m, a| if a > m { a } else { m });
                for l in 0..L {
                    assert_eq!(sum[l], rows.iter().map(|r| r[l]).sum::<f32>(), "L {L} n {n} lane {l}");
                    assert_eq!(max[l], 0.0, "L {L} n {n} lane {l}: values are ≤ 0");
                }
                for bad in 0..n {
                    let mut r = rows.clone();
                    r[bad][L - 1] = f32::NAN;
                    let s = lane_fold(&r, |x| x - x, |a, b| a + b);
                    assert!(s[L - 1].is_nan() && s[..L - 1].iter().all(|&x| x == 0.0), "L {L} n {n} NaN at {bad}");
                }
            }
        }
        check::<8>();
        check::<16>();
        check::<32>();
    }
}
