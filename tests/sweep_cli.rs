//! The CLI's calibration surface end to end: `calibrate --method`, `infer --stats` (per-tensor
//! statistics against the f64 oracle) and `sweep` (CSV + SVG + PNG), on small workloads.

use std::path::{Path, PathBuf};
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bk-infer"))
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bk-sweep-cli-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

fn write_npy(path: &Path, rows: usize, n: usize, seed: u64) {
    let v = bk_infer::workload::Potential::SEED.sample(&mut bk_infer::workload::Rng::new(seed), rows, n);
    bk_infer::io::write_f32(path, &[rows, n], &v).unwrap();
}

#[test]
fn sweep_writes_a_csv_row_per_configuration_and_both_graphs() {
    let prefix = tmp("small");
    let text = run(bin().args(["sweep", "--n", "96", "--rows", "4", "--batches", "4", "--groups", "32,64", "--reps", "1", "--device", "cpu"]).arg("--output").arg(&prefix));
    assert!(text.contains("| fp16") && text.contains("| bf16"), "{text}");
    let csv = std::fs::read_to_string(prefix.with_extension("csv")).unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    for col in ["precision", "group", "method", "bits_v", "bits_g", "rel_err_pct", "mae", "snr_db", "bytes", "compression", "v_rel_err_pct"] {
        assert!(header.contains(&col), "missing column {col}");
    }
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    // fp32, fp16, bf16 + INT8 (6 static + dynamic at 2 groups) + INT4 (2 groups × 7 methods).
    assert_eq!(rows.len(), 3 + 6 + 2 + 14, "{csv}");
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    for r in &rows {
        assert_eq!(r.len(), header.len());
        let err: f64 = r[col("rel_err_pct")].parse().unwrap();
        let bits: f64 = r[col("bits")].parse().unwrap();
        assert!(err.is_finite() && err >= 0.0 && bits > 3.9 && bits <= 32.0, "{r:?}");
    }
    let svg = std::fs::read_to_string(prefix.with_extension("svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("output") && svg.contains("seed as reported"));
    let png = std::fs::read(prefix.with_extension("png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(png.len() > 10_000, "a blank image compresses to almost nothing: {} bytes", png.len());
}

#[test]
fn calibrate_with_each_method_then_infer_with_per_tensor_stats() {
    let cal = tmp("cal.npy");
    let v = tmp("v.npy");
    write_npy(&cal, 64, 80, 1);
    write_npy(&v, 4, 80, 2);
    for method in ["absmax", "percentile:99.9", "mse", "minmax", "kl", "output", "dynamic"] {
        let model = tmp(&format!("m-{}.safetensors", method.replace(':', "_")));
        let text = run(bin().args(["calibrate", "--precision", "int4", "--method", method]).arg("--input").arg(&cal).arg("--output").arg(&model));
        assert!(text.contains(method), "{text}");
        let g = tmp("g.npy");
        let text = run(bin().args(["infer", "--stats", "--device", "cpu"]).arg("--input").arg(&v).arg("--model").arg(&model).arg("--output").arg(&g));
        let group = if method == "dynamic" { "int4-g32-dyn" } else { "int4-g128" };
        for want in ["layer 0:", "(round trip vs v)", "(vs f64 oracle)", group, "bits per value"] {
            assert!(text.contains(want), "{method}: missing `{want}` in\n{text}");
        }
    }
    // Default method, and a bad one.
    let model = tmp("m-default.safetensors");
    let text = run(bin().args(["calibrate", "--precision", "int8"]).arg("--input").arg(&cal).arg("--output").arg(&model));
    assert!(text.contains("(output,"), "{text}");
    let out = bin().args(["calibrate", "--precision", "int8", "--method", "median"]).arg("--input").arg(&cal).arg("--output").arg(&model).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("unknown calibration method `median`"), "{err}");
}
