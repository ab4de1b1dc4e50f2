//! What the API server checks for these CRDs, without an API server: the structural OpenAPI
//! schema (types, bounds, patterns, enums, required fields), unknown fields (as `kubectl apply`'s
//! strict field validation reports them) and the CEL `x-kubernetes-validations` rules, evaluated
//! with kube-cel (the Kubernetes CEL libraries). The embedded default (`--manifests`) and the
//! admission tests use it, so a manifest is refused here exactly where `kubectl apply` would
//! refuse it; `crds/tests/it/admission.rs` compares the verdicts with the real API server's.

use std::collections::HashMap;
use std::sync::OnceLock;

use kube::core::cel::Validator;
use serde_json::Value;

/// One refusal: the field path as the API server prints it, and the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// `spec.sources[0].name`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// The openAPIV3Schema of `kind` (one of the four), generated from the types.
pub fn schema(kind: &str) -> Option<&'static Value> {
    static SCHEMAS: OnceLock<HashMap<String, Value>> = OnceLock::new();
    SCHEMAS
        .get_or_init(|| {
            crate::crds()
                .into_iter()
                .filter_map(|crd| {
                    let schema = crd.spec.versions.first()?.schema.as_ref()?;
                    let value = serde_json::to_value(schema.open_api_v3_schema.as_ref()?).ok()?;
                    Some((crd.spec.names.kind, value))
                })
                .collect()
        })
        .get(kind)
}

/// What admission says about `doc` (an update when `old` is given): every refusal, empty when
/// it is admitted. A document of another kind is refused at `kind`.
pub fn admit(doc: &Value, old: Option<&Value>) -> Vec<Rejection> {
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default();
    let Some(schema) = schema(kind) else {
        return vec![Rejection {
            field: "kind".into(),
            message: "kind must be one of KnowledgeBase, AdapterPatch, Router, Experiment".into(),
        }];
    };
    let mut out = Vec::new();
    match jsonschema::validator_for(schema) {
        Ok(validator) => {
            for error in validator.iter_errors(doc) {
                out.push(Rejection {
                    field: pointer_to_path(error.instance_path().as_str()),
                    message: error.to_string(),
                });
            }
        }
        Err(e) => out.push(Rejection {
            field: String::new(),
            message: format!("the {kind} schema does not compile: {e}"),
        }),
    }
    unknown_fields(schema, doc, String::new(), &mut out);
    if let Err(errors) = Validator::new().validate(schema, doc, old) {
        for e in errors.iter() {
            out.push(Rejection {
                field: e.field_path.clone(),
                message: e.message.clone(),
            });
        }
    }
    out
}

/// `/spec/sources/0/name` -> `spec.sources[0].name`.
pub fn pointer_to_path(pointer: &str) -> String {
    let mut path = String::new();
    for segment in pointer.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        if segment.bytes().all(|b| b.is_ascii_digit()) && !segment.is_empty() {
            path.push('[');
            path.push_str(&segment);
            path.push(']');
        } else {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(&segment);
        }
    }
    path
}

fn unknown_fields(schema: &Value, value: &Value, path: String, out: &mut Vec<Rejection>) {
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        return;
    }
    match value {
        Value::Object(map) => {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (k, v) in map {
                    let child = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    match props.get(k) {
                        Some(s) => unknown_fields(s, v, child, out),
                        // metadata is validated by the API server's own ObjectMeta schema.
                        None if path.is_empty()
                            && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") => {}
                        None => out.push(Rejection {
                            field: child,
                            message: format!("unknown field \"{k}\""),
                        }),
                    }
                }
            } else if let Some(additional) =
                schema.get("additionalProperties").filter(|a| a.is_object())
            {
                for (k, v) in map {
                    unknown_fields(additional, v, format!("{path}.{k}"), out);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, v) in items.iter().enumerate() {
                    unknown_fields(item_schema, v, format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}
