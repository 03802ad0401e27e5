//! The CUDA backend against the f64 oracle and the CPU backend, for every input format, output
//! format and compute mode. Every test that needs a GPU prints `skipped: <reason>` and returns
//! when the build has no kernels or the machine has no usable GPU, so `cargo test` passes
//! everywhere; the tests that need only the build (kernel names, no-driver behaviour) always run.

mod common;

#[cfg(not(bk_cuda))]
#[test]
fn gpu_tests_need_kernels() {
    println!("skipped: this build has no CUDA kernels (nvcc was not found when it was built)");
    assert!(bk_infer::backend::select("cuda").is_err());
    assert!(bk_infer::backend::cuda_info()[0].contains("none"));
}

#[cfg(bk_cuda)]
mod cuda {
    use super::common::{self, tol};
    use bk_infer::backend::cuda::{all_kernel_names, driver_present, CudaBackend, CudaOptions, ARCHS, FATBINS};
    use bk_infer::backend::{select, Backend, Compute, GFormat, GOutput, SolveOptions, Solved, VInput};
    use bk_infer::quant::{AffineParams, Bits, ComplexQuant, QTensor, QuantSpec, TensorQuant};
    use bk_infer::workload::Rng;
    use bk_infer::{reference, stats, BkError, CpuBackend, NanPolicy, Problem, H0};
    use num_complex::{Complex32, Complex64};
    use std::collections::BTreeSet;

    /// The GPU backend, or None after printing why the test is skipped. With BK_REQUIRE_GPU=1
    /// (the GPU bundle's run.sh) a missing GPU fails the test instead.
    fn gpu() -> Option<CudaBackend> {
        match CudaBackend::new(0) {
            Ok(b) => Some(b),
            Err(e) if std::env::var("BK_REQUIRE_GPU").is_ok_and(|v| v == "1") => panic!("BK_REQUIRE_GPU=1 but {e}"),
            Err(e) => {
                println!("skipped: {e}");
                None
            }
        }
    }

    fn opts(compute: Compute) -> SolveOptions {
        SolveOptions { compute, ..Default::default() }
    }

    fn run(b: &dyn Backend, p: &Problem, v: VInput<'_>, fmt: &GFormat, compute: Compute) -> Solved {
        b.solve(p, v, fmt, &opts(compute)).unwrap_or_else(|e| panic!("{} failed: {e}", b.name()))
    }

    fn c128(g: &GOutput) -> Vec<Complex64> {
        g.to_c128()
    }

    /// Static parameters covering the per-group min/max of `x` over all rows.
    fn calibrate(spec: QuantSpec, x: &[f32], rows: usize, n: usize) -> TensorQuant {
        if spec.dynamic {
            return TensorQuant::dynamic(spec);
        }
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

    fn spec(bits: Bits, group_size: usize, symmetric: bool, dynamic: bool) -> QuantSpec {
        QuantSpec { bits, group_size, symmetric, dynamic }
    }

    /// Input formats exercised everywhere: (label, spec) with None for plain f32.
    fn input_specs() -> Vec<(&'static str, Option<QuantSpec>)> {
        vec![
            ("f32", None),
            ("int8-per-channel", Some(QuantSpec::int8_per_channel())),
            ("int4-g128", Some(QuantSpec::int4_groups(128))),
            ("int4-g5-dyn", Some(spec(Bits::Int4, 5, false, true))),
            ("int8-g32-dyn-sym", Some(spec(Bits::Int8, 32, true, true))),
        ]
    }

    /// Output formats for the quantized store path.
    fn output_specs() -> Vec<(&'static str, QuantSpec)> {
        vec![
            ("int8-per-channel", spec(Bits::Int8, 1, false, false)),
            ("int8-sym", spec(Bits::Int8, 1, true, false)),
            ("int4-g128", QuantSpec::int4_groups(128)),
            ("int8-dyn-g1", spec(Bits::Int8, 1, false, true)),
            ("int4-dyn-g7", spec(Bits::Int4, 7, false, true)),
            ("int4-dyn-g32", spec(Bits::Int4, 32, false, true)),
            ("int4-dyn-g1000", spec(Bits::Int4, 1000, false, true)),
            ("int8-dyn-sym-g64", spec(Bits::Int8, 64, true, true)),
        ]
    }

    fn quantize_input(s: QuantSpec, v: &[f32], rows: usize, n: usize) -> QTensor {
        QTensor::quantize("v", &calibrate(s, v, rows, n), v, rows, n).unwrap()
    }

    fn complex_quant(s: QuantSpec, g: &[Complex32], rows: usize, n: usize) -> ComplexQuant {
        let re: Vec<f32> = g.iter().map(|c| c.re).collect();
        let im: Vec<f32> = g.iter().map(|c| c.im).collect();
        ComplexQuant { re: calibrate(s, &re, rows, n), im: calibrate(s, &im, rows, n) }
    }

    /// (B, N) pairs: N = 1, primes, around warp/tile/group multiples, one tile (2048 positions per
    /// 256 threads) and many, a long row past 65536, and a batch of 65536 rows.
    const SHAPES: &[(usize, usize)] = &[
        (1, 1),
        (3, 1),
        (2, 2),
        (5, 7),
        (4, 31),
        (3, 32),
        (3, 33),
        (8, 127),
        (8, 512),
        (3, 1000),
        (2, 2047),
        (2, 2048),
        (2, 2049),
        (2, 4096),
        (1, 4097),
        (2, 8191),
        (1, 65536),
        (1, 100_003),
        (65536, 16),
        (4096, 33),
    ];

    #[test]
    fn kernel_names_match_the_compiled_modules() {
        // Runs without a GPU: the fatbins carry their entry points' names in plain text.
        let names: BTreeSet<String> = all_kernel_names().into_iter().collect();
        assert_eq!(names.len(), 4 * 4 * 3 + 3, "4 inputs x 4 outputs x (f32, s64, f64) solves and 3 backward-pass kernels");
        let mut found = BTreeSet::new();
        for (_, bin) in FATBINS {
            let mut i = 0;
            while let Some(at) = bin[i..].windows(6).position(|w| w == b"bk_sol" || w == b"bk_vjp") {
                let start = i + at;
                let end =
                    bin[start..].iter().position(|&c| !(c.is_ascii_alphanumeric() || c == b'_')).map_or(bin.len(), |e| start + e);
                // Whole identifiers only: mangled names embed `bk_solve_params` after a digit.
                let whole = start == 0 || !(bin[start - 1].is_ascii_alphanumeric() || bin[start - 1] == b'_');
                if whole {
                    let id = String::from_utf8_lossy(&bin[start..end]).to_string();
                    found.insert(id.split("_param_").next().unwrap().to_string());
                }
                i = end;
            }
        }
        let missing: Vec<_> = names.difference(&found).collect();
        let extra: Vec<_> = found.difference(&names).collect();
        assert!(missing.is_empty(), "kernels missing from the fatbins: {missing:?}");
        assert!(extra.is_empty(), "entry points no Rust name builds: {extra:?}");
        assert_eq!(ARCHS, &["sm_80", "sm_90", "compute_90"]);
    }

    #[test]
    fn without_a_driver_everything_falls_back_or_errs_cleanly() {
        let info = bk_infer::backend::cuda_info();
        assert!(info[0].contains("sm_80, sm_90, compute_90"), "{info:?}");
        if driver_present() {
            println!("not applicable: a CUDA driver is present (this checks the no-driver path)");
            return;
        }
        assert!(info.iter().any(|l| l.contains("no CUDA driver found")), "{info:?}");
        let e = CudaBackend::new(0).err().expect("no driver: an error, not a backend");
        assert!(matches!(e, BkError::Backend { .. }), "{e}");
        assert!(e.to_string().contains("no CUDA driver"), "{e}");
        assert_eq!(select("auto").unwrap().name(), "cpu");
        assert!(select("cuda").is_err());
    }

    #[test]
    fn every_kernel_loads_and_the_device_is_named() {
        let Some(g) = gpu() else { return };
        assert_eq!(g.loaded_kernels(), all_kernel_names().len());
        let d = g.device();
        assert!(d.contains("sm_"), "{d}");
        println!("device: {d}");
        assert_eq!(select("auto").unwrap().name(), "cuda");
    }

    #[test]
    fn fp32_and_f64_match_the_oracle_over_many_shapes() {
        let Some(g) = gpu() else { return };
        let mut rng = Rng::new(31);
        for &(b, n) in SHAPES {
            let p = common::random_problem(&mut rng, n, 0.1, 10.0);
            let v = common::normal_f32(&mut rng, b * n, 1.0);
            let exact = reference::solve_batch_f32(&p, &v).unwrap();
            for fmt in [GFormat::C64, GFormat::C128] {
                let s = run(&g, &p, VInput::F32(&v), &fmt, Compute::F32);
                let e = stats::rel_l2(&c128(&s.g), &exact);
                assert!(e <= tol::F32_IMZ_GE_0_1, "({b}, {n}) {fmt:?} z = {}: f32 rel L2 {e:.3e}", p.z());
                assert_eq!(s.rows_f64, 0);
            }
            let s = run(&g, &p, VInput::F32(&v), &GFormat::C128, Compute::F64);
            let e = stats::rel_l2(&c128(&s.g), &exact);
            assert!(e <= tol::F64, "({b}, {n}) f64 compute: rel L2 {e:.3e}");
            assert_eq!(s.rows_f64, b);
            // f64 input, f32 compute: rounded on load like the CPU.
            let v64: Vec<f64> = v.iter().map(|&x| x as f64 * (1.0 + 1e-9)).collect();
            let s = run(&g, &p, VInput::F64(&v64), &GFormat::C64, Compute::F32);
            let cpu = run(&CpuBackend::new(), &p, VInput::F64(&v64), &GFormat::C64, Compute::F32);
            let e = stats::rel_l2(&c128(&s.g), &c128(&cpu.g));
            assert!(e <= tol::GPU_VS_CPU, "({b}, {n}) f64 input: GPU vs CPU {e:.3e}");
        }
    }

    #[test]
    fn near_the_axis_no_worse_than_the_cpu_and_auto_is_f64() {
        let Some(g) = gpu() else { return };
        let cpu = CpuBackend::new();
        for (b, n, im, p, v) in common::near_axis_cases() {
            let exact = reference::solve_batch_f32(&p, &v).unwrap();
            let eg = stats::rel_l2(&c128(&run(&g, &p, VInput::F32(&v), &GFormat::C64, Compute::F32).g), &exact);
            let ec = stats::rel_l2(&c128(&run(&cpu, &p, VInput::F32(&v), &GFormat::C64, Compute::F32).g), &exact);
            assert!(
                eg <= ec * tol::GPU_VS_CPU_F32_FACTOR + tol::F32_IMZ_GE_0_1,
                "({b}, {n}) Im z {im}: GPU {eg:.3e} CPU {ec:.3e}"
            );
            let auto = run(&g, &p, VInput::F32(&v), &GFormat::C128, Compute::Auto);
            assert_eq!(auto.rows_f64, b, "Im z = {im} < 0.05 runs in f64");
            let ea = stats::rel_l2(&c128(&auto.g), &exact);
            assert!(ea <= tol::F64, "({b}, {n}) Im z {im}: auto {ea:.3e}");
        }
    }

    #[test]
    fn quantized_inputs_match_the_cpu_on_the_same_codes() {
        let Some(g) = gpu() else { return };
        let cpu = CpuBackend::new();
        let mut rng = Rng::new(33);
        for &(b, n) in &[(8usize, 512usize), (5, 300), (3, 7), (1, 1), (2, 2049), (1, 70_001), (4096, 65)] {
            let p = common::random_problem(&mut rng, n, 0.1, 10.0);
            let v = common::normal_f32(&mut rng, b * n, 1.5);
            for (label, s) in input_specs().into_iter().filter_map(|(l, s)| s.map(|s| (l, s))) {
                let q = quantize_input(s, &v, b, n);
                let exact = reference::solve_batch_f32(&p, &q.dequantize()).unwrap();
                for compute in [Compute::F32, Compute::F64, Compute::Auto] {
                    let gg = run(&g, &p, VInput::Quant(&q), &GFormat::C64, compute);
                    let cc = run(&cpu, &p, VInput::Quant(&q), &GFormat::C64, compute);
                    let e = stats::rel_l2(&c128(&gg.g), &c128(&cc.g));
                    assert!(e <= tol::GPU_VS_CPU, "({b}, {n}) {label} {compute:?}: GPU vs CPU {e:.3e}");
                    let eo = stats::rel_l2(&c128(&gg.g), &exact);
                    assert!(eo <= tol::F32_IMZ_GE_0_1, "({b}, {n}) {label} {compute:?}: vs oracle {eo:.3e}");
                }
                let g64 = run(&g, &p, VInput::Quant(&q), &GFormat::C128, Compute::F64);
                let e = stats::rel_l2(&c128(&g64.g), &exact);
                assert!(e <= tol::F64, "({b}, {n}) {label} f64: vs oracle {e:.3e}");
            }
        }
    }

    #[test]
    fn quantized_outputs_are_the_host_quantization_of_the_gpu_result() {
        // The store path quantizes the same f32 G the complex64 path writes, with the shared scalar
        // rules and, for dynamic formats, min/max computed in the kernel: bit for bit equal.
        let Some(g) = gpu() else { return };
        let mut rng = Rng::new(34);
        for &(b, n) in &[(8usize, 512usize), (3, 301), (2, 1), (2, 2), (4, 4097), (1, 66_000), (300, 130)] {
            let p = common::random_problem(&mut rng, n, 0.1, 10.0);
            let v = common::normal_f32(&mut rng, b * n, 1.0);
            for (in_label, ins) in input_specs() {
                let q;
                let vin = match ins {
                    None => VInput::F32(&v),
                    Some(s) => {
                        q = quantize_input(s, &v, b, n);
                        VInput::Quant(&q)
                    }
                };
                for compute in [Compute::F32, Compute::F64] {
                    let c64 = run(&g, &p, vin, &GFormat::C64, compute).g.to_c64();
                    for (out_label, os) in output_specs() {
                        let cq = complex_quant(os, &c64, b, n);
                        let got = run(&g, &p, vin, &GFormat::Quant(cq.clone()), compute).g;
                        let re: Vec<f32> = c64.iter().map(|c| c.re).collect();
                        let im: Vec<f32> = c64.iter().map(|c| c.im).collect();
                        let want_re = QTensor::quantize("g.re", &cq.re, &re, b, n).unwrap();
                        let want_im = QTensor::quantize("g.im", &cq.im, &im, b, n).unwrap();
                        let GOutput::Quant(got) = got else { panic!("quantized output expected") };
                        let ctx = format!("({b}, {n}) {in_label} -> {out_label} {compute:?}");
                        assert_eq!(got.re.params(), want_re.params(), "{ctx}: re parameters");
                        assert_eq!(got.im.params(), want_im.params(), "{ctx}: im parameters");
                        assert!(got.re.codes() == want_re.codes(), "{ctx}: re codes differ");
                        assert!(got.im.codes() == want_im.codes(), "{ctx}: im codes differ");
                    }
                }
            }
        }
    }

    fn output_bytes(g: &GOutput) -> Vec<u8> {
        match g {
            GOutput::C64(x) => bytemuck::cast_slice(x).to_vec(),
            GOutput::C128(x) => bytemuck::cast_slice(x).to_vec(),
            GOutput::Cf16(x) => x.iter().flat_map(|c| [c.re.to_bits(), c.im.to_bits()]).flat_map(u16::to_le_bytes).collect(),
            GOutput::Cbf16(x) => x.iter().flat_map(|c| [c.re.to_bits(), c.im.to_bits()]).flat_map(u16::to_le_bytes).collect(),
            GOutput::Quant(q) => {
                let mut b = q.re.codes().to_vec();
                b.extend_from_slice(q.im.codes());
                for t in [&q.re, &q.im] {
                    b.extend_from_slice(bytemuck::cast_slice(&t.params().scale));
                    if let Some(z) = &t.params().zero {
                        b.extend_from_slice(bytemuck::cast_slice(z));
                    }
                }
                b
            }
        }
    }

    #[test]
    fn poisoned_outputs_are_all_written_and_runs_repeat_bit_for_bit() {
        let Some(plain) = gpu() else { return };
        let poison = |byte| CudaBackend::new(0).unwrap().with_options(CudaOptions { poison: Some(byte), ..Default::default() });
        let (pa, pb) = (poison(0xff), poison(0x5a));
        let chunked = CudaBackend::new(0).unwrap().with_options(CudaOptions {
            max_chunk_rows: Some(3),
            poison: Some(0xa5),
            ..Default::default()
        });
        let mut rng = Rng::new(35);
        for &(b, n) in &[(7usize, 1usize), (7, 33), (10, 301), (5, 2049), (2, 9000), (3, 70_000)] {
            let p = common::random_problem(&mut rng, n, 0.05, 10.0);
            let v = common::normal_f32(&mut rng, b * n, 1.0);
            let c64 = run(&plain, &p, VInput::F32(&v), &GFormat::C64, Compute::F32).g.to_c64();
            let mut fmts = vec![("c64", GFormat::C64), ("c128", GFormat::C128)];
            for (l, s) in output_specs() {
                fmts.push((l, GFormat::Quant(complex_quant(s, &c64, b, n))));
            }
            for (in_label, ins) in input_specs() {
                let q;
                let vin = match ins {
                    None => VInput::F32(&v),
                    Some(s) => {
                        q = quantize_input(s, &v, b, n);
                        VInput::Quant(&q)
                    }
                };
                for (out_label, fmt) in &fmts {
                    for compute in [Compute::F32, Compute::F64, Compute::Auto] {
                        let ctx = format!("({b}, {n}) {in_label} -> {out_label} {compute:?}");
                        let base = run(&plain, &p, vin, fmt, compute).g;
                        if let GOutput::C64(x) = &base {
                            assert!(x.iter().all(|c| c.re.is_finite() && c.im.is_finite()), "{ctx}: unwritten (NaN) output");
                        }
                        if let GOutput::C128(x) = &base {
                            assert!(x.iter().all(|c| c.re.is_finite() && c.im.is_finite()), "{ctx}: unwritten (NaN) output");
                        }
                        let want = output_bytes(&base);
                        for (what, be) in
                            [("repeat", &plain), ("poison 0xff", &pa), ("poison 0x5a", &pb), ("chunks of 3 rows", &chunked)]
                        {
                            let got = output_bytes(&run(be, &p, vin, fmt, compute).g);
                            assert!(got == want, "{ctx}: {what} differs from the first run");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_large_batch_in_chunks_equals_one_launch() {
        let Some(g) = gpu() else { return };
        let small = CudaBackend::new(0).unwrap().with_options(CudaOptions { max_chunk_rows: Some(10_000), ..Default::default() });
        let mut rng = Rng::new(36);
        let (b, n) = (65536usize, 64usize);
        let p = common::random_problem(&mut rng, n, 0.1, 10.0);
        let v = common::normal_f32(&mut rng, b * n, 1.0);
        let one = run(&g, &p, VInput::F32(&v), &GFormat::C64, Compute::F32).g;
        let many = run(&small, &p, VInput::F32(&v), &GFormat::C64, Compute::F32).g;
        assert!(output_bytes(&one) == output_bytes(&many));
        let exact = reference::solve_batch_f32(&p, &v).unwrap();
        let e = stats::rel_l2(&c128(&one), &exact);
        assert!(e <= tol::F32_IMZ_GE_0_1, "{e:.3e}");
    }

    #[test]
    fn singular_pivots_are_reported_like_the_cpu() {
        let Some(g) = gpu() else { return };
        let cpu = CpuBackend::new();
        // Laplacian, z = 0: d_0 = -2 + v_0 vanishes for v_0 = 2, in row 3 of 6.
        for (n, pos) in [(5usize, 0usize), (300, 0), (3000, 0)] {
            let p = Problem::laplacian(n, Complex64::new(0.0, 0.0)).unwrap();
            let mut rng = Rng::new(37);
            let mut v: Vec<f32> = (0..6 * n).map(|_| 0.5 + rng.uniform() as f32).collect();
            v[3 * n + pos] = 2.0;
            for compute in [Compute::F32, Compute::F64, Compute::Auto] {
                let eg = g.solve(&p, VInput::F32(&v), &GFormat::C64, &opts(compute)).expect_err("singular");
                let ec = cpu.solve(&p, VInput::F32(&v), &GFormat::C64, &opts(compute)).expect_err("singular");
                match (&eg, &ec) {
                    (BkError::SingularPivot { row: rg, pos: pg, .. }, BkError::SingularPivot { row: rc, pos: pc, .. }) => {
                        assert_eq!((rg, pg), (rc, pc), "N = {n} {compute:?}: GPU {eg} vs CPU {ec}");
                        assert_eq!(*rg, 3);
                    }
                    _ => panic!("N = {n} {compute:?}: GPU {eg} / CPU {ec}"),
                }
            }
        }
    }

    #[test]
    fn nan_policies_and_huge_potentials_follow_the_cpu() {
        let Some(g) = gpu() else { return };
        let cpu = CpuBackend::new();
        let (b, n) = (6usize, 257usize);
        let p = Problem::laplacian(n, Complex64::new(0.1, 0.5)).unwrap();
        let mut rng = Rng::new(38);
        let mut v = common::normal_f32(&mut rng, b * n, 1.0);
        v[2 * n + 17] = f32::NAN;
        v[4 * n + 200] = f32::INFINITY;
        for policy in [NanPolicy::Error, NanPolicy::Zero, NanPolicy::Propagate] {
            let o = SolveOptions { compute: Compute::Auto, nan_policy: policy };
            let rg = g.solve(&p, VInput::F32(&v), &GFormat::C64, &o);
            let rc = cpu.solve(&p, VInput::F32(&v), &GFormat::C64, &o);
            match (rg, rc) {
                (Err(eg), Err(ec)) => assert_eq!(eg.to_string(), ec.to_string()),
                (Ok(sg), Ok(sc)) => {
                    let (xg, xc) = (sg.g.to_c64(), sc.g.to_c64());
                    for r in 0..b {
                        let bad = v[r * n..(r + 1) * n].iter().any(|x| !x.is_finite()) && policy == NanPolicy::Propagate;
                        let rowg = &xg[r * n..(r + 1) * n];
                        if bad {
                            assert!(rowg.iter().any(|c| c.re.is_nan() || c.im.is_nan()), "{policy:?} row {r}: NaN expected");
                        } else {
                            let wide =
                                |x: &[Complex32]| x.iter().map(|c| Complex64::new(c.re as f64, c.im as f64)).collect::<Vec<_>>();
                            let e = stats::rel_l2(&wide(rowg), &wide(&xc[r * n..(r + 1) * n]));
                            assert!(e <= tol::GPU_VS_CPU, "{policy:?} row {r}: {e:.3e}");
                        }
                    }
                }
                (a, c) => panic!("{policy:?}: GPU {:?} vs CPU {:?}", a.err(), c.err()),
            }
        }
        // A dequantized potential that overflows (scale near f32::MAX) under each policy.
        let codes = vec![1u8; b * n];
        let mut scale = vec![0.01f32; n];
        scale[99] = 3e38;
        let bigq = QTensor::from_parts(
            "v",
            QuantSpec::int8_per_channel(),
            b,
            n,
            {
                let mut c = codes.clone();
                c[5 * n + 99] = 100;
                c
            },
            AffineParams { scale, zero: None },
        )
        .unwrap();
        for policy in [NanPolicy::Error, NanPolicy::Zero, NanPolicy::Propagate] {
            let o = SolveOptions { compute: Compute::Auto, nan_policy: policy };
            let rg = g.solve(&p, VInput::Quant(&bigq), &GFormat::C64, &o).map(|s| (s.rows_f64, s.g.to_c64()));
            let rc = cpu.solve(&p, VInput::Quant(&bigq), &GFormat::C64, &o).map(|s| s.g.to_c64());
            match (rg, rc) {
                (Err(eg), Err(ec)) => assert_eq!(eg.to_string(), ec.to_string(), "{policy:?}"),
                (Ok((f64rows, xg)), Ok(xc)) => {
                    assert!(f64rows > 0, "{policy:?}: |v| > 1e15 must move rows to f64");
                    let nan_rows = |x: &[Complex32]| {
                        x.chunks(n).map(|r| r.iter().any(|c| c.re.is_nan() || c.im.is_nan())).collect::<Vec<_>>()
                    };
                    assert_eq!(nan_rows(&xg), nan_rows(&xc), "{policy:?}: rows with NaN differ");
                }
                (a, c) => panic!("{policy:?}: GPU {:?} vs CPU {:?}", a.err(), c.err()),
            }
        }
        // Huge but finite potentials: f32 pivots would overflow, so rows move to f64 even in F32.
        let mut v = common::normal_f32(&mut rng, b * n, 1.0);
        v[n + 3] = 1e17;
        for compute in [Compute::F32, Compute::Auto] {
            let s = run(&g, &p, VInput::F32(&v), &GFormat::C128, compute);
            assert_eq!(s.rows_f64, 1, "{compute:?}");
            let exact = reference::solve_batch_f32(&p, &v).unwrap();
            let e = stats::rel_l2(&c128(&s.g), &exact);
            assert!(e <= tol::F32_IMZ_GE_0_1, "{compute:?}: {e:.3e}");
        }
    }

    #[test]
    fn non_hermitian_h0_runs_in_f64_under_auto() {
        let Some(g) = gpu() else { return };
        let mut rng = Rng::new(39);
        let n = 1000;
        let mut h0 = common::random_h0(&mut rng, n);
        for i in (0..n - 1).step_by(3) {
            h0.sub[i] = -h0.sub[i];
        }
        let p = Problem::new(h0, Complex64::new(0.2, 0.3)).unwrap();
        let v = common::normal_f32(&mut rng, 4 * n, 1.0);
        let s = run(&g, &p, VInput::F32(&v), &GFormat::C128, Compute::Auto);
        assert_eq!(s.rows_f64, 4);
        let exact = reference::solve_batch_f32(&p, &v).unwrap();
        let e = stats::rel_l2(&c128(&s.g), &exact);
        assert!(e <= tol::F64, "{e:.3e}");
        let _ = H0::laplacian(1);
    }

    #[test]
    fn bad_calls_are_rejected_before_any_launch() {
        let Some(g) = gpu() else { return };
        let p = Problem::laplacian(16, Complex64::new(0.0, 1.0)).unwrap();
        let v = vec![0.5f32; 33];
        assert!(matches!(g.solve(&p, VInput::F32(&v), &GFormat::C64, &opts(Compute::F32)), Err(BkError::Shape { .. })));
        let mut out = GOutput::alloc(&GFormat::C64, 1, 16).unwrap();
        let v = vec![0.5f32; 32];
        assert!(matches!(g.solve_into(&p, VInput::F32(&v), &mut out, &opts(Compute::F32)), Err(BkError::Shape { .. })));
        let q = quantize_input(QuantSpec::int8_per_channel(), &[0.5f32; 2 * 8], 2, 8);
        assert!(g.solve(&p, VInput::Quant(&q), &GFormat::C64, &opts(Compute::F32)).is_err());
    }

    // ---- the backward pass (kernels/bk_vjp.cuh), with the checks tests/vjp_emu.rs runs on the
    // emulated kernel (tests/common/vjp.rs) ------------------------------------------------------

    #[test]
    fn vjp_matches_the_oracle_and_the_cpu_bit_for_bit_per_element() {
        let Some(g) = gpu() else { return };
        // The emulator's shapes plus what only a GPU runs quickly: many blocks of rows and of the
        // reduction, a long row, N = 1 over many rows.
        let shapes = [
            (1usize, 1usize),
            (3, 2),
            (8, 3),
            (9, 17),
            (33, 129),
            (8, 512),
            (2, 1031),
            (130, 40),
            (4, 4099),
            (1000, 512),
            (70_000, 8),
            (3, 100_003),
            (300, 1),
        ];
        common::vjp::matches_the_oracle_and_the_cpu(&g, &shapes);
    }

    #[test]
    fn vjp_reads_every_input_format_like_the_cpu() {
        let Some(g) = gpu() else { return };
        common::vjp::reads_every_input_format_like_the_cpu(&g);
    }

    #[test]
    fn vjp_poisoned_outputs_are_written_and_sums_do_not_depend_on_the_chunking() {
        let Some(_) = gpu() else { return };
        common::vjp::sums_do_not_depend_on_the_chunking(&|max_chunk_rows, poison| {
            Box::new(CudaBackend::new(0).unwrap().with_options(CudaOptions { max_chunk_rows, poison, ..Default::default() }))
        });
    }

    #[test]
    fn vjp_redoes_rows_in_f64_and_reports_errors_like_the_cpu() {
        let Some(g) = gpu() else { return };
        common::vjp::redoes_rows_in_f64_like_the_cpu(&g);
        common::vjp::reports_errors_like_the_cpu(&g);
    }

    #[test]
    fn qat_core_gives_the_cpu_gradients_on_the_gpu() {
        // The training path end to end: fake-quantized forward and backward through the GPU, the
        // scale gradients equal to the CPU's (the same dL/dv per element, so the same sums).
        let Some(g) = gpu() else { return };
        let cpu = CpuBackend::new();
        let mut rng = Rng::new(41);
        let (rows, n) = (64usize, 512usize);
        let p = Problem::laplacian(n, Complex64::new(0.0, 1.0)).unwrap();
        let v = common::normal_f32(&mut rng, rows * n, 1.0);
        let mut cal = bk_infer::quant::calibrate::Calibrator::new(
            p.clone(),
            bk_infer::quant::calibrate::CalibrationConfig::both(Bits::Int8, 1, bk_infer::quant::calibrate::Method::Mse),
        )
        .unwrap();
        cal.collect(&cpu, &v).unwrap();
        let core = bk_infer::qat::QatCore::from_plan(p.clone(), &cal.end().unwrap().plan).unwrap();
        let o = opts(Compute::F32);
        let (fg, fc) = (core.forward(&g, &v, &o).unwrap(), core.forward(&cpu, &v, &o).unwrap());
        // The raw G agree within f32 rounding (the GPU's parallel form rounds differently), not
        // bit for bit, so an element may fake-quantize one step apart; the backward passes are
        // compared on the GPU's forward, where they must agree exactly.
        let raw = |f: &bk_infer::qat::Forward| -> Vec<num_complex::Complex64> {
            let (re, im) = f.g_raw();
            re.iter().zip(im).map(|(&r, &i)| num_complex::Complex64::new(r as f64, i as f64)).collect()
        };
        let e = stats::rel_l2(&raw(&fg), &raw(&fc));
        assert!(e <= tol::GPU_VS_CPU, "forward: raw G differs from the CPU's by {e:.3e}");
        let gb: Vec<Complex32> = (0..rows * n).map(|_| Complex32::new(rng.normal() as f32, rng.normal() as f32)).collect();
        let (bg, bc) = (core.backward(&g, &fg, &gb, &o).unwrap(), core.backward(&cpu, &fg, &gb, &o).unwrap());
        assert_eq!(bg.v, bc.v, "dL/dv");
        // Parameter gradients: sums of the same terms (in an order rayon picks): within f64 rounding.
        let close = |a: &bk_infer::qat::QuantGrad, b: &bk_infer::qat::QuantGrad, what: &str| {
            let e = common::vjp::rel(&a.scale, &b.scale);
            assert!(e < 1e-12, "{what}: scale gradients differ by {e:.2e}");
            assert_eq!(a.zero.is_some(), b.zero.is_some());
            let e = common::vjp::rel(a.zero.as_deref().unwrap_or(&[]), b.zero.as_deref().unwrap_or(&[]));
            assert!(e < 1e-12, "{what}: zero-point gradients differ by {e:.2e}");
        };
        close(bg.v_quant.as_ref().unwrap(), bc.v_quant.as_ref().unwrap(), "v");
        for (a, b) in bg.g_quant.as_ref().unwrap().iter().zip(bc.g_quant.as_ref().unwrap()) {
            close(a, b, "G");
        }
    }
}
