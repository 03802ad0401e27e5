mod common;
use bk_infer::backend::*;
use bk_infer::*;
use num_complex::{Complex32, Complex64};

fn plain_f32(p: &Problem, v: &[f32]) -> Vec<Complex64> {
    let n = p.n();
    let z = Complex32::new(p.z().re as f32, p.z().im as f32);
    let mut out = vec![];
    for row in v.chunks(n) {
        let d: Vec<Complex32> = (0..n)
            .map(|i| Complex32::new(p.h0().diag[i] as f32 + row[i], 0.0) - z)
            .collect();
        let k: Vec<f32> = p.k().iter().map(|&x| x as f32).collect();
        let mut a = vec![d[0]; n];
        for i in 1..n {
            a[i] = d[i] - k[i - 1] / a[i - 1];
        }
        let mut b = vec![d[n - 1]; n];
        for i in (0..n - 1).rev() {
            b[i] = d[i] - k[i] / b[i + 1];
        }
        for i in 0..n {
            let g = Complex32::new(1.0, 0.0) / (a[i] + b[i] - d[i]);
            out.push(Complex64::new(g.re as f64, g.im as f64));
        }
    }
    out
}

#[test]
fn quick() {
    let mut rng = bk_infer::workload::Rng::new(1);
    for &(b, n, re, im) in &[
        (8usize, 512usize, 0.0, 1.0f64),
        (33, 100, 0.3, 0.1),
        (16, 4096, 0.0, 0.01),
        (16, 4096, 0.3, 0.01),
        (16, 4096, 0.0, 0.1),
    ] {
        let p = Problem::laplacian(n, Complex64::new(re, im)).unwrap();
        let v = common::normal_f32(&mut rng, b * n, 1.0);
        let exact = reference::solve_batch_f32(&p, &v).unwrap();
        let g = CpuBackend::new()
            .solve(
                &p,
                VInput::F32(&v),
                &GFormat::C64,
                &SolveOptions {
                    compute: Compute::F32,
                    ..Default::default()
                },
            )
            .unwrap();
        let s = stats::rel_l2(&g.g.to_c128(), &exact);
        let pl = stats::rel_l2(&plain_f32(&p, &v), &exact);
        println!("b{b} n{n} z {re}+{im}i: ours {s:.3e} plain {pl:.3e}");
    }
}

#[test]
#[ignore]
fn timing() {
    let cpu = CpuBackend::new();
    for &(rows, n) in &[(4096usize, 512usize), (256, 512), (8, 512)] {
        let p = Problem::laplacian(n, Complex64::new(0.0, 1.0)).unwrap();
        let v = bk_infer::workload::Potential::SEED.sample(&mut bk_infer::workload::Rng::new(7), rows, n);
        let opts = SolveOptions { compute: Compute::F32, ..Default::default() };
        let mut out = GOutput::alloc(&GFormat::C64, rows, n).unwrap();
        let mut times = vec![];
        for _ in 0..300 {
            let t = std::time::Instant::now();
            cpu.solve_into(&p, VInput::F32(&v), &mut out, &opts).unwrap();
            times.push(t.elapsed().as_secs_f64());
        }
        times.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!("{rows}x{n}: min {:.1} us  p10 {:.1} us  med {:.1} us  -> {:.0} Melem/s (p10)", times[0] * 1e6, times[30] * 1e6, times[150] * 1e6, (rows * n) as f64 / times[30] / 1e6);
    }
}

#[test]
#[ignore]
fn timing_quant() {
    use bk_infer::quant::*;
    let cpu = CpuBackend::new();
    let (rows, n) = (8usize, 512usize);
    let p = Problem::laplacian(n, Complex64::new(0.0, 1.0)).unwrap();
    let v = bk_infer::workload::Potential::SEED.sample(&mut bk_infer::workload::Rng::new(7), rows, n);
    let spec = QuantSpec::for_v(Bits::Int8, 1);
    let tq = TensorQuant::new_static(spec, AffineParams { scale: vec![0.03; n], zero: None });
    let q = QTensor::quantize("v", &tq, &v, rows, n).unwrap();
    let gspec = QuantSpec::for_g(Bits::Int8, 1);
    let gq = TensorQuant::new_static(gspec, AffineParams { scale: vec![0.003; n], zero: Some(vec![0; n]) });
    let opts = SolveOptions::default();
    for (name, input, fmt) in [("q->c64", VInput::Quant(&q), GFormat::C64), ("f32->q", VInput::F32(&v), GFormat::Quant(ComplexQuant { re: gq.clone(), im: gq.clone() }))] {
        let mut out = GOutput::alloc(&fmt, rows, n).unwrap();
        let mut times = vec![];
        for _ in 0..20000 {
            let t = std::time::Instant::now();
            cpu.solve_into(&p, input, &mut out, &opts).unwrap();
            times.push(t.elapsed().as_secs_f64());
        }
        times.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!("{name}: min {:.1} us med {:.1} us", times[0] * 1e6, times[10000] * 1e6);
    }
}
