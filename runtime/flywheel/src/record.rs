//! One line of the training-data export (JSONL): the stable contract between
//! `switchboard-runtime export` and the LoRA trainer (docs/training-data.md).
//!
//! Stability: fields are only ever added (a reader must ignore fields it does not know); a
//! renamed or removed field, or a changed meaning, bumps [`FORMAT`]. Readers check `format`.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use switchboard_store::{InteractionWithOutcomes, RouteRecord};

use crate::label::Labels;

/// The value of every record's `format` field.
pub const FORMAT: &str = "switchboard.flywheel/v1";

/// Who served the answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServedBy {
    /// Adapter lineage (empty: the base model).
    pub lineage: String,
    /// Adapter version (semver; empty without an adapter).
    pub adapter_version: String,
    /// `stable`, `canary` or empty.
    pub adapter_role: String,
    /// Experiment the unit was enrolled in (empty: none).
    pub experiment: String,
    /// Its arm.
    pub arm: String,
    /// `small` or `large`.
    pub model: String,
    /// Why that model (`easy`, `difficult`, `exploration`, ...).
    pub route_reason: String,
}

/// Where a record sits among the near-duplicate query clusters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterInfo {
    /// Cluster id, unique within one export (records with the same id ask the same question:
    /// a positive and a negative of one cluster make a DPO pair).
    pub id: u64,
    /// Interactions of the cluster that passed the filters, every label.
    pub size: u64,
    /// Interactions of the cluster with this record's label (itself included); with one record
    /// kept per cluster and label, the others were dropped as `near_duplicate`: a weight for
    /// sampling.
    pub label_size: u64,
}

/// One training record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportRecord {
    /// Always [`FORMAT`].
    pub format: String,
    /// Interaction id (the token's id).
    pub id: String,
    /// When it was answered (Unix seconds).
    pub created_at: i64,
    /// `<namespace>/<name>` of the Router.
    pub router: String,
    /// `sha256:` and the first 16 hex digits of the sha256 of the assignment unit (user,
    /// account or conversation id): the same unit gives the same value in every export, so a
    /// trainer can split train/test by unit, but the id itself is not copied into training data.
    pub unit: Option<String>,
    /// Who served the answer.
    pub served_by: ServedBy,
    /// Index generation searched.
    pub kb_generation: String,
    /// RuntimeConfig revision in force.
    pub config_revision: String,
    /// The customer's message.
    pub query: String,
    /// The query searched, when it was rewritten.
    pub rewritten_query: Option<String>,
    /// The answer returned (with its `[n]` citation markers).
    pub answer: String,
    /// Documents of the valid citations.
    pub cited_documents: Vec<String>,
    /// Documents of the passages in the prompt, in rank order.
    pub retrieved_documents: Vec<String>,
    /// Final score of the best passage (the KnowledgeBase's score scale).
    pub best_score: Option<f64>,
    /// The routing decision: difficulty, threshold, propensity and query features (absent for
    /// interactions stored before routing was recorded): `switchboard-runtime router fit`'s
    /// input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<RouteRecord>,
    /// Outcome and answer labels.
    pub labels: Labels,
    /// Its query cluster.
    pub cluster: ClusterInfo,
    /// In a curriculum sample: the category it was drawn for (`negative`, `lowConfidence`,
    /// `novel`, `rest`); a record drawn twice appears twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub curriculum: Option<crate::curriculum::Category>,
}

/// `sha256:<16 hex>` of a unit id.
pub fn hash_unit(unit: &str) -> String {
    let digest = Sha256::digest(unit.as_bytes());
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

impl ExportRecord {
    /// The record of `row` with its labels and cluster.
    pub fn new(row: &InteractionWithOutcomes, labels: Labels, cluster: ClusterInfo) -> Self {
        let i = &row.interaction;
        Self {
            format: FORMAT.to_owned(),
            id: i.id.clone(),
            created_at: i.created_at,
            router: i.variant.router.clone(),
            unit: i.unit.as_deref().map(hash_unit),
            served_by: ServedBy {
                lineage: i.variant.lineage.clone(),
                adapter_version: i.variant.adapter_version.clone(),
                adapter_role: i.variant.adapter_role.clone(),
                experiment: i.variant.experiment.clone(),
                arm: i.variant.arm.clone(),
                model: i.variant.model.clone(),
                route_reason: i.route_reason.clone(),
            },
            kb_generation: i.kb_generation.clone(),
            config_revision: i.config_revision.clone(),
            query: i.query.clone(),
            rewritten_query: i.rewritten_query.clone(),
            answer: i.answer.clone(),
            cited_documents: i.cited_documents.clone(),
            retrieved_documents: i.retrieved_documents.clone(),
            best_score: i.best_score,
            routing: i.routing,
            labels,
            cluster,
            curriculum: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_hashed_stably() {
        assert_eq!(hash_unit("user-1"), hash_unit("user-1"));
        assert_ne!(hash_unit("user-1"), hash_unit("user-2"));
        assert_eq!(hash_unit("user-1").len(), "sha256:".len() + 16);
    }
}
