//! Entropy (KL) calibration, after TensorRT's: the clip range whose quantized distribution
//! loses the least information, KL(P ‖ Q), where P is the observed distribution with the
//! clipped tails folded into the edge bins and Q is P spread evenly over each code's bins.
//!
//! Symmetric specs search a threshold t on |x|; asymmetric ones search both ends in turn, and
//! keep the median inside the window (with heavy tails, a window out in one tail can score a
//! small divergence once nearly all the mass is folded onto its edge). Works on a dense
//! re-binning of the unit's histogram (bin centres) into 1024 bins: a clip window keeps at
//! least one bin per code, so INT8 ranges can shrink to a quarter, INT4 ones to 1/64.

use super::super::observer::Histogram;
use super::super::{AffineParams, QuantSpec};

/// Resolution of the dense re-binning.
const BINS: usize = 1024;
/// Candidate clip positions per search direction.
const STEPS: usize = 32;
/// Probability floor for Q where P has mass: TensorRT-style smoothing, so that a candidate
/// whose Q misses a P bin is penalised, not infinitely.
const Q_FLOOR: f64 = 1e-8;

pub(crate) fn kl(spec: &QuantSpec, h: &Histogram) -> (f32, i16) {
    let (lo, hi) = (h.min(), h.max());
    // Histograms only ever hold finite values (calibration batches are checked).
    if h.total() == 0.0 || hi <= lo {
        return AffineParams::from_range(spec, lo as f32, hi as f32);
    }
    let levels = spec.levels() as usize + 1;
    let bins = BINS.max(levels);
    if spec.symmetric {
        let amax = lo.abs().max(hi.abs());
        let counts = rebin(h, bins, 0.0, amax, true);
        // Codes on one side of zero: the |x| distribution has qmax + 1 levels.
        let half = spec.qmax() as usize + 1;
        let best = thresholds(half, bins)
            .map(|b| (divergence(&counts, 0, b, half), b))
            .min_by(|x, y| x.0.total_cmp(&y.0))
            .map_or(bins, |(_, b)| b);
        let t = (amax * best as f64 / bins as f64) as f32;
        AffineParams::from_range(spec, -t, t)
    } else {
        let counts = rebin(h, bins, lo, hi, false);
        let median = ((h.quantile(0.5) - lo) / (hi - lo) * bins as f64).floor().clamp(0.0, (bins - 1) as f64) as usize;
        let (mut a, mut b) = (0usize, bins);
        let mut best = divergence(&counts, a, b, levels);
        for _round in 0..2 {
            for side in 0..2 {
                for j in 1..STEPS {
                    let shift = j * (bins / 2) / STEPS;
                    let (ca, cb) = if side == 0 { (shift, b) } else { (a, bins - shift) };
                    if cb <= ca || cb - ca < levels || ca > median || cb <= median {
                        continue;
                    }
                    let d = divergence(&counts, ca, cb, levels);
                    if d < best {
                        (best, a, b) = (d, ca, cb);
                    }
                }
            }
        }
        let w = (hi - lo) / bins as f64;
        AffineParams::from_range(spec, (lo + a as f64 * w) as f32, (lo + b as f64 * w) as f32)
    }
}

/// Candidate upper bin edges for a one-sided search: from `levels` bins (one per code) to all.
fn thresholds(levels: usize, bins: usize) -> impl Iterator<Item = usize> {
    let step = (bins.saturating_sub(levels) / STEPS).max(1);
    (levels.min(bins)..=bins).step_by(step).chain(std::iter::once(bins))
}

/// Dense counts over [lo, hi] (of |x| when `fold` is set) from the histogram's bin centres.
fn rebin(h: &Histogram, bins: usize, lo: f64, hi: f64, fold: bool) -> Vec<f64> {
    let mut out = vec![0.0; bins];
    let w = (hi - lo) / bins as f64;
    for (x, c) in h.bins() {
        let x = if fold { x.abs() } else { x };
        let j = ((x - lo) / w).floor().max(0.0) as usize;
        out[j.min(bins - 1)] += c;
    }
    out
}

/// KL(P ‖ Q) for the clip window [a, b) of `counts` quantized to `levels` codes.
fn divergence(counts: &[f64], a: usize, b: usize, levels: usize) -> f64 {
    let m = b - a;
    let mut p = counts[a..b].to_vec();
    p[0] += counts[..a].iter().sum::<f64>();
    p[m - 1] += counts[b..].iter().sum::<f64>();
    let total: f64 = p.iter().sum();
    if total == 0.0 {
        return f64::INFINITY;
    }
    // Q: each code's share of the unfolded counts, spread over the bins where there was mass.
    let mut q = vec![0.0; m];
    for k in 0..levels {
        let (s, e) = (k * m / levels, ((k + 1) * m / levels).max(k * m / levels + 1).min(m));
        let window = &counts[a + s..a + e];
        let mass: f64 = window.iter().sum();
        let nonzero = window.iter().filter(|&&c| c > 0.0).count();
        if nonzero > 0 {
            for (qq, &c) in q[s..e].iter_mut().zip(window) {
                if c > 0.0 {
                    *qq = mass / nonzero as f64;
                }
            }
        }
    }
    let qtotal: f64 = q.iter().sum::<f64>().max(f64::MIN_POSITIVE);
    p.iter()
        .zip(&q)
        .filter(|(&pp, _)| pp > 0.0)
        .map(|(&pp, &qq)| {
            let (pp, qq) = (pp / total, (qq / qtotal).max(Q_FLOOR));
            pp * (pp / qq).ln()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_distributions_have_zero_divergence() {
        // One count per bin, one bin per code: Q reproduces P exactly.
        let counts = vec![1.0; 16];
        assert!(divergence(&counts, 0, 16, 16).abs() < 1e-12);
    }

    #[test]
    fn folding_tails_costs_divergence() {
        let counts: Vec<f64> = (0..64).map(|i| if i < 60 { 10.0 } else { 1.0 }).collect();
        let full = divergence(&counts, 0, 64, 16);
        let clipped = divergence(&counts, 0, 32, 16);
        assert!(clipped > full, "{clipped} {full}");
    }
}
