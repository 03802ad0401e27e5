//! The exact backward pass (vector–Jacobian product) of the BK core, O(N) per row.
//!
//! # Convention
//!
//! The loss L is real. Its gradient with respect to a complex quantity w = x + i y is the
//! complex number `∂L/∂x + i ∂L/∂y` (the convention of PyTorch and JAX for complex tensors). So
//! the upstream gradient is `ḡ_i = ∂L/∂Re G_i + i ∂L/∂Im G_i`, and a first-order change of L is
//! `dL = Σ_i Re(conj(ḡ_i) · dG_i)`. Returned:
//!
//! - `dv[b, i] = ∂L/∂v_{b,i}` (real), one per input element;
//! - `dh0_diag[i] = Σ_b dv[b, i]` (H0 is shared by all rows, and d_i = h0_diag_i + v_i − z);
//! - `dh0_super[i]`, `dh0_sub[i]` (real), summed over rows;
//! - `dz = ∂L/∂Re z + i ∂L/∂Im z`, summed over rows.
//!
//! # Method
//!
//! With R = (H0 + diag(v) − z)^−1 and G_i = R_ii, `∂G_i/∂v_j = −R_ij R_ji`, so
//! `dv_j = −Re Σ_i conj(ḡ_i) R_ij R_ji`: a dense N × N sum. The inverse of a tridiagonal matrix is
//! semiseparable: for i < j, `R_ij R_ji = R_jj² Π_{m=i}^{j−1} k_m / α_m²` and, symmetrically,
//! `R_ji R_ij = R_ii² Π_{m=i+1}^{j} k_{m−1} / β_m²`, with the forward pivots α and backward
//! pivots β of the forward solve (k_m = h0_super_m · h0_sub_m). Only ratios of neighbouring
//! pivots enter, never the θ/φ determinants, so nothing overflows at any N. Splitting the sum
//! at i = j gives two first-order recursions, one per direction (λ = conj(ḡ)):
//!
//! ```text
//! λD_i = −λ_i G_i²
//! λα_i = λD_i + λα_{i+1} · k_i / α_i²        (i = N−1 … 0, λα_N = 0)
//! λβ_i = λD_i + λβ_{i−1} · k_{i−1} / β_i²    (i = 0 … N−1, λβ_{−1} = 0)
//! dv_i = Re(λα_i + λβ_i − λD_i)
//! dk_i = −Re(λα_{i+1} / α_i + λβ_i / β_{i+1})
//! dz   = −conj(Σ_i (λα_i + λβ_i − λD_i))
//! ```
//!
//! These are exactly the adjoints of the pivot recursions (α_{i+1} = d_{i+1} − k_i/α_i has
//! ∂α_{i+1}/∂α_i = k_i/α_i²), so the backward pass costs about two forward passes and needs
//! α, β and G of the row. [`reference`] is the scalar f64 version (the oracle of the fast paths,
//! checked itself against finite differences and the dense inverse); backends implement
//! [`crate::backend::Backend::vjp_into`].

pub mod gpu;
pub mod reference;

use crate::error::{BkError, Result};
use num_complex::{Complex32, Complex64};

/// The upstream gradient ḡ = ∂L/∂Re G + i ∂L/∂Im G, row-major (B, N), one per element of G.
#[derive(Clone, Copy, Debug)]
pub enum GradG<'a> {
    C64(&'a [Complex32]),
    C128(&'a [Complex64]),
}

impl GradG<'_> {
    pub fn len(&self) -> usize {
        match self {
            GradG::C64(x) => x.len(),
            GradG::C128(x) => x.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Element `idx` widened to f64.
    #[inline(always)]
    pub fn get(&self, idx: usize) -> Complex64 {
        match self {
            GradG::C64(x) => Complex64::new(x[idx].re as f64, x[idx].im as f64),
            GradG::C128(x) => x[idx],
        }
    }
}

/// Precision in which dL/dv is returned (the reductions over rows are always f64).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DvFormat {
    F32,
    F64,
}

/// dL/dv per element, in the precision asked for.
#[derive(Clone, Debug, PartialEq)]
pub enum Dv {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

impl Dv {
    pub fn len(&self) -> usize {
        match self {
            Dv::F32(x) => x.len(),
            Dv::F64(x) => x.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn to_f64(&self) -> Vec<f64> {
        match self {
            Dv::F32(x) => x.iter().map(|&a| a as f64).collect(),
            Dv::F64(x) => x.clone(),
        }
    }
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            Dv::F32(x) => x.clone(),
            Dv::F64(x) => x.iter().map(|&a| a as f32).collect(),
        }
    }
}

/// The result of a VJP over a (B, N) batch. Allocate once with [`Vjp::alloc`] and reuse it
/// across calls of [`crate::backend::Backend::vjp_into`].
#[derive(Clone, Debug, PartialEq)]
pub struct Vjp {
    /// ∂L/∂v, row-major (B, N).
    pub dv: Dv,
    /// ∂L/∂h0_diag [N], summed over rows.
    pub dh0_diag: Vec<f64>,
    /// ∂L/∂h0_super [N − 1], summed over rows.
    pub dh0_super: Vec<f64>,
    /// ∂L/∂h0_sub [N − 1], summed over rows.
    pub dh0_sub: Vec<f64>,
    /// ∂L/∂Re z + i ∂L/∂Im z, summed over rows.
    pub dz: Complex64,
}

impl Vjp {
    pub fn alloc(fmt: DvFormat, rows: usize, n: usize) -> Vjp {
        let off = n.saturating_sub(1);
        Vjp {
            dv: match fmt {
                DvFormat::F32 => Dv::F32(vec![0.0; rows * n]),
                DvFormat::F64 => Dv::F64(vec![0.0; rows * n]),
            },
            dh0_diag: vec![0.0; n],
            dh0_super: vec![0.0; off],
            dh0_sub: vec![0.0; off],
            dz: Complex64::default(),
        }
    }

    pub fn dv_format(&self) -> DvFormat {
        match self.dv {
            Dv::F32(_) => DvFormat::F32,
            Dv::F64(_) => DvFormat::F64,
        }
    }

    /// Sets the H0 gradients from ∂L/∂k (k_i = h0_super_i · h0_sub_i, the only way the
    /// off-diagonals enter G): ∂L/∂h0_super_i = ∂L/∂k_i · h0_sub_i and vice versa.
    pub(crate) fn set_dk(&mut self, p: &crate::Problem, dk: &[f64]) {
        let h = p.h0();
        for i in 0..dk.len() {
            self.dh0_super[i] = dk[i] * h.sub[i];
            self.dh0_sub[i] = dk[i] * h.sup[i];
        }
    }
}

/// Checks the shapes of a VJP call; returns the row count.
pub(crate) fn check_vjp(p: &crate::Problem, rows: usize, g_bar: &GradG<'_>, out: &Vjp) -> Result<()> {
    let n = p.n();
    if g_bar.len() != rows * n {
        return Err(BkError::shape("dL/dG", format!("({rows}, {n}) values, like v"), format!("{} values", g_bar.len())));
    }
    if out.dv.len() != rows * n {
        return Err(BkError::shape("dL/dv", format!("({rows}, {n}) output"), format!("{} values", out.dv.len())));
    }
    if out.dh0_diag.len() != n || out.dh0_super.len() != n - 1 || out.dh0_sub.len() != n - 1 {
        return Err(BkError::shape("dL/dH0", format!("N = {n} (diag) and N − 1 (off-diagonals)"), format!("{}", out.dh0_diag.len())));
    }
    let bad = match g_bar {
        GradG::C64(x) => x.iter().position(|c| !(c.re.is_finite() && c.im.is_finite())),
        GradG::C128(x) => x.iter().position(|c| !c.is_finite()),
    };
    if let Some(i) = bad {
        return Err(BkError::NonFinite { tensor: "dL/dG".into(), row: i / n, pos: i % n, value: g_bar.get(i).norm() });
    }
    Ok(())
}
