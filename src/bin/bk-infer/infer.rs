//! `bk-infer infer`: G for potentials from a .npy file.

use crate::common::{duration, group_size_for, print_layer_report, ExecArgs, Precision, ProblemArgs};
use anyhow::{bail, Result};
use bk_infer::model::Model;
use bk_infer::plan::QuantPlan;
use bk_infer::precision::{FloatFormat, Storage};
use bk_infer::quant::{ComplexQuant, QuantSpec, TensorQuant};
use bk_infer::backend::VInput;
use bk_infer::quant::calibrate::Method;
use bk_infer::{ptq, reference, report};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Potentials: .npy of shape (B, N) or (N,), float32/float64/float16.
    #[arg(long, value_name = "V.npy")]
    pub input: PathBuf,
    /// Model file from `bk-infer calibrate` (fixes N, H0, z and the quantization).
    #[arg(long, value_name = "MODEL.safetensors", conflicts_with_all = ["z", "h0"])]
    pub model: Option<PathBuf>,
    /// Layer of the model to run.
    #[arg(long, default_value_t = 0, requires = "model")]
    pub layer: usize,
    /// Without a model: fp32, or int8/int4 with scales and zero points computed per row and
    /// group at run time (dynamic, from each group's min and max).
    #[arg(long, value_enum, conflicts_with = "model")]
    pub precision: Option<Precision>,
    /// Override the precision of G (`fp32` keeps G unquantized).
    #[arg(long, value_enum)]
    pub output_precision: Option<Precision>,
    /// Group size for dynamic quantization without a model (default 32).
    #[arg(long, conflicts_with = "model")]
    pub group_size: Option<usize>,
    /// G as complex64 .npy of shape (B, N) (dequantized when G is quantized).
    #[arg(long, short, value_name = "G.npy")]
    pub output: PathBuf,
    /// Print error statistics per tensor (v: its round trip; G: against the f64 oracle on the
    /// unquantized input) and exact stored sizes.
    #[arg(long)]
    pub stats: bool,
    #[command(flatten)]
    pub problem: ProblemArgs,
    #[command(flatten)]
    pub exec: ExecArgs,
}

pub fn main(a: Args) -> Result<()> {
    let batch = bk_infer::io::read_potentials(&a.input)?;
    let (p, mut plan, storage) = match &a.model {
        Some(path) => {
            let model = Model::load(path)?;
            let layer = model.layer(a.layer)?;
            if layer.problem.n() != batch.n {
                bail!(
                    "{}: the model's layer {} has N = {}, but {} has N = {}",
                    path.display(),
                    a.layer,
                    layer.problem.n(),
                    a.input.display(),
                    batch.n
                );
            }
            (layer.problem.clone(), layer.plan.clone(), layer.storage.clone())
        }
        None => (a.problem.problem(batch.n)?, dynamic_plan(a.precision.unwrap_or(Precision::Fp32), a.group_size)?, Storage::default()),
    };
    if let Some(out) = a.output_precision {
        plan.g = match out.bits() {
            None => None,
            Some(_) => dynamic_plan(out, a.group_size)?.g.or(plan.g),
        };
    }
    let backend = a.exec.backend()?;
    let opts = a.exec.options()?;
    let t = Instant::now();
    let (g, info, v_bytes, g_bytes) = match (&plan.v, batch.as_input()) {
        // A layer stored in fp16/bf16 (or with fp16/bf16 G) runs as the model stores it.
        _ if storage.v != FloatFormat::F32 || (plan.g.is_none() && storage.g != FloatFormat::F32) => {
            let layer = bk_infer::model::Layer { problem: p.clone(), plan: plan.clone(), storage: storage.clone() };
            let r = bk_infer::mixed::run_layer(backend.as_ref(), &layer, &batch.to_f32(), &opts)?;
            (r.g, (r.info.rows, r.info.rows_f64), r.v_bytes, r.g_bytes)
        }
        // Unquantized v keeps its stored precision (f64 inputs stay f64).
        (None, input) => {
            let s = backend.solve(&p, input, &ptq::g_format(&plan), &opts)?;
            let (vb, gb) = (input.stored_bytes(), s.g.stored_bytes());
            (s.g, (s.rows, s.rows_f64), vb, gb)
        }
        (Some(_), _) => {
            let r = ptq::run(backend.as_ref(), &p, &plan, &batch.to_f32(), &opts)?;
            (r.g, (r.info.rows, r.info.rows_f64), r.v_bytes, r.g_bytes)
        }
    };
    let elapsed = t.elapsed().as_secs_f64();
    bk_infer::io::write_complex64(&a.output, batch.rows, batch.n, &g.to_c64())?;
    println!(
        "G ({}, {}) -> {}  [{}, {}, {} on {}, {} rows in f64]",
        batch.rows,
        batch.n,
        a.output.display(),
        bk_infer::precision::LayerPrecision::of(&plan, &storage),
        duration(elapsed),
        backend.name(),
        backend.device(),
        info.1
    );
    if a.stats {
        let exact = reference::solve_batch(&p, &batch.to_f64())?;
        let v32 = batch.to_f32();
        // The report quantizes or rounds v itself as the layer stores it, from what the run
        // started from (f32, or an unquantized f64 input kept in f64).
        let input = if plan.v.is_some() || storage.v != FloatFormat::F32 { VInput::F32(&v32) } else { batch.as_input() };
        let r = report::layer_report(a.layer, &p, &plan, &storage, input, &g, &exact)?;
        debug_assert_eq!(r.bytes(), v_bytes + g_bytes);
        print_layer_report(&r);
    }
    Ok(())
}

/// A plan without calibration: fp32, or dynamic (per row and group) scales and zero points.
fn dynamic_plan(prec: Precision, group: Option<usize>) -> Result<QuantPlan> {
    let Some(bits) = prec.bits() else {
        return Ok(QuantPlan::fp32());
    };
    let g = group_size_for(bits, true, group)?;
    let v = TensorQuant::dynamic(Method::Dynamic.adjust(QuantSpec::for_v(bits, g)));
    let gq = TensorQuant::dynamic(Method::Dynamic.adjust(QuantSpec::for_g(bits, g)));
    Ok(QuantPlan { v: Some(v), g: Some(ComplexQuant { re: gq.clone(), im: gq }) })
}
