//! `bk-infer calibrate --bits-budget B` / `--policy P`: a mixed-precision model of one or more
//! layers, with a per-layer precision and error table.

use crate::calibrate::Args;
use anyhow::{bail, Context, Result};
use bk_infer::mixed::{allocate, AllocConfig, Policy};
use bk_infer::model::{Model, ModelMeta};
use bk_infer::quant::calibrate::Method;
use bk_infer::Problem;
use num_complex::Complex64;

/// Options of mixed-precision models.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct MixedArgs {
    /// Average bits per element the model may use (codes + scales + zero points of v, H0 and G,
    /// counted on a batch of --budget-rows rows; H0 once per layer). Chooses every tensor's
    /// precision (fp32/fp16/bf16/int8[-gN]/int4-gN, H0 also fp64) to minimise the total error of
    /// G measured on the calibration data. Replaces --precision.
    #[arg(long, value_name = "BITS")]
    pub bits_budget: Option<f64>,
    /// Fixed precisions by rule, e.g. `seed` (= "v=int4-g128,h0=int8-g128,g=int8;last:g=fp16")
    /// or "g=int8;last:g=fp16;0:v=bf16": clauses `[all|first|last|K:]TENSOR=PREC,...`, TENSOR ∈
    /// v, h0, g. With --bits-budget, the budget allocates what the policy leaves open.
    #[arg(long, value_name = "POLICY")]
    pub policy: Option<String>,
    /// Layers of the model. Each has its own z (--layer-z, else z_k = Re z + i·Im z / 2^k from
    /// --z, so that deeper layers sit closer to the real axis and are more sensitive) and its own
    /// H0 (--layer-h0, else --h0 or the Laplacian). The calibration rows feed every layer.
    #[arg(long, value_name = "L")]
    pub layers: Option<usize>,
    /// z of each layer, `RE,IM;RE,IM;…` (e.g. "0,1;0.2,0.5;-0.3,0.25"); sets the layer count
    /// when --layers is not given.
    #[arg(long, value_name = "RE,IM;…", allow_hyphen_values = true)]
    pub layer_z: Option<String>,
    /// H0 of each layer, safetensors files as for --h0 (one per layer).
    #[arg(long, value_name = "H0.safetensors", num_args = 1..)]
    pub layer_h0: Vec<std::path::PathBuf>,
    /// Rows of the batch the bits per element are counted on (the seed's B).
    #[arg(long, default_value_t = 8)]
    pub budget_rows: usize,
}

impl MixedArgs {
    pub fn active(&self) -> bool {
        self.bits_budget.is_some() || self.policy.is_some()
    }

    /// The layers' problems for sequences of length `n`.
    fn problems(&self, a: &Args, n: usize) -> Result<Vec<Problem>> {
        let layer_z: Vec<&str> = self.layer_z.as_deref().map_or(vec![], |s| s.split(';').map(str::trim).filter(|x| !x.is_empty()).collect());
        let count = match (self.layers, layer_z.len(), self.layer_h0.len()) {
            (Some(0), ..) => bail!("--layers must be at least 1"),
            (Some(l), z, h) if (z != 0 && z != l) || (h != 0 && h != l) => {
                bail!("--layers {l}: give one --layer-z and one --layer-h0 per layer (got {z} and {h})")
            }
            (Some(l), ..) => l,
            (None, 0, 0) => 1,
            (None, z, h) if z != 0 && h != 0 && z != h => bail!("--layer-z gives {z} layers but --layer-h0 gives {h}"),
            (None, z, h) => z.max(h),
        };
        let base = a.problem.problem(n)?;
        (0..count)
            .map(|k| {
                let z = match layer_z.get(k) {
                    Some(s) => crate::common::parse_z(s)?,
                    None => Complex64::new(base.z().re, base.z().im / f64::powi(2.0, k as i32)),
                };
                let h0 = match self.layer_h0.get(k) {
                    Some(path) => {
                        let h0 = bk_infer::io::read_h0(path)?;
                        if h0.n() != n {
                            bail!("{}: H0 has N = {}, but the potentials have N = {n}", path.display(), h0.n());
                        }
                        h0
                    }
                    None => base.h0().clone(),
                };
                Problem::new(h0, z).with_context(|| format!("layer {k}"))
            })
            .collect()
    }
}

pub fn main(a: &Args) -> Result<()> {
    let m = &a.mixed;
    if crate::qat::is_qat(a.method.as_deref()) {
        bail!("--method qat trains one layer's integer scales; combine it with --precision, not with --bits-budget/--policy");
    }
    let method = a.method.as_deref().map(crate::common::parse_method).transpose()?.unwrap_or(Method::DEFAULT);
    let batch = bk_infer::io::read_potentials(&a.input)?;
    let problems = m.problems(a, batch.n)?;
    let policy = m.policy.as_deref().map(Policy::parse).transpose()?;
    let backend = a.exec.backend()?;
    let cfg = AllocConfig { budget_bits: m.bits_budget, rows: m.budget_rows.max(1), method, opts: a.exec.options()?, ..AllocConfig::default() };
    let v = batch.to_f32();
    let alloc = allocate(backend.as_ref(), &problems, &v, policy.as_ref(), &cfg)?;
    println!(
        "mixed precision: {} layer(s), N = {}, {} calibration rows ({:.0} % held out to measure), bits counted on B = {} rows",
        problems.len(),
        batch.n,
        batch.rows,
        cfg.holdout * 100.0,
        cfg.rows
    );
    println!();
    println!(
        "| {:>5} | {:<16} | {:<10} | {:<10} | {:<10} | {:>9} | {:>13} | {:>13} | {:>10} |",
        "layer", "z", "v", "h0", "g", "bits/elem", "pred. rel-MSE", "meas. rel-MSE", "rel err %"
    );
    println!("|{}", "---|".repeat(9));
    for (k, (r, p)) in alloc.reports.iter().zip(&problems).enumerate() {
        println!(
            "| {:>5} | {:<16} | {:<10} | {:<10} | {:<10} | {:>9.3} | {:>13.3e} | {:>13.3e} | {:>10.4} |",
            k,
            format!("{}", p.z()),
            r.precision.v.label(),
            r.precision.h0.label(),
            r.precision.g.label(),
            r.bits_per_element(),
            r.predicted_rel_mse,
            r.measured.rel_l2 * r.measured.rel_l2,
            r.measured.rel_pct
        );
    }
    println!();
    println!(
        "model: {:.3} bits per element{}; predicted Σ rel-MSE {:.3e}, measured Σ rel-MSE {:.3e}",
        alloc.bits_per_element,
        m.bits_budget.map_or(String::new(), |b| format!(" (budget {b})")),
        alloc.predicted,
        alloc.reports.iter().map(|r| r.measured.rel_l2 * r.measured.rel_l2).sum::<f64>()
    );
    let what = match (m.bits_budget, &m.policy) {
        (Some(b), Some(p)) => format!("mixed (budget {b} bits/elem, policy {p}, {method})"),
        (Some(b), None) => format!("mixed (budget {b} bits/elem, {method})"),
        (None, p) => format!("mixed (policy {}, {method})", p.as_deref().unwrap_or("")),
    };
    let meta = ModelMeta { calibration_method: what, calibration_samples: batch.rows, ..ModelMeta::default() };
    let model = Model { layers: alloc.layers, meta };
    model.save(&a.output)?;
    println!("-> {} (run a layer with `bk-infer infer --model {} --layer K`)", a.output.display(), a.output.display());
    Ok(())
}
