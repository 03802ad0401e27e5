//! The f64 oracle every fast path is compared against, and a dense inverse that checks the
//! oracle itself. Scalar, straightforward code: clarity over speed.

use crate::error::{BkError, Result};
use crate::problem::Problem;
use num_complex::Complex64;
use rayon::prelude::*;

/// Pivots are treated as singular below this magnitude (relative to the row's scale).
const SINGULAR_REL: f64 = 1e-300;

/// G_i = [(H0 + diag(v) − z)^−1]_ii for one row, by the forward/backward pivot recursion in f64.
///
/// Returns the position of the first vanishing or non-finite pivot as the error.
pub fn solve_row(p: &Problem, v: &[f64], g: &mut [Complex64]) -> std::result::Result<(), usize> {
    let n = p.n();
    debug_assert_eq!(v.len(), n);
    debug_assert_eq!(g.len(), n);
    let z = p.z();
    let diag = &p.h0().diag;
    let k = p.k();
    let d = |i: usize| Complex64::new(diag[i] + v[i] - z.re, -z.im);
    let bad = |x: Complex64| !(x.norm_sqr() > SINGULAR_REL) || !x.is_finite();

    // a_i = k_{i-1} / α_{i-1}: the forward coupling, kept so the backward pass can form G.
    let mut a = vec![Complex64::new(0.0, 0.0); n];
    let mut alpha = d(0);
    if bad(alpha) && n > 1 {
        return Err(0);
    }
    for i in 1..n {
        a[i] = k[i - 1] / alpha;
        alpha = d(i) - a[i];
        if bad(alpha) && i + 1 < n {
            return Err(i);
        }
    }
    let mut beta = Complex64::new(0.0, 0.0);
    for i in (0..n).rev() {
        let b = if i + 1 < n { k[i] / beta } else { Complex64::new(0.0, 0.0) };
        let di = d(i);
        beta = di - b;
        if bad(beta) && i > 0 {
            return Err(i);
        }
        let den = di - a[i] - b;
        if bad(den) {
            return Err(i);
        }
        g[i] = den.inv();
    }
    Ok(())
}

/// The oracle over a row-major (B, N) batch, parallel over rows.
pub fn solve_batch(p: &Problem, v: &[f64]) -> Result<Vec<Complex64>> {
    let n = p.n();
    let rows = p.rows_of("v", v.len())?;
    let mut g = vec![Complex64::new(0.0, 0.0); rows * n];
    g.par_chunks_mut(n)
        .zip(v.par_chunks(n))
        .enumerate()
        .try_for_each(|(row, (gr, vr))| {
            solve_row(p, vr, gr).map_err(|pos| BkError::SingularPivot {
                row,
                pos,
                im_z: p.z().im,
            })
        })?;
    debug_assert_eq!(rows * n, g.len());
    Ok(g)
}

/// The oracle on f32 inputs, widened exactly: what "run on the same f32 inputs" means.
pub fn solve_batch_f32(p: &Problem, v: &[f32]) -> Result<Vec<Complex64>> {
    let wide: Vec<f64> = v.iter().map(|&x| x as f64).collect();
    solve_batch(p, &wide)
}

/// Diagonal of (H0 + diag(v) − z)^−1 by dense Gauss–Jordan elimination with partial pivoting.
/// O(N³): an oracle independent of the recursion, for small N in tests.
pub fn dense_inverse_diag(p: &Problem, v: &[f64]) -> Result<Vec<Complex64>> {
    let n = p.n();
    if v.len() != n {
        return Err(BkError::shape("v", format!("length {n}"), format!("length {}", v.len())));
    }
    let z = p.z();
    let h = p.h0();
    let mut a = vec![Complex64::new(0.0, 0.0); n * n];
    for i in 0..n {
        a[i * n + i] = Complex64::new(h.diag[i] + v[i], 0.0) - z;
        if i + 1 < n {
            a[i * n + i + 1] = h.sup[i].into();
            a[(i + 1) * n + i] = h.sub[i].into();
        }
    }
    let mut inv = vec![Complex64::new(0.0, 0.0); n * n];
    for i in 0..n {
        inv[i * n + i] = 1.0.into();
    }
    for col in 0..n {
        let piv = (col..n)
            .max_by(|&r, &s| a[r * n + col].norm().total_cmp(&a[s * n + col].norm()))
            .unwrap_or(col);
        if a[piv * n + col].norm() == 0.0 {
            return Err(BkError::SingularPivot { row: 0, pos: col, im_z: z.im });
        }
        if piv != col {
            for j in 0..n {
                a.swap(piv * n + j, col * n + j);
                inv.swap(piv * n + j, col * n + j);
            }
        }
        let p_inv = a[col * n + col].inv();
        for j in 0..n {
            a[col * n + j] *= p_inv;
            inv[col * n + j] *= p_inv;
        }
        for r in 0..n {
            if r == col {
                continue;
            }
            let f = a[r * n + col];
            if f == Complex64::new(0.0, 0.0) {
                continue;
            }
            for j in 0..n {
                let (ac, ic) = (a[col * n + j], inv[col * n + j]);
                a[r * n + j] -= f * ac;
                inv[r * n + j] -= f * ic;
            }
        }
    }
    Ok((0..n).map(|i| inv[i * n + i]).collect())
}
