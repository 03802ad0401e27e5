//! The pivot recursion over L rows at once, structure-of-arrays, so that every step is L
//! independent lane operations the compiler turns into SIMD. Several vectors per step (L = 32
//! f32 is four AVX2 registers) hide the latency of the division chain that links step i to
//! step i − 1.

use std::ops::{Add, Div, Mul, Neg, Sub};

pub(crate) trait Real:
    Copy
    + Default
    + PartialOrd
    + Send
    + Sync
    + 'static
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
{
    const ZERO: Self;
    fn mul_add(self, a: Self, b: Self) -> Self;
    fn from_f64(x: f64) -> Self;
    fn from_f32(x: f32) -> Self;
    fn to_f64(self) -> f64;
    fn to_f32(self) -> f32;

    /// Fills a block of positions from f32 rows (positions i0..) with a vectorised
    /// transpose where one exists; returns false when the caller must do it.
    #[inline(always)]
    fn fill_block_f32<const L: usize>(_rows: &[&[f32]; L], _i0: usize, _v: &mut [[Self; L]]) -> bool {
        false
    }
    /// Stores a block of positions of the first `live` lanes as complex64 (row l at
    /// l·stride, positions i0..) with a vectorised transpose where one exists; returns false
    /// when the caller must do it.
    #[inline(always)]
    fn store_block_c64<const L: usize>(
        _re: &[[Self; L]],
        _im: &[[Self; L]],
        _live: usize,
        _out: &mut [num_complex::Complex32],
        _stride: usize,
        _i0: usize,
        _stream: bool,
    ) -> bool {
        false
    }
}

impl Real for f32 {
    const ZERO: Self = 0.0;
    #[inline(always)]
    fn mul_add(self, a: Self, b: Self) -> Self {
        f32::mul_add(self, a, b)
    }
    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        x as f32
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        x
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }

    #[inline(always)]
    fn fill_block_f32<const L: usize>(rows: &[&[f32]; L], i0: usize, v: &mut [[Self; L]]) -> bool {
        #[cfg(target_arch = "x86_64")]
        if L % 8 == 0 && v.len() % 8 == 0 && super::transpose::available() && rows.iter().all(|r| r.len() >= i0 + v.len()) {
            // SAFETY: AVX2 is available, `v` has a multiple of 8 positions and every row holds
            // positions i0..i0 + v.len(): all that `load_block_f32` needs.
            unsafe { super::transpose::load_block_f32(rows, i0, v) };
            return true;
        }
        let _ = (rows, i0, v);
        false
    }

    #[inline(always)]
    fn store_block_c64<const L: usize>(
        re: &[[Self; L]],
        im: &[[Self; L]],
        live: usize,
        out: &mut [num_complex::Complex32],
        stride: usize,
        i0: usize,
        stream: bool,
    ) -> bool {
        #[cfg(target_arch = "x86_64")]
        let len = re.len();
        if L % 8 == 0
            && len % 8 == 0
            && im.len() == len
            && (1..=L).contains(&live)
            && i0 + len <= stride
            && out.len() >= (live - 1) * stride + i0 + len
            && super::transpose::available()
        {
            // SAFETY: AVX2 is available; `out` holds rows 0..live of `stride` values covering
            // positions i0..i0 + len, and re/im have len (a multiple of 8) positions: all that
            // `store_block_c64` needs.
            unsafe { super::transpose::store_block_c64(re, im, live, out, stride, i0, stream) };
            return true;
        }
        let _ = (re, im, live, out, stride, i0, stream);
        false
    }
}

impl Real for f64 {
    const ZERO: Self = 0.0;
    #[inline(always)]
    fn mul_add(self, a: Self, b: Self) -> Self {
        f64::mul_add(self, a, b)
    }
    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        x
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        x as f64
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self as f32
    }
}

/// Scratch for one tile of L rows. `v[i][l]` is the potential of lane l at position i; after
/// [`recur`], `g_re`/`g_im` hold G (the forward couplings live there in between).
pub(crate) struct Tile<T, const L: usize> {
    pub v: Vec<[T; L]>,
    pub g_re: Vec<[T; L]>,
    pub g_im: Vec<[T; L]>,
}

impl<T: Real, const L: usize> Tile<T, L> {
    pub fn new(n: usize) -> Self {
        Tile { v: vec![[T::ZERO; L]; n], g_re: vec![[T::ZERO; L]; n], g_im: vec![[T::ZERO; L]; n] }
    }
}

/// Per-position constants in the compute type: c_i = h0_diag_i − Re z split into a rounded
/// part and its rounding error c_lo_i, k_i, and −Im z.
pub(crate) struct Consts<T> {
    pub c: Vec<T>,
    pub c_lo: Vec<T>,
    pub k: Vec<T>,
    pub d_im: T,
}

impl<T: Real> Consts<T> {
    pub fn new(p: &crate::problem::Problem) -> Self {
        let z = p.z();
        let exact: Vec<f64> = p.h0().diag.iter().map(|&d| d - z.re).collect();
        let c: Vec<T> = exact.iter().map(|&x| T::from_f64(x)).collect();
        Consts {
            c_lo: exact.iter().zip(&c).map(|(&x, &h)| T::from_f64(x - h.to_f64())).collect(),
            c,
            k: p.k().iter().map(|&k| T::from_f64(k)).collect(),
            d_im: T::from_f64(-z.im),
        }
    }
}

/// W lanes of T in one SIMD register (8 × f32 or 4 × f64 with AVX2). Element-wise loops over a
/// fixed W that the compiler turns into single vector instructions; small enough that K of them
/// stay in registers across the step loop.
#[derive(Clone, Copy)]
#[repr(transparent)]
struct V<T, const W: usize>([T; W]);

impl<T: Real, const W: usize> V<T, W> {
    #[inline(always)]
    fn splat(x: T) -> Self {
        V([x; W])
    }
    #[inline(always)]
    fn load(x: &[T]) -> Self {
        let mut r = [T::ZERO; W];
        r.copy_from_slice(&x[..W]);
        V(r)
    }
    #[inline(always)]
    fn store(self, x: &mut [T]) {
        x[..W].copy_from_slice(&self.0);
    }
    #[inline(always)]
    fn zip(self, o: Self, f: impl Fn(T, T) -> T) -> Self {
        let mut r = self.0;
        for j in 0..W {
            r[j] = f(r[j], o.0[j]);
        }
        V(r)
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        self.zip(o, |a, b| a + b)
    }
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        self.zip(o, |a, b| a - b)
    }
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        self.zip(o, |a, b| a * b)
    }
    #[inline(always)]
    fn div(self, o: Self) -> Self {
        self.zip(o, |a, b| a / b)
    }
    /// a² + b², fused.
    #[inline(always)]
    fn norm2(a: Self, b: Self) -> Self {
        let mut r = a.0;
        for j in 0..W {
            r[j] = T::mul_add(a.0[j], a.0[j], b.0[j] * b.0[j]);
        }
        V(r)
    }
}

/// Positions per I/O block: the recursion asks for its input and hands over its output in
/// blocks of this many positions, so that transposes and memory traffic interleave with the
/// arithmetic instead of running as passes of their own.
pub(crate) const BLOCK: usize = 64;

/// Where a tile's potentials come from and where its G goes, one block at a time.
pub(crate) trait TileIo<T, const L: usize> {
    /// Fill `v` (positions i0.. i0 + v.len()) before the forward pass reaches them.
    fn fill(&mut self, i0: usize, v: &mut [[T; L]]);
    /// Take G at positions i0.. i0 + re.len(), final once the backward pass has passed them.
    fn drain(&mut self, i0: usize, re: &[[T; L]], im: &[[T; L]]);
}

/// Runs the forward and backward pivot recursions for all L = W·K lanes of `t`, reading the
/// potentials from `io` block by block in the forward pass and handing G to it block by block in
/// the backward pass (G also stays in `t.g_re`/`t.g_im`). K independent register chains of W
/// lanes each keep K divisions in flight while one chain waits for its predecessor.
///
/// d_i = c_i + v_i + c_lo_i + i·d_im; a_i = k_{i−1}/α_{i−1}; α_i = d_i − a_i;
/// b_i = k_i/β_{i+1}; β_i = d_i − b_i; G_i = 1/(d_i − a_i − b_i). a_i is kept (not α_i) so the
/// backward pass forms G with one subtraction less.
#[inline(always)]
fn recur<T: Real, const W: usize, const K: usize, const L: usize>(cs: &Consts<T>, t: &mut Tile<T, L>, io: &mut impl TileIo<T, L>) {
    const { assert!(W * K == L) };
    // Plain slices of one length up front: the loops then index without reloading Vec headers
    // and with bounds checks the compiler can drop.
    let n = t.v.len();
    let Tile { v, g_re, g_im } = t;
    let (v, g_re, g_im) = (&mut v[..n], &mut g_re[..n], &mut g_im[..n]);
    let (c, c_lo) = (&cs.c[..n], &cs.c_lo[..n]);
    let k = &cs.k[..n.saturating_sub(1)];
    let d_im = V::<T, W>::splat(cs.d_im);
    let zero = V::<T, W>::splat(T::ZERO);
    let lanes = |x: &[T; L], q: usize| V::<T, W>::load(&x[q * W..]);
    // c_i + v_i + c_lo_i: the low part keeps the rounding of c_i = h0_diag_i − Re z from acting
    // as one systematic shift of every potential.
    let d_re = |ci: T, clo: T, v: &[T; L], q: usize| V::splat(ci).add(lanes(v, q)).add(V::splat(clo));

    // Forward.
    let mut ar = [zero; K];
    let mut ai = [d_im; K];
    for i0 in (0..n).step_by(BLOCK) {
        let i1 = (i0 + BLOCK).min(n);
        io.fill(i0, &mut v[i0..i1]);
        for i in i0..i1 {
            if i == 0 {
                for q in 0..K {
                    ar[q] = d_re(c[0], c_lo[0], &v[0], q);
                }
                g_re[0] = [T::ZERO; L];
                g_im[0] = [T::ZERO; L];
                continue;
            }
            let ki = V::splat(k[i - 1]);
            let (ci, clo, vi) = (c[i], c_lo[i], &v[i]);
            let (a_re, a_im) = (&mut g_re[i], &mut g_im[i]);
            for q in 0..K {
                let s = ki.div(V::norm2(ar[q], ai[q]));
                let xr = s.mul(ar[q]);
                let xi = zero.sub(s.mul(ai[q]));
                xr.store(&mut a_re[q * W..]);
                xi.store(&mut a_im[q * W..]);
                ar[q] = d_re(ci, clo, vi, q).sub(xr);
                ai[q] = d_im.sub(xi);
            }
        }
    }

    // Backward, over the same blocks from the end.
    let one = V::splat(T::from_f64(1.0));
    let mut br = [zero; K];
    let mut bi = [zero; K];
    for i0 in (0..n).step_by(BLOCK).rev() {
        let i1 = (i0 + BLOCK).min(n);
        for i in (i0..i1).rev() {
            let last = i + 1 == n;
            let ki = V::splat(if last { T::ZERO } else { k[i] });
            let (ci, clo, vi) = (c[i], c_lo[i], &v[i]);
            let (gr, gi) = (&mut g_re[i], &mut g_im[i]);
            for q in 0..K {
                // At i = N − 1, k = 0 and β = 0 would give 0/0: use 1 for the norm there.
                let nb = if last { one } else { V::norm2(br[q], bi[q]) };
                let s = ki.div(nb);
                let xr = s.mul(br[q]);
                let xi = zero.sub(s.mul(bi[q]));
                let dr = d_re(ci, clo, vi, q);
                br[q] = dr.sub(xr);
                bi[q] = d_im.sub(xi);
                let den_r = dr.sub(lanes(gr, q)).sub(xr);
                let den_i = d_im.sub(lanes(gi, q)).sub(xi);
                let inv = one.div(V::norm2(den_r, den_i));
                den_r.mul(inv).store(&mut gr[q * W..]);
                zero.sub(den_i.mul(inv)).store(&mut gi[q * W..]);
            }
        }
        io.drain(i0, &g_re[i0..i1], &g_im[i0..i1]);
    }
}

/// [`recur`] at the register width of each type: W = 8 lanes for f32, 4 for f64 (one AVX2
/// register), K = L / W chains. Callers compile it inside an AVX2 context where available.
pub(crate) trait Recur<const L: usize>: Real {
    fn recur(cs: &Consts<Self>, t: &mut Tile<Self, L>, io: &mut impl TileIo<Self, L>);
}

macro_rules! recur_impl {
    ($t:ty, $w:literal, $($l:literal => $k:literal),*) => {$(
        impl Recur<$l> for $t {
            #[inline(always)]
            fn recur(cs: &Consts<Self>, t: &mut Tile<Self, $l>, io: &mut impl TileIo<Self, $l>) {
                recur::<$t, $w, $k, $l>(cs, t, io)
            }
        }
    )*};
}

recur_impl!(f32, 8, 8 => 1, 16 => 2, 32 => 4, 64 => 8);
recur_impl!(f64, 4, 8 => 2, 16 => 4, 32 => 8, 64 => 16);
