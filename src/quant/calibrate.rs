//! Calibration: streaming observers over batches of v and of the G they produce, then per-unit
//! scales by a method. The flow mirrors the seed's: `start`, `collect` per batch, `end`.

use super::observer::{Histogram, Observer};
use super::{codec, AffineParams, Bits, ComplexQuant, QuantSpec, TensorQuant};
use crate::backend::{Backend, GFormat, SolveOptions, VInput};
use crate::error::{BkError, Result};
use crate::plan::QuantPlan;
use crate::problem::Problem;
use rayon::prelude::*;
use std::fmt;

/// How scales are chosen from what the observers saw.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Method {
    /// The seed's rule: symmetric, scale = absmax / 127 (INT8) or absmax / (7 − 0.5) (INT4).
    Absmax,
    /// Clip at a percentile of the observed values (both tails), e.g. 99.99.
    Percentile(f64),
    /// Clip range that minimises the expected quantization MSE of the observed distribution.
    Mse,
}

impl Method {
    pub const DEFAULT_PERCENTILE: f64 = 99.99;
    /// The method used when none is named: the best static method on the seed's workload.
    pub const DEFAULT: Method = Method::Mse;

    /// The spec this method actually produces for a requested one: absmax is symmetric.
    pub fn adjust(&self, spec: QuantSpec) -> QuantSpec {
        match self {
            Method::Absmax => QuantSpec { symmetric: true, ..spec },
            _ => spec,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Method::Absmax => f.write_str("absmax"),
            Method::Percentile(p) => write!(f, "percentile:{p}"),
            Method::Mse => f.write_str("mse"),
        }
    }
}

impl std::str::FromStr for Method {
    type Err = BkError;
    fn from_str(s: &str) -> Result<Self> {
        let (name, arg) = s.split_once(':').map_or((s, None), |(a, b)| (a, Some(b)));
        match (name, arg) {
            ("absmax", None) => Ok(Method::Absmax),
            ("mse", None) => Ok(Method::Mse),
            ("percentile", None) => Ok(Method::Percentile(Self::DEFAULT_PERCENTILE)),
            ("percentile", Some(p)) => match p.parse::<f64>() {
                Ok(p) if p > 50.0 && p <= 100.0 => Ok(Method::Percentile(p)),
                _ => Err(BkError::InvalidArgument(format!("percentile `{p}` must be a number in (50, 100]"))),
            },
            _ => Err(BkError::InvalidArgument(format!(
                "unknown calibration method `{s}` (expected absmax, percentile[:P] or mse)"
            ))),
        }
    }
}

/// (scale, zero) for one unit from its histogram.
pub fn unit_params(method: Method, spec: &QuantSpec, h: &Histogram) -> (f32, i16) {
    let (lo, hi) = (h.min() as f32, h.max() as f32);
    match method {
        Method::Absmax => {
            let amax = lo.abs().max(hi.abs());
            let div = match spec.bits {
                Bits::Int8 => spec.qmax() as f32,
                Bits::Int4 => spec.qmax() as f32 - 0.5,
            };
            let (s, _) = AffineParams::from_range(spec, -amax, amax);
            // from_range divides by qmax; rescale to the seed's divisor.
            (s * spec.qmax() as f32 / div, 0)
        }
        Method::Percentile(p) => {
            let q = p / 100.0;
            AffineParams::from_range(spec, h.quantile(1.0 - q) as f32, h.quantile(q) as f32)
        }
        Method::Mse => mse_params(spec, h),
    }
}

/// Expected squared quantization error over the histogram (values at bin centres).
pub fn histogram_mse(bins: &[(f32, f64)], spec: &QuantSpec, scale: f32, zero: i16) -> f64 {
    let (qmin, qmax, z) = (spec.qmin(), spec.qmax(), zero as i32);
    bins.iter()
        .map(|&(x, c)| {
            let e = (codec::dequantize(codec::quantize(x, scale, z, qmin, qmax), scale, z) - x) as f64;
            c * e * e
        })
        .sum()
}

/// Clip search: symmetric specs shrink max|x|; asymmetric ones shrink each end in turn.
fn mse_params(spec: &QuantSpec, h: &Histogram) -> (f32, i16) {
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

/// Parameters of every unit an observer saw.
pub fn params_from_observer(method: Method, spec: &QuantSpec, obs: &Observer) -> AffineParams {
    let pz: Vec<(f32, i16)> = obs.units().par_iter().map(|h| unit_params(method, spec, h)).collect();
    AffineParams {
        scale: pz.iter().map(|p| p.0).collect(),
        zero: (!spec.symmetric).then(|| pz.iter().map(|p| p.1).collect()),
    }
}

/// What to calibrate: formats for v and G (`None` keeps a tensor in floating point).
#[derive(Clone, Debug, PartialEq)]
pub struct CalibrationConfig {
    pub v: Option<QuantSpec>,
    pub g: Option<QuantSpec>,
    pub method: Method,
}

impl CalibrationConfig {
    /// The seed's modes: v and G both in `bits`, INT4 in groups of `group_size`.
    pub fn both(bits: Bits, group_size: usize, method: Method) -> Self {
        CalibrationConfig { v: Some(QuantSpec::for_v(bits, group_size)), g: Some(QuantSpec::for_g(bits, group_size)), method }
    }
}

/// The result of calibration: a plan plus where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Calibration {
    pub plan: QuantPlan,
    pub method: String,
    /// Calibration rows seen.
    pub samples: usize,
}

/// Streaming calibrator. Memory is O(N) observers regardless of how many batches are fed.
pub struct Calibrator {
    problem: Problem,
    cfg: CalibrationConfig,
    v: Option<Observer>,
    g_re: Option<Observer>,
    g_im: Option<Observer>,
    rows: usize,
}

impl Calibrator {
    pub fn new(problem: Problem, cfg: CalibrationConfig) -> Result<Self> {
        for (name, spec) in [("v", &cfg.v), ("g", &cfg.g)] {
            if let Some(s) = spec {
                s.validate(name)?;
            }
        }
        let mut c = Calibrator { problem, cfg, v: None, g_re: None, g_im: None, rows: 0 };
        c.start();
        Ok(c)
    }

    /// Forgets everything observed so far.
    pub fn start(&mut self) {
        let n = self.problem.n();
        let obs = |s: &Option<QuantSpec>| s.filter(|s| !s.dynamic).map(|s| Observer::new(n, s.group_size));
        self.v = obs(&self.cfg.v);
        self.g_re = obs(&self.cfg.g);
        self.g_im = obs(&self.cfg.g);
        self.rows = 0;
    }

    /// Observes one (rows, N) batch of potentials and the G it produces (solved in f32 on
    /// `backend`, from the unquantized v).
    pub fn collect(&mut self, backend: &dyn Backend, v: &[f32]) -> Result<()> {
        let rows = self.problem.rows_of("calibration batch", v.len())?;
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            let n = self.problem.n();
            return Err(BkError::NonFinite { tensor: "calibration batch".into(), row: i / n, pos: i % n, value: v[i] as f64 });
        }
        if let Some(o) = &mut self.v {
            o.observe(v);
        }
        if self.g_re.is_some() {
            let solved = backend.solve(&self.problem, VInput::F32(v), &GFormat::C64, &SolveOptions::default())?;
            let g = solved.g.to_c64();
            let re: Vec<f32> = g.iter().map(|c| c.re).collect();
            let im: Vec<f32> = g.iter().map(|c| c.im).collect();
            if let (Some(a), Some(b)) = (&mut self.g_re, &mut self.g_im) {
                a.observe(&re);
                b.observe(&im);
            }
        }
        self.rows += rows;
        Ok(())
    }

    /// Turns the observations into a plan.
    pub fn end(&self) -> Result<Calibration> {
        let needs_data = self.v.is_some() || self.g_re.is_some();
        if needs_data && self.rows == 0 {
            return Err(BkError::Calibration("no calibration batches were collected".into()));
        }
        let m = self.cfg.method;
        let tensor = |spec: &Option<QuantSpec>, obs: &Option<Observer>| -> Option<TensorQuant> {
            let spec = m.adjust((*spec)?);
            Some(match obs {
                Some(o) => TensorQuant::new_static(spec, params_from_observer(m, &spec, o)),
                None => TensorQuant::dynamic(spec),
            })
        };
        let plan = QuantPlan {
            v: tensor(&self.cfg.v, &self.v),
            g: match (tensor(&self.cfg.g, &self.g_re), tensor(&self.cfg.g, &self.g_im)) {
                (Some(re), Some(im)) => Some(ComplexQuant { re, im }),
                _ => None,
            },
        };
        plan.validate(self.problem.n())?;
        Ok(Calibration { plan, method: m.to_string(), samples: self.rows })
    }

    pub fn rows_seen(&self) -> usize {
        self.rows
    }
    pub fn problem(&self) -> &Problem {
        &self.problem
    }
}
