//! A study, not a check: quantization-aware calibration against the best static PTQ method
//! (`Method::DEFAULT`) across workload seeds, on each seed's held-out batch, for several QAT
//! settings. `tests/qat.rs` asserts the defaults on seed 0; this prints the per-seed table behind
//! them (docs/qat-mixed-precision.md).
//!
//! `cargo test --release --test qat_study -- --ignored --nocapture`
//! Environment: `QAT_SEEDS=0-9` (a range or a comma list; default 0-5) and `QAT_CONFIGS`, a
//! `;`-separated list of `key=value,…` overrides of `QatConfig::default()` (keys: steps, lr,
//! lr_zero, holdout, patience, shrink, pool, learn_v, learn_g); default: the defaults alone.
//! `QAT_START=mse` starts from another static method; `QAT_BIG_TEST=800` also scores every plan
//! on that many fresh rows (the expected error, without the noise of one 8-row batch);
//! `QAT_CAL_BATCHES` changes the number of calibration batches.

mod common;
use bk_infer::backend::{CpuBackend, SolveOptions};
use bk_infer::qat::{train, QatConfig};
use bk_infer::quant::calibrate::{CalibrationConfig, Calibrator, Method};
use bk_infer::quant::Bits;
use bk_infer::workload::{Potential, Rng, SeedWorkload};
use bk_infer::{ptq, reference, Problem};
use num_complex::Complex64;

fn env_usize(k: &str, default: usize) -> usize {
    std::env::var(k).ok().map_or(default, |v| v.parse().unwrap())
}

fn seeds() -> Vec<u64> {
    let s = std::env::var("QAT_SEEDS").unwrap_or_else(|_| "0-5".into());
    if let Some((a, b)) = s.split_once('-') {
        (a.parse().unwrap()..=b.parse().unwrap()).collect()
    } else {
        s.split(',').map(|x| x.parse().unwrap()).collect()
    }
}

fn configs() -> Vec<(String, QatConfig)> {
    let s = std::env::var("QAT_CONFIGS").unwrap_or_default();
    let mut out = vec![];
    for spec in s.split(';').map(str::trim) {
        let mut c = QatConfig::default();
        for kv in spec.split(',').map(str::trim).filter(|x| !x.is_empty()) {
            let (k, v) = kv.split_once('=').expect("key=value");
            match k {
                "steps" => c.steps = v.parse().unwrap(),
                "lr" => c.lr_scale = v.parse().unwrap(),
                "lr_zero" => c.lr_zero = v.parse().unwrap(),
                "holdout" => c.holdout = v.parse().unwrap(),
                "patience" => c.patience = v.parse().unwrap(),
                "shrink" => c.shrink = v.parse().unwrap(),
                "learn_v" => c.learn_v = v.parse().unwrap(),
                "learn_g" => c.learn_g = v.parse().unwrap(),
                "pool" => c.pool = v.parse().unwrap(),
                _ => panic!("unknown key {k}"),
            }
        }
        out.push((if spec.is_empty() { "default".into() } else { spec.to_string() }, c));
    }
    out
}

#[test]
#[ignore = "study; run with --ignored --nocapture in release"]
fn qat_against_the_best_static_method_across_seeds() {
    let cpu = CpuBackend::new();
    let opts = SolveOptions::default();
    let cfgs = configs();
    for (bits, group) in [(Bits::Int8, 1usize), (Bits::Int4, 128)] {
        // Per config: (QAT − PTQ) held-out differences, and QAT errors.
        let mut diffs: Vec<Vec<f64>> = vec![vec![]; cfgs.len()];
        let mut errs: Vec<Vec<f64>> = vec![vec![]; cfgs.len()];
        let mut big_diffs: Vec<Vec<f64>> = vec![vec![]; cfgs.len()];
        let mut ptqs = vec![];
        for seed in seeds() {
            let w = SeedWorkload::with(Potential::SEED, SeedWorkload::ROWS, SeedWorkload::N, env_usize("QAT_CAL_BATCHES", SeedWorkload::CAL_BATCHES), seed);
            let p = Problem::laplacian(w.n, Complex64::new(0.0, 1.0)).unwrap();
            let exact = reference::solve_batch_f32(&p, &w.test).unwrap();
            // A large independent test set (QAT_BIG_TEST rows), for the expected error.
            let big_rows = env_usize("QAT_BIG_TEST", 0);
            let big = Potential::SEED.sample(&mut Rng::new(seed ^ 0xb16_7e57), big_rows, w.n);
            let big_exact = if big_rows == 0 { vec![] } else { reference::solve_batch_f32(&p, &big).unwrap() };
            let big_err = |plan: &bk_infer::QuantPlan| -> f64 {
                if big_rows == 0 { return f64::NAN; }
                ptq::evaluate(&cpu, &p, plan, &big, &big_exact, &opts, 1).unwrap().stats.rel_pct
            };
            let t = std::time::Instant::now();
            let start: Method = std::env::var("QAT_START").map_or(Method::DEFAULT, |m| m.parse().unwrap());
            let mut c = Calibrator::new(p.clone(), CalibrationConfig::both(bits, group, start)).unwrap();
            for b in &w.calibration {
                c.collect(&cpu, b).unwrap();
            }
            let plan = c.end().unwrap().plan;
            let ptq_s = t.elapsed().as_secs_f64();
            let ptq_err = ptq::evaluate(&cpu, &p, &plan, &w.test, &exact, &opts, 1).unwrap().stats.rel_pct;
            ptqs.push(ptq_err);
            let ptq_big = big_err(&plan);
            let cal: Vec<f32> = w.calibration.concat();
            for (k, (name, cfg)) in cfgs.iter().enumerate() {
                let t = std::time::Instant::now();
                let r = train(&cpu, &p, &plan, &cal, cfg, &mut |_, _| {}).unwrap();
                let secs = t.elapsed().as_secs_f64();
                let e = ptq::evaluate(&cpu, &p, &r.plan, &w.test, &exact, &opts, 1).unwrap().stats.rel_pct;
                let eb = big_err(&r.plan);
                println!(
                    "{bits:?} g{group} seed {seed} [{name}]: PTQ {ptq_err:.4} % ({ptq_s:.1} s) -> QAT {e:.4} % ({:+.2} %); big test {ptq_big:.4} -> {eb:.4} ({:+.2} %); train {:.4} -> {:.4}, val {:.4} -> {:.4} (best step {} of {}), {secs:.1} s",
                    100.0 * (e / ptq_err - 1.0),
                    100.0 * (eb / ptq_big - 1.0),
                    r.initial_loss,
                    r.best_loss,
                    r.initial_val_loss,
                    r.best_val_loss,
                    r.best_step,
                    r.losses.len() - 1
                );
                diffs[k].push(e - ptq_err);
                big_diffs[k].push(100.0 * (eb / ptq_big - 1.0));
                errs[k].push(e);
            }
        }
        let mean = |x: &[f64]| x.iter().sum::<f64>() / x.len() as f64;
        let start = std::env::var("QAT_START").unwrap_or_else(|_| Method::DEFAULT.to_string());
        println!("== {bits:?} g{group}: PTQ ({start}) mean {:.4} %, worst {:.4} %", mean(&ptqs), ptqs.iter().cloned().fold(0.0, f64::max));
        for (k, (name, _)) in cfgs.iter().enumerate() {
            let worst_diff = diffs[k].iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let wins = diffs[k].iter().filter(|&&d| d < 0.0).count();
            println!(
                "== [{name}] QAT mean {:.4} %, worst {:.4} %; QAT − PTQ mean {:+.4}, worst {:+.4} (pct points); better on {wins}/{}; big test: mean change {:+.3} % (relative), worst {:+.3} %",
                mean(&errs[k]),
                errs[k].iter().cloned().fold(0.0, f64::max),
                mean(&diffs[k]),
                worst_diff,
                diffs[k].len(),
                mean(&big_diffs[k]),
                big_diffs[k].iter().cloned().fold(f64::NEG_INFINITY, f64::max)
            );
        }
    }
}
