//! The offline evaluation gate of a candidate version (`spec.evaluation`, seed section 6).
//!
//! Once the candidate's artifact is verified, a Job in the AdapterPatch's namespace answers the
//! golden set twice through the Router's pipeline — with the lineage's stable version (the
//! baseline) and with the candidate — by running `switchboard-runtime eval --answers` in
//! operator mode on two RuntimeConfigs the operator compiles
//! ([`switchboard_crds::compile::evaluation_configs`]) and writes into a ConfigMap beside the Job. The pod
//! mounts what a runtime pod of the Router mounts (the index claim, the artifact claims, the
//! pull and endpoint Secrets) plus the golden set, and writes its verdict (the gate's JSON,
//! under 4 KiB) as its termination message; the controller folds it into the rollout
//! ([`EvaluationCheck`]). Pure builders and readers only.

use std::collections::BTreeMap;

use k8s_openapi::api::{
    batch::v1::{Job, JobSpec},
    core::v1::{
        ConfigMap, ConfigMapVolumeSource, Container, EmptyDirVolumeSource, KeyToPath,
        PersistentVolumeClaimVolumeSource, PodSpec, PodTemplateSpec, SecretVolumeSource, Volume,
        VolumeMount,
    },
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use switchboard_artifact::sha256_hex;
use switchboard_crds::adapter_patch::{Evaluation, EvaluationMetric, EvaluationResult};
use switchboard_crds::runtime_config::RuntimeConfig;
use switchboard_crds::{AdapterPatch, Router, conditions::reasons};

use super::verify_job::{ADAPTER_PATCH_LABEL, TERMINATION_LOG, TTL_SECONDS_AFTER_FINISHED};
use crate::names::{ARTIFACTS_DIR, DATA_DIR, PVC_DIR, SECRETS_DIR, index_claim_name};
use crate::router::build::ConfigVolumes;

/// Where the Job finds the two RuntimeConfigs and the limits.
pub const EVAL_DIR: &str = "/etc/switchboard/eval";
/// Where the golden set is mounted.
pub const GOLDEN_DIR: &str = "/etc/switchboard/golden";
/// Files of the evaluation ConfigMap.
pub const BASELINE_FILE: &str = "baseline.json";
/// The candidate's RuntimeConfig.
pub const CANDIDATE_FILE: &str = "candidate.json";
/// `spec.evaluation` as JSON.
pub const LIMITS_FILE: &str = "limits.json";

/// What the controller knows about the candidate's evaluation.
#[derive(Clone, Debug, PartialEq)]
pub enum EvaluationCheck {
    /// `spec.evaluation` is unset, or the candidate is past the gate.
    NotRequired,
    /// The Job runs (or is being created).
    Pending(EvaluationResult),
    /// Every limit held.
    Passed(EvaluationResult),
    /// The candidate is outside a limit, or the Job ran past its timeout: not rolled out.
    Failed {
        /// `EvaluationFailed` or `EvaluationTimedOut`.
        reason: String,
        /// With the numbers.
        message: String,
        /// The result for `status.evaluation`.
        result: EvaluationResult,
    },
    /// The evaluation could not run (retried): a missing Router, golden set or compiled config,
    /// a Job that failed.
    Error(String),
}

/// Name of the Job (and its ConfigMap) evaluating `patch`'s spec version: a new version,
/// digest, golden set, Router or limits gets a new Job. Within 63 characters.
pub fn job_name(patch: &str, p: &AdapterPatch, evaluation: &Evaluation) -> String {
    let spec = &p.spec;
    let hash = sha256_hex(
        format!(
            "{}\n{}\n{}\n{}",
            spec.version,
            spec.artifact.sha256,
            serde_json::to_string(evaluation).unwrap_or_default(),
            spec.lineage
        )
        .as_bytes(),
    );
    let prefix: String = patch.chars().take(44).collect();
    format!(
        "{}-eval-{}",
        prefix.trim_end_matches(['-', '.']),
        &hash[..12]
    )
}

/// The Job and its ConfigMap.
#[derive(Clone, Debug)]
pub struct EvaluationJob<'a> {
    /// The AdapterPatch.
    pub patch: &'a AdapterPatch,
    /// Its name.
    pub name: &'a str,
    /// Its namespace.
    pub namespace: &'a str,
    /// Its `spec.evaluation`.
    pub evaluation: &'a Evaluation,
    /// The Router named by `evaluation.routerRef`.
    pub router: &'a Router,
    /// The runtime image (the Router's `spec.image` wins, as for its pods).
    pub image: &'a str,
    /// The baseline and candidate configs.
    pub configs: (&'a RuntimeConfig, &'a RuntimeConfig),
    /// Internal address blocks adapter artifacts may come from (the operator's `--egress-allow`).
    pub egress_allow: Option<&'a str>,
}

impl EvaluationJob<'_> {
    fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (
                "app.kubernetes.io/name".to_owned(),
                "switchboard-adapter-evaluation".to_owned(),
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
        ])
    }

    fn meta(&self) -> ObjectMeta {
        crate::child::child_meta(
            self.patch,
            job_name(self.name, self.patch, self.evaluation),
            self.namespace,
            self.labels(),
            BTreeMap::new(),
        )
    }

    /// The ConfigMap holding the two RuntimeConfigs and the limits.
    pub fn config_map(&self) -> Result<ConfigMap, serde_json::Error> {
        Ok(ConfigMap {
            metadata: self.meta(),
            data: Some(BTreeMap::from([
                (
                    BASELINE_FILE.to_owned(),
                    serde_json::to_string_pretty(self.configs.0)?,
                ),
                (
                    CANDIDATE_FILE.to_owned(),
                    serde_json::to_string_pretty(self.configs.1)?,
                ),
                (
                    LIMITS_FILE.to_owned(),
                    serde_json::to_string(self.evaluation)?,
                ),
            ])),
            ..ConfigMap::default()
        })
    }

    /// The Job: the runtime image running the gate with what a runtime pod of the Router mounts.
    pub fn job(&self) -> Job {
        let kb = &self.configs.0.knowledge_base.name;
        let golden = &self.evaluation.golden_set;
        let mut volumes_needed = ConfigVolumes::of(self.configs.0);
        let candidate_volumes = ConfigVolumes::of(self.configs.1);
        volumes_needed.claims.extend(candidate_volumes.claims);
        volumes_needed
            .pull_secrets
            .extend(candidate_volumes.pull_secrets);
        let endpoint_secret = self
            .router
            .spec
            .large_model
            .endpoint
            .as_ref()
            .and_then(|e| e.secret_ref.as_ref())
            .map(|s| s.name.clone());
        if let Some(secret) = &endpoint_secret {
            volumes_needed.pull_secrets.insert(secret.clone());
        }
        let mount = |name: &str, path: String, read_only: bool| VolumeMount {
            name: name.to_owned(),
            mount_path: path,
            read_only: Some(read_only),
            ..VolumeMount::default()
        };
        let mut mounts = vec![
            mount("eval", EVAL_DIR.to_owned(), true),
            mount("golden", GOLDEN_DIR.to_owned(), true),
            mount("index", format!("{DATA_DIR}/{kb}"), true),
            mount("artifacts", ARTIFACTS_DIR.to_owned(), false),
            mount("tmp", "/tmp".to_owned(), false),
        ];
        let mut volumes = vec![
            Volume {
                name: "eval".to_owned(),
                config_map: Some(ConfigMapVolumeSource {
                    name: job_name(self.name, self.patch, self.evaluation),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            },
            Volume {
                name: "golden".to_owned(),
                config_map: Some(ConfigMapVolumeSource {
                    name: golden.name.clone(),
                    items: Some(vec![KeyToPath {
                        key: golden.key.clone(),
                        path: golden.key.clone(),
                        mode: None,
                    }]),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            },
            Volume {
                name: "index".to_owned(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: index_claim_name(kb),
                    read_only: Some(true),
                }),
                ..Volume::default()
            },
            Volume {
                name: "artifacts".to_owned(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            },
            Volume {
                name: "tmp".to_owned(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            },
        ];
        for (i, secret) in volumes_needed.pull_secrets.iter().enumerate() {
            mounts.push(mount(
                &format!("secret-{i}"),
                format!("{SECRETS_DIR}/{secret}"),
                true,
            ));
            volumes.push(Volume {
                name: format!("secret-{i}"),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(secret.clone()),
                    optional: Some(true),
                    ..SecretVolumeSource::default()
                }),
                ..Volume::default()
            });
        }
        for (i, claim) in volumes_needed.claims.iter().enumerate() {
            mounts.push(mount(
                &format!("pvc-{i}"),
                format!("{PVC_DIR}/{claim}"),
                true,
            ));
            volumes.push(Volume {
                name: format!("pvc-{i}"),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim.clone(),
                    read_only: Some(true),
                }),
                ..Volume::default()
            });
        }
        let args: Vec<String> = [
            "eval",
            "--answers",
            "--runtime-config",
            &format!("{EVAL_DIR}/{BASELINE_FILE}"),
            "--candidate-config",
            &format!("{EVAL_DIR}/{CANDIDATE_FILE}"),
            "--limits",
            &format!("{EVAL_DIR}/{LIMITS_FILE}"),
            "--golden",
            &format!("{GOLDEN_DIR}/{}", golden.key),
            "--index-data",
            DATA_DIR,
            "--artifacts",
            ARTIFACTS_DIR,
            "--secrets",
            SECRETS_DIR,
            "--pvc-root",
            PVC_DIR,
            "--report-file",
            TERMINATION_LOG,
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        let container = Container {
            name: "evaluate".to_owned(),
            image: Some(self.image.to_owned()),
            args: Some(args),
            termination_message_path: Some(TERMINATION_LOG.to_owned()),
            termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
            resources: self.router.spec.resources.clone(),
            volume_mounts: Some(mounts),
            env: crate::pod::egress_env(self.egress_allow).map(|e| vec![e]),
            security_context: Some(crate::pod::container_security(true)),
            ..Container::default()
        };
        let labels = self.labels();
        Job {
            metadata: self.meta(),
            spec: Some(JobSpec {
                // A deterministic evaluation is not retried blindly; a failed Job is reported
                // (EvaluationError) and replaced on the next check.
                backoff_limit: Some(0),
                active_deadline_seconds: i64::try_from(
                    self.evaluation.timeout.duration().as_secs(),
                )
                .ok(),
                ttl_seconds_after_finished: Some(TTL_SECONDS_AFTER_FINISHED),
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(labels),
                        ..ObjectMeta::default()
                    }),
                    spec: Some(PodSpec {
                        restart_policy: Some("Never".to_owned()),
                        containers: vec![container],
                        volumes: Some(volumes),
                        automount_service_account_token: Some(false),
                        security_context: Some(crate::pod::pod_security()),
                        ..PodSpec::default()
                    }),
                },
                ..JobSpec::default()
            }),
            status: None,
        }
    }
}

/// The annotation recording which version the trainer's notes describe.
pub const TRAINED_VERSION: &str = "training.switchboard.dev/version";
/// The annotation with the anchors' relative regression (`0.02` = 2% worse).
pub const ANCHOR_REGRESSION: &str = "training.switchboard.dev/anchor-regression";

/// `spec.evaluation.maxAnchorRegression` against the trainer's notes on the version: `None`
/// when there is no limit or the version is within it (the evaluation Job decides the rest),
/// else the version's failed check, with the numbers.
pub fn anchor_check(
    patch: &AdapterPatch,
    evaluation: &Evaluation,
    now: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
) -> Option<EvaluationCheck> {
    let limit = evaluation.max_anchor_regression.as_ref()?;
    let version = &patch.spec.version;
    let notes = patch.metadata.annotations.as_ref();
    let noted_version = notes.and_then(|a| a.get(TRAINED_VERSION));
    let regression = notes
        .and_then(|a| a.get(ANCHOR_REGRESSION))
        .and_then(|r| r.trim().parse::<f64>().ok())
        .filter(|r| r.is_finite());
    let fail = |message: String, metrics: Vec<EvaluationMetric>| EvaluationCheck::Failed {
        reason: reasons::EVALUATION_FAILED.to_owned(),
        message: message.clone(),
        result: EvaluationResult {
            version: version.clone(),
            passed: Some(false),
            metrics,
            message,
            finished_at: Some(now.clone()),
            ..EvaluationResult::default()
        },
    };
    let regression = match (noted_version, regression) {
        (Some(v), Some(r)) if v == version => r,
        _ => {
            return Some(fail(
                format!(
                    "{version} not rolled out: spec.evaluation.maxAnchorRegression is {limit}, and the version has no anchor regression recorded for itself (annotations {TRAINED_VERSION} = {version} and {ANCHOR_REGRESSION}: train it with switchboard-train sft --anchors)"
                ),
                Vec::new(),
            ));
        }
    };
    let within = regression <= limit.fraction() + 1e-12;
    if within {
        return None;
    }
    Some(fail(
        format!(
            "{version} not rolled out: its stability anchors regressed {:.1}% over the adapter it was trained from, more than spec.evaluation.maxAnchorRegression {limit}",
            regression * 100.0
        ),
        vec![EvaluationMetric {
            name: "anchorRegression".to_owned(),
            baseline: None,
            candidate: regression,
            limit: format!("at most {limit}"),
            passed: false,
        }],
    ))
}

/// The gate's verdict as the Job writes it (`switchboard-runtime`'s `GateVerdict`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Verdict {
    passed: bool,
    questions: i32,
    metrics: Vec<EvaluationMetric>,
    message: String,
}

/// The check from a finished Job: its termination message when it succeeded, or why it did not.
/// `running` is the result written while the Job runs (version, Job, start time), completed
/// here.
pub fn check_from_job(
    running: EvaluationResult,
    state: JobOutcome<'_>,
    now: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
) -> EvaluationCheck {
    let job = running.job.clone().unwrap_or_default();
    match state {
        JobOutcome::Running => EvaluationCheck::Pending(running),
        JobOutcome::DeadlineExceeded => {
            let message = format!(
                "{} not rolled out: evaluation Job {job} ran past spec.evaluation.timeout",
                running.version
            );
            EvaluationCheck::Failed {
                reason: reasons::EVALUATION_TIMED_OUT.to_owned(),
                message: message.clone(),
                result: EvaluationResult {
                    passed: Some(false),
                    message,
                    finished_at: Some(now),
                    ..running
                },
            }
        }
        JobOutcome::Failed(why) => {
            EvaluationCheck::Error(format!("evaluation Job {job} failed: {why}"))
        }
        JobOutcome::Succeeded(None) => {
            EvaluationCheck::Error(format!("evaluation Job {job} succeeded without a verdict"))
        }
        JobOutcome::Succeeded(Some(message)) => {
            let verdict: Verdict = match serde_json::from_str(message.trim()) {
                Ok(v) => v,
                Err(e) => {
                    return EvaluationCheck::Error(format!(
                        "the verdict of evaluation Job {job} is not valid JSON ({e}): {message:.200}"
                    ));
                }
            };
            let result = EvaluationResult {
                passed: Some(verdict.passed),
                questions: verdict.questions,
                metrics: verdict.metrics,
                message: verdict.message.clone(),
                finished_at: Some(now),
                ..running
            };
            if verdict.passed {
                EvaluationCheck::Passed(result)
            } else {
                EvaluationCheck::Failed {
                    reason: reasons::EVALUATION_FAILED.to_owned(),
                    message: format!(
                        "{} on {} golden questions against {}: {}",
                        result.version,
                        result.questions,
                        result
                            .baseline_version
                            .as_deref()
                            .map_or_else(|| "the Router without it".to_owned(), |v| v.to_owned()),
                        verdict.message
                    ),
                    result,
                }
            }
        }
    }
}

/// How a Job ended, as [`check_from_job`] reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobOutcome<'a> {
    /// Not finished.
    Running,
    /// Succeeded, with the pod's termination message.
    Succeeded(Option<&'a str>),
    /// Killed at `activeDeadlineSeconds`.
    DeadlineExceeded,
    /// Failed otherwise.
    Failed(&'a str),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patch() -> AdapterPatch {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "switchboard.dev/v1alpha1", "kind": "AdapterPatch",
            "metadata": {"name": "grounded-answers", "namespace": "support", "uid": "ap-uid", "generation": 3},
            "spec": {
                "lineage": "grounded-answers", "baseModel": "/models/smollm2.gguf", "version": "1.1.0",
                "artifact": {"uri": "pvc://adapters/grounded-answers/1.1.0", "sha256": format!("sha256:{}", "b".repeat(64))},
                "lora": {"rank": 8},
                "domain": {"description": "grounded answers", "fallback": true},
                "evaluation": {
                    "routerRef": {"name": "acme"},
                    "goldenSet": {"name": "golden", "key": "golden-answers.jsonl"},
                },
            },
        }))
        .unwrap()
    }

    /// A version whose anchors regressed past `maxAnchorRegression` never gets an evaluation
    /// Job; one within it does; one without the trainer's record for its own version is not
    /// rolled out either.
    #[test]
    fn the_anchor_regression_the_trainer_recorded_is_held_to_its_limit() {
        let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).unwrap(),
        );
        let with = |limit: Option<&str>, notes: &[(&str, &str)]| {
            let mut p = patch();
            let e = p.spec.evaluation.as_mut().unwrap();
            e.max_anchor_regression = limit.map(|l| serde_json::from_value(l.into()).unwrap());
            p.metadata.annotations = Some(
                notes
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            );
            let e = p.spec.evaluation.clone().unwrap();
            anchor_check(&p, &e, now.clone())
        };
        assert!(with(None, &[]).is_none(), "no limit, no check");
        let ok = [(TRAINED_VERSION, "1.1.0"), (ANCHOR_REGRESSION, "0.0120")];
        assert!(with(Some("5%"), &ok).is_none());
        let bad = [(TRAINED_VERSION, "1.1.0"), (ANCHOR_REGRESSION, "0.0720")];
        match with(Some("5%"), &bad) {
            Some(EvaluationCheck::Failed {
                reason,
                message,
                result,
            }) => {
                assert_eq!(reason, reasons::EVALUATION_FAILED);
                assert!(
                    message.contains("regressed 7.2%") && message.contains("5%"),
                    "{message}"
                );
                assert_eq!(result.metrics[0].name, "anchorRegression");
                assert_eq!(result.passed, Some(false));
            }
            other => panic!("{other:?}"),
        }
        // The notes of the previous version do not vouch for this one.
        let stale = [(TRAINED_VERSION, "1.0.0"), (ANCHOR_REGRESSION, "0.0")];
        match with(Some("5%"), &stale) {
            Some(EvaluationCheck::Failed { message, .. }) => {
                assert!(
                    message.contains("no anchor regression recorded"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    fn config(adapter_uri: &str) -> RuntimeConfig {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "switchboard.dev/v1alpha1", "kind": "RuntimeConfig",
            "revision": format!("sha256:{}", "0".repeat(64)),
            "router": {"namespace": "support", "name": "acme"},
            "knowledgeBase": {"name": "acme-support", "indexGeneration": 3, "embeddingModel": "/models/minilm", "retrieval": {}},
            "smallModel": {"model": "/models/smollm2.gguf", "maxActiveAdapters": 4, "maxNewTokens": 96},
            "adapters": [{
                "name": "grounded-answers", "lineage": "grounded-answers", "version": "1.0.0", "role": "Stable",
                "artifact": {"uri": adapter_uri, "sha256": format!("sha256:{}", "a".repeat(64))},
                "lora": {"rank": 8, "alpha": 16.0, "targetModules": ["q_proj", "v_proj"]},
                "domain": {"description": "grounded answers", "fallback": true},
            }],
            "largeModel": {"endpoint": {"url": "https://llm.example/v1", "model": "big", "timeout": "30s", "secretRef": {"name": "llm-api", "key": "token"}}, "maxQueueDepth": 4},
            "routerPolicy": {
                "difficultyThreshold": 0.5, "adapterSelection": {}, "queryRewrite": {},
                "explorationShare": "0%", "shadowMaxConcurrent": 1,
            },
            "experiments": [],
        }))
        .unwrap()
    }

    fn router() -> Router {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "switchboard.dev/v1alpha1", "kind": "Router",
            "metadata": {"name": "acme", "namespace": "support"},
            "spec": {
                "knowledgeBaseRef": {"name": "acme-support"},
                "smallModel": {"model": "/models/smollm2.gguf"},
                "largeModel": {"endpoint": {"url": "https://llm.example/v1", "model": "big", "secretRef": {"name": "llm-api", "key": "token"}}},
            },
        }))
        .unwrap()
    }

    #[test]
    fn the_job_mounts_what_a_runtime_pod_does_and_runs_the_gate() {
        let p = patch();
        let evaluation = p.spec.evaluation.clone().unwrap();
        let baseline = config("pvc://adapters/grounded-answers/1.0.0");
        let candidate = config("pvc://adapters-next/grounded-answers/1.1.0");
        let r = router();
        let builder = EvaluationJob {
            patch: &p,
            name: "grounded-answers",
            namespace: "support",
            evaluation: &evaluation,
            router: &r,
            image: "runtime:0.1.0",
            configs: (&baseline, &candidate),
            egress_allow: None,
        };
        let job = builder.job();
        let name = job.metadata.name.clone().unwrap();
        assert!(
            name.starts_with("grounded-answers-eval-") && name.len() <= 63,
            "{name}"
        );
        let owner = &job.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("AdapterPatch", Some(true))
        );
        let spec = job.spec.unwrap();
        assert_eq!(spec.active_deadline_seconds, Some(1800));
        assert_eq!(spec.backoff_limit, Some(0));
        let pod = spec.template.spec.unwrap();
        assert_eq!(pod.automount_service_account_token, Some(false));
        let c = &pod.containers[0];
        let args = c.args.clone().unwrap();
        assert_eq!(&args[..2], ["eval", "--answers"]);
        let arg = |flag: &str| args[args.iter().position(|a| a == flag).unwrap() + 1].clone();
        assert_eq!(
            arg("--golden"),
            "/etc/switchboard/golden/golden-answers.jsonl"
        );
        assert_eq!(
            arg("--candidate-config"),
            "/etc/switchboard/eval/candidate.json"
        );
        assert_eq!(arg("--report-file"), "/dev/termination-log");
        let mounts = c.volume_mounts.clone().unwrap();
        let at = |path: &str| {
            mounts
                .iter()
                .find(|m| m.mount_path == path)
                .map(|m| m.read_only)
        };
        assert_eq!(
            at("/var/lib/switchboard/index/acme-support"),
            Some(Some(true))
        );
        // Both versions' claims, and the endpoint's Secret.
        assert_eq!(at("/var/run/switchboard/pvc/adapters"), Some(Some(true)));
        assert_eq!(
            at("/var/run/switchboard/pvc/adapters-next"),
            Some(Some(true))
        );
        assert_eq!(at("/var/run/switchboard/secrets/llm-api"), Some(Some(true)));
        let volumes = pod.volumes.unwrap();
        let golden = volumes.iter().find(|v| v.name == "golden").unwrap();
        assert_eq!(golden.config_map.as_ref().unwrap().name, "golden");

        let cm = builder.config_map().unwrap();
        assert_eq!(cm.metadata.name.as_deref(), Some(name.as_str()));
        let data = cm.data.unwrap();
        let parsed = RuntimeConfig::from_json(data[CANDIDATE_FILE].as_bytes()).unwrap();
        assert_eq!(
            parsed.adapters[0].artifact.uri.as_deref(),
            Some("pvc://adapters-next/grounded-answers/1.1.0")
        );
        let limits: Evaluation = serde_json::from_str(&data[LIMITS_FILE]).unwrap();
        assert_eq!(limits, evaluation);

        // Another version: another Job.
        let mut next = p.clone();
        next.spec.version = "1.2.0".into();
        assert_ne!(job_name("grounded-answers", &next, &evaluation), name);
    }

    fn running() -> EvaluationResult {
        EvaluationResult {
            version: "1.1.0".into(),
            baseline_version: Some("1.0.0".into()),
            job: Some("j".into()),
            ..EvaluationResult::default()
        }
    }

    #[test]
    fn verdicts_become_checks() {
        let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        );
        assert!(matches!(
            check_from_job(running(), JobOutcome::Running, now.clone()),
            EvaluationCheck::Pending(_)
        ));
        let failing = r#"{"passed":false,"questions":40,"metrics":[{"name":"keyFactAccuracy","baseline":0.8,"candidate":0.5,"limit":"at most 2% below","passed":false}],"message":"outside the limits: keyFactAccuracy 80.0% -> 50.0% (at most 2% below)"}"#;
        match check_from_job(running(), JobOutcome::Succeeded(Some(failing)), now.clone()) {
            EvaluationCheck::Failed {
                reason,
                message,
                result,
            } => {
                assert_eq!(reason, reasons::EVALUATION_FAILED);
                assert!(
                    message.contains("80.0% -> 50.0%") && message.contains("1.0.0"),
                    "{message}"
                );
                assert_eq!(result.passed, Some(false));
                assert_eq!(result.metrics.len(), 1);
            }
            other => panic!("{other:?}"),
        }
        let passing =
            r#"{"passed":true,"questions":40,"metrics":[],"message":"within every limit"}"#;
        assert!(matches!(
            check_from_job(running(), JobOutcome::Succeeded(Some(passing)), now.clone()),
            EvaluationCheck::Passed(r) if r.passed == Some(true) && r.questions == 40
        ));
        assert!(matches!(
            check_from_job(running(), JobOutcome::DeadlineExceeded, now.clone()),
            EvaluationCheck::Failed { reason, .. } if reason == reasons::EVALUATION_TIMED_OUT
        ));
        assert!(matches!(
            check_from_job(running(), JobOutcome::Failed("BackoffLimitExceeded"), now.clone()),
            EvaluationCheck::Error(m) if m.contains("BackoffLimitExceeded")
        ));
        assert!(matches!(
            check_from_job(running(), JobOutcome::Succeeded(Some("not json")), now),
            EvaluationCheck::Error(_)
        ));
    }
}
