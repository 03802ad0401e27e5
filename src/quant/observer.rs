//! Streaming observers for calibration: memory O(units × bins), independent of the number of
//! samples seen. A unit is what shares one (scale, zero): a position (per-channel) or a group.

use rayon::prelude::*;

/// Histogram bins per unit, reduced for very wide tensors so that one observer stays under
/// about 256 MiB.
const MAX_BINS: usize = 2048;
const MIN_BINS: usize = 256;
const BUDGET_BYTES: usize = 256 << 20;

/// A histogram over [lo, lo + width · bins) that grows by exact pair merges: every count stays in
/// the bin that holds its value, so no re-binning approximation accumulates.
#[derive(Clone, Debug)]
pub struct Histogram {
    lo: f64,
    width: f64,
    counts: Vec<f64>,
    min: f64,
    max: f64,
    total: f64,
}

impl Histogram {
    fn new(bins: usize) -> Self {
        Histogram { lo: 0.0, width: 0.0, counts: vec![0.0; bins], min: f64::INFINITY, max: f64::NEG_INFINITY, total: 0.0 }
    }

    fn hi(&self) -> f64 {
        self.lo + self.width * self.counts.len() as f64
    }

    /// Makes [lo, hi] fit, doubling the bin width as often as needed.
    fn cover(&mut self, lo: f64, hi: f64) {
        let bins = self.counts.len();
        if self.width == 0.0 {
            let span = (hi - lo).max(lo.abs().max(hi.abs()) * 1e-6).max(1e-30);
            self.lo = lo;
            self.width = span * (1.0 + 1e-9) / bins as f64;
            return;
        }
        while lo < self.lo || hi >= self.hi() {
            let span = self.width * bins as f64;
            let grow_left = lo < self.lo;
            let mut merged = vec![0.0; bins];
            let offset = if grow_left { bins / 2 } else { 0 };
            for j in 0..bins / 2 {
                merged[offset + j] = self.counts[2 * j] + self.counts[2 * j + 1];
            }
            self.counts = merged;
            if grow_left {
                self.lo -= span;
            }
            self.width *= 2.0;
        }
    }

    fn add_batch(&mut self, xs: impl Iterator<Item = f32> + Clone) {
        let (lo, hi) = xs.clone().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
            (a.min(x as f64), b.max(x as f64))
        });
        if !(lo <= hi) {
            return;
        }
        self.cover(lo, hi);
        self.min = self.min.min(lo);
        self.max = self.max.max(hi);
        let last = self.counts.len() - 1;
        for x in xs {
            let j = ((x as f64 - self.lo) / self.width) as usize;
            self.counts[j.min(last)] += 1.0;
            self.total += 1.0;
        }
    }

    pub fn min(&self) -> f64 {
        self.min
    }
    pub fn max(&self) -> f64 {
        self.max
    }
    pub fn total(&self) -> f64 {
        self.total
    }

    /// (bin centre, count) for every non-empty bin.
    pub fn bins(&self) -> impl Iterator<Item = (f64, f64)> + '_ {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0.0)
            .map(move |(j, &c)| (self.lo + (j as f64 + 0.5) * self.width, c))
    }

    /// The value below which a fraction `p` of the samples lie (linear within a bin).
    pub fn quantile(&self, p: f64) -> f64 {
        if self.total == 0.0 {
            return 0.0;
        }
        let target = p.clamp(0.0, 1.0) * self.total;
        let mut acc = 0.0;
        for (j, &c) in self.counts.iter().enumerate() {
            if acc + c >= target && c > 0.0 {
                let frac = (target - acc) / c;
                let x = self.lo + (j as f64 + frac) * self.width;
                return x.clamp(self.min, self.max);
            }
            acc += c;
        }
        self.max
    }
}

/// Observes one real (rows, n) tensor, unit = `group_size` consecutive positions.
#[derive(Clone, Debug)]
pub struct Observer {
    n: usize,
    group_size: usize,
    units: Vec<Histogram>,
    rows_seen: usize,
}

impl Observer {
    pub fn new(n: usize, group_size: usize) -> Self {
        let groups = n.div_ceil(group_size.max(1));
        let bins = (BUDGET_BYTES / (8 * groups.max(1))).clamp(MIN_BINS, MAX_BINS).next_power_of_two();
        let bins = if bins > MAX_BINS { MAX_BINS } else { bins };
        Observer { n, group_size: group_size.max(1), units: vec![Histogram::new(bins); groups], rows_seen: 0 }
    }

    /// Feeds a row-major (rows, n) batch.
    pub fn observe(&mut self, x: &[f32]) {
        let (n, g) = (self.n, self.group_size);
        debug_assert_eq!(x.len() % n, 0);
        self.rows_seen += x.len() / n;
        self.units.par_iter_mut().enumerate().for_each(|(j, h)| {
            let (start, end) = (j * g, ((j + 1) * g).min(n));
            let it = x.chunks_exact(n).flat_map(move |row| row[start..end].iter().copied());
            h.add_batch(it);
        });
    }

    pub fn units(&self) -> &[Histogram] {
        &self.units
    }
    pub fn group_size(&self) -> usize {
        self.group_size
    }
    pub fn rows_seen(&self) -> usize {
        self.rows_seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_keeps_every_count_and_extremes() {
        let mut h = Histogram::new(64);
        h.add_batch([0.0f32, 0.5, 1.0].into_iter());
        h.add_batch([-10.0f32, 3.0].into_iter());
        h.add_batch([100.0f32].into_iter());
        assert_eq!(h.total(), 6.0);
        assert_eq!(h.counts.iter().sum::<f64>(), 6.0);
        assert_eq!((h.min(), h.max()), (-10.0, 100.0));
        assert!(h.lo <= -10.0 && h.hi() > 100.0);
    }

    #[test]
    fn quantiles_of_a_uniform_ramp() {
        let mut h = Histogram::new(2048);
        let xs: Vec<f32> = (0..=10000).map(|i| i as f32 / 10000.0).collect();
        h.add_batch(xs.iter().copied());
        assert!((h.quantile(0.5) - 0.5).abs() < 2e-3);
        assert!((h.quantile(0.99) - 0.99).abs() < 2e-3);
        assert_eq!(h.quantile(1.0), 1.0);
    }

    #[test]
    fn observer_units_follow_groups() {
        let mut o = Observer::new(5, 2);
        o.observe(&[1.0, 2.0, 3.0, 4.0, 5.0, -1.0, -2.0, -3.0, -4.0, -5.0]);
        let u = o.units();
        assert_eq!(u.len(), 3);
        assert_eq!((u[0].min(), u[0].max()), (-2.0, 2.0));
        assert_eq!((u[2].min(), u[2].max()), (-5.0, 5.0));
        assert_eq!(o.rows_seen(), 2);
    }
}
