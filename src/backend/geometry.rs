//! CUDA launch geometry: threads per row, tiles, scratch. A function of N and the compute type
//! only, so a row's result never depends on how the batch was split into launches. Plain Rust
//! (no CUDA needed), shared by the CUDA backend and the CPU emulation test of the kernels.

use crate::layout::{CHUNK_F32, CHUNK_F64, MAX_THREADS, STAGE_SHARED_MAX_N};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Threads per block (one block per row), a multiple of 32.
    pub threads: u32,
    /// Positions per thread in one tile.
    pub chunk: u32,
    /// Tiles of threads × chunk positions per row.
    pub tiles: u32,
    /// Global scratch per resident block for the chunk couplings (tiles > 1 only).
    pub ain_bytes: usize,
    /// Global scratch per resident block for staging a dynamic-output row (long rows only).
    pub stage_bytes: usize,
    /// Dynamic shared memory per block (a staged dynamic-output row of up to
    /// `STAGE_SHARED_MAX_N` positions).
    pub shared_bytes: u32,
    pub stage_in_shared: bool,
}

impl Geometry {
    pub fn new(n: usize, compute_f64: bool, dynamic_out: bool) -> Geometry {
        let chunk = if compute_f64 { CHUNK_F64 } else { CHUNK_F32 };
        let chunks = n.div_ceil(chunk as usize);
        let threads = (chunks.div_ceil(32) * 32).clamp(32, MAX_THREADS as usize) as u32;
        let tile = threads as usize * chunk as usize;
        let tiles = n.div_ceil(tile);
        let complex_bytes = if compute_f64 { 16 } else { 8 };
        let ain_bytes = if tiles > 1 { tiles * threads as usize * complex_bytes } else { 0 };
        let stage_in_shared = dynamic_out && n <= STAGE_SHARED_MAX_N as usize;
        let stage_bytes = if dynamic_out && !stage_in_shared { n * 8 } else { 0 };
        Geometry {
            threads,
            chunk,
            tiles: tiles as u32,
            ain_bytes,
            stage_bytes,
            shared_bytes: if stage_in_shared { (n * 8) as u32 } else { 0 },
            stage_in_shared,
        }
    }

    /// Scratch bytes one resident block needs (each part rounded to 256 bytes).
    pub fn scratch_per_block(&self) -> usize {
        self.ain_bytes.next_multiple_of(256) + self.stage_bytes.next_multiple_of(256)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_cover_the_row_and_stay_in_bounds() {
        for n in [1usize, 7, 8, 9, 255, 256, 257, 2047, 2048, 2049, 4096, 65536, 65537, 1 << 20] {
            for f64 in [false, true] {
                for dynamic in [false, true] {
                    let g = Geometry::new(n, f64, dynamic);
                    assert!(g.threads % 32 == 0 && (32..=MAX_THREADS).contains(&g.threads), "{n}");
                    assert!(g.tiles as usize * g.threads as usize * g.chunk as usize >= n, "{n}");
                    assert!((g.tiles as usize - 1) * ((g.threads * g.chunk) as usize) < n, "{n}: an empty tile");
                    assert_eq!(g.ain_bytes > 0, g.tiles > 1);
                    assert_eq!(g.stage_in_shared || g.stage_bytes > 0, dynamic);
                    assert!(g.shared_bytes as usize <= 48 * 1024, "{n}: over the default shared limit");
                }
            }
        }
    }
}
