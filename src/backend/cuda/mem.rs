//! Device buffers as bytes, transfers, and CUDA errors turned into library errors with context.

use crate::error::{BkError, Result};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DriverError};
use std::sync::Arc;

/// `r` with a CUDA error turned into `BkError::Cuda` saying what was being done.
pub fn cu<T>(r: std::result::Result<T, DriverError>, what: impl FnOnce() -> String) -> Result<T> {
    r.map_err(|e| BkError::Cuda(format!("{}: {e:?}", what())))
}

/// A device allocation of at least one byte (so that a pointer exists even for empty tensors).
pub struct DevBuf {
    buf: CudaSlice<u8>,
    len: usize,
}

impl DevBuf {
    pub fn alloc(stream: &Arc<CudaStream>, len: usize, what: &str) -> Result<DevBuf> {
        // SAFETY: the contents are uninitialised bytes; every byte a kernel reads is uploaded or
        // written by a kernel first (status words are cleared before each launch).
        let buf = cu(unsafe { stream.alloc::<u8>(len.max(1)) }, || format!("allocating {len} bytes for {what}"))?;
        Ok(DevBuf { buf, len })
    }

    /// Device address for a kernel parameter struct.
    pub fn ptr(&self, stream: &CudaStream) -> u64 {
        let (p, _sync) = self.buf.device_ptr(stream);
        p
    }

    /// Copies `src` to the start of the buffer.
    pub fn upload(&mut self, stream: &Arc<CudaStream>, src: &[u8], what: &str) -> Result<()> {
        if src.len() > self.len {
            return Err(BkError::Cuda(format!("{what}: {} bytes do not fit a {}-byte buffer", src.len(), self.len)));
        }
        if src.is_empty() {
            return Ok(());
        }
        let mut view = self.buf.slice_mut(0..src.len());
        cu(stream.memcpy_htod(src, &mut view), || format!("uploading {what} ({} bytes)", src.len()))
    }

    /// Copies the start of the buffer into `dst`. The caller synchronizes before reading `dst`.
    pub fn download(&self, stream: &Arc<CudaStream>, dst: &mut [u8], what: &str) -> Result<()> {
        if dst.len() > self.len {
            return Err(BkError::Cuda(format!("{what}: {} bytes requested from a {}-byte buffer", dst.len(), self.len)));
        }
        if dst.is_empty() {
            return Ok(());
        }
        let view = self.buf.slice(0..dst.len());
        cu(stream.memcpy_dtoh(&view, dst), || format!("downloading {what} ({} bytes)", dst.len()))
    }

    /// Copies all of `src` to the start of this buffer, on the device.
    pub fn copy_from(&mut self, stream: &Arc<CudaStream>, src: &DevBuf, what: &str) -> Result<()> {
        if src.len > self.len {
            return Err(BkError::Cuda(format!("{what}: {} bytes do not fit a {}-byte buffer", src.len, self.len)));
        }
        let mut view = self.buf.slice_mut(0..src.len.max(1));
        cu(stream.memcpy_dtod(&src.buf.slice(0..src.len.max(1)), &mut view), || format!("{what}: copying {} bytes", src.len))
    }

    /// Sets the first `len` bytes to `value` (clearing status words; poisoning outputs in tests).
    pub fn fill(&mut self, stream: &Arc<CudaStream>, len: usize, value: u8, what: &str) -> Result<()> {
        let len = len.min(self.len);
        if len == 0 {
            return Ok(());
        }
        let p = self.ptr(stream);
        // SAFETY: p is this live allocation's address and len is within it; the memset is ordered
        // on `stream`, like every other use of the buffer.
        cu(unsafe { cudarc::driver::result::memset_d8_async(p, value, len, stream.cu_stream()) }, || {
            format!("filling {what} ({len} bytes)")
        })
    }
}

/// Uploads `src` into a new buffer.
pub fn upload_new(stream: &Arc<CudaStream>, src: &[u8], what: &str) -> Result<DevBuf> {
    let mut b = DevBuf::alloc(stream, src.len(), what)?;
    b.upload(stream, src, what)?;
    Ok(b)
}
