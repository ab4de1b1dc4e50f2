//! Every example manifest passes admission (schema + CEL) and the Rust-side validation.

// Helpers outside #[test] fns panic on broken setup too (clippy.toml only covers test fns).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

#[test]
fn every_example_is_admitted() {
    let docs = support::example_documents();
    let kinds: std::collections::BTreeSet<_> = docs
        .iter()
        .map(|(_, d)| d["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds.len(), 4, "examples cover every kind: {kinds:?}");
    for (name, doc) in &docs {
        let rejections = support::admit(doc, None);
        assert!(
            rejections.is_empty(),
            "{name} refused at admission: {rejections:#?}"
        );
        // An unchanged update passes the transition rules too.
        let rejections = support::admit(doc, Some(doc));
        assert!(
            rejections.is_empty(),
            "{name} refused on a no-op update: {rejections:#?}"
        );
        support::rust_check(doc, Some(doc))
            .unwrap_or_else(|e| panic!("{name} refused by Rust validation: {e:#?}"));
    }
}

#[test]
fn scenario_has_a_kb_three_adapters_a_router_and_an_experiment() {
    let docs: Vec<_> = support::example_documents()
        .into_iter()
        .filter(|(n, _)| n.starts_with("scenario.yaml#"))
        .map(|(_, d)| d["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        docs,
        [
            "KnowledgeBase",
            "AdapterPatch",
            "AdapterPatch",
            "AdapterPatch",
            "Router",
            "Experiment"
        ]
    );
}

#[test]
fn examples_round_trip_through_the_types() {
    // What a GitOps tool applies comes back unchanged after the operator reads and re-serialises
    // the spec (no "5%" turning into 0.05, no reordered durations).
    for (name, doc) in support::example_documents() {
        let spec = &doc["spec"];
        let round_tripped = match doc["kind"].as_str().unwrap() {
            "KnowledgeBase" => serde_json::to_value(
                serde_json::from_value::<switchboard_crds::KnowledgeBaseSpec>(spec.clone())
                    .unwrap(),
            ),
            "AdapterPatch" => serde_json::to_value(
                serde_json::from_value::<switchboard_crds::AdapterPatchSpec>(spec.clone()).unwrap(),
            ),
            "Router" => serde_json::to_value(
                serde_json::from_value::<switchboard_crds::RouterSpec>(spec.clone()).unwrap(),
            ),
            "Experiment" => serde_json::to_value(
                serde_json::from_value::<switchboard_crds::ExperimentSpec>(spec.clone()).unwrap(),
            ),
            other => panic!("{other}"),
        }
        .unwrap();
        assert_subset(spec, &round_tripped, &name, "spec");
    }
}

/// Every value written in `written` is present, identical, in `read` (defaults may be added).
fn assert_subset(written: &serde_json::Value, read: &serde_json::Value, name: &str, path: &str) {
    use serde_json::Value;
    match (written, read) {
        (Value::Object(w), Value::Object(r)) => {
            for (k, v) in w {
                let child = format!("{path}.{k}");
                let other = r
                    .get(k)
                    .unwrap_or_else(|| panic!("{name}: {child} lost in round trip"));
                assert_subset(v, other, name, &child);
            }
        }
        (Value::Array(w), Value::Array(r)) => {
            assert_eq!(w.len(), r.len(), "{name}: {path} length");
            for (i, (a, b)) in w.iter().zip(r).enumerate() {
                assert_subset(a, b, name, &format!("{path}[{i}]"));
            }
        }
        (Value::Number(a), Value::Number(b)) => {
            assert_eq!(a.as_f64(), b.as_f64(), "{name}: {path}");
        }
        (a, b) => assert_eq!(a, b, "{name}: {path}"),
    }
}
