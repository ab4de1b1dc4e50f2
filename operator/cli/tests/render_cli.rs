//! `kubectl switchboard render` on the repository's examples, as a user runs it.

use std::process::Command;

fn switchboard(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kubectl-switchboard"))
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .args(args)
        .output()
        .expect("the binary runs")
}

fn config(output: &std::process::Output) -> serde_json::Value {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("RuntimeConfig JSON")
}

#[test]
fn renders_the_scenario_router_with_its_adapters_and_experiment() {
    let json = config(&switchboard(&[
        "render",
        "acme",
        "-f",
        "examples/scenario.yaml",
    ]));
    assert_eq!(json["kind"], "RuntimeConfig");
    assert_eq!(json["router"]["namespace"], "support");
    assert_eq!(json["router"]["name"], "acme");
    assert_eq!(json["knowledgeBase"]["name"], "acme-support");
    assert_eq!(json["knowledgeBase"]["indexGeneration"], 1);
    let revision = json["revision"].as_str().expect("revision");
    assert!(
        revision.starts_with("sha256:") && revision.len() == 71,
        "{revision}"
    );
    let lineages: Vec<&str> = json["adapters"]
        .as_array()
        .expect("adapters")
        .iter()
        .filter_map(|a| a["lineage"].as_str())
        .collect();
    assert!(lineages.contains(&"pricing"), "{lineages:?}");
    assert!(
        json["adapters"]
            .as_array()
            .expect("adapters")
            .iter()
            .all(|a| a["role"] == "Stable"),
        "{json:#}"
    );
    // The experiment compares pricing 1.2.0 with 1.3.0; in the steady state only 1.3.0 (the
    // spec's version) is loaded, so the compiler leaves it out and the CLI says why.
    assert_eq!(json["experiments"], serde_json::json!([]), "{json:#}");
    let output = switchboard(&["render", "acme", "-f", "examples/scenario.yaml"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("Experiment pricing-1-3 left out (AdapterVersionNotLoaded)")
            && stderr.contains("pricing@1.2.0"),
        "{stderr}"
    );

    // The same input gives the same revision; another assumed generation changes it.
    let again = config(&switchboard(&[
        "render",
        "acme",
        "-f",
        "examples/scenario.yaml",
    ]));
    assert_eq!(again["revision"], json["revision"]);
    let other = config(&switchboard(&[
        "render",
        "acme",
        "-f",
        "examples/scenario.yaml",
        "--index-generation",
        "7",
    ]));
    assert_eq!(other["knowledgeBase"]["indexGeneration"], 7);
    assert_ne!(other["revision"], json["revision"]);
}

#[test]
fn renders_from_a_directory() {
    let json = config(&switchboard(&[
        "render", "support", "-f", "examples", "-n", "support",
    ]));
    assert_eq!(json["router"]["name"], "support");
    assert_eq!(json["knowledgeBase"]["name"], "support-kb");
}

#[test]
fn unknown_routers_and_bad_manifests_are_clear_errors() {
    let output = switchboard(&["render", "nope", "-f", "examples/scenario.yaml"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no Router nope in the manifests (Routers found: support/acme)"),
        "{stderr}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.yaml");
    let scenario = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/scenario.yaml"
    ))
    .expect("scenario");
    std::fs::write(
        &bad,
        scenario.replace("version: 1.3.0", "version: one-point-three"),
    )
    .expect("write");
    let output = switchboard(&["render", "acme", "-f", bad.to_str().expect("utf-8")]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("bad.yaml") && stderr.contains("spec.version"),
        "{stderr}"
    );
}
