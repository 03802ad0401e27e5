//! FP16/BF16 storage of v, H0 and G, model files with per-tensor precisions (format v2, v1 still
//! read), and mixed-precision bit allocation.

mod common;
use bk_infer::backend::{self, Backend, Compute, CpuBackend, GFormat, GOutput, SolveOptions, VInput};
use bk_infer::mixed::{allocate, measure_candidates, run_layer, AllocConfig, Candidates, Policy};
use bk_infer::model::{Layer, Model, ModelMeta};
use bk_infer::plan::QuantPlan;
use bk_infer::precision::{bf16_from_f64, f16_from_f64, FloatFormat, H0Storage, Precision, Storage};
use bk_infer::workload::{Rng, SeedWorkload};
use bk_infer::{reference, stats::ErrorStats, Problem};
use half::{bf16, f16};
use num_complex::Complex64;
use std::path::Path;

fn solve(b: &dyn Backend, p: &Problem, v: VInput<'_>, fmt: GFormat, compute: Compute) -> GOutput {
    b.solve(p, v, &fmt, &SolveOptions { compute, ..Default::default() }).unwrap().g
}

fn half_storage_matches_rounding_of_f32(b: &dyn Backend) {
    let mut rng = Rng::new(41);
    for &(rows, n) in &[(8usize, 512usize), (37, 129), (1, 1)] {
        let p = common::random_problem(&mut rng, n, 0.1, 3.0);
        let v = common::normal_f32(&mut rng, rows * n, 1.0);
        let vh: Vec<f16> = v.iter().map(|&x| f16::from_f32(x)).collect();
        let vb: Vec<bf16> = v.iter().map(|&x| bf16::from_f32(x)).collect();
        let wide_h: Vec<f32> = vh.iter().map(|x| x.to_f32()).collect();
        let wide_b: Vec<f32> = vb.iter().map(|x| x.to_f32()).collect();
        for compute in [Compute::F32, Compute::F64] {
            // Half inputs load as their exact f32 values.
            let a = solve(b, &p, VInput::F16(&vh), GFormat::C64, compute);
            assert_eq!(a, solve(b, &p, VInput::F32(&wide_h), GFormat::C64, compute), "{} f16 input", b.name());
            let a = solve(b, &p, VInput::Bf16(&vb), GFormat::C64, compute);
            assert_eq!(a, solve(b, &p, VInput::F32(&wide_b), GFormat::C64, compute), "{} bf16 input", b.name());
            // Half outputs are the computed G rounded once (from f32 in f32 arithmetic, from f64 in f64).
            let exact = match compute {
                Compute::F64 => solve(b, &p, VInput::F32(&v), GFormat::C128, compute).to_c128(),
                _ => solve(b, &p, VInput::F32(&v), GFormat::C64, compute).to_c128(),
            };
            let GOutput::Cf16(h) = solve(b, &p, VInput::F32(&v), GFormat::Cf16, compute) else { panic!("format") };
            assert!(h.iter().zip(&exact).all(|(a, e)| a.re == f16_from_f64(e.re) && a.im == f16_from_f64(e.im)), "{} f16 G", b.name());
            let GOutput::Cbf16(h) = solve(b, &p, VInput::F32(&v), GFormat::Cbf16, compute) else { panic!("format") };
            assert!(h.iter().zip(&exact).all(|(a, e)| a.re == bf16_from_f64(e.re) && a.im == bf16_from_f64(e.im)), "{} bf16 G", b.name());
        }
    }
}

#[test]
fn half_storage_on_cpu_is_exact_widening_and_single_rounding() {
    half_storage_matches_rounding_of_f32(&CpuBackend::new());
}

#[test]
fn half_storage_on_cuda_when_present() {
    let Ok(gpu) = backend::select("cuda") else {
        println!("skipped: no CUDA backend");
        return;
    };
    let p = Problem::laplacian(16, Complex64::new(0.0, 1.0)).unwrap();
    let probe = gpu.solve(&p, VInput::F16(&[f16::ONE; 16]), &GFormat::Cf16, &SolveOptions::default());
    match probe {
        Err(e) => println!("skipped: the CUDA backend has no fp16/bf16 storage yet ({e})"),
        Ok(_) => half_storage_matches_rounding_of_f32(gpu.as_ref()),
    }
}

#[test]
fn fp16_and_bf16_errors_on_the_seed_workload() {
    let w = SeedWorkload::new(0);
    let p = Problem::laplacian(w.n, Complex64::new(0.0, 1.0)).unwrap();
    let exact = reference::solve_batch_f32(&p, &w.test).unwrap();
    let cpu = CpuBackend::new();
    let mut line = String::new();
    for (name, f) in [("fp16", FloatFormat::F16), ("bf16", FloatFormat::Bf16)] {
        for (what, st) in [
            ("v", Storage { v: f, ..Storage::default() }),
            ("G", Storage { g: f, ..Storage::default() }),
            ("v+G", Storage { v: f, g: f, ..Storage::default() }),
        ] {
            let layer = Layer { problem: p.clone(), plan: QuantPlan::fp32(), storage: st };
            let r = run_layer(&cpu, &layer, &w.test, &SolveOptions::default()).unwrap();
            let s = ErrorStats::compare(&r.g.to_c128(), &exact);
            // Unit roundoff: 2^-11 (fp16), 2^-8 (bf16); G's error follows v's with a gain of about 1.
            let bound = if f == FloatFormat::F16 { 0.05 } else { 0.4 };
            assert!(s.rel_pct < bound, "{name} {what}: {s}");
            line += &format!("{name} {what}: {:.4} %  ", s.rel_pct);
        }
    }
    println!("seed workload, held-out batch, rel err vs f64 oracle: {line}");
}

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("bk-infer-mixed-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

fn version_of(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    header.metadata().as_ref().unwrap()["format_version"].clone()
}

#[test]
fn model_files_round_trip_every_precision_and_keep_version_1_when_possible() {
    let mut rng = Rng::new(42);
    let n = 300;
    let p = Problem::new(common::random_h0(&mut rng, n), Complex64::new(0.1, 0.7)).unwrap();
    let v1 = Model::single(p.clone(), QuantPlan::fp32(), ModelMeta::default()).unwrap();
    let path = tmp("v1.safetensors");
    v1.save(&path).unwrap();
    assert_eq!(version_of(&path), "1", "a model without new features stays readable by version-1 readers");
    let back = Model::load(&path).unwrap();
    assert_eq!(back.layers[0].storage, Storage::default());
    assert_eq!(back.layers[0].problem.h0(), p.h0());

    let mut layers = Vec::new();
    for (k, prec) in [Precision::Fp64, Precision::Fp32, Precision::Fp16, Precision::Bf16, Precision::int8(128), Precision::int4(64)].into_iter().enumerate() {
        let (h0s, h0) = H0Storage::encode(p.h0(), prec).unwrap();
        let f = [FloatFormat::F32, FloatFormat::F16, FloatFormat::Bf16][k % 3];
        let g = [FloatFormat::Bf16, FloatFormat::F32, FloatFormat::F16][k % 3];
        layers.push(Layer { problem: Problem::new(h0, p.z()).unwrap(), plan: QuantPlan::fp32(), storage: Storage { v: f, g, h0: h0s } });
    }
    let (h0s, h0) = H0Storage::encode(&bk_infer::H0::laplacian(1), Precision::int4(128)).unwrap();
    layers.push(Layer { problem: Problem::new(h0, p.z()).unwrap(), plan: QuantPlan::fp32(), storage: Storage { h0: h0s, ..Storage::default() } });
    let m = Model { layers, meta: ModelMeta::default() };
    let path = tmp("v2.safetensors");
    m.save(&path).unwrap();
    assert_eq!(version_of(&path), "2");
    let back = Model::load(&path).unwrap();
    for (a, b) in m.layers.iter().zip(&back.layers) {
        assert_eq!(a.storage, b.storage);
        assert_eq!(a.problem.h0(), b.problem.h0(), "{}", a.precision());
        assert_eq!(a.precision(), b.precision());
    }
    // The decoded H0 is close to the original, within each format's resolution.
    for (l, tol) in m.layers.iter().zip([0.0, 1e-7, 1e-3, 8e-3, 2e-2, 0.25]) {
        let d = l.problem.h0().diag.iter().zip(&p.h0().diag).map(|(a, b)| (a - b).abs()).fold(0f64, f64::max);
        assert!(d <= tol * 3.0, "{}: max |Δ h0_diag| {d}", l.precision());
    }
    // A damaged precision key names itself.
    let mut bad = m.clone();
    bad.layers.truncate(1);
    let mut bytes = bad.to_bytes(&path).unwrap();
    let needle = b"\"layers.0.v.precision\":\"fp32\"";
    let pos = bytes.windows(needle.len()).position(|w| w == needle).unwrap();
    bytes[pos + needle.len() - 5..pos + needle.len() - 1].copy_from_slice(b"fp17");
    let e = Model::from_bytes(&bytes, &path).unwrap_err();
    assert!(e.to_string().contains("layers.0.v.precision") && e.to_string().contains("fp17"), "{e}");
}

fn small_setup() -> (Vec<Problem>, Vec<f32>) {
    let mut rng = Rng::new(43);
    let n = 128;
    let problems = vec![
        Problem::laplacian(n, Complex64::new(0.0, 1.0)).unwrap(),
        Problem::new(common::random_h0(&mut rng, n), Complex64::new(0.3, 0.3)).unwrap(),
    ];
    let cal = common::normal_f32(&mut rng, 64 * n, 1.0);
    (problems, cal)
}

#[test]
fn bit_allocation_respects_the_budget_and_is_the_exact_knapsack_optimum() {
    let cpu = CpuBackend::new();
    let (problems, cal) = small_setup();
    let cands = Candidates {
        v: vec![Precision::Fp16, Precision::int8(32), Precision::int4(32)],
        h0: vec![Precision::Fp32, Precision::Bf16, Precision::int4(128)],
        g: vec![Precision::Fp16, Precision::int8(32), Precision::int4(32)],
    };
    let mut last = f64::INFINITY;
    for budget in [5.0, 7.0, 10.0, 16.0] {
        let cfg = AllocConfig { budget_bits: Some(budget), candidates: cands.clone(), ..AllocConfig::default() };
        let a = allocate(&cpu, &problems, &cal, None, &cfg).unwrap();
        assert!(a.bits_per_element <= budget, "{} > {budget}", a.bits_per_element);
        assert!(a.predicted <= last, "more bits never predict more error");
        last = a.predicted;
        // Brute force over all 3^6 combinations of the same measurements.
        let items: Vec<_> = problems.iter().flat_map(|p| measure_candidates(&cpu, p, &cal, [None; 3], &cfg).unwrap()).collect();
        let elems: usize = problems.iter().map(|p| 3 * cfg.rows * p.n() + 3 * p.n() - 2).sum();
        let cap = budget * elems as f64 / 8.0;
        let mut best = f64::INFINITY;
        for code in 0..3usize.pow(6) {
            let (mut bytes, mut err, mut c) = (0usize, 0f64, code);
            for it in &items {
                let x = &it[c % 3];
                c /= 3;
                bytes += x.bytes;
                err += x.rel_mse;
            }
            if bytes as f64 <= cap {
                best = best.min(err);
            }
        }
        assert!((a.predicted - best).abs() <= 1e-12 * best, "budget {budget}: knapsack {} vs brute force {best}", a.predicted);
        // The additive prediction holds for the layers measured as a whole.
        for r in &a.reports {
            let measured = r.measured.rel_l2 * r.measured.rel_l2;
            assert!((measured - r.predicted_rel_mse).abs() <= 0.25 * r.predicted_rel_mse + 1e-9, "{}: measured {measured:e} predicted {:e}", r.precision, r.predicted_rel_mse);
        }
    }
    let cfg = AllocConfig { budget_bits: Some(2.0), candidates: cands, ..AllocConfig::default() };
    let e = allocate(&cpu, &problems, &cal, None, &cfg).unwrap_err();
    assert!(e.to_string().contains("below the smallest model"), "{e}");
}

#[test]
fn policies_pin_precisions_and_the_seed_policy_is_expressible() {
    let cpu = CpuBackend::new();
    let (problems, cal) = small_setup();
    let policy = Policy::parse("seed").unwrap();
    let a = allocate(&cpu, &problems, &cal, Some(&policy), &AllocConfig::default()).unwrap();
    let labels: Vec<String> = a.reports.iter().map(|r| r.precision.to_string()).collect();
    assert_eq!(labels, ["v=int4-g128 h0=int8-g128 g=int8", "v=int4-g128 h0=int8-g128 g=fp16"]);
    // With a budget, the policy's tensors stay pinned and the rest is allocated.
    let policy = Policy::parse("h0=fp64").unwrap();
    let cfg = AllocConfig { budget_bits: Some(12.0), ..AllocConfig::default() };
    let a = allocate(&cpu, &problems, &cal, Some(&policy), &cfg).unwrap();
    assert!(a.reports.iter().all(|r| r.precision.h0 == Precision::Fp64));
    assert!(a.bits_per_element <= 12.0);
}
