//! The GPU backward pass without a GPU: the real kernel source (kernels/bk_vjp.cuh) runs on the CPU
//! through tests/emu (one std::thread per CUDA thread), driven by the same host code the CUDA
//! backend runs (`grad::gpu::run`: chunks, the f64 redo of flagged rows, the reduction, errors),
//! through an emulated device whose memory is one arena. Checked against the f64 oracle and the
//! CPU backend (tests/common/vjp.rs; tests/layout.rs checks the header against its Rust mirror). Skips with a printed reason when no
//! C/C++ compiler is found.

mod common;
use common::vjp;

use bk_infer::backend::{Backend, CpuBackend, SolveInfo, SolveOptions, VInput};
use bk_infer::grad::gpu::{self, BkVjpParams, BkVjpReduceParams, VjpDevice, VjpRunOptions, VJP_THREADS};
use bk_infer::grad::{DvFormat, GradG, Vjp};
use bk_infer::layout::{FMT_F32, STATUS_BAD_LAUNCH, STATUS_WRITTEN};
use bk_infer::workload::Rng;
use bk_infer::Problem;
use num_complex::Complex64;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The compiled emulator driver, or the reason there is none.
fn driver() -> Result<&'static Path, String> {
    static D: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    common::emu_driver(&D, "tests/emu/vjp_driver.cpp", "bk-vjp-emu")
}

fn skip() -> bool {
    common::skipped(driver())
}

/// Device memory stand-in: one arena, regions 256-byte aligned; an address is offset + 1.
struct EmuDev {
    arena: Vec<u8>,
    free: usize,
    /// Corrupts every backward launch's parameters (to check that the kernel rejects them).
    corrupt: Option<fn(&mut BkVjpParams)>,
}

#[derive(Clone, Copy)]
struct Region {
    at: usize,
    len: usize,
}

impl EmuDev {
    fn new() -> Self {
        EmuDev { arena: vec![], free: 1 << 30, corrupt: None }
    }

    fn launch(&mut self, kind: u32, params: &[u8], grid: (u32, u32)) -> bk_infer::Result<()> {
        let mut head = kind.to_le_bytes().to_vec();
        head.extend_from_slice(params);
        for x in [grid.0, grid.1, VJP_THREADS] {
            head.extend_from_slice(&x.to_le_bytes());
        }
        self.arena = common::emu_launch(driver().unwrap(), &head, &self.arena, "bk-vjp-emu-launch");
        Ok(())
    }
}

impl VjpDevice for EmuDev {
    type Buf = Region;
    fn name(&self) -> String {
        "emulated".into()
    }
    fn free_bytes(&mut self) -> bk_infer::Result<usize> {
        Ok(self.free)
    }
    fn alloc(&mut self, bytes: usize, _what: &str) -> bk_infer::Result<Region> {
        let at = self.arena.len().next_multiple_of(256);
        // Fresh memory holds garbage, not zeros: every byte read must have been written.
        self.arena.resize(at + bytes.max(1), 0xa5);
        Ok(Region { at, len: bytes.max(1) })
    }
    fn addr(&self, b: &Region) -> u64 {
        b.at as u64 + 1
    }
    fn upload(&mut self, b: &mut Region, src: &[u8], what: &str) -> bk_infer::Result<()> {
        assert!(src.len() <= b.len, "{what}: {} bytes into {}", src.len(), b.len);
        self.arena[b.at..b.at + src.len()].copy_from_slice(src);
        Ok(())
    }
    fn download(&mut self, b: &Region, dst: &mut [u8], what: &str) -> bk_infer::Result<()> {
        assert!(dst.len() <= b.len, "{what}: {} bytes from {}", dst.len(), b.len);
        dst.copy_from_slice(&self.arena[b.at..b.at + dst.len()]);
        Ok(())
    }
    fn fill(&mut self, b: &mut Region, bytes: usize, value: u8, _what: &str) -> bk_infer::Result<()> {
        let len = bytes.min(b.len);
        self.arena[b.at..b.at + len].fill(value);
        Ok(())
    }
    fn launch_vjp(&mut self, f64: bool, p: &BkVjpParams, grid: u32) -> bk_infer::Result<()> {
        assert_eq!(p.compute != FMT_F32, f64, "the kernel named for the compute type");
        let mut p = *p;
        if let Some(f) = self.corrupt {
            f(&mut p);
        }
        self.launch(0, bytemuck::bytes_of(&p), (grid, 1))
    }
    fn launch_reduce(&mut self, p: &BkVjpReduceParams, grid: (u32, u32)) -> bk_infer::Result<()> {
        self.launch(1, bytemuck::bytes_of(p), grid)
    }
}

/// The emulated GPU backward pass as a backend, so that the shared tests can run it.
struct Emulated {
    chunk: Option<usize>,
    poison: Option<u8>,
}

impl Backend for Emulated {
    fn name(&self) -> &'static str {
        "emulated-cuda"
    }
    fn device(&self) -> String {
        "kernels/bk_vjp.cuh on the CPU".into()
    }
    fn solve_into(&self, p: &Problem, v: VInput<'_>, out: &mut bk_infer::backend::GOutput, opts: &SolveOptions) -> bk_infer::Result<SolveInfo> {
        CpuBackend::new().solve_into(p, v, out, opts)
    }
    fn vjp_into(&self, p: &Problem, v: VInput<'_>, g_bar: GradG<'_>, out: &mut Vjp, opts: &SolveOptions) -> bk_infer::Result<SolveInfo> {
        let ro = VjpRunOptions { max_chunk_rows: self.chunk, poison: self.poison };
        gpu::run(&mut EmuDev::new(), p, v, g_bar, out, opts, &ro)
    }
}

const EMU: Emulated = Emulated { chunk: None, poison: Some(0xff) };

#[test]
fn emulated_vjp_matches_the_oracle_and_the_cpu_bit_for_bit_per_element() {
    if skip() {
        return;
    }
    // One row to several blocks of threads and of reduction rows, N = 1 and 2 (no or one
    // coupling), long rows, random H0 (and Laplacians), Im z in [0.1, 10].
    let shapes = [(1usize, 1usize), (3, 2), (8, 3), (9, 17), (33, 129), (8, 512), (2, 1031), (130, 40), (4, 4099)];
    vjp::matches_the_oracle_and_the_cpu(&EMU, &shapes);
}

#[test]
fn emulated_vjp_reads_every_input_format_like_the_cpu() {
    if skip() {
        return;
    }
    vjp::reads_every_input_format_like_the_cpu(&EMU);
}

#[test]
fn emulated_vjp_sums_do_not_depend_on_the_chunking() {
    if skip() {
        return;
    }
    vjp::sums_do_not_depend_on_the_chunking(&|chunk, poison| Box::new(Emulated { chunk, poison }));
}

#[test]
fn emulated_vjp_redoes_rows_in_f64_like_the_cpu() {
    if skip() {
        return;
    }
    vjp::redoes_rows_in_f64_like_the_cpu(&EMU);
}

#[test]
fn emulated_vjp_reports_errors_like_the_cpu() {
    if skip() {
        return;
    }
    vjp::reports_errors_like_the_cpu(&EMU);
}

#[test]
fn emulated_kernel_rejects_launch_parameters_it_was_not_built_for() {
    if skip() {
        return;
    }
    let p = Problem::laplacian(16, Complex64::new(0.0, 1.0)).unwrap();
    let (v, gb) = vjp::random_batch(&mut Rng::new(65), 3, 16);
    let corruptions: [fn(&mut BkVjpParams); 3] = [|p| p.threads = 32, |p| p.gbar_format = 9, |p| p.in_format = 7];
    for c in corruptions {
        let mut dev = EmuDev::new();
        dev.corrupt = Some(c);
        let mut out = Vjp::alloc(DvFormat::F32, 3, 16);
        let e = gpu::run(&mut dev, &p, VInput::F32(&v), GradG::C64(&gb), &mut out, &SolveOptions::default(), &VjpRunOptions::default())
            .unwrap_err();
        assert!(e.to_string().contains("rejected its launch parameters"), "{e}");
        assert!(e.to_string().contains(&format!("{:#x}", STATUS_WRITTEN | STATUS_BAD_LAUNCH)), "{e}");
    }
}
