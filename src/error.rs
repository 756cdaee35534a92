//! The crate's error type: every failure names what to fix (a file, a tensor, an option).

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no GPU adapter matches {wanted}; available: {available}. Set FICOCO_ADAPTER to a name substring or FICOCO_BACKEND to vulkan|metal|dx12|gl|webgpu, or install a driver (on Linux without a GPU: Mesa's lavapipe, mesa-vulkan-drivers)")]
    NoAdapter { wanted: String, available: String },

    #[error("could not create a device on adapter {adapter}: {reason}")]
    Device { adapter: String, reason: String },

    #[error("GPU error: {0}")]
    Gpu(String),

    #[error("shader {shader}: {message}")]
    Shader { shader: String, message: String },

    #[error("tensor {name}: expected {expected}, got {got}")]
    Shape {
        name: String,
        expected: String,
        got: String,
    },

    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },

    #[error("unsupported: {0}")]
    Unsupported(String),

    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    #[error(transparent)]
    Preprocess(#[from] crate::preprocess::PreprocessError),
}

impl Error {
    pub fn file(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Self {
        Error::File {
            path: path.into(),
            message: message.to_string(),
        }
    }

    pub fn shape(
        name: impl Into<String>,
        expected: impl std::fmt::Display,
        got: impl std::fmt::Display,
    ) -> Self {
        Error::Shape {
            name: name.into(),
            expected: expected.to_string(),
            got: got.to_string(),
        }
    }
}
