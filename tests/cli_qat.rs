//! The command line of QAT, FP16/BF16 and mixed precision, run as a user would.

use bk_infer::model::Model;
use bk_infer::workload::SeedWorkload;
use std::path::{Path, PathBuf};
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bk-infer"))
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bk-infer-cli-qat-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let (so, se) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "failed: {cmd:?}\nstdout:\n{so}\nstderr:\n{se}");
    so.into_owned()
}

fn seed_files() -> (PathBuf, PathBuf) {
    let w = SeedWorkload::with(bk_infer::workload::Potential::SEED, 8, 512, 20, 3);
    let cal = tmp("cal.npy");
    bk_infer::io::write_f32(&cal, &[20 * 8, 512], &w.calibration.concat()).unwrap();
    let test = tmp("test.npy");
    bk_infer::io::write_f32(&test, &[8, 512], &w.test).unwrap();
    (cal, test)
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn calibrate_with_qat_writes_a_model_that_infer_runs() {
    let (cal, test) = seed_files();
    let model = tmp("qat.safetensors");
    let out = run_ok(bin().args(["calibrate", "--input", path(&cal), "--precision", "int4", "--method", "qat", "--qat-steps", "30", "--device", "cpu", "--output", path(&model)]));
    assert!(out.contains("QAT v=int4-g128 g=int4-g128: calibration-set error"), "{out}");
    let m = Model::load(&model).unwrap();
    assert!(m.meta.calibration_method.starts_with("qat (from "), "{}", m.meta.calibration_method);
    let g = tmp("g.npy");
    let out = run_ok(bin().args(["infer", "--input", path(&test), "--model", path(&model), "--output", path(&g), "--stats", "--device", "cpu"]));
    assert!(out.contains("(vs f64 oracle)"), "{out}");
}

#[test]
fn calibrate_with_a_bits_budget_prints_the_table_and_infer_runs_each_layer() {
    let w = SeedWorkload::with(bk_infer::workload::Potential::SEED, 8, 128, 8, 5);
    let cal = tmp("cal128.npy");
    bk_infer::io::write_f32(&cal, &[64, 128], &w.calibration.concat()).unwrap();
    let test = tmp("test128.npy");
    bk_infer::io::write_f32(&test, &[8, 128], &w.test).unwrap();
    let model = tmp("mixed.safetensors");
    let out = run_ok(bin().args(["calibrate", "--input", path(&cal), "--bits-budget", "5.0", "--layers", "3", "--device", "cpu", "--output", path(&model)]));
    assert!(out.contains("| layer |") && out.contains("bits per element (budget 5)"), "{out}");
    let m = Model::load(&model).unwrap();
    assert_eq!(m.layers.len(), 3);
    assert_eq!(m.layers[2].problem.z(), num_complex::Complex64::new(0.0, 0.25), "z_k = i / 2^k");
    let bits: f64 = out.lines().find(|l| l.starts_with("model:")).and_then(|l| l.split_whitespace().nth(1)).unwrap().parse().unwrap();
    assert!(bits <= 5.0, "{out}");
    for k in 0..3 {
        let g = tmp(&format!("g{k}.npy"));
        let out = run_ok(bin().args(["infer", "--input", path(&test), "--model", path(&model), "--layer", &k.to_string(), "--output", path(&g), "--device", "cpu"]));
        assert!(out.contains(&m.layers[k].precision().to_string()), "{out}");
    }
    let g = tmp("gx.npy");
    let out = bin().args(["infer", "--input", path(&test), "--model", path(&model), "--layer", "3", "--output", path(&g)]).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("the model has 3 layer(s)"));
    let out = run_ok(bin().args(["calibrate", "--input", path(&cal), "--policy", "seed", "--layer-z", "0,1;-0.2,0.5", "--device", "cpu", "--output", path(&model)]));
    assert!(out.contains("int4-g128") && out.contains("fp16"), "{out}");
    let out = bin().args(["calibrate", "--input", path(&cal), "--output", path(&model)]).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--precision"));
}
