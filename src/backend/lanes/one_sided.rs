//! The one-sided schedule of the recursion: one division per position instead of three.
//!
//! The forward pass keeps r_i = 1/α_i (one real division, 1/|α_i|², which the pivot update
//! needs anyway); the backward pass then needs no division at all:
//!
//!   G_{N−1} = r_{N−1},   G_i = r_i + k_i·r_i²·G_{i+1} = r_i·(1 + k_i·r_i·G_{i+1})
//!
//! (the diagonal of the inverse from the LU factors alone). Its error differs from the
//! symmetric G_i = 1/(α_i − b_i) of the two-sided schedule in one way: the relative error of
//! G_{i+1} reaches G_i scaled by ρ_i = k_i/(α_i·β_{i+1}), and where |ρ_i| is large (a pivot
//! near zero on both sides: a resonant position, reachable only when |Im z| is small) the sum
//! above cancels and that position's G loses relative accuracy while its absolute error stays
//! of the same size. [`super::Consts::new`] therefore selects it only where `Compute::Auto`
//! runs in f32 (H0 Hermitian-like, |Im z| ≥ [`crate::backend::AUTO_F64_IM_Z`]); the f64 path and
//! everything closer to the real axis keep the two-sided schedule.

use super::{d_re, forward_pass, reciprocal, Consts, Real, Tile, TileIo, Vector, BLOCK};

/// Runs the one-sided schedule: the forward pass over blocks as they are filled, r_i over the
/// pivot slots, then G over them from the end, each block handed to `io` when final.
#[inline(always)]
pub(super) fn recur_one_sided<T: Real, S: Vector<T = T>, const K: usize, const L: usize>(cs: &Consts<T>, t: &mut Tile<T, L>, io: &mut impl TileIo<T, L>) {
    let n = t.v.len();
    // The α_0 the forward pass leaves in slot 0 is overwritten by r_0 at position 1 (or by G_0
    // below when N = 1).
    let (ar, ai) = forward_pass::<T, S, K, L>(cs, t, io, fwd_step_r::<T, S, K, L>);
    let Tile { g_re, g_im, .. } = t;
    let zero = S::splat(T::ZERO);
    // G_{N−1} = r_{N−1}: the last pivot has no successor to leave its r behind.
    let (mut gr, mut gi) = ([zero; K], [zero; K]);
    for q in 0..K {
        (gr[q], gi[q]) = reciprocal(ar[q], ai[q]);
        gr[q].store(&mut g_re[n - 1][q * S::W..]);
        gi[q].store(&mut g_im[n - 1][q * S::W..]);
    }
    for i0 in (0..n).step_by(BLOCK).rev() {
        let i1 = (i0 + BLOCK).min(n);
        S::isolate(#[inline(always)] || backward_g::<T, S, K, L>(cs, i0, i1.min(n - 1), g_re, g_im, &mut gr, &mut gi));
        io.drain(i0, &g_re[i0..i1], &g_im[i0..i1]);
    }
}

/// One forward step at position i ≥ 1 with coupling `ki` = k_{i−1}: α_i = d_i − k_{i−1}·r_{i−1},
/// keeping r_{i−1} = 1/α_{i−1} in (r_re, r_im) at i − 1. k·α is formed beside the division, so
/// the chain waits for the division and one fused multiply-add only (multiplying by k after it
/// made the forward pass, latency-bound, measurably slower).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn fwd_step_r<T: Real, S: Vector<T = T>, const K: usize, const L: usize>(
    cs: &Consts<T>,
    i: usize,
    ki: S,
    v: &[[T; L]],
    r_re: &mut [[T; L]],
    r_im: &mut [[T; L]],
    ar: &mut [S; K],
    ai: &mut [S; K],
) {
    let (d_im, zero, one) = (S::splat(cs.d_im), S::splat(T::ZERO), S::splat(T::from_f64(1.0)));
    let w = S::W;
    let (rr, ri) = (&mut r_re[i - 1], &mut r_im[i - 1]);
    for q in 0..K {
        let t = one.div(S::norm2(ar[q], ai[q]));
        let (kr, kim) = (ki.mul(ar[q]), ki.mul(ai[q]));
        ar[q].mul(t).store(&mut rr[q * w..]);
        S::nmul_add(ai[q], t, zero).store(&mut ri[q * w..]);
        let dr = d_re::<T, S, L>(cs, i, &v[i], q);
        (ar[q], ai[q]) = (S::nmul_add(t, kr, dr), S::mul_add(t, kim, d_im));
    }
}

/// Backward steps top − 1 down to i0: G_i = r_i·(1 + k_i·r_i·G_{i+1}) over r_i in (g_re, g_im);
/// (gr, gi) carry G_{i+1} in and G_{i0} out.
#[inline(always)]
fn backward_g<T: Real, S: Vector<T = T>, const K: usize, const L: usize>(
    cs: &Consts<T>,
    i0: usize,
    top: usize,
    g_re: &mut [[T; L]],
    g_im: &mut [[T; L]],
    gr_io: &mut [S; K],
    gi_io: &mut [S; K],
) {
    let (g_re, g_im, k) = (&mut g_re[..top], &mut g_im[..top], &cs.k[..top]);
    let (mut gr, mut gi) = (*gr_io, *gi_io);
    let one = S::splat(T::from_f64(1.0));
    let w = S::W;
    for i in (i0..top).rev() {
        let ki = S::splat(k[i]);
        let (sr, si) = (&mut g_re[i], &mut g_im[i]);
        for q in 0..K {
            let (rr, ri) = (S::load(&sr[q * w..]), S::load(&si[q * w..]));
            // p = r·G_{i+1}; c = 1 + k·p; G_i = r·c.
            let pr = S::nmul_add(ri, gi[q], rr.mul(gr[q]));
            let pi = S::mul_add(ri, gr[q], rr.mul(gi[q]));
            let (cr, ci) = (S::mul_add(ki, pr, one), ki.mul(pi));
            gr[q] = S::nmul_add(ri, ci, rr.mul(cr));
            gi[q] = S::mul_add(ri, cr, rr.mul(ci));
            gr[q].store(&mut sr[q * w..]);
            gi[q].store(&mut si[q * w..]);
        }
    }
    (*gr_io, *gi_io) = (gr, gi);
}
