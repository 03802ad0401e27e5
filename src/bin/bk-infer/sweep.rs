//! `bk-infer sweep`: every precision × calibration method on one workload, evaluated on a
//! held-out batch against the f64 oracle, as a table, a CSV file and a robustness graph
//! (relative error, log scale, against stored bits per value) in SVG and PNG.

use crate::common::{bytes, print_layer_report, ExecArgs, ProblemArgs};
use crate::plot::{self, Point, Series};
use anyhow::{bail, Context, Result};
use bk_infer::backend::{Backend, GOutput, SolveOptions, VInput};
use bk_infer::mixed;
use bk_infer::precision::{FloatFormat, Storage};
use bk_infer::Layer;
use bk_infer::plan::QuantPlan;
use bk_infer::quant::calibrate::{CalibrationConfig, Calibrator, Method};
use bk_infer::quant::Bits;
use bk_infer::report::{self, LayerReport};
use bk_infer::workload::{Potential, SeedWorkload};
use bk_infer::{reference, Problem};
use indicatif::{ProgressBar, ProgressStyle};
use num_complex::Complex64;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// What the seed reported on its own workload (absmax scales, symmetric G): rel err % at INT8
/// per position and at INT4 in groups of 128.
const SEED_INT8_PCT: f64 = 0.55;
const SEED_INT4_G128_PCT: f64 = 12.65;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Potentials: `seed` (v ~ N(0, 1), the seed's), `heavy` (Student-t, 3 degrees of freedom)
    /// or `bumps` (N(0, 1) plus 4 Gaussian bumps of height 8 per row).
    #[arg(long, default_value = "seed")]
    pub workload: String,
    /// Sequence length N.
    #[arg(long, default_value_t = SeedWorkload::N)]
    pub n: usize,
    /// Rows per batch (calibration batches and the held-out test batch).
    #[arg(long, default_value_t = SeedWorkload::ROWS)]
    pub rows: usize,
    /// Calibration batches.
    #[arg(long, default_value_t = SeedWorkload::CAL_BATCHES)]
    pub batches: usize,
    /// Random seed of the workload.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Group sizes of INT4 and of dynamic quantization.
    #[arg(long, value_delimiter = ',', default_value = "32,64,128,256")]
    pub groups: Vec<usize>,
    /// Methods to run (default: absmax, percentile, mse, minmax, kl, output, dynamic).
    #[arg(long, value_delimiter = ',')]
    pub methods: Option<Vec<String>>,
    /// Output prefix: writes PREFIX.csv, PREFIX.svg and PREFIX.png.
    #[arg(long, short, default_value = "sweep")]
    pub output: PathBuf,
    /// Timed repetitions per configuration (the median is reported).
    #[arg(long, default_value_t = 20)]
    pub reps: usize,
    /// Bits on the graph's axis: `amortized` counts static (per-model) scales once for many
    /// calls, so static INT8 is 8 bits; `per-call` counts them in every batch of --rows rows.
    /// Dynamic scales and zero points are per row and counted either way.
    #[arg(long, default_value = "amortized", value_parser = ["amortized", "per-call"])]
    pub bits: String,
    /// Print the per-tensor report of every configuration, not only the summary table.
    #[arg(long)]
    pub verbose: bool,
    #[command(flatten)]
    pub problem: ProblemArgs,
    #[command(flatten)]
    pub exec: ExecArgs,
}

/// One configuration: storage precision, group size and calibration method.
struct Config {
    /// `fp32`, `fp16`, `bf16`, `int8` or `int4`.
    precision: &'static str,
    group: usize,
    method: Option<Method>,
}

impl Config {
    /// Float storage of v and G when nothing is quantized.
    fn float_format(&self) -> FloatFormat {
        match self.precision {
            "fp16" => FloatFormat::F16,
            "bf16" => FloatFormat::Bf16,
            _ => FloatFormat::F32,
        }
    }
}

impl Config {
    fn method_name(&self) -> String {
        self.method.map_or("-".into(), |m| m.to_string())
    }
}

/// One configuration's result on the held-out batch.
struct Row {
    cfg: Config,
    report: LayerReport,
    seconds: f64,
}

pub fn main(a: Args) -> Result<()> {
    if a.rows == 0 || a.batches == 0 || a.n == 0 {
        bail!("--rows, --batches and --n must be at least 1");
    }
    if let Some(&g) = a.groups.iter().find(|&&g| g == 0) {
        bail!("--groups: group size {g} must be at least 1");
    }
    let pot: Potential = a.workload.parse()?;
    let methods: Vec<Method> = match &a.methods {
        Some(ms) => ms.iter().map(|m| m.parse::<Method>()).collect::<Result<_, _>>()?,
        None => Method::STATIC.iter().copied().chain([Method::Dynamic]).collect(),
    };
    let p = a.problem.problem(a.n)?;
    let backend = a.exec.backend()?;
    let opts = a.exec.options()?;
    let w = SeedWorkload::with(pot, a.rows, a.n, a.batches, a.seed);
    let exact = reference::solve_batch_f32(&p, &w.test)?;

    let configs = configs(&methods, &a.groups);
    let bar = ProgressBar::new(configs.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} {msg}")
            .expect("the template is valid")
            .progress_chars("=> "),
    );
    let mut rows = Vec::with_capacity(configs.len());
    for cfg in configs {
        bar.set_message(format!("{} g{} {}", cfg.precision, cfg.group, cfg.method_name()));
        let row = run_config(backend.as_ref(), &p, &w, &exact, &opts, a.reps, cfg)?;
        if a.verbose {
            bar.suspend(|| {
                println!("{} g{} {}:", row.cfg.precision, row.cfg.group, row.cfg.method_name());
                print_layer_report(&row.report);
            });
        }
        rows.push(row);
        bar.inc(1);
    }
    bar.finish_and_clear();

    let title = format!(
        "bk-infer sweep: {} workload, B = {}, N = {}, z = {}, {} calibration batches, seed {}; held-out batch vs f64 oracle",
        a.workload,
        a.rows,
        a.n,
        p.z(),
        a.batches,
        a.seed
    );
    print_table(&title, &rows, backend.as_ref());
    let prefix = &a.output;
    let csv = with_ext(prefix, "csv");
    std::fs::write(&csv, to_csv(&a, &p, &rows)).with_context(|| format!("writing {}", csv.display()))?;
    let per_call = a.bits == "per-call";
    let (series, seed_points, note) = graph_data(&rows, per_call);
    let caption = format!("{} workload, B = {}, N = {}, z = {} (held-out batch vs f64 oracle)", a.workload, a.rows, a.n, p.z());
    let svg = with_ext(prefix, "svg");
    let png = with_ext(prefix, "png");
    let axis = if per_call {
        format!("stored bits per value (v, Re G, Im G; every scale and zero point counted in each batch of {} rows)", a.rows)
    } else {
        "stored bits per value (v, Re G, Im G; static scales amortized, dynamic ones counted)".to_string()
    };
    plot::svg(&svg, &caption, &axis, &note, &series, &seed_points)?;
    plot::png(&png, &caption, &axis, &note, &series, &seed_points)?;
    println!();
    println!("wrote {}, {} and {}", csv.display(), svg.display(), png.display());
    Ok(())
}

/// FP32, FP16, BF16, then INT8 (static methods per position, dynamic per group size), then
/// INT4 per group size (every method).
fn configs(methods: &[Method], groups: &[usize]) -> Vec<Config> {
    let mut out: Vec<Config> = ["fp32", "fp16", "bf16"].into_iter().map(|precision| Config { precision, group: 0, method: None }).collect();
    for &m in methods.iter().filter(|m| !m.is_dynamic()) {
        out.push(Config { precision: "int8", group: 1, method: Some(m) });
    }
    if methods.iter().any(Method::is_dynamic) {
        for &g in groups {
            out.push(Config { precision: "int8", group: g, method: Some(Method::Dynamic) });
        }
    }
    for &g in groups {
        for &m in methods {
            out.push(Config { precision: "int4", group: g, method: Some(m) });
        }
    }
    out
}

fn run_config(
    backend: &dyn Backend,
    p: &Problem,
    w: &SeedWorkload,
    exact: &[Complex64],
    opts: &SolveOptions,
    reps: usize,
    cfg: Config,
) -> Result<Row> {
    let plan = match cfg.method {
        None => QuantPlan::fp32(),
        Some(m) => {
            let bits = if cfg.precision == "int8" { Bits::Int8 } else { Bits::Int4 };
            let mut cal = Calibrator::new(p.clone(), CalibrationConfig::both(bits, cfg.group, m))?;
            for batch in &w.calibration {
                cal.collect(backend, batch)?;
            }
            cal.end_on(backend)?.plan
        }
    };
    let fmt = cfg.float_format();
    let storage = Storage { v: fmt, g: fmt, ..Storage::default() };
    let layer = Layer { problem: p.clone(), plan: plan.clone(), storage: storage.clone() };
    let run = mixed::run_layer(backend, &layer, &w.test, opts)?;
    let report = report::layer_report(0, p, &plan, &storage, VInput::F32(&w.test), &run.g, exact)?;
    let seconds = time_backend(backend, &layer, &w.test, opts, reps)?;
    Ok(Row { cfg, report, seconds })
}

/// Median seconds of one backend call on the layer's stored input (preparing the input, i.e.
/// quantizing or rounding v, is not included).
fn time_backend(backend: &dyn Backend, layer: &Layer, v: &[f32], opts: &SolveOptions, reps: usize) -> Result<f64> {
    let p = &layer.problem;
    let stored = mixed::StoredV::new(layer, v)?;
    let input = stored.input();
    let fmt = mixed::g_format(layer);
    let mut out = GOutput::alloc(&fmt, v.len() / p.n(), p.n())?;
    let mut times = Vec::with_capacity(reps.max(1));
    for _ in 0..reps.max(1) {
        let t = std::time::Instant::now();
        backend.solve_into(p, input, &mut out, opts)?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

fn print_table(title: &str, rows: &[Row], backend: &dyn Backend) {
    println!("{title}");
    println!("device: {}", backend.device());
    println!();
    println!(
        "| {:<9} | {:>5} | {:<16} | {:>6} | {:>6} | {:>7} | {:>9} | {:>10} | {:>9} | {:>7} | {:>9} | {:>6} |",
        "precision", "group", "method", "bits v", "bits G", "bits", "v err %", "G err %", "MAE", "SNR dB", "bytes", "compr."
    );
    println!("|{}", "---|".repeat(12));
    for r in rows {
        let (v, g) = (&r.report.v, &r.report.g);
        println!(
            "| {:<9} | {:>5} | {:<16} | {:>6.3} | {:>6.3} | {:>7.3} | {:>9.4} | {:>10.4} | {:>9.3e} | {:>7.1} | {:>9} | {:>5.2}x |",
            r.cfg.precision,
            r.cfg.group,
            r.cfg.method_name(),
            v.bits_per_value_amortized(),
            g.bits_per_value_amortized(),
            r.report.bits_per_value_amortized(),
            v.stats.rel_pct,
            g.stats.rel_pct,
            g.stats.mae,
            g.stats.snr_db,
            bytes(r.report.bytes()),
            r.report.compression()
        );
    }
    println!();
    println!("bits = stored bits per real value (v, Re G, Im G), static scales amortized over calls (the CSV also");
    println!("has them counted per call); G err % = the seed's metric vs the f64 oracle on the unquantized v;");
    println!("v err % = round trip of v; bytes and compr. = this batch as stored, static parameters included.");
    println!("The seed reported INT8 {SEED_INT8_PCT} % and INT4-g128 {SEED_INT4_G128_PCT} % (absmax).");
}

fn to_csv(a: &Args, p: &Problem, rows: &[Row]) -> String {
    let mut s = String::from(
        "workload,n,rows,z_re,z_im,precision,group,method,v_format,g_format,bits_v,bits_g,bits,\
         bits_v_per_call,bits_g_per_call,bits_per_call,rel_err_pct,rel_l2,mae,mse,snr_db,max_abs,\
         v_rel_err_pct,v_mae,v_snr_db,bytes_v,bytes_g,bytes,static_param_bytes,compression,seconds\n",
    );
    for r in rows {
        let (v, g) = (&r.report.v, &r.report.g);
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{},{},{},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6e},{:.6e},{:.6e},{:.6e},{:.4},{:.6e},{:.6e},{:.6e},{:.4},{},{},{},{},{:.6},{:.6e}",
            a.workload,
            a.n,
            a.rows,
            p.z().re,
            p.z().im,
            r.cfg.precision,
            r.cfg.group,
            r.cfg.method_name(),
            v.format,
            g.format,
            v.bits_per_value_amortized(),
            g.bits_per_value_amortized(),
            r.report.bits_per_value_amortized(),
            v.bits_per_value(),
            g.bits_per_value(),
            r.report.bits_per_value(),
            g.stats.rel_pct,
            g.stats.rel_l2,
            g.stats.mae,
            g.stats.mse,
            g.stats.snr_db,
            g.stats.max_abs,
            v.stats.rel_pct,
            v.stats.mae,
            v.stats.snr_db,
            v.bytes,
            g.bytes,
            r.report.bytes(),
            v.static_param_bytes + g.static_param_bytes,
            r.report.compression(),
            r.seconds
        );
    }
    s
}

/// One line per method through its (bits, error) points; the seed's reported errors at the
/// bits of its own format (absmax, INT8 per position and INT4 in groups of 128) measured here.
fn graph_data(rows: &[Row], per_call: bool) -> (Vec<Series>, Vec<(Point, String)>, String) {
    let bits = |r: &LayerReport| if per_call { r.bits_per_value() } else { r.bits_per_value_amortized() };
    let mut series: Vec<Series> = Vec::new();
    for r in rows.iter().filter(|r| r.cfg.precision != "fp32") {
        let name = if r.cfg.method.is_some() { r.cfg.method_name() } else { r.cfg.precision.to_string() };
        let pt = Point { bits: bits(&r.report), err_pct: r.report.g.stats.rel_pct };
        let line = usize::from(r.cfg.precision == "int8");
        let s = match series.iter_mut().position(|s| s.name == name) {
            Some(i) => &mut series[i],
            None => {
                series.push(Series { name, lines: vec![Vec::new(), Vec::new()] });
                series.last_mut().expect("just pushed")
            }
        };
        s.lines[line].push(pt);
    }
    for s in &mut series {
        s.lines.retain(|l| !l.is_empty());
        for l in &mut s.lines {
            l.sort_by(|a, b| a.bits.total_cmp(&b.bits));
        }
    }
    let bits_of = |precision: &str, group: usize| {
        rows.iter()
            .find(|r| r.cfg.precision == precision && r.cfg.group == group && r.cfg.method == Some(Method::Absmax))
            .map(|r| bits(&r.report))
    };
    let seed = [("int8", 1, SEED_INT8_PCT, "seed INT8"), ("int4", 128, SEED_INT4_G128_PCT, "seed INT4-g128")]
        .iter()
        .map(|&(prec, g, pct, label)| {
            let bits = bits_of(prec, g).unwrap_or(if prec == "int8" { 8.0 } else { 4.0 });
            (Point { bits, err_pct: pct }, label.to_string())
        })
        .collect();
    let note = rows
        .iter()
        .find(|r| r.cfg.method.is_none())
        .map(|r| format!("fp32: {:.2e} % at {:.0} bits (off the axes)", r.report.g.stats.rel_pct, bits(&r.report)))
        .unwrap_or_default();
    (series, seed, note)
}

fn with_ext(prefix: &Path, ext: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}
