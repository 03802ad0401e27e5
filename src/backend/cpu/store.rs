//! Output chunks of the CPU backend and the stores that run after a tile: quantized and
//! half-precision outputs (the block-wise drain in `io` writes complex64/complex128).

use crate::backend::lanes::{Real, Tile};
use crate::quant::{codec, AffineParams, Bits, QTensor, QuantSpec};
use half::{bf16, f16};
use num_complex::{Complex, Complex32, Complex64};

/// One tile's share of a quantized output part (re or im).
pub(super) struct QChunk<'a> {
    spec: QuantSpec,
    /// Static parameters; `None` when the store path computes them per row.
    params: Option<&'a AffineParams>,
    codes: &'a mut [u8],
    dyn_scale: Option<&'a mut [f32]>,
    dyn_zero: Option<&'a mut [i16]>,
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
            .map(|(codes, scale)| QChunk {
                spec,
                params: None,
                codes,
                dyn_scale: Some(scale),
                dyn_zero: zeros.as_mut().and_then(|z| z.next()),
            })
            .collect()
    } else {
        let params = &*params;
        codes.map(|codes| QChunk { spec, params: Some(params), codes, dyn_scale: None, dyn_zero: None }).collect()
    }
}

pub(super) enum Chunk<'a> {
    C64(&'a mut [Complex32]),
    C128(&'a mut [Complex64]),
    Cf16(&'a mut [Complex<f16>]),
    Cbf16(&'a mut [Complex<bf16>]),
    Quant(QChunk<'a>, QChunk<'a>),
}

/// Stores what the block-wise drain does not: quantized outputs, from the finished tile.
#[inline(always)]
pub(super) fn store_unfused<T: Real, const L: usize>(t: &Tile<T, L>, live: usize, chunk: &mut Chunk<'_>, lane_params: &mut [[(f32, i32); L]], stream: bool) {
    let n = t.v.len();
    match chunk {
        Chunk::Quant(qre, qim) => {
            store_quant(&t.g_re, live, qre, lane_params);
            store_quant(&t.g_im, live, qim, lane_params);
        }
        Chunk::C64(out) => {
            let n8 = n / 8 * 8;
            let done = if T::store_block_c64(&t.g_re[..n8], &t.g_im[..n8], live, out, n, 0, stream) { n8 } else { 0 };
            for l in 0..live {
                for i in done..n {
                    out[l * n + i] = Complex32::new(t.g_re[i][l].to_f32(), t.g_im[i][l].to_f32());
                }
            }
            if stream {
                crate::backend::transpose::store_fence();
            }
        }
        // One rounding from the computed value (f32 or f64) to the storage type.
        Chunk::Cf16(out) => store_rows(t, live, out, |x| f16::from_f64(x.to_f64())),
        Chunk::Cbf16(out) => store_rows(t, live, out, |x| bf16::from_f64(x.to_f64())),
        Chunk::C128(_) => {}
    }
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

/// Codes of position `i` for all lanes, with static `params` or the per-lane dynamic ones.
#[inline(always)]
fn lane_codes<T: Real, const L: usize>(
    g: &[[T; L]],
    i: usize,
    gs: usize,
    spec: &QuantSpec,
    params: Option<&AffineParams>,
    lane_params: &[[(f32, i32); L]],
    out: &mut [i32; L],
) {
    let (qmin, qmax, j) = (spec.qmin(), spec.qmax(), i / gs);
    match params {
        Some(p) => {
            let (s, z) = p.get(j);
            for l in 0..L {
                out[l] = codec::quantize(g[i][l].to_f32(), s, z, qmin, qmax);
            }
        }
        None => {
            let lp = &lane_params[j];
            for l in 0..L {
                out[l] = codec::quantize(g[i][l].to_f32(), lp[l].0, lp[l].1, qmin, qmax);
            }
        }
    }
}

/// Quantizes one part (re or im) of a tile's G into codes, computing per-row parameters first
/// when the spec is dynamic.
#[inline(always)]
fn store_quant<T: Real, const L: usize>(g: &[[T; L]], live: usize, q: &mut QChunk<'_>, lane_params: &mut [[(f32, i32); L]]) {
    let n = g.len();
    let spec = q.spec;
    let gs = spec.group_size;
    if spec.dynamic {
        let groups = spec.groups(n);
        for (j, lp) in lane_params.iter_mut().enumerate() {
            let mut lo = [f32::INFINITY; L];
            let mut hi = [f32::NEG_INFINITY; L];
            for lane in &g[j * gs..((j + 1) * gs).min(n)] {
                for l in 0..L {
                    let x = lane[l].to_f32();
                    lo[l] = lo[l].min(x);
                    hi[l] = hi[l].max(x);
                }
            }
            for l in 0..live {
                let (s, z) = AffineParams::from_range(&spec, lo[l], hi[l]);
                lp[l] = (s, z as i32);
                if let Some(sc) = q.dyn_scale.as_deref_mut() {
                    sc[l * groups + j] = s;
                }
                if let Some(zs) = q.dyn_zero.as_deref_mut() {
                    zs[l * groups + j] = z;
                }
            }
        }
    }
    // Codes of position i for every lane, computed lane-parallel (vectorised), then scattered to
    // the rows.
    let params = q.params;
    let codes_at = |i: usize, out: &mut [i32; L]| lane_codes(g, i, gs, &spec, params, lane_params, out);
    let rb = spec.bits.row_bytes(n);
    let (mut a, mut b) = ([0i32; L], [0i32; L]);
    match spec.bits {
        Bits::Int8 => {
            for i in 0..n {
                codes_at(i, &mut a);
                for l in 0..live {
                    q.codes[l * rb + i] = a[l] as i8 as u8;
                }
            }
        }
        Bits::Int4 => {
            for byte in 0..rb {
                codes_at(2 * byte, &mut a);
                if 2 * byte + 1 < n {
                    codes_at(2 * byte + 1, &mut b);
                } else {
                    b = [0; L];
                }
                for l in 0..live {
                    q.codes[l * rb + byte] = ((a[l] as u8) & 0x0f) | (((b[l] as u8) & 0x0f) << 4);
                }
            }
        }
    }
}
