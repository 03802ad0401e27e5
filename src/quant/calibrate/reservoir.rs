//! A bounded, reproducible uniform sample of calibration rows (reservoir sampling, Algorithm R),
//! for the methods that must re-run the recursion at the end of calibration.

use crate::workload::Rng;

/// Budget of the reservoir in f32 values (8 MiB): 4096 rows at N = 512, 16 rows at N = 131072.
pub const RESERVOIR_VALUES: usize = 1 << 21;
/// Never fewer rows than this, whatever N (memory is then 16 · N · 4 bytes).
pub const RESERVOIR_MIN_ROWS: usize = 16;
/// Never more rows than this: the output search costs a few hundred solves of the reservoir.
pub const RESERVOIR_MAX_ROWS: usize = 4096;

/// Rows of length `n` the default reservoir keeps.
pub fn default_rows(n: usize) -> usize {
    (RESERVOIR_VALUES / n.max(1)).clamp(RESERVOIR_MIN_ROWS, RESERVOIR_MAX_ROWS)
}

#[derive(Clone, Debug)]
pub(crate) struct Reservoir {
    n: usize,
    cap: usize,
    rows: Vec<f32>,
    seen: u64,
    rng: Rng,
}

impl Reservoir {
    pub fn new(n: usize, cap_rows: usize) -> Self {
        // A fixed seed: the same calibration data always gives the same plan.
        Reservoir { n, cap: cap_rows.max(1), rows: Vec::new(), seen: 0, rng: Rng::new(0x5eed_ca1b) }
    }

    /// Offers every row of a row-major batch; each row seen so far is kept with equal
    /// probability cap / seen.
    pub fn push(&mut self, batch: &[f32]) {
        for row in batch.chunks_exact(self.n) {
            self.seen += 1;
            let held = self.rows.len() / self.n;
            if held < self.cap {
                self.rows.extend_from_slice(row);
            } else {
                let j = (self.rng.uniform() * self.seen as f64) as usize;
                if j < self.cap {
                    self.rows[j * self.n..(j + 1) * self.n].copy_from_slice(row);
                }
            }
        }
    }

    /// The kept rows, row-major.
    pub fn rows(&self) -> &[f32] {
        &self.rows
    }
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.rows.len() / self.n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_at_most_cap_rows_and_every_row_is_a_seen_row() {
        let n = 3;
        let mut r = Reservoir::new(n, 5);
        let batch: Vec<f32> = (0..40 * n).map(|i| (i / n) as f32).collect();
        r.push(&batch[..7 * n]);
        r.push(&batch[7 * n..]);
        assert_eq!(r.len(), 5);
        for row in r.rows().chunks(n) {
            assert!(row.iter().all(|&x| x == row[0]) && (0.0..40.0).contains(&row[0]));
        }
        // Later rows must be able to displace early ones.
        assert!(r.rows().chunks(n).any(|row| row[0] >= 5.0));
    }

    #[test]
    fn budget_bounds_rows() {
        assert_eq!(default_rows(512), RESERVOIR_MAX_ROWS);
        assert_eq!(default_rows(1 << 20), RESERVOIR_MIN_ROWS);
        assert_eq!(default_rows(4096), 512);
    }
}
