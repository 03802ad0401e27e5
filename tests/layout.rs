//! The C header and its Rust mirror agree: every size, offset and constant (compiled and printed by
//! the system C compiler), and the scalar quantization rules bit for bit. Skips with a printed
//! reason when no C compiler is found.

use bk_infer::grad::gpu::{VJP_CONSTANTS, VJP_FIELDS};
use bk_infer::layout::{CONSTANTS, FIELDS};
use bk_infer::quant::{codec, AffineParams, Bits, QuantSpec};
use bk_infer::workload::Rng;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn header_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels")
}

/// Compiles `src` with the system C compiler; None (after printing why) when there is none.
fn compile(name: &str, src: &str) -> Option<PathBuf> {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let dir = std::env::temp_dir().join(format!("bk-layout-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let c = dir.join(format!("{name}.c"));
    let exe = dir.join(name);
    std::fs::write(&c, src).unwrap();
    let out = Command::new(&cc)
        .args(["-std=c11", "-O2", "-Wall", "-Werror", "-I"])
        .arg(header_dir())
        .arg(&c)
        .arg("-o")
        .arg(&exe)
        .arg("-lm")
        .output();
    match out {
        Err(e) => {
            println!("skipped: no C compiler `{cc}` ({e})");
            None
        }
        Ok(o) if !o.status.success() => panic!("{cc} failed on the probe:\n{}", String::from_utf8_lossy(&o.stderr)),
        Ok(_) => Some(exe),
    }
}

fn run(exe: &Path, input: &str) -> String {
    // Input from a file: writing a large input to a pipe while the probe fills its output pipe
    // would deadlock.
    let path = exe.with_extension("in");
    std::fs::write(&path, input).unwrap();
    let out = Command::new(exe).stdin(std::fs::File::open(&path).unwrap()).stdout(Stdio::piped()).output().unwrap();
    assert!(out.status.success(), "probe exited with {}", out.status);
    String::from_utf8(out.stdout).unwrap()
}

/// Compiles a probe that prints every C expression of `fields` and `constants` after including
/// `header`, and compares each with the Rust value.
fn check_header(header: &str, fields: &[(&str, usize)], constants: &[(&str, i64)]) {
    let mut src = format!("#include <stdio.h>\n#include \"{header}\"\nint main(void) {{\n");
    for (expr, _) in fields {
        src += &format!("    printf(\"%llu\\n\", (unsigned long long)({expr}));\n");
    }
    for (expr, _) in constants {
        src += &format!("    printf(\"%lld\\n\", (long long)({expr}));\n");
    }
    src += "    return 0;\n}\n";
    let Some(exe) = compile(&format!("fields-{}", header.trim_end_matches(".h")), &src) else { return };
    let out = run(&exe, "");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), fields.len() + constants.len());
    for ((expr, rust), c) in fields.iter().zip(&lines) {
        assert_eq!(c.parse::<usize>().unwrap(), *rust, "{header}: {expr}: C says {c}, Rust says {rust}");
    }
    for ((expr, rust), c) in constants.iter().zip(&lines[fields.len()..]) {
        assert_eq!(c.parse::<i64>().unwrap(), *rust, "{header}: {expr}: C says {c}, Rust says {rust}");
    }
}

#[test]
fn every_offset_and_constant_matches_the_header() {
    check_header("bk_formats.h", FIELDS, CONSTANTS);
}

#[test]
fn every_offset_and_constant_matches_the_vjp_header() {
    check_header("bk_vjp.h", VJP_FIELDS, VJP_CONSTANTS);
}

/// Values that exercise rounding ties, clamps, signed zeros, non-finite inputs and extremes.
fn interesting_f32(rng: &mut Rng) -> f32 {
    match rng.below(12) {
        0 => [0.0, -0.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, f32::MAX, f32::MIN_POSITIVE, 1e-40][rng.below(8)],
        1 => (rng.below(40) as f32 - 20.0) + 0.5,   // exact ties
        2 => f32::from_bits(rng.next_u64() as u32), // any bit pattern
        3 => (rng.normal() * 1e6) as f32,
        4 => (rng.normal() * 1e-30) as f32,
        _ => (rng.normal() * 3.0) as f32,
    }
}

fn positive_scale(rng: &mut Rng) -> f32 {
    match rng.below(6) {
        0 => [1.0, 0.5, 0.25, 1e-30, 1e30, f32::MIN_POSITIVE][rng.below(6)],
        1 => (rng.uniform() * 1e-3) as f32 + f32::MIN_POSITIVE,
        _ => (rng.uniform() * 2.0 + 1e-3) as f32,
    }
}

const RANGES: [(i32, i32); 3] = [(-127, 127), (-128, 127), (-8, 7)];

#[test]
fn quantize_dequantize_and_dynamic_params_match_the_rust_codec_bit_for_bit() {
    let src = r#"
#include <stdio.h>
#include <string.h>
#include "bk_formats.h"
static float f(unsigned u) { float x; memcpy(&x, &u, 4); return x; }
static unsigned u(float x) { unsigned v; memcpy(&v, &x, 4); return v; }
int main(void) {
    char op;
    while (scanf(" %c", &op) == 1) {
        if (op == 'q') {
            unsigned x, s; int z, lo, hi;
            if (scanf("%x %x %d %d %d", &x, &s, &z, &lo, &hi) != 5) return 2;
            printf("%d\n", bk_quantize(f(x), f(s), z, lo, hi));
        } else if (op == 'd') {
            int q, z; unsigned s;
            if (scanf("%d %x %d", &q, &s, &z) != 3) return 2;
            printf("%x\n", u(bk_dequantize(q, f(s), z)));
        } else if (op == 'r') {
            unsigned lo, hi; int sym, qmin, qmax; float s; int16_t z;
            if (scanf("%x %x %d %d %d", &lo, &hi, &sym, &qmin, &qmax) != 5) return 2;
            bk_params_from_range(f(lo), f(hi), sym, qmin, qmax, &s, &z);
            printf("%x %d\n", u(s), (int)z);
        } else if (op == 'c') {
            unsigned b; unsigned fmt, i;
            if (scanf("%x %u %u", &b, &fmt, &i) != 3) return 2;
            unsigned char row[2] = {(unsigned char)b, (unsigned char)(b >> 8)};
            printf("%d\n", bk_code_at(row, fmt, i));
        } else return 3;
    }
    return 0;
}
"#;
    let Some(exe) = compile("codec", src) else { return };
    let mut rng = Rng::new(0xb17);
    let mut input = String::new();
    let mut want = vec![];
    for _ in 0..20_000 {
        let (qmin, qmax) = RANGES[rng.below(3)];
        let (x, s) = (interesting_f32(&mut rng), positive_scale(&mut rng));
        let z = if rng.below(3) == 0 { 0 } else { rng.below(301) as i32 - 150 };
        input += &format!("q {:x} {:x} {z} {qmin} {qmax}\n", x.to_bits(), s.to_bits());
        want.push(format!("{}", codec::quantize(x, s, z, qmin, qmax)));

        let q = rng.below(256) as i32 - 128;
        input += &format!("d {q} {:x} {z}\n", s.to_bits());
        want.push(format!("{:x}", codec::dequantize(q, s, z).to_bits()));

        let bits = if rng.below(2) == 0 { Bits::Int8 } else { Bits::Int4 };
        let spec = QuantSpec { bits, group_size: 1, symmetric: rng.below(2) == 0, dynamic: true };
        let (lo, hi) = match rng.below(5) {
            // around the degenerate-scale threshold f32::MIN_POSITIVE * 1e6 * levels
            0 => {
                let t = (f32::MIN_POSITIVE * 1e6) * spec.levels() as f32 * (0.5 + rng.uniform() as f32);
                (-t * rng.uniform() as f32, t)
            }
            1 => (interesting_f32(&mut rng), interesting_f32(&mut rng)),
            2 => {
                let a = interesting_f32(&mut rng);
                (a, a)
            }
            _ => {
                let a = (rng.normal() * 2.0) as f32;
                (a, a + (rng.uniform() * 3.0) as f32)
            }
        };
        input += &format!("r {:x} {:x} {} {} {}\n", lo.to_bits(), hi.to_bits(), spec.symmetric as i32, spec.qmin(), spec.qmax());
        let (rs, rz) = AffineParams::from_range(&spec, lo, hi);
        want.push(format!("{:x} {rz}", rs.to_bits()));

        let b = rng.below(65536) as u32;
        let (fmt, i) = if rng.below(2) == 0 {
            (bk_infer::layout::FMT_INT8, rng.below(2))
        } else {
            (bk_infer::layout::FMT_INT4, rng.below(4))
        };
        input += &format!("c {b:x} {fmt} {i}\n");
        let row = [b as u8, (b >> 8) as u8];
        let code = if fmt == bk_infer::layout::FMT_INT8 { row[i] as i8 as i32 } else { codec::int4_at(&row, i) as i32 };
        want.push(format!("{code}"));
    }
    let out = run(&exe, &input);
    let got: Vec<&str> = out.lines().collect();
    assert_eq!(got.len(), want.len());
    let cases: Vec<&str> = input.lines().collect();
    let bad: Vec<String> = got
        .iter()
        .zip(&want)
        .zip(&cases)
        .filter(|((g, w), _)| **g != w.as_str())
        .take(10)
        .map(|((g, w), c)| format!("{c}: C {g}, Rust {w}"))
        .collect();
    assert!(bad.is_empty(), "C and Rust disagree:\n{}", bad.join("\n"));
}
