//! Calibration methods against the f64 oracle on held-out data: the seed's absmax numbers
//! reproduced, the targets for static and dynamic quantization on several seeds, the
//! default method never worse than absmax on harder workloads, and true bits per value.
//! Numbers are printed (`cargo test --release --test calibration -- --nocapture`).

mod common;

use bk_infer::backend::{CpuBackend, SolveOptions, VInput};
use bk_infer::plan::QuantPlan;
use bk_infer::precision::Storage;
use bk_infer::quant::calibrate::{CalibrationConfig, Calibrator, Method};
use bk_infer::quant::{Bits, QuantSpec};
use bk_infer::report::{layer_report, LayerReport};
use bk_infer::workload::{Potential, SeedWorkload};
use bk_infer::{ptq, reference, BkError, Model, ModelMeta, Problem};
use common::targets as t;
use num_complex::Complex64;

fn seed_problem(n: usize) -> Problem {
    Problem::laplacian(n, Complex64::new(0.0, 1.0)).unwrap()
}

fn calibrate(p: &Problem, w: &SeedWorkload, cfg: CalibrationConfig) -> QuantPlan {
    let cpu = CpuBackend::new();
    let mut cal = Calibrator::new(p.clone(), cfg).unwrap();
    for b in &w.calibration {
        cal.collect(&cpu, b).unwrap();
    }
    let c = cal.end().unwrap();
    assert_eq!(c.samples, w.calibration.len() * w.rows);
    c.plan
}

/// The plan's run on the held-out batch, reported against the f64 oracle.
fn held_out(p: &Problem, w: &SeedWorkload, plan: &QuantPlan) -> LayerReport {
    let exact = reference::solve_batch_f32(p, &w.test).unwrap();
    let run = ptq::run(&CpuBackend::new(), p, plan, &w.test, &SolveOptions::default()).unwrap();
    layer_report(0, p, plan, &Storage::default(), VInput::F32(&w.test), &run.g, &exact).unwrap()
}

fn err(p: &Problem, w: &SeedWorkload, cfg: CalibrationConfig) -> f64 {
    held_out(p, w, &calibrate(p, w, cfg)).g.stats.rel_pct
}

fn v_only(bits: Bits, group: usize, method: Method) -> CalibrationConfig {
    CalibrationConfig { v: Some(QuantSpec::for_v(bits, group)), g: None, method }
}

#[test]
fn seed_absmax_numbers_are_reproduced() {
    for seed in t::SEEDS {
        let w = SeedWorkload::new(seed);
        let p = seed_problem(w.n);
        let i8 = err(&p, &w, CalibrationConfig::both(Bits::Int8, 1, Method::Absmax));
        let i4 = err(&p, &w, CalibrationConfig::both(Bits::Int4, 128, Method::Absmax));
        println!("seed {seed}: absmax INT8 {i8:.4} %, INT4-g128 {i4:.4} % (seed reported 0.55 / 12.65)");
        let (lo, hi) = t::SEED_ABSMAX_INT8_PCT;
        assert!((lo..=hi).contains(&i8), "seed {seed}: absmax INT8 {i8} outside [{lo}, {hi}]");
        let (lo, hi) = t::SEED_ABSMAX_INT4_G128_PCT;
        assert!((lo..=hi).contains(&i4), "seed {seed}: absmax INT4 {i4} outside [{lo}, {hi}]");
    }
}

#[test]
fn default_static_method_meets_the_targets_on_several_seeds() {
    assert_eq!(Method::DEFAULT, Method::Output);
    for seed in t::SEEDS {
        let w = SeedWorkload::new(seed);
        let p = seed_problem(w.n);
        let i8 = err(&p, &w, CalibrationConfig::both(Bits::Int8, 1, Method::DEFAULT));
        let plan4 = calibrate(&p, &w, CalibrationConfig::both(Bits::Int4, 128, Method::DEFAULT));
        let i4 = held_out(&p, &w, &plan4).g.stats.rel_pct;
        // Only v quantized (`--output-precision fp32`). The input search never looks at G's
        // format, so this is the same v calibration as with G quantized: checked once, then reused.
        let v_plan = QuantPlan { v: plan4.v.clone(), g: None };
        if seed == t::SEEDS[0] {
            assert_eq!(calibrate(&p, &w, v_only(Bits::Int4, 128, Method::DEFAULT)).v, v_plan.v);
        }
        let i4v = held_out(&p, &w, &v_plan).g.stats.rel_pct;
        println!("seed {seed}: {} INT8 {i8:.4} %, INT4-g128 {i4:.4} %, INT4-g128 v only {i4v:.4} %", Method::DEFAULT);
        assert!(i8 <= t::STATIC_INT8_PCT, "seed {seed}: INT8 {i8} > {}", t::STATIC_INT8_PCT);
        assert!(i4 <= t::STATIC_INT4_G128_PCT, "seed {seed}: INT4 {i4} > {}", t::STATIC_INT4_G128_PCT);
        assert!(i4v <= t::STATIC_INT4_G128_V_ONLY_PCT, "seed {seed}: INT4 v only {i4v} > {}", t::STATIC_INT4_G128_V_ONLY_PCT);
    }
}

#[test]
fn dynamic_quantization_meets_the_targets_with_its_true_bits() {
    for seed in t::SEEDS {
        let w = SeedWorkload::new(seed);
        let p = seed_problem(w.n);
        for (bits, target, want_bits) in
            [(Bits::Int8, t::DYNAMIC_INT8_PCT, t::DYNAMIC_INT8_BITS), (Bits::Int4, t::DYNAMIC_INT4_PCT, t::DYNAMIC_INT4_BITS)]
        {
            let plan = calibrate(&p, &w, CalibrationConfig::both(bits, Method::DYNAMIC_GROUP, Method::Dynamic));
            for tq in [plan.v.as_ref().unwrap(), &plan.g.as_ref().unwrap().re, &plan.g.as_ref().unwrap().im] {
                assert!(tq.spec.dynamic && !tq.spec.symmetric && tq.params.is_none(), "{:?}", tq.spec);
            }
            let r = held_out(&p, &w, &plan);
            let e = r.g.stats.rel_pct;
            println!(
                "seed {seed}: dynamic {bits:?} g{}: {e:.4} %, bits per value v {:.3}, G {:.3}",
                Method::DYNAMIC_GROUP,
                r.v.bits_per_value(),
                r.g.bits_per_value()
            );
            assert!(e <= target, "seed {seed}: dynamic {bits:?} {e} > {target}");
            // Dynamic parameters are per row: nothing to amortize, every bit is per call.
            for tr in [&r.v, &r.g] {
                assert_eq!(tr.static_param_bytes, 0);
                assert!((tr.bits_per_value() - want_bits).abs() < 1e-12, "{}: {}", tr.tensor, tr.bits_per_value());
            }
        }
    }
}

/// A workload beside the seed's: potential, N, z.
struct Case {
    name: &'static str,
    pot: Potential,
    n: usize,
    z: Complex64,
}

fn robustness_cases() -> Vec<Case> {
    let gauss = Potential::SEED;
    vec![
        Case { name: "heavy tails (Student-t, 3 dof)", pot: Potential::StudentT { dof: 3.0, sigma: 1.0 }, n: 512, z: Complex64::new(0.0, 1.0) },
        Case { name: "4 bumps of height 8", pot: Potential::Bumps { count: 4, height: 8.0 }, n: 512, z: Complex64::new(0.0, 1.0) },
        Case { name: "Im z = 0.1", pot: gauss, n: 512, z: Complex64::new(0.0, 0.1) },
        Case { name: "Im z = 0.01", pot: gauss, n: 512, z: Complex64::new(0.0, 0.01) },
        Case { name: "Re z = -2 (mid-band), Im z = 0.5", pot: gauss, n: 512, z: Complex64::new(-2.0, 0.5) },
        Case { name: "N = 300 (not a multiple of 128)", pot: gauss, n: 300, z: Complex64::new(0.0, 1.0) },
    ]
}

/// Default method against absmax (and dynamic, for the record) on every robustness case.
fn robustness(seeds: &[u64]) {
    // As many calibration rows as the seed's workload (25 × 32 = 800), and a held-out batch of
    // 32 rows: near the real axis a few resonant positions dominate the error, and 8 rows are
    // too few to rank methods reliably there.
    const ROWS: usize = 32;
    const BATCHES: usize = 25;
    for case in robustness_cases() {
        for &seed in seeds {
            let w = SeedWorkload::with(case.pot, ROWS, case.n, BATCHES, seed);
            let p = Problem::laplacian(case.n, case.z).unwrap();
            for (bits, group) in [(Bits::Int8, 1), (Bits::Int4, 128)] {
                let abs = err(&p, &w, CalibrationConfig::both(bits, group, Method::Absmax));
                let def = err(&p, &w, CalibrationConfig::both(bits, group, Method::DEFAULT));
                let dynamic = err(&p, &w, CalibrationConfig::both(bits, Method::DYNAMIC_GROUP, Method::Dynamic));
                println!(
                    "{:<36} seed {seed} {bits:?}: absmax {abs:8.4} %  {} {def:8.4} %  dynamic-g32 {dynamic:8.4} %",
                    case.name,
                    Method::DEFAULT
                );
                assert!(def.is_finite() && abs.is_finite());
                assert!(def <= abs, "{} seed {seed} {bits:?}: default {def} worse than absmax {abs}", case.name);
            }
        }
    }
}

#[test]
fn default_method_is_never_worse_than_absmax_on_harder_workloads() {
    robustness(&[7]);
}

/// The same on six seeds (about a minute in release):
/// `cargo test --release --test calibration -- --ignored --nocapture`.
#[test]
#[ignore]
fn default_method_is_never_worse_than_absmax_on_six_seeds() {
    robustness(&[0, 1, 2, 3, 4, 5]);
}

#[test]
fn every_method_gives_a_valid_plan_with_a_finite_error_above_fp32() {
    // Small problem, every method: valid plans, errors finite and ordered sensibly against fp32.
    let w = SeedWorkload::with(Potential::SEED, 4, 96, 6, 3);
    let p = seed_problem(w.n);
    let fp32 = held_out(&p, &w, &QuantPlan::fp32()).g.stats.rel_pct;
    assert!(fp32 < 1e-4, "fp32 {fp32}");
    for m in Method::STATIC.into_iter().chain([Method::Dynamic]) {
        for (bits, group) in [(Bits::Int8, 1), (Bits::Int4, 32)] {
            let group = if m.is_dynamic() { Method::DYNAMIC_GROUP } else { group };
            let plan = calibrate(&p, &w, CalibrationConfig::both(bits, group, m));
            plan.validate(w.n).unwrap();
            let v = plan.v.as_ref().unwrap();
            assert_eq!(v.spec, m.adjust(QuantSpec::for_v(bits, group)), "{m}");
            let e = held_out(&p, &w, &plan).g.stats.rel_pct;
            assert!(e.is_finite() && e > fp32 && e < 100.0, "{m} {bits:?}: {e}");
        }
    }
}

#[test]
fn output_calibration_works_from_a_bounded_reservoir_and_round_trips_through_a_model_file() {
    let w = SeedWorkload::with(Potential::SEED, 8, 128, 30, 11);
    let p = seed_problem(w.n);
    let cpu = CpuBackend::new();
    let run = |rows: usize| {
        let mut cal = Calibrator::new(p.clone(), CalibrationConfig::both(Bits::Int4, 32, Method::Output))
            .unwrap()
            .with_reservoir_rows(rows)
            .unwrap();
        for b in &w.calibration {
            cal.collect(&cpu, b).unwrap();
        }
        cal.end().unwrap()
    };
    // 240 rows seen, 64 kept: the search still sees every unit and gives a usable plan.
    let small = run(64);
    assert_eq!(small.samples, 240);
    let e_small = held_out(&p, &w, &small.plan).g.stats.rel_pct;
    let e_full = held_out(&p, &w, &run(1024).plan).g.stats.rel_pct;
    let abs = err(&p, &w, CalibrationConfig::both(Bits::Int4, 32, Method::Absmax));
    println!("INT4-g32, N = 128: output from 64 rows {e_small:.3} %, from all 240 {e_full:.3} %, absmax {abs:.3} %");
    assert!(e_small < abs && e_full < abs, "{e_small} {e_full} {abs}");

    let meta = ModelMeta { calibration_method: small.method.clone(), calibration_samples: small.samples, ..ModelMeta::default() };
    let model = Model::single(p.clone(), small.plan.clone(), meta).unwrap();
    let path = std::env::temp_dir().join(format!("bk-calib-{}.safetensors", std::process::id()));
    model.save(&path).unwrap();
    let back = Model::load(&path).unwrap();
    std::fs::remove_file(&path).ok();
    assert_eq!(back.layer(0).unwrap().plan, small.plan);
    assert_eq!(back.meta.calibration_method, "output");

    assert!(matches!(
        Calibrator::new(p.clone(), CalibrationConfig::both(Bits::Int8, 1, Method::Output)).unwrap().with_reservoir_rows(0),
        Err(BkError::InvalidArgument(_))
    ));
}

#[test]
fn calibration_without_data_is_an_error_except_for_dynamic() {
    let p = seed_problem(64);
    for m in Method::STATIC {
        let cal = Calibrator::new(p.clone(), CalibrationConfig::both(Bits::Int8, 1, m)).unwrap();
        assert!(matches!(cal.end(), Err(BkError::Calibration(_))), "{m}");
    }
    let cal = Calibrator::new(p, CalibrationConfig::both(Bits::Int4, 32, Method::Dynamic)).unwrap();
    let plan = cal.end().unwrap().plan;
    assert!(plan.v.unwrap().spec.dynamic && plan.g.unwrap().re.spec.dynamic);
}

#[test]
fn method_names_parse_and_print_back() {
    for s in ["absmax", "percentile:99.9", "mse", "minmax", "kl", "output", "dynamic"] {
        let m: Method = s.parse().unwrap();
        assert_eq!(m.to_string(), s);
    }
    assert_eq!("percentile".parse::<Method>().unwrap(), Method::Percentile(Method::DEFAULT_PERCENTILE));
    for bad in ["", "max", "kl:3", "output:1", "percentile:40", "percentile:x"] {
        let e = bad.parse::<Method>().unwrap_err();
        assert!(matches!(e, BkError::InvalidArgument(_)), "{bad}: {e}");
    }
    assert!(Method::STATIC.iter().all(|m| !m.is_dynamic()) && Method::STATIC.contains(&Method::DEFAULT));
}

#[test]
fn output_and_kl_handle_tiny_problems_and_constant_data() {
    let cpu = CpuBackend::new();
    for n in [1usize, 2, 5] {
        let p = seed_problem(n);
        for rows in [1usize, 3] {
            for data in [Potential::SEED.sample(&mut bk_infer::workload::Rng::new(n as u64), rows, n), vec![0.5f32; rows * n]] {
                for m in [Method::Output, Method::Kl, Method::Mse, Method::Minmax] {
                    for (bits, group) in [(Bits::Int8, 1), (Bits::Int4, 32)] {
                        let mut cal = Calibrator::new(p.clone(), CalibrationConfig::both(bits, group, m)).unwrap();
                        cal.collect(&cpu, &data).unwrap();
                        let plan = cal.end().unwrap().plan;
                        plan.validate(n).unwrap();
                        let exact = reference::solve_batch_f32(&p, &data).unwrap();
                        let e = ptq::evaluate(&cpu, &p, &plan, &data, &exact, &SolveOptions::default(), 1).unwrap().stats.rel_pct;
                        assert!(e.is_finite() && e < 50.0, "{m} {bits:?} n {n} rows {rows}: {e}");
                    }
                }
            }
        }
    }
}
