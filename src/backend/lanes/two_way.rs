//! The two-way schedule of the recursion for tiles of one register chain (batches of up to 8
//! rows in f32). A single chain is latency-bound: each step waits for the previous step's
//! division. Here the forward pass over the left half of the row and the
//! backward pass over the right half run in the same loop, two independent chains; then the
//! forward pass over the right half and the backward pass over the left half, each forming G
//! from what the other direction left behind (−b_i on the right, α_i on the left).
//!
//! Phase 1: α_i for i < m (kept), −b_i = −k_i/β_{i+1} for i ≥ m (kept).
//! Phase 2: α_i for i ≥ m and G_i = 1/(α_i − b_i); β_i for i < m and G_i = 1/(α_i − b_i).
//! The split m is a multiple of the I/O block, so both directions fill and drain whole blocks.

use super::{backward_step, bwd_step_b, d_re, first_pivot, fwd_step, fwd_step_g, Consts, Real, Tile, TileIo, Vector, BLOCK};

/// Runs the two-way schedule; `t.v.len()` must be at least 2·BLOCK.
#[inline(always)]
pub(super) fn recur_two_way<T: Real, S: Vector<T = T>, const K: usize, const L: usize>(cs: &Consts<T>, t: &mut Tile<T, L>, io: &mut impl TileIo<T, L>) {
    let n = t.v.len();
    debug_assert!(n >= 2 * BLOCK);
    let m = n / 2 / BLOCK * BLOCK;
    let Tile { v, g_re, g_im } = t;
    let d_im = S::splat(cs.d_im);
    let zero = S::splat(T::ZERO);
    // Blocks: left [j·B, (j+1)·B) for j < nl, right [m + j·B, …) for j < nr (the last may be
    // short); nr ≥ nl.
    let (nl, nr) = (m / BLOCK, (n - m).div_ceil(BLOCK));
    let left = |j: usize| (j * BLOCK, (j + 1) * BLOCK);
    let right = |j: usize| (m + j * BLOCK, (m + (j + 1) * BLOCK).min(n));

    // Phase 1: left blocks ascending (forward), right blocks descending (backward).
    let (mut ar, mut ai) = ([zero; K], [d_im; K]);
    let (mut br, mut bi) = ([zero; K], [zero; K]);
    for j in 0..nr {
        let (f0, f1) = if j < nl { left(j) } else { (0, 0) };
        let (b0, b1) = right(nr - 1 - j);
        if f1 > f0 {
            io.fill(f0, &mut v[f0..f1]);
        }
        io.fill(b0, &mut v[b0..b1]);
        let mut f_from = f0;
        if j == 0 {
            // α_0 = d_0 and β_{N−1} = d_{N−1}, b_{N−1} = 0: no coupling at the ends.
            first_pivot::<T, S, K, L>(cs, &v[0], &mut g_re[0], &mut g_im[0], &mut ar, &mut ai);
            for q in 0..K {
                (br[q], bi[q]) = (d_re::<T, S, L>(cs, n - 1, &v[n - 1], q), d_im);
            }
            g_re[n - 1] = [T::ZERO; L];
            g_im[n - 1] = [T::ZERO; L];
            f_from = 1;
        }
        let b_to = if j == 0 { b1 - 1 } else { b1 };
        let k = &cs.k;
        interleave::<T, S, K, L>(
            (f_from..f1.max(f_from), b0..b_to),
            (g_re, g_im),
            (&mut ar, &mut ai, &mut br, &mut bi),
            #[inline(always)]
            |i, g_re, g_im, ar, ai| fwd_step::<T, S, K, L>(cs, i, S::splat(k[i - 1]), v, g_re, g_im, ar, ai),
            #[inline(always)]
            |i, g_re, g_im, br, bi| bwd_step_b::<T, S, K, L>(cs, i, S::splat(k[i]), v, g_re, g_im, br, bi),
        );
    }

    // Phase 2: right blocks ascending (forward, G), left blocks descending (backward, G).
    for j in 0..nr {
        let (f0, f1) = right(j);
        let (b0, b1) = if j < nl { left(nl - 1 - j) } else { (0, 0) };
        let k = &cs.k;
        interleave::<T, S, K, L>(
            (f0..f1, b0..b1),
            (g_re, g_im),
            (&mut ar, &mut ai, &mut br, &mut bi),
            #[inline(always)]
            |i, g_re, g_im, ar, ai| fwd_step_g::<T, S, K, L>(cs, i, S::splat(k[i - 1]), v, g_re, g_im, ar, ai),
            #[inline(always)]
            |i, g_re, g_im, br, bi| backward_step::<T, S, K, L>(cs, i, Some(S::splat(k[i])), v, g_re, g_im, br, bi),
        );
        io.drain(f0, &g_re[f0..f1], &g_im[f0..f1]);
        if b1 > b0 {
            io.drain(b0, &g_re[b0..b1], &g_im[b0..b1]);
        }
    }
}

/// The positions of `fwd` ascending and of `bwd` descending, one step of each per iteration
/// while both last, in a function of its own (see [`Vector::isolate`]) with the chain states
/// in registers. Both steps work on the tile's (g_re, g_im).
#[inline(always)]
#[allow(clippy::type_complexity)]
fn interleave<T: Real, S: Vector<T = T>, const K: usize, const L: usize>(
    (fwd, bwd): (std::ops::Range<usize>, std::ops::Range<usize>),
    (g_re, g_im): (&mut [[T; L]], &mut [[T; L]]),
    (ar, ai, br, bi): (&mut [S; K], &mut [S; K], &mut [S; K], &mut [S; K]),
    mut f: impl FnMut(usize, &mut [[T; L]], &mut [[T; L]], &mut [S; K], &mut [S; K]),
    mut b: impl FnMut(usize, &mut [[T; L]], &mut [[T; L]], &mut [S; K], &mut [S; K]),
) {
    S::isolate(#[inline(always)] || {
        let (mut ar_, mut ai_, mut br_, mut bi_) = (*ar, *ai, *br, *bi);
        let (lf, lb) = (fwd.len(), bwd.len());
        for s in 0..lf.max(lb) {
            if s < lf {
                f(fwd.start + s, g_re, g_im, &mut ar_, &mut ai_);
            }
            if s < lb {
                b(bwd.end - 1 - s, g_re, g_im, &mut br_, &mut bi_);
            }
        }
        (*ar, *ai, *br, *bi) = (ar_, ai_, br_, bi_);
    });
}
