//! `status`, `promote`, `abort` and `rollback` against the real kube-apiserver (switchboard-testkit's
//! control plane, the generated CRDs installed), through a kubeconfig, as a user runs them.

use std::path::Path;
use std::process::{Command, Output};

use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use switchboard_crds::{AdapterPatch, Experiment};
use switchboard_testkit::controlplane::ControlPlane;

fn switchboard(kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kubectl-switchboard"))
        .env_remove("KUBECONFIG")
        .args(args)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .output()
        .expect("the binary runs")
}

fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).expect("UTF-8")
}

fn annotations(plane: &ControlPlane) -> Value {
    let object: Value = serde_json::from_str(
        &plane
            .kubectl(&[
                "get",
                "adapterpatch",
                "pricing",
                "-n",
                "support",
                "-o",
                "json",
            ])
            .expect("the AdapterPatch"),
    )
    .expect("JSON");
    object["metadata"]["annotations"].clone()
}

/// The examples, with the status an operator would have written mid-canary.
fn seed(plane: &ControlPlane) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let client = plane.admin_client("support").await;
        let patches: Api<AdapterPatch> = Api::namespaced(client.clone(), "support");
        let patch: AdapterPatch =
            serde_yaml::from_str(include_str!("../../../examples/adapterpatch.yaml"))
                .expect("examples/adapterpatch.yaml");
        patches
            .create(&PostParams::default(), &patch)
            .await
            .expect("create AdapterPatch");
        patches
            .patch_status(
                "pricing",
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": {
                    "phase": "Canary", "stableVersion": "1.2.0", "candidateVersion": "1.3.0",
                    "canaryWeight": 25, "currentStep": 1,
                    "history": [
                        { "version": "1.2.0", "sha256": "sha256:b", "phase": "Promoted",
                          "startedAt": "2026-11-01T00:00:00Z" },
                        { "version": "1.3.0", "sha256": "sha256:c", "phase": "Canary",
                          "startedAt": "2026-11-27T00:00:00Z" }
                    ],
                    "lastAnalysis": { "decision": "Continue", "message": "escalationRate +1.2% [-3.0%, +5.5%]" }
                }})),
            )
            .await
            .expect("AdapterPatch status");
        let experiments: Api<Experiment> = Api::namespaced(client, "support");
        let experiment: Experiment =
            serde_yaml::from_str(include_str!("../../../examples/experiment.yaml"))
                .expect("examples/experiment.yaml");
        experiments
            .create(&PostParams::default(), &experiment)
            .await
            .expect("create Experiment");
        experiments
            .patch_status(
                "rewrite-always",
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": {
                    "phase": "Running", "samples": 12000, "requiredSamplesPerVariant": 19461,
                    "decision": "Pending"
                }})),
            )
            .await
            .expect("Experiment status");
    });
}

#[test]
fn status_promote_abort_and_rollback_against_an_api_server() {
    // This binary's own control plane: the namespaces the examples name.
    let plane = ControlPlane::shared();
    plane.install_crds();
    for namespace in ["support", "other"] {
        plane
            .kubectl(&["create", "namespace", namespace])
            .expect("namespace");
    }
    let kubeconfig = plane.kubeconfig();
    seed(plane);

    // status, as JSON and as text.
    let json: Value = serde_json::from_str(&ok(&switchboard(
        &kubeconfig,
        &["status", "-n", "support", "-o", "json"],
    )))
    .expect("JSON");
    let rollout = &json["rollouts"][0];
    assert_eq!(rollout["name"], "pricing");
    assert_eq!(rollout["phase"], "Canary");
    assert_eq!(rollout["stable"], "1.2.0");
    assert_eq!(rollout["candidate"], "1.3.0");
    assert_eq!(rollout["weight"], 25);
    assert_eq!(rollout["step"], "2/3");
    let experiment = &json["experiments"][0];
    assert_eq!(experiment["name"], "rewrite-always");
    assert_eq!(experiment["samples"], 12000);
    assert_eq!(experiment["requiredPerVariant"], 19461);
    let text = ok(&switchboard(&kubeconfig, &["status", "-A"]));
    assert!(
        text.contains("pricing") && text.contains("rewrite-always"),
        "{text}"
    );
    // Another namespace has nothing.
    let empty = ok(&switchboard(&kubeconfig, &["status", "-n", "other"]));
    assert!(empty.contains("No AdapterPatches."), "{empty}");

    // A version that never ran is refused, and nothing is written.
    let refused = switchboard(
        &kubeconfig,
        &["rollback", "pricing", "-n", "support", "--to", "9.9.9"],
    );
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("has no version 9.9.9 in its history (known: 1.2.0, 1.3.0)"),
        "{stderr}"
    );
    assert!(annotations(plane).is_null(), "{}", annotations(plane));

    // promote sets the action annotation.
    let out = ok(&switchboard(
        &kubeconfig,
        &["promote", "pricing", "-n", "support"],
    ));
    assert!(out.contains("promote requested"), "{out}");
    assert_eq!(annotations(plane)["switchboard.dev/action"], "promote");

    // rollback to the stable version, during the canary, sets both annotations.
    ok(&switchboard(
        &kubeconfig,
        &["rollback", "pricing", "-n", "support", "--to", "1.2.0"],
    ));
    let set = annotations(plane);
    assert_eq!(set["switchboard.dev/action"], "rollback");
    assert_eq!(set["switchboard.dev/rollback-to"], "1.2.0");

    // abort works during a rollout; a missing object is a clear error.
    ok(&switchboard(
        &kubeconfig,
        &["abort", "pricing", "-n", "support"],
    ));
    assert_eq!(annotations(plane)["switchboard.dev/action"], "abort");
    let missing = switchboard(&kubeconfig, &["promote", "nope", "-n", "support"]);
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("reading AdapterPatch support/nope"),
        "{stderr}"
    );
}
