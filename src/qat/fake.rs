//! Fake quantization (quantize → dequantize in f32, with exactly the rounding, clamping and
//! parameters of the real path, so that a run on fake-quantized values and a run on codes give
//! the same bits) and its LSQ backward.
//!
//! For a static group with scale s and integer zero point z, the real path stores
//! q = clamp(round_half_even(x/s), qmin − z, qmax − z) + z and loads (q − z)·s; fake quantization
//! is that value. Its gradients (LSQ, Esser et al. 2020), with t = x/s:
//!
//! - ∂x̂/∂x = 1 inside the code range (qmin − z ≤ t ≤ qmax − z), 0 outside (straight-through
//!   estimator with clipping);
//! - ∂x̂/∂s = round(t) − t inside, and the code bound (qmin − z or qmax − z) outside;
//! - ∂x̂/∂z = 0 inside and −s outside: the zero point is learned as a real number and rounded
//!   (half to even) in the forward, the rounding passed straight through.
//!
//! LSQ's gradient scale 1/√(numel · qmax) is left out: Adam normalises each parameter's step.
//! Dynamic (per-row) parameters depend on the data through min/max; they are not learned and
//! the backward treats them as constants (straight-through for x only).

use crate::error::{BkError, Result};
use crate::quant::tensor::row_params;
use crate::quant::{codec, dynamic_params_row, AffineParams, ComplexQuant, QuantSpec, TensorQuant};
use num_complex::Complex32;
use rayon::prelude::*;

/// Rows per parallel work item of the element-wise passes.
const ROWS_PER_JOB: usize = 16;

/// `x` quantized and dequantized as the real path does it, row-major (rows, n).
pub fn fake_quantize(tensor: &str, q: &TensorQuant, x: &[f32], rows: usize, n: usize) -> Result<Vec<f32>> {
    q.validate(tensor, n)?;
    if x.len() != rows * n {
        return Err(BkError::shape(tensor, format!("({rows}, {n})"), format!("{} values", x.len())));
    }
    let mut out = vec![0f32; x.len()];
    let spec = q.spec;
    out.par_chunks_mut(n * ROWS_PER_JOB).zip(x.par_chunks(n * ROWS_PER_JOB)).for_each(|(o, xs)| {
        let groups = spec.groups(n);
        let mut dyn_scale = vec![0f32; groups];
        let mut dyn_zero = vec![0i16; groups];
        for (orow, xrow) in o.chunks_mut(n).zip(xs.chunks(n)) {
            let (scale, zero): (&[f32], Option<&[i16]>) = match &q.params {
                Some(p) => row_params(&spec, p, 0, n),
                None => {
                    let zr = (!spec.symmetric).then_some(&mut dyn_zero[..]);
                    dynamic_params_row(&spec, xrow, &mut dyn_scale, zr);
                    (&dyn_scale, (!spec.symmetric).then_some(&dyn_zero[..]))
                }
            };
            fq_row(spec.qmin(), spec.qmax(), &Spelled::new(&spec, scale, zero, n), xrow, orow);
        }
    });
    Ok(out)
}

/// G quantized and dequantized as the real store path does it, real and imaginary parts
/// separately.
pub fn fake_quantize_complex(tensor: &str, q: &ComplexQuant, g: &[Complex32], rows: usize, n: usize) -> Result<Vec<Complex32>> {
    q.validate(tensor, n)?;
    let re: Vec<f32> = g.iter().map(|c| c.re).collect();
    let im: Vec<f32> = g.iter().map(|c| c.im).collect();
    let re = fake_quantize(&format!("{tensor}.re"), &q.re, &re, rows, n)?;
    let im = fake_quantize(&format!("{tensor}.im"), &q.im, &im, rows, n)?;
    Ok(re.into_iter().zip(im).map(|(r, i)| Complex32::new(r, i)).collect())
}

/// Per-position parameters of one row: the scale and zero point of each position's group,
/// spelled out so that the element loops run without group bookkeeping and vectorise for every
/// group size (per-channel included).
struct Spelled {
    s: Vec<f32>,
    z: Vec<i32>,
}

impl Spelled {
    fn new(spec: &QuantSpec, scale: &[f32], zero: Option<&[i16]>, n: usize) -> Self {
        let g = spec.group_size;
        Spelled {
            s: (0..n).map(|i| scale[i / g]).collect(),
            z: (0..n).map(|i| zero.map_or(0, |z| z[i / g] as i32)).collect(),
        }
    }
}

#[inline(always)]
fn fq_row_body(qmin: i32, qmax: i32, p: &Spelled, x: &[f32], out: &mut [f32]) {
    let n = x.len();
    let (s, z, out) = (&p.s[..n], &p.z[..n], &mut out[..n]);
    for i in 0..n {
        out[i] = codec::dequantize(codec::quantize(x[i], s[i], z[i], qmin, qmax), s[i], z[i]);
    }
}

/// [`fq_row_body`] compiled for AVX2 where the CPU has it: rounding half to even is then one
/// instruction (`vroundps`, the same IEEE operation as the libm call it replaces) and the loop
/// vectorises.
fn fq_row(qmin: i32, qmax: i32, p: &Spelled, x: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx(qmin: i32, qmax: i32, p: &Spelled, x: &[f32], out: &mut [f32]) {
            fq_row_body(qmin, qmax, p, x, out)
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU reports AVX2 and FMA, the only requirements of `avx`.
            return unsafe { avx(qmin, qmax, p, x, out) };
        }
    }
    fq_row_body(qmin, qmax, p, x, out)
}

/// LSQ terms of whole rows (`xs`, `go`: row-major, n per row), summed per position into `ds`
/// and `dz` (Σ g·∂x̂/∂s and Σ g·∂x̂/∂z), with the straight-through ∂L/∂x into `gi` when given.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn lsq_rows_body(qmin: f32, qmax: f32, p: &Spelled, xs: &[f32], go: &[f32], mut gi: Option<&mut [f32]>, ds: &mut [f32], dz: &mut [f32]) {
    let n = ds.len();
    let (s, z, dz) = (&p.s[..n], &p.z[..n], &mut dz[..n]);
    for (r, (x, g)) in xs.chunks_exact(n).zip(go.chunks_exact(n)).enumerate() {
        let mut gi_row = gi.as_deref_mut().map(|gi| &mut gi[r * n..(r + 1) * n]);
        for i in 0..n {
            let (lo, hi) = (qmin - z[i] as f32, qmax - z[i] as f32);
            let t = x[i] / s[i];
            let (below, above) = (t < lo, t > hi);
            let inside = !(below || above);
            let dsi = if below { lo } else if above { hi } else { t.round_ties_even() - t };
            ds[i] += g[i] * dsi;
            dz[i] -= if inside { 0.0 } else { g[i] * s[i] };
            if let Some(gr) = gi_row.as_deref_mut() {
                gr[i] = if inside { g[i] } else { 0.0 };
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn lsq_rows(qmin: f32, qmax: f32, p: &Spelled, xs: &[f32], go: &[f32], gi: Option<&mut [f32]>, ds: &mut [f32], dz: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        #[allow(clippy::too_many_arguments)]
        unsafe fn avx(qmin: f32, qmax: f32, p: &Spelled, xs: &[f32], go: &[f32], gi: Option<&mut [f32]>, ds: &mut [f32], dz: &mut [f32]) {
            lsq_rows_body(qmin, qmax, p, xs, go, gi, ds, dz)
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU reports AVX2 and FMA, the only requirements of `avx`.
            return unsafe { avx(qmin, qmax, p, xs, go, gi, ds, dz) };
        }
    }
    lsq_rows_body(qmin, qmax, p, xs, go, gi, ds, dz)
}

/// Learnable static quantization of one real tensor: per group, log-scale θ (s = e^θ) and,
/// when asymmetric, a real-valued zero point. What the real path uses is [`LearnedQuant::params`]:
/// s rounded to f32, the zero point rounded half to even and clamped to i16.
#[derive(Clone, Debug, PartialEq)]
pub struct LearnedQuant {
    pub spec: QuantSpec,
    pub log_scale: Vec<f64>,
    pub zero: Option<Vec<f64>>,
}

/// Gradients of a loss with respect to one [`LearnedQuant`]'s parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantGrad {
    /// ∂L/∂s per group (natural units; ∂L/∂θ = s · ∂L/∂s).
    pub scale: Vec<f64>,
    /// ∂L/∂z per group (asymmetric specs).
    pub zero: Option<Vec<f64>>,
}

impl LearnedQuant {
    /// Starts from calibrated static parameters (exactly: `params()` returns them unchanged).
    pub fn from_static(tensor: &str, q: &TensorQuant, n: usize) -> Result<Self> {
        q.validate(tensor, n)?;
        let Some(p) = &q.params else {
            return Err(BkError::quant(tensor, "dynamic quantization has no scales to learn"));
        };
        Ok(LearnedQuant {
            spec: q.spec,
            log_scale: p.scale.iter().map(|&s| (s as f64).ln()).collect(),
            zero: p.zero.as_ref().map(|z| z.iter().map(|&z| z as f64).collect()),
        })
    }

    pub fn groups(&self) -> usize {
        self.log_scale.len()
    }

    /// The parameters as the real path stores and uses them.
    pub fn params(&self) -> AffineParams {
        AffineParams {
            scale: self.log_scale.iter().map(|&t| (t.exp() as f32).max(f32::MIN_POSITIVE)).collect(),
            zero: self.zero.as_ref().map(|z| z.iter().map(|&z| z.round_ties_even().clamp(i16::MIN as f64, i16::MAX as f64) as i16).collect()),
        }
    }

    pub fn tensor_quant(&self) -> TensorQuant {
        TensorQuant::new_static(self.spec, self.params())
    }

    /// Fake-quantizes a (rows, n) tensor into `out`.
    pub fn forward(&self, x: &[f32], n: usize, out: &mut [f32]) {
        let p = self.params();
        let sp = Spelled::new(&self.spec, &p.scale, p.zero.as_deref(), n);
        let (qmin, qmax) = (self.spec.qmin(), self.spec.qmax());
        out.par_chunks_mut(n * ROWS_PER_JOB).zip(x.par_chunks(n * ROWS_PER_JOB)).for_each(|(o, xs)| {
            for (orow, xrow) in o.chunks_mut(n).zip(xs.chunks(n)) {
                fq_row(qmin, qmax, &sp, xrow, orow);
            }
        });
    }

    /// LSQ backward of [`LearnedQuant::forward`] on the same `x`: given ∂L/∂x̂ (`g_out`), writes
    /// the straight-through ∂L/∂x into `g_in` (when given) and returns the parameter gradients.
    pub fn backward(&self, x: &[f32], n: usize, g_out: &[f32], g_in: Option<&mut [f32]>) -> QuantGrad {
        let p = self.params();
        let sp = Spelled::new(&self.spec, &p.scale, p.zero.as_deref(), n);
        let (qmin, qmax) = (self.spec.qmin() as f32, self.spec.qmax() as f32);
        let job = n * ROWS_PER_JOB;
        // Per-position sums in f32 over one job's rows, then f64 across jobs.
        let work = |(xs, go, gi): (&[f32], &[f32], Option<&mut [f32]>)| {
            let (mut ds, mut dz) = (vec![0f32; n], vec![0f32; n]);
            lsq_rows(qmin, qmax, &sp, xs, go, gi, &mut ds, &mut dz);
            (ds.into_iter().map(f64::from).collect::<Vec<_>>(), dz.into_iter().map(f64::from).collect::<Vec<_>>())
        };
        let add = |mut a: (Vec<f64>, Vec<f64>), b: (Vec<f64>, Vec<f64>)| {
            a.0.iter_mut().zip(&b.0).for_each(|(x, y)| *x += y);
            a.1.iter_mut().zip(&b.1).for_each(|(x, y)| *x += y);
            a
        };
        let zero = || (vec![0f64; n], vec![0f64; n]);
        let (ds, dz) = match g_in {
            Some(gi) => x
                .par_chunks(job)
                .zip(g_out.par_chunks(job))
                .zip(gi.par_chunks_mut(job))
                .map(|((a, b), c)| work((a, b, Some(c))))
                .reduce(zero, add),
            None => x.par_chunks(job).zip(g_out.par_chunks(job)).map(|(a, b)| work((a, b, None))).reduce(zero, add),
        };
        let per_group = |pos: &[f64]| -> Vec<f64> { pos.chunks(self.spec.group_size).map(|c| c.iter().sum()).collect() };
        QuantGrad { scale: per_group(&ds), zero: p.zero.is_some().then(|| per_group(&dz)) }
    }
}
