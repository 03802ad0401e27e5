//! Quantization-aware calibration: start from a calibrated static plan and train every scale
//! and zero point of v and G separately with Adam, through the exact backward pass of the BK
//! core, to minimise the error of the dequantized G on the calibration set.
//!
//! The loss is the seed's metric on the calibration set, L = 100 · Σ|f̂ − f| / Σ|f| over
//! f = (Re G, Im G), with f from the f64 oracle on the unquantized potentials; each step uses
//! the whole set (one solve and one backward pass over all its rows), so the objective is
//! deterministic. Scales are learned in log space (Adam's steps are then relative changes, the
//! same for every group whatever its magnitude), zero points in code units. The parameters with
//! the lowest loss seen are returned: the loss is piecewise constant in the parameters between
//! rounding thresholds, so the last step is not always the best.

use super::core::QatCore;
use super::fake::{LearnedQuant, QuantGrad};
use crate::backend::{Backend, Compute, SolveOptions};
use crate::error::{BkError, Result};
use crate::plan::QuantPlan;
use crate::problem::Problem;
use crate::reference;
use num_complex::{Complex32, Complex64};
use rayon::prelude::*;

/// Settings of [`train`].
#[derive(Clone, Debug, PartialEq)]
pub struct QatConfig {
    /// Adam steps (each over the whole calibration set).
    pub steps: usize,
    /// Learning rate of log-scales (a relative change of the scale per step).
    pub lr_scale: f64,
    /// Learning rate of zero points, in codes per step.
    pub lr_zero: f64,
    /// Learn the scales of v (else keep them).
    pub learn_v: bool,
    /// Learn the scales and zero points of G (else keep them).
    pub learn_g: bool,
}

impl Default for QatConfig {
    fn default() -> Self {
        QatConfig { steps: 300, lr_scale: 2e-3, lr_zero: 0.05, learn_v: true, learn_g: true }
    }
}

/// What [`train`] found.
#[derive(Clone, Debug)]
pub struct QatResult {
    /// The trained plan (static, ready for the real quantized path and for a model file).
    pub plan: QuantPlan,
    /// Calibration-set loss (relative error %, the seed's metric) of the starting plan.
    pub initial_loss: f64,
    /// Calibration-set loss of the returned plan.
    pub best_loss: f64,
    /// Step whose parameters were returned (0 = the starting plan).
    pub best_step: usize,
    /// Loss before each step, then after the last one.
    pub losses: Vec<f64>,
}

/// Adam state for one parameter vector.
#[derive(Clone, Debug)]
struct Adam {
    m: Vec<f64>,
    v: Vec<f64>,
}

impl Adam {
    const B1: f64 = 0.9;
    const B2: f64 = 0.999;
    const EPS: f64 = 1e-12;

    fn new(len: usize) -> Self {
        Adam { m: vec![0.0; len], v: vec![0.0; len] }
    }

    fn step(&mut self, x: &mut [f64], g: &[f64], lr: f64, t: usize) {
        let (c1, c2) = (1.0 - Self::B1.powi(t as i32), 1.0 - Self::B2.powi(t as i32));
        for i in 0..x.len() {
            self.m[i] = Self::B1 * self.m[i] + (1.0 - Self::B1) * g[i];
            self.v[i] = Self::B2 * self.v[i] + (1.0 - Self::B2) * g[i] * g[i];
            x[i] -= lr * (self.m[i] / c1) / ((self.v[i] / c2).sqrt() + Self::EPS);
        }
    }
}

/// Adam over one learnable tensor (log-scales and zero points).
struct TensorOpt {
    s: Adam,
    z: Option<Adam>,
}

impl TensorOpt {
    fn new(q: &LearnedQuant) -> Self {
        TensorOpt { s: Adam::new(q.groups()), z: q.zero.as_ref().map(|z| Adam::new(z.len())) }
    }

    fn step(&mut self, q: &mut LearnedQuant, g: &QuantGrad, cfg: &QatConfig, t: usize) {
        // ∂L/∂θ = s · ∂L/∂s with s = e^θ.
        let d_theta: Vec<f64> = q.log_scale.iter().zip(&g.scale).map(|(th, ds)| th.exp() * ds).collect();
        self.s.step(&mut q.log_scale, &d_theta, cfg.lr_scale, t);
        if let (Some(opt), Some(z), Some(dz)) = (&mut self.z, &mut q.zero, &g.zero) {
            opt.step(z, dz, cfg.lr_zero, t);
            let (lo, hi) = (i16::MIN as f64, i16::MAX as f64);
            z.iter_mut().for_each(|x| *x = x.clamp(lo, hi));
        }
    }
}

/// The seed's metric of `g` against `reference`, 100 · Σ|Δf| / Σ|f|, and its gradient
/// ∂L/∂Re G + i ∂L/∂Im G (sign of each component's error, scaled).
pub fn rel_l1_loss(g: &[Complex32], reference: &[Complex64], grad: &mut [Complex32]) -> f64 {
    let mass: f64 = reference.par_iter().map(|r| r.re.abs() + r.im.abs()).sum();
    let k = 100.0 / mass.max(f64::MIN_POSITIVE);
    let kf = k as f32;
    let sign = |d: f64| if d > 0.0 { kf } else if d < 0.0 { -kf } else { 0.0 };
    let abs_err: f64 = g
        .par_iter()
        .zip(reference)
        .zip(grad.par_iter_mut())
        .map(|((a, r), gr)| {
            let (dr, di) = (a.re as f64 - r.re, a.im as f64 - r.im);
            *gr = Complex32::new(sign(dr), sign(di));
            dr.abs() + di.abs()
        })
        .sum();
    k * abs_err
}

/// Trains the static scales and zero points of `init` (a calibrated plan) on the calibration
/// potentials `cal` (row-major, whole rows of N). `progress` sees (step, loss) after every step.
pub fn train(
    backend: &dyn Backend,
    problem: &Problem,
    init: &QuantPlan,
    cal: &[f32],
    cfg: &QatConfig,
    progress: &mut dyn FnMut(usize, f64),
) -> Result<QatResult> {
    let mut core = QatCore::from_plan(problem.clone(), init)?;
    if core.v.is_none() && core.g.is_none() {
        return Err(BkError::Calibration("quantization-aware training needs a plan that quantizes v or G".into()));
    }
    let rows = problem.rows_of("calibration batch", cal.len())?;
    let reference = reference::solve_batch_f32(problem, cal)?;
    // f32 arithmetic, as the real path runs at these shifts (Auto would pick f64 near the real
    // axis; follow it so that training sees what inference computes).
    let opts = SolveOptions { compute: Compute::Auto, ..SolveOptions::default() };
    let mut opt_v = core.v.as_ref().map(TensorOpt::new);
    let mut opt_g = core.g.as_ref().map(|[a, b]| [TensorOpt::new(a), TensorOpt::new(b)]);
    let mut grad = vec![Complex32::default(); rows * problem.n()];
    let mut losses = Vec::with_capacity(cfg.steps + 1);
    let mut best = (f64::INFINITY, 0usize, core.plan());
    for step in 0..=cfg.steps {
        let fwd = core.forward(backend, cal, &opts)?;
        let loss = rel_l1_loss(&fwd.g, &reference, &mut grad);
        if !loss.is_finite() {
            return Err(BkError::Calibration(format!("loss is {loss} at step {step}")));
        }
        losses.push(loss);
        if loss < best.0 {
            best = (loss, step, core.plan());
        }
        if step == cfg.steps {
            break;
        }
        let g = core.backward(backend, &fwd, &grad, &opts)?;
        if let (true, Some(q), Some(o), Some(gq)) = (cfg.learn_v, &mut core.v, &mut opt_v, &g.v_quant) {
            o.step(q, gq, cfg, step + 1);
        }
        if let (true, Some(qs), Some(os), Some(gs)) = (cfg.learn_g, &mut core.g, &mut opt_g, &g.g_quant) {
            for ((q, o), gq) in qs.iter_mut().zip(os.iter_mut()).zip(gs) {
                o.step(q, gq, cfg, step + 1);
            }
        }
        progress(step + 1, loss);
    }
    Ok(QatResult { plan: best.2, initial_loss: losses[0], best_loss: best.0, best_step: best.1, losses })
}
