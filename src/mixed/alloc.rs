//! Sensitivities of every (layer, tensor, precision) on calibration data, and the bit
//! allocation that minimises their sum under a budget (see the module docs of [`super`]).

use super::{layer_bytes, run_layer, Policy};
use crate::backend::{Backend, SolveOptions};
use crate::error::{BkError, Result};
use crate::model::Layer;
use crate::plan::QuantPlan;
use crate::precision::{float_format, FloatFormat, H0Storage, LayerPrecision, Precision, Storage};
use crate::problem::Problem;
use crate::quant::calibrate::{CalibrationConfig, Calibrator, Method};
use crate::quant::QuantSpec;
use crate::reference;
use crate::stats::ErrorStats;
use num_complex::Complex64;

/// Precisions the allocation may choose from, per tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidates {
    pub v: Vec<Precision>,
    pub h0: Vec<Precision>,
    pub g: Vec<Precision>,
}

impl Default for Candidates {
    fn default() -> Self {
        let act = vec![
            Precision::Fp32,
            Precision::Fp16,
            Precision::Bf16,
            Precision::int8(1),
            Precision::int8(32),
            Precision::int8(128),
            Precision::int4(32),
            Precision::int4(128),
        ];
        Candidates {
            v: act.clone(),
            h0: vec![Precision::Fp64, Precision::Fp32, Precision::Fp16, Precision::Bf16, Precision::int8(128), Precision::int4(128)],
            g: act,
        }
    }
}

/// Settings of [`allocate`].
#[derive(Clone, Debug, PartialEq)]
pub struct AllocConfig {
    /// Average bits per element over the model; `None` keeps every tensor no policy names at
    /// full precision (v fp32, H0 fp64, G complex64).
    pub budget_bits: Option<f64>,
    /// Rows of the reference batch the bits are counted on (the seed's B = 8).
    pub rows: usize,
    /// Static calibration method of the integer formats.
    pub method: Method,
    pub candidates: Candidates,
    /// Fraction of the calibration rows kept aside to measure errors (the rest calibrates).
    pub holdout: f64,
    pub opts: SolveOptions,
}

impl Default for AllocConfig {
    fn default() -> Self {
        AllocConfig { budget_bits: None, rows: 8, method: Method::DEFAULT, candidates: Candidates::default(), holdout: 0.25, opts: SolveOptions::default() }
    }
}

/// One measured choice for one tensor of one layer.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub precision: Precision,
    /// Stored bytes of this tensor for the reference batch.
    pub bytes: usize,
    /// Relative squared error of G with this tensor alone in this precision.
    pub rel_mse: f64,
    /// What the layer needs to store the tensor this way.
    part: Part,
}

#[derive(Clone, Debug)]
enum Part {
    V(QuantPlan, FloatFormat),
    H0(H0Storage, Problem),
    G(QuantPlan, FloatFormat),
}

/// The result of [`allocate`]: the model's layers and what each costs and loses.
#[derive(Clone, Debug)]
pub struct Allocation {
    pub layers: Vec<Layer>,
    pub reports: Vec<LayerReport>,
    /// Average bits per element of the whole model.
    pub bits_per_element: f64,
    /// Σ of the predicted relative squared errors of all layers.
    pub predicted: f64,
}

#[derive(Clone, Debug)]
pub struct LayerReport {
    pub precision: LayerPrecision,
    /// Stored bytes of v, H0 and G for the reference batch.
    pub bytes: [usize; 3],
    pub elements: usize,
    /// Σ of the chosen tensors' relative squared errors (the additive prediction).
    pub predicted_rel_mse: f64,
    /// The layer measured with all its tensors in their precisions, on the held-out rows.
    pub measured: ErrorStats,
}

impl LayerReport {
    pub fn bits_per_element(&self) -> f64 {
        8.0 * self.bytes.iter().sum::<usize>() as f64 / self.elements as f64
    }
}

fn split_rows(cal: &[f32], n: usize, holdout: f64) -> Result<(&[f32], &[f32])> {
    let rows = cal.len() / n;
    if rows < 2 || cal.len() % n != 0 {
        return Err(BkError::Calibration(format!("bit allocation needs at least 2 calibration rows of N = {n}, got {} values", cal.len())));
    }
    let eval = ((rows as f64 * holdout).round() as usize).clamp(1, rows - 1);
    Ok(cal.split_at((rows - eval) * n))
}

fn rel_mse(g: &[Complex64], reference: &[Complex64]) -> f64 {
    let s = ErrorStats::compare(g, reference);
    s.rel_l2 * s.rel_l2
}

/// Measures every candidate of `cands` (or only the `pinned` precision, where given) for each
/// tensor ([v, h0, g]) of one layer.
pub fn measure_candidates(
    backend: &dyn Backend,
    p: &Problem,
    cal: &[f32],
    pinned: [Option<Precision>; 3],
    cfg: &AllocConfig,
) -> Result<[Vec<Candidate>; 3]> {
    let n = p.n();
    let (fit, eval) = split_rows(cal, n, cfg.holdout)?;
    let reference = reference::solve_batch_f32(p, eval)?;
    let calibrate = |v: Option<QuantSpec>, g: Option<QuantSpec>| -> Result<QuantPlan> {
        let mut c = Calibrator::new(p.clone(), CalibrationConfig { v, g, method: cfg.method })?;
        for chunk in fit.chunks(n * 64) {
            c.collect(backend, chunk)?;
        }
        Ok(c.end()?.plan)
    };
    let full = Full;
    let lists = [&cfg.candidates.v, &cfg.candidates.h0, &cfg.candidates.g];
    let mut out: [Vec<Candidate>; 3] = Default::default();
    for t in 0..3 {
        let list: Vec<Precision> = match pinned[t] {
            Some(p) => vec![p],
            None if cfg.budget_bits.is_some() => lists[t].clone(),
            None => vec![full.of(t)],
        };
        for prec in list {
            let part = match (t, prec) {
                (0, Precision::Int { bits, group }) => Part::V(calibrate(Some(QuantSpec::for_v(bits, group)), None)?, FloatFormat::F32),
                (0, f) => Part::V(QuantPlan::fp32(), float_format(f, "v")?.unwrap_or_default()),
                (1, f) => {
                    let (st, h0) = H0Storage::encode(p.h0(), f)?;
                    Part::H0(st, Problem::new(h0, p.z())?)
                }
                (_, Precision::Int { bits, group }) => Part::G(calibrate(None, Some(QuantSpec::for_g(bits, group)))?, FloatFormat::F32),
                (_, f) => Part::G(QuantPlan::fp32(), float_format(f, "g")?.unwrap_or_default()),
            };
            let layer = assemble(p, [Some(&part), None, None]);
            let run = run_layer(backend, &layer, eval, &cfg.opts)?;
            let bytes = layer_bytes(&layer, cfg.rows).0[t];
            out[t].push(Candidate { precision: prec, bytes, rel_mse: rel_mse(&run.g.to_c128(), &reference), part });
        }
    }
    Ok(out)
}

/// Full precision of each tensor.
struct Full;
impl Full {
    fn of(&self, t: usize) -> Precision {
        if t == 1 {
            Precision::Fp64
        } else {
            Precision::Fp32
        }
    }
}

/// A layer of `p` with the given parts (any order; missing ones at full precision).
fn assemble(p: &Problem, parts: [Option<&Part>; 3]) -> Layer {
    let mut layer = Layer { problem: p.clone(), plan: QuantPlan::fp32(), storage: Storage::default() };
    for part in parts.into_iter().flatten() {
        match part {
            Part::V(plan, f) => {
                layer.plan.v = plan.v.clone();
                layer.storage.v = *f;
            }
            Part::H0(st, prob) => {
                layer.problem = prob.clone();
                layer.storage.h0 = st.clone();
            }
            Part::G(plan, f) => {
                layer.plan.g = plan.g.clone();
                layer.storage.g = *f;
            }
        }
    }
    layer
}

/// Most DP cells: costs are counted in units of ⌈capacity / this⌉ bytes (rounded up, so the
/// budget is never exceeded).
const MAX_CELLS: usize = 1 << 18;

/// Chooses a precision for every tensor of every layer: those `policy` fixes, and for the rest
/// the combination with the least total predicted error within `cfg.budget_bits` (see the
/// module docs). `cal` holds the calibration potentials (the same rows feed every layer).
pub fn allocate(backend: &dyn Backend, problems: &[Problem], cal: &[f32], policy: Option<&Policy>, cfg: &AllocConfig) -> Result<Allocation> {
    if problems.is_empty() {
        return Err(BkError::InvalidArgument("a model needs at least one layer".into()));
    }
    if let Some(b) = cfg.budget_bits {
        if !(b.is_finite() && b > 0.0) {
            return Err(BkError::InvalidArgument(format!("bits budget {b} must be a positive number")));
        }
    }
    let layers = problems.len();
    let mut items: Vec<Vec<Candidate>> = Vec::with_capacity(3 * layers);
    let mut elems = 0usize;
    for (k, p) in problems.iter().enumerate() {
        let pinned = policy.map_or([None; 3], |pol| pol.pinned(k, layers));
        items.extend(measure_candidates(backend, p, cal, pinned, cfg)?);
        elems += 3 * cfg.rows * p.n() + 3 * p.n() - 2;
    }
    let choice = match cfg.budget_bits {
        None => vec![0; items.len()],
        Some(b) => knapsack(&items, (b * elems as f64 / 8.0).floor() as usize, elems)?,
    };
    let n_of = |k: usize| problems[k].n();
    let (mut out_layers, mut reports) = (Vec::with_capacity(layers), Vec::with_capacity(layers));
    for (k, p) in problems.iter().enumerate() {
        let picked: Vec<&Candidate> = (0..3).map(|t| &items[3 * k + t][choice[3 * k + t]]).collect();
        let layer = assemble(p, [Some(&picked[0].part), Some(&picked[1].part), Some(&picked[2].part)]);
        let (_, eval) = split_rows(cal, n_of(k), cfg.holdout)?;
        let reference = reference::solve_batch_f32(p, eval)?;
        let run = run_layer(backend, &layer, eval, &cfg.opts)?;
        let (bytes, elements) = layer_bytes(&layer, cfg.rows);
        reports.push(LayerReport {
            precision: layer.precision(),
            bytes,
            elements,
            predicted_rel_mse: picked.iter().map(|c| c.rel_mse).sum(),
            measured: ErrorStats::compare(&run.g.to_c128(), &reference),
        });
        out_layers.push(layer);
    }
    let bits: usize = reports.iter().map(|r| 8 * r.bytes.iter().sum::<usize>()).sum();
    Ok(Allocation {
        layers: out_layers,
        predicted: reports.iter().map(|r| r.predicted_rel_mse).sum(),
        bits_per_element: bits as f64 / elems as f64,
        reports,
    })
}

/// Multiple-choice knapsack: one candidate per item, Σ bytes ≤ `capacity`, least Σ rel_mse.
fn knapsack(items: &[Vec<Candidate>], capacity: usize, elems: usize) -> Result<Vec<usize>> {
    let min_bytes: usize = items.iter().map(|c| c.iter().map(|x| x.bytes).min().unwrap_or(0)).sum();
    if min_bytes > capacity {
        return Err(BkError::InvalidArgument(format!(
            "the bits budget is below the smallest model these candidates allow ({:.3} bits per element)",
            8.0 * min_bytes as f64 / elems as f64
        )));
    }
    let unit = capacity.div_ceil(MAX_CELLS).max(1);
    let cap = capacity / unit;
    let cost = |c: &Candidate| c.bytes.div_ceil(unit);
    let mut dp = vec![f64::INFINITY; cap + 1];
    dp[0] = 0.0;
    let mut pick: Vec<Vec<u8>> = Vec::with_capacity(items.len());
    for cands in items {
        let mut next = vec![f64::INFINITY; cap + 1];
        let mut arg = vec![u8::MAX; cap + 1];
        for (j, c) in cands.iter().enumerate() {
            let w = cost(c);
            for used in 0..=cap.saturating_sub(w) {
                let e = dp[used] + c.rel_mse;
                if dp[used].is_finite() && e < next[used + w] {
                    next[used + w] = e;
                    arg[used + w] = j as u8;
                }
            }
        }
        dp = next;
        pick.push(arg);
    }
    let (mut used, _) = dp
        .iter()
        .enumerate()
        .filter(|(_, e)| e.is_finite())
        .min_by(|a, b| a.1.total_cmp(b.1))
        .ok_or_else(|| BkError::InvalidArgument("no combination of precisions fits the bits budget (rounding of costs); raise it slightly".into()))?;
    let mut choice = vec![0; items.len()];
    for i in (0..items.len()).rev() {
        let j = pick[i][used] as usize;
        choice[i] = j;
        used -= cost(&items[i][j]);
    }
    Ok(choice)
}
