//! Output chunks of the CPU backend and the stores that run after a tile (the block-wise drain
//! in `io` writes complex128).

use crate::backend::lanes::{Real, Tile};
use crate::quant::tensor::{quantize_row, row_params};
use crate::quant::{dynamic_params_row, AffineParams, QTensor, QuantSpec};
use crate::precision::{bf16_from_f32_slice, bf16_from_f64, f16_from_f64};
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use num_complex::{Complex, Complex32, Complex64};

/// One tile's share of a quantized output part (re or im).
pub(super) struct QChunk<'a> {
    spec: QuantSpec,
    params: Params<'a>,
    codes: &'a mut [u8],
}

/// The parameters a quantized store uses: calibrated, or computed per row into the tile's
/// share of the output's parameters.
enum Params<'a> {
    Static(&'a AffineParams),
    Dynamic { scale: &'a mut [f32], zero: Option<&'a mut [i16]> },
}

/// Splits one quantized part into per-tile views of `tile_rows` rows.
pub(super) fn q_chunks(q: &mut QTensor, tile_rows: usize) -> Vec<QChunk<'_>> {
    let n = q.n();
    let (spec, codes, params) = q.parts_mut();
    let codes = codes.chunks_mut(tile_rows * spec.bits.row_bytes(n));
    if spec.dynamic {
        let per_tile = tile_rows * spec.groups(n);
        let mut zeros = params.zero.as_mut().map(|z| z.chunks_mut(per_tile));
        codes
            .zip(params.scale.chunks_mut(per_tile))
            .map(|(codes, scale)| QChunk { spec, params: Params::Dynamic { scale, zero: zeros.as_mut().and_then(|z| z.next()) }, codes })
            .collect()
    } else {
        let params = &*params;
        codes.map(|codes| QChunk { spec, params: Params::Static(params), codes }).collect()
    }
}

pub(super) enum Chunk<'a> {
    C64(&'a mut [Complex32]),
    C128(&'a mut [Complex64]),
    Cf16(&'a mut [Complex<f16>]),
    Cbf16(&'a mut [Complex<bf16>]),
    Quant(QChunk<'a>, QChunk<'a>),
}

impl Chunk<'_> {
    /// Complex values this chunk holds (0 for quantized parts, which count rows of codes).
    pub(super) fn len(&self) -> usize {
        match self {
            Chunk::C64(o) => o.len(),
            Chunk::C128(o) => o.len(),
            Chunk::Cf16(o) => o.len(),
            Chunk::Cbf16(o) => o.len(),
            Chunk::Quant(..) => 0,
        }
    }
}

/// Positions 0..len of lane `l` of the tile's G into the chunk's values at..at + len, each part
/// rounded once from the computed value (as the other stores do); quantized parts are not
/// stored here.
pub(super) fn store_lane<T: Real, const L: usize>(t: &Tile<T, L>, l: usize, len: usize, chunk: &mut Chunk<'_>, at: usize) {
    let (re, im) = (t.g_re[..len].iter().map(|x| x[l]), t.g_im[..len].iter().map(|x| x[l]));
    let parts = re.zip(im);
    match chunk {
        Chunk::C64(o) => o[at..at + len].iter_mut().zip(parts).for_each(|(o, (r, i))| *o = Complex32::new(r.to_f32(), i.to_f32())),
        Chunk::C128(o) => o[at..at + len].iter_mut().zip(parts).for_each(|(o, (r, i))| *o = Complex64::new(r.to_f64(), i.to_f64())),
        Chunk::Cf16(o) => o[at..at + len].iter_mut().zip(parts).for_each(|(o, (r, i))| *o = Complex::new(f16_from_f64(r.to_f64()), f16_from_f64(i.to_f64()))),
        Chunk::Cbf16(o) => o[at..at + len].iter_mut().zip(parts).for_each(|(o, (r, i))| *o = Complex::new(bf16_from_f64(r.to_f64()), bf16_from_f64(i.to_f64()))),
        Chunk::Quant(..) => {}
    }
}

/// Stores every format but complex128 (which the block-wise drain writes), from the finished
/// tile.
#[inline(always)]
pub(super) fn store_unfused<T: Real, const L: usize>(t: &Tile<T, L>, live: usize, chunk: &mut Chunk<'_>, rows: &mut Vec<f32>) {
    match chunk {
        Chunk::Quant(qre, qim) => {
            store_quant(&t.g_re, live, qre, rows);
            store_quant(&t.g_im, live, qim, rows);
        }
        Chunk::C64(out) => store_c64_rows(t, live, out),
        // One rounding from the computed value (f32 or f64) to the storage type.
        Chunk::Cf16(out) => store_half(t, live, out, rows, f16_from_f64, |x, h| h.convert_from_f32_slice(x)),
        Chunk::Cbf16(out) => store_half(t, live, out, rows, bf16_from_f64, bf16_from_f32_slice),
        Chunk::C128(_) => {}
    }
}

/// Complex G of the first `live` lanes as complex64 rows (row l at l·n).
#[inline(always)]
fn store_c64_rows<T: Real, const L: usize>(t: &Tile<T, L>, live: usize, out: &mut [Complex32]) {
    let n = t.v.len();
    let n4 = n / 4 * 4;
    let done = if T::store_c64(&t.g_re[..n4], &t.g_im[..n4], live, out, n) { n4 } else { 0 };
    for l in 0..live {
        for i in done..n {
            out[l * n + i] = Complex32::new(t.g_re[i][l].to_f32(), t.g_im[i][l].to_f32());
        }
    }
}

/// Complex G of the first `live` lanes as half-precision rows, each value rounded once. An f32
/// tile goes to complex64 rows in `stage` (the vectorised transpose), then every value narrows
/// with `narrow_f32s` (F16C for f16 where the CPU has it, a loop that vectorises for bf16): the
/// f32 values are what was computed, so that is the one rounding `narrow` would make (a
/// lane-by-lane scalar store cost 4× the whole f32 → complex64 call at 4096 × 512). An f64 tile
/// rounds from its f64 values with `narrow`.
#[inline(always)]
fn store_half<T: Real, H, const L: usize>(t: &Tile<T, L>, live: usize, out: &mut [Complex<H>], stage: &mut Vec<f32>, narrow: fn(f64) -> H, narrow_f32s: impl Fn(&[f32], &mut [H]))
where
    H: bytemuck::Pod,
    Complex<H>: bytemuck::Pod,
{
    if std::any::TypeId::of::<T>() != std::any::TypeId::of::<f32>() {
        return store_rows(t, live, out, |x| narrow(x.to_f64()));
    }
    let len = live * t.v.len();
    stage.resize(2 * len, 0.0);
    store_c64_rows(t, live, bytemuck::cast_slice_mut(&mut stage[..2 * len]));
    narrow_f32s(&stage[..2 * len], bytemuck::cast_slice_mut(&mut out[..len]));
}

/// Complex G of the first `live` lanes to rows, each part converted by `conv`.
#[inline(always)]
fn store_rows<T: Real, U, const L: usize>(t: &Tile<T, L>, live: usize, out: &mut [Complex<U>], conv: impl Fn(T) -> U) {
    let n = t.v.len();
    for l in 0..live {
        for i in 0..n {
            out[l * n + i] = Complex::new(conv(t.g_re[i][l]), conv(t.g_im[i][l]));
        }
    }
}

/// Quantizes one part (re or im) of a tile's G: eight lanes at a time back to rows (in `rows`,
/// 8 × n), then each row with the shared row codec, computing its parameters first when the
/// spec is dynamic.
#[inline(always)]
fn store_quant<T: Real, const L: usize>(g: &[[T; L]], live: usize, q: &mut QChunk<'_>, rows: &mut Vec<f32>) {
    let n = g.len();
    let spec = q.spec;
    let (rb, groups) = (spec.bits.row_bytes(n), spec.groups(n));
    rows.resize(8 * n, 0.0);
    for q8 in 0..live.div_ceil(8) {
        let n8 = n / 8 * 8;
        let done = if T::rows_f32(&g[..n8], q8, rows, n) { n8 } else { 0 };
        for (i, lane) in g.iter().enumerate().skip(done) {
            for j in 0..8 {
                rows[j * n + i] = lane[q8 * 8 + j].to_f32();
            }
        }
        for j in 0..(live - 8 * q8).min(8) {
            let l = 8 * q8 + j;
            let x = &rows[j * n..(j + 1) * n];
            let codes = &mut q.codes[l * rb..(l + 1) * rb];
            match &mut q.params {
                Params::Static(p) => {
                    let (scale, zero) = row_params(&spec, p, 0, n);
                    quantize_row(&spec, scale, zero, x, codes);
                }
                Params::Dynamic { scale, zero } => {
                    let scale = &mut scale[l * groups..(l + 1) * groups];
                    let mut zero = zero.as_deref_mut().map(|z| &mut z[l * groups..(l + 1) * groups]);
                    dynamic_params_row(&spec, x, scale, zero.as_deref_mut());
                    quantize_row(&spec, scale, zero.as_deref(), x, codes);
                }
            }
        }
    }
}
