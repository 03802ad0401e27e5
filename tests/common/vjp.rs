//! Checks of a backend's backward pass (`Backend::vjp_into`) against the f64 oracle and the CPU
//! backend, shared by the emulated GPU kernel (tests/vjp_emu.rs) and the real one (tests/gpu.rs).

use super::{normal_f32, random_problem, tol};
use bk_infer::backend::{Backend, Compute, CpuBackend, SolveOptions, VInput};
use bk_infer::grad::{reference as gref, Dv, DvFormat, GradG, Vjp};
use bk_infer::quant::{AffineParams, Bits, QTensor, QuantSpec, TensorQuant};
use bk_infer::workload::Rng;
use bk_infer::{BkError, NanPolicy, Problem, H0};
use num_complex::{Complex32, Complex64};

pub fn rel(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

/// (dv, dh0_diag, dh0_super, dh0_sub, dz) relative errors of `got` against `want`.
pub fn errors(got: &Vjp, want: &Vjp) -> [f64; 5] {
    [
        rel(&got.dv.to_f64(), &want.dv.to_f64()),
        rel(&got.dh0_diag, &want.dh0_diag),
        rel(&got.dh0_super, &want.dh0_super),
        rel(&got.dh0_sub, &want.dh0_sub),
        (got.dz - want.dz).norm() / want.dz.norm().max(1e-300),
    ]
}

pub fn random_batch(rng: &mut Rng, rows: usize, n: usize) -> (Vec<f32>, Vec<Complex32>) {
    let v = normal_f32(rng, rows * n, 1.0);
    let gb = (0..rows * n).map(|_| Complex32::new(rng.normal() as f32, rng.normal() as f32)).collect();
    (v, gb)
}

pub fn opts(compute: Compute) -> SolveOptions {
    SolveOptions { compute, ..Default::default() }
}

/// Against the f64 oracle (f32 and f64 compute) and the CPU backend: the same dL/dv bit for bit
/// (the kernel is the CPU's arithmetic, operation for operation), sums over rows within rounding.
pub fn matches_the_oracle_and_the_cpu(b: &dyn Backend, shapes: &[(usize, usize)]) {
    let cpu = CpuBackend::new();
    let mut rng = Rng::new(61);
    let mut worst = [[0f64; 5]; 2];
    for &(rows, n) in shapes {
        let p = random_problem(&mut rng, n, 0.1, 10.0);
        let (v, gb) = random_batch(&mut rng, rows, n);
        let wide: Vec<f64> = v.iter().map(|&x| x as f64).collect();
        let oracle = gref::vjp_batch(&p, &wide, GradG::C64(&gb)).unwrap();
        for (k, compute) in [Compute::F32, Compute::F64].into_iter().enumerate() {
            let got = b.vjp(&p, VInput::F32(&v), GradG::C64(&gb), DvFormat::F64, &opts(compute)).unwrap();
            let e = errors(&got, &oracle);
            let bound = if compute == Compute::F64 { tol::VJP_F64 } else { tol::VJP_F32 };
            assert!(e.iter().all(|&x| x < bound), "rows {rows} n {n} {compute:?}: vs oracle {e:?}");
            for (w, x) in worst[k].iter_mut().zip(e) {
                *w = w.max(x);
            }
            // The kernel is the CPU backend's arithmetic, operation for operation: the same dv
            // values; the sums over rows differ only in the order of additions.
            let c = cpu.vjp(&p, VInput::F32(&v), GradG::C64(&gb), DvFormat::F64, &opts(compute)).unwrap();
            let (a, b) = (got.dv.to_f64(), c.dv.to_f64());
            if let Some(i) = (0..a.len()).find(|&i| a[i] != b[i]) {
                panic!("rows {rows} n {n} {compute:?}: dv[{i}] {:e} vs cpu {:e}", a[i], b[i]);
            }
            let ec = errors(&got, &c);
            assert!(ec.iter().all(|&x| x < 1e-13), "rows {rows} n {n} {compute:?}: sums vs cpu {ec:?}");
        }
    }
    let fmt = |w: [f64; 5]| w.map(|e| format!("{e:.2e}"));
    println!("{} VJP vs f64 oracle, worst relative L2 (dv, dh0_diag, dh0_super, dh0_sub, dz): f32 {:?}, f64 {:?}", b.name(), fmt(worst[0]), fmt(worst[1]));
}

/// Every input format (f32, f64, f16, static and dynamic INT8/INT4 codes), both upstream
/// formats and both dL/dv formats, against the CPU backend.
pub fn reads_every_input_format_like_the_cpu(b: &dyn Backend) {
    let cpu = CpuBackend::new();
    let mut rng = Rng::new(62);
    let (rows, n) = (11, 300);
    let p = random_problem(&mut rng, n, 0.2, 3.0);
    let (v, gb) = random_batch(&mut rng, rows, n);
    let gb128: Vec<Complex64> = gb.iter().map(|c| Complex64::new(c.re as f64 * 1.001, c.im as f64)).collect();
    let v64: Vec<f64> = v.iter().map(|&x| x as f64 * (1.0 + 1e-9)).collect();
    let spec = |bits, g, symmetric, dynamic| QuantSpec { bits, group_size: g, symmetric, dynamic };
    let static_q = |s: QuantSpec| {
        let groups = s.groups(n);
        let scale: Vec<f32> = (0..groups).map(|j| 0.02 + 0.3 * (j % 3) as f32 / 3.0).collect();
        let zero = (!s.symmetric).then(|| (0..groups).map(|j| (j % 5) as i16 - 2).collect());
        TensorQuant::new_static(s, AffineParams { scale, zero })
    };
    let quants = [
        QTensor::quantize("v", &static_q(QuantSpec::int8_per_channel()), &v, rows, n).unwrap(),
        QTensor::quantize("v", &static_q(QuantSpec::int4_groups(128)), &v, rows, n).unwrap(),
        QTensor::quantize("v", &TensorQuant::dynamic(spec(Bits::Int4, 5, false, true)), &v, rows, n).unwrap(),
        QTensor::quantize("v", &TensorQuant::dynamic(spec(Bits::Int8, 64, true, true)), &v, rows, n).unwrap(),
    ];
    for compute in [Compute::F32, Compute::F64] {
        let o = opts(compute);
        let mut inputs: Vec<(String, VInput<'_>)> = vec![("f32".into(), VInput::F32(&v)), ("f64".into(), VInput::F64(&v64))];
        inputs.extend(quants.iter().map(|q| (q.spec().to_string(), VInput::Quant(q))));
        for (what, input) in inputs {
            for (gname, g) in [("c64", GradG::C64(&gb)), ("c128", GradG::C128(&gb128))] {
                for fmt in [DvFormat::F32, DvFormat::F64] {
                    let got = b.vjp(&p, input, g, fmt, &o).unwrap();
                    let want = cpu.vjp(&p, input, g, fmt, &o).unwrap();
                    let ctx = format!("{compute:?} {what} {gname} {fmt:?}");
                    match (&got.dv, &want.dv) {
                        (Dv::F32(a), Dv::F32(b)) => assert!(a.iter().zip(b).all(|(x, y)| x == y), "{ctx}: dv differs"),
                        (Dv::F64(a), Dv::F64(b)) => assert!(a.iter().zip(b).all(|(x, y)| x == y), "{ctx}: dv differs"),
                        _ => panic!("{ctx}: dv format"),
                    }
                    let e = errors(&got, &want);
                    assert!(e.iter().all(|&x| x < 1e-12), "{ctx}: sums {e:?}");
                }
            }
        }
        // Half precision widens exactly, as on the CPU.
        let vh: Vec<half::f16> = v.iter().map(|&x| half::f16::from_f32(x)).collect();
        let got = b.vjp(&p, VInput::F16(&vh), GradG::C64(&gb), DvFormat::F32, &o).unwrap();
        let want = cpu.vjp(&p, VInput::F16(&vh), GradG::C64(&gb), DvFormat::F32, &o).unwrap();
        assert_eq!(got.dv, want.dv, "{compute:?} f16");
    }
}

/// `with(max_chunk_rows, poison)` builds the backend under test with those knobs.
pub fn sums_do_not_depend_on_the_chunking(with: &dyn Fn(Option<usize>, Option<u8>) -> Box<dyn Backend>) {
    // Chunks that start on multiples of the reduction's 64-row blocks give the same bits as one
    // launch; smaller chunks (less memory than one block) stay within rounding.
    let b = with(None, Some(0xff));
    let b = b.as_ref();
    let mut rng = Rng::new(63);
    let (rows, n) = (150, 37);
    let p = random_problem(&mut rng, n, 0.2, 3.0);
    let (v, gb) = random_batch(&mut rng, rows, n);
    for compute in [Compute::F32, Compute::F64] {
        let o = opts(compute);
        let one = b.vjp(&p, VInput::F32(&v), GradG::C64(&gb), DvFormat::F32, &o).unwrap();
        let blocks = with(Some(64), Some(0x7f)).vjp(&p, VInput::F32(&v), GradG::C64(&gb), DvFormat::F32, &o).unwrap();
        assert_eq!(one, blocks, "{compute:?}: 64-row chunks");
        let small = with(Some(23), None).vjp(&p, VInput::F32(&v), GradG::C64(&gb), DvFormat::F32, &o).unwrap();
        assert_eq!(one.dv, small.dv);
        let e = errors(&small, &one);
        assert!(e.iter().all(|&x| x < 1e-14), "{compute:?}: 23-row chunks {e:?}");
        // The same call twice: the same bits (no atomics).
        assert_eq!(one, b.vjp(&p, VInput::F32(&v), GradG::C64(&gb), DvFormat::F32, &o).unwrap());
    }
}

/// Near the real axis every row in f64 (Auto); a row with a huge potential alone in f64.
pub fn redoes_rows_in_f64_like_the_cpu(b: &dyn Backend) {
    let mut rng = Rng::new(64);
    // Near the real axis Auto runs every row in f64.
    let p = Problem::laplacian(200, Complex64::new(0.1, 1e-3)).unwrap();
    let (v, gb) = random_batch(&mut rng, 5, 200);
    let wide: Vec<f64> = v.iter().map(|&x| x as f64).collect();
    let oracle = gref::vjp_batch(&p, &wide, GradG::C64(&gb)).unwrap();
    let mut out = Vjp::alloc(DvFormat::F64, 5, 200);
    let info = b.vjp_into(&p, VInput::F32(&v), GradG::C64(&gb), &mut out, &opts(Compute::Auto)).unwrap();
    assert_eq!(info.rows_f64, 5);
    assert!(errors(&out, &oracle).iter().all(|&e| e < tol::VJP_F64));
    // Im z = 1, one row with a potential beyond the safe f32 range: that row alone in f64, in F32
    // and in Auto mode.
    let p = Problem::laplacian(64, Complex64::new(0.0, 1.0)).unwrap();
    let (mut v, gb) = random_batch(&mut rng, 20, 64);
    v[17 * 64 + 5] = 3e16;
    let wide: Vec<f64> = v.iter().map(|&x| x as f64).collect();
    let oracle = gref::vjp_batch(&p, &wide, GradG::C64(&gb)).unwrap();
    for compute in [Compute::F32, Compute::Auto] {
        let mut out = Vjp::alloc(DvFormat::F64, 20, 64);
        let info = b.vjp_into(&p, VInput::F32(&v), GradG::C64(&gb), &mut out, &opts(compute)).unwrap();
        assert_eq!(info.rows_f64, 1, "{compute:?}");
        let (a, b) = (out.dv.to_f64(), oracle.dv.to_f64());
        assert!(rel(&a[17 * 64..18 * 64], &b[17 * 64..18 * 64]) < tol::VJP_F64, "{compute:?}: the redone row");
        assert!(rel(&a, &b) < tol::VJP_F32, "{compute:?}");
    }
}

/// Shapes, non-finite dL/dG and potentials under every NaN policy, singular matrices: the CPU
/// backend's errors and results.
pub fn reports_errors_like_the_cpu(b: &dyn Backend) {
    let cpu = CpuBackend::new();
    let p = Problem::laplacian(16, Complex64::new(0.0, 1.0)).unwrap();
    let v = vec![0.5f32; 32];
    let gb = vec![Complex32::new(1.0, 0.0); 32];
    let o = SolveOptions::default();
    // Host-side checks: shapes and non-finite upstream gradients.
    let e = b.vjp(&p, VInput::F32(&v), GradG::C64(&gb[..31]), DvFormat::F32, &o).unwrap_err();
    assert!(matches!(e, BkError::Shape { .. }), "{e}");
    let mut bad = gb.clone();
    bad[20] = Complex32::new(f32::NAN, 0.0);
    let e = b.vjp(&p, VInput::F32(&v), GradG::C64(&bad), DvFormat::F32, &o).unwrap_err();
    assert!(matches!(e, BkError::NonFinite { row: 1, pos: 4, .. }), "{e}");
    // Non-finite potentials: error, zero and propagate policies, float and dequantized inputs.
    let mut vb = v.clone();
    vb[3] = f32::INFINITY;
    let e = b.vjp(&p, VInput::F32(&vb), GradG::C64(&gb), DvFormat::F32, &o).unwrap_err();
    assert!(matches!(e, BkError::NonFinite { row: 0, pos: 3, .. }), "{e}");
    let mut scale = vec![0.01f32; 16];
    scale[9] = 3e38;
    let mut codes = vec![3u8; 32];
    codes[9] = 0; // row 0, position 9: 0 · 3e38 = 0
    codes[16 + 9] = 100; // row 1, position 9: 100 · 3e38 = +inf
    let q = QTensor::from_parts("v", QuantSpec::int8_per_channel(), 2, 16, codes, AffineParams { scale, zero: None }).unwrap();
    let e = b.vjp(&p, VInput::Quant(&q), GradG::C64(&gb), DvFormat::F32, &o).unwrap_err();
    assert!(matches!(e, BkError::NonFinite { row: 1, pos: 9, .. }), "{e}");
    for policy in [NanPolicy::Zero, NanPolicy::Propagate] {
        for compute in [Compute::F32, Compute::F64] {
            let o = SolveOptions { nan_policy: policy, compute };
            for input in [VInput::F32(&vb), VInput::Quant(&q)] {
                let got = b.vjp(&p, input, GradG::C64(&gb), DvFormat::F64, &o).unwrap();
                let want = cpu.vjp(&p, input, GradG::C64(&gb), DvFormat::F64, &o).unwrap();
                let (a, b) = (got.dv.to_f64(), want.dv.to_f64());
                assert!(a.iter().zip(&b).all(|(x, y)| x.is_nan() == y.is_nan()), "{policy:?} {compute:?}: NaN gradients");
                // Propagate: the row with the infinite potential runs in f64 (|v| beyond the f32
                // range). The CPU redoes its whole tile of rows in f64, a GPU only that row: the
                // other row's f32 result then agrees within f32 rounding instead of bit for bit.
                let exact = policy == NanPolicy::Zero || compute == Compute::F64;
                let close = |x: &f64, y: &f64| x == y || (x.is_nan() && y.is_nan()) || (!exact && (x - y).abs() <= tol::VJP_F32 * (1.0 + y.abs()));
                assert!(a.iter().zip(&b).all(|(x, y)| close(x, y)), "{policy:?} {compute:?}");
                if policy == NanPolicy::Zero {
                    assert!(errors(&got, &want).iter().all(|&e| e < 1e-12), "{policy:?} {compute:?}");
                }
            }
        }
    }
    // A singular matrix (z on the real axis at an eigenvalue of row 1) names its row.
    let p0 = Problem::new(H0::laplacian(4), Complex64::new(0.0, 0.0)).unwrap();
    let mut v0 = vec![0.5f32; 8];
    v0[4] = 2.0;
    let g0 = vec![Complex32::new(1.0, 0.0); 8];
    for compute in [Compute::F32, Compute::F64, Compute::Auto] {
        let e = b.vjp(&p0, VInput::F32(&v0), GradG::C64(&g0), DvFormat::F32, &opts(compute)).unwrap_err();
        assert!(matches!(e, BkError::SingularPivot { row: 1, .. }), "{compute:?}: {e}");
        let c = cpu.vjp(&p0, VInput::F32(&v0), GradG::C64(&g0), DvFormat::F32, &opts(compute)).unwrap_err();
        assert_eq!(e.to_string(), c.to_string(), "{compute:?}");
    }
}
