//! Calibration: streaming observers over batches of v and of the G they produce, then
//! parameters by a method. The flow mirrors the seed's: `start`, `collect` per batch, `end`.
//!
//! Methods and what they need:
//! - from each unit's histogram alone: `absmax` (the seed's), `percentile[:P]`, `mse`,
//!   `minmax` (asymmetric, exact observed range) and `kl` (entropy calibration);
//! - `output`: re-runs the recursion at `end` on a bounded reservoir of calibration rows and
//!   chooses the parameters for the error of G itself ([`output`]);
//! - `dynamic`: no calibrated parameters at all; each row's groups get theirs at run time.

mod kernels;
mod kl;
mod output;
mod ranges;
mod reservoir;

pub use ranges::histogram_mse;
pub use reservoir::{default_rows as default_reservoir_rows, RESERVOIR_MAX_ROWS, RESERVOIR_MIN_ROWS, RESERVOIR_VALUES};

use super::observer::{Histogram, Observer};
use super::{AffineParams, Bits, ComplexQuant, QuantSpec, TensorQuant};
use crate::backend::{Backend, CpuBackend, GFormat, SolveOptions, VInput};
use crate::error::{BkError, Result};
use crate::plan::QuantPlan;
use crate::problem::Problem;
use rayon::prelude::*;
use reservoir::Reservoir;
use std::fmt;

/// How parameters are chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Method {
    /// The seed's rule: symmetric, scale = absmax / 127 (INT8) or absmax / (7 − 0.5) (INT4).
    Absmax,
    /// Clip at a percentile of the observed values (both tails), e.g. 99.99.
    Percentile(f64),
    /// Clip range that minimises the expected quantization MSE of the observed distribution.
    Mse,
    /// The exact observed range with a zero point (asymmetric whatever the requested spec).
    Minmax,
    /// Entropy calibration: the clip range minimising KL(observed ‖ quantized).
    Kl,
    /// Output-aware: input and output ranges that minimise the error of G on a reservoir of
    /// calibration rows, searched through the recursion (asymmetric).
    Output,
    /// No static parameters: per row and group of positions, from the group's min and max at
    /// run time (asymmetric).
    Dynamic,
}

impl Method {
    pub const DEFAULT_PERCENTILE: f64 = 99.99;
    /// The method used when none is named: the best static method on the seed's workload and
    /// never worse than `absmax` on the robustness workloads (see the calibration tests).
    pub const DEFAULT: Method = Method::Output;
    /// Every static method, in the order tables list them.
    pub const STATIC: [Method; 6] =
        [Method::Absmax, Method::Percentile(Self::DEFAULT_PERCENTILE), Method::Mse, Method::Minmax, Method::Kl, Method::Output];
    /// Positions per group of dynamic quantization when the caller names none.
    pub const DYNAMIC_GROUP: usize = 32;

    /// The spec this method actually produces for a requested one: absmax is symmetric;
    /// minmax and output are asymmetric (a zero point per unit costs 2 bytes per model for
    /// static parameters, and lets a lopsided unit, e.g. one with large positive bumps, use
    /// all its codes); dynamic is dynamic and asymmetric.
    pub fn adjust(&self, spec: QuantSpec) -> QuantSpec {
        match self {
            Method::Absmax => QuantSpec { symmetric: true, dynamic: false, ..spec },
            Method::Minmax | Method::Output => QuantSpec { symmetric: false, dynamic: false, ..spec },
            Method::Dynamic => QuantSpec { symmetric: false, dynamic: true, ..spec },
            _ => QuantSpec { dynamic: false, ..spec },
        }
    }

    pub fn is_dynamic(&self) -> bool {
        matches!(self, Method::Dynamic)
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Method::Absmax => f.write_str("absmax"),
            Method::Percentile(p) => write!(f, "percentile:{p}"),
            Method::Mse => f.write_str("mse"),
            Method::Minmax => f.write_str("minmax"),
            Method::Kl => f.write_str("kl"),
            Method::Output => f.write_str("output"),
            Method::Dynamic => f.write_str("dynamic"),
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
            ("minmax", None) => Ok(Method::Minmax),
            ("kl", None) => Ok(Method::Kl),
            ("output", None) => Ok(Method::Output),
            ("dynamic", None) => Ok(Method::Dynamic),
            ("percentile", None) => Ok(Method::Percentile(Self::DEFAULT_PERCENTILE)),
            ("percentile", Some(p)) => match p.parse::<f64>() {
                Ok(p) if p > 50.0 && p <= 100.0 => Ok(Method::Percentile(p)),
                _ => Err(BkError::InvalidArgument(format!("percentile `{p}` must be a number in (50, 100]"))),
            },
            _ => Err(BkError::InvalidArgument(format!(
                "unknown calibration method `{s}` (expected absmax, percentile[:P], mse, minmax, kl, output or dynamic)"
            ))),
        }
    }
}

/// (scale, zero) for one unit from its histogram. `output` starts from (and falls back to)
/// `mse`; `dynamic` has no static parameters and gets the observed range.
pub fn unit_params(method: Method, spec: &QuantSpec, h: &Histogram) -> (f32, i16) {
    match method {
        Method::Absmax => ranges::absmax(spec, h),
        Method::Percentile(p) => ranges::percentile(spec, h, p),
        Method::Mse | Method::Output => ranges::mse(spec, h),
        Method::Minmax | Method::Dynamic => ranges::minmax(spec, h),
        Method::Kl => kl::kl(spec, h),
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

/// Streaming calibrator. Memory is O(N) observers plus, for `output`, a reservoir of at most
/// [`default_reservoir_rows`] rows (8 MiB of f32 values; see [`Calibrator::with_reservoir_rows`]),
/// regardless of how many batches are fed.
pub struct Calibrator {
    problem: Problem,
    cfg: CalibrationConfig,
    v: Option<Observer>,
    g_re: Option<Observer>,
    g_im: Option<Observer>,
    reservoir: Option<Reservoir>,
    reservoir_rows: usize,
    rows: usize,
}

impl Calibrator {
    pub fn new(problem: Problem, cfg: CalibrationConfig) -> Result<Self> {
        for (name, spec) in [("v", &cfg.v), ("g", &cfg.g)] {
            if let Some(s) = spec {
                s.validate(name)?;
            }
        }
        let reservoir_rows = reservoir::default_rows(problem.n());
        let mut c = Calibrator { problem, cfg, v: None, g_re: None, g_im: None, reservoir: None, reservoir_rows, rows: 0 };
        c.start();
        Ok(c)
    }

    /// Caps the rows `output` keeps for its search (fewer: faster and less memory, noisier).
    pub fn with_reservoir_rows(mut self, rows: usize) -> Result<Self> {
        if rows == 0 {
            return Err(BkError::InvalidArgument("the calibration reservoir needs at least one row".into()));
        }
        self.reservoir_rows = rows;
        self.start();
        Ok(self)
    }

    /// The specs the plan will have: the requested ones as the method adjusts them.
    fn specs(&self) -> (Option<QuantSpec>, Option<QuantSpec>) {
        let m = self.cfg.method;
        (self.cfg.v.map(|s| m.adjust(s)), self.cfg.g.map(|s| m.adjust(s)))
    }

    /// Forgets everything observed so far.
    pub fn start(&mut self) {
        let n = self.problem.n();
        let (v, g) = self.specs();
        // `output` works from its reservoir alone; the others from per-unit histograms.
        let searched = self.cfg.method == Method::Output;
        let obs = |s: &Option<QuantSpec>| s.filter(|s| !s.dynamic && !searched).map(|s| Observer::new(n, s.group_size));
        self.v = obs(&v);
        self.g_re = obs(&g);
        self.g_im = obs(&g);
        self.reservoir = (searched && (v.is_some() || g.is_some())).then(|| Reservoir::new(n, self.reservoir_rows));
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
        if let Some(r) = &mut self.reservoir {
            r.push(v);
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

    /// Turns the observations into a plan; `output` runs its search on the CPU backend.
    pub fn end(&self) -> Result<Calibration> {
        self.end_on(&CpuBackend::new())
    }

    /// [`Calibrator::end`], running any search on `backend`.
    pub fn end_on(&self, backend: &dyn Backend) -> Result<Calibration> {
        let needs_data = self.v.is_some() || self.g_re.is_some() || self.reservoir.is_some();
        if needs_data && self.rows == 0 {
            return Err(BkError::Calibration("no calibration batches were collected".into()));
        }
        let m = self.cfg.method;
        let (v_spec, g_spec) = self.specs();
        let plan = match &self.reservoir {
            Some(r) => self.search(backend, r, v_spec, g_spec)?,
            None => {
                let from_obs = |spec: &Option<QuantSpec>, obs: &Option<Observer>| -> Option<TensorQuant> {
                    let spec = (*spec)?;
                    Some(match obs {
                        Some(o) => TensorQuant::new_static(spec, params_from_observer(m, &spec, o)),
                        None => TensorQuant::dynamic(spec),
                    })
                };
                QuantPlan {
                    v: from_obs(&v_spec, &self.v),
                    g: match (from_obs(&g_spec, &self.g_re), from_obs(&g_spec, &self.g_im)) {
                        (Some(re), Some(im)) => Some(ComplexQuant { re, im }),
                        _ => None,
                    },
                }
            }
        };
        plan.validate(self.problem.n())?;
        Ok(Calibration { plan, method: m.to_string(), samples: self.rows })
    }

    /// The output-aware plan (see [`output`]): v first, then G given the quantized v.
    fn search(&self, backend: &dyn Backend, r: &Reservoir, v: Option<QuantSpec>, g: Option<QuantSpec>) -> Result<QuantPlan> {
        let s = output::Search::new(backend, &self.problem, r.rows())?;
        let v = v.map(|spec| s.input(&spec).map(|p| TensorQuant::new_static(spec, p))).transpose()?;
        let vp = v.as_ref().and_then(|t| t.params.as_ref().map(|p| (&t.spec, p)));
        let g = g
            .map(|spec| {
                s.output(&spec, vp)
                    .map(|(re, im)| ComplexQuant { re: TensorQuant::new_static(spec, re), im: TensorQuant::new_static(spec, im) })
            })
            .transpose()?;
        Ok(QuantPlan { v, g })
    }

    pub fn rows_seen(&self) -> usize {
        self.rows
    }
    pub fn problem(&self) -> &Problem {
        &self.problem
    }
}
