//! A short GPU benchmark for the GPU bundle: the issue-4 workloads in each format, kernel time
//! (device events, all launches of a call) and end-to-end time (upload + kernels + download
//! through `Backend::solve_into`), medians, with the error against the CPU backend beside them so
//! that a number never comes from a wrong result. `cargo bench --bench gpu`; prints
//! `skipped: <reason>` without a GPU.

#[cfg(not(bk_cuda))]
fn main() {
    println!("skipped: this build has no CUDA kernels (nvcc was not found when it was built)");
}

#[cfg(bk_cuda)]
fn main() {
    bench::run();
}

#[cfg(bk_cuda)]
mod bench {
    use bk_infer::backend::cuda::{CudaBackend, CudaOptions};
    use bk_infer::backend::{Backend, Compute, GFormat, GOutput, SolveOptions, VInput};
    use bk_infer::quant::{AffineParams, Bits, ComplexQuant, QTensor, QuantSpec, TensorQuant};
    use bk_infer::workload::{Potential, Rng};
    use bk_infer::{stats, CpuBackend, Problem};
    use num_complex::Complex64;
    use std::time::Instant;

    /// Issue 4's small calls, its large batches (32 M elements) and one very long row.
    const WORKLOADS: &[(usize, usize)] =
        &[(1, 512), (8, 512), (32, 128), (16, 2048), (16, 4096), (2, 8192), (65536, 512), (4096, 8192), (1, 1 << 20)];
    const REPS: usize = 21;

    fn median(mut x: Vec<f64>) -> f64 {
        x.sort_by(|a, b| a.total_cmp(b));
        x[x.len() / 2]
    }

    /// Static parameters from the per-group range of `x` over all rows.
    fn calibrate(spec: QuantSpec, x: &[f32], rows: usize, n: usize) -> TensorQuant {
        let groups = spec.groups(n);
        let (mut scale, mut zero) = (vec![0f32; groups], vec![0i16; groups]);
        for j in 0..groups {
            let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
            for r in 0..rows {
                for i in j * spec.group_size..((j + 1) * spec.group_size).min(n) {
                    lo = lo.min(x[r * n + i]);
                    hi = hi.max(x[r * n + i]);
                }
            }
            (scale[j], zero[j]) = AffineParams::from_range(&spec, lo, hi);
        }
        TensorQuant::new_static(spec, AffineParams { scale, zero: (!spec.symmetric).then_some(zero) })
    }

    pub fn run() {
        let gpu = match CudaBackend::new(0) {
            Ok(g) => g.with_options(CudaOptions { time_kernels: true, ..Default::default() }),
            Err(e) => {
                println!("skipped: {e}");
                return;
            }
        };
        let cpu = CpuBackend::new();
        println!("device: {}", gpu.device());
        println!(
            "{:<12} {:<14} {:>7} {:>11} {:>11} {:>9} {:>9} {:>10}",
            "B x N", "format", "compute", "kernel us", "e2e us", "Gelem/s", "GB/s", "vs CPU"
        );
        for &(b, n) in WORKLOADS {
            let p = Problem::laplacian(n, Complex64::new(0.0, 1.0)).unwrap();
            let v = Potential::SEED.sample(&mut Rng::new(7), b, n);
            let g32 = cpu.solve(&p, VInput::F32(&v), &GFormat::C64, &SolveOptions::default()).unwrap().g.to_c64();
            let re: Vec<f32> = g32.iter().map(|c| c.re).collect();
            let im: Vec<f32> = g32.iter().map(|c| c.im).collect();
            let q8 = QTensor::quantize("v", &calibrate(QuantSpec::int8_per_channel(), &v, b, n), &v, b, n).unwrap();
            let q4 = QTensor::quantize("v", &calibrate(QuantSpec::int4_groups(128), &v, b, n), &v, b, n).unwrap();
            let o8 = QuantSpec::for_g(Bits::Int8, 1);
            let o4 = QuantSpec::for_g(Bits::Int4, 128);
            let cq8 = ComplexQuant { re: calibrate(o8, &re, b, n), im: calibrate(o8, &im, b, n) };
            let cq4 = ComplexQuant { re: calibrate(o4, &re, b, n), im: calibrate(o4, &im, b, n) };
            // (label, input, output format, compute, bytes per element moved by the kernel)
            let cases: Vec<(&str, VInput<'_>, GFormat, Compute, f64)> = vec![
                ("f32->c64", VInput::F32(&v), GFormat::C64, Compute::F32, 12.0),
                ("f32->c64", VInput::F32(&v), GFormat::C64, Compute::F64, 12.0),
                ("int8->int8", VInput::Quant(&q8), GFormat::Quant(cq8), Compute::F32, 3.0),
                ("int4->int4", VInput::Quant(&q4), GFormat::Quant(cq4), Compute::F32, 1.5),
            ];
            for (label, vin, fmt, compute, bpe) in cases {
                let opts = SolveOptions { compute, ..Default::default() };
                let mut out = GOutput::alloc(&fmt, b, n).unwrap();
                for _ in 0..3 {
                    gpu.solve_into(&p, vin, &mut out, &opts).unwrap();
                }
                let (mut k, mut e) = (vec![], vec![]);
                for _ in 0..REPS {
                    let t = Instant::now();
                    gpu.solve_into(&p, vin, &mut out, &opts).unwrap();
                    e.push(t.elapsed().as_secs_f64() * 1e6);
                    k.push(gpu.last_kernel_ms().unwrap_or(f64::NAN) * 1e3);
                }
                let reference = cpu.solve(&p, vin, &fmt, &opts).unwrap().g.to_c128();
                let err = stats::rel_l2(&out.to_c128(), &reference);
                let (km, em) = (median(k), median(e));
                let elems = (b * n) as f64;
                println!(
                    "{:<12} {:<14} {:>7} {:>11.1} {:>11.1} {:>9.2} {:>9.1} {:>10.2e}",
                    format!("{b}x{n}"),
                    label,
                    format!("{compute:?}").to_lowercase(),
                    km,
                    em,
                    elems / km / 1e3,
                    elems * bpe / km / 1e3,
                    err
                );
            }
        }
    }
}
