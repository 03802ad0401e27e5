//! Post-training quantization end to end: quantize v with the plan's input scales, solve on the
//! codes (dequantized in the load path), store G in the plan's output format; and the error,
//! size and speed of doing so against the f64 oracle.

use crate::backend::{Backend, GFormat, GOutput, SolveInfo, SolveOptions, VInput};
use crate::error::Result;
use crate::plan::QuantPlan;
use crate::problem::Problem;
use crate::quant::QTensor;
use crate::stats::ErrorStats;
use num_complex::Complex64;
use std::time::Instant;

/// The input of a plan: v quantized with its input scales, or `None` to pass f32 through.
pub fn quantize_v(p: &Problem, plan: &QuantPlan, v: &[f32]) -> Result<Option<QTensor>> {
    let rows = p.rows_of("v", v.len())?;
    plan.v.as_ref().map(|tq| QTensor::quantize("v", tq, v, rows, p.n())).transpose()
}

/// The output format of a plan.
pub fn g_format(plan: &QuantPlan) -> GFormat {
    match &plan.g {
        Some(q) => GFormat::Quant(q.clone()),
        None => GFormat::C64,
    }
}

/// One quantized run: G as the plan stores it.
#[derive(Clone, Debug)]
pub struct PtqRun {
    pub g: GOutput,
    pub info: SolveInfo,
    /// Exact bytes of v and of G as stored (codes + scales + zero points).
    pub v_bytes: usize,
    pub g_bytes: usize,
}

/// Quantizes v, solves and stores G, all as `plan` says.
pub fn run(backend: &dyn Backend, p: &Problem, plan: &QuantPlan, v: &[f32], opts: &SolveOptions) -> Result<PtqRun> {
    plan.validate(p.n())?;
    let q = quantize_v(p, plan, v)?;
    let input = q.as_ref().map_or(VInput::F32(v), VInput::Quant);
    let v_bytes = input.stored_bytes();
    let s = backend.solve(p, input, &g_format(plan), opts)?;
    let g_bytes = s.g.stored_bytes();
    Ok(PtqRun { g: s.g, info: SolveInfo { rows: s.rows, rows_f64: s.rows_f64, ..Default::default() }, v_bytes, g_bytes })
}

/// Error, size and speed of a plan on one batch.
#[derive(Clone, Debug)]
pub struct Evaluation {
    pub stats: ErrorStats,
    pub v_bytes: usize,
    pub g_bytes: usize,
    /// (v + G bytes in f32/complex64) / (v + G bytes stored).
    pub compression: f64,
    /// Median seconds of one backend call on the stored input (quantizing v not included).
    pub seconds: f64,
    pub gelem_per_s: f64,
    pub rows_f64: usize,
}

impl Evaluation {
    pub fn bytes(&self) -> usize {
        self.v_bytes + self.g_bytes
    }
}

/// Runs `plan` on `v`, compares G with `reference` (the f64 oracle on the unquantized v) and
/// times `reps` backend calls on the stored input.
pub fn evaluate(
    backend: &dyn Backend,
    p: &Problem,
    plan: &QuantPlan,
    v: &[f32],
    reference: &[Complex64],
    opts: &SolveOptions,
    reps: usize,
) -> Result<Evaluation> {
    let r = run(backend, p, plan, v, opts)?;
    let stats = ErrorStats::compare(&r.g.to_c128(), reference);
    let q = quantize_v(p, plan, v)?;
    let input = q.as_ref().map_or(VInput::F32(v), VInput::Quant);
    let mut out = GOutput::alloc(&g_format(plan), r.info.rows, p.n())?;
    let mut times = Vec::with_capacity(reps.max(1));
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        backend.solve_into(p, input, &mut out, opts)?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let seconds = times[times.len() / 2];
    let elems = (r.info.rows * p.n()) as f64;
    Ok(Evaluation {
        stats,
        v_bytes: r.v_bytes,
        g_bytes: r.g_bytes,
        compression: elems * 12.0 / (r.v_bytes + r.g_bytes) as f64,
        seconds,
        gelem_per_s: elems / seconds / 1e9,
        rows_f64: r.info.rows_f64,
    })
}
