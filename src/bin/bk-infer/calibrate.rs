//! `bk-infer calibrate`: scales from calibration potentials, written to a model file.

use crate::common::{group_size_for, parse_method, ExecArgs, Precision, ProblemArgs};
use anyhow::{Context, Result};
use bk_infer::model::{Model, ModelMeta};
use bk_infer::quant::calibrate::{CalibrationConfig, Calibrator, Method};
use bk_infer::quant::QuantSpec;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Calibration potentials: .npy of shape (samples, N), float32/float64/float16.
    #[arg(long, value_name = "CAL.npy")]
    pub input: PathBuf,
    /// Precision of v and G (not with --bits-budget or --policy, which choose per tensor).
    #[arg(long, value_enum, required_unless_present_any = ["bits_budget", "policy"])]
    pub precision: Option<Precision>,
    /// Override the precision of G (e.g. `fp32` to quantize only v).
    #[arg(long, value_enum)]
    pub output_precision: Option<Precision>,
    /// Positions per quantization group along the sequence (default: 32 for `--method dynamic`;
    /// otherwise 1, per position, for INT8 and 128 for INT4).
    #[arg(long)]
    pub group_size: Option<usize>,
    /// How scales are chosen:
    ///   absmax          the seed's: symmetric, max |x| over the calibration data;
    ///   percentile[:P]  clip both tails at percentile P (default 99.99);
    ///   mse             clip range minimising the quantization MSE of each unit's histogram;
    ///   minmax          the exact observed range, with a zero point;
    ///   kl              entropy calibration (TensorRT-style KL divergence);
    ///   output          output-aware: ranges that minimise the error of G itself, found by
    ///                   re-running the recursion on (a bounded sample of) the calibration
    ///                   data, cross-validated;
    ///   dynamic         no calibrated scales: each row's groups get theirs at run time;
    ///   qat             the default static method, then quantization-aware training of every
    ///                   scale and zero point through the exact backward pass (--qat-steps).
    /// Default: output, the best static method on the seed's and the robustness workloads.
    #[arg(long, verbatim_doc_comment)]
    pub method: Option<String>,
    /// Rows fed to the observers per calibration batch.
    #[arg(long, default_value_t = 8)]
    pub batch_rows: usize,
    /// Model file to write.
    #[arg(long, short, value_name = "MODEL.safetensors")]
    pub output: PathBuf,
    #[command(flatten)]
    pub qat: crate::qat::QatArgs,
    #[command(flatten)]
    pub mixed: crate::mixed::MixedArgs,
    #[command(flatten)]
    pub problem: ProblemArgs,
    #[command(flatten)]
    pub exec: ExecArgs,
}

pub fn main(a: Args) -> Result<()> {
    if a.mixed.active() {
        return crate::mixed::main(&a);
    }
    let precision = a.precision.ok_or_else(|| anyhow::anyhow!("--precision is required without --bits-budget or --policy"))?;
    let batch = bk_infer::io::read_potentials(&a.input)?;
    let p = a.problem.problem(batch.n)?;
    let qat = crate::qat::is_qat(a.method.as_deref());
    let method = if qat { Method::DEFAULT } else { a.method.as_deref().map(parse_method).transpose()?.unwrap_or(Method::DEFAULT) };
    let spec = |prec: Precision, for_g: bool| -> Result<Option<QuantSpec>> {
        prec.bits()
            .map(|b| {
                let g = group_size_for(b, method.is_dynamic(), a.group_size)?;
                Ok(if for_g { QuantSpec::for_g(b, g) } else { QuantSpec::for_v(b, g) })
            })
            .transpose()
    };
    let cfg = CalibrationConfig {
        v: spec(precision, false)?,
        g: spec(a.output_precision.unwrap_or(precision), true)?,
        method,
    };
    let backend = a.exec.backend()?;
    let mut cal = Calibrator::new(p.clone(), cfg)?;
    let v = batch.to_f32();
    let rows_per = a.batch_rows.max(1);
    for chunk in v.chunks(rows_per * batch.n) {
        cal.collect(backend.as_ref(), chunk).with_context(|| format!("calibrating on {}", a.input.display()))?;
    }
    let mut c = cal.end_on(backend.as_ref())?;
    if qat {
        let r = crate::qat::run(backend.as_ref(), &p, &c.plan, &v, &a.qat.config(), &c.plan.label())?;
        c.plan = r.plan;
        c.method = format!("qat (from {}, {} steps)", c.method, a.qat.qat_steps);
    }
    let meta = ModelMeta { calibration_method: c.method.clone(), calibration_samples: c.samples, ..ModelMeta::default() };
    let model = Model::single(p, c.plan.clone(), meta)?;
    model.save(&a.output)?;
    println!(
        "calibrated {} on {} rows of N = {} ({}, {}) -> {}",
        c.plan.label(),
        c.samples,
        batch.n,
        c.method,
        backend.device(),
        a.output.display()
    );
    Ok(())
}
