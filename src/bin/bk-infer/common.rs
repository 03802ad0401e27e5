//! Options shared by several subcommands, and their conversion to library types.

use anyhow::{bail, Context, Result};
use bk_infer::backend::{self, Backend, Compute, SolveOptions};
use bk_infer::quant::calibrate::Method;
use bk_infer::quant::Bits;
use bk_infer::report::LayerReport;
use bk_infer::{NanPolicy, Problem, H0};
use clap::{Args, ValueEnum};
use num_complex::Complex64;
use std::path::PathBuf;

/// H0 and z.
#[derive(Args, Clone, Debug, Default)]
pub struct ProblemArgs {
    /// Complex shift z as RE,IM (e.g. `--z 0,0.05`). Default 0,1 (z = i).
    #[arg(long, value_name = "RE,IM", allow_hyphen_values = true)]
    pub z: Option<String>,
    /// H0 from a safetensors file with tensors h0_diag [N], h0_super [N-1], h0_sub [N-1].
    /// Default: the discrete Laplacian (diagonal −2, off-diagonals 1).
    #[arg(long, value_name = "H0.safetensors")]
    pub h0: Option<PathBuf>,
}

impl ProblemArgs {
    pub fn z(&self) -> Result<Complex64> {
        match &self.z {
            None => Ok(Complex64::new(0.0, 1.0)),
            Some(s) => parse_z(s),
        }
    }

    /// The problem for sequences of length `n`.
    pub fn problem(&self, n: usize) -> Result<Problem> {
        let z = self.z()?;
        let h0 = match &self.h0 {
            None => H0::laplacian(n),
            Some(path) => {
                let h0 = bk_infer::io::read_h0(path)?;
                if h0.n() != n {
                    bail!("{}: H0 has N = {}, but the potentials have N = {n}", path.display(), h0.n());
                }
                h0
            }
        };
        Ok(Problem::new(h0, z)?)
    }
}

pub fn parse_z(s: &str) -> Result<Complex64> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    let [re, im] = parts[..] else {
        bail!("--z `{s}`: expected RE,IM such as 0,1 or -0.5,0.01");
    };
    let re: f64 = re.parse().with_context(|| format!("--z `{s}`: real part `{re}` is not a number"))?;
    let im: f64 = im.parse().with_context(|| format!("--z `{s}`: imaginary part `{im}` is not a number"))?;
    if !re.is_finite() || !im.is_finite() {
        bail!("--z `{s}` must be finite");
    }
    Ok(Complex64::new(re, im))
}

/// Where and how to compute.
#[derive(Args, Clone, Debug)]
pub struct ExecArgs {
    /// Backend: `auto` uses the GPU when the kernels were built and a GPU is present.
    #[arg(long, default_value = "auto", value_parser = ["auto", "cpu", "cuda"])]
    pub device: String,
    /// Arithmetic: `auto` is f32, switching to f64 for |Im z| < 0.05, non-Hermitian H0 or values
    /// outside the safe f32 range.
    #[arg(long, default_value = "auto", value_parser = ["auto", "f32", "f64"])]
    pub compute: String,
    /// Non-finite potentials: `error` rejects the batch, `zero` replaces them by 0, `propagate`
    /// lets them give NaN rows.
    #[arg(long, default_value = "error", value_parser = ["error", "zero", "propagate"])]
    pub nan_policy: String,
}

impl Default for ExecArgs {
    fn default() -> Self {
        ExecArgs { device: "auto".into(), compute: "auto".into(), nan_policy: "error".into() }
    }
}

impl ExecArgs {
    pub fn backend(&self) -> Result<Box<dyn Backend>> {
        Ok(backend::select(&self.device)?)
    }
    pub fn options(&self) -> Result<SolveOptions> {
        Ok(SolveOptions { compute: self.compute.parse::<Compute>()?, nan_policy: self.nan_policy.parse::<NanPolicy>()? })
    }
}

/// Storage precision of a tensor on the command line.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    Fp32,
    Int8,
    Int4,
}

impl Precision {
    pub fn bits(self) -> Option<Bits> {
        match self {
            Precision::Fp32 => None,
            Precision::Int8 => Some(Bits::Int8),
            Precision::Int4 => Some(Bits::Int4),
        }
    }
}

/// The group size to use: the user's, else [`Method::DYNAMIC_GROUP`] for dynamic quantization,
/// 1 (per channel) for static INT8 and 128 for static INT4.
pub fn group_size_for(bits: Bits, dynamic: bool, user: Option<usize>) -> Result<usize> {
    let g = user.unwrap_or(match (dynamic, bits) {
        (true, _) => Method::DYNAMIC_GROUP,
        (false, Bits::Int8) => 1,
        (false, Bits::Int4) => 128,
    });
    if g == 0 {
        bail!("--group-size must be at least 1");
    }
    Ok(g)
}

pub fn parse_method(s: &str) -> Result<Method> {
    Ok(s.parse::<Method>()?)
}

/// Prints a layer's per-tensor error statistics and stored sizes.
pub fn print_layer_report(r: &LayerReport) {
    println!("layer {}:", r.layer);
    println!(
        "  {:<6} {:<14} {:>10} {:>10} {:>10} {:>8} {:>10} {:>10} {:>9} {:>7} {:>7}",
        "tensor", "format", "rel err %", "rel-L2", "MAE", "SNR dB", "max abs", "bytes", "static B", "bits", "compr."
    );
    for (t, what) in [(&r.v, "(round trip vs v)"), (&r.g, "(vs f64 oracle)")] {
        println!(
            "  {:<6} {:<14} {:>10.4} {:>10.3e} {:>10.3e} {:>8.1} {:>10.3e} {:>10} {:>9} {:>7.3} {:>6.2}x  {what}",
            t.tensor,
            t.format,
            t.stats.rel_pct,
            t.stats.rel_l2,
            t.stats.mae,
            t.stats.snr_db,
            t.stats.max_abs,
            t.bytes,
            t.static_param_bytes,
            t.bits_per_value(),
            t.compression()
        );
    }
    println!(
        "  total  {} stored ({} B, of which {} B static parameters); {:.2}x smaller than f32 v + complex64 G; \
         {:.3} bits per value ({:.3} with static parameters amortized)",
        bytes(r.bytes()),
        r.bytes(),
        r.v.static_param_bytes + r.g.static_param_bytes,
        r.compression(),
        r.bits_per_value(),
        r.bits_per_value_amortized()
    );
    println!("  h0     {} ({} B, stored once in the model)", r.h0_format, r.h0_bytes);
}

/// Human-readable byte counts.
pub fn bytes(n: usize) -> String {
    match n {
        n if n >= 10 << 20 => format!("{:.1} MiB", n as f64 / (1 << 20) as f64),
        n if n >= 10 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

/// Human-readable durations.
pub fn duration(s: f64) -> String {
    match s {
        s if s >= 1.0 => format!("{s:.2} s"),
        s if s >= 1e-3 => format!("{:.2} ms", s * 1e3),
        s => format!("{:.1} µs", s * 1e6),
    }
}
