//! Builds the CUDA kernels when nvcc is available.
//!
//! Every `kernels/*.cu` is compiled by nvcc into one fatbin (sm_80 and sm_90 machine code plus
//! compute_90 PTX for newer GPUs) in OUT_DIR and embedded in the library through the generated
//! `bk_kernels.rs`; `cfg(bk_cuda)` is then set. Without nvcc the crate builds CPU-only with a
//! warning, unless `BK_REQUIRE_CUDA=1` (CI, GPU builds) makes that an error.
//!
//! nvcc is looked for in: `NVCC`; `CUDA_HOME`/bin, `CUDA_PATH`/bin; `PATH`; /usr/local/cuda/bin;
//! /opt/cuda-pip/nvidia/cu13/bin (where `.ci/install-nvcc.sh` puts it). An `NVCC` that does not
//! exist means "no nvcc" (so `NVCC=/nonexistent cargo build` tests the CPU-only build).
//!
//! The ptxas resource report (registers, spills, shared memory per kernel) is saved as
//! OUT_DIR/ptxas-report.txt (raw) and OUT_DIR/ptxas-summary.txt (one line per kernel and
//! architecture); `BK_PTXAS_REPORT=1` also prints the summary as cargo warnings.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Targets compiled into every fatbin: (virtual arch, real arch) pairs for nvcc's -gencode.
const GENCODE: &[(&str, &str)] = &[("compute_80", "sm_80"), ("compute_90", "sm_90"), ("compute_90", "compute_90")];

fn main() {
    println!("cargo::rustc-check-cfg=cfg(bk_cuda)");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=kernels");
    for var in ["NVCC", "CUDA_HOME", "CUDA_PATH", "PATH", "BK_REQUIRE_CUDA", "BK_PTXAS_REPORT", "BK_NVCC_FLAGS"] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    let sources = kernel_sources();
    for f in kernel_files() {
        println!("cargo::rerun-if-changed={}", f.display());
    }
    let require = env::var("BK_REQUIRE_CUDA").is_ok_and(|v| v == "1");
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));

    let nvcc = match find_nvcc() {
        Ok(p) => p,
        Err(why) => {
            if require {
                fail(&format!("BK_REQUIRE_CUDA=1 but no usable nvcc: {why}"));
            }
            println!("cargo::warning=building without CUDA kernels: {why} (set NVCC or install with .ci/install-nvcc.sh)");
            return;
        }
    };

    // The environment variables above change more often than what nvcc would produce (PATH, the
    // report switch, BK_REQUIRE_CUDA): reuse the fatbins when sources, nvcc and flags are the same.
    let fp = fingerprint(&nvcc, &sources, &out);
    let fp_file = out.join("kernels.fingerprint");
    let reuse = fs::read_to_string(&fp_file).is_ok_and(|old| old == fp)
        && sources.iter().all(|s| out.join(format!("{}.fatbin", stem(s))).is_file())
        && out.join("ptxas-summary.txt").is_file();
    let built = if reuse {
        if env::var("BK_PTXAS_REPORT").is_ok_and(|v| v == "1") {
            for line in fs::read_to_string(out.join("ptxas-summary.txt")).unwrap_or_default().lines() {
                println!("cargo::warning={line}");
            }
        }
        Ok(sources.iter().map(|s| (stem(s), out.join(format!("{}.fatbin", stem(s))))).collect())
    } else {
        let _ = fs::remove_file(&fp_file);
        let r = compile_all(&nvcc, &sources, &out);
        if r.is_ok() {
            fs::write(&fp_file, &fp).expect("writing the kernel fingerprint");
        }
        r
    };
    match built {
        Ok(fatbins) => {
            write_embed(&out, &fatbins, &nvcc);
            println!("cargo::rustc-cfg=bk_cuda");
        }
        Err(msg) => {
            if require {
                fail(&msg);
            }
            for line in msg.lines().take(60) {
                println!("cargo::warning={line}");
            }
            println!("cargo::warning=kernel build failed: building without CUDA kernels (BK_REQUIRE_CUDA=1 makes this an error)");
        }
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("{msg}");
    for line in msg.lines().take(60) {
        println!("cargo::warning={line}");
    }
    std::process::exit(1);
}

/// Every file under kernels/ (headers included), for rerun-if-changed.
fn kernel_files() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir("kernels")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_file()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn kernel_sources() -> Vec<PathBuf> {
    kernel_files().into_iter().filter(|p| p.extension().is_some_and(|e| e == "cu")).collect()
}

fn stem(src: &Path) -> String {
    src.file_stem().and_then(|s| s.to_str()).unwrap_or("kernel").to_string()
}

/// FNV-1a over every kernel file, nvcc's path and version, and the flags of every compile.
fn fingerprint(nvcc: &Path, sources: &[PathBuf], out: &Path) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes.iter().chain([0xffu8].iter()) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for f in kernel_files() {
        eat(f.display().to_string().as_bytes());
        eat(&fs::read(&f).unwrap_or_default());
    }
    eat(nvcc.display().to_string().as_bytes());
    let version = Command::new(nvcc).arg("--version").output().map(|o| o.stdout).unwrap_or_default();
    eat(&version);
    for src in sources {
        eat(nvcc_args(src, &out.join(format!("{}.fatbin", stem(src)))).join(" ").as_bytes());
    }
    format!("{h:016x}")
}

fn find_nvcc() -> Result<PathBuf, String> {
    if let Some(v) = env::var_os("NVCC") {
        let p = PathBuf::from(&v);
        return real(&p).ok_or_else(|| format!("NVCC={} does not exist", p.display()));
    }
    let mut tried = vec![];
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(root) = env::var_os(var) {
            let p = Path::new(&root).join("bin/nvcc");
            if let Some(r) = real(&p) {
                return Ok(r);
            }
            tried.push(p);
        }
    }
    if let Some(path) = env::var_os("PATH") {
        for dir in env::split_paths(&path) {
            if let Some(r) = real(&dir.join("nvcc")) {
                return Ok(r);
            }
        }
        tried.push(PathBuf::from("$PATH/nvcc"));
    }
    for p in ["/usr/local/cuda/bin/nvcc", "/opt/cuda-pip/nvidia/cu13/bin/nvcc"] {
        if let Some(r) = real(Path::new(p)) {
            return Ok(r);
        }
        tried.push(PathBuf::from(p));
    }
    Err(format!("nvcc not found (tried {})", tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")))
}

/// The file's real path: pip's nvcc finds its headers relative to where it really lives.
fn real(p: &Path) -> Option<PathBuf> {
    p.is_file().then(|| fs::canonicalize(p).ok()).flatten()
}

fn nvcc_args(src: &Path, fatbin: &Path) -> Vec<String> {
    let mut a: Vec<String> = vec!["-fatbin".into(), "-O3".into(), "-std=c++17".into(), "--no-compress".into()];
    // Exact IEEE arithmetic: no --use_fast_math; the recursion uses explicitly rounded intrinsics.
    a.extend(["-prec-div=true".into(), "-prec-sqrt=true".into(), "-ftz=false".into()]);
    for (virt, real) in GENCODE {
        a.push("-gencode".into());
        a.push(format!("arch={virt},code={real}"));
    }
    a.extend(["-Xptxas".into(), "-v".into(), "-Ikernels".into()]);
    if let Ok(extra) = env::var("BK_NVCC_FLAGS") {
        a.extend(extra.split_whitespace().map(String::from));
    }
    a.extend(["-o".into(), fatbin.display().to_string(), src.display().to_string()]);
    a
}

/// Compiles every source in parallel (two at a time is what CI has). Returns (stem, fatbin).
fn compile_all(nvcc: &Path, sources: &[PathBuf], out: &Path) -> Result<Vec<(String, PathBuf)>, String> {
    if sources.is_empty() {
        return Err("no kernels/*.cu files".into());
    }
    let jobs: usize = env::var("NUM_JOBS").ok().and_then(|j| j.parse().ok()).unwrap_or(2).max(1);
    let results: Vec<Result<(String, PathBuf, String), String>> = std::thread::scope(|s| {
        let mut handles = vec![];
        let mut results = vec![];
        for src in sources {
            if handles.len() >= jobs {
                let h: std::thread::ScopedJoinHandle<'_, _> = handles.remove(0);
                results.push(h.join().unwrap_or_else(|_| Err("nvcc thread panicked".into())));
            }
            handles.push(s.spawn(move || compile_one(nvcc, src, out)));
        }
        for h in handles {
            results.push(h.join().unwrap_or_else(|_| Err("nvcc thread panicked".into())));
        }
        results
    });
    let mut fatbins = vec![];
    let mut report = String::new();
    for r in results {
        let (stem, fatbin, log) = r?;
        writeln!(report, "==== {stem}.cu\n{log}").ok();
        fatbins.push((stem, fatbin));
    }
    let summary = summarize(&report);
    fs::write(out.join("ptxas-report.txt"), &report).map_err(|e| format!("writing ptxas report: {e}"))?;
    fs::write(out.join("ptxas-summary.txt"), &summary).map_err(|e| format!("writing ptxas summary: {e}"))?;
    if env::var("BK_PTXAS_REPORT").is_ok_and(|v| v == "1") {
        for line in summary.lines() {
            println!("cargo::warning={line}");
        }
    }
    fatbins.sort();
    Ok(fatbins)
}

fn compile_one(nvcc: &Path, src: &Path, out: &Path) -> Result<(String, PathBuf, String), String> {
    let stem = stem(src);
    let fatbin = out.join(format!("{stem}.fatbin"));
    let args = nvcc_args(src, &fatbin);
    let cmd = format!("{} {}", nvcc.display(), args.join(" "));
    let o = Command::new(nvcc).args(&args).output().map_err(|e| format!("could not run `{cmd}`: {e}"))?;
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    if !o.status.success() {
        return Err(format!("nvcc failed ({}) on {}:\n  command: {cmd}\n{stdout}{stderr}", o.status, src.display()));
    }
    Ok((stem, fatbin, format!("{stdout}{stderr}")))
}

/// One line per (kernel, arch): registers, spill stores/loads, stack frame, shared memory.
fn summarize(report: &str) -> String {
    let mut s = String::from("kernel                          arch    regs  spill-st  spill-ld  stack  smem\n");
    let (mut name, mut arch, mut stack, mut st, mut ld) = (String::new(), String::new(), 0u64, 0u64, 0u64);
    for line in report.lines() {
        let l = line.trim();
        if let Some(rest) = l.strip_prefix("ptxas info    : Compiling entry function '") {
            let mut parts = rest.split('\'');
            name = parts.next().unwrap_or("").to_string();
            arch = parts.nth(1).unwrap_or("").to_string();
        } else if l.contains("bytes stack frame") {
            let nums: Vec<u64> = l.split(|c: char| !c.is_ascii_digit()).filter_map(|x| x.parse().ok()).collect();
            if let [a, b, c, ..] = nums[..] {
                (stack, st, ld) = (a, b, c);
            }
        } else if let Some(rest) = l.strip_prefix("ptxas info    : Used ") {
            let regs: u64 = rest.split_whitespace().next().and_then(|x| x.parse().ok()).unwrap_or(0);
            let smem =
                rest.split(", ").find(|p| p.ends_with("bytes smem")).and_then(|p| p.split_whitespace().next()).unwrap_or("0");
            writeln!(s, "{name:<31} {arch:<7} {regs:>4}  {st:>8}  {ld:>8}  {stack:>5}  {smem}").ok();
        }
    }
    s
}

/// The generated module: fatbins, their compiled targets and the nvcc that built them.
fn write_embed(out: &Path, fatbins: &[(String, PathBuf)], nvcc: &Path) {
    let version = Command::new(nvcc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().find(|l| l.contains("release")).map(|l| l.trim().to_string()))
        .unwrap_or_else(|| "unknown".into());
    let mut g = String::from("// Generated by build.rs.\n");
    let archs: Vec<String> = GENCODE.iter().map(|(_, r)| format!("{r:?}")).collect();
    writeln!(g, "/// Targets in every embedded fatbin (sm_XX: machine code; compute_XX: PTX).").ok();
    writeln!(g, "pub const ARCHS: &[&str] = &[{}];", archs.join(", ")).ok();
    writeln!(g, "/// `nvcc --version` of the compiler that built them.").ok();
    writeln!(g, "pub const NVCC_VERSION: &str = {version:?};").ok();
    writeln!(g, "/// (source stem, fatbin) for every kernels/*.cu.").ok();
    writeln!(g, "pub static FATBINS: &[(&str, &[u8])] = &[").ok();
    for (stem, path) in fatbins {
        writeln!(g, "    ({stem:?}, include_bytes!({:?})),", path.display().to_string()).ok();
    }
    writeln!(g, "];").ok();
    fs::write(out.join("bk_kernels.rs"), g).expect("writing bk_kernels.rs");
}
