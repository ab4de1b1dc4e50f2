//! Errors of the model layer. Each variant names the file and, where it applies, the tensor.
use std::path::PathBuf;

/// Result alias for the model crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

/// What went wrong while loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file of the checkpoint could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A JSON configuration file is malformed or lacks a field.
    #[error("parsing {path}: {source}")]
    Config {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: serde_json::Error,
    },
    /// The checkpoint lacks a tensor the model needs.
    #[error("{path}: missing tensor `{name}`")]
    MissingTensor {
        /// The weights file.
        path: PathBuf,
        /// Full name of the tensor, as the checkpoint would spell it.
        name: String,
    },
    /// A tensor exists but its shape does not match the configuration.
    #[error("{path}: tensor `{name}` has shape {found:?}, the configuration implies {expected:?}")]
    ShapeMismatch {
        /// The weights file.
        path: PathBuf,
        /// Full name of the tensor.
        name: String,
        /// Shape implied by `config.json`.
        expected: Vec<i64>,
        /// Shape found in the checkpoint.
        found: Vec<i64>,
    },
    /// The tokenizer could not be loaded or failed on input.
    #[error("tokenizer {context}: {message}")]
    Tokenizer {
        /// Which tokenizer file or which step.
        context: String,
        /// The tokenizer's own message.
        message: String,
    },
    /// The checkpoint describes something this code does not implement.
    #[error("unsupported model: {0}")]
    Unsupported(String),
    /// libtorch reported an error.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// A GGUF file is malformed or holds something this reader does not support.
    #[error("GGUF {path}: {reason}")]
    Gguf {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the tensor or metadata key.
        reason: String,
    },
    /// A LoRA adapter does not fit the base model or is malformed.
    #[error("LoRA adapter `{adapter}`: {reason}")]
    Adapter {
        /// Adapter id (or directory).
        adapter: String,
        /// Why it was rejected, naming the module and shapes where they apply.
        reason: String,
    },
    /// A generation request is invalid (empty prompt, prompt longer than the context, ...).
    #[error("invalid generation request: {0}")]
    InvalidRequest(String),
    /// The model's worker thread is gone (it panicked or was shut down).
    #[error("model worker `{0}` is not running")]
    WorkerGone(String),
    /// The model already has as many requests as it admits (load shedding): retry later.
    #[error("model `{model}` is at capacity ({limit} requests generating or waiting); retry later")]
    Overloaded {
        /// The worker's name.
        model: String,
        /// Requests it admits at once.
        limit: usize,
    },
}

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}

/// Reads and deserialises a JSON file, naming the file in errors.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(ModelError::io(path))?;
    serde_json::from_str(&text).map_err(|source| ModelError::Config {
        path: path.to_path_buf(),
        source,
    })
}
