//! The next AdapterPatch version of a trained adapter (pure: no cluster, no libtorch).
//!
//! A trained adapter enters the rollout as a new `spec.version` of its lineage's AdapterPatch:
//! the version bumped (semver minor unless given), `spec.artifact` pointing at the PEFT
//! directory with its digest, `spec.lora` saying what was trained; lineage, base model, domain,
//! rollout stages and guardrails stay as they are. The operator then verifies the artifact and
//! walks the version through Shadow -> Canary -> Promoted under the guardrails, rolling back on
//! a breach. The same document serves GitOps (commit it) and `--apply` (a merge patch of those
//! fields, conditional on the object's `resourceVersion`).
use serde_json::{Value, json};
use switchboard_crds::adapter_patch::{is_local_model, model_stem};
use switchboard_crds::{AdapterPatch, Resource, resource_from_value};

use crate::error::{Result, TrainError};
use crate::train::LoraSettings;

/// What the new version consists of.
#[derive(Debug, Clone, PartialEq)]
pub struct NextVersion {
    /// `spec.version`.
    pub version: String,
    /// `spec.artifact.uri`.
    pub uri: String,
    /// `spec.artifact.sha256` (`sha256:<hex>`).
    pub sha256: String,
    /// `spec.lora`.
    pub lora: LoraSettings,
    /// `metadata.annotations` to set: what the training report says about this version
    /// ([`ANNOTATION_PREFIX`]; the previous version's are replaced).
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// Annotations the trainer writes on the AdapterPatch it makes the next version of.
pub const ANNOTATION_PREFIX: &str = "training.switchboard.dev/";

/// An AdapterPatch document as read from a file or the API, with its typed form.
#[derive(Debug, Clone)]
pub struct CurrentPatch {
    /// The document (YAML/JSON as written or as served).
    pub document: Value,
    /// Its typed form.
    pub patch: AdapterPatch,
    /// `namespace/name` or the file, for messages.
    pub label: String,
}

impl CurrentPatch {
    /// Parses and validates an AdapterPatch document (admission's Rust-side checks).
    pub fn from_document(document: Value, label: impl Into<String>) -> Result<Self> {
        let label = label.into();
        let err = |message: String| TrainError::AdapterPatch {
            name: label.clone(),
            message,
        };
        if document.get("kind").and_then(Value::as_str) != Some("AdapterPatch") {
            return Err(err(format!(
                "kind is {}, not AdapterPatch",
                document.get("kind").unwrap_or(&Value::Null)
            )));
        }
        let patch = match resource_from_value(document.clone()) {
            Ok(Resource::AdapterPatch(p)) => p,
            Ok(_) => return Err(err("not an AdapterPatch".to_owned())),
            Err(e) => return Err(err(e.to_string())),
        };
        Ok(Self {
            document,
            patch,
            label,
        })
    }

    /// Reads the first AdapterPatch of a YAML or JSON file.
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(TrainError::io(path))?;
        let label = path.display().to_string();
        switchboard_crds::check_kubectl_compatible(&text).map_err(|e| {
            TrainError::AdapterPatch {
                name: label.clone(),
                message: format!("not valid YAML for kubectl: {e}"),
            }
        })?;
        for document in serde_yaml::Deserializer::from_str(&text) {
            let value: Value = serde::Deserialize::deserialize(document).map_err(|e| {
                TrainError::AdapterPatch {
                    name: label.clone(),
                    message: format!("not YAML: {e}"),
                }
            })?;
            if value.get("kind").and_then(Value::as_str) == Some("AdapterPatch") {
                return Self::from_document(value, label);
            }
        }
        Err(TrainError::AdapterPatch {
            name: label,
            message: "holds no AdapterPatch".to_owned(),
        })
    }

    /// `metadata.namespace` (default `default`).
    pub fn namespace(&self) -> String {
        self.patch
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned())
    }

    /// `metadata.name`.
    pub fn name(&self) -> String {
        self.patch.metadata.name.clone().unwrap_or_default()
    }

    /// The LoRA settings the spec declares (alpha defaulted to 2·rank as the CRD does).
    pub fn lora(&self) -> LoraSettings {
        let lora = &self.patch.spec.lora;
        LoraSettings {
            rank: i64::from(lora.rank),
            alpha: lora.alpha.unwrap_or(2.0 * f64::from(lora.rank)),
            target_modules: lora.target_modules.clone(),
        }
    }

    /// The version after the current one: `--version` when given (it must be greater), else
    /// the next minor version (`1.3.2` -> `1.4.0`).
    pub fn next_version(&self, requested: Option<&str>) -> Result<String> {
        let err = |message: String| TrainError::AdapterPatch {
            name: self.label.clone(),
            message,
        };
        let current = semver::Version::parse(&self.patch.spec.version)
            .map_err(|e| err(format!("spec.version {}: {e}", self.patch.spec.version)))?;
        match requested {
            Some(v) => {
                let next = semver::Version::parse(v)
                    .map_err(|e| TrainError::setting("--version", format!("{v}: {e}")))?;
                if next <= current {
                    return Err(TrainError::setting(
                        "--version",
                        format!(
                            "{next} is not after the current version {current}: a rollout needs a new version"
                        ),
                    ));
                }
                Ok(next.to_string())
            }
            None => Ok(semver::Version::new(current.major, current.minor + 1, 0).to_string()),
        }
    }

    /// The name to write as the adapter's `base_model_name_or_path`: `spec.baseModel` when it
    /// is a model id (the operator compares them), `None` when it is a path (whose model only
    /// the runtime can name, at load).
    pub fn base_model_id(&self) -> Option<&str> {
        let base = self.patch.spec.base_model.as_str();
        (!is_local_model(base)).then_some(base)
    }

    /// Refuses to train for an AdapterPatch whose `baseModel` is not the loaded model: the
    /// runtime would refuse the adapter (or, worse, apply it to another model).
    pub fn check_base_model(&self, model_names: &[String]) -> Result<()> {
        let want = model_key(&self.patch.spec.base_model);
        if model_names.iter().any(|n| model_key(n) == want) {
            return Ok(());
        }
        Err(TrainError::AdapterPatch {
            name: self.label.clone(),
            message: format!(
                "spec.baseModel is {}, but the model trained on is {model_names:?}",
                self.patch.spec.base_model
            ),
        })
    }

    /// The next manifest: this document with the new version, artifact and LoRA settings;
    /// server-set metadata and status removed (what a GitOps repository holds).
    pub fn next_manifest(&self, next: &NextVersion) -> Result<Value> {
        let mut doc = self.document.clone();
        if let Value::Object(map) = &mut doc {
            map.remove("status");
        }
        if let Some(Value::Object(meta)) = doc.get_mut("metadata") {
            for key in [
                "resourceVersion",
                "uid",
                "generation",
                "creationTimestamp",
                "managedFields",
                "selfLink",
            ] {
                meta.remove(key);
            }
            if let Some(Value::Object(annotations)) = meta.get_mut("annotations") {
                annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
                // The previous version's training notes do not describe this one.
                annotations.retain(|k, _| !k.starts_with(ANNOTATION_PREFIX));
            }
            if !next.annotations.is_empty() {
                let annotations = meta
                    .entry("annotations")
                    .or_insert_with(|| json!({}))
                    .as_object_mut()
                    .ok_or_else(|| TrainError::AdapterPatch {
                        name: self.label.clone(),
                        message: "metadata.annotations is not an object".to_owned(),
                    })?;
                for (k, v) in &next.annotations {
                    annotations.insert(k.clone(), json!(v));
                }
            }
            if meta
                .get("annotations")
                .and_then(Value::as_object)
                .is_some_and(serde_json::Map::is_empty)
            {
                meta.remove("annotations");
            }
        }
        let spec = doc
            .get_mut("spec")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| TrainError::AdapterPatch {
                name: self.label.clone(),
                message: "has no spec".to_owned(),
            })?;
        spec.insert("version".into(), json!(next.version));
        let artifact = spec
            .entry("artifact")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .ok_or_else(|| TrainError::AdapterPatch {
                name: self.label.clone(),
                message: "spec.artifact is not an object".to_owned(),
            })?;
        artifact.insert("uri".into(), json!(next.uri));
        artifact.insert("sha256".into(), json!(next.sha256));
        if !next.uri.starts_with("oci://") {
            // Registry credentials mean nothing for a claim or a file.
            artifact.remove("pullSecretRef");
        }
        spec.insert(
            "lora".into(),
            json!({
                "rank": next.lora.rank,
                "alpha": next.lora.alpha,
                "targetModules": next.lora.target_modules,
            }),
        );
        // The result must pass admission's Rust-side checks, and be a valid update.
        let checked = Self::from_document(doc.clone(), self.label.clone())?;
        checked
            .patch
            .spec
            .validate_update(&self.patch.spec)
            .map_err(|e| TrainError::AdapterPatch {
                name: self.label.clone(),
                message: format!("the next version would be refused: {e}"),
            })?;
        Ok(doc)
    }

    /// The JSON merge patch `--apply` sends: the new spec fields, conditional on the object
    /// not having changed since it was read (`metadata.resourceVersion`).
    pub fn merge_patch(&self, next: &NextVersion) -> Result<Value> {
        let manifest = self.next_manifest(next)?;
        let mut artifact = manifest["spec"]["artifact"].clone();
        if self.patch.spec.artifact.pull_secret_ref.is_some() && !next.uri.starts_with("oci://") {
            artifact["pullSecretRef"] = Value::Null;
        }
        let mut patch = json!({
            "spec": {
                "version": manifest["spec"]["version"],
                "artifact": artifact,
                "lora": manifest["spec"]["lora"],
            }
        });
        // Annotations: this version's, and the previous version's removed (null in a merge patch).
        let mut annotations = serde_json::Map::new();
        for key in self
            .patch
            .metadata
            .annotations
            .iter()
            .flatten()
            .map(|(k, _)| k)
            .filter(|k| k.starts_with(ANNOTATION_PREFIX))
        {
            annotations.insert(key.clone(), Value::Null);
        }
        for (k, v) in &next.annotations {
            annotations.insert(k.clone(), json!(v));
        }
        let mut metadata = serde_json::Map::new();
        if !annotations.is_empty() {
            metadata.insert("annotations".into(), Value::Object(annotations));
        }
        if let Some(rv) = &self.patch.metadata.resource_version {
            metadata.insert("resourceVersion".into(), json!(rv));
        }
        if !metadata.is_empty() {
            patch["metadata"] = Value::Object(metadata);
        }
        Ok(patch)
    }
}

/// A model's identity for comparison: the last path segment without `.gguf`/`.safetensors` and
/// a llama.cpp quantisation suffix (`.Q4_1`), letters and digits only, lowercase
/// (`/models/SmolLM2-135M-Instruct.Q4_1.gguf` == `HuggingFaceTB/SmolLM2-135M-Instruct`).
pub fn model_key(name: &str) -> String {
    let stem = model_stem(name);
    let stem = match stem.rsplit_once('.') {
        Some((head, quant))
            if quant.starts_with(['Q', 'q', 'F', 'f', 'I', 'i', 'B', 'b'])
                && quant.chars().any(|c| c.is_ascii_digit()) =>
        {
            head
        }
        _ => stem,
    };
    stem.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// Replaces `{version}` and `{lineage}` in an output location.
pub fn expand_output(template: &str, version: &str, lineage: &str) -> String {
    template
        .replace("{version}", version)
        .replace("{lineage}", lineage)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../examples/adapterpatch.yaml");

    fn next(version: &str) -> NextVersion {
        NextVersion {
            annotations: Default::default(),
            version: version.to_owned(),
            uri: "pvc://adapters/pricing/1.4.0".to_owned(),
            sha256: format!("sha256:{}", "ab".repeat(32)),
            lora: LoraSettings {
                rank: 4,
                alpha: 8.0,
                target_modules: vec!["q_proj".into(), "v_proj".into(), "o_proj".into()],
            },
        }
    }

    fn current() -> CurrentPatch {
        let value: Value = serde_yaml::from_str(EXAMPLE).unwrap();
        CurrentPatch::from_document(value, "examples/adapterpatch.yaml").unwrap()
    }

    #[test]
    fn the_next_version_is_a_minor_bump_or_a_later_one_given() {
        let c = current();
        assert_eq!(c.patch.spec.version, "1.3.0");
        assert_eq!(c.next_version(None).unwrap(), "1.4.0");
        assert_eq!(c.next_version(Some("2.0.0")).unwrap(), "2.0.0");
        let e = c.next_version(Some("1.3.0")).unwrap_err().to_string();
        assert!(e.contains("--version") && e.contains("not after"), "{e}");
        assert!(c.next_version(Some("banana")).is_err());
    }

    #[test]
    fn the_next_manifest_changes_only_version_artifact_and_lora() {
        let c = current();
        let doc = c.next_manifest(&next("1.4.0")).unwrap();
        assert_eq!(doc["spec"]["version"], "1.4.0");
        assert_eq!(
            doc["spec"]["artifact"]["uri"],
            "pvc://adapters/pricing/1.4.0"
        );
        assert!(doc["spec"]["artifact"].get("pullSecretRef").is_none());
        assert_eq!(doc["spec"]["lora"]["rank"], 4);
        assert_eq!(doc["spec"]["lora"]["targetModules"][2], "o_proj");
        for same in [
            "lineage",
            "baseModel",
            "domain",
            "rollout",
            "guardrails",
            "rollbackWindow",
        ] {
            assert_eq!(doc["spec"][same], c.document["spec"][same], "{same}");
        }
        assert_eq!(doc["metadata"], c.document["metadata"]);
        // It is admitted (Rust-side checks): e.g. rank 65 is refused.
        let mut bad = next("1.4.0");
        bad.lora.rank = 65;
        assert!(c.next_manifest(&bad).is_err());
    }

    #[test]
    fn the_merge_patch_is_conditional_and_drops_registry_credentials() {
        let mut c = current();
        c.patch.metadata.resource_version = Some("42".into());
        let patch = c.merge_patch(&next("1.4.0")).unwrap();
        assert_eq!(patch["metadata"]["resourceVersion"], "42");
        assert_eq!(patch["spec"]["artifact"]["pullSecretRef"], Value::Null);
        assert_eq!(patch["spec"]["version"], "1.4.0");
        assert!(patch["spec"].get("lineage").is_none());
    }

    #[test]
    fn base_models_compare_by_name() {
        let c = current();
        assert_eq!(c.base_model_id(), None, "the example names a path");
        let names = vec![
            "SmolLM2 135M Instruct".to_owned(),
            "SmolLM2-135M-Instruct".to_owned(),
        ];
        c.check_base_model(&names).unwrap();
        let e = c
            .check_base_model(&["SmolLM2-360M-Instruct".to_owned()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("baseModel") && e.contains("360M"), "{e}");
        assert_eq!(
            model_key("/models/SmolLM2-135M-Instruct.Q4_1.gguf"),
            model_key("HuggingFaceTB/SmolLM2-135M-Instruct")
        );
        assert_eq!(model_key("/models/tiny.v2"), "tinyv2");
        assert_eq!(
            expand_output("pvc://adapters/{lineage}/{version}", "1.4.0", "pricing"),
            "pvc://adapters/pricing/1.4.0"
        );
    }
}
