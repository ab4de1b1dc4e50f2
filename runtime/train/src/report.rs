//! The training report (`training_report.json` in the artifact directory): which base model,
//! which data and how it was mapped, the hyper-parameters, held-out metrics before training and
//! after each epoch, timing, the artifact and the AdapterPatch version it became.
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::data::DataStats;
use crate::error::{Result, TrainError};
use crate::output::Artifact;
use crate::train::{Hyperparameters, TrainingLog};

/// The base model trained on.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BaseModel {
    /// File or directory loaded.
    pub path: PathBuf,
    /// Names it goes by (GGUF metadata, file stem, `_name_or_path`).
    pub names: Vec<String>,
    /// What the adapter records as `base_model_name_or_path`.
    pub base_model_name_or_path: String,
}

/// The data read.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DataReport {
    /// The training file and its mapping.
    pub train: DataStats,
    /// The held-out file, when one was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_out: Option<DataStats>,
    /// Share of the training file held out, when no held-out file was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_out_fraction: Option<f64>,
    /// A hot-fix's other sets (`--negative-rejection`, `--anchors`) and their mapping.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hot_fix_sets: Vec<DataStats>,
}

/// The AdapterPatch version the adapter became.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PatchReport {
    /// `namespace/name`.
    pub name: String,
    /// `spec.version` before.
    pub previous_version: String,
    /// The new `spec.version`.
    pub version: String,
    /// Whether it was patched into the cluster (`--apply`).
    pub applied: bool,
}

/// The whole report.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TrainingReport {
    /// `switchboard-train` version.
    pub trainer_version: String,
    /// Unix seconds when the report was written.
    pub created_at: u64,
    /// The base model.
    pub base_model: BaseModel,
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// libtorch intra-op threads.
    pub threads: i32,
    /// The data.
    pub data: DataReport,
    /// The hyper-parameters.
    pub hyperparameters: Hyperparameters,
    /// Losses, metrics and timing.
    pub training: TrainingLog,
    /// The written adapter.
    pub artifact: Artifact,
    /// The AdapterPatch version, when one was named.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adapter_patch: Option<PatchReport>,
    /// Red-team refusals and factual accuracy before (the reference or starting adapter, else
    /// the base model) and after (`--red-team`, `--facts`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alignment: Option<Alignment>,
}

/// The alignment evaluation of a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Alignment {
    /// Before training.
    pub before: crate::alignment::AlignmentReport,
    /// After.
    pub after: crate::alignment::AlignmentReport,
}

impl TrainingReport {
    /// Writes the report as pretty JSON.
    pub fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(|e| TrainError::Output {
            target: path.display().to_string(),
            message: e.to_string(),
        })?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(TrainError::io(parent))?;
        }
        std::fs::write(path, text + "\n").map_err(TrainError::io(path))
    }
}
