//! The benchmark harness behind `bk-infer bench`: copy bandwidth first, then shapes × formats
//! on a backend, each with time (median, min, max), throughput, effective bandwidth against the
//! measured copy bandwidth, and the error against the f64 oracle on a subset of rows.

use crate::backend::{Backend, Compute, GFormat, GOutput, SolveOptions, VInput};
use crate::error::Result;
use crate::problem::Problem;
use crate::quant::{AffineParams, Bits, ComplexQuant, QTensor, QuantSpec, TensorQuant};
use crate::reference;
use crate::stats::ErrorStats;
use crate::workload::{Potential, Rng};
use num_complex::Complex64;
use std::fmt::Write as _;

/// Storage of v in a case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InFmt {
    F32,
    Int8,
    /// INT4 in groups of 128 with zero points.
    Int4,
}

/// Storage of G in a case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutFmt {
    C64,
    Int8,
    Int4,
}

impl InFmt {
    pub fn label(self) -> &'static str {
        match self {
            InFmt::F32 => "f32",
            InFmt::Int8 => "int8",
            InFmt::Int4 => "int4-g128",
        }
    }
}

impl OutFmt {
    pub fn label(self) -> &'static str {
        match self {
            OutFmt::C64 => "c64",
            OutFmt::Int8 => "int8",
            OutFmt::Int4 => "int4-g128",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Case {
    pub rows: usize,
    pub n: usize,
    pub input: InFmt,
    pub output: OutFmt,
}

/// The sweep: the latency-bound shapes ResNet-BK runs (one call per layer), very long rows,
/// and large batches (≥ 32 M elements, or 4 M with `quick`) in every format pair.
pub fn suite(quick: bool) -> Vec<Case> {
    let mut cases = Vec::new();
    let fmts = [
        (InFmt::F32, OutFmt::C64),
        (InFmt::Int8, OutFmt::C64),
        (InFmt::Int4, OutFmt::C64),
        (InFmt::Int8, OutFmt::Int8),
        (InFmt::Int4, OutFmt::Int4),
    ];
    for &(rows, n) in &[(1, 512), (8, 512), (32, 128), (16, 2048), (16, 4096), (2, 8192)] {
        cases.push(Case { rows, n, input: InFmt::F32, output: OutFmt::C64 });
    }
    cases.push(Case { rows: 1, n: if quick { 1 << 18 } else { 1 << 20 }, input: InFmt::F32, output: OutFmt::C64 });
    let large: &[(usize, usize)] = if quick { &[(8192, 512), (1024, 4096)] } else { &[(65536, 512), (8192, 4096), (4096, 8192)] };
    for &(rows, n) in large {
        for &(input, output) in &fmts {
            cases.push(Case { rows, n, input, output });
        }
    }
    cases
}

/// One measured case.
#[derive(Clone, Debug)]
pub struct Measurement {
    pub case: Case,
    pub backend: String,
    pub device: String,
    pub median_s: f64,
    pub min_s: f64,
    pub max_s: f64,
    /// Bytes read (codes + scales + zero points of v) plus bytes written (G as stored).
    pub bytes: usize,
    pub gelem_per_s: f64,
    pub gb_per_s: f64,
    /// Effective bandwidth as a percentage of the measured copy bandwidth.
    pub pct_copy: f64,
    /// Relative L2 error of G (dequantized) against the f64 oracle on the same (dequantized)
    /// input, over the first rows; includes G's own quantization error for quantized outputs.
    pub rel_l2: f64,
    pub rows_checked: usize,
}

/// Quantization parameters fitted to data (per-group min/max), for benchmarking inputs.
fn fitted(spec: QuantSpec, x: &[f32], rows: usize, n: usize) -> TensorQuant {
    let g = spec.groups(n);
    let mut lo = vec![f32::INFINITY; g];
    let mut hi = vec![f32::NEG_INFINITY; g];
    for row in x.chunks(n).take(rows) {
        for (i, &v) in row.iter().enumerate() {
            let j = i / spec.group_size;
            lo[j] = lo[j].min(v);
            hi[j] = hi[j].max(v);
        }
    }
    let pz: Vec<(f32, i16)> = lo.iter().zip(&hi).map(|(&a, &b)| AffineParams::from_range(&spec, a, b)).collect();
    TensorQuant::new_static(
        spec,
        AffineParams { scale: pz.iter().map(|p| p.0).collect(), zero: (!spec.symmetric).then(|| pz.iter().map(|p| p.1).collect()) },
    )
}

/// Runs one case: `sets` random input sets rotated over `reps` timed calls.
pub fn measure(backend: &dyn Backend, case: Case, copy_bw: f64, reps: usize, sets: usize, seed: u64) -> Result<Measurement> {
    let Case { rows, n, input, output } = case;
    let p = Problem::laplacian(n, Complex64::new(0.0, 1.0))?;
    let mut rng = Rng::new(seed);
    let data: Vec<Vec<f32>> = (0..sets.max(1)).map(|_| Potential::SEED.sample(&mut rng, rows, n)).collect();
    let fit_rows = rows.min(64);
    let quantized: Vec<QTensor> = match input {
        InFmt::F32 => Vec::new(),
        InFmt::Int8 | InFmt::Int4 => {
            let spec = match input {
                InFmt::Int8 => QuantSpec::for_v(Bits::Int8, 1),
                _ => QuantSpec::for_v(Bits::Int4, 128),
            };
            let tq = fitted(spec, &data[0], fit_rows, n);
            data.iter().map(|d| QTensor::quantize("v", &tq, d, rows, n)).collect::<Result<_>>()?
        }
    };
    let inputs: Vec<VInput<'_>> = match input {
        InFmt::F32 => data.iter().map(|d| VInput::F32(d)).collect(),
        _ => quantized.iter().map(VInput::Quant).collect(),
    };
    let opts = SolveOptions { compute: Compute::F32, ..Default::default() };
    let fmt = match output {
        OutFmt::C64 => GFormat::C64,
        OutFmt::Int8 | OutFmt::Int4 => {
            let spec = match output {
                OutFmt::Int8 => QuantSpec::for_g(Bits::Int8, 1),
                _ => QuantSpec::for_g(Bits::Int4, 128),
            };
            let sample = &data[0][..fit_rows * n];
            let g = backend.solve(&p, VInput::F32(sample), &GFormat::C64, &opts)?.g.to_c64();
            let re: Vec<f32> = g.iter().map(|c| c.re).collect();
            let im: Vec<f32> = g.iter().map(|c| c.im).collect();
            GFormat::Quant(ComplexQuant { re: fitted(spec, &re, fit_rows, n), im: fitted(spec, &im, fit_rows, n) })
        }
    };

    let mut times = backend.time_solves(&p, &inputs, &fmt, &opts, reps.max(1))?;
    times.sort_by(f64::total_cmp);

    // Exactness on the first rows: the oracle on the very input the backend saw.
    let check = rows.min(16);
    let first: Vec<f32> = match inputs[0] {
        VInput::Quant(q) => q.slice_rows(0, check).dequantize(),
        _ => data[0][..check * n].to_vec(),
    };
    let exact = reference::solve_batch_f32(&p, &first)?;
    let mut out = GOutput::alloc(&fmt, rows, n)?;
    backend.solve_into(&p, inputs[0], &mut out, &opts)?;
    let got = out.to_c128();
    let rel_l2 = ErrorStats::compare(&got[..check * n], &exact).rel_l2;

    let bytes = inputs[0].stored_bytes() + out.stored_bytes();
    let median = times[times.len() / 2];
    let gb = bytes as f64 / median / 1e9;
    Ok(Measurement {
        case,
        backend: backend.name().to_string(),
        device: backend.device(),
        median_s: median,
        min_s: times[0],
        max_s: times[times.len() - 1],
        bytes,
        gelem_per_s: (rows * n) as f64 / median / 1e9,
        gb_per_s: gb,
        pct_copy: 100.0 * gb * 1e9 / copy_bw,
        rel_l2,
        rows_checked: check,
    })
}

/// Timed repetitions for a case: enough for a stable median, bounded in total work.
pub fn reps_for(case: &Case, quick: bool) -> usize {
    let elems = case.rows * case.n;
    let budget: usize = if quick { 20_000_000 } else { 200_000_000 };
    (budget / elems.max(1)).clamp(5, if quick { 200 } else { 2000 })
}

fn fmt_time(s: f64) -> String {
    if s >= 1e-3 {
        format!("{:.3} ms", s * 1e3)
    } else {
        format!("{:.1} µs", s * 1e6)
    }
}

/// The results as a markdown table (the copy bandwidth in the heading).
pub fn markdown(ms: &[Measurement], copy_bw: f64) -> String {
    let mut s = String::new();
    if let Some(m) = ms.first() {
        let _ = writeln!(s, "device: {} ({}); copy bandwidth {:.1} GB/s (read + write)\n", m.device, m.backend, copy_bw / 1e9);
    }
    let _ = writeln!(s, "| B | N | v | G | median | min | max | Gelem/s | GB/s | % copy | rel L2 vs f64 |");
    let _ = writeln!(s, "|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for m in ms {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {:.3} | {:.1} | {:.0} % | {:.1e} |",
            m.case.rows,
            m.case.n,
            m.case.input.label(),
            m.case.output.label(),
            fmt_time(m.median_s),
            fmt_time(m.min_s),
            fmt_time(m.max_s),
            m.gelem_per_s,
            m.gb_per_s,
            m.pct_copy,
            m.rel_l2
        );
    }
    s
}

pub fn csv(ms: &[Measurement], copy_bw: f64) -> String {
    let mut s = String::from("backend,device,rows,n,v,g,median_s,min_s,max_s,bytes,gelem_per_s,gb_per_s,copy_gb_per_s,pct_copy,rel_l2\n");
    for m in ms {
        let _ = writeln!(
            s,
            "{},\"{}\",{},{},{},{},{:e},{:e},{:e},{},{:.6},{:.3},{:.3},{:.2},{:e}",
            m.backend,
            m.device.replace('"', "'"),
            m.case.rows,
            m.case.n,
            m.case.input.label(),
            m.case.output.label(),
            m.median_s,
            m.min_s,
            m.max_s,
            m.bytes,
            m.gelem_per_s,
            m.gb_per_s,
            copy_bw / 1e9,
            m.pct_copy,
            m.rel_l2
        );
    }
    s
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// JSON number, with non-finite values as null (JSON has no NaN).
fn json_num(x: f64) -> String {
    if x.is_finite() {
        format!("{x:e}")
    } else {
        "null".into()
    }
}

pub fn json(ms: &[Measurement], copy_bw: f64) -> String {
    let rows: Vec<String> = ms
        .iter()
        .map(|m| {
            format!(
                "    {{\"backend\": {}, \"device\": {}, \"rows\": {}, \"n\": {}, \"v\": {}, \"g\": {}, \"median_s\": {}, \"min_s\": {}, \"max_s\": {}, \"bytes\": {}, \"gelem_per_s\": {}, \"gb_per_s\": {}, \"pct_copy\": {}, \"rel_l2\": {}}}",
                json_str(&m.backend),
                json_str(&m.device),
                m.case.rows,
                m.case.n,
                json_str(m.case.input.label()),
                json_str(m.case.output.label()),
                json_num(m.median_s),
                json_num(m.min_s),
                json_num(m.max_s),
                m.bytes,
                json_num(m.gelem_per_s),
                json_num(m.gb_per_s),
                json_num(m.pct_copy),
                json_num(m.rel_l2)
            )
        })
        .collect();
    format!("{{\n  \"copy_bandwidth_bytes_per_s\": {},\n  \"results\": [\n{}\n  ]\n}}\n", json_num(copy_bw), rows.join(",\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::CpuBackend;

    #[test]
    fn a_small_case_measures_and_formats() {
        let cpu = CpuBackend::new();
        let m = measure(&cpu, Case { rows: 9, n: 300, input: InFmt::Int4, output: OutFmt::Int4 }, 1e10, 3, 2, 1).unwrap();
        assert!(m.median_s > 0.0 && m.min_s <= m.median_s && m.median_s <= m.max_s);
        // 9 rows × 150 code bytes + 3 groups × 6 bytes for v; twice that for G.
        assert_eq!(m.bytes, (9 * 150 + 18) * 3);
        assert!(m.rel_l2 < 0.2, "INT4 output error {}", m.rel_l2);
        let f = measure(&cpu, Case { rows: 9, n: 300, input: InFmt::F32, output: OutFmt::C64 }, 1e10, 3, 2, 1).unwrap();
        assert!(f.rel_l2 < 1e-6);
        let md = markdown(&[m.clone(), f.clone()], 1e10);
        assert!(md.contains("| 9 | 300 | int4-g128 | int4-g128 |"), "{md}");
        assert_eq!(csv(std::slice::from_ref(&m), 1e10).lines().count(), 2);
        assert!(json(&[m, f], 1e10).contains("\"results\""));
    }
}
