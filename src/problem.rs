//! The problem every backend solves: a tridiagonal H0 shared by all rows and a complex shift z.
//! Validated once here, so the backends and kernels can assume well-formed inputs.

use crate::error::{BkError, Result};
use num_complex::Complex64;

/// Tridiagonal H0: `diag[n]`, `sup[n-1]` (H0[i][i+1]) and `sub[n-1]` (H0[i+1][i]).
#[derive(Clone, Debug, PartialEq)]
pub struct H0 {
    pub diag: Vec<f64>,
    pub sup: Vec<f64>,
    pub sub: Vec<f64>,
}

impl H0 {
    /// The discrete Laplacian: diagonal −2, off-diagonals 1.
    pub fn laplacian(n: usize) -> Self {
        H0 {
            diag: vec![-2.0; n],
            sup: vec![1.0; n.saturating_sub(1)],
            sub: vec![1.0; n.saturating_sub(1)],
        }
    }

    pub fn n(&self) -> usize {
        self.diag.len()
    }

    /// Checks lengths and finiteness. `n` is the sequence length the caller expects.
    pub fn validate(&self, n: usize) -> Result<()> {
        if n == 0 {
            return Err(BkError::InvalidProblem(
                "N = 0: the sequence length must be at least 1".into(),
            ));
        }
        let off = n - 1;
        for (name, len, want) in [
            ("h0_diag", self.diag.len(), n),
            ("h0_super", self.sup.len(), off),
            ("h0_sub", self.sub.len(), off),
        ] {
            if len != want {
                return Err(BkError::shape(name, format!("length {want} (N = {n})"), format!("length {len}")));
            }
        }
        for (name, xs) in [("h0_diag", &self.diag), ("h0_super", &self.sup), ("h0_sub", &self.sub)] {
            if let Some((i, x)) = xs.iter().enumerate().find(|(_, x)| !x.is_finite()) {
                return Err(BkError::NonFinite {
                    tensor: name.into(),
                    row: 0,
                    pos: i,
                    value: *x,
                });
            }
        }
        Ok(())
    }
}

/// H0, z and the derived per-position constants the recursions read.
///
/// Construct with [`Problem::new`]; the fields are private so a `Problem` is always valid.
#[derive(Clone, Debug)]
pub struct Problem {
    h0: H0,
    z: Complex64,
    /// k_i = sup_i · sub_i, the only way the off-diagonals enter the pivots.
    k: Vec<f64>,
    diag_f32: Vec<f32>,
    k_f32: Vec<f32>,
    /// The recursions' constants, built on first use (a `Problem` never changes).
    consts: Box<crate::backend::lanes::ConstsCache>,
}

impl Problem {
    pub fn new(h0: H0, z: Complex64) -> Result<Self> {
        h0.validate(h0.n())?;
        if !z.re.is_finite() || !z.im.is_finite() {
            return Err(BkError::InvalidProblem(format!("z = {z} is not finite")));
        }
        let k: Vec<f64> = h0.sup.iter().zip(&h0.sub).map(|(a, b)| a * b).collect();
        if let Some(i) = k.iter().position(|x| !x.is_finite()) {
            return Err(BkError::InvalidProblem(format!(
                "h0_super[{i}] * h0_sub[{i}] overflows"
            )));
        }
        let diag_f32 = h0.diag.iter().map(|&x| x as f32).collect();
        let k_f32 = k.iter().map(|&x| x as f32).collect();
        Ok(Problem { h0, z, k, diag_f32, k_f32, consts: Default::default() })
    }

    /// The default problem of the seed: Laplacian H0 and z = i.
    pub fn laplacian(n: usize, z: Complex64) -> Result<Self> {
        if n == 0 {
            return Err(BkError::InvalidProblem(
                "N = 0: the sequence length must be at least 1".into(),
            ));
        }
        Problem::new(H0::laplacian(n), z)
    }

    pub fn n(&self) -> usize {
        self.h0.n()
    }
    pub fn z(&self) -> Complex64 {
        self.z
    }
    pub fn h0(&self) -> &H0 {
        &self.h0
    }
    /// The recursions' f32 constants (built on first use, then kept).
    pub(crate) fn consts_f32(&self) -> &crate::backend::lanes::Consts<f32> {
        self.consts.f32(self)
    }

    /// The recursions' f64 constants (built on first use, then kept).
    pub(crate) fn consts_f64(&self) -> &crate::backend::lanes::Consts<f64> {
        self.consts.f64(self)
    }

    /// k_i = h0_super_i · h0_sub_i, length N − 1.
    pub fn k(&self) -> &[f64] {
        &self.k
    }
    pub fn diag_f32(&self) -> &[f32] {
        &self.diag_f32
    }
    pub fn k_f32(&self) -> &[f32] {
        &self.k_f32
    }

    /// H0 is symmetric-equivalent (every k_i ≥ 0): then |pivot| ≥ |Im z| and, for Im z ≠ 0,
    /// no pivot can vanish.
    pub fn is_hermitian_like(&self) -> bool {
        self.k.iter().all(|&k| k >= 0.0)
    }

    /// Checks that a flat batch has a whole number of rows of length N and returns the row count.
    pub fn rows_of(&self, tensor: &str, len: usize) -> Result<usize> {
        let n = self.n();
        if len == 0 || len % n != 0 {
            return Err(BkError::shape(
                tensor,
                format!("a non-empty (B, {n}) batch (length a multiple of N = {n})"),
                format!("{len} values"),
            ));
        }
        Ok(len / n)
    }
}

/// What to do with NaN or ±Inf in the potentials.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NanPolicy {
    /// Reject the batch with an error naming the row and position.
    #[default]
    Error,
    /// Replace non-finite values by 0 before solving.
    Zero,
    /// Solve anyway; rows holding a non-finite value give NaN outputs.
    Propagate,
}

impl std::str::FromStr for NanPolicy {
    type Err = BkError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "error" => Ok(NanPolicy::Error),
            "zero" => Ok(NanPolicy::Zero),
            "propagate" => Ok(NanPolicy::Propagate),
            _ => Err(BkError::InvalidArgument(format!(
                "unknown NaN policy `{s}` (expected error, zero or propagate)"
            ))),
        }
    }
}

/// Applies a NaN policy to a row-major (rows, n) batch, scanning rows in parallel. Backends
/// that cannot apply the policy while loading (the GPU) call this before upload.
pub fn apply_nan_policy<'a, T>(
    tensor: &str,
    data: &'a [T],
    n: usize,
    policy: NanPolicy,
) -> Result<std::borrow::Cow<'a, [T]>>
where
    T: Copy + Into<f64> + Default + Send + Sync,
    [T]: ToOwned<Owned = Vec<T>>,
{
    use rayon::prelude::*;
    if policy == NanPolicy::Propagate {
        return Ok(std::borrow::Cow::Borrowed(data));
    }
    let first_bad = data
        .par_chunks(n.max(1))
        .position_first(|row| row.iter().any(|&x| !x.into().is_finite()));
    let Some(row) = first_bad else {
        return Ok(std::borrow::Cow::Borrowed(data));
    };
    match policy {
        NanPolicy::Error => {
            let pos = data[row * n..(row + 1) * n].iter().position(|&x| !x.into().is_finite()).unwrap_or(0);
            Err(BkError::NonFinite { tensor: tensor.into(), row, pos, value: data[row * n + pos].into() })
        }
        _ => Ok(std::borrow::Cow::Owned(
            data.par_iter().map(|&x| if x.into().is_finite() { x } else { T::default() }).collect(),
        )),
    }
}
