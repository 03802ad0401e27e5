//! Runs the real kernel source (kernels/bk_recursion.cuh) on the CPU through tests/emu (one thread
//! per CUDA thread, barriers for __syncthreads and shuffles), launched with the same
//! `BkSolveParams` and geometry the CUDA backend builds, and checks its outputs against the f64
//! oracle, the CPU backend and the host quantization rules. This exercises the kernel logic
//! (scans, tiles, scratch, stores, status flags) without a GPU; GPU memory semantics and speed
//! remain for tests/gpu.rs on a GPU. Skips with a printed reason when no C++20 compiler is found.

mod common;
use common::tol;

use bk_infer::backend::geometry::Geometry;
use bk_infer::backend::{Arith, Backend, Compute, GFormat, GOutput, SolveOptions, VInput};
use bk_infer::layout::*;
use bk_infer::quant::{AffineParams, Bits, ComplexQuant, QTensor, QuantSpec, TensorQuant};
use bk_infer::workload::Rng;
use bk_infer::{reference, stats, CpuBackend, Problem};
use num_complex::{Complex32, Complex64};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The compiled driver, or the reason there is none.
fn driver() -> Result<&'static Path, String> {
    static D: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    common::emu_driver(&D, "tests/emu/driver.cpp", "bk-kernel-emu")
}

/// Device memory stand-in: regions 256-byte aligned; a pointer is offset + 1 (0 is null).
#[derive(Default)]
struct Arena {
    bytes: Vec<u8>,
}

impl Arena {
    fn put(&mut self, data: &[u8]) -> u64 {
        let at = self.bytes.len().next_multiple_of(256);
        self.bytes.resize(at, 0);
        self.bytes.extend_from_slice(data);
        at as u64 + 1
    }
    fn filled(&mut self, len: usize, byte: u8) -> u64 {
        self.put(&vec![byte; len.max(1)])
    }
    fn get(&self, ptr: u64, len: usize) -> &[u8] {
        &self.bytes[(ptr - 1) as usize..(ptr - 1) as usize + len]
    }
}

/// Copies bytes into a vector of plain values (the arena has no alignment for T guarantees).
fn pods<T: bytemuck::Pod>(b: &[u8]) -> Vec<T> {
    let mut v = vec![T::zeroed(); b.len() / std::mem::size_of::<T>()];
    bytemuck::cast_slice_mut::<T, u8>(&mut v).copy_from_slice(b);
    v
}

fn consts<T: bytemuck::Pod>(p: &Problem, conv: impl Fn(f64) -> T, back: impl Fn(T) -> f64) -> (Vec<T>, Vec<T>, Vec<T>) {
    let exact: Vec<f64> = p.h0().diag.iter().map(|&d| d - p.z().re).collect();
    let c: Vec<T> = exact.iter().map(|&x| conv(x)).collect();
    let c_lo = exact.iter().zip(&c).map(|(&x, &h)| conv(x - back(h))).collect();
    (c, c_lo, p.k().iter().map(|&k| conv(k)).collect())
}


/// A quantized tensor's regions: codes and parameters (static ones copied, dynamic ones poisoned
/// for outputs).
fn put_q(a: &mut Arena, q: &QTensor, output: bool) -> (BkQTensor, u64, u64, u64) {
    let spec = *q.spec();
    let codes = if output { a.filled(q.codes().len(), 0xff) } else { a.put(q.codes()) };
    let (scale, zero) = if output && spec.dynamic {
        let len = q.params().scale.len();
        (a.filled(len * 4, 0xff), if spec.symmetric { 0 } else { a.filled(len * 2, 0xff) })
    } else {
        let z = q.params().zero.as_ref().map_or(0, |z| a.put(bytemuck::cast_slice(z)));
        (a.put(bytemuck::cast_slice(&q.params().scale)), z)
    };
    (BkQTensor::describe(&spec, q.n(), codes, scale, zero), codes, scale, zero)
}

/// One emulated launch over all rows; returns G and the row status words.
fn emulate(p: &Problem, v: VInput<'_>, out: &GOutput, f64c: bool, grid_cap: u32) -> (GOutput, Vec<u32>) {
    emulate_with(p, v, out, f64c, grid_cap, None, NAN_PROPAGATE)
}

/// A launch over `rows` (all when None), the way the backend's f64 redo launches, with a NaN
/// policy for dequantized potentials. Outputs and status words start poisoned (0xff).
fn emulate_with(
    p: &Problem,
    v: VInput<'_>,
    out: &GOutput,
    f64c: bool,
    grid_cap: u32,
    rows_to_do: Option<&[u32]>,
    nan_policy: u32,
) -> (GOutput, Vec<u32>) {
    let (n, rows) = (p.n(), v.len() / p.n());
    let mut a = Arena::default();
    let (c, c_lo, k) = if f64c {
        let (c, l, k) = consts(p, |x| x, |x| x);
        (a.put(bytemuck::cast_slice(&c)), a.put(bytemuck::cast_slice(&l)), a.put(bytemuck::cast_slice(&k)))
    } else {
        let (c, l, k) = consts(p, |x| x as f32, |x| x as f64);
        (a.put(bytemuck::cast_slice(&c)), a.put(bytemuck::cast_slice(&l)), a.put(bytemuck::cast_slice(&k)))
    };
    let (in_format, vp, v_q) = match v {
        VInput::F32(x) => (FMT_F32, a.put(bytemuck::cast_slice(x)), BkQTensor::default()),
        VInput::F64(x) => (FMT_F64, a.put(bytemuck::cast_slice(x)), BkQTensor::default()),
        VInput::Quant(q) => (BkQTensor::describe(q.spec(), n, 0, 0, 0).format, 0, put_q(&mut a, q, false).0),
        VInput::F16(_) | VInput::Bf16(_) => panic!("f16/bf16 are widened on the host; the kernels never see them"),
    };
    let dynamic_out = matches!(out, GOutput::Quant(q) if q.re.spec().dynamic || q.im.spec().dynamic);
    let geom = Geometry::new(n, f64c, dynamic_out);
    let launch_rows = rows_to_do.map_or(rows, |r| r.len());
    let grid = (launch_rows as u32).min(grid_cap);
    let (out_format, g, re, im) = match out {
        GOutput::C64(_) => (FMT_C64, a.filled(rows * n * 8, 0xff), None, None),
        GOutput::C128(_) => (FMT_C128, a.filled(rows * n * 16, 0xff), None, None),
        GOutput::Quant(q) => (BkQTensor::describe(q.re.spec(), n, 0, 0, 0).format, 0, Some(put_q(&mut a, &q.re, true)), Some(put_q(&mut a, &q.im, true))),
        GOutput::Cf16(_) | GOutput::Cbf16(_) => panic!("f16/bf16 outputs are rounded on the host; the kernels never write them"),
    };
    let status = a.filled(rows * 4, 0xff);
    let row_index = rows_to_do.map_or(0, |r| a.put(bytemuck::cast_slice(r)));
    let ain = a.filled(grid as usize * geom.ain_bytes, 0xff);
    let stage = a.filled(grid as usize * geom.stage_bytes, 0xff);
    let params = BkSolveParams {
        v: vp,
        c,
        c_lo,
        k: if n > 1 { k } else { 0 },
        g,
        status,
        row_index,
        ain: if geom.ain_bytes > 0 { ain } else { 0 },
        stage: if geom.stage_bytes > 0 { stage } else { 0 },
        v_q,
        g_re: re.map_or(BkQTensor::default(), |r| r.0),
        g_im: im.map_or(BkQTensor::default(), |r| r.0),
        d_im: -p.z().im,
        v_limit: if f64c { f64::INFINITY } else { bk_infer::backend::F32_MAX_V },
        rows: launch_rows as u32,
        n: n as u32,
        in_format,
        out_format,
        compute: if f64c { FMT_F64 } else { FMT_F32 },
        chunk: geom.chunk,
        threads: geom.threads,
        nan_policy,
        stage_in_shared: geom.stage_in_shared as u32,
        scan64: (Arith::for_problem(p, f64c) == Arith::F32Scan64) as u32,
    };
    let mut head = bytemuck::bytes_of(&params).to_vec();
    head.extend_from_slice(&grid.to_le_bytes());
    a.bytes = common::emu_launch(driver().unwrap(), &head, &a.bytes, "bk-emu-launch");

    let status: Vec<u32> = pods(a.get(status, rows * 4));
    let g = match out {
        GOutput::Cf16(_) | GOutput::Cbf16(_) => unreachable!("rejected above"),
        GOutput::C64(_) => GOutput::C64(pods::<Complex32>(a.get(g, rows * n * 8))),
        GOutput::C128(_) => GOutput::C128(pods::<Complex64>(a.get(g, rows * n * 16))),
        GOutput::Quant(q) => {
            let back = |t: &QTensor, r: (BkQTensor, u64, u64, u64)| {
                let spec = *t.spec();
                let codes = a.get(r.1, t.codes().len()).to_vec();
                let params = if spec.dynamic {
                    let len = t.params().scale.len();
                    AffineParams {
                        scale: pods(a.get(r.2, len * 4)),
                        zero: (!spec.symmetric).then(|| pods(a.get(r.3, len * 2))),
                    }
                } else {
                    t.params().clone()
                };
                QTensor::from_parts("g", spec, rows, n, codes, params).unwrap()
            };
            GOutput::Quant(bk_infer::quant::QComplex { re: back(&q.re, re.unwrap()), im: back(&q.im, im.unwrap()) })
        }
    };
    (g, status)
}

fn calibrate(spec: QuantSpec, x: &[f32], rows: usize, n: usize) -> TensorQuant {
    if spec.dynamic {
        return TensorQuant::dynamic(spec);
    }
    let groups = spec.groups(n);
    let (mut scale, mut zero) = (vec![0f32; groups], vec![0i16; groups]);
    for j in 0..groups {
        let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
        for r in 0..rows {
            for i in j * spec.group_size..((j + 1) * spec.group_size).min(n) {
                lo = lo.min(x[r * n + i]);
                hi = hi.max(x[r * n + i]);
            }
        }
        (scale[j], zero[j]) = AffineParams::from_range(&spec, lo, hi);
    }
    TensorQuant::new_static(spec, AffineParams { scale, zero: (!spec.symmetric).then_some(zero) })
}

fn skip() -> bool {
    common::skipped(driver())
}

fn spec(bits: Bits, g: usize, symmetric: bool, dynamic: bool) -> QuantSpec {
    QuantSpec { bits, group_size: g, symmetric, dynamic }
}

#[test]
fn emulated_kernels_match_the_oracle_and_the_cpu() {
    if skip() {
        return;
    }
    let cpu = CpuBackend::new();
    let mut rng = Rng::new(91);
    // One and several warps, one to five tiles (2048 positions per tile), N = 1, partial chunks and
    // groups, dynamic outputs staged in shared memory and (N > 4096) in global scratch; grid caps
    // below the row count exercise the grid-stride loop and scratch.
    for &(b, n, cap) in &[(3usize, 1usize, 8u32), (2, 7, 1), (4, 33, 2), (3, 300, 8), (2, 2049, 1), (1, 4200, 1), (1, 9000, 1)] {
        let p = common::random_problem(&mut rng, n, 0.1, 10.0);
        let v = common::normal_f32(&mut rng, b * n, 1.0);
        let exact = reference::solve_batch_f32(&p, &v).unwrap();
        for f64c in [false, true] {
            let compute = if f64c { Compute::F64 } else { Compute::F32 };
            let opts = SolveOptions { compute, ..Default::default() };
            let ctx = format!("({b}, {n}) {}", if f64c { "f64" } else { "f32" });
            for fmt in [GFormat::C64, GFormat::C128] {
                let (g, st) = emulate(&p, VInput::F32(&v), &GOutput::alloc(&fmt, b, n).unwrap(), f64c, cap);
                assert!(st.iter().all(|&s| s == STATUS_WRITTEN), "{ctx}: status {st:x?}");
                let e = stats::rel_l2(&g.to_c128(), &exact);
                let want = if f64c && fmt == GFormat::C128 { tol::F64 } else { tol::F32_IMZ_GE_0_1 };
                assert!(e <= want, "{ctx} {fmt:?}: rel L2 vs oracle {e:.3e}");
                let c = cpu.solve(&p, VInput::F32(&v), &fmt, &opts).unwrap();
                let ec = stats::rel_l2(&g.to_c128(), &c.g.to_c128());
                assert!(ec <= tol::GPU_VS_CPU, "{ctx} {fmt:?}: vs CPU {ec:.3e}");
            }
            // f64 potentials: rounded to f32 on load for f32 compute, like the CPU.
            let v64: Vec<f64> = v.iter().map(|&x| x as f64 * (1.0 + 1e-9)).collect();
            let (g, st) = emulate(&p, VInput::F64(&v64), &GOutput::alloc(&GFormat::C128, b, n).unwrap(), f64c, cap);
            assert!(st.iter().all(|&x| x == STATUS_WRITTEN), "{ctx} f64 input: status {st:x?}");
            let c = cpu.solve(&p, VInput::F64(&v64), &GFormat::C128, &opts).unwrap();
            let e = stats::rel_l2(&g.to_c128(), &c.g.to_c128());
            assert!(e <= if f64c { tol::F64 } else { tol::GPU_VS_CPU }, "{ctx} f64 input: vs CPU {e:.3e}");
            // Quantized inputs: within 1e-6 of the CPU on the same codes.
            for s in [QuantSpec::int8_per_channel(), QuantSpec::int4_groups(128), spec(Bits::Int4, 5, false, true)] {
                let q = QTensor::quantize("v", &calibrate(s, &v, b, n), &v, b, n).unwrap();
                let (g, st) = emulate(&p, VInput::Quant(&q), &GOutput::alloc(&GFormat::C64, b, n).unwrap(), f64c, cap);
                assert!(st.iter().all(|&x| x == STATUS_WRITTEN), "{ctx} {s}: status {st:x?}");
                let c = cpu.solve(&p, VInput::Quant(&q), &GFormat::C64, &opts).unwrap();
                let e = stats::rel_l2(&g.to_c128(), &c.g.to_c128());
                assert!(e <= tol::GPU_VS_CPU, "{ctx} {s}: vs CPU {e:.3e}");
            }
            // Quantized outputs: the host quantization of the emulated complex64 G, bit for bit.
            let (g64, _) = emulate(&p, VInput::F32(&v), &GOutput::alloc(&GFormat::C64, b, n).unwrap(), f64c, cap);
            let g64 = g64.to_c64();
            let re: Vec<f32> = g64.iter().map(|c| c.re).collect();
            let im: Vec<f32> = g64.iter().map(|c| c.im).collect();
            for s in [
                spec(Bits::Int8, 1, false, false),
                QuantSpec::int4_groups(128),
                spec(Bits::Int8, 1, false, true),
                spec(Bits::Int4, 7, false, true),
                spec(Bits::Int4, 64, false, true),
                spec(Bits::Int8, 5000, true, true),
            ] {
                let cq = ComplexQuant { re: calibrate(s, &re, b, n), im: calibrate(s, &im, b, n) };
                let out = GOutput::alloc(&GFormat::Quant(cq.clone()), b, n).unwrap();
                let (got, st) = emulate(&p, VInput::F32(&v), &out, f64c, cap);
                assert!(st.iter().all(|&x| x == STATUS_WRITTEN), "{ctx} {s}: status {st:x?}");
                let GOutput::Quant(got) = got else { unreachable!() };
                let want_re = QTensor::quantize("re", &cq.re, &re, b, n).unwrap();
                let want_im = QTensor::quantize("im", &cq.im, &im, b, n).unwrap();
                assert_eq!(got.re, want_re, "{ctx} -> {s}: real part");
                assert_eq!(got.im, want_im, "{ctx} -> {s}: imaginary part");
            }
        }
    }
}

#[test]
fn emulated_status_flags_mark_the_rows_to_redo_or_report() {
    if skip() {
        return;
    }
    let (b, n) = (4usize, 100usize);
    let p = Problem::laplacian(n, Complex64::new(0.0, 0.5)).unwrap();
    let mut v = vec![0.25f32; b * n];
    v[n + 10] = f32::NAN; // row 1: non-finite potential (propagate policy), NaN G
    v[2 * n + 50] = 1e17; // row 2: too large for f32 pivots
    let (g, st) = emulate(&p, VInput::F32(&v), &GOutput::alloc(&GFormat::C64, b, n).unwrap(), false, 8);
    assert_eq!(st[0], STATUS_WRITTEN);
    assert_eq!(st[1], STATUS_WRITTEN | STATUS_NONFINITE_V | STATUS_NONFINITE_G);
    assert_eq!(st[2] & STATUS_BIG_V, STATUS_BIG_V);
    assert_eq!(st[3], STATUS_WRITTEN);
    let g = g.to_c64();
    assert!(g[n..2 * n].iter().any(|c| c.re.is_nan()));
    // A vanishing pivot (z = 0, d_0 = 0 in row 3) gives a non-finite G there and only there.
    let p0 = Problem::laplacian(n, Complex64::new(0.0, 0.0)).unwrap();
    let mut v = vec![0.7f32; b * n];
    v[3 * n] = 2.0;
    let (_, st) = emulate(&p0, VInput::F32(&v), &GOutput::alloc(&GFormat::C64, b, n).unwrap(), true, 8);
    assert_eq!(st[..3], [STATUS_WRITTEN; 3]);
    assert_eq!(st[3], STATUS_WRITTEN | STATUS_NONFINITE_G);
}

#[test]
fn emulated_row_index_launches_touch_only_their_rows() {
    // The f64 redo of flagged rows: a launch over a row list writes those rows (output and status)
    // and nothing else.
    if skip() {
        return;
    }
    let mut rng = Rng::new(92);
    let (b, n) = (5usize, 2100usize);
    let p = common::random_problem(&mut rng, n, 0.1, 10.0);
    let v = common::normal_f32(&mut rng, b * n, 1.0);
    let exact = reference::solve_batch_f32(&p, &v).unwrap();
    let todo = [3u32, 0];
    for f64c in [false, true] {
        let (g, st) =
            emulate_with(&p, VInput::F32(&v), &GOutput::alloc(&GFormat::C64, b, n).unwrap(), f64c, 1, Some(&todo), NAN_PROPAGATE);
        let g = g.to_c128();
        for r in 0..b {
            let row = &g[r * n..(r + 1) * n];
            if todo.contains(&(r as u32)) {
                assert_eq!(st[r], STATUS_WRITTEN, "row {r}");
                let e = stats::rel_l2(row, &exact[r * n..(r + 1) * n]);
                assert!(e <= tol::F32_IMZ_GE_0_1, "row {r}: {e:.3e}");
            } else {
                assert_eq!(st[r], u32::MAX, "row {r}: status written by a launch that did not list it");
                assert!(row.iter().all(|c| c.re.is_nan()), "row {r}: output written by a launch that did not list it");
            }
        }
    }
}

#[test]
fn emulated_nan_policy_applies_to_dequantized_potentials() {
    if skip() {
        return;
    }
    let (b, n) = (3usize, 40usize);
    let p = Problem::laplacian(n, Complex64::new(0.2, 0.7)).unwrap();
    let mut scale = vec![0.01f32; n];
    scale[9] = 3e38; // code 100 there dequantizes to +inf
    let mut codes = vec![3u8; b * n];
    for r in 0..b {
        codes[r * n + 9] = if r == 1 { 100 } else { 1 }; // 3e38: finite, only row 1 overflows
    }
    let q = QTensor::from_parts("v", QuantSpec::int8_per_channel(), b, n, codes, AffineParams { scale, zero: None }).unwrap();
    let out = GOutput::alloc(&GFormat::C64, b, n).unwrap();
    let (_, st) = emulate_with(&p, VInput::Quant(&q), &out, true, 8, None, NAN_ERROR);
    assert_eq!(st[1] & STATUS_NONFINITE_V, STATUS_NONFINITE_V, "error policy: flagged for the host to report");
    assert_eq!(st[0] & STATUS_NONFINITE_V, 0);
    let (g, st) = emulate_with(&p, VInput::Quant(&q), &out, true, 8, None, NAN_ZERO);
    assert!(st.iter().all(|&s| s & (STATUS_NONFINITE_V | STATUS_NONFINITE_G) == 0), "zero policy: {st:x?}");
    // Row 1 with the infinite potential replaced by 0, against the CPU backend's zero policy.
    let cpu = CpuBackend::new()
        .solve(&p, VInput::Quant(&q), &GFormat::C64, &SolveOptions { compute: Compute::F64, nan_policy: bk_infer::NanPolicy::Zero })
        .unwrap();
    let e = stats::rel_l2(&g.to_c128()[n..2 * n], &cpu.g.to_c128()[n..2 * n]);
    assert!(e <= tol::GPU_VS_CPU, "{e:.3e}");
}

#[test]
fn emulated_f32_near_the_axis_no_worse_than_the_cpu() {
    // The data of tests/gpu.rs::near_the_axis_no_worse_than_the_cpu_and_auto_is_f64, so the
    // emulated kernel reproduces the GPU's numbers bit for bit.
    if skip() {
        return;
    }
    let cpu = CpuBackend::new();
    let opts = SolveOptions { compute: Compute::F32, ..Default::default() };
    for (b, n, im, p, v) in common::near_axis_cases() {
        let exact = reference::solve_batch_f32(&p, &v).unwrap();
        let (g, st) = emulate(&p, VInput::F32(&v), &GOutput::alloc(&GFormat::C64, b, n).unwrap(), false, 64);
        assert!(st.iter().all(|&s| s & STATUS_WRITTEN != 0), "({b}, {n}) Im z {im}: status {st:x?}");
        let eg = stats::rel_l2(&g.to_c128(), &exact);
        let ec = stats::rel_l2(&cpu.solve(&p, VInput::F32(&v), &GFormat::C64, &opts).unwrap().g.to_c128(), &exact);
        println!("({b}, {n}) Im z {im}: kernel {eg:.3e} CPU {ec:.3e}");
        assert!(eg <= ec * tol::GPU_VS_CPU_F32_FACTOR + tol::F32_IMZ_GE_0_1, "({b}, {n}) Im z {im}: kernel {eg:.3e} CPU {ec:.3e}");
        // The _s64 kernels' quantized stores: the host quantization of their complex64 G.
        if im == 1e-3 && b * n <= 8192 {
            let g64 = g.to_c64();
            let re: Vec<f32> = g64.iter().map(|c| c.re).collect();
            let im_: Vec<f32> = g64.iter().map(|c| c.im).collect();
            for s in [spec(Bits::Int8, 1, false, false), spec(Bits::Int4, 128, false, true)] {
                let cq = ComplexQuant { re: calibrate(s, &re, b, n), im: calibrate(s, &im_, b, n) };
                let out = GOutput::alloc(&GFormat::Quant(cq.clone()), b, n).unwrap();
                let (got, _) = emulate(&p, VInput::F32(&v), &out, false, 64);
                let GOutput::Quant(got) = got else { unreachable!() };
                assert_eq!(got.re, QTensor::quantize("re", &cq.re, &re, b, n).unwrap(), "({b}, {n}) -> {s}: real part");
                assert_eq!(got.im, QTensor::quantize("im", &cq.im, &im_, b, n).unwrap(), "({b}, {n}) -> {s}: imaginary part");
            }
        }
    }
}
