//! Every example manifest passes admission (schema + CEL) and the Rust-side validation.

// Helpers outside #[test] fns panic on broken setup too (clippy.toml only covers test fns).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

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

/// kubectl's own YAML parser (go-yaml v2, what Helm, kustomize, Argo CD and Flux use too) on
/// `text`: `Err(message)` when it refuses to parse it. kubectl parses before it asks a server;
/// the bogus server makes every parsed document fail at discovery, which is not a parse error.
fn kubectl_parse(text: &str) -> Result<(), String> {
    let kubectl = support::repo_root().join(".cache/bin/kubectl");
    assert!(
        kubectl.exists(),
        "{} is missing: run `hack/setup.sh tools`",
        kubectl.display()
    );
    let dir = tempfile_dir();
    let file = dir.join("manifest.yaml");
    std::fs::write(&file, text).unwrap();
    let out = std::process::Command::new(&kubectl)
        .args([
            "create",
            "--dry-run=client",
            "--validate=false",
            "-o",
            "name",
        ])
        .args([
            "--server",
            "http://127.0.0.1:9",
            "--request-timeout",
            "2s",
            "-f",
        ])
        .arg(&file)
        .env("KUBECONFIG", "/dev/null")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    std::fs::remove_dir_all(&dir).ok();
    match stderr
        .lines()
        .find(|l| l.contains("error parsing") || l.contains("error converting YAML"))
    {
        Some(line) => Err(line.to_owned()),
        None => Ok(()),
    }
}

fn tempfile_dir() -> std::path::PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "switchboard-kubectl-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Every YAML file under `examples/` and every `yaml` block of the docs: what a user copies into
/// `kubectl apply`, a values file or a GitOps repository.
fn manifests_users_copy() -> Vec<(String, String)> {
    let root = support::repo_root();
    let mut out = Vec::new();
    let mut stack = vec![root.join("examples")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                let name = path.strip_prefix(&root).unwrap().display().to_string();
                out.push((name, std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    let mut docs: Vec<_> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .chain([root.join("README.md")])
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    for doc in docs {
        let text = std::fs::read_to_string(&doc).unwrap();
        let name = doc.strip_prefix(&root).unwrap().display().to_string();
        let mut block: Option<(usize, String)> = None;
        for (n, line) in text.lines().enumerate() {
            match &mut block {
                None if line.trim_start().starts_with("```yaml") => {
                    block = Some((n + 1, String::new()))
                }
                Some((start, body)) if line.trim_start().starts_with("```") => {
                    out.push((format!("{name}:{}", *start + 1), std::mem::take(body)));
                    block = None;
                }
                Some((_, body)) => {
                    body.push_str(line);
                    body.push('\n');
                }
                None => {}
            }
        }
    }
    out.sort();
    out
}

#[test]
fn every_example_and_every_manifest_in_the_docs_parses_the_way_kubectl_does() {
    let manifests = manifests_users_copy();
    assert!(
        manifests.iter().any(|(n, _)| n == "examples/scenario.yaml"),
        "{:?}",
        manifests.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );
    assert!(manifests.iter().any(|(n, _)| n.starts_with("docs/")));
    for (name, text) in &manifests {
        kubectl_parse(text).unwrap_or_else(|e| panic!("kubectl cannot parse {name}: {e}"));
        switchboard_crds::check_kubectl_compatible(text).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

/// The runtime's and the CLI's manifest reader refuses exactly what kubectl's parser refuses among
/// the constructs where the YAML crate is more lenient than go-yaml, and accepts what it reads.
#[test]
fn the_yaml_compatibility_check_agrees_with_kubectl() {
    let cases = [
        "exampleQueries: [How much is the Team plan?, Is it free?]",
        "exampleQueries: [\"How much is the Team plan?\", 'Is it free?']",
        "q: {question: why?}",
        "q: [x, ?y]",
        "q: [? x : y]",
        "q: [one,\n  two?]",
        "q: Is there a non-profit discount?",
        "q:\n  - What does it cost?\n  - [a, b]",
        "q: [http://x:8080/a?b=c]",
        "q: http://x:8080/a?b=c",
        "q: |\n  [Is it free?, yes]\nr: [1, 2]",
        "q: [x, y] # why? [z?]",
        "q: 'it''s [ok?]'",
        "q: \"multi [line?\n  still] quoted\"",
    ];
    for case in cases {
        let text = format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\nnote:\n  {}\n",
            case.replace('\n', "\n  ")
        );
        let ours = switchboard_crds::check_kubectl_compatible(&text);
        let theirs = kubectl_parse(&text);
        assert_eq!(
            ours.is_ok(),
            theirs.is_ok(),
            "{case:?}: ours {ours:?}, kubectl {theirs:?}"
        );
    }
    // And the runtime's reader says where and what to do.
    let bad = std::fs::read_to_string(support::repo_root().join("examples/scenario.yaml"))
        .unwrap()
        .replace(
            r#"["How much is the Team plan?", "Is there a non-profit discount?"]"#,
            "[How much is the Team plan?, Is there a non-profit discount?]",
        );
    let err = switchboard_crds::resources_from_yaml(&bad)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("line 49") && err.contains("quote the value"),
        "{err}"
    );
}
