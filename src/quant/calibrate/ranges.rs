//! Per-unit parameters from one histogram: the methods that need nothing but the observed
//! distribution of a unit (absmax, percentile, mse, minmax; kl lives in [`super::kl`]).

use super::super::observer::Histogram;
use super::super::{AffineParams, Bits, QuantSpec};
use super::kernels;

/// The seed's rule: symmetric, scale = absmax / 127 (INT8) or absmax / (7 − 0.5) (INT4).
pub(crate) fn absmax(spec: &QuantSpec, h: &Histogram) -> (f32, i16) {
    let (lo, hi) = (h.min() as f32, h.max() as f32);
    let amax = lo.abs().max(hi.abs());
    let div = match spec.bits {
        Bits::Int8 => spec.qmax() as f32,
        Bits::Int4 => spec.qmax() as f32 - 0.5,
    };
    let (s, _) = AffineParams::from_range(spec, -amax, amax);
    // from_range divides by qmax; rescale to the seed's divisor.
    (s * spec.qmax() as f32 / div, 0)
}

/// The observed range, exactly (with a zero point unless the spec is symmetric).
pub(crate) fn minmax(spec: &QuantSpec, h: &Histogram) -> (f32, i16) {
    AffineParams::from_range(spec, h.min() as f32, h.max() as f32)
}

pub(crate) fn percentile(spec: &QuantSpec, h: &Histogram, p: f64) -> (f32, i16) {
    let q = p / 100.0;
    AffineParams::from_range(spec, h.quantile(1.0 - q) as f32, h.quantile(q) as f32)
}

/// Expected squared quantization error over the histogram (values at bin centres).
pub fn histogram_mse(bins: &[(f32, f64)], spec: &QuantSpec, scale: f32, zero: i16) -> f64 {
    kernels::weighted_sq(bins, scale, zero as i32, spec.qmin(), spec.qmax())
}

/// Clip search minimising the histogram's quantization MSE: symmetric specs shrink max|x|;
/// asymmetric ones shrink each end in turn.
pub(crate) fn mse(spec: &QuantSpec, h: &Histogram) -> (f32, i16) {
    let bins: Vec<(f32, f64)> = h.bins().map(|(x, c)| (x as f32, c)).collect();
    let (lo0, hi0) = (h.min() as f32, h.max() as f32);
    let eval = |lo: f32, hi: f32| {
        let (s, z) = AffineParams::from_range(spec, lo, hi);
        (histogram_mse(&bins, spec, s, z), s, z)
    };
    const STEPS: usize = 96;
    if spec.symmetric {
        let amax = lo0.abs().max(hi0.abs());
        let mut best = eval(-amax, amax);
        for j in 1..STEPS {
            let c = amax * (1.0 - 0.95 * j as f32 / STEPS as f32);
            let cand = eval(-c, c);
            if cand.0 < best.0 {
                best = cand;
            }
        }
        (best.1, best.2)
    } else {
        let span = hi0 - lo0;
        let (mut a, mut b) = (0f32, 0f32);
        let mut best = eval(lo0, hi0);
        for _round in 0..3 {
            for side in 0..2 {
                for j in 0..STEPS {
                    let f = 0.45 * j as f32 / STEPS as f32;
                    let (ta, tb) = if side == 0 { (f, b) } else { (a, f) };
                    let cand = eval(lo0 + ta * span, hi0 - tb * span);
                    if cand.0 < best.0 {
                        best = cand;
                        (a, b) = (ta, tb);
                    }
                }
            }
        }
        (best.1, best.2)
    }
}
