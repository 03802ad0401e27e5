//! `bk-infer`: the command-line front end. Library errors are typed; here they become anyhow
//! errors with context and a non-zero exit.

mod bench;
mod calibrate;
mod common;
mod info;
mod infer;
mod mixed;
mod plot;
mod qat;
mod run;
mod sweep;

use clap::{Parser, Subcommand};

const ABOUT: &str = "Exact, quantized Birman–Schwinger (BK) core of ResNet-BK.

For a batch of real potentials v (B rows × N positions), a tridiagonal H0 shared by all rows
(default: the discrete Laplacian, diagonal −2, off-diagonals 1) and a complex shift z (default i),
computes per row G_i = [(H0 + diag(v) − z I)^−1]_ii with the O(N) pivot recursion, with v and G
optionally stored in INT8 (per position) or INT4 (groups along the sequence).

Typical flow:
  bk-infer                                          # the embedded demo (same as `bk-infer run`)
  bk-infer calibrate --input cal.npy --precision int4 --output m.safetensors
  bk-infer infer --input v.npy --model m.safetensors --output g.npy --stats
  bk-infer sweep --workload seed --output sweep      # every precision × method: CSV + graph
  bk-infer info                                     # backends, kernels, devices";

#[derive(Parser)]
#[command(name = "bk-infer", version, about = "Exact, quantized BK core of ResNet-BK (CPU and CUDA)", long_about = ABOUT)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// The embedded demo: the seed's workload in fp32, INT8 and INT4, with error, size and speed.
    Run(run::Args),
    /// Calibrate quantization scales on potentials from a .npy file and write a model file.
    Calibrate(calibrate::Args),
    /// Compute G for potentials from a .npy file, in fp32 or with a model's quantization.
    Infer(infer::Args),
    /// Every precision × calibration method on a workload: table, CSV and robustness graph
    /// (relative error against bits per value, SVG and PNG).
    Sweep(sweep::Args),
    /// Version, backends, compiled kernels and visible devices.
    Info(info::Args),
    /// Benchmark: copy bandwidth, then shapes × formats with time, throughput and error.
    Bench(bench::Args),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.cmd {
        None => run::main(run::Args::default()),
        Some(Cmd::Run(a)) => run::main(a),
        Some(Cmd::Calibrate(a)) => calibrate::main(a),
        Some(Cmd::Infer(a)) => infer::main(a),
        Some(Cmd::Sweep(a)) => sweep::main(a),
        Some(Cmd::Info(a)) => info::main(a),
        Some(Cmd::Bench(a)) => bench::main(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
