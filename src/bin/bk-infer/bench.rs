//! `bk-infer bench`: copy bandwidth first, then shapes × formats, as a markdown table (and JSON
//! or CSV files).

use crate::common::ExecArgs;
use anyhow::{Context, Result};
use bk_infer::bench;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Smaller large-batch shapes and fewer repetitions (a minute on a laptop-class CPU).
    #[arg(long)]
    pub quick: bool,
    /// Also write the results as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Also write the results as CSV.
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
    /// Input sets rotated through the timed calls (so repeats do not measure a warm cache).
    #[arg(long, default_value_t = 3)]
    pub sets: usize,
    /// Only cases whose label (e.g. `8x512 f32 c64`) contains this text.
    #[arg(long)]
    pub filter: Option<String>,
    #[command(flatten)]
    pub exec: ExecArgs,
}

pub fn main(a: Args) -> Result<()> {
    let backend = a.exec.backend()?;
    let copy_bw = backend.copy_bandwidth(1 << 30).context("measuring copy bandwidth")?;
    eprintln!("{}: copy bandwidth {:.1} GB/s (read + write)", backend.device(), copy_bw / 1e9);
    let mut results = Vec::new();
    for (k, case) in bench::suite(a.quick).into_iter().enumerate() {
        let label = format!("{}x{} {} {}", case.rows, case.n, case.input.label(), case.output.label());
        if a.filter.as_deref().is_some_and(|f| !label.contains(f)) {
            continue;
        }
        let reps = bench::reps_for(&case, a.quick);
        let m = bench::measure(backend.as_ref(), case, copy_bw, reps, a.sets, k as u64)
            .with_context(|| format!("benchmark case {label}"))?;
        eprintln!("  {label}: {:.1} µs median ({reps} reps)", m.median_s * 1e6);
        results.push(m);
    }
    print!("{}", bench::markdown(&results, copy_bw));
    if let Some(path) = &a.json {
        std::fs::write(path, bench::json(&results, copy_bw)).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &a.csv {
        std::fs::write(path, bench::csv(&results, copy_bw)).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
