//! Calls of one or two long rows take the CPU backend's chunked path (each row cut into chunks,
//! one per lane, each chain rerun from its neighbour's true edge until it meets the guessed
//! one): against the f64 oracle, bit for bit against the batch recursion of the same rows, for
//! every output and input format, and for every input the batch path treats specially.

mod common;
use bk_infer::backend::{Backend, Compute, CpuBackend, GFormat, GOutput, SolveInfo, SolveOptions, VInput};
use bk_infer::problem::{NanPolicy, H0};
use bk_infer::quant::{Bits, ComplexQuant, QTensor, QuantSpec, TensorQuant};
use bk_infer::workload::Rng;
use bk_infer::{reference, stats, BkError, Problem};
use common::tol;
use num_complex::Complex64;

fn run(p: &Problem, v: VInput<'_>, fmt: &GFormat, compute: Compute) -> (GOutput, SolveInfo) {
    let rows = v.len() / p.n();
    let mut out = GOutput::alloc(fmt, rows, p.n()).unwrap();
    let opts = SolveOptions { compute, ..Default::default() };
    let info = CpuBackend::new().solve_into(p, v, &mut out, &opts).unwrap();
    (out, info)
}

/// Shapes around the chunk geometry: exact multiples, one past, primes; one row, two, four
/// (on both threads: a row per thread, and from 2^17 values a single row's tiles over them).
const SHAPES: [(usize, usize); 8] = [(1, 4096), (1, 8193), (1, 10007), (1, 65536), (1, 131075), (2, 8192), (2, 32771), (4, 65537)];

/// The oracle's bounds (f32: 1e-6 for Im z ≥ 0.1; f64: 1e-12 down to Im z = 1e-3), on random
/// H0 and z, and the path really was the chunked one.
#[test]
fn chunked_rows_match_the_oracle() {
    let mut rng = Rng::new(3);
    for (rows, n) in SHAPES {
        for (im, compute, bound) in [
            (1.0, Compute::F32, tol::F32_IMZ_GE_0_1),
            (0.1, Compute::Auto, tol::F32_IMZ_GE_0_1),
            (1e-3, Compute::Auto, tol::F64),
            (0.3, Compute::F64, tol::F64),
        ] {
            let p = common::random_problem(&mut rng, n, im, im);
            let v = common::normal_f32(&mut rng, rows * n, 1.5);
            let exact = reference::solve_batch_f32(&p, &v).unwrap();
            let (g, info) = run(&p, VInput::F32(&v), &GFormat::C128, compute);
            let err = stats::rel_l2(&g.to_c128(), &exact);
            let ctx = format!("rows {rows} n {n} z {} {compute:?}: err {err:e}", p.z());
            assert!(info.chunked, "{ctx}: not chunked");
            assert!(err <= bound, "{ctx}");
            assert_eq!(info.rows_f64, if compute == Compute::F32 || im >= 0.05 && compute == Compute::Auto { 0 } else { rows }, "{ctx}");
        }
    }
}

/// A chunked row equals, bit for bit, the same row in a batch of 17 (tiles of 32 lanes, whose
/// schedule is the two-sided one in f64 and in f32 below |Im z| = 0.05): the guessed edges
/// leave no trace. Includes H0 with k < 0 (no contraction guarantee: chains may never meet
/// and are recomputed whole) and Im z < 0 .
#[test]
fn chunked_rows_equal_the_batch_recursion_bit_for_bit() {
    let mut rng = Rng::new(4);
    for (rows, n) in SHAPES {
        for (compute, z) in [
            (Compute::F64, Complex64::new(-1.0, 0.5)),
            (Compute::F32, Complex64::new(0.3, 0.04)),
            (Compute::F64, Complex64::new(0.2, -0.002)),
            (Compute::F32, Complex64::new(-0.5, 0.01)),
        ] {
            let mut h0 = common::random_h0(&mut rng, n);
            if z.im < 0.0 {
                h0.sub.iter_mut().step_by(3).for_each(|x| *x = -*x);
            }
            let p = Problem::new(h0, z).unwrap();
            let v = common::normal_f32(&mut rng, rows * n, 1.0);
            let (g, info) = run(&p, VInput::F32(&v), &GFormat::C128, compute);
            assert!(info.chunked);
            let batch: Vec<f32> = v.iter().copied().cycle().take(17 * rows * n).collect();
            let (want, info) = run(&p, VInput::F32(&batch), &GFormat::C128, compute);
            assert!(!info.chunked);
            let (GOutput::C128(g), GOutput::C128(want)) = (g, want) else { unreachable!() };
            for (i, (a, b)) in g.iter().zip(&want).enumerate() {
                assert!(a.re.to_bits() == b.re.to_bits() && a.im.to_bits() == b.im.to_bits(), "rows {rows} n {n} z {z} {compute:?}: position {i}: {a} vs {b}");
            }
        }
    }
}

/// Every output format is the complex64/complex128 result rounded once, as the batch path
/// stores it; quantized outputs take the batch path.
#[test]
fn chunked_output_formats_round_the_computed_values_once() {
    let mut rng = Rng::new(5);
    let n = 9000;
    let p = common::random_problem(&mut rng, n, 0.5, 2.0);
    let v = common::normal_f32(&mut rng, n, 1.0);
    let (GOutput::C64(g), _) = run(&p, VInput::F32(&v), &GFormat::C64, Compute::F32) else { unreachable!() };
    let (GOutput::C128(g128), info) = run(&p, VInput::F32(&v), &GFormat::C128, Compute::F32) else { unreachable!() };
    assert!(info.chunked);
    assert!(g.iter().zip(&g128).all(|(a, b)| a.re as f64 == b.re && a.im as f64 == b.im));
    let (GOutput::Cf16(h), info) = run(&p, VInput::F32(&v), &GFormat::Cf16, Compute::F32) else { unreachable!() };
    assert!(info.chunked);
    assert!(g.iter().zip(&h).all(|(a, b)| half::f16::from_f32(a.re).to_bits() == b.re.to_bits() && half::f16::from_f32(a.im).to_bits() == b.im.to_bits()));
    let (GOutput::Cbf16(h), _) = run(&p, VInput::F32(&v), &GFormat::Cbf16, Compute::F32) else { unreachable!() };
    assert!(g.iter().zip(&h).all(|(a, b)| half::bf16::from_f32(a.re).to_bits() == b.re.to_bits() && half::bf16::from_f32(a.im).to_bits() == b.im.to_bits()));
    let spec = QuantSpec { dynamic: true, ..QuantSpec::for_g(Bits::Int8, 1) };
    let q = GFormat::Quant(ComplexQuant { re: TensorQuant::dynamic(spec), im: TensorQuant::dynamic(spec) });
    let (_, info) = run(&p, VInput::F32(&v), &q, Compute::F32);
    assert!(!info.chunked, "quantized outputs quantize whole rows on the batch path");
}

/// Inputs other than f32 give what f32 input of the same values gives, bit for bit.
#[test]
fn chunked_input_formats_equal_f32_input_of_the_same_values() {
    let mut rng = Rng::new(6);
    // One row: two tiles, the second reading from an offset; two rows: one tile each.
    for (rows, n) in [(1, 9000), (2, 32800)] {
        let p = common::random_problem(&mut rng, n, 0.5, 2.0);
        let v = common::normal_f32(&mut rng, rows * n, 1.0);
        let c64 = |v: VInput<'_>| match run(&p, v, &GFormat::C64, Compute::Auto) {
            (GOutput::C64(g), info) => {
                assert!(info.chunked);
                g
            }
            _ => unreachable!(),
        };
        let h: Vec<half::f16> = v.iter().map(|&x| half::f16::from_f32(x)).collect();
        let hv: Vec<f32> = h.iter().map(|x| x.to_f32()).collect();
        assert_eq!(c64(VInput::F16(&h)), c64(VInput::F32(&hv)));
        let b: Vec<half::bf16> = v.iter().map(|&x| half::bf16::from_f32(x)).collect();
        let bv: Vec<f32> = b.iter().map(|x| x.to_f32()).collect();
        assert_eq!(c64(VInput::Bf16(&b)), c64(VInput::F32(&bv)));
        let d: Vec<f64> = v.iter().map(|&x| x as f64).collect();
        assert_eq!(c64(VInput::F64(&d)), c64(VInput::F32(&v)));
        for spec in [
            QuantSpec { dynamic: true, ..QuantSpec::for_v(Bits::Int8, 1) },
            QuantSpec { dynamic: true, ..QuantSpec::for_v(Bits::Int4, 128) },
            QuantSpec { dynamic: true, ..QuantSpec::for_v(Bits::Int4, 100) },
        ] {
            let q = QTensor::quantize("v", &TensorQuant::dynamic(spec), &v, rows, n).unwrap();
            let dq = q.dequantize();
            assert_eq!(c64(VInput::Quant(&q)), c64(VInput::F32(&dq)), "{spec} rows {rows}");
        }
    }
}

/// What the batch path treats specially is treated the same at chunked shapes: the NaN
/// policies, huge potentials (f64 in Auto mode), a singular matrix (error naming row and
/// position).
#[test]
fn chunked_shapes_keep_the_batch_paths_checks() {
    let n = 32768;
    let p = Problem::laplacian(n, Complex64::new(0.0, 1.0)).unwrap();
    let mut v = vec![0.5f32; 2 * n];
    let (_, info) = run(&p, VInput::F32(&v), &GFormat::C64, Compute::Auto);
    assert!(info.chunked);
    v[n + 4000] = f32::NAN;
    let cpu = CpuBackend::new();
    let mut out = GOutput::alloc(&GFormat::C64, 2, n).unwrap();
    let err = cpu.solve_into(&p, VInput::F32(&v), &mut out, &SolveOptions::default()).unwrap_err();
    assert!(matches!(err, BkError::NonFinite { row: 1, pos: 4000, .. }), "{err}");
    let opts = SolveOptions { nan_policy: NanPolicy::Propagate, ..Default::default() };
    cpu.solve_into(&p, VInput::F32(&v), &mut out, &opts).unwrap();
    let GOutput::C64(g) = &out else { unreachable!() };
    assert!(g[..n].iter().all(|x| x.re.is_finite()) && g[n..].iter().all(|x| x.re.is_nan()));

    v[n + 4000] = 1e30;
    let (g, info) = run(&p, VInput::F32(&v), &GFormat::C128, Compute::Auto);
    assert!(info.rows_f64 >= 1, "a potential beyond the f32 range runs in f64");
    let exact = reference::solve_batch_f32(&p, &v).unwrap();
    assert!(stats::rel_l2(&g.to_c128(), &exact) <= tol::F64);

    // Re d = 0 everywhere, Im z = 0, k = 1: the pivots of the free chain 0, −1/0 … are singular.
    let h0 = H0 { diag: vec![0.0; n], sup: vec![1.0; n - 1], sub: vec![1.0; n - 1] };
    let p = Problem::new(h0, Complex64::new(0.0, 0.0)).unwrap();
    let err = cpu.solve_into(&p, VInput::F32(&vec![0.0; n]), &mut GOutput::alloc(&GFormat::C64, 1, n).unwrap(), &SolveOptions::default()).unwrap_err();
    assert!(matches!(err, BkError::SingularPivot { row: 0, .. }), "{err}");
}
