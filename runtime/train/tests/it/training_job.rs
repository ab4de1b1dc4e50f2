//! `examples/training/training-job.yaml` is a Job that would run: its objects parse as their
//! kinds, the RBAC grants exactly what `--apply` needs on the AdapterPatch it names, the image is the one
//! that carries the trainer (Dockerfile.runtime), the claims are mounted where `--pvc-root` puts
//! them, and the real binary accepts its arguments: run against the real kube-apiserver holding
//! examples/adapterpatch.yaml, with the test data where the Job's claim would hold it, it gets
//! as far as loading the base model (replaced by a missing file here).

use crate::support;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::Api;
use kube::api::PostParams;
use serde_json::Value;
use switchboard_artifact::PVC_ROOT;
use switchboard_crds::AdapterPatch;
use switchboard_testkit::controlplane::ControlPlane;

fn documents() -> Vec<Value> {
    let text = std::fs::read_to_string(support::example("training/training-job.yaml")).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

fn one<T: serde::de::DeserializeOwned>(docs: &[Value], kind: &str) -> T {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(
        found.len(),
        1,
        "one {kind} in examples/training/training-job.yaml"
    );
    serde_json::from_value(found[0].clone()).unwrap()
}

/// The value after `flag` in `args`.
fn arg<'a>(args: &'a [String], flag: &str) -> &'a str {
    let i = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("the Job passes no {flag}: {args:?}"));
    &args[i + 1]
}

#[test]
fn the_training_job_is_wired_to_its_adapter_patch_image_and_claims() {
    let docs = documents();
    let sa: ServiceAccount = one(&docs, "ServiceAccount");
    let role: Role = one(&docs, "Role");
    let binding: RoleBinding = one(&docs, "RoleBinding");
    let job: Job = one(&docs, "Job");
    let patch = support::example_adapter_patch();
    let namespace = patch["metadata"]["namespace"].as_str().unwrap();
    let name = patch["metadata"]["name"].as_str().unwrap();
    for ns in [
        &sa.metadata.namespace,
        &role.metadata.namespace,
        &binding.metadata.namespace,
        &job.metadata.namespace,
    ] {
        assert_eq!(ns.as_deref(), Some(namespace));
    }

    let pod = job.spec.unwrap().template.spec.unwrap();
    let c = &pod.containers[0];
    let args = c.args.clone().unwrap();
    assert!(matches!(args[0].as_str(), "sft" | "dpo"), "{args:?}");
    assert!(args.contains(&"--apply".to_owned()));
    assert_eq!(arg(&args, "--name"), name);
    assert_eq!(arg(&args, "--namespace"), namespace);

    // RBAC: the pod's ServiceAccount may get and patch that AdapterPatch.
    assert_eq!(pod.service_account_name, sa.metadata.name);
    assert_eq!(binding.role_ref.kind, "Role");
    assert_eq!(Some(&binding.role_ref.name), role.metadata.name.as_ref());
    let subject = &binding.subjects.unwrap()[0];
    assert_eq!(
        (subject.kind.as_str(), Some(&subject.name)),
        ("ServiceAccount", sa.metadata.name.as_ref())
    );
    assert_eq!(subject.namespace.as_deref(), Some(namespace));
    let rules = role.rules.unwrap();
    let rule = rules
        .iter()
        .find(|r| r.resources.as_deref() == Some(&["adapterpatches".to_owned()]))
        .expect("a rule on adapterpatches");
    assert_eq!(
        rule.api_groups.as_deref(),
        Some(&[switchboard_crds::GROUP.to_owned()][..])
    );
    for verb in ["get", "patch"] {
        assert!(rule.verbs.contains(&verb.to_owned()), "{:?}", rule.verbs);
    }
    if let Some(names) = &rule.resource_names {
        assert!(names.contains(&name.to_owned()), "{names:?}");
    }

    // The runtime image the operator deploys carries the trainer.
    assert_eq!(
        c.image.as_deref(),
        Some(switchboard_operator::context::default_runtime_image().as_str())
    );
    let command = c.command.clone().unwrap();
    let dockerfile = std::fs::read_to_string(support::root().join("Dockerfile.runtime")).unwrap();
    assert!(
        dockerfile.contains(&format!("/out/bin/switchboard-train {}", command[0])),
        "Dockerfile.runtime installs no {}",
        command[0]
    );
    assert!(dockerfile.contains("--bin switchboard-train"));

    // Every pvc:// location and path under the claims' root is a claim mounted there (the
    // output's writable).
    let mounts = c.volume_mounts.clone().unwrap();
    let volumes = pod.volumes.unwrap();
    let root = arg(&args, "--pvc-root");
    assert_eq!(root, PVC_ROOT);
    let mut claims_used = Vec::new();
    for a in &args {
        let (claim, writable) = if let Some(rest) = a.strip_prefix("pvc://") {
            (rest.split('/').next().unwrap(), a == arg(&args, "--output"))
        } else if let Some(rest) = a.strip_prefix(&format!("{root}/")) {
            (rest.split('/').next().unwrap(), false)
        } else {
            continue;
        };
        let mount = mounts
            .iter()
            .find(|m| m.mount_path == format!("{root}/{claim}"))
            .unwrap_or_else(|| panic!("{a}: no mount at {root}/{claim}"));
        let volume = volumes.iter().find(|v| v.name == mount.name).unwrap();
        let pvc = volume.persistent_volume_claim.as_ref().unwrap();
        assert_eq!(pvc.claim_name, claim);
        if writable {
            assert_ne!(mount.read_only, Some(true), "{a} is written");
            assert_ne!(pvc.read_only, Some(true), "{a} is written");
        }
        claims_used.push(claim.to_owned());
    }
    assert!(
        claims_used.contains(&"adapters".to_owned()),
        "{claims_used:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_binary_accepts_the_jobs_arguments() {
    let docs = documents();
    let job: Job = one(&docs, "Job");
    let args = job.spec.unwrap().template.spec.unwrap().containers[0]
        .args
        .clone()
        .unwrap();

    // The cluster: the AdapterPatch the Job names.
    // (A namespace of this test's own: `--namespace` is pointed at it below.)
    let (plane, ns) = tokio::task::spawn_blocking(|| {
        let plane = ControlPlane::shared();
        plane.install_crds();
        (plane, plane.namespace("training-job"))
    })
    .await
    .unwrap();
    let work = tempfile::tempdir().unwrap();
    let kubeconfig = plane.kubeconfig();
    let mut patch = support::example_adapter_patch();
    patch["metadata"]["namespace"] = ns.clone().into();
    let patch: AdapterPatch = serde_json::from_value(patch).unwrap();
    Api::<AdapterPatch>::default_namespaced(plane.admin_client(&ns).await)
        .create(&PostParams::default(), &patch)
        .await
        .unwrap();

    // The claims' root here, with the test data where the Job reads its data; a missing model.
    let root = work.path().join("pvc");
    let missing_model = work.path().join("no-model/SmolLM2-135M-Instruct.Q4_1.gguf");
    let mut local: Vec<String> = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if a == "--model" {
            local.extend(["--model".to_owned(), missing_model.display().to_string()]);
            i += 2;
            continue;
        }
        if a == "--namespace" {
            local.extend(["--namespace".to_owned(), ns.clone()]);
            i += 2;
            continue;
        }
        if let Some(rest) = a.strip_prefix(&format!("{PVC_ROOT}/")) {
            let here = root.join(rest);
            std::fs::create_dir_all(here.parent().unwrap()).unwrap();
            let source = if a == arg(&args, "--held-out") {
                "support_sft_heldout.jsonl"
            } else {
                "support_sft.jsonl"
            };
            std::fs::copy(support::data(source), &here).unwrap();
            local.push(here.display().to_string());
        } else if a == PVC_ROOT {
            local.push(root.display().to_string());
        } else {
            local.push(a.clone());
        }
        i += 1;
    }
    let out = tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = local.iter().map(String::as_str).collect();
        support::train(&refs, &[("KUBECONFIG", kubeconfig.as_path())])
    })
    .await
    .unwrap();
    let err = support::stderr(&out);
    assert!(!out.status.success(), "{err}");
    // Arguments, AdapterPatch, data and output location all passed: the model is what failed.
    assert!(
        err.contains("no-model/SmolLM2-135M-Instruct.Q4_1.gguf"),
        "failed before the model: {err}"
    );
    assert!(!root.join("adapters").exists(), "nothing written");
}

/// The Job lives in its own folder: `switchboard-runtime serve` reads every YAML file directly
/// under `examples/` (its default `--manifests`) and refuses kinds that are not Switchboard's.
#[test]
fn the_examples_folder_itself_holds_only_switchboard_manifests() {
    for entry in std::fs::read_dir(support::root().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            let text = std::fs::read_to_string(&path).unwrap();
            if let Err(e) = switchboard_crds::resources_from_yaml(&text) {
                panic!("{}: {e}", path.display());
            }
        }
    }
}
