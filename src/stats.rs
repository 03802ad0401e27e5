//! Error statistics of an approximate G against a reference, over f = (Re G, Im G).

use num_complex::Complex64;
use std::fmt;

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ErrorStats {
    /// Mean |f_q − f_ref| over all real components.
    pub mae: f64,
    /// Mean (f_q − f_ref)².
    pub mse: f64,
    /// 10·log10(Σ f_ref² / Σ (f_q − f_ref)²).
    pub snr_db: f64,
    pub max_abs: f64,
    /// The seed's metric: mean|f_q − f_ref| / mean|f_ref| × 100.
    pub rel_pct: f64,
    /// ‖f_q − f_ref‖₂ / ‖f_ref‖₂.
    pub rel_l2: f64,
    /// Number of real components compared (2 per complex value).
    pub count: usize,
}

impl ErrorStats {
    /// Compares `approx` with `reference` element by element. Non-finite differences make
    /// every statistic NaN (never silently good).
    pub fn compare(approx: &[Complex64], reference: &[Complex64]) -> ErrorStats {
        assert_eq!(approx.len(), reference.len(), "ErrorStats::compare: length mismatch");
        Self::over(approx.iter().zip(reference).flat_map(|(a, r)| [(a.re, r.re), (a.im, r.im)]))
    }

    /// Compares real tensors element by element (`count` = number of values).
    pub fn compare_real(approx: &[f64], reference: &[f64]) -> ErrorStats {
        assert_eq!(approx.len(), reference.len(), "ErrorStats::compare_real: length mismatch");
        Self::over(approx.iter().copied().zip(reference.iter().copied()))
    }

    /// The statistics over (approximate, reference) pairs of real values.
    fn over(pairs: impl Iterator<Item = (f64, f64)>) -> ErrorStats {
        let (mut sad, mut sa, mut sse, mut ss, mut max) = (0f64, 0f64, 0f64, 0f64, 0f64);
        let mut count = 0;
        for (x, y) in pairs {
            let d = x - y;
            sad += d.abs();
            sa += y.abs();
            sse += d * d;
            ss += y * y;
            max = if d.abs() > max || d.is_nan() { d.abs() } else { max };
            count += 1;
        }
        let c = count.max(1) as f64;
        ErrorStats {
            mae: sad / c,
            mse: sse / c,
            snr_db: 10.0 * (ss / sse).log10(),
            max_abs: max,
            rel_pct: 100.0 * sad / sa,
            rel_l2: (sse / ss).sqrt(),
            count,
        }
    }

    pub fn compare_c32(approx: &[num_complex::Complex32], reference: &[Complex64]) -> ErrorStats {
        let wide: Vec<Complex64> = approx.iter().map(|c| Complex64::new(c.re as f64, c.im as f64)).collect();
        Self::compare(&wide, reference)
    }
}

impl fmt::Display for ErrorStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rel {:.4}%  rel-L2 {:.3e}  MAE {:.3e}  MSE {:.3e}  SNR {:.1} dB  max {:.3e}",
            self.rel_pct, self.rel_l2, self.mae, self.mse, self.snr_db, self.max_abs
        )
    }
}

/// Relative L2 distance ‖a − b‖ / ‖b‖ of two complex arrays.
pub fn rel_l2(a: &[Complex64], b: &[Complex64]) -> f64 {
    ErrorStats::compare(a, b).rel_l2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_metric_is_mean_abs_over_mean_abs() {
        let r = [Complex64::new(1.0, 2.0), Complex64::new(-1.0, 4.0)];
        let a = [Complex64::new(1.1, 2.0), Complex64::new(-1.0, 3.9)];
        let s = ErrorStats::compare(&a, &r);
        assert!((s.rel_pct - 100.0 * 0.2 / 8.0).abs() < 1e-12);
        assert!((s.max_abs - 0.1).abs() < 1e-12);
        assert_eq!(s.count, 4);
    }

    #[test]
    fn real_comparison_matches_the_complex_one_on_real_data() {
        let r = [1.0, -2.0, 4.0];
        let a = [1.5, -2.0, 3.0];
        let s = ErrorStats::compare_real(&a, &r);
        let c = ErrorStats::compare(
            &a.map(|x| Complex64::new(x, 0.0)),
            &r.map(|x| Complex64::new(x, 0.0)),
        );
        assert!((s.rel_pct - 100.0 * 1.5 / 7.0).abs() < 1e-12);
        assert!((s.rel_pct - c.rel_pct).abs() < 1e-12 && (s.rel_l2 - c.rel_l2).abs() < 1e-12);
        assert_eq!(s.count, 3);
    }

    #[test]
    fn nan_is_never_good() {
        let r = [Complex64::new(1.0, 1.0)];
        let a = [Complex64::new(f64::NAN, 1.0)];
        let s = ErrorStats::compare(&a, &r);
        assert!(s.rel_l2.is_nan() && s.max_abs.is_nan());
    }
}
