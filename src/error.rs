//! The library's error type. Every variant names the file it is about; refusals and bad input carry
//! a hint saying what the user can do, because "invalid adapter" alone helps nobody.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read or written.
    #[error("{}: {err}", path.display())]
    Io { path: PathBuf, err: std::io::Error },
    /// The input is malformed (bad JSON, truncated safetensors, inconsistent shapes).
    #[error("{}: {msg}{}", path.display(), fmt_hint(hint))]
    Invalid { path: PathBuf, msg: String, hint: Option<String> },
    /// The input is well-formed but asks for something a GGUF LoRA adapter cannot express.
    #[error("{}: {msg}{}", path.display(), fmt_hint(hint))]
    Refused { path: PathBuf, msg: String, hint: Option<String> },
    /// Options that do not fit together.
    #[error("{0}")]
    Usage(String),
    /// The user interrupted; nothing was left behind.
    #[error("interrupted; nothing half-written was left behind")]
    Cancelled,
}

fn fmt_hint(hint: &Option<String>) -> String {
    hint.as_ref().map_or_else(String::new, |h| format!("\n  hint: {h}"))
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: &Path, err: std::io::Error) -> Self {
        Error::Io { path: path.to_path_buf(), err }
    }
    pub fn invalid(path: &Path, msg: impl Into<String>) -> Self {
        Error::Invalid { path: path.to_path_buf(), msg: msg.into(), hint: None }
    }
    pub fn refused(path: &Path, msg: impl Into<String>, hint: impl Into<String>) -> Self {
        Error::Refused { path: path.to_path_buf(), msg: msg.into(), hint: Some(hint.into()) }
    }
    /// Adds or replaces the hint of an `Invalid` or `Refused` error.
    pub fn with_hint(self, h: impl Into<String>) -> Self {
        match self {
            Error::Invalid { path, msg, .. } => Error::Invalid { path, msg, hint: Some(h.into()) },
            Error::Refused { path, msg, .. } => Error::Refused { path, msg, hint: Some(h.into()) },
            other => other,
        }
    }
}
