//! Dataset loaders.

/// A dataset file could not be read: which file, and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct DataError {
    pub path: String,
    pub reason: String,
}
