//! Reproducible workloads: the seed's (v ~ N(0, 1)) and harder potentials for robustness
//! checks. A fixed, documented generator (SplitMix64 + Box–Muller) so that the same seed gives
//! the same numbers on every machine and every version.

use crate::error::{BkError, Result};

/// SplitMix64: tiny, fast, statistically sound for test data, and frozen here.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x5851_f42d_4c95_7f2d)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }
    /// Standard normal (Box–Muller; one value per call for simplicity).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.uniform() * n as f64) as usize % n.max(1)
    }
}

/// Families of potentials.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Potential {
    /// v ~ N(0, σ²): the seed's workload with σ = 1.
    Gaussian { sigma: f64 },
    /// Student-t with `dof` degrees of freedom (heavy tails), scaled by σ.
    StudentT { dof: f64, sigma: f64 },
    /// N(0, 1) background plus `count` Gaussian bumps of height `height` and width 3 positions.
    Bumps { count: usize, height: f64 },
}

impl Potential {
    pub const SEED: Potential = Potential::Gaussian { sigma: 1.0 };

    /// A row-major (rows, n) batch.
    pub fn sample(&self, rng: &mut Rng, rows: usize, n: usize) -> Vec<f32> {
        let mut v = vec![0f32; rows * n];
        for row in v.chunks_mut(n) {
            match *self {
                Potential::Gaussian { sigma } => row.iter_mut().for_each(|x| *x = (sigma * rng.normal()) as f32),
                Potential::StudentT { dof, sigma } => row.iter_mut().for_each(|x| {
                    // t = Z / sqrt(χ²_ν / ν), χ²_ν as a sum of squares for integer ν, else via Gamma ≈ Z²-sum.
                    let k = dof.round().max(1.0) as usize;
                    let chi2: f64 = (0..k).map(|_| rng.normal().powi(2)).sum();
                    *x = (sigma * rng.normal() / (chi2 / k as f64).sqrt()) as f32;
                }),
                Potential::Bumps { count, height } => {
                    row.iter_mut().for_each(|x| *x = rng.normal() as f32);
                    for _ in 0..count {
                        let c = rng.below(n) as f64;
                        for (i, x) in row.iter_mut().enumerate() {
                            let d = (i as f64 - c) / 3.0;
                            *x += (height * (-0.5 * d * d).exp()) as f32;
                        }
                    }
                }
            }
        }
        v
    }
}

impl std::str::FromStr for Potential {
    type Err = BkError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "gaussian" | "seed" => Ok(Potential::SEED),
            "heavy" | "student-t" => Ok(Potential::StudentT { dof: 3.0, sigma: 1.0 }),
            "bumps" => Ok(Potential::Bumps { count: 4, height: 8.0 }),
            _ => Err(BkError::InvalidArgument(format!("unknown potential `{s}` (expected gaussian, heavy or bumps)"))),
        }
    }
}

/// The seed's calibration/test workload: B = 8, N = 512, v ~ N(0, 1), z = i, 100 calibration
/// batches, and a held-out test batch drawn after them.
#[derive(Clone, Debug)]
pub struct SeedWorkload {
    pub rows: usize,
    pub n: usize,
    pub calibration: Vec<Vec<f32>>,
    pub test: Vec<f32>,
}

impl SeedWorkload {
    pub const ROWS: usize = 8;
    pub const N: usize = 512;
    pub const CAL_BATCHES: usize = 100;

    pub fn new(seed: u64) -> Self {
        Self::with(Potential::SEED, Self::ROWS, Self::N, Self::CAL_BATCHES, seed)
    }

    pub fn with(pot: Potential, rows: usize, n: usize, batches: usize, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let calibration = (0..batches).map(|_| pot.sample(&mut rng, rows, n)).collect();
        let test = pot.sample(&mut rng, rows, n);
        SeedWorkload { rows, n, calibration, test }
    }
}
