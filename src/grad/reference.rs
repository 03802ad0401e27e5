//! The f64 oracle of the backward pass: the pivot-adjoint recursions of the module docs in
//! scalar complex f64, one row at a time, and a dense O(N³) version from the full inverse that
//! checks the recursions themselves.

use super::{Dv, GradG, Vjp};
use crate::error::{BkError, Result};
use crate::problem::Problem;
use num_complex::Complex64;
use rayon::prelude::*;

/// The VJP of one row: G (the forward result, for free) and the gradients.
#[derive(Clone, Debug, PartialEq)]
pub struct RowVjp {
    pub g: Vec<Complex64>,
    /// ∂L/∂v_i.
    pub dv: Vec<f64>,
    /// ∂L/∂k_i, k_i = h0_super_i · h0_sub_i.
    pub dk: Vec<f64>,
    /// ∂L/∂Re z + i ∂L/∂Im z.
    pub dz: Complex64,
}

const SINGULAR: f64 = 1e-300;

/// VJP of one row with upstream gradient `g_bar` (ḡ_i = ∂L/∂Re G_i + i ∂L/∂Im G_i). Returns the
/// position of the first vanishing pivot as the error.
pub fn vjp_row(p: &Problem, v: &[f64], g_bar: &[Complex64]) -> std::result::Result<RowVjp, usize> {
    let n = p.n();
    let (z, diag, k) = (p.z(), &p.h0().diag, p.k());
    let d: Vec<Complex64> = (0..n).map(|i| Complex64::new(diag[i] + v[i] - z.re, -z.im)).collect();
    let bad = |x: Complex64| !(x.norm_sqr() > SINGULAR) || !x.is_finite();

    let mut alpha = vec![Complex64::default(); n];
    alpha[0] = d[0];
    for i in 1..n {
        if bad(alpha[i - 1]) {
            return Err(i - 1);
        }
        alpha[i] = d[i] - k[i - 1] / alpha[i - 1];
    }
    let mut beta = vec![Complex64::default(); n];
    beta[n - 1] = d[n - 1];
    for i in (0..n - 1).rev() {
        if bad(beta[i + 1]) {
            return Err(i + 1);
        }
        beta[i] = d[i] - k[i] / beta[i + 1];
    }
    let mut g = vec![Complex64::default(); n];
    let mut lam_d = vec![Complex64::default(); n];
    for i in 0..n {
        let den = alpha[i] + beta[i] - d[i];
        if bad(den) {
            return Err(i);
        }
        g[i] = den.inv();
        lam_d[i] = -g_bar[i].conj() * g[i] * g[i];
    }
    let mut lam_a = vec![Complex64::default(); n];
    lam_a[n - 1] = lam_d[n - 1];
    for i in (0..n - 1).rev() {
        lam_a[i] = lam_d[i] + lam_a[i + 1] * k[i] / (alpha[i] * alpha[i]);
    }
    let mut lam_b = vec![Complex64::default(); n];
    lam_b[0] = lam_d[0];
    for i in 1..n {
        lam_b[i] = lam_d[i] + lam_b[i - 1] * k[i - 1] / (beta[i] * beta[i]);
    }
    let lam: Vec<Complex64> = (0..n).map(|i| lam_a[i] + lam_b[i] - lam_d[i]).collect();
    let dk = (0..n - 1).map(|i| -(lam_a[i + 1] / alpha[i] + lam_b[i] / beta[i + 1]).re).collect();
    Ok(RowVjp {
        g,
        dv: lam.iter().map(|l| l.re).collect(),
        dk,
        dz: -lam.iter().sum::<Complex64>().conj(),
    })
}

/// The oracle VJP of a row-major (B, N) batch, in f64, parallel over rows.
pub fn vjp_batch(p: &Problem, v: &[f64], g_bar: GradG<'_>) -> Result<Vjp> {
    let n = p.n();
    let rows = p.rows_of("v", v.len())?;
    let mut out = Vjp::alloc(super::DvFormat::F64, rows, n);
    super::check_vjp(p, rows, &g_bar, &out)?;
    let per_row: Vec<RowVjp> = (0..rows)
        .into_par_iter()
        .map(|r| {
            let gb: Vec<Complex64> = (0..n).map(|i| g_bar.get(r * n + i)).collect();
            vjp_row(p, &v[r * n..(r + 1) * n], &gb).map_err(|pos| BkError::SingularPivot { row: r, pos, im_z: p.z().im })
        })
        .collect::<Result<_>>()?;
    let mut dk = vec![0.0; n - 1];
    let Dv::F64(dv) = &mut out.dv else { unreachable!("allocated as f64") };
    for (r, rv) in per_row.iter().enumerate() {
        dv[r * n..(r + 1) * n].copy_from_slice(&rv.dv);
        for i in 0..n {
            out.dh0_diag[i] += rv.dv[i];
        }
        for i in 0..n - 1 {
            dk[i] += rv.dk[i];
        }
        out.dz += rv.dz;
    }
    out.set_dk(p, &dk);
    Ok(out)
}

/// The full inverse (H0 + diag(v) − z)^−1, row-major N × N, by Gauss–Jordan elimination with
/// partial pivoting. O(N³): for tests at small N.
pub fn dense_inverse(p: &Problem, v: &[f64]) -> Result<Vec<Complex64>> {
    let n = p.n();
    if v.len() != n {
        return Err(BkError::shape("v", format!("length {n}"), format!("length {}", v.len())));
    }
    let (z, h) = (p.z(), p.h0());
    let mut a = vec![Complex64::default(); n * n];
    let mut inv = vec![Complex64::default(); n * n];
    for i in 0..n {
        a[i * n + i] = Complex64::new(h.diag[i] + v[i], 0.0) - z;
        inv[i * n + i] = 1.0.into();
        if i + 1 < n {
            a[i * n + i + 1] = h.sup[i].into();
            a[(i + 1) * n + i] = h.sub[i].into();
        }
    }
    for col in 0..n {
        let piv = (col..n).max_by(|&r, &s| a[r * n + col].norm().total_cmp(&a[s * n + col].norm())).unwrap_or(col);
        if a[piv * n + col].norm() == 0.0 {
            return Err(BkError::SingularPivot { row: 0, pos: col, im_z: z.im });
        }
        for j in 0..n {
            a.swap(piv * n + j, col * n + j);
            inv.swap(piv * n + j, col * n + j);
        }
        let pinv = a[col * n + col].inv();
        for j in 0..n {
            a[col * n + j] *= pinv;
            inv[col * n + j] *= pinv;
        }
        for r in (0..n).filter(|&r| r != col) {
            let f = a[r * n + col];
            for j in 0..n {
                let (ac, ic) = (a[col * n + j], inv[col * n + j]);
                a[r * n + j] -= f * ac;
                inv[r * n + j] -= f * ic;
            }
        }
    }
    Ok(inv)
}

/// One row's (dv, dh0_super, dh0_sub, dz) from the dense inverse.
pub type DenseRowVjp = (Vec<f64>, Vec<f64>, Vec<f64>, Complex64);

/// The VJP of one row straight from the definition, with the dense inverse R:
/// dv_j = −Re Σ_i conj(ḡ_i) R_ij R_ji; ∂L/∂h0_super_j = −Re Σ_i conj(ḡ_i) R_ij R_{j+1,i};
/// ∂L/∂h0_sub_j = −Re Σ_i conj(ḡ_i) R_{i,j+1} R_ji; dz = conj(Σ_ij conj(ḡ_i) R_ij R_ji).
/// Returns (dv, dh0_super, dh0_sub, dz). O(N³), independent of the recursions.
pub fn dense_vjp_row(p: &Problem, v: &[f64], g_bar: &[Complex64]) -> Result<DenseRowVjp> {
    let n = p.n();
    let r = dense_inverse(p, v)?;
    let at = |i: usize, j: usize| r[i * n + j];
    let lam: Vec<Complex64> = g_bar.iter().map(|g| g.conj()).collect();
    let mut dv = vec![0.0; n];
    let mut dz = Complex64::default();
    for j in 0..n {
        let s: Complex64 = (0..n).map(|i| lam[i] * at(i, j) * at(j, i)).sum();
        dv[j] = -s.re;
        dz += s;
    }
    let dsup = (0..n - 1).map(|j| -(0..n).map(|i| lam[i] * at(i, j) * at(j + 1, i)).sum::<Complex64>().re).collect();
    let dsub = (0..n - 1).map(|j| -(0..n).map(|i| lam[i] * at(i, j + 1) * at(j, i)).sum::<Complex64>().re).collect();
    Ok((dv, dsup, dsub, dz.conj()))
}
