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
    assert!(out.contains("error vs f64 oracle"), "{out}");
}
