//! Library errors. Each variant says what was wrong and with which tensor, shape or file,
//! so that a caller can print it as is.

use std::path::PathBuf;

/// Every fallible library call returns this.
pub type Result<T, E = BkError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BkError {
    #[error("invalid problem: {0}")]
    InvalidProblem(String),

    #[error("tensor `{tensor}`: expected {expected}, got {got}")]
    Shape {
        tensor: String,
        expected: String,
        got: String,
    },

    #[error("tensor `{tensor}`: non-finite value {value} at row {row}, position {pos} (use a NaN policy other than `error` to accept it)")]
    NonFinite {
        tensor: String,
        row: usize,
        pos: usize,
        value: f64,
    },

    #[error("singular pivot in row {row} at position {pos}: (H0 + diag(v) - z) is singular or numerically singular there (Im z = {im_z}); move z off the real axis")]
    SingularPivot { row: usize, pos: usize, im_z: f64 },

    #[error("quantization `{tensor}`: {msg}")]
    Quant { tensor: String, msg: String },

    #[error("model file {path}: {msg}")]
    Model { path: PathBuf, msg: String },

    #[error("model file {path}: tensor `{tensor}`: {msg}")]
    ModelTensor {
        path: PathBuf,
        tensor: String,
        msg: String,
    },

    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("calibration: {0}")]
    Calibration(String),

    #[error("backend `{backend}`: {msg}")]
    Backend { backend: String, msg: String },

    #[error("CUDA: {0}")]
    Cuda(String),

    /// The backend does not implement this operation (yet); another backend may.
    #[error("backend `{backend}` does not support {op}")]
    Unsupported { backend: String, op: String },

    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl BkError {
    pub(crate) fn shape(tensor: &str, expected: impl Into<String>, got: impl Into<String>) -> Self {
        BkError::Shape {
            tensor: tensor.to_string(),
            expected: expected.into(),
            got: got.into(),
        }
    }

    pub(crate) fn quant(tensor: &str, msg: impl Into<String>) -> Self {
        BkError::Quant {
            tensor: tensor.to_string(),
            msg: msg.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        BkError::Io {
            path: path.into(),
            source,
        }
    }
}
