//! The backward pass on the CPU: the pivot-adjoint recursions of [`crate::grad`] over tiles of L
//! rows at once (lane-major, so every step is L independent lane operations the compiler turns
//! into SIMD), tiles spread over threads. Potentials load through the forward's tile I/O, so
//! every input format and NaN policy behaves as in `solve_into`.
//!
//! Per tile, three sweeps: forward (α, kept as 1/α), backward (β kept as 1/β, G, λD and λα),
//! forward again (λβ, then ∂L/∂v, ∂L/∂k and ∂L/∂z). `Compute::Auto` redoes a tile in f64 when its
//! f32 result is not finite or its potentials leave the safe f32 range, as the forward does.

use super::{avx2, Chunk, Ctx, Io, Mode};
use crate::backend::lanes::{Consts, Real, TileIo, BLOCK};
use crate::backend::{auto_wants_f64, Compute, SolveInfo, SolveOptions, VInput, F32_MAX_V};
use crate::error::{BkError, Result};
use crate::grad::{check_vjp, Dv, GradG, Vjp};
use crate::problem::Problem;
use crate::reference;
use num_complex::{Complex32, Complex64};
use rayon::prelude::*;

/// Below this many elements the call runs on the calling thread.
const PARALLEL_MIN_ELEMS: usize = 1 << 14;

pub(super) fn vjp_into(p: &Problem, v: VInput<'_>, g_bar: GradG<'_>, out: &mut Vjp, opts: &SolveOptions) -> Result<SolveInfo> {
    if let VInput::Quant(q) = &v {
        if q.n() != p.n() {
            return Err(BkError::shape("v", format!("N = {}", p.n()), format!("N = {}", q.n())));
        }
    }
    let rows = p.rows_of("v", v.len())?;
    check_vjp(p, rows, &g_bar, out)?;
    let mode = match opts.compute {
        Compute::F32 => Mode::F32,
        Compute::F64 => Mode::F64,
        Compute::Auto if auto_wants_f64(p) => Mode::F64,
        Compute::Auto => Mode::F32Fallback,
    };
    let ctx = Ctx { p, v, rows, n: p.n(), mode, policy: opts.nan_policy };
    if rows <= 8 {
        run::<8>(&ctx, g_bar, out)
    } else {
        run::<16>(&ctx, g_bar, out)
    }
}

/// One tile's share of ∂L/∂v.
enum DvChunk<'a> {
    F32(&'a mut [f32]),
    F64(&'a mut [f64]),
}

/// Per-tile sums over rows: ∂L/∂h0_diag, ∂L/∂k, ∂L/∂z, and rows computed in f64.
struct Sums {
    dd: Vec<f64>,
    dk: Vec<f64>,
    dz: Complex64,
    rows_f64: usize,
}

impl Sums {
    fn zero(n: usize) -> Self {
        Sums { dd: vec![0.0; n], dk: vec![0.0; n.saturating_sub(1)], dz: Complex64::default(), rows_f64: 0 }
    }
    fn add(mut self, o: Sums) -> Sums {
        self.dd.iter_mut().zip(&o.dd).for_each(|(a, b)| *a += b);
        self.dk.iter_mut().zip(&o.dk).for_each(|(a, b)| *a += b);
        self.dz += o.dz;
        self.rows_f64 += o.rows_f64;
        self
    }
}

fn run<const L: usize>(ctx: &Ctx<'_>, g_bar: GradG<'_>, out: &mut Vjp) -> Result<SolveInfo> {
    let (rows, n) = (ctx.rows, ctx.n);
    let chunks: Vec<DvChunk<'_>> = match &mut out.dv {
        Dv::F32(x) => x.chunks_mut(L * n).map(DvChunk::F32).collect(),
        Dv::F64(x) => x.chunks_mut(L * n).map(DvChunk::F64).collect(),
    };
    let (c32, c64) = (ctx.p.consts_f32(), ctx.p.consts_f64());
    let work = |s: &mut Scratches<L>, (t, chunk): (usize, DvChunk<'_>)| tile(ctx, t, chunk, g_bar, s, c32, c64);
    let init = || Scratches::<L> { f32: None, f64: None };
    let sums = if rows * n >= PARALLEL_MIN_ELEMS && chunks.len() > 1 {
        chunks
            .into_par_iter()
            .enumerate()
            .map_init(init, work)
            .try_reduce(|| Sums::zero(n), |a, b| Ok(a.add(b)))?
    } else {
        let mut s = init();
        let mut acc = Sums::zero(n);
        for c in chunks.into_iter().enumerate() {
            acc = acc.add(work(&mut s, c)?);
        }
        acc
    };
    out.dh0_diag.copy_from_slice(&sums.dd);
    out.set_dk(ctx.p, &sums.dk);
    out.dz = sums.dz;
    Ok(SolveInfo { rows, rows_f64: sums.rows_f64, ..Default::default() })
}

struct Scratches<const L: usize> {
    f32: Option<Scratch<f32, L>>,
    f64: Option<Scratch<f64, L>>,
}

/// Lane-major arrays of one tile. `ia` and `ib` carry one ghost position so the sweeps run
/// without boundary branches: `ia[i + 1]` = 1/α_i with `ia[0]` = 0, `ib[i]` = 1/β_i with
/// `ib[0]` = `ib[N]` = 0 (k_{−1} = k_{N−1} = 0 in `Kx` makes the ghost terms vanish).
struct Scratch<T, const L: usize> {
    v: Vec<[T; L]>,
    ia: (Vec<[T; L]>, Vec<[T; L]>),
    ib: (Vec<[T; L]>, Vec<[T; L]>),
    /// conj(ḡ_i) on entry, then λD_i.
    ld: (Vec<[T; L]>, Vec<[T; L]>),
    /// λα_i.
    la: (Vec<[T; L]>, Vec<[T; L]>),
    /// ∂L/∂v_i.
    dv: Vec<[T; L]>,
    /// k_{i−1} at index i, 0 at both ends.
    kx: Vec<T>,
}

impl<T: Real, const L: usize> Scratch<T, L> {
    fn new(n: usize) -> Self {
        let z = |len: usize| vec![[T::ZERO; L]; len];
        Scratch {
            v: z(n),
            ia: (z(n + 1), z(n + 1)),
            ib: (z(n + 1), z(n + 1)),
            ld: (z(n), z(n)),
            la: (z(n), z(n)),
            dv: z(n),
            kx: vec![T::ZERO; n + 1],
        }
    }
}

/// Tile `t`: f32 first unless the mode says f64, then f64 when the f32 result cannot stand.
fn tile<const L: usize>(
    ctx: &Ctx<'_>,
    t: usize,
    mut chunk: DvChunk<'_>,
    g_bar: GradG<'_>,
    s: &mut Scratches<L>,
    c32: &Consts<f32>,
    c64: &Consts<f64>,
) -> Result<Sums> {
    let n = ctx.n;
    if ctx.mode != Mode::F64 {
        let sc = s.f32.get_or_insert_with(|| Scratch::new(n));
        let (vmax, bad) = tile_in(ctx, t, g_bar, sc, c32)?;
        if vmax <= F32_MAX_V && (bad.is_empty() || ctx.mode == Mode::F32) {
            check_singular(ctx, t, &bad, sc)?;
            return Ok(finish(ctx, t, sc, &mut chunk, 0));
        }
    }
    let sc = s.f64.get_or_insert_with(|| Scratch::new(n));
    let (_, bad) = tile_in(ctx, t, g_bar, sc, c64)?;
    check_singular(ctx, t, &bad, sc)?;
    let live = L.min(ctx.rows - t * L);
    Ok(finish(ctx, t, sc, &mut chunk, live))
}

/// A non-finite gradient from a row of finite potentials means a singular matrix (as in the
/// forward, in every mode): locate it with the oracle. A NaN-propagate row's NaN gradient is
/// what was asked for.
fn check_singular<T: Real, const L: usize>(ctx: &Ctx<'_>, t: usize, bad: &[usize], sc: &Scratch<T, L>) -> Result<()> {
    for &l in bad {
        let vr: Vec<f64> = sc.v.iter().map(|x| x[l].to_f64()).collect();
        if vr.iter().all(|x| x.is_finite()) {
            let mut g = vec![Complex64::default(); ctx.n];
            let pos = reference::solve_row(ctx.p, &vr, &mut g).err().unwrap_or(0);
            return Err(BkError::SingularPivot { row: t * L + l, pos, im_z: ctx.p.z().im });
        }
    }
    Ok(())
}

/// Loads tile `t` and runs the sweeps in T; returns max |v| and the live lanes whose
/// gradient is not finite.
fn tile_in<T: Real, const L: usize>(ctx: &Ctx<'_>, t: usize, g_bar: GradG<'_>, s: &mut Scratch<T, L>, cs: &Consts<T>) -> Result<(f64, Vec<usize>)> {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx<T: Real, const L: usize>(
            ctx: &Ctx<'_>,
            t: usize,
            g_bar: GradG<'_>,
            s: &mut Scratch<T, L>,
            cs: &Consts<T>,
        ) -> Result<(f64, Vec<usize>)> {
            tile_body(ctx, t, g_bar, s, cs)
        }
        if avx2() {
            // SAFETY: the CPU reports AVX2 and FMA, the only requirements of `avx`.
            return unsafe { avx(ctx, t, g_bar, s, cs) };
        }
    }
    tile_body(ctx, t, g_bar, s, cs)
}

#[inline(always)]
fn tile_body<T: Real, const L: usize>(ctx: &Ctx<'_>, t: usize, g_bar: GradG<'_>, s: &mut Scratch<T, L>, cs: &Consts<T>) -> Result<(f64, Vec<usize>)> {
    let (n, r0) = (ctx.n, t * L);
    let live = L.min(ctx.rows - r0);
    let mut none: [Complex32; 0] = [];
    let mut dummy = Chunk::C64(&mut none);
    let mut io = Io::<T, L>::new(ctx, r0, live, &mut dummy);
    for i0 in (0..n).step_by(BLOCK) {
        io.fill(i0, &mut s.v[i0..(i0 + BLOCK).min(n)]);
    }
    let (vmax, _) = io.finish()?;
    // conj(ḡ), zero in padding lanes so they contribute nothing.
    for l in live..L {
        for i in 0..n {
            s.ld.0[i][l] = T::ZERO;
            s.ld.1[i][l] = T::ZERO;
        }
    }
    for l in 0..live {
        let row = (r0 + l) * n..(r0 + l + 1) * n;
        match g_bar {
            GradG::C64(x) => x[row].iter().enumerate().for_each(|(i, g)| {
                s.ld.0[i][l] = T::from_f32(g.re);
                s.ld.1[i][l] = T::from_f32(-g.im);
            }),
            GradG::C128(x) => x[row].iter().enumerate().for_each(|(i, g)| {
                s.ld.0[i][l] = T::from_f64(g.re);
                s.ld.1[i][l] = T::from_f64(-g.im);
            }),
        }
    }
    sweeps(cs, s);
    let mut bad = [T::ZERO; L];
    for x in &s.dv {
        for l in 0..L {
            bad[l] = bad[l] + (x[l] - x[l]);
        }
    }
    Ok((vmax, (0..live).filter(|&l| bad[l] != T::ZERO).collect()))
}

/// Element-wise over the L lanes: loops the compiler turns into SIMD (locals, not slices, so
/// that it need not fear aliasing).
macro_rules! lanes {
    ($l:ident, $body:block) => {
        for $l in 0..L $body
    };
}

/// The three sweeps over all lanes (see the module docs of [`crate::grad`]).
#[inline(always)]
fn sweeps<T: Real, const L: usize>(cs: &Consts<T>, s: &mut Scratch<T, L>) {
    let n = s.v.len();
    for i in 0..n - 1 {
        s.kx[i + 1] = cs.k[i];
    }
    let Scratch { v, ia, ib, ld, la, dv, kx } = s;
    let (v, dv, kx) = (&v[..n], &mut dv[..n], &kx[..n + 1]);
    let (iar, iai) = (&mut ia.0[..n + 1], &mut ia.1[..n + 1]);
    let (ibr, ibi) = (&mut ib.0[..n + 1], &mut ib.1[..n + 1]);
    let (ldr, ldi) = (&mut ld.0[..n], &mut ld.1[..n]);
    let (lar, lai) = (&mut la.0[..n], &mut la.1[..n]);
    let (c, c_lo) = (&cs.c[..n], &cs.c_lo[..n]);
    let di = cs.d_im;
    let one = T::from_f64(1.0);
    let d_re = |i: usize| -> [T; L] {
        let (vi, ci, lo) = (v[i], c[i], c_lo[i]);
        let mut d = [T::ZERO; L];
        lanes!(l, { d[l] = ci + vi[l] + lo });
        d
    };

    // Forward: α_{i+1} = d_{i+1} − k_i/α_i, keeping 1/α_i (the last pivot is not needed).
    let mut ar = d_re(0);
    let mut ai = [di; L];
    iar[0] = [T::ZERO; L];
    iai[0] = [T::ZERO; L];
    iar[n] = [T::ZERO; L];
    iai[n] = [T::ZERO; L];
    for i in 0..n - 1 {
        let (d, ki) = (d_re(i + 1), kx[i + 1]);
        let (mut xr, mut xi) = ([T::ZERO; L], [T::ZERO; L]);
        lanes!(l, {
            let inv = one / T::mul_add(ar[l], ar[l], ai[l] * ai[l]);
            xr[l] = ar[l] * inv;
            xi[l] = -(ai[l] * inv);
            ar[l] = d[l] - ki * xr[l];
            ai[l] = di - ki * xi[l];
        });
        iar[i + 1] = xr;
        iai[i + 1] = xi;
    }

    // Backward: β_i = d_i − k_i/β_{i+1} (kept as 1/β_i), G_i = 1/(d_i − k_{i−1}/α_{i−1} −
    // k_i/β_{i+1}), λD_i = −conj(ḡ_i) G_i², λα_i = λD_i + λα_{i+1} k_i (1/α_i)².
    let (mut pr, mut pi) = ([T::ZERO; L], [T::ZERO; L]);
    ibr[n] = [T::ZERO; L];
    ibi[n] = [T::ZERO; L];
    for i in (0..n).rev() {
        let d = d_re(i);
        let (kp, kn) = (kx[i], kx[i + 1]);
        let (nbr, nbi, par, pai, nar, nai) = (ibr[i + 1], ibi[i + 1], iar[i], iai[i], iar[i + 1], iai[i + 1]);
        let (lr, li) = (ldr[i], ldi[i]);
        let (mut odr, mut odi, mut obr, mut obi) = ([T::ZERO; L], [T::ZERO; L], [T::ZERO; L], [T::ZERO; L]);
        lanes!(l, {
            let (xr, xi) = (kn * nbr[l], kn * nbi[l]);
            let (yr, yi) = (kp * par[l], kp * pai[l]);
            let (br, bi) = (d[l] - xr, di - xi);
            let (den_r, den_i) = (d[l] - yr - xr, di - yi - xi);
            let inv = one / T::mul_add(den_r, den_r, den_i * den_i);
            let (gr, gi) = (den_r * inv, -(den_i * inv));
            let (g2r, g2i) = (T::mul_add(gr, gr, -(gi * gi)), (gr + gr) * gi);
            let ddr = -(T::mul_add(lr[l], g2r, -(li[l] * g2i)));
            let ddi = -(T::mul_add(lr[l], g2i, li[l] * g2r));
            odr[l] = ddr;
            odi[l] = ddi;
            let (a, b) = (nar[l], nai[l]);
            let (sr, si) = (kn * T::mul_add(a, a, -(b * b)), kn * ((a + a) * b));
            let (p_r, p_i) = (pr[l], pi[l]);
            pr[l] = ddr + T::mul_add(p_r, sr, -(p_i * si));
            pi[l] = ddi + T::mul_add(p_r, si, p_i * sr);
            let inv_b = one / T::mul_add(br, br, bi * bi);
            obr[l] = br * inv_b;
            obi[l] = -(bi * inv_b);
        });
        ldr[i] = odr;
        ldi[i] = odi;
        lar[i] = pr;
        lai[i] = pi;
        ibr[i] = obr;
        ibi[i] = obi;
    }
    ibr[0] = [T::ZERO; L];
    ibi[0] = [T::ZERO; L];

    // Forward again: λβ_i = λD_i + λβ_{i−1} k_{i−1} (1/β_i)²; ∂L/∂v_i = Re(λα_i + λβ_i − λD_i).
    // ∂L/∂k_{i−1} = −Re(λα_i/α_{i−1} + λβ_{i−1}/β_i) replaces `ia.0[i]`, and λα_i + λβ_i − λD_i
    // (for ∂L/∂z) replaces `ib[i]`: both are dead once step i has read them.
    let (mut qr, mut qi) = ([T::ZERO; L], [T::ZERO; L]);
    for i in 0..n {
        let kp = kx[i];
        let (a_r, a_i, b_r, b_i) = (iar[i], iai[i], ibr[i], ibi[i]);
        let (lr, li, ar_, ai_) = (ldr[i], ldi[i], lar[i], lai[i]);
        let (mut odk, mut otr, mut oti) = ([T::ZERO; L], [T::ZERO; L], [T::ZERO; L]);
        lanes!(l, {
            let (a, b) = (b_r[l], b_i[l]);
            let (sr, si) = (kp * T::mul_add(a, a, -(b * b)), kp * ((a + a) * b));
            odk[l] = -(T::mul_add(ar_[l], a_r[l], -(ai_[l] * a_i[l])) + T::mul_add(qr[l], a, -(qi[l] * b)));
            let nr = lr[l] + T::mul_add(qr[l], sr, -(qi[l] * si));
            let ni = li[l] + T::mul_add(qr[l], si, qi[l] * sr);
            qr[l] = nr;
            qi[l] = ni;
            otr[l] = ar_[l] + nr - lr[l];
            oti[l] = ai_[l] + ni - li[l];
        });
        iar[i] = odk;
        dv[i] = otr;
        ibr[i] = otr;
        ibi[i] = oti;
    }
}

/// Writes the tile's ∂L/∂v to its rows and sums the per-row gradients over its live lanes.
fn finish<T: Real, const L: usize>(ctx: &Ctx<'_>, t: usize, s: &Scratch<T, L>, chunk: &mut DvChunk<'_>, rows_f64: usize) -> Sums {
    let n = ctx.n;
    let live = L.min(ctx.rows - t * L);
    match chunk {
        DvChunk::F32(o) => {
            for l in 0..live {
                for i in 0..n {
                    o[l * n + i] = s.dv[i][l].to_f32();
                }
            }
        }
        DvChunk::F64(o) => {
            for l in 0..live {
                for i in 0..n {
                    o[l * n + i] = s.dv[i][l].to_f64();
                }
            }
        }
    }
    let mut sums = Sums::zero(n);
    sums.rows_f64 = rows_f64;
    for i in 0..n {
        let (mut dd, mut zr, mut zi) = (0.0, 0.0, 0.0);
        for l in 0..live {
            dd += s.dv[i][l].to_f64();
            zr += s.ib.0[i][l].to_f64();
            zi += s.ib.1[i][l].to_f64();
        }
        sums.dd[i] = dd;
        sums.dz += Complex64::new(zr, zi);
        if i + 1 < n {
            sums.dk[i] = (0..live).map(|l| s.ia.0[i + 1][l].to_f64()).sum();
        }
    }
    // dz = −conj(Σ (λα + λβ − λD)).
    sums.dz = -sums.dz.conj();
    sums
}
