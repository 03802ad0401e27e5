//! A study, not a shipped format: what a non-uniform 4-bit codebook would buy over the uniform
//! INT4 codes at the same 4 bits per value. Each group of 128 positions gets a static 16-entry
//! table per tensor (v, Re G, Im G) fitted by Lloyd's algorithm on the calibration data; a code
//! is the index of the nearest entry (what a kernel would read through a 16-entry table). It
//! would need a new format and GPU support, so it only lives here.
//!
//! `cargo test --release --test codebook_study -- --ignored --nocapture`

use bk_infer::backend::{Backend, CpuBackend, GFormat, SolveOptions, VInput};
use bk_infer::quant::calibrate::{CalibrationConfig, Calibrator, Method};
use bk_infer::quant::Bits;
use bk_infer::stats::ErrorStats;
use bk_infer::workload::SeedWorkload;
use bk_infer::{ptq, reference, Problem};
use num_complex::{Complex32, Complex64};

const LEVELS: usize = 16;
const GROUP: usize = 128;

/// 1-D Lloyd: cells split at midpoints, centroids the cell median (L1, the seed's metric) or
/// mean (L2), from quantile starting points.
fn lloyd(mut xs: Vec<f32>, median: bool) -> Vec<f32> {
    xs.sort_by(f32::total_cmp);
    let n = xs.len();
    let mut c: Vec<f32> = (0..LEVELS).map(|i| xs[((i as f64 + 0.5) / LEVELS as f64 * n as f64) as usize]).collect();
    for _ in 0..60 {
        let mut start = 0;
        for j in 0..LEVELS {
            let hi = if j + 1 < LEVELS { 0.5 * (c[j] + c[j + 1]) } else { f32::INFINITY };
            let end = start + xs[start..].partition_point(|&x| x < hi);
            if end > start {
                let cell = &xs[start..end];
                c[j] = if median { cell[cell.len() / 2] } else { (cell.iter().map(|&x| x as f64).sum::<f64>() / cell.len() as f64) as f32 };
            }
            start = end;
        }
    }
    c
}

fn nearest(c: &[f32], x: f32) -> f32 {
    c.iter().copied().min_by(|a, b| (a - x).abs().total_cmp(&(b - x).abs())).unwrap_or(x)
}

/// One table per group of the (rows, n) values `part` picks.
fn tables<T: Copy>(xs: &[T], n: usize, part: impl Fn(T) -> f32, median: bool) -> Vec<Vec<f32>> {
    (0..n.div_ceil(GROUP))
        .map(|j| {
            let cols = j * GROUP..((j + 1) * GROUP).min(n);
            lloyd(xs.chunks(n).flat_map(|r| r[cols.clone()].iter().map(|&x| part(x))).collect(), median)
        })
        .collect()
}

#[test]
#[ignore]
fn codebook_beats_uniform_int4_at_equal_bits() {
    let cpu = CpuBackend::new();
    let opts = SolveOptions::default();
    for seed in [0u64, 1, 2] {
        let w = SeedWorkload::new(seed);
        let n = w.n;
        let p = Problem::laplacian(n, Complex64::new(0.0, 1.0)).unwrap();
        let exact = reference::solve_batch_f32(&p, &w.test).unwrap();
        let cal: Vec<f32> = w.calibration.concat();
        let g_cal = cpu.solve(&p, VInput::F32(&cal), &GFormat::C64, &opts).unwrap().g.to_c64();
        let (tv, tre, tim) =
            (tables(&cal, n, |x| x, true), tables(&g_cal, n, |c: Complex32| c.re, true), tables(&g_cal, n, |c: Complex32| c.im, true));
        let vq: Vec<f32> = w.test.iter().enumerate().map(|(i, &x)| nearest(&tv[(i % n) / GROUP], x)).collect();
        let g = cpu.solve(&p, VInput::F32(&vq), &GFormat::C64, &opts).unwrap().g.to_c64();
        let gq: Vec<Complex64> = g
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let j = (i % n) / GROUP;
                Complex64::new(nearest(&tre[j], c.re) as f64, nearest(&tim[j], c.im) as f64)
            })
            .collect();
        let book = ErrorStats::compare(&gq, &exact).rel_pct;

        let mut c = Calibrator::new(p.clone(), CalibrationConfig::both(Bits::Int4, GROUP, Method::Output)).unwrap();
        for b in &w.calibration {
            c.collect(&cpu, b).unwrap();
        }
        let plan = c.end().unwrap().plan;
        let uniform = ptq::evaluate(&cpu, &p, &plan, &w.test, &exact, &opts, 1).unwrap().stats.rel_pct;
        println!("seed {seed}: INT4-g128, 4 bits per value: uniform codes (output) {uniform:.4} %, 16-entry codebooks {book:.4} %");
        assert!(book < uniform, "seed {seed}: codebook {book} not better than uniform {uniform}");
    }
}
