//! The backward pass (VJP): the f64 recursions against central finite differences and the dense
//! inverse, then every backend path against them.

mod common;
use bk_infer::backend::{self, Backend, Compute, CpuBackend, GFormat, SolveInfo, SolveOptions, VInput};
use bk_infer::grad::{reference as gref, DvFormat, GradG, Vjp};
use bk_infer::quant::{AffineParams, QTensor, QuantSpec, TensorQuant};
use bk_infer::workload::Rng;
use bk_infer::{reference, stats, BkError, NanPolicy, Problem, H0};
use common::tol;
use common::vjp::{errors, random_batch, rel};
use num_complex::{Complex32, Complex64};

/// L(v, H0, z) = Σ_i Re(conj(ḡ_i) G_i): its gradient is exactly the VJP with upstream ḡ.
fn loss(p: &Problem, v: &[f64], gb: &[Complex64]) -> f64 {
    let mut g = vec![Complex64::default(); p.n()];
    reference::solve_row(p, v, &mut g).unwrap();
    g.iter().zip(gb).map(|(g, b)| (b.conj() * g).re).sum()
}

fn random_gbar(rng: &mut Rng, len: usize) -> Vec<Complex64> {
    (0..len).map(|_| Complex64::new(rng.normal(), rng.normal())).collect()
}

fn with_h0(h0: H0, z: Complex64) -> Problem {
    Problem::new(h0, z).unwrap()
}

/// Central differences of L in v_j, h0_diag_j, h0_super_j, h0_sub_j and z at positions `at`.
fn check_fd(p: &Problem, v: &[f64], gb: &[Complex64], at: &[usize]) -> f64 {
    let r = gref::vjp_row(p, v, gb).unwrap();
    let (n, h) = (p.n(), 1e-5);
    let scale = r.dv.iter().fold(0f64, |m, x| m.max(x.abs())).max(1e-300);
    let mut worst = 0f64;
    for &j in at {
        let mut vp = v.to_vec();
        vp[j] += h;
        let mut vm = v.to_vec();
        vm[j] -= h;
        let fd = (loss(p, &vp, gb) - loss(p, &vm, gb)) / (2.0 * h);
        worst = worst.max((fd - r.dv[j]).abs() / scale.max(fd.abs()));
        assert!((fd - r.dv[j]).abs() <= tol::VJP_VS_FD * scale.max(fd.abs()), "n {n} dv[{j}]: fd {fd:e} vjp {:e}", r.dv[j]);
        if j + 1 < n {
            for which in 0..2 {
                let shift = |s: f64| {
                    let mut h0 = p.h0().clone();
                    if which == 0 {
                        h0.sup[j] += s;
                    } else {
                        h0.sub[j] += s;
                    }
                    with_h0(h0, p.z())
                };
                let fd = (loss(&shift(h), v, gb) - loss(&shift(-h), v, gb)) / (2.0 * h);
                let want = r.dk[j] * if which == 0 { p.h0().sub[j] } else { p.h0().sup[j] };
                worst = worst.max((fd - want).abs() / scale.max(fd.abs()));
                assert!((fd - want).abs() <= tol::VJP_VS_FD * scale.max(fd.abs()), "n {n} dk[{j}] ({which}): fd {fd:e} vjp {want:e}");
            }
        }
    }
    let zs = |dz: Complex64| with_h0(p.h0().clone(), p.z() + dz);
    let fd_re = (loss(&zs(Complex64::new(h, 0.0)), v, gb) - loss(&zs(Complex64::new(-h, 0.0)), v, gb)) / (2.0 * h);
    let fd_im = (loss(&zs(Complex64::new(0.0, h)), v, gb) - loss(&zs(Complex64::new(0.0, -h)), v, gb)) / (2.0 * h);
    let zscale = r.dz.norm().max(scale);
    assert!((fd_re - r.dz.re).abs() <= tol::VJP_VS_FD * zscale, "n {n} dRe z: fd {fd_re:e} vjp {:e}", r.dz.re);
    assert!((fd_im - r.dz.im).abs() <= tol::VJP_VS_FD * zscale, "n {n} dIm z: fd {fd_im:e} vjp {:e}", r.dz.im);
    worst.max((fd_re - r.dz.re).abs().max((fd_im - r.dz.im).abs()) / zscale)
}

#[test]
fn reference_vjp_matches_finite_differences() {
    let mut rng = Rng::new(21);
    let mut worst = 0f64;
    for &n in &[1usize, 2, 3, 5, 7, 13, 31, 64, 127] {
        for _ in 0..4 {
            let p = common::random_problem(&mut rng, n, 0.05, 5.0);
            let v: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
            let gb = random_gbar(&mut rng, n);
            let at: Vec<usize> = (0..n).collect();
            worst = worst.max(check_fd(&p, &v, &gb, &at));
        }
    }
    println!("f64 VJP vs central differences (v, h0_super, h0_sub, z), N ≤ 127: worst relative error {worst:.2e}");
}

#[test]
fn reference_vjp_matches_finite_differences_at_large_n() {
    // N = 1000+ (a prime, and a long row close to the real axis): dense sums are out of reach,
    // so differentiate a sample of coordinates.
    let mut rng = Rng::new(22);
    for &(n, im) in &[(1009usize, 0.5), (4099, 0.05)] {
        let p = Problem::new(common::random_h0(&mut rng, n), Complex64::new(0.2, im)).unwrap();
        let v: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
        let gb = random_gbar(&mut rng, n);
        let at: Vec<usize> = (0..12).map(|_| rng.below(n)).chain([0, 1, n / 2, n - 2, n - 1]).collect();
        let worst = check_fd(&p, &v, &gb, &at);
        println!("f64 VJP vs central differences, N = {n}, Im z = {im}: worst relative error {worst:.2e}");
    }
}

#[test]
fn reference_vjp_matches_dense_inverse() {
    let mut rng = Rng::new(23);
    let mut worst = 0f64;
    for &n in &[1usize, 2, 3, 4, 5, 7, 11, 17, 40] {
        for _ in 0..5 {
            let p = common::random_problem(&mut rng, n, 1e-3, 10.0);
            let v: Vec<f64> = (0..n).map(|_| 2.0 * rng.normal()).collect();
            let gb = random_gbar(&mut rng, n);
            let r = gref::vjp_row(&p, &v, &gb).unwrap();
            let (dv, dsup, dsub, dz) = gref::dense_vjp_row(&p, &v, &gb).unwrap();
            let e = rel(&r.dv, &dv);
            worst = worst.max(e);
            assert!(e < tol::VJP_VS_DENSE, "n {n} z {} dv rel {e:e}", p.z());
            let h = p.h0();
            let sup: Vec<f64> = (0..n - 1).map(|i| r.dk[i] * h.sub[i]).collect();
            let sub: Vec<f64> = (0..n - 1).map(|i| r.dk[i] * h.sup[i]).collect();
            assert!(rel(&sup, &dsup) < tol::VJP_VS_DENSE && rel(&sub, &dsub) < tol::VJP_VS_DENSE, "n {n} dH0 off-diagonals");
            assert!((r.dz - dz).norm() <= tol::VJP_VS_DENSE * dz.norm().max(1.0), "n {n} dz {} vs {dz}", r.dz);
            let g = reference::dense_inverse_diag(&p, &v).unwrap();
            assert!(stats::rel_l2(&r.g, &g) < tol::ORACLE_VS_DENSE);
        }
    }
    println!("f64 VJP vs dense inverse, N ≤ 40, Im z in [1e-3, 10]: worst relative L2 of dv {worst:.2e}");
}

#[test]
fn reference_vjp_does_not_overflow_on_long_rows() {
    // θ/φ products would overflow f64 long before N = 200 000; the pivot ratios never do.
    let n = 200_000;
    let p = Problem::laplacian(n, Complex64::new(0.0, 0.1)).unwrap();
    let mut rng = Rng::new(24);
    let v: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
    let gb = random_gbar(&mut rng, n);
    let r = gref::vjp_row(&p, &v, &gb).unwrap();
    assert!(r.dv.iter().chain(&r.dk).all(|x| x.is_finite()) && r.dz.is_finite());
    let worst = check_fd(&p, &v, &gb, &[0, 7, n / 3, n - 1]);
    println!("f64 VJP at N = {n}: finite, worst relative error vs central differences {worst:.2e}");
}

/// The backend's VJP against the f64 oracle on the same (f32) inputs: (dv, dh0_diag, dh0_super,
/// dh0_sub, dz) relative errors.
fn backend_vs_oracle(b: &dyn Backend, p: &Problem, v: &[f32], gb: &[Complex32], compute: Compute) -> [f64; 5] {
    let opts = SolveOptions { compute, ..Default::default() };
    let got = b.vjp(p, VInput::F32(v), GradG::C64(gb), DvFormat::F64, &opts).unwrap();
    let wide: Vec<f64> = v.iter().map(|&x| x as f64).collect();
    let want = gref::vjp_batch(p, &wide, GradG::C64(gb)).unwrap();
    errors(&got, &want)
}

#[test]
fn cpu_vjp_matches_oracle_in_f64_and_f32() {
    let cpu = CpuBackend::new();
    let mut rng = Rng::new(25);
    let mut worst32 = [0f64; 5];
    for &(rows, n) in &[(1usize, 1usize), (3, 2), (8, 3), (9, 17), (17, 127), (5, 128), (33, 129), (8, 512), (2, 1031), (40, 100)] {
        let p = common::random_problem(&mut rng, n, 0.1, 10.0);
        let (v, gb) = random_batch(&mut rng, rows, n);
        let e64 = backend_vs_oracle(&cpu, &p, &v, &gb, Compute::F64);
        assert!(e64.iter().all(|&e| e < tol::VJP_F64), "rows {rows} n {n} z {}: f64 {e64:?}", p.z());
        let e32 = backend_vs_oracle(&cpu, &p, &v, &gb, Compute::F32);
        assert!(e32.iter().all(|&e| e < tol::VJP_F32), "rows {rows} n {n} z {}: f32 {e32:?}", p.z());
        for (w, e) in worst32.iter_mut().zip(e32) {
            *w = w.max(e);
        }
    }
    println!("cpu f32 VJP vs f64 oracle, worst relative L2 (dv, dh0_diag, dh0_super, dh0_sub, dz): {:?}", worst32.map(|e| format!("{e:.2e}")));
}

#[test]
fn cpu_vjp_auto_runs_f64_near_the_real_axis_and_for_huge_potentials() {
    let cpu = CpuBackend::new();
    let mut rng = Rng::new(26);
    let p = Problem::laplacian(300, Complex64::new(0.1, 1e-3)).unwrap();
    let (v, gb) = random_batch(&mut rng, 12, 300);
    let e = backend_vs_oracle(&cpu, &p, &v, &gb, Compute::Auto);
    assert!(e.iter().all(|&e| e < tol::VJP_F64), "{e:?}");
    // Im z = 1, but one row carries potentials beyond the safe f32 range: that tile redoes in f64.
    let p = Problem::laplacian(64, Complex64::new(0.0, 1.0)).unwrap();
    let (mut v, gb) = random_batch(&mut rng, 20, 64);
    v[17 * 64 + 5] = 3e16;
    let opts = SolveOptions::default();
    let got = cpu.vjp(&p, VInput::F32(&v), GradG::C64(&gb), DvFormat::F64, &opts).unwrap();
    let want = gref::vjp_batch(&p, &v.iter().map(|&x| x as f64).collect::<Vec<_>>(), GradG::C64(&gb)).unwrap();
    assert!(rel(&got.dv.to_f64(), &want.dv.to_f64()) < 1e-5);
}

#[test]
fn cpu_vjp_reads_every_input_format_like_the_forward() {
    // Gradients with respect to the dequantized potentials: a quantized input gives the same
    // bits as its dequantized f32 values.
    let cpu = CpuBackend::new();
    let mut rng = Rng::new(27);
    let (rows, n) = (11, 300);
    let p = Problem::laplacian(n, Complex64::new(0.0, 1.0)).unwrap();
    let (v, gb) = random_batch(&mut rng, rows, n);
    let spec = QuantSpec::int4_groups(128);
    let groups = spec.groups(n);
    let tq = TensorQuant::new_static(spec, AffineParams { scale: vec![0.5; groups], zero: Some(vec![0; groups]) });
    let q = QTensor::quantize("v", &tq, &v, rows, n).unwrap();
    let deq = q.dequantize();
    let opts = SolveOptions { compute: Compute::F32, ..Default::default() };
    let a = cpu.vjp(&p, VInput::Quant(&q), GradG::C64(&gb), DvFormat::F32, &opts).unwrap();
    let b = cpu.vjp(&p, VInput::F32(&deq), GradG::C64(&gb), DvFormat::F32, &opts).unwrap();
    assert_eq!(a, b);
    let wide: Vec<f64> = deq.iter().map(|&x| x as f64).collect();
    let c = cpu.vjp(&p, VInput::F64(&wide), GradG::C64(&gb), DvFormat::F32, &opts).unwrap();
    assert_eq!(a, c);
    // The reused-output form gives the same result as the allocating one.
    let mut out = Vjp::alloc(DvFormat::F32, rows, n);
    cpu.vjp_into(&p, VInput::Quant(&q), GradG::C64(&gb), &mut out, &opts).unwrap();
    assert_eq!(out, a);
}

#[test]
fn cpu_vjp_rejects_bad_calls_with_clear_errors() {
    let cpu = CpuBackend::new();
    let p = Problem::laplacian(16, Complex64::new(0.0, 1.0)).unwrap();
    let v = vec![0.5f32; 32];
    let gb = vec![Complex32::new(1.0, 0.0); 32];
    let opts = SolveOptions::default();
    let e = cpu.vjp(&p, VInput::F32(&v), GradG::C64(&gb[..31]), DvFormat::F32, &opts).unwrap_err();
    assert!(matches!(e, BkError::Shape { .. }) && e.to_string().contains("dL/dG"), "{e}");
    let mut bad = gb.clone();
    bad[20] = Complex32::new(f32::NAN, 0.0);
    let e = cpu.vjp(&p, VInput::F32(&v), GradG::C64(&bad), DvFormat::F32, &opts).unwrap_err();
    assert!(matches!(e, BkError::NonFinite { row: 1, pos: 4, .. }), "{e}");
    let mut vb = v.clone();
    vb[3] = f32::INFINITY;
    let e = cpu.vjp(&p, VInput::F32(&vb), GradG::C64(&gb), DvFormat::F32, &opts).unwrap_err();
    assert!(matches!(e, BkError::NonFinite { row: 0, pos: 3, .. }), "{e}");
    let zero = SolveOptions { nan_policy: NanPolicy::Zero, compute: Compute::F64 };
    let mut vz = v.clone();
    vz[3] = 0.0;
    let a = cpu.vjp(&p, VInput::F32(&vb), GradG::C64(&gb), DvFormat::F32, &zero).unwrap();
    let b = cpu.vjp(&p, VInput::F32(&vz), GradG::C64(&gb), DvFormat::F32, &zero).unwrap();
    assert_eq!(a, b);
    let mut out = Vjp::alloc(DvFormat::F32, 3, 16);
    let e = cpu.vjp_into(&p, VInput::F32(&v), GradG::C64(&gb), &mut out, &opts).unwrap_err();
    assert!(e.to_string().contains("dL/dv"), "{e}");
    // A singular matrix (z on the real axis at an eigenvalue) names its row and position.
    let p = Problem::new(H0::laplacian(4), Complex64::new(0.0, 0.0)).unwrap();
    let mut v = vec![0.5f32; 8];
    v[4] = 2.0;
    let gb = vec![Complex32::new(1.0, 0.0); 8];
    let e = cpu.vjp(&p, VInput::F32(&v), GradG::C64(&gb), DvFormat::F32, &opts).unwrap_err();
    assert!(matches!(e, BkError::SingularPivot { row: 1, .. }), "{e}");
}

/// A backend that only solves: the VJP must be a typed "unsupported" error, not a panic.
struct SolveOnly;
impl Backend for SolveOnly {
    fn name(&self) -> &'static str {
        "solve-only"
    }
    fn device(&self) -> String {
        "test".into()
    }
    fn solve_into(&self, p: &Problem, v: VInput<'_>, out: &mut backend::GOutput, opts: &SolveOptions) -> bk_infer::Result<SolveInfo> {
        CpuBackend::new().solve_into(p, v, out, opts)
    }
}

#[test]
fn backends_without_a_vjp_say_so() {
    let p = Problem::laplacian(8, Complex64::new(0.0, 1.0)).unwrap();
    let v = vec![0.0f32; 8];
    let gb = vec![Complex32::new(1.0, 0.0); 8];
    assert!(SolveOnly.solve(&p, VInput::F32(&v), &GFormat::C64, &SolveOptions::default()).is_ok());
    let e = SolveOnly.vjp(&p, VInput::F32(&v), GradG::C64(&gb), DvFormat::F32, &SolveOptions::default()).unwrap_err();
    assert!(matches!(&e, BkError::Unsupported { backend, .. } if backend == "solve-only"), "{e}");
}

#[test]
#[ignore = "timing; run with --ignored --nocapture in release"]
fn vjp_timing() {
    let cpu = CpuBackend::new();
    for &(rows, n) in &[(8usize, 512usize), (800, 512), (4096, 512)] {
        let p = Problem::laplacian(n, Complex64::new(0.0, 1.0)).unwrap();
        let (v, gb) = random_batch(&mut Rng::new(1), rows, n);
        let opts = SolveOptions { compute: Compute::F32, ..Default::default() };
        let mut out = Vjp::alloc(DvFormat::F32, rows, n);
        let mut g = backend::GOutput::alloc(&GFormat::C64, rows, n).unwrap();
        let time = |f: &mut dyn FnMut()| {
            let mut t: Vec<f64> = (0..50)
                .map(|_| {
                    let s = std::time::Instant::now();
                    f();
                    s.elapsed().as_secs_f64()
                })
                .collect();
            t.sort_by(f64::total_cmp);
            t[25]
        };
        let tv = time(&mut || {
            cpu.vjp_into(&p, VInput::F32(&v), GradG::C64(&gb), &mut out, &opts).unwrap();
        });
        let tf = time(&mut || {
            cpu.solve_into(&p, VInput::F32(&v), &mut g, &opts).unwrap();
        });
        println!("{rows}x{n}: vjp {:.1} us ({:.0} Melem/s), forward {:.1} us", tv * 1e6, (rows * n) as f64 / tv / 1e6, tf * 1e6);
    }
}
