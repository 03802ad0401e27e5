//! CPU backend throughput (criterion). `cargo bench --bench cpu`.
use bk_infer::backend::{Backend, Compute, CpuBackend, GFormat, GOutput, SolveOptions, VInput};
use bk_infer::workload::{Potential, Rng};
use bk_infer::Problem;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use num_complex::Complex64;

fn solve(c: &mut Criterion) {
    let cpu = CpuBackend::new();
    let mut group = c.benchmark_group("cpu_solve_f32_c64");
    for &(rows, n) in &[
        (8usize, 512usize),
        (4096, 512),
        (256, 512),
        (32, 128),
        (16, 4096),
        // Few long rows: the chunked path.
        (1, 8192),
        (1, 65536),
    ] {
        let p = Problem::laplacian(n, Complex64::new(0.0, 1.0)).unwrap();
        let v = Potential::SEED.sample(&mut Rng::new(7), rows, n);
        let opts = SolveOptions {
            compute: Compute::F32,
            ..Default::default()
        };
        group.throughput(Throughput::Elements((rows * n) as u64));
        // The output buffer is reused across calls, as an engine does.
        let mut out = GOutput::alloc(&GFormat::C64, rows, n).unwrap();
        group.bench_with_input(
            BenchmarkId::from_parameter(format!("{rows}x{n}")),
            &v,
            |b, v| b.iter(|| cpu.solve_into(&p, VInput::F32(v), &mut out, &opts).unwrap()),
        );
    }
    group.finish();
}

criterion_group!(benches, solve);
criterion_main!(benches);
