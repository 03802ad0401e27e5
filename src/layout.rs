//! Rust mirror of `kernels/bk_formats.h`. The const asserts pin sizes here, the header's static
//! asserts pin them there, and `tests/layout.rs` compiles the header with the C compiler and
//! compares every offset in [`FIELDS`] with it.

use bytemuck::{Pod, Zeroable};
use std::mem::{offset_of, size_of};

pub const FORMATS_VERSION: u32 = 2;

pub const FMT_F32: u32 = 0;
pub const FMT_F64: u32 = 1;
pub const FMT_INT8: u32 = 2;
pub const FMT_INT4: u32 = 3;
pub const FMT_C64: u32 = 4;
pub const FMT_C128: u32 = 5;

/// `bk_qtensor_t`: a quantized real tensor as the kernels read or write it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct BkQTensor {
    pub codes: u64,
    pub scale: u64,
    pub zero: u64,
    pub row_bytes: u64,
    pub group_size: u32,
    pub groups: u32,
    pub format: u32,
    pub dynamic: u32,
    pub qmin: i32,
    pub qmax: i32,
}

impl BkQTensor {
    /// The kernel-side view of a tensor quantized per `spec` with rows of `n` positions, at the
    /// given device addresses (`zero` is ignored for symmetric specs).
    pub fn describe(spec: &crate::quant::QuantSpec, n: usize, codes: u64, scale: u64, zero: u64) -> BkQTensor {
        BkQTensor {
            codes,
            scale,
            zero: if spec.symmetric { 0 } else { zero },
            row_bytes: spec.bits.row_bytes(n) as u64,
            group_size: spec.group_size as u32,
            groups: spec.groups(n) as u32,
            format: match spec.bits {
                crate::quant::Bits::Int8 => FMT_INT8,
                crate::quant::Bits::Int4 => FMT_INT4,
            },
            dynamic: spec.dynamic as u32,
            qmin: spec.qmin(),
            qmax: spec.qmax(),
        }
    }
}

/// `bk_solve_params_t`: everything one solve launch needs (see the header for each field).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct BkSolveParams {
    pub v: u64,
    pub c: u64,
    pub c_lo: u64,
    pub k: u64,
    pub g: u64,
    pub status: u64,
    pub row_index: u64,
    pub ain: u64,
    pub stage: u64,
    pub v_q: BkQTensor,
    pub g_re: BkQTensor,
    pub g_im: BkQTensor,
    pub d_im: f64,
    pub v_limit: f64,
    pub rows: u32,
    pub n: u32,
    pub in_format: u32,
    pub out_format: u32,
    pub compute: u32,
    pub chunk: u32,
    pub threads: u32,
    pub nan_policy: u32,
    pub stage_in_shared: u32,
    pub scan64: u32,
}

/// Per-row status flags the kernels write (`BK_STATUS_*`).
pub const STATUS_WRITTEN: u32 = 0x100;
pub const STATUS_NONFINITE_G: u32 = 0x1;
pub const STATUS_NONFINITE_V: u32 = 0x2;
pub const STATUS_BIG_V: u32 = 0x4;
pub const STATUS_BAD_LAUNCH: u32 = 0x80;

/// NaN policies for potentials dequantized in the kernels (`BK_NAN_*`).
pub const NAN_ERROR: u32 = 0;
pub const NAN_ZERO: u32 = 1;
pub const NAN_PROPAGATE: u32 = 2;

/// Positions per thread for f32 / f64 compute, the largest block, and the longest row whose
/// dynamic-output staging lives in shared memory.
pub const CHUNK_F32: u32 = 8;
pub const CHUNK_F64: u32 = 8;
pub const MAX_THREADS: u32 = 256;
pub const STAGE_SHARED_MAX_N: u32 = 4096;

const _: () = assert!(size_of::<BkQTensor>() == 56);
const _: () = assert!(offset_of!(BkQTensor, row_bytes) == 24);
const _: () = assert!(offset_of!(BkQTensor, group_size) == 32);
const _: () = assert!(offset_of!(BkQTensor, qmin) == 48);
const _: () = assert!(size_of::<BkSolveParams>() == 296);
const _: () = assert!(offset_of!(BkSolveParams, v_q) == 72);
const _: () = assert!(offset_of!(BkSolveParams, d_im) == 240);
const _: () = assert!(offset_of!(BkSolveParams, rows) == 256);

/// (C expression, Rust value) pairs: every size and field offset of the mirrored structs.
pub const FIELDS: &[(&str, usize)] = &[
    ("sizeof(bk_qtensor_t)", size_of::<BkQTensor>()),
    ("offsetof(bk_qtensor_t, codes)", offset_of!(BkQTensor, codes)),
    ("offsetof(bk_qtensor_t, scale)", offset_of!(BkQTensor, scale)),
    ("offsetof(bk_qtensor_t, zero)", offset_of!(BkQTensor, zero)),
    ("offsetof(bk_qtensor_t, row_bytes)", offset_of!(BkQTensor, row_bytes)),
    ("offsetof(bk_qtensor_t, group_size)", offset_of!(BkQTensor, group_size)),
    ("offsetof(bk_qtensor_t, groups)", offset_of!(BkQTensor, groups)),
    ("offsetof(bk_qtensor_t, format)", offset_of!(BkQTensor, format)),
    ("offsetof(bk_qtensor_t, dynamic)", offset_of!(BkQTensor, dynamic)),
    ("offsetof(bk_qtensor_t, qmin)", offset_of!(BkQTensor, qmin)),
    ("offsetof(bk_qtensor_t, qmax)", offset_of!(BkQTensor, qmax)),
    ("sizeof(bk_solve_params_t)", size_of::<BkSolveParams>()),
    ("offsetof(bk_solve_params_t, v)", offset_of!(BkSolveParams, v)),
    ("offsetof(bk_solve_params_t, c)", offset_of!(BkSolveParams, c)),
    ("offsetof(bk_solve_params_t, c_lo)", offset_of!(BkSolveParams, c_lo)),
    ("offsetof(bk_solve_params_t, k)", offset_of!(BkSolveParams, k)),
    ("offsetof(bk_solve_params_t, g)", offset_of!(BkSolveParams, g)),
    ("offsetof(bk_solve_params_t, status)", offset_of!(BkSolveParams, status)),
    ("offsetof(bk_solve_params_t, row_index)", offset_of!(BkSolveParams, row_index)),
    ("offsetof(bk_solve_params_t, ain)", offset_of!(BkSolveParams, ain)),
    ("offsetof(bk_solve_params_t, stage)", offset_of!(BkSolveParams, stage)),
    ("offsetof(bk_solve_params_t, v_q)", offset_of!(BkSolveParams, v_q)),
    ("offsetof(bk_solve_params_t, g_re)", offset_of!(BkSolveParams, g_re)),
    ("offsetof(bk_solve_params_t, g_im)", offset_of!(BkSolveParams, g_im)),
    ("offsetof(bk_solve_params_t, d_im)", offset_of!(BkSolveParams, d_im)),
    ("offsetof(bk_solve_params_t, v_limit)", offset_of!(BkSolveParams, v_limit)),
    ("offsetof(bk_solve_params_t, rows)", offset_of!(BkSolveParams, rows)),
    ("offsetof(bk_solve_params_t, n)", offset_of!(BkSolveParams, n)),
    ("offsetof(bk_solve_params_t, in_format)", offset_of!(BkSolveParams, in_format)),
    ("offsetof(bk_solve_params_t, out_format)", offset_of!(BkSolveParams, out_format)),
    ("offsetof(bk_solve_params_t, compute)", offset_of!(BkSolveParams, compute)),
    ("offsetof(bk_solve_params_t, chunk)", offset_of!(BkSolveParams, chunk)),
    ("offsetof(bk_solve_params_t, threads)", offset_of!(BkSolveParams, threads)),
    ("offsetof(bk_solve_params_t, nan_policy)", offset_of!(BkSolveParams, nan_policy)),
    ("offsetof(bk_solve_params_t, stage_in_shared)", offset_of!(BkSolveParams, stage_in_shared)),
    ("offsetof(bk_solve_params_t, scan64)", offset_of!(BkSolveParams, scan64)),
];

/// (C expression, value) pairs for the constants shared with the header.
pub const CONSTANTS: &[(&str, i64)] = &[
    ("BK_FORMATS_VERSION", FORMATS_VERSION as i64),
    ("BK_FMT_F32", FMT_F32 as i64),
    ("BK_FMT_F64", FMT_F64 as i64),
    ("BK_FMT_INT8", FMT_INT8 as i64),
    ("BK_FMT_INT4", FMT_INT4 as i64),
    ("BK_FMT_C64", FMT_C64 as i64),
    ("BK_FMT_C128", FMT_C128 as i64),
    ("BK_INT8_QMIN_SYM", -127),
    ("BK_INT8_QMIN", -128),
    ("BK_INT8_QMAX", 127),
    ("BK_INT4_QMIN", -8),
    ("BK_INT4_QMAX", 7),
    ("BK_STATUS_WRITTEN", STATUS_WRITTEN as i64),
    ("BK_STATUS_NONFINITE_G", STATUS_NONFINITE_G as i64),
    ("BK_STATUS_NONFINITE_V", STATUS_NONFINITE_V as i64),
    ("BK_STATUS_BIG_V", STATUS_BIG_V as i64),
    ("BK_STATUS_BAD_LAUNCH", STATUS_BAD_LAUNCH as i64),
    ("BK_NAN_ERROR", NAN_ERROR as i64),
    ("BK_NAN_ZERO", NAN_ZERO as i64),
    ("BK_NAN_PROPAGATE", NAN_PROPAGATE as i64),
    ("BK_CHUNK_F32", CHUNK_F32 as i64),
    ("BK_CHUNK_F64", CHUNK_F64 as i64),
    ("BK_MAX_THREADS", MAX_THREADS as i64),
    ("BK_STAGE_SHARED_MAX_N", STAGE_SHARED_MAX_N as i64),
];
