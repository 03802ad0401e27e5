use bk_infer::backend::{CpuBackend, SolveOptions};
use bk_infer::qat::{train, QatConfig};
use bk_infer::quant::calibrate::{CalibrationConfig, Calibrator, Method};
use bk_infer::quant::Bits;
use bk_infer::workload::SeedWorkload;
use bk_infer::{ptq, reference, Problem};
use num_complex::Complex64;

#[test]
#[ignore]
fn explore() {
    let w = SeedWorkload::new(0);
    let p = Problem::laplacian(w.n, Complex64::new(0.0, 1.0)).unwrap();
    let cpu = CpuBackend::new();
    let exact = reference::solve_batch_f32(&p, &w.test).unwrap();
    let cal: Vec<f32> = w.calibration.concat();
    let steps: usize = std::env::var("STEPS").ok().and_then(|s| s.parse().ok()).unwrap_or(300);
    let lr: f64 = std::env::var("LR").ok().and_then(|s| s.parse().ok()).unwrap_or(2e-3);
    let lrz: f64 = std::env::var("LRZ").ok().and_then(|s| s.parse().ok()).unwrap_or(0.05);
    for (bits, group) in [(Bits::Int8, 1usize), (Bits::Int4, 128)] {
        let mut c = Calibrator::new(p.clone(), CalibrationConfig::both(bits, group, Method::DEFAULT)).unwrap();
        for b in &w.calibration { c.collect(&cpu, b).unwrap(); }
        let plan = c.end().unwrap().plan;
        let e0 = ptq::evaluate(&cpu, &p, &plan, &w.test, &exact, &SolveOptions::default(), 1).unwrap();
        let t = std::time::Instant::now();
        let cfg = QatConfig { steps, lr_scale: lr, lr_zero: lrz, ..Default::default() };
        let r = train(&cpu, &p, &plan, &cal, &cfg, &mut |_, _| {}).unwrap();
        let el = t.elapsed().as_secs_f64();
        let e1 = ptq::evaluate(&cpu, &p, &r.plan, &w.test, &exact, &SolveOptions::default(), 1).unwrap();
        println!("{bits:?} g{group}: PTQ test {:.4}%  -> QAT test {:.4}%  (cal {:.4} -> {:.4} best step {}) {el:.2}s", e0.stats.rel_pct, e1.stats.rel_pct, r.initial_loss, r.best_loss, r.best_step);
        let l = &r.losses;
        println!("  losses: {:?}", [0, 10, 50, 100, 200, l.len()-1].iter().filter(|&&i| i < l.len()).map(|&i| format!("{i}:{:.4}", l[i])).collect::<Vec<_>>());
    }
}
