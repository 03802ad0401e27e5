//! Bad input gets a clear, typed error naming what is wrong, and never a panic.

mod common;
use bk_infer::backend::{Backend, CpuBackend, GFormat, GOutput, SolveOptions, VInput};
use bk_infer::model::Model;
use bk_infer::quant::{AffineParams, Bits, QTensor, QuantSpec, TensorQuant};
use bk_infer::{io, BkError, NanPolicy, Problem, H0};
use num_complex::{Complex32, Complex64};
use std::path::Path;

fn solve(p: &Problem, v: &[f32], policy: NanPolicy) -> bk_infer::Result<bk_infer::backend::Solved> {
    let opts = SolveOptions { nan_policy: policy, ..Default::default() };
    CpuBackend::new().solve(p, VInput::F32(v), &GFormat::C64, &opts)
}

#[test]
fn zero_length_and_mismatched_h0_are_rejected() {
    assert!(matches!(Problem::laplacian(0, Complex64::new(0.0, 1.0)), Err(BkError::InvalidProblem(_))));
    let mut h0 = H0::laplacian(5);
    h0.sub.pop();
    let e = Problem::new(h0, Complex64::new(0.0, 1.0)).unwrap_err();
    assert!(e.to_string().contains("h0_sub") && e.to_string().contains("length 4"), "{e}");
    let mut h0 = H0::laplacian(5);
    h0.diag[2] = f64::NAN;
    let e = Problem::new(h0, Complex64::new(0.0, 1.0)).unwrap_err();
    assert!(e.to_string().contains("h0_diag") && e.to_string().contains("position 2"), "{e}");
    let e = Problem::laplacian(3, Complex64::new(0.0, f64::INFINITY)).unwrap_err();
    assert!(e.to_string().contains("not finite"), "{e}");
}

#[test]
fn wrong_batch_shapes_are_rejected() {
    let p = Problem::laplacian(8, Complex64::new(0.0, 1.0)).unwrap();
    for len in [0usize, 7, 9, 17] {
        let e = solve(&p, &vec![0.0; len], NanPolicy::Error).unwrap_err();
        assert!(matches!(e, BkError::Shape { .. }), "{len}: {e}");
        assert!(e.to_string().contains("N = 8"), "{e}");
    }
    // An output buffer of the wrong size.
    let mut out = GOutput::C64(vec![Complex32::default(); 15]);
    let e = CpuBackend::new().solve_into(&p, VInput::F32(&[0.0; 16]), &mut out, &SolveOptions::default()).unwrap_err();
    assert!(e.to_string().contains("`g`"), "{e}");
    // Quantized input of another N.
    let spec = QuantSpec::for_v(Bits::Int8, 1);
    let tq = TensorQuant::new_static(spec, AffineParams { scale: vec![0.1; 9], zero: None });
    let q = QTensor::quantize("v", &tq, &[0.0; 9], 1, 9).unwrap();
    let e = CpuBackend::new().solve(&p, VInput::Quant(&q), &GFormat::C64, &SolveOptions::default()).unwrap_err();
    assert!(e.to_string().contains("N = 8") && e.to_string().contains("N = 9"), "{e}");
}

#[test]
fn non_finite_potentials_follow_the_policy() {
    let n = 40;
    let p = Problem::laplacian(n, Complex64::new(0.0, 1.0)).unwrap();
    let mut v = vec![0.25f32; 50 * n];
    v[37 * n + 11] = f32::NAN;
    v[41 * n + 3] = f32::INFINITY;
    match solve(&p, &v, NanPolicy::Error) {
        Err(BkError::NonFinite { tensor, row, pos, .. }) => assert_eq!((tensor.as_str(), row, pos), ("v", 37, 11)),
        other => panic!("expected NonFinite, got {other:?}"),
    }
    let zeroed = solve(&p, &v, NanPolicy::Zero).unwrap().g.to_c64();
    let mut clean = v.clone();
    clean[37 * n + 11] = 0.0;
    clean[41 * n + 3] = 0.0;
    assert!(zeroed == solve(&p, &clean, NanPolicy::Error).unwrap().g.to_c64(), "zero policy = zeroed input");
    let prop = solve(&p, &v, NanPolicy::Propagate).unwrap();
    let g = prop.g.to_c128();
    assert!(g[37 * n..38 * n].iter().any(|c| c.re.is_nan()), "a NaN row stays NaN");
    // Other rows are exact (their tile may have been redone in f64 because of the NaN).
    let exact = bk_infer::reference::solve_batch_f32(&p, &clean).unwrap();
    for r in (0..50).filter(|&r| r != 37 && r != 41) {
        let err = bk_infer::stats::rel_l2(&g[r * n..(r + 1) * n], &exact[r * n..(r + 1) * n]);
        assert!(err < 1e-6, "row {r}: {err:e}");
    }
}

#[test]
fn a_singular_matrix_names_row_and_position() {
    // Im z = 0 and d_0 = −2 + v_0 = 0 in row 3: the pivot α_0 vanishes.
    let n = 6;
    let p = Problem::laplacian(n, Complex64::new(0.0, 0.0)).unwrap();
    let mut v = vec![0.3f32; 5 * n];
    v[3 * n] = 2.0;
    for compute in [bk_infer::backend::Compute::F32, bk_infer::backend::Compute::F64, bk_infer::backend::Compute::Auto] {
        let opts = SolveOptions { compute, ..Default::default() };
        match CpuBackend::new().solve(&p, VInput::F32(&v), &GFormat::C64, &opts) {
            Err(BkError::SingularPivot { row, pos, .. }) => assert_eq!((row, pos), (3, 0), "{compute:?}"),
            other => panic!("{compute:?}: expected SingularPivot, got {other:?}"),
        }
    }
}

#[test]
fn bad_quantization_parameters_are_rejected() {
    let spec = QuantSpec::int4_groups(0);
    assert!(spec.validate("v").is_err());
    let spec = QuantSpec::for_v(Bits::Int8, 1);
    for (scale, what) in [(vec![0.1, 0.0, 0.1], "scale[1]"), (vec![0.1, f32::NAN, 0.1], "scale[1]"), (vec![0.1; 2], "v.scale")] {
        let tq = TensorQuant::new_static(spec, AffineParams { scale, zero: None });
        let e = QTensor::quantize("v", &tq, &[0.0; 3], 1, 3).unwrap_err();
        assert!(e.to_string().contains(what), "{e}");
    }
    let asym = QuantSpec::for_g(Bits::Int8, 1);
    let tq = TensorQuant::new_static(asym, AffineParams { scale: vec![0.1; 3], zero: None });
    assert!(QTensor::quantize("g.re", &tq, &[0.0; 3], 1, 3).unwrap_err().to_string().contains("zero points"));
}

fn tmp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("bk-infer-errors-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn unreadable_truncated_and_mistyped_npy_files_are_rejected() {
    let e = io::read_potentials(Path::new("/nonexistent/v.npy")).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/v.npy"), "{e}");
    let path = tmp("v.npy");
    io::write_f32(&path, &[4, 16], &vec![0.5; 64]).unwrap();
    let full = std::fs::read(&path).unwrap();
    assert_eq!(io::read_potentials(&path).unwrap().rows, 4);
    for cut in [10usize, full.len() - 4] {
        std::fs::write(&path, &full[..cut]).unwrap();
        let e = io::read_potentials(&path).unwrap_err();
        assert!(matches!(e, BkError::File { .. }), "cut {cut}: {e}");
    }
    std::fs::write(&path, b"not an npy file at all").unwrap();
    assert!(io::read_potentials(&path).is_err());
    // int32 data, and a 3-D array.
    let mut bytes = vec![];
    {
        use npyz::WriterBuilder;
        let mut w = npyz::WriteOptions::new().default_dtype().shape(&[2, 2]).writer(&mut bytes).begin_nd().unwrap();
        w.extend([1i32, 2, 3, 4]).unwrap();
        w.finish().unwrap();
    }
    let e = io::read_potentials_bytes(&bytes, Path::new("ints.npy")).unwrap_err();
    assert!(e.to_string().contains("i4") && e.to_string().contains("float32"), "{e}");
    io::write_f32(&path, &[2, 2, 2], &[0.0; 8]).unwrap();
    assert!(io::read_potentials(&path).unwrap_err().to_string().contains("(B, N)"));
}

#[test]
fn bad_model_files_name_the_tensor_or_key() {
    let p = Problem::laplacian(16, Complex64::new(0.0, 1.0)).unwrap();
    let spec = QuantSpec::for_v(Bits::Int8, 1);
    let plan = bk_infer::QuantPlan { v: Some(TensorQuant::new_static(spec, AffineParams { scale: vec![0.1; 16], zero: None })), g: None };
    let model = Model::single(p, plan, Default::default()).unwrap();
    let path = tmp("m.safetensors");
    let good = model.to_bytes(&path).unwrap();
    assert_eq!(Model::from_bytes(&good, &path).unwrap().layers.len(), 1);

    // Truncated.
    assert!(Model::from_bytes(&good[..good.len() / 2], &path).is_err());
    // A scale that is not positive, found by editing the stored f32 in place.
    let mut bad = good.clone();
    let at = find(&bad, &0.1f32.to_le_bytes()).expect("scale bytes present");
    bad[at..at + 4].copy_from_slice(&(-1.0f32).to_le_bytes());
    let e = Model::from_bytes(&bad, &path).unwrap_err();
    assert!(e.to_string().contains("layers.0.v.scale"), "{e}");
    // Wrong format version.
    let e = Model::from_bytes(&replace(&good, b"\"format_version\":\"1\"", b"\"format_version\":\"9\""), &path).unwrap_err();
    assert!(e.to_string().contains("format_version 9"), "{e}");
    // A missing tensor (renamed in the header).
    let e = Model::from_bytes(&replace(&good, b"layers.0.h0_sub", b"layers.0.h0_sUb"), &path).unwrap_err();
    assert!(e.to_string().contains("layers.0.h0_sub") && e.to_string().contains("missing"), "{e}");
    // Not a model.
    let e = Model::from_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ", &path).unwrap_err();
    assert!(matches!(e, BkError::Model { .. }), "{e}");
}

/// Replaces the first occurrence of `from` by `to` (same length) in a byte string.
fn replace(hay: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let at = hay.windows(from.len()).position(|w| w == from).expect("pattern present");
    let mut out = hay.to_vec();
    out[at..at + to.len()].copy_from_slice(to);
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).rposition(|w| w == needle)
}
