//! Pure builders of a KnowledgeBase's children (index volume, manifest ConfigMap, build Job),
//! the build report a Job's pod writes, and the build plan (what the inputs hash to, whether a
//! build or a scheduled refresh is due).

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        batch::v1::{Job, JobSpec},
        core::v1::{
            ConfigMap, ConfigMapVolumeSource, Container, EmptyDirVolumeSource, KeyToPath,
            PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource,
            Pod, PodSpec, PodTemplateSpec, Volume, VolumeMount, VolumeResourceRequirements,
        },
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use switchboard_crds::{
    KnowledgeBase,
    knowledge_base::{SourceError, SourceKind},
};

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::names::{DATA_DIR, index_claim_name};
use crate::pod::{JobState, job_state};

/// Label naming the KnowledgeBase of a child.
pub const KB_LABEL: &str = "switchboard.dev/knowledge-base";
/// Annotation on a build Job: the hash of the spec it builds.
pub const SPEC_HASH_ANNOTATION: &str = "switchboard.dev/spec-hash";
/// Annotation on a build Job: its sequence number.
pub const BUILD_ANNOTATION: &str = "switchboard.dev/build";
/// Where the manifest ConfigMap is mounted in the build pod.
pub const MANIFEST_DIR: &str = "/etc/switchboard/kb";
/// File name of the manifest in the ConfigMap.
pub const MANIFEST_FILE: &str = "knowledgebase.json";
/// Where ConfigMap sources are mounted in the build pod (`<dir>/<source name>/`); the indexer's
/// `--sources-dir`.
pub const SOURCES_DIR: &str = "/etc/switchboard/sources";
/// Scratch space of the build pod (HTTP sources are fetched there).
pub const SCRATCH_DIR: &str = "/tmp";
/// Longest an index build may run, pod start included (6 h: embedding a large KB on CPU takes
/// hours; a pod stuck before it starts fails the build instead of holding it forever).
pub const BUILD_DEADLINE_SECONDS: i64 = 6 * 3600;
/// Builds kept (older finished Jobs are deleted).
pub const JOBS_KEPT: usize = 3;

/// The JSON build report the index Job writes as its termination message
/// (`switchboard-runtime index --report-file /dev/termination-log`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildReport {
    /// The published generation.
    pub generation: i64,
    /// Documents indexed.
    pub documents: i64,
    /// Chunks indexed.
    pub chunks: i64,
    /// Sources or files that failed.
    #[serde(default)]
    pub source_errors: Vec<SourceError>,
    /// Contradiction candidates between the generation's passages; absent from runtimes that
    /// predate the check. (Stale documents are not in the report: whether a document is still
    /// retrieved is measured in Prometheus, see `content`.)
    #[serde(default)]
    pub contradictions: Option<ReportedContradictions>,
}

/// The contradiction summary of a build report.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportedContradictions {
    /// Candidates found.
    pub count: i64,
    /// The best few.
    #[serde(default)]
    pub top: Vec<ReportedContradiction>,
}

/// One candidate of a build report: two statements of different values.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReportedContradiction {
    /// `duration`, `money`, `percent`, `date`, `count` or `policy`.
    pub kind: String,
    /// The older statement (when dated).
    pub a: ReportedStatement,
    /// The other.
    pub b: ReportedStatement,
}

/// Where a value is stated.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReportedStatement {
    /// Document id.
    pub document: String,
    /// The value as written.
    pub value: String,
}

impl ReportedContradiction {
    /// The status form, cut to the schema's lengths.
    pub fn candidate(&self) -> switchboard_crds::knowledge_base::ContradictionCandidate {
        let cut = |s: &str, max: usize| {
            let mut end = s.len().min(max);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s[..end].to_owned()
        };
        switchboard_crds::knowledge_base::ContradictionCandidate {
            kind: cut(&self.kind, 16),
            document: cut(&self.a.document, 1024),
            value: cut(&self.a.value, 128),
            other_document: cut(&self.b.document, 1024),
            other_value: cut(&self.b.value, 128),
        }
    }
}

/// Name of the manifest ConfigMap.
pub fn manifest_name(kb: &str) -> String {
    format!("{kb}-kb")
}

/// What a build reads beyond the spec, by source name: the content digest of each ConfigMap
/// source ([`config_map_digest`]).
pub type SourceInputs = BTreeMap<String, String>;

/// Short hash of what a build reads: the spec and the content of its ConfigMap sources. A change
/// of either needs a new build. (Claims and HTTP sources are not hashed: they are read again on
/// `refreshInterval`.)
pub fn build_hash(kb: &KnowledgeBase, inputs: &SourceInputs) -> String {
    let mut hasher = Sha256::new();
    hasher.update(serde_json::to_vec(&kb.spec).unwrap_or_default());
    for (source, digest) in inputs {
        hasher.update([0]);
        hasher.update(source.as_bytes());
        hasher.update([0]);
        hasher.update(digest.as_bytes());
    }
    hasher
        .finalize()
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Digest of what a ConfigMap source reads: every key of `data` and `binaryData`, or only `key`.
/// `None` when `key` is in neither. Metadata (labels, resourceVersion) does not count: only a
/// content change rebuilds.
pub fn config_map_digest(config_map: &ConfigMap, key: Option<&str>) -> Option<String> {
    let text = config_map
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.as_str(), v.as_bytes()));
    let binary = config_map
        .binary_data
        .iter()
        .flatten()
        .map(|(k, v)| (k.as_str(), v.0.as_slice()));
    let mut entries: Vec<(&str, &[u8])> = text
        .chain(binary)
        .filter(|(k, _)| key.is_none_or(|wanted| wanted == *k))
        .collect();
    if key.is_some() && entries.is_empty() {
        return None;
    }
    entries.sort_unstable();
    let mut hasher = Sha256::new();
    for (k, v) in entries {
        hasher.update((k.len() as u64).to_le_bytes());
        hasher.update(k.as_bytes());
        hasher.update((v.len() as u64).to_le_bytes());
        hasher.update(v);
    }
    Some(
        hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    )
}

/// Name of build number `n` of a spec hash.
pub fn job_name(kb: &str, hash: &str, n: u64) -> String {
    // Job names become pod labels: keep them within 63 characters.
    let prefix: String = kb.chars().take(40).collect();
    format!("{prefix}-index-{hash}-{n}")
}

/// Labels of a KnowledgeBase's children.
pub fn labels(kb: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_owned(),
            "switchboard-indexer".to_owned(),
        ),
        ("app.kubernetes.io/instance".to_owned(), kb.to_owned()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            crate::names::FIELD_MANAGER.to_owned(),
        ),
        (KB_LABEL.to_owned(), kb.to_owned()),
    ])
}

/// What the builders need.
#[derive(Clone, Debug)]
pub struct KbChildren<'a> {
    /// The KnowledgeBase.
    pub kb: &'a KnowledgeBase,
    /// Name.
    pub name: &'a str,
    /// Namespace.
    pub namespace: &'a str,
    /// Indexer image.
    pub image: &'a str,
    /// Internal address blocks HTTP sources may come from (the operator's `--egress-allow`).
    pub egress_allow: Option<&'a str>,
}

impl KbChildren<'_> {
    fn meta(&self, name: String, extra: BTreeMap<String, String>) -> ObjectMeta {
        crate::child::child_meta(self.kb, name, self.namespace, labels(self.name), extra)
    }

    /// The volume holding the index generations (written by the build Job, read by the
    /// runtime pods).
    pub fn claim(&self) -> PersistentVolumeClaim {
        let storage = &self.kb.spec.storage;
        PersistentVolumeClaim {
            metadata: self.meta(index_claim_name(self.name), BTreeMap::new()),
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec![storage.access_mode.as_str().to_owned()]),
                storage_class_name: storage.storage_class_name.clone(),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([(
                        "storage".to_owned(),
                        storage.size.clone(),
                    )])),
                    ..VolumeResourceRequirements::default()
                }),
                ..PersistentVolumeClaimSpec::default()
            }),
            status: None,
        }
    }

    /// The manifest the build Job indexes.
    pub fn manifest(&self) -> Result<ConfigMap, serde_json::Error> {
        let doc = serde_json::json!({
            "apiVersion": switchboard_crds::API_VERSION,
            "kind": "KnowledgeBase",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": self.kb.spec,
        });
        Ok(ConfigMap {
            metadata: self.meta(manifest_name(self.name), BTreeMap::new()),
            data: Some(BTreeMap::from([(
                MANIFEST_FILE.to_owned(),
                serde_json::to_string_pretty(&doc)?,
            )])),
            ..ConfigMap::default()
        })
    }

    /// Build Job number `n` of the spec with hash `hash`.
    pub fn job(&self, hash: &str, n: u64) -> Job {
        let mount = |name: &str, path: String, read_only: bool| VolumeMount {
            name: name.to_owned(),
            mount_path: path,
            read_only: Some(read_only),
            ..VolumeMount::default()
        };
        let args = [
            "index",
            "--manifests",
            &format!("{MANIFEST_DIR}/{MANIFEST_FILE}"),
            "--knowledge-base",
            self.name,
            "--data",
            DATA_DIR,
            "--report-file",
            "/dev/termination-log",
            "--sources-dir",
            SOURCES_DIR,
            // Volume paths are the pod's own paths (claims mounted there, or the image's).
            "--volume-root",
            "/",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        let (source_volumes, source_mounts) = self.source_volumes();
        let mut volume_mounts = vec![
            mount("manifest", MANIFEST_DIR.to_owned(), true),
            mount("index", format!("{DATA_DIR}/{}", self.name), false),
            mount("scratch", SCRATCH_DIR.to_owned(), false),
        ];
        volume_mounts.extend(source_mounts);
        let container = Container {
            name: "indexer".to_owned(),
            image: Some(self.image.to_owned()),
            args: Some(args),
            termination_message_path: Some("/dev/termination-log".to_owned()),
            termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
            volume_mounts: Some(volume_mounts),
            env: crate::pod::egress_env(self.egress_allow).map(|e| vec![e]),
            security_context: Some(crate::pod::container_security(false)),
            ..Container::default()
        };
        let mut pod_labels = labels(self.name);
        pod_labels.insert(
            "app.kubernetes.io/component".to_owned(),
            "index-build".to_owned(),
        );
        Job {
            metadata: self.meta(
                job_name(self.name, hash, n),
                BTreeMap::from([
                    (SPEC_HASH_ANNOTATION.to_owned(), hash.to_owned()),
                    (BUILD_ANNOTATION.to_owned(), n.to_string()),
                ]),
            ),
            spec: Some(JobSpec {
                backoff_limit: Some(2),
                // A pod that can never start (a ConfigMap or claim deleted after the Job was
                // created, an unpullable image) would otherwise keep the build "Running"
                // forever; past the deadline the Job fails and the status says so.
                active_deadline_seconds: Some(BUILD_DEADLINE_SECONDS),
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(pod_labels),
                        ..ObjectMeta::default()
                    }),
                    spec: Some(PodSpec {
                        restart_policy: Some("Never".to_owned()),
                        containers: vec![container],
                        volumes: Some(
                            [
                                Volume {
                                    name: "manifest".to_owned(),
                                    config_map: Some(ConfigMapVolumeSource {
                                        name: manifest_name(self.name),
                                        ..ConfigMapVolumeSource::default()
                                    }),
                                    ..Volume::default()
                                },
                                Volume {
                                    name: "index".to_owned(),
                                    persistent_volume_claim: Some(
                                        PersistentVolumeClaimVolumeSource {
                                            claim_name: index_claim_name(self.name),
                                            read_only: Some(false),
                                        },
                                    ),
                                    ..Volume::default()
                                },
                                Volume {
                                    name: "scratch".to_owned(),
                                    empty_dir: Some(EmptyDirVolumeSource::default()),
                                    ..Volume::default()
                                },
                            ]
                            .into_iter()
                            .chain(source_volumes)
                            .collect(),
                        ),
                        security_context: Some(crate::pod::pod_security()),
                        // The index builder never calls the Kubernetes API: no token.
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

impl KbChildren<'_> {
    /// A read-only volume and mount per source the build pod must mount: each ConfigMap source
    /// at `<SOURCES_DIR>/<source name>` (only its `key` when set), each claim of a volume
    /// source at its `path`. Volume names are `source-<index>` (source names may be 63
    /// characters, too long with a prefix).
    pub fn source_volumes(&self) -> (Vec<Volume>, Vec<VolumeMount>) {
        let mut volumes = Vec::new();
        let mut mounts = Vec::new();
        for (i, source) in self.kb.spec.sources.iter().enumerate() {
            let name = format!("source-{i}");
            let (volume, path) = match source.kind() {
                Some(SourceKind::ConfigMap(cm)) => (
                    Volume {
                        name: name.clone(),
                        config_map: Some(ConfigMapVolumeSource {
                            name: cm.name.clone(),
                            items: cm.key.as_ref().map(|key| {
                                vec![KeyToPath {
                                    key: key.clone(),
                                    path: key.clone(),
                                    mode: None,
                                }]
                            }),
                            ..ConfigMapVolumeSource::default()
                        }),
                        ..Volume::default()
                    },
                    format!("{SOURCES_DIR}/{}", source.name),
                ),
                Some(SourceKind::Volume(v)) => match &v.claim_name {
                    Some(claim) => (
                        Volume {
                            name: name.clone(),
                            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                                claim_name: claim.clone(),
                                read_only: Some(true),
                            }),
                            ..Volume::default()
                        },
                        v.path.trim_end_matches('/').to_owned(),
                    ),
                    None => continue,
                },
                _ => continue,
            };
            volumes.push(volume);
            mounts.push(VolumeMount {
                name,
                mount_path: path,
                read_only: Some(true),
                ..VolumeMount::default()
            });
        }
        (volumes, mounts)
    }
}

/// The build report in the termination message of the Job's successful pod.
pub fn report_from_pods(pods: &[Pod]) -> Result<BuildReport, String> {
    let messages: Vec<&str> = pods
        .iter()
        .filter_map(|p| p.status.as_ref())
        .flat_map(|s| s.container_statuses.iter().flatten())
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref())
        .filter(|t| t.exit_code == 0)
        .filter_map(|t| t.message.as_deref())
        .collect();
    let Some(message) = messages.first() else {
        return Err("the build pod left no termination message".to_owned());
    };
    serde_json::from_str(message.trim())
        .map_err(|e| format!("the build report is not valid JSON ({e}): {message:.200}"))
}

/// The build number of a Job (0 when unreadable).
pub fn build_number(job: &Job) -> u64 {
    job.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(BUILD_ANNOTATION))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The spec hash a Job builds.
pub fn job_spec_hash(job: &Job) -> Option<&str> {
    job.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(SPEC_HASH_ANNOTATION))
        .map(String::as_str)
}

/// Whether a scheduled refresh is due: the last build finished `refreshInterval` ago.
pub fn refresh_due(kb: &KnowledgeBase, now: Timestamp) -> Option<Timestamp> {
    let interval = kb.spec.refresh_interval.as_ref()?.duration();
    let last = kb.status.as_ref()?.last_build_time.as_ref()?.0;
    last.checked_add(SignedDuration::try_from(interval).ok()?)
        .ok()
        .map(|next| if next <= now { now } else { next })
}

/// What to do about builds, given the Jobs of this KnowledgeBase (newest last).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BuildPlan {
    /// Start build number `n` of the current spec.
    Start(u64),
    /// A build is running (its name).
    Wait(String),
    /// The newest build is of the current spec and finished; nothing to do until the refresh.
    Done,
}

/// Decides on a new build: what the build reads (`hash`, see [`build_hash`]) changed since the
/// newest Job, or a refresh is due. `hash` is `None` while an input is missing: nothing starts
/// (a running build finishes).
pub fn plan_build(jobs: &[Job], hash: Option<&str>, refresh_due: bool) -> BuildPlan {
    let newest = jobs.last();
    if let Some(running) = newest.filter(|job| job_state(job.status.as_ref()) == JobState::Running)
    {
        return BuildPlan::Wait(running.metadata.name.clone().unwrap_or_default());
    }
    let Some(hash) = hash else {
        return BuildPlan::Done;
    };
    let Some(newest) = newest else {
        return BuildPlan::Start(1);
    };
    let next = build_number(newest) + 1;
    if job_spec_hash(newest) != Some(hash) || refresh_due {
        BuildPlan::Start(next)
    } else {
        BuildPlan::Done
    }
}

#[cfg(test)]
mod tests {
    use crate::pod::{JobState, job_state};
    use k8s_openapi::api::{
        batch::v1::{JobCondition, JobStatus},
        core::v1::{ContainerState, ContainerStateTerminated, ContainerStatus, PodStatus},
    };

    use super::*;

    fn kb() -> KnowledgeBase {
        let mut kb: KnowledgeBase = serde_json::from_value(serde_json::json!({
            "apiVersion": "switchboard.dev/v1alpha1", "kind": "KnowledgeBase",
            "metadata": {"name": "help", "namespace": "support", "uid": "u1", "generation": 3},
            "spec": {"sources": [{"name": "faq", "format": "Markdown", "inline": {"a.md": "# A"}}],
                     "storage": {"size": "2Gi", "storageClassName": "fast"}},
        }))
        .unwrap();
        kb.metadata.generation = Some(3);
        kb
    }

    #[test]
    fn children_name_the_shared_volume_and_the_report_path() {
        let kb = kb();
        let c = KbChildren {
            kb: &kb,
            name: "help",
            namespace: "support",
            image: "runtime:1",
            egress_allow: None,
        };
        let claim = c.claim();
        assert_eq!(claim.metadata.name.as_deref(), Some("help-index"));
        let spec = claim.spec.unwrap();
        assert_eq!(spec.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(
            spec.resources.unwrap().requests.unwrap()["storage"].0,
            "2Gi"
        );
        assert_eq!(
            spec.access_modes.as_deref(),
            Some(&["ReadWriteOnce".to_owned()][..])
        );
        let hash = build_hash(&kb, &SourceInputs::new());
        let job = c.job(&hash, 4);
        assert_eq!(job.metadata.name, Some(format!("help-index-{hash}-4")));
        assert_eq!(build_number(&job), 4);
        assert_eq!(job_spec_hash(&job), Some(hash.as_str()));
        let owner = &job.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("KnowledgeBase", Some(true))
        );
        let job_spec = job.spec.unwrap();
        // A pod that never starts fails the build at the deadline instead of hanging it.
        assert_eq!(job_spec.active_deadline_seconds, Some(6 * 3600));
        let pod = job_spec.template.spec.unwrap();
        assert_eq!(pod.automount_service_account_token, Some(false));
        let args = pod.containers[0].args.clone().unwrap();
        assert_eq!(
            args,
            [
                "index",
                "--manifests",
                "/etc/switchboard/kb/knowledgebase.json",
                "--knowledge-base",
                "help",
                "--data",
                "/var/lib/switchboard/index",
                "--report-file",
                "/dev/termination-log",
                "--sources-dir",
                "/etc/switchboard/sources",
                "--volume-root",
                "/",
            ]
        );
        let mounts = pod.containers[0].volume_mounts.clone().unwrap();
        assert_eq!(mounts[1].mount_path, "/var/lib/switchboard/index/help");
        // Inline sources need no volume: manifest, index and scratch only.
        assert_eq!(mounts.len(), 3);
        assert_eq!(pod.volumes.as_ref().unwrap().len(), 3);
        let manifest = c.manifest().unwrap();
        let doc: serde_json::Value =
            serde_json::from_str(&manifest.data.unwrap()[MANIFEST_FILE]).unwrap();
        assert_eq!(doc["kind"], "KnowledgeBase");
        assert_eq!(doc["spec"]["sources"][0]["name"], "faq");
        // A changed spec changes the hash.
        let mut other = kb.clone();
        other.spec.keep_generations = 5;
        assert_ne!(build_hash(&other, &SourceInputs::new()), hash);
    }

    #[test]
    fn config_map_and_claim_sources_are_mounted_read_only_where_the_indexer_reads_them() {
        let mut kb: KnowledgeBase = serde_json::from_value(serde_json::json!({
            "apiVersion": "switchboard.dev/v1alpha1", "kind": "KnowledgeBase",
            "metadata": {"name": "help", "namespace": "support", "uid": "u1", "generation": 1},
            "spec": {
                "sources": [
                    {"name": "policies", "format": "Markdown", "configMap": {"name": "policy-docs"}},
                    {"name": "refunds", "format": "Markdown",
                     "configMap": {"name": "policy-docs", "key": "refunds.md"}},
                    {"name": "image", "format": "Html", "volume": {"path": "/data/help"}},
                    {"name": "tickets", "format": "ZendeskTickets",
                     "volume": {"path": "/data/tickets/", "claimName": "zendesk-exports"}},
                    {"name": "notes", "format": "PlainText", "inline": {"a.txt": "A"}},
                ],
                "storage": {"accessMode": "ReadWriteMany"},
            },
        }))
        .unwrap();
        kb.metadata.generation = Some(1);
        let c = KbChildren {
            kb: &kb,
            name: "help",
            namespace: "support",
            image: "runtime:1",
            egress_allow: None,
        };
        assert_eq!(
            c.claim().spec.unwrap().access_modes,
            Some(vec!["ReadWriteMany".to_owned()])
        );
        let pod = c.job("abc", 1).spec.unwrap().template.spec.unwrap();
        let volumes = pod.volumes.unwrap();
        let mounts = pod.containers[0].volume_mounts.clone().unwrap();
        let mounted = |path: &str| {
            let m = mounts
                .iter()
                .find(|m| m.mount_path == path)
                .unwrap_or_else(|| panic!("nothing mounted at {path}: {mounts:?}"));
            assert_eq!(m.read_only, Some(true), "{path} is read-only");
            volumes.iter().find(|v| v.name == m.name).unwrap().clone()
        };
        // The whole ConfigMap: every key is a file.
        let all = mounted("/etc/switchboard/sources/policies")
            .config_map
            .unwrap();
        assert_eq!((all.name.as_str(), all.items), ("policy-docs", None));
        // One key: only that file.
        let one = mounted("/etc/switchboard/sources/refunds")
            .config_map
            .unwrap();
        let items = one.items.unwrap();
        assert_eq!(
            (items[0].key.as_str(), items[0].path.as_str()),
            ("refunds.md", "refunds.md")
        );
        // The claim at its path, read-only; an image path needs no volume.
        let claim = mounted("/data/tickets").persistent_volume_claim.unwrap();
        assert_eq!(
            (claim.claim_name.as_str(), claim.read_only),
            ("zendesk-exports", Some(true))
        );
        assert!(mounts.iter().all(|m| m.mount_path != "/data/help"));
        // manifest, index, scratch + 3 sources; volume names are valid and unique.
        assert_eq!(volumes.len(), 6);
        let names: std::collections::BTreeSet<_> = volumes.iter().map(|v| &v.name).collect();
        assert_eq!(names.len(), 6);
        assert!(names.iter().all(|n| n.len() <= 63));
    }

    #[test]
    fn the_build_hash_follows_the_content_of_referenced_config_maps_only() {
        let cm = |data: &[(&str, &str)], labels: &[(&str, &str)]| ConfigMap {
            metadata: ObjectMeta {
                name: Some("policy-docs".to_owned()),
                resource_version: Some(labels.len().to_string()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..ConfigMap::default()
        };
        let v1 = cm(&[("a.md", "# A"), ("b.md", "# B")], &[]);
        let relabelled = cm(&[("a.md", "# A"), ("b.md", "# B")], &[("team", "x")]);
        let edited = cm(&[("a.md", "# A"), ("b.md", "# B2")], &[]);
        let all = |c: &ConfigMap| config_map_digest(c, None).unwrap();
        assert_eq!(all(&v1), all(&relabelled), "metadata does not rebuild");
        assert_ne!(all(&v1), all(&edited));
        // A source reading one key ignores edits of the others.
        let a = |c: &ConfigMap| config_map_digest(c, Some("a.md")).unwrap();
        assert_eq!(a(&v1), a(&edited));
        assert_eq!(config_map_digest(&v1, Some("missing.md")), None);
        // Binary keys count too.
        let mut binary = v1.clone();
        binary.binary_data = Some(BTreeMap::from([(
            "guide.pdf".to_owned(),
            k8s_openapi::ByteString(b"%PDF-1.4".to_vec()),
        )]));
        assert_ne!(all(&binary), all(&v1));
        // Key/value boundaries are unambiguous.
        assert_ne!(all(&cm(&[("ab", "c")], &[])), all(&cm(&[("a", "bc")], &[])));
        // The build hash covers them.
        let kb = kb();
        let inputs = |d: String| SourceInputs::from([("faq".to_owned(), d)]);
        assert_ne!(
            build_hash(&kb, &inputs(all(&v1))),
            build_hash(&kb, &inputs(all(&edited)))
        );
        assert_eq!(
            build_hash(&kb, &inputs(all(&v1))),
            build_hash(&kb, &inputs(all(&relabelled)))
        );
    }

    #[test]
    fn job_state_and_report() {
        assert_eq!(job_state(None), JobState::Running);
        let done = JobStatus {
            conditions: Some(vec![JobCondition {
                type_: "Complete".to_owned(),
                status: "True".to_owned(),
                ..JobCondition::default()
            }]),
            ..JobStatus::default()
        };
        assert_eq!(job_state(Some(&done)), JobState::Succeeded);
        let failed = JobStatus {
            conditions: Some(vec![JobCondition {
                type_: "Failed".to_owned(),
                status: "True".to_owned(),
                reason: Some("BackoffLimitExceeded".to_owned()),
                ..JobCondition::default()
            }]),
            ..JobStatus::default()
        };
        assert_eq!(
            job_state(Some(&failed)),
            JobState::Failed("BackoffLimitExceeded".to_owned())
        );
        let pod = |code: i32, message: &str| Pod {
            status: Some(PodStatus {
                container_statuses: Some(vec![ContainerStatus {
                    state: Some(ContainerState {
                        terminated: Some(ContainerStateTerminated {
                            exit_code: code,
                            message: Some(message.to_owned()),
                            ..ContainerStateTerminated::default()
                        }),
                        ..ContainerState::default()
                    }),
                    ..ContainerStatus::default()
                }]),
                ..PodStatus::default()
            }),
            ..Pod::default()
        };
        let report = report_from_pods(&[
            pod(1, "panic"),
            pod(
                0,
                r#"{"generation":7,"documents":12,"chunks":80,"staleDocuments":1,
                    "sourceErrors":[{"source":"wiki","reason":"FetchFailed","message":"404"}],
                    "contradictions":{"count":2,"top":[{"kind":"duration",
                        "a":{"document":"wiki/Refund-Policy.html","value":"30 days"},
                        "b":{"document":"policies/refund-policy.md","value":"14 days"}}]}}"#,
            ),
        ])
        .unwrap();
        assert_eq!(
            (report.generation, report.documents, report.chunks),
            (7, 12, 80)
        );
        assert_eq!(report.source_errors[0].source, "wiki");
        let c = report.contradictions.unwrap();
        assert_eq!(c.count, 2);
        let candidate = c.top[0].candidate();
        assert_eq!(
            (candidate.document.as_str(), candidate.other_value.as_str()),
            ("wiki/Refund-Policy.html", "14 days")
        );
        // A report of an older runtime has no contradictions.
        let old =
            report_from_pods(&[pod(0, r#"{"generation":1,"documents":1,"chunks":1}"#)]).unwrap();
        assert_eq!(old.contradictions, None);
        assert!(report_from_pods(&[pod(0, "not json")]).is_err());
        assert!(report_from_pods(&[]).is_err());
    }
}
