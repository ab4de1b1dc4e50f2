//! Reading manifests without an API server (`switchboard-runtime serve` on a folder, CLI checks):
//! each document is first put through what the API server checks ([`crate::admission`]: schema,
//! unknown fields, CEL rules), then deserialised with the path of any bad field kept and
//! validated with the Rust rules, so every refusal names the field.

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{
    AdapterPatch, Experiment, FieldError, KnowledgeBase, Router, Validate, ValidationErrors,
};

/// One Switchboard resource of any kind.
#[derive(Clone, Debug, PartialEq)]
#[allow(clippy::large_enum_variant)] // Resources are read once and kept; boxing buys nothing.
pub enum Resource {
    /// A KnowledgeBase.
    KnowledgeBase(KnowledgeBase),
    /// An AdapterPatch.
    AdapterPatch(AdapterPatch),
    /// A Router.
    Router(Router),
    /// An Experiment.
    Experiment(Experiment),
}

impl Resource {
    /// `metadata.name`.
    pub fn name(&self) -> &str {
        let meta = match self {
            Self::KnowledgeBase(r) => &r.metadata,
            Self::AdapterPatch(r) => &r.metadata,
            Self::Router(r) => &r.metadata,
            Self::Experiment(r) => &r.metadata,
        };
        meta.name.as_deref().unwrap_or("")
    }

    /// The kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::KnowledgeBase(_) => "KnowledgeBase",
            Self::AdapterPatch(_) => "AdapterPatch",
            Self::Router(_) => "Router",
            Self::Experiment(_) => "Experiment",
        }
    }
}

/// Why a manifest document was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Not YAML.
    #[error("document {document}: not valid YAML: {message}")]
    Yaml {
        /// Index of the document in the stream.
        document: usize,
        /// Parser message (with line and column).
        message: String,
    },
    /// Not a Switchboard resource (another group, version or kind).
    #[error("document {document}: {api_version}/{kind} is not a switchboard.dev/v1alpha1 resource")]
    UnknownKind {
        /// Index of the document in the stream.
        document: usize,
        /// `apiVersion` as written.
        api_version: String,
        /// `kind` as written.
        kind: String,
    },
    /// A field is malformed or breaks a rule.
    #[error("document {document} ({kind} {name:?}): {errors}")]
    Invalid {
        /// Index of the document in the stream.
        document: usize,
        /// The kind.
        kind: String,
        /// `metadata.name`.
        name: String,
        /// Each refused field.
        errors: ValidationErrors,
    },
}

/// Deserialises one resource from JSON, naming the field when a value is malformed, then applies
/// [`Validate`].
pub fn resource_from_value(value: Value) -> Result<Resource, ValidationErrors> {
    fn typed<T: DeserializeOwned>(value: Value) -> Result<T, ValidationErrors> {
        serde_path_to_error::deserialize(value).map_err(|err| {
            let field = err.path().to_string();
            let message = err.inner().to_string();
            ValidationErrors(vec![FieldError::new(field, message)])
        })
    }
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let resource = match kind.as_str() {
        "KnowledgeBase" => Resource::KnowledgeBase(typed(value)?),
        "AdapterPatch" => Resource::AdapterPatch(typed(value)?),
        "Router" => Resource::Router(typed(value)?),
        "Experiment" => Resource::Experiment(typed(value)?),
        _ => {
            return Err(ValidationErrors(vec![FieldError::new(
                "kind",
                "kind must be one of KnowledgeBase, AdapterPatch, Router, Experiment",
            )]));
        }
    };
    match &resource {
        Resource::KnowledgeBase(r) => r.spec.validate()?,
        Resource::AdapterPatch(r) => r.spec.validate()?,
        Resource::Router(r) => r.spec.validate()?,
        Resource::Experiment(r) => r.spec.validate()?,
    }
    Ok(resource)
}

/// Reads a multi-document YAML stream of Switchboard resources. Empty documents are skipped;
/// documents of other API groups are refused (a manifest folder for `serve` holds only these).
pub fn resources_from_yaml(yaml: &str) -> Result<Vec<Resource>, ManifestError> {
    let mut out = Vec::new();
    // What kubectl would refuse is refused here too, before the lenient parser reads it.
    crate::yaml::check_kubectl_compatible(yaml).map_err(|e| ManifestError::Yaml {
        document: e.document,
        message: e.to_string(),
    })?;
    for (document, de) in serde_yaml::Deserializer::from_str(yaml).enumerate() {
        // Read as YAML first: its mappings refuse a key given twice (kubectl's parser does too;
        // read straight into JSON the last one would silently win).
        let yaml: serde_yaml::Value =
            serde::Deserialize::deserialize(de).map_err(|e| ManifestError::Yaml {
                document,
                message: e.to_string(),
            })?;
        let value: Value = serde_json::to_value(&yaml).map_err(|e| ManifestError::Yaml {
            document,
            message: e.to_string(),
        })?;
        if value.is_null() {
            continue;
        }
        let text = |key: &str| {
            value
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let (api_version, kind) = (text("apiVersion"), text("kind"));
        if api_version != crate::API_VERSION
            || !["KnowledgeBase", "AdapterPatch", "Router", "Experiment"].contains(&kind.as_str())
        {
            return Err(ManifestError::UnknownKind {
                document,
                api_version,
                kind,
            });
        }
        let name = value
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        // What the API server refuses (unknown fields, schema bounds and patterns, CEL rules) is
        // refused here, before the typed checks: the embedded default admits what a cluster does.
        let refused = crate::admission::admit(&value, None);
        if !refused.is_empty() {
            return Err(ManifestError::Invalid {
                document,
                kind,
                name,
                errors: ValidationErrors(
                    refused
                        .into_iter()
                        .map(|r| FieldError::new(r.field, r.message))
                        .collect(),
                ),
            });
        }
        let resource = resource_from_value(value).map_err(|errors| ManifestError::Invalid {
            document,
            kind,
            name,
            errors,
        })?;
        out.push(resource);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTER: &str = r#"
apiVersion: switchboard.dev/v1alpha1
kind: Router
metadata: { name: support }
spec:
  knowledgeBaseRef: { name: kb }
  smallModel: { model: /models/small }
  largeModel: { local: { model: /models/large } }
"#;

    #[test]
    fn reads_a_stream_and_applies_defaults() {
        let resources = resources_from_yaml(&format!("---\n{ROUTER}\n---\n")).unwrap();
        assert_eq!(resources.len(), 1);
        let Resource::Router(router) = &resources[0] else {
            panic!("not a router")
        };
        assert_eq!(resources[0].name(), "support");
        assert_eq!(router.spec.exploration.share.fraction(), 0.05);
        assert_eq!(router.spec.large_model.max_queue_depth, 32);
    }

    #[test]
    fn a_malformed_value_names_its_field() {
        let bad = ROUTER.replace(
            "largeModel: { local: { model: /models/large } }",
            "largeModel: { local: { model: /models/large } }\n  exploration: { share: half }",
        );
        let err = resources_from_yaml(&bad).unwrap_err();
        let ManifestError::Invalid { errors, .. } = &err else {
            panic!("{err}")
        };
        assert_eq!(errors.0[0].field, "spec.exploration.share");
        // The schema's own wording, as the API server refuses it.
        assert!(
            errors.0[0].message.contains("must be a percentage"),
            "{err}"
        );
    }

    #[test]
    fn unknown_fields_and_schema_bounds_are_refused_as_kubectl_apply_would() {
        // A typo is not a silent default.
        let typo = ROUTER.replace(
            "largeModel: { local: { model: /models/large } }",
            "largeModel: { local: { model: /models/large } }\n  rolout: { canary: true }",
        );
        let err = resources_from_yaml(&typo).unwrap_err().to_string();
        assert!(
            err.contains("spec.rolout: unknown field \"rolout\""),
            "{err}"
        );
        // A bound only the schema holds.
        let replicas = ROUTER.replace(
            "largeModel: { local: { model: /models/large } }",
            "largeModel: { local: { model: /models/large } }\n  replicas: -1",
        );
        let err = resources_from_yaml(&replicas).unwrap_err().to_string();
        assert!(
            err.contains("spec.replicas: -1 is less than the minimum of"),
            "{err}"
        );
    }

    #[test]
    fn a_broken_rule_names_its_field() {
        let bad = ROUTER.replace(
            "largeModel: { local: { model: /models/large } }",
            "largeModel: { local: { model: /models/large } }\n  exploration: { share: \"75%\" }",
        );
        let err = resources_from_yaml(&bad).unwrap_err().to_string();
        assert!(
            err.contains("spec.exploration.share: exploration.share must be between 0% and 50%"),
            "{err}"
        );
    }

    #[test]
    fn a_key_given_twice_is_refused_not_overwritten() {
        let twice = ROUTER.replace(
            "knowledgeBaseRef: { name: kb }",
            "knowledgeBaseRef: { name: kb }\n  knowledgeBaseRef: { name: other }",
        );
        assert_ne!(twice, ROUTER);
        let err = resources_from_yaml(&twice).unwrap_err();
        assert!(matches!(err, ManifestError::Yaml { .. }), "{err}");
        assert!(err.to_string().contains("duplicate"), "{err}");
        assert!(err.to_string().contains("knowledgeBaseRef"), "{err}");
    }

    #[test]
    fn other_kinds_and_broken_yaml_are_refused() {
        let err = resources_from_yaml("apiVersion: v1\nkind: ConfigMap\n").unwrap_err();
        assert!(matches!(err, ManifestError::UnknownKind { .. }), "{err}");
        let err = resources_from_yaml("spec: [unclosed\n").unwrap_err();
        assert!(matches!(err, ManifestError::Yaml { .. }), "{err}");
        let err = resources_from_yaml("- 1\n- 2\n").unwrap_err();
        assert!(matches!(err, ManifestError::UnknownKind { .. }), "{err}");
    }
}
