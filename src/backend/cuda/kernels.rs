//! The embedded kernels: fatbins built by build.rs, the names of their entry points, and loading
//! them into a device once.

use crate::backend::Arith;
use crate::error::{BkError, Result};
use crate::layout::{FMT_C128, FMT_C64, FMT_F32, FMT_F64, FMT_INT4, FMT_INT8};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use cudarc::nvrtc::Ptx;
use std::collections::HashMap;
use std::sync::Arc;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/bk_kernels.rs"));
}
pub use embedded::{ARCHS, FATBINS, NVCC_VERSION};

/// Input formats the kernels read.
pub const INPUTS: [u32; 4] = [FMT_F32, FMT_F64, FMT_INT8, FMT_INT4];
/// Output formats the kernels write.
pub const OUTPUTS: [u32; 4] = [FMT_C64, FMT_C128, FMT_INT8, FMT_INT4];

fn fmt_name(fmt: u32) -> &'static str {
    match fmt {
        FMT_F32 => "f32",
        FMT_F64 => "f64",
        FMT_INT8 => "int8",
        FMT_INT4 => "int4",
        FMT_C64 => "c64",
        FMT_C128 => "c128",
        _ => "unknown",
    }
}

/// The entry point for (input format, output format, arithmetic): `bk_solve_{in}_{out}` for f32,
/// `_s64` appended for f32 with the scan in f64, `_f64` for f64. The one place names are built.
pub fn kernel_name(input: u32, output: u32, arith: Arith) -> String {
    let suffix = match arith {
        Arith::F32 => "",
        Arith::F32Scan64 => "_s64",
        Arith::F64 => "_f64",
    };
    format!("bk_solve_{}_{}{suffix}", fmt_name(input), fmt_name(output))
}

/// Every entry point the backend may launch: the solves, then the backward pass
/// ([`crate::grad::gpu::VJP_KERNELS`]).
pub fn all_kernel_names() -> Vec<String> {
    let mut v = vec![];
    for i in INPUTS {
        for o in OUTPUTS {
            for a in [Arith::F32, Arith::F32Scan64, Arith::F64] {
                v.push(kernel_name(i, o, a));
            }
        }
    }
    v.extend(crate::grad::gpu::VJP_KERNELS.iter().map(|s| s.to_string()));
    v
}

/// Index in [`FATBINS`] of the module holding entry point `name`: the fatbin of
/// `kernels/{stem}.cu` holds the entry points named `{stem}` and `{stem}_...` (the longest such
/// stem).
fn module_of(name: &str) -> Option<usize> {
    FATBINS
        .iter()
        .enumerate()
        .filter(|(_, (stem, _))| name.strip_prefix(stem).is_some_and(|rest| rest.is_empty() || rest.starts_with('_')))
        .max_by_key(|(_, (stem, _))| stem.len())
        .map(|(i, _)| i)
}

/// The modules and functions loaded into one device's context.
pub(crate) struct Loaded {
    _modules: Vec<Arc<CudaModule>>,
    functions: HashMap<String, CudaFunction>,
}

impl Loaded {
    /// Loads every fatbin and looks up every entry point; a missing one is an error here, not at
    /// the first launch that needs it.
    pub fn load(ctx: &Arc<CudaContext>, device: &str) -> Result<Self> {
        let mut modules = vec![];
        for (stem, bytes) in FATBINS {
            // A copy: the driver reads the image with aligned loads, and a Vec's buffer is aligned.
            let m = ctx
                .load_module(Ptx::from_binary(bytes.to_vec()))
                .map_err(|e| BkError::Cuda(format!("loading kernels/{stem}.cu on {device}: {e:?}")))?;
            modules.push(m);
        }
        let mut functions = HashMap::new();
        for name in all_kernel_names() {
            // Looked up in its own module only: probing the others would be a failed driver call
            // per miss, which compute-sanitizer reports as an error.
            let f = module_of(&name).and_then(|i| modules[i].load_function(&name).ok()).ok_or_else(|| {
                BkError::Cuda(format!("kernel `{name}` is not in the embedded modules ({} fatbins)", FATBINS.len()))
            })?;
            functions.insert(name, f);
        }
        Ok(Loaded { _modules: modules, functions })
    }

    pub fn get(&self, name: &str) -> Result<&CudaFunction> {
        self.functions.get(name).ok_or_else(|| BkError::Cuda(format!("kernel `{name}` was not loaded")))
    }

    pub fn len(&self) -> usize {
        self.functions.len()
    }
}
