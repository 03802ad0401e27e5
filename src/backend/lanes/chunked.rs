//! Long rows as chunks, one chunk per lane: the recursion of a single row run in parallel.
//!
//! A tile of L rows leaves lanes idle when a call has few rows, and one row of 65 536 positions
//! is a chain of 65 536 dependent divisions. Here a row is cut into chunks of C positions, and
//! lane l of a [`ChunkTile`] holds chunk l. Each pivot chain (α forward, β backward) is a
//! contraction for Hermitian-like H0 and Im z ≠ 0: started from a wrong value at a chunk's edge,
//! it falls onto the true values within a few dozen positions and from then on computes the very
//! same numbers, bit for bit. So:
//!
//! 1. every chunk runs both chains at once, vectorised over lanes, from a guessed value at its
//!    edge ([`speculate`]);
//! 2. chunk by chunk in row order, each chain is rerun from the true value its neighbour left,
//!    one lane at a time, until a recomputed state equals, bit for bit, the one already stored
//!    ([`fix_forward`], [`fix_backward`]): both computations apply the same operations to the same
//!    numbers from there on, so the rest of the chunk is already right. A chain that never
//!    meets (a slowly contracting one: Im z tiny, or k < 0) is simply recomputed to the chunk's
//!    end, which is the sequential recursion itself, so the result never depends on the guess;
//! 3. G_i = 1/(α_i − k_i/β_{i+1}), vectorised again ([`finish`]).
//!
//! The arithmetic is the two-sided schedule's, operation for operation (same pivot update, same
//! G denominator, same reciprocal), so a chunked row equals the batch recursion of that row
//! with the two-sided schedule, bit for bit (a unit test checks this).

use super::{pivot, reciprocal, Real, Tile, Vector, V};

/// L chunks of one row, C = `t.v.len()` positions each, lane l holding positions
/// first + l·C + i. Positions past the row's end are padding: d = 1, k = 0 (no coupling, so
/// nothing flows from them into the row, and their pivots stay finite).
pub(crate) struct ChunkTile<T, const L: usize> {
    /// `v`: Re d_i = (c_i + v_i) + c_lo_i, formed as the batch recursion forms it; `g_re`,
    /// `g_im`: α_i, then G_i.
    pub t: Tile<T, L>,
    /// k_i, the coupling of position i to position i + 1 (0 at the row's last position).
    pub k: Vec<[T; L]>,
    /// β_i.
    pub b_re: Vec<[T; L]>,
    pub b_im: Vec<[T; L]>,
    /// s_i = k_i/|β_{i+1}|², which G_i needs beside α_i and β_{i+1}.
    pub s: Vec<[T; L]>,
    /// k of the position before each chunk (0 for the row's first chunk).
    pub k_in: [T; L],
    /// α of the position before each chunk, and β of the position after it: guesses, then the
    /// true values once fixed.
    pub a_in: ([T; L], [T; L]),
    pub b_in: ([T; L], [T; L]),
    /// The tile's L·C positions of the row, staged while Re d is formed.
    pub d_row: Vec<T>,
    /// Scratch for inputs that widen through f32 (half precision, quantized).
    pub f32s: Vec<f32>,
    /// Scratch for the couplings of chunks that reach past the row's end, padded with 0.
    pub k_row: Vec<T>,
}

impl<T: Real, const L: usize> ChunkTile<T, L> {
    pub fn new(c: usize) -> Self {
        let z = || vec![[T::ZERO; L]; c];
        ChunkTile {
            t: Tile::new(c),
            k: z(),
            b_re: z(),
            b_im: z(),
            s: z(),
            k_in: [T::ZERO; L],
            a_in: ([T::ZERO; L], [T::ZERO; L]),
            b_in: ([T::ZERO; L], [T::ZERO; L]),
            d_row: vec![T::ZERO; L * c],
            f32s: Vec::new(),
            k_row: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.k.len()
    }

    /// Guessed edge values for [`speculate`]: each chain starts from the d of its own chunk's
    /// edge, on the right side of the real axis (a contraction from there is fastest), with a
    /// real part made non-zero (a zero pivot would make the first update divide by zero). The
    /// imaginary part is d's own, even when it is zero (Im z = 0): any other value would have to
    /// decay through some 600 orders of magnitude to the true chains' exact 0 before they meet
    /// (1 × 65 536 at z = 0 took 2.6 ms that way, against 0.83 ms on the batch path).
    pub fn guess_edges(&mut self, d_im: T) {
        let c = self.len();
        let safe = |x: T| if x == T::ZERO { T::from_f64(1.0) } else { x };
        for l in 0..L {
            self.a_in.0[l] = safe(self.t.v[0][l]);
            self.b_in.0[l] = safe(self.t.v[c - 1][l]);
        }
        self.a_in.1 = [d_im; L];
        self.b_in.1 = [d_im; L];
    }
}

/// Both chains of every lane from the edge values in `ct`, vectorised: α_i into the tile's G
/// planes, β_i and s_i into their planes. K chains of W lanes in flight per direction.
#[inline(always)]
fn speculate<T: Real, S: Vector<T = T>, const K: usize, const L: usize>(ct: &mut ChunkTile<T, L>, d_im: T) {
    const { assert!(S::W * K == L) };
    let c = ct.len();
    let w = S::W;
    let d_im = S::splat(d_im);
    let ChunkTile { t, k, b_re, b_im, s, k_in, a_in, b_in, .. } = ct;
    let (d, a_re, a_im) = (&t.v, &mut t.g_re, &mut t.g_im);
    let (mut ar, mut ai): ([S; K], [S; K]) = (std::array::from_fn(|q| S::load(&a_in.0[q * w..])), std::array::from_fn(|q| S::load(&a_in.1[q * w..])));
    for i in 0..c {
        let ki = if i == 0 { &k_in[..] } else { &k[i - 1][..] };
        for q in 0..K {
            pivot(S::load(&ki[q * w..]), S::load(&d[i][q * w..]), d_im, &mut ar[q], &mut ai[q]);
            ar[q].store(&mut a_re[i][q * w..]);
            ai[q].store(&mut a_im[i][q * w..]);
        }
    }
    let (mut br, mut bi): ([S; K], [S; K]) = (std::array::from_fn(|q| S::load(&b_in.0[q * w..])), std::array::from_fn(|q| S::load(&b_in.1[q * w..])));
    for i in (0..c).rev() {
        for q in 0..K {
            let si = pivot(S::load(&k[i][q * w..]), S::load(&d[i][q * w..]), d_im, &mut br[q], &mut bi[q]);
            si.store(&mut s[i][q * w..]);
            br[q].store(&mut b_re[i][q * w..]);
            bi[q].store(&mut b_im[i][q * w..]);
        }
    }
}

/// Whether two values are the same number, bit for bit (so +0 and −0 differ).
#[inline(always)]
fn same<T: Real>(a: T, b: T) -> bool {
    a.to_f64().to_bits() == b.to_f64().to_bits()
}

/// Which tile and lane hold chunk m of a row.
fn chunk_at<const L: usize>(m: usize) -> (usize, usize) {
    (m / L, m % L)
}

/// The α chains of one row's tiles (`chunks` of whose lanes hold positions of the row), each
/// rerun from the true α before it, in row order, until it meets the stored chain.
pub(crate) fn fix_forward<T: Real, const L: usize>(row: &mut [ChunkTile<T, L>], chunks: usize, d_im: T) {
    for m in 1..chunks {
        let ((tp, lp), (t, l)) = (chunk_at::<L>(m - 1), chunk_at::<L>(m));
        let c = row[tp].len();
        let carry = (row[tp].t.g_re[c - 1][lp], row[tp].t.g_im[c - 1][lp]);
        fix_forward_lane(&mut row[t], l, carry, d_im);
    }
}

/// The β chains of one row's tiles, each rerun from the true β after it, in reverse row order,
/// until it meets the stored chain.
pub(crate) fn fix_backward<T: Real, const L: usize>(row: &mut [ChunkTile<T, L>], chunks: usize, d_im: T) {
    for m in (0..chunks.saturating_sub(1)).rev() {
        let ((tn, ln), (t, l)) = (chunk_at::<L>(m + 1), chunk_at::<L>(m));
        let carry = (row[tn].b_re[0][ln], row[tn].b_im[0][ln]);
        fix_backward_lane(&mut row[t], l, carry, d_im);
    }
}

/// Reruns the α chain of lane `l` from the true α before it (`carry`), until it meets the
/// stored chain.
fn fix_forward_lane<T: Real, const L: usize>(ct: &mut ChunkTile<T, L>, l: usize, carry: (T, T), d_im: T) {
    type S1<U> = V<U, 1>;
    (ct.a_in.0[l], ct.a_in.1[l]) = carry;
    let (mut xr, mut xi) = (S1::splat(carry.0), S1::splat(carry.1));
    let d_im = S1::splat(d_im);
    let ChunkTile { t: Tile { v: d, g_re: a_re, g_im: a_im }, k, k_in, .. } = ct;
    for i in 0..d.len() {
        let ki = if i == 0 { k_in[l] } else { k[i - 1][l] };
        pivot(S1::splat(ki), S1::splat(d[i][l]), d_im, &mut xr, &mut xi);
        if same(xr.0[0], a_re[i][l]) && same(xi.0[0], a_im[i][l]) {
            return;
        }
        (a_re[i][l], a_im[i][l]) = (xr.0[0], xi.0[0]);
    }
}

/// Reruns the β chain of lane `l` from the true β after it (`carry`), until it meets the stored
/// chain.
fn fix_backward_lane<T: Real, const L: usize>(ct: &mut ChunkTile<T, L>, l: usize, carry: (T, T), d_im: T) {
    type S1<U> = V<U, 1>;
    (ct.b_in.0[l], ct.b_in.1[l]) = carry;
    let (mut yr, mut yi) = (S1::splat(carry.0), S1::splat(carry.1));
    let d_im = S1::splat(d_im);
    let ChunkTile { t: Tile { v: d, .. }, k, b_re, b_im, s, .. } = ct;
    for i in (0..d.len()).rev() {
        // s_i comes from β_{i+1}, which differed until now: kept even where β_i meets.
        s[i][l] = pivot(S1::splat(k[i][l]), S1::splat(d[i][l]), d_im, &mut yr, &mut yi).0[0];
        if same(yr.0[0], b_re[i][l]) && same(yi.0[0], b_im[i][l]) {
            return;
        }
        (b_re[i][l], b_im[i][l]) = (yr.0[0], yi.0[0]);
    }
}

/// G_i = 1/(α_i − s_i·conj(β_{i+1})) over α in the tile's G planes, vectorised; β_{i+1} of a
/// chunk's last position is its `b_in`. Returns whether every G (padding included, finite by
/// construction) is finite: Σ (x − x) is 0 exactly then, folded in registers on the way.
#[inline(always)]
fn finish<T: Real, S: Vector<T = T>, const K: usize, const L: usize>(ct: &mut ChunkTile<T, L>) -> bool {
    const { assert!(S::W * K == L) };
    let c = ct.len();
    let w = S::W;
    let one = S::splat(T::from_f64(1.0));
    let mut bad = [S::splat(T::ZERO); K];
    let ChunkTile { t, b_re, b_im, s, b_in, .. } = ct;
    for i in 0..c {
        let (nr, ni) = if i + 1 < c { (&b_re[i + 1], &b_im[i + 1]) } else { (&b_in.0, &b_in.1) };
        for q in 0..K {
            let si = S::load(&s[i][q * w..]);
            let den =
                (S::nmul_add(si, S::load(&nr[q * w..]), S::load(&t.g_re[i][q * w..])), S::mul_add(si, S::load(&ni[q * w..]), S::load(&t.g_im[i][q * w..])));
            let (gr, gi) = reciprocal(den.0, den.1);
            bad[q] = bad[q].add(S::nmul_add(one, gr, gr)).add(S::nmul_add(one, gi, gi));
            gr.store(&mut t.g_re[i][q * w..]);
            gi.store(&mut t.g_im[i][q * w..]);
        }
    }
    let mut lanes = [T::ZERO; L];
    for q in 0..K {
        bad[q].store(&mut lanes[q * w..]);
    }
    lanes.iter().fold(T::ZERO, |a, &b| a + b) == T::ZERO
}

/// [`speculate`] and [`finish`] at the register width of each type, as [`super::Recur`] does
/// for the batch recursion.
pub(crate) trait Chunked<const L: usize>: Real {
    /// # Safety
    /// With `AVX2`, the CPU must have AVX2 and FMA.
    unsafe fn speculate<const AVX2: bool>(ct: &mut ChunkTile<Self, L>, d_im: Self);
    /// Whether every G is finite.
    ///
    /// # Safety
    /// With `AVX2`, the CPU must have AVX2 and FMA.
    unsafe fn finish<const AVX2: bool>(ct: &mut ChunkTile<Self, L>) -> bool;
}

macro_rules! chunked_impl {
    ($t:ty, $w:literal, $avx:ident, $l:literal => $k:literal) => {
        impl Chunked<$l> for $t {
            #[inline(always)]
            unsafe fn speculate<const AVX2: bool>(ct: &mut ChunkTile<Self, $l>, d_im: Self) {
                #[cfg(target_arch = "x86_64")]
                if AVX2 {
                    type S = super::avx2::$avx;
                    return S::isolate(
                        #[inline(always)]
                        || speculate::<$t, S, $k, $l>(ct, d_im),
                    );
                }
                type S = V<$t, $w>;
                S::isolate(
                    #[inline(always)]
                    || speculate::<$t, S, $k, $l>(ct, d_im),
                )
            }
            #[inline(always)]
            unsafe fn finish<const AVX2: bool>(ct: &mut ChunkTile<Self, $l>) -> bool {
                #[cfg(target_arch = "x86_64")]
                if AVX2 {
                    type S = super::avx2::$avx;
                    return S::isolate(
                        #[inline(always)]
                        || finish::<$t, S, $k, $l>(ct),
                    );
                }
                type S = V<$t, $w>;
                S::isolate(
                    #[inline(always)]
                    || finish::<$t, S, $k, $l>(ct),
                )
            }
        }
    };
}

chunked_impl!(f32, 8, F32x8, 32 => 4);
chunked_impl!(f64, 4, F64x4, 32 => 8);
