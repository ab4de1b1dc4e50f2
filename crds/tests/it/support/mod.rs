//! Test support: an admission stand-in that applies what the API server checks for these CRDs —
//! the structural OpenAPI schema (types, bounds, patterns, enums, required fields, unknown fields
//! as `kubectl apply`'s strict field validation reports them) and the CEL `x-kubernetes-validations`
//! rules, evaluated with kube-cel (the Kubernetes CEL libraries on the `cel` crate), defaults
//! applied first like the API server does.

// Test-only helpers: a failed lookup is a broken test setup, so panicking is the right report.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use serde_json::Value;

pub use switchboard_crds::admission::admit;

/// The openAPIV3Schema of `kind`.
pub fn schema(kind: &str) -> Value {
    switchboard_crds::admission::schema(kind)
        .unwrap_or_else(|| panic!("no CRD for kind {kind}"))
        .clone()
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every Switchboard document of every YAML file under `examples/` (including the sample
/// knowledge base's manifest), with its path relative to `examples/` and its index.
pub fn example_documents() -> Vec<(String, Value)> {
    fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                yaml_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push(path);
            }
        }
    }
    let dir = repo_root().join("examples");
    let mut files = Vec::new();
    yaml_files(&dir, &mut files);
    files.sort();
    let mut docs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let name = file
            .strip_prefix(&dir)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        for (i, document) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let value: Value = serde::Deserialize::deserialize(document)
                .unwrap_or_else(|e| panic!("{name} document {i}: {e}"));
            // Other YAML under examples/ (e.g. the index builder's own spec) is not ours to check.
            if value.get("apiVersion").and_then(Value::as_str)
                == Some(switchboard_crds::API_VERSION)
            {
                docs.push((format!("{name}#{i}"), value));
            }
        }
    }
    docs
}

/// The first example document of `kind` in `file`.
pub fn example(file: &str, kind: &str) -> Value {
    example_documents()
        .into_iter()
        .find(|(name, doc)| name.starts_with(&format!("{file}#")) && doc["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in examples/{file}"))
        .1
}

/// Checks a document the Rust way: `resource_from_value` (deserialisation that names the bad
/// field, then `Validate`), plus the update rules when `old` is given. Returns the refusals as
/// `field: message` strings.
pub fn rust_check(doc: &Value, old: Option<&Value>) -> Result<(), Vec<String>> {
    use switchboard_crds::{Resource, resource_from_value};
    let strings = |e: switchboard_crds::ValidationErrors| {
        e.0.iter().map(ToString::to_string).collect::<Vec<_>>()
    };
    let new = resource_from_value(doc.clone()).map_err(strings)?;
    let Some(old) = old else { return Ok(()) };
    // The stored object was admitted, so it deserialises.
    let old = resource_from_value(old.clone()).map_err(strings)?;
    let update = match (&new, &old) {
        (Resource::AdapterPatch(n), Resource::AdapterPatch(o)) => n.spec.validate_update(&o.spec),
        (Resource::Experiment(n), Resource::Experiment(o)) => n.spec.validate_update(&o.spec),
        (Resource::KnowledgeBase(n), Resource::KnowledgeBase(o)) => n.spec.validate_update(&o.spec),
        (Resource::Router(n), Resource::Router(o)) => n.spec.validate_update(&o.spec),
        _ => Ok(()),
    };
    update.map_err(strings)
}
