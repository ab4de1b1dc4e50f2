//! The committed CRD YAML, the chart's copy and the API reference match what the types generate.
//! On failure run `cargo run -p switchboard-crds --bin crdgen` and commit the result.

// Helpers outside #[test] fns panic on broken setup too (clippy.toml only covers test fns).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

#[test]
fn committed_files_match_the_types() {
    let files = switchboard_crds::generated_files().unwrap();
    assert_eq!(files.len(), 9, "4 CRDs x 2 locations + the API reference");
    let mut stale = Vec::new();
    for file in &files {
        let committed =
            std::fs::read_to_string(support::repo_root().join(&file.path)).unwrap_or_default();
        if committed != file.content {
            stale.push(file.path.clone());
        }
    }
    assert!(
        stale.is_empty(),
        "out of date: {stale:?}; run `cargo run -p switchboard-crds --bin crdgen` and commit"
    );
}

#[test]
fn crds_have_what_kubectl_users_rely_on() {
    for crd in switchboard_crds::crds() {
        let kind = &crd.spec.names.kind;
        assert_eq!(crd.spec.group, "switchboard.dev");
        assert_eq!(crd.spec.scope, "Namespaced", "{kind}");
        assert_eq!(
            crd.spec.names.categories.as_deref(),
            Some(&["switchboard".to_owned()][..]),
            "{kind}"
        );
        assert!(
            crd.spec
                .names
                .short_names
                .as_ref()
                .is_some_and(|s| !s.is_empty()),
            "{kind} short names"
        );
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(version.served && version.storage);
        assert!(
            version.subresources.as_ref().unwrap().status.is_some(),
            "{kind} status subresource"
        );
        let columns: Vec<_> = version
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(columns.last(), Some(&"Age"), "{kind}");

        let schema = support::schema(kind);
        let conditions = &schema["properties"]["status"]["properties"]["conditions"];
        assert_eq!(
            conditions["x-kubernetes-list-type"], "map",
            "{kind} conditions list-map"
        );
        assert_eq!(
            conditions["x-kubernetes-list-map-keys"],
            serde_json::json!(["type"]),
            "{kind}"
        );
        assert!(
            schema["properties"]["status"]["properties"]["observedGeneration"].is_object(),
            "{kind}"
        );
        assert_every_field_documented(&schema["properties"]["spec"], &format!("{kind}.spec"));
        assert_every_field_documented(&schema["properties"]["status"], &format!("{kind}.status"));
    }
    let columns = |kind: &str| -> Vec<String> {
        switchboard_crds::crds()
            .into_iter()
            .find(|c| c.spec.names.kind == kind)
            .unwrap()
            .spec
            .versions[0]
            .additional_printer_columns
            .clone()
            .unwrap()
            .into_iter()
            .map(|c| c.name)
            .collect()
    };
    assert_eq!(
        columns("AdapterPatch"),
        ["Lineage", "Version", "Phase", "Canary", "Stable", "Age"]
    );
    assert_eq!(
        columns("Experiment"),
        [
            "Router", "Traffic", "Phase", "Samples", "Required", "Decision", "Age"
        ]
    );
}

/// Every property has a description (from the doc comment), and every rule a message.
fn assert_every_field_documented(schema: &serde_json::Value, path: &str) {
    if let Some(rules) = schema
        .get("x-kubernetes-validations")
        .and_then(|r| r.as_array())
    {
        for rule in rules {
            let message = rule["message"].as_str().unwrap_or("");
            assert!(
                !message.is_empty() && !message.contains('\n'),
                "{path}: rule {rule} needs a one-line message"
            );
        }
    }
    if let Some(props) = schema.get("properties").and_then(|p| p.as_object()) {
        for (name, prop) in props {
            let child = format!("{path}.{name}");
            assert!(
                prop.get("description")
                    .and_then(|d| d.as_str())
                    .is_some_and(|d| !d.is_empty()),
                "{child} has no description"
            );
            assert_every_field_documented(prop, &child);
        }
    }
    if let Some(items) = schema.get("items") {
        assert_every_field_documented(items, &format!("{path}[]"));
    }
}

#[test]
fn cel_rules_fit_the_api_server_budget() {
    // kube-cel's static cost analysis: every list and string a rule walks is bounded
    // (maxItems/maxLength) and the estimated cost is under the per-rule budget. (Its scope check
    // is not used: it mistakes comprehension variables such as `s` in `self.all(s, ...)` for
    // free variables.)
    use kube::core::cel::{compile_schema, estimate_rule_cost};
    fn walk(schema: &serde_json::Value, path: &str, found: &mut Vec<String>, rules: &mut usize) {
        if let Some(list) = schema
            .get("x-kubernetes-validations")
            .and_then(|r| r.as_array())
        {
            let compiled = compile_schema(schema);
            assert!(
                !compiled.has_errors(),
                "{path}: {:?}",
                compiled.compilation_errors()
            );
            for rule in list {
                *rules += 1;
                let text = rule["rule"].as_str().unwrap();
                for warning in estimate_rule_cost(text, &compiled) {
                    found.push(format!("{path}: {} ({text})", warning.message));
                }
            }
        }
        if let Some(props) = schema.get("properties").and_then(|p| p.as_object()) {
            for (name, prop) in props {
                walk(prop, &format!("{path}.{name}"), found, rules);
            }
        }
        for key in ["items", "additionalProperties"] {
            if let Some(sub) = schema.get(key).filter(|s| s.is_object()) {
                walk(sub, &format!("{path}[]"), found, rules);
            }
        }
    }
    let mut found = Vec::new();
    let mut rules = 0;
    for crd in switchboard_crds::crds() {
        let kind = crd.spec.names.kind.clone();
        walk(&support::schema(&kind), &kind, &mut found, &mut rules);
    }
    assert!(rules > 40, "expected the full rule set, found {rules}");
    assert!(
        found.is_empty(),
        "CEL analysis warnings:\n{}",
        found.join("\n")
    );
}

#[test]
fn schemas_are_structural() {
    // The API server refuses a CRD whose schema is not structural: every node has a `type`
    // (or is int-or-string / preserves unknown fields), no `$ref`, and `anyOf`/`oneOf`/`allOf`
    // branches never introduce types or descriptions.
    fn walk(schema: &serde_json::Value, path: &str, problems: &mut Vec<String>) {
        let object = schema.as_object().unwrap();
        if object.contains_key("$ref") {
            problems.push(format!("{path}: $ref"));
        }
        let typed = object.contains_key("type")
            || object.get("x-kubernetes-int-or-string") == Some(&serde_json::Value::Bool(true))
            || object.get("x-kubernetes-preserve-unknown-fields")
                == Some(&serde_json::Value::Bool(true));
        if !typed {
            problems.push(format!("{path}: no type"));
        }
        for key in ["anyOf", "oneOf", "allOf"] {
            for branch in object
                .get(key)
                .and_then(|b| b.as_array())
                .into_iter()
                .flatten()
            {
                for forbidden in [
                    "type",
                    "description",
                    "default",
                    "nullable",
                    "additionalProperties",
                ] {
                    if branch.get(forbidden).is_some() {
                        problems.push(format!("{path}: {key} branch sets {forbidden}"));
                    }
                }
            }
        }
        if let Some(props) = object.get("properties").and_then(|p| p.as_object()) {
            for (name, prop) in props {
                walk(prop, &format!("{path}.{name}"), problems);
            }
        }
        if let Some(items) = object.get("items") {
            walk(items, &format!("{path}[]"), problems);
        }
        if let Some(additional) = object.get("additionalProperties").filter(|a| a.is_object()) {
            walk(additional, &format!("{path}{{}}"), problems);
        }
    }
    let mut problems = Vec::new();
    for crd in switchboard_crds::crds() {
        let kind = crd.spec.names.kind.clone();
        walk(&support::schema(&kind), &kind, &mut problems);
    }
    assert!(
        problems.is_empty(),
        "not structural:\n{}",
        problems.join("\n")
    );
}
