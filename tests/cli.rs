//! The `bk-infer` binary end to end: files in, files out, clear errors.

mod common;
use bk_infer::backend::{CpuBackend, SolveOptions};
use bk_infer::model::Model;
use bk_infer::workload::Rng;
use bk_infer::{io, ptq, reference, stats, Problem, H0};
use num_complex::Complex64;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bk-infer")).args(args).output().expect("bk-infer runs")
}

fn ok(args: &[&str]) -> String {
    let out = bin(args);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "bk-infer {args:?} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

/// Runs and expects failure; returns stderr.
fn fails(args: &[&str]) -> String {
    let out = bin(args);
    assert!(!out.status.success(), "bk-infer {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bk-infer-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn demo_prints_the_table() {
    let out = ok(&["run", "--reps", "2", "--batches", "10"]);
    for needle in ["| fp32", "| int8", "| int4-g128", "absmax (seed)", "rel err %", "Gelem/s"] {
        assert!(out.contains(needle), "missing `{needle}` in\n{out}");
    }
}

#[test]
fn info_lists_backends() {
    let out = ok(&["info"]);
    assert!(out.contains("cpu:") && out.contains("cuda") && out.contains("kernels"), "{out}");
}

#[test]
fn calibrate_then_infer_matches_the_library() {
    let d = dir("cal");
    let (rows, n) = (64usize, 200usize);
    let mut rng = Rng::new(4);
    let cal = common::normal_f32(&mut rng, rows * n, 1.0);
    let v = common::normal_f32(&mut rng, 5 * n, 1.0);
    io::write_f32(&d.join("cal.npy"), &[rows, n], &cal).unwrap();
    io::write_f32(&d.join("v.npy"), &[5, n], &v).unwrap();
    let model = d.join("m.safetensors");
    let out = ok(&[
        "calibrate", "--input", s(&d.join("cal.npy")), "--precision", "int4", "--group-size", "32", "--method", "mse",
        "--z", "0.2,0.5", "--output", s(&model), "--device", "cpu",
    ]);
    assert!(out.contains("int4-g32"), "{out}");
    let m = Model::load(&model).unwrap();
    assert_eq!(m.meta.calibration_samples, rows);
    assert_eq!(m.layers[0].problem.z(), Complex64::new(0.2, 0.5));

    let g_path = d.join("g.npy");
    let out = ok(&["infer", "--input", s(&d.join("v.npy")), "--model", s(&model), "--output", s(&g_path), "--stats", "--device", "cpu"]);
    // --stats prints the per-tensor report (v: its round trip; G: against the f64 oracle).
    assert!(out.contains("(vs f64 oracle)") && out.contains("(round trip vs v)") && out.contains("stored"), "{out}");
    let (r, c, g) = io::read_complex64(&g_path).unwrap();
    assert_eq!((r, c), (5, n));
    let layer = &m.layers[0];
    let lib = ptq::run(&CpuBackend::new(), &layer.problem, &layer.plan, &v, &SolveOptions::default()).unwrap();
    assert!(g == lib.g.to_c64(), "the CLI writes exactly what the library computes");
}

#[test]
fn infer_fp32_f64_and_f16_inputs_against_the_oracle() {
    let d = dir("fp");
    let n = 300;
    let v: Vec<f32> = common::normal_f32(&mut Rng::new(8), 3 * n, 1.0);
    let p = Problem::laplacian(n, Complex64::new(0.0, 1.0)).unwrap();
    let exact = reference::solve_batch_f32(&p, &v).unwrap();
    io::write_f32(&d.join("v.npy"), &[3, n], &v).unwrap();
    ok(&["infer", "--input", s(&d.join("v.npy")), "--precision", "fp32", "--output", s(&d.join("g.npy"))]);
    let (_, _, g) = io::read_complex64(&d.join("g.npy")).unwrap();
    assert!(stats::ErrorStats::compare_c32(&g, &exact).rel_l2 < common::tol::F32_IMZ_GE_0_1);

    // float64 file: computed in f64 when asked, one row given as shape (N,).
    let v64: Vec<f64> = v[..n].iter().map(|&x| x as f64 + 1e-9).collect();
    let mut bytes = vec![];
    {
        use npyz::WriterBuilder;
        let mut w = npyz::WriteOptions::new().default_dtype().shape(&[n as u64]).writer(&mut bytes).begin_nd().unwrap();
        w.extend(v64.iter().copied()).unwrap();
        w.finish().unwrap();
    }
    std::fs::write(d.join("v64.npy"), &bytes).unwrap();
    ok(&["infer", "--input", s(&d.join("v64.npy")), "--compute", "f64", "--output", s(&d.join("g64.npy"))]);
    let (r, _, g) = io::read_complex64(&d.join("g64.npy")).unwrap();
    assert_eq!(r, 1);
    let exact64 = reference::solve_batch(&p, &v64).unwrap();
    assert!(stats::ErrorStats::compare_c32(&g, &exact64).rel_l2 < 1e-7, "f64 compute, complex64 output");

    // float16 file.
    let mut bytes = vec![];
    {
        use npyz::WriterBuilder;
        let mut w = npyz::WriteOptions::new().default_dtype().shape(&[1, n as u64]).writer(&mut bytes).begin_nd().unwrap();
        w.extend(v[..n].iter().map(|&x| half::f16::from_f32(x))).unwrap();
        w.finish().unwrap();
    }
    std::fs::write(d.join("v16.npy"), &bytes).unwrap();
    ok(&["infer", "--input", s(&d.join("v16.npy")), "--output", s(&d.join("g16.npy"))]);
    let v16: Vec<f32> = v[..n].iter().map(|&x| half::f16::from_f32(x).to_f32()).collect();
    let (_, _, g) = io::read_complex64(&d.join("g16.npy")).unwrap();
    let exact16 = reference::solve_batch_f32(&p, &v16).unwrap();
    assert!(stats::ErrorStats::compare_c32(&g, &exact16).rel_l2 < common::tol::F32_IMZ_GE_0_1);
}

#[test]
fn custom_h0_and_z_from_the_command_line() {
    let d = dir("h0");
    let n = 50;
    let mut rng = Rng::new(12);
    let h0 = common::random_h0(&mut rng, n);
    io::write_h0(&d.join("h0.safetensors"), &h0).unwrap();
    let v = common::normal_f32(&mut rng, 2 * n, 1.0);
    io::write_f32(&d.join("v.npy"), &[2, n], &v).unwrap();
    ok(&["infer", "--input", s(&d.join("v.npy")), "--h0", s(&d.join("h0.safetensors")), "--z", "-0.5,0.25", "--output", s(&d.join("g.npy"))]);
    let p = Problem::new(h0, Complex64::new(-0.5, 0.25)).unwrap();
    let exact = reference::solve_batch_f32(&p, &v).unwrap();
    let (_, _, g) = io::read_complex64(&d.join("g.npy")).unwrap();
    assert!(stats::ErrorStats::compare_c32(&g, &exact).rel_l2 < common::tol::F32_IMZ_GE_0_1);
    // An H0 of the wrong length.
    io::write_h0(&d.join("h0short.safetensors"), &H0::laplacian(n - 1)).unwrap();
    let err = fails(&["infer", "--input", s(&d.join("v.npy")), "--h0", s(&d.join("h0short.safetensors")), "--output", s(&d.join("x.npy"))]);
    assert!(err.contains("N = 49") && err.contains("N = 50"), "{err}");
}

#[test]
fn bad_inputs_give_clear_errors() {
    let d = dir("bad");
    let n = 16;
    let mut v = vec![0.5f32; 3 * n];
    io::write_f32(&d.join("v.npy"), &[3, n], &v).unwrap();
    let v_path = d.join("v.npy");
    let out = d.join("g.npy");
    // A model of another N.
    let cal = vec![0.25f32; 8 * 20];
    io::write_f32(&d.join("cal.npy"), &[8, 20], &cal).unwrap();
    ok(&["calibrate", "--input", s(&d.join("cal.npy")), "--precision", "int8", "--output", s(&d.join("m20.safetensors"))]);
    let err = fails(&["infer", "--input", s(&v_path), "--model", s(&d.join("m20.safetensors")), "--output", s(&out)]);
    assert!(err.contains("N = 20") && err.contains("N = 16"), "{err}");
    // Malformed z, missing files, unknown method.
    assert!(fails(&["infer", "--input", s(&v_path), "--z", "1", "--output", s(&out)]).contains("RE,IM"));
    assert!(fails(&["infer", "--input", "/nonexistent.npy", "--output", s(&out)]).contains("/nonexistent.npy"));
    assert!(fails(&["infer", "--input", s(&v_path), "--model", "/nonexistent.safetensors", "--output", s(&out)]).contains("/nonexistent.safetensors"));
    let err = fails(&["calibrate", "--input", s(&d.join("cal.npy")), "--precision", "int4", "--method", "magic", "--output", s(&out)]);
    assert!(err.contains("magic"), "{err}");
    // NaN in the input: an error naming row and position, unless a policy says otherwise.
    v[2 * n + 5] = f32::NAN;
    io::write_f32(&v_path, &[3, n], &v).unwrap();
    let err = fails(&["infer", "--input", s(&v_path), "--output", s(&out)]);
    assert!(err.contains("row 2") && err.contains("position 5"), "{err}");
    ok(&["infer", "--input", s(&v_path), "--nan-policy", "zero", "--output", s(&out)]);
    // Singular: z = 0 with d_0 = 0.
    let mut w = vec![0.3f32; n];
    w[0] = 2.0;
    io::write_f32(&v_path, &[1, n], &w).unwrap();
    let err = fails(&["infer", "--input", s(&v_path), "--z", "0,0", "--output", s(&out)]);
    assert!(err.contains("singular pivot in row 0 at position 0"), "{err}");
}
