//! The trainer's one error type: every variant names what was wrong (the file and line, the
//! setting, the AdapterPatch) so a failed training Job says why in its log.
use std::path::PathBuf;

/// Result alias of this crate.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;

/// What went wrong while reading data, training, writing the adapter or rolling it out.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A line of a JSONL data file is not a usable row.
    #[error("{path} line {line}: {message}")]
    Data {
        /// The data file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it (malformed JSON, missing field, wrong kind of row).
        message: String,
    },
    /// The data leaves nothing to train on (or nothing to evaluate on).
    #[error("not enough data: {0}")]
    NotEnoughData(String),
    /// A hyper-parameter or option is out of range.
    #[error("invalid setting `{name}`: {message}")]
    Setting {
        /// The option (`--lr`, `target_modules`, ...).
        name: String,
        /// Why it is refused.
        message: String,
    },
    /// The base model, tokenizer or adapter code failed.
    #[error("model: {0}")]
    Model(#[from] switchboard_model::ModelError),
    /// libtorch failed during training.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// Training diverged (a loss that is not a number).
    #[error("training diverged at step {step}: loss {loss}; lower the learning rate")]
    Diverged {
        /// Optimizer step (1-based).
        step: usize,
        /// The loss seen.
        loss: f64,
    },
    /// The adapter could not be written where it was asked to go.
    #[error("output {target}: {message}")]
    Output {
        /// The output location as given (`pvc://...`, a directory).
        target: String,
        /// What went wrong.
        message: String,
    },
    /// The AdapterPatch to roll the adapter out with is unusable or does not fit the adapter.
    #[error("AdapterPatch {name}: {message}")]
    AdapterPatch {
        /// `namespace/name`, or the manifest file.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// The Kubernetes API refused or failed a request.
    #[error("Kubernetes API, AdapterPatch {name}: {message}")]
    Kube {
        /// `namespace/name`.
        name: String,
        /// The API's answer.
        message: String,
    },
}

impl TrainError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }

    pub(crate) fn setting(name: &str, message: impl Into<String>) -> Self {
        Self::Setting {
            name: name.to_owned(),
            message: message.into(),
        }
    }
}
