//! The verification Job of a `pvc://` artifact. The operator cannot mount a claim, so a short
//! Job in the AdapterPatch's namespace mounts it read-only where the runtime pods do
//! (`/var/run/switchboard/pvc/<claim>`), runs `switchboard-runtime verify-artifact`, and reports
//! the weights' digest and the checked `adapter_config.json` fields in its termination message
//! ([`switchboard_artifact::VerifyReport`]); the controller folds the report into the same check
//! as a fetched artifact ([`super::artifact::verify`]). Pure builders and readers only.

use std::collections::BTreeMap;

use k8s_openapi::api::{
    batch::v1::{Job, JobSpec},
    core::v1::{
        Container, PersistentVolumeClaimVolumeSource, Pod, PodSpec, PodTemplateSpec, Volume,
        VolumeMount,
    },
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use switchboard_artifact::{PVC_ROOT, VerifyReport, sha256_hex};
use switchboard_crds::{AdapterPatch, AdapterPatchSpec, conditions::reasons};

use super::artifact::verify;
use crate::ports::ArtifactCheck;

/// Label naming the AdapterPatch of a verification Job.
pub const ADAPTER_PATCH_LABEL: &str = "switchboard.dev/adapter-patch";
/// A verification pod that cannot start (an unbound claim, an unpullable image) fails the Job
/// after this long, and the check reports why.
pub const DEADLINE_SECONDS: i64 = 600;
/// Finished verification Jobs are garbage-collected after this long (their result is in the
/// AdapterPatch status by then).
pub const TTL_SECONDS_AFTER_FINISHED: i32 = 3600;
/// Where the pod writes its report.
pub const TERMINATION_LOG: &str = "/dev/termination-log";

/// Name of the verification Job of `spec`'s version and artifact: a new version, URI or digest
/// gets a new Job. Within 63 characters (Job names become pod labels).
pub fn job_name(patch: &str, spec: &AdapterPatchSpec) -> String {
    let hash = sha256_hex(
        format!(
            "{}\n{}\n{}",
            spec.version, spec.artifact.uri, spec.artifact.sha256
        )
        .as_bytes(),
    );
    let prefix: String = patch.chars().take(42).collect();
    format!(
        "{}-verify-{}",
        prefix.trim_end_matches(['-', '.']),
        &hash[..12]
    )
}

/// What the builder needs.
#[derive(Clone, Debug)]
pub struct VerifyJob<'a> {
    /// The AdapterPatch.
    pub patch: &'a AdapterPatch,
    /// Its name.
    pub name: &'a str,
    /// Its namespace.
    pub namespace: &'a str,
    /// The runtime image (it carries `switchboard-runtime verify-artifact`).
    pub image: &'a str,
}

impl VerifyJob<'_> {
    /// The Job reading `claim` (the claim of `spec.artifact.uri`).
    pub fn job(&self, claim: &str) -> Job {
        let spec = &self.patch.spec;
        let labels = BTreeMap::from([
            (
                "app.kubernetes.io/name".to_owned(),
                "switchboard-artifact-verify".to_owned(),
            ),
            (
                "app.kubernetes.io/instance".to_owned(),
                self.name.to_owned(),
            ),
            (
                "app.kubernetes.io/managed-by".to_owned(),
                crate::names::FIELD_MANAGER.to_owned(),
            ),
            (ADAPTER_PATCH_LABEL.to_owned(), self.name.to_owned()),
        ]);
        let args = [
            "verify-artifact",
            "--uri",
            &spec.artifact.uri,
            "--pvc-root",
            PVC_ROOT,
            "--report-file",
            TERMINATION_LOG,
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        let container = Container {
            name: "verify".to_owned(),
            image: Some(self.image.to_owned()),
            args: Some(args),
            termination_message_path: Some(TERMINATION_LOG.to_owned()),
            termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
            volume_mounts: Some(vec![VolumeMount {
                name: "artifact".to_owned(),
                mount_path: format!("{PVC_ROOT}/{claim}"),
                read_only: Some(true),
                ..VolumeMount::default()
            }]),
            security_context: Some(crate::pod::container_security(true)),
            ..Container::default()
        };
        Job {
            metadata: crate::child::child_meta(
                self.patch,
                job_name(self.name, spec),
                self.namespace,
                labels.clone(),
                BTreeMap::new(),
            ),
            spec: Some(JobSpec {
                backoff_limit: Some(1),
                active_deadline_seconds: Some(DEADLINE_SECONDS),
                ttl_seconds_after_finished: Some(TTL_SECONDS_AFTER_FINISHED),
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(labels),
                        ..ObjectMeta::default()
                    }),
                    spec: Some(PodSpec {
                        restart_policy: Some("Never".to_owned()),
                        containers: vec![container],
                        volumes: Some(vec![Volume {
                            name: "artifact".to_owned(),
                            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                                claim_name: claim.to_owned(),
                                read_only: Some(true),
                            }),
                            ..Volume::default()
                        }]),
                        security_context: Some(crate::pod::pod_security()),
                        // Hashing a file needs no Kubernetes API: no token.
                        automount_service_account_token: Some(false),
                        ..PodSpec::default()
                    }),
                },
                ..JobSpec::default()
            }),
            status: None,
        }
    }
}

/// The termination message of the Job's successful pod.
pub fn termination_message(pods: &[Pod]) -> Option<&str> {
    pods.iter()
        .filter_map(|p| p.status.as_ref())
        .flat_map(|s| s.container_statuses.iter().flatten())
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref())
        .filter(|t| t.exit_code == 0)
        .find_map(|t| t.message.as_deref())
}

/// The check from a succeeded verification Job's termination message: the report's digest and
/// config against the spec, as for a fetched artifact. A directory the pod could not read, or
/// no readable report, is `ArtifactUnavailable` (retried with a new Job).
pub fn check_from_report(
    spec: &AdapterPatchSpec,
    job: &str,
    message: Option<&str>,
) -> ArtifactCheck {
    let unavailable = |message: String| ArtifactCheck::Failed {
        reason: reasons::ARTIFACT_UNAVAILABLE.to_owned(),
        message,
    };
    let uri = &spec.artifact.uri;
    let Some(message) = message else {
        return unavailable(format!(
            "{uri}: verification Job {job} succeeded without a report"
        ));
    };
    let report: VerifyReport = match serde_json::from_str(message.trim()) {
        Ok(r) => r,
        Err(e) => {
            return unavailable(format!(
                "{uri}: the report of verification Job {job} is not valid JSON ({e}): {message:.200}"
            ));
        }
    };
    if let Some(error) = report.error {
        return unavailable(format!("{uri}: {error} (verification Job {job})"));
    }
    let (Some(sha256), Some(config)) = (report.sha256, report.config) else {
        return unavailable(format!(
            "{uri}: verification Job {job} reported neither a digest and config nor an error"
        ));
    };
    let hex = sha256.strip_prefix("sha256:").unwrap_or(&sha256);
    verify(spec, config.as_bytes(), hex)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateTerminated, ContainerStatus, PodStatus,
    };

    use super::*;

    fn patch(uri: &str, digest: &str) -> AdapterPatch {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "switchboard.dev/v1alpha1", "kind": "AdapterPatch",
            "metadata": {"name": "pricing", "namespace": "support", "uid": "ap-uid", "generation": 2},
            "spec": {
                "lineage": "pricing", "baseModel": "/models/smollm2.gguf", "version": "1.3.0",
                "artifact": {"uri": uri, "sha256": format!("sha256:{digest}")},
                "lora": {"rank": 4, "alpha": 8.0},
                "domain": {"description": "pricing"},
            },
        }))
        .unwrap()
    }

    fn pod(message: &str, exit_code: i32) -> Pod {
        Pod {
            status: Some(PodStatus {
                container_statuses: Some(vec![ContainerStatus {
                    name: "verify".into(),
                    state: Some(ContainerState {
                        terminated: Some(ContainerStateTerminated {
                            exit_code,
                            message: Some(message.into()),
                            ..ContainerStateTerminated::default()
                        }),
                        ..ContainerState::default()
                    }),
                    ..ContainerStatus::default()
                }]),
                ..PodStatus::default()
            }),
            ..Pod::default()
        }
    }

    #[test]
    fn the_job_mounts_the_claim_read_only_and_runs_verify_artifact() {
        let p = patch("pvc://adapters/pricing/1.3.0", &"a".repeat(64));
        let job = VerifyJob {
            patch: &p,
            name: "pricing",
            namespace: "support",
            image: "runtime:0.1.0",
        }
        .job("adapters");
        let name = job.metadata.name.clone().unwrap();
        assert!(
            name.starts_with("pricing-verify-") && name.len() <= 63,
            "{name}"
        );
        let owner = &job.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("AdapterPatch", Some(true))
        );
        let spec = job.spec.unwrap();
        assert_eq!(spec.active_deadline_seconds, Some(DEADLINE_SECONDS));
        let pod = spec.template.spec.unwrap();
        assert_eq!(pod.automount_service_account_token, Some(false));
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("runtime:0.1.0"));
        assert_eq!(
            c.args.clone().unwrap(),
            [
                "verify-artifact",
                "--uri",
                "pvc://adapters/pricing/1.3.0",
                "--pvc-root",
                "/var/run/switchboard/pvc",
                "--report-file",
                "/dev/termination-log",
            ]
        );
        let mount = &c.volume_mounts.as_ref().unwrap()[0];
        assert_eq!(
            (mount.mount_path.as_str(), mount.read_only),
            ("/var/run/switchboard/pvc/adapters", Some(true))
        );
        let claim = pod.volumes.unwrap()[0]
            .persistent_volume_claim
            .clone()
            .unwrap();
        assert_eq!(
            (claim.claim_name.as_str(), claim.read_only),
            ("adapters", Some(true))
        );
        // Another version or digest: another Job.
        let mut other = p.spec.clone();
        other.version = "1.3.1".into();
        assert_ne!(job_name("pricing", &other), name);
        assert!(job_name(&"x".repeat(200), &other).len() <= 63);
    }

    #[test]
    fn reports_become_the_same_check_as_a_fetched_artifact() {
        let weights = sha256_hex(b"w");
        let config =
            r#"{"peft_type":"LORA","r":4,"lora_alpha":8,"target_modules":["q_proj","v_proj"]}"#;
        let report = |sha: &str| {
            serde_json::to_string(&VerifyReport {
                uri: "pvc://adapters/pricing/1.3.0".into(),
                sha256: Some(format!("sha256:{sha}")),
                config: Some(config.into()),
                error: None,
            })
            .unwrap()
        };
        let p = patch("pvc://adapters/pricing/1.3.0", &weights);
        let message = report(&weights);
        assert_eq!(
            check_from_report(&p.spec, "j", termination_message(&[pod(&message, 0)])),
            ArtifactCheck::Verified
        );
        // The weights on the claim are not the ones the spec names: DigestMismatch, the URI named.
        let other = report(&sha256_hex(b"other"));
        match check_from_report(&p.spec, "j", Some(&other)) {
            ArtifactCheck::Failed { reason, message } => {
                assert_eq!(reason, reasons::DIGEST_MISMATCH);
                assert!(
                    message.contains("pvc://adapters/pricing/1.3.0"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
        // The directory was not there: unavailable (retried), naming what was missing.
        let missing = serde_json::to_string(&VerifyReport {
            uri: "pvc://adapters/pricing/1.3.0".into(),
            error: Some(
                "/var/run/switchboard/pvc/adapters/pricing/1.3.0/adapter_config.json: No such file"
                    .into(),
            ),
            ..VerifyReport::default()
        })
        .unwrap();
        match check_from_report(&p.spec, "j", Some(&missing)) {
            ArtifactCheck::Failed { reason, message } => {
                assert_eq!(reason, reasons::ARTIFACT_UNAVAILABLE);
                assert!(message.contains("No such file"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        // A failed pod's message is not a report.
        assert_eq!(termination_message(&[pod("boom", 1)]), None);
        assert!(matches!(
            check_from_report(&p.spec, "j", None),
            ArtifactCheck::Failed { .. }
        ));
    }
}
