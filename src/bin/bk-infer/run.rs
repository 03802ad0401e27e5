//! `bk-infer run`: the embedded demo on the seed's workload.

use crate::common::{bytes, duration, ExecArgs, ProblemArgs};
use anyhow::Result;
use bk_infer::backend::Backend;
use bk_infer::plan::QuantPlan;
use bk_infer::ptq;
use bk_infer::quant::calibrate::{CalibrationConfig, Calibrator, Method};
use bk_infer::quant::Bits;
use bk_infer::reference;
use bk_infer::workload::SeedWorkload;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Rows per batch (the seed's B).
    #[arg(long, default_value_t = SeedWorkload::ROWS)]
    pub rows: usize,
    /// Sequence length N.
    #[arg(long, default_value_t = SeedWorkload::N)]
    pub n: usize,
    /// Calibration batches.
    #[arg(long, default_value_t = SeedWorkload::CAL_BATCHES)]
    pub batches: usize,
    /// Random seed of the workload (v ~ N(0, 1)).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Group size of the INT4 rows.
    #[arg(long, default_value_t = 128)]
    pub group_size: usize,
    /// Timed repetitions per row of the table (the median is shown).
    #[arg(long, default_value_t = 200)]
    pub reps: usize,
    #[command(flatten)]
    pub problem: ProblemArgs,
    #[command(flatten)]
    pub exec: ExecArgs,
}

impl Default for Args {
    fn default() -> Self {
        Args {
            rows: SeedWorkload::ROWS,
            n: SeedWorkload::N,
            batches: SeedWorkload::CAL_BATCHES,
            seed: 0,
            group_size: 128,
            reps: 200,
            problem: ProblemArgs::default(),
            exec: ExecArgs::default(),
        }
    }
}

pub fn main(a: Args) -> Result<()> {
    let w = SeedWorkload::with(bk_infer::workload::Potential::SEED, a.rows, a.n, a.batches, a.seed);
    let p = a.problem.problem(a.n)?;
    let backend = a.exec.backend()?;
    let opts = a.exec.options()?;
    let exact = reference::solve_batch_f32(&p, &w.test)?;
    println!(
        "bk-infer demo: B = {}, N = {}, z = {}, v ~ N(0, 1), {} calibration batches, held-out test batch; errors vs the f64 oracle",
        a.rows,
        a.n,
        p.z(),
        a.batches
    );
    println!();
    println!(
        "| {:<14} | {:<13} | {:>10} | {:>9} | {:>7} | {:>9} | {:>6} | {:>9} | {:>8} | device",
        "mode", "method", "rel err %", "MAE", "SNR dB", "bytes", "compr.", "time", "Gelem/s"
    );
    println!("|{}", "---|".repeat(10));
    let mut rows: Vec<(String, String, QuantPlan)> = vec![("fp32".into(), "-".into(), QuantPlan::fp32())];
    for (bits, label) in [(Bits::Int8, "int8".to_string()), (Bits::Int4, format!("int4-g{}", a.group_size))] {
        let group = if bits == Bits::Int8 { 1 } else { a.group_size };
        for method in [Method::Absmax, Method::DEFAULT] {
            let mut cal = Calibrator::new(p.clone(), CalibrationConfig::both(bits, group, method))?;
            for batch in &w.calibration {
                cal.collect(backend.as_ref(), batch)?;
            }
            let name = if method == Method::Absmax { "absmax (seed)".to_string() } else { method.to_string() };
            rows.push((label.clone(), name, cal.end()?.plan));
        }
    }
    for (mode, method, plan) in &rows {
        print_row(backend.as_ref(), &p, plan, &w.test, &exact, &opts, a.reps, mode, method)?;
    }
    println!();
    println!("rel err % = mean|f_q − f| / mean|f| × 100 over f = (Re G, Im G) (the seed's metric; seed: INT8 0.55 %, INT4 12.65 %).");
    println!("bytes = v + G as stored (codes + scales + zero points); compr. = vs f32 v + complex64 G; time = median backend call.");
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn print_row(
    backend: &dyn Backend,
    p: &bk_infer::Problem,
    plan: &QuantPlan,
    v: &[f32],
    exact: &[num_complex::Complex64],
    opts: &bk_infer::backend::SolveOptions,
    reps: usize,
    mode: &str,
    method: &str,
) -> Result<()> {
    let e = ptq::evaluate(backend, p, plan, v, exact, opts, reps)?;
    println!(
        "| {:<14} | {:<13} | {:>10.4} | {:>9.3e} | {:>7.1} | {:>9} | {:>5.2}x | {:>9} | {:>8.3} | {}",
        mode,
        method,
        e.stats.rel_pct,
        e.stats.mae,
        e.stats.snr_db,
        bytes(e.bytes()),
        e.compression,
        duration(e.seconds),
        e.gelem_per_s,
        backend.device()
    );
    Ok(())
}
