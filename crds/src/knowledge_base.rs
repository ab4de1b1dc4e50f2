//! `KnowledgeBase`: where knowledge comes from and how it is retrieved.

use std::collections::BTreeMap;

#[cfg(feature = "kube")]
use k8s_openapi::apimachinery::pkg::{
    api::resource::Quantity,
    apis::meta::v1::{Condition, Time},
};
#[cfg(feature = "kube")]
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[cfg(feature = "kube")]
use crate::common::{Validate, ValidationErrors};
use crate::{
    common::{Errors, LABEL_PATTERN, NAME_PATTERN},
    units::{GoDuration, Percent},
};

/// Messages of the KnowledgeBase admission rules (shared by the CEL rules and [`Validate`]).
pub mod messages {
    /// `spec.sources[*]`: exactly one source kind.
    pub const ONE_SOURCE_KIND: &str =
        "sources[]: set exactly one of inline, configMap, volume or http";
    /// `spec.sources[*].freshnessClass`: declared or built-in.
    pub const UNKNOWN_FRESHNESS_CLASS: &str = "sources[].freshnessClass must name a class in freshnessClasses or a built-in class (policy, standard, evergreen, ephemeral)";
    /// `spec.chunking.overlapTokens`.
    pub const OVERLAP_BELOW_MAX: &str =
        "chunking.overlapTokens must be smaller than chunking.maxTokens";
    /// `spec.retrieval`.
    pub const ONE_RETRIEVER: &str =
        "retrieval: at least one of bm25.enabled or dense.enabled must be true";
    /// `spec.retrieval.rerank.model`.
    pub const RERANK_MODEL: &str =
        "retrieval.rerank.model is required when retrieval.rerank.enabled is true";
    /// `spec.retrieval.fusion.denseWeight`.
    pub const DENSE_WEIGHT: &str =
        "retrieval.fusion.denseWeight is only used (and then required) with method Weighted";
    /// `spec.retrieval.rerank.weight`.
    pub const RERANK_WEIGHT: &str = "retrieval.rerank.weight must be between 0 and 1";
    /// `spec.sources[*].volume.path`.
    pub const ABSOLUTE_PATH: &str = "sources[].volume.path must be an absolute path";
    /// `spec.sources[].volume.path`.
    pub const NORMALIZED_PATH: &str =
        "sources[].volume.path must be normalised: no . or .. segments and no //";
    /// `spec.sources[*].http.url`.
    pub const HTTP_URL: &str = "sources[].http.url must be an http:// or https:// URL";
    /// `spec.refreshInterval`.
    pub const REFRESH_MIN: &str = "refreshInterval must be at least 1m";
    /// `spec.sources[*].volume.path` of a source with `claimName`.
    pub const RESERVED_PATH: &str = "sources[].volume.path of a claim must not be /, /tmp, /dev, /proc, /sys or under /etc/switchboard or /var/lib/switchboard (the index builder's own mounts)";
    /// `spec.sources[*].volume.path` of sources without `claimName`.
    pub const SYSTEM_PATH: &str = "sources[].volume.path without claimName names a folder of the index builder's image: it must not be / or under /proc, /sys, /dev, /etc, /run, /var/run, /root, /tmp or /var/lib/switchboard (the system's and the builder's own files, not documents)";
    /// `spec.sources[*].volume.path` of sources with `claimName`.
    pub const DUPLICATE_MOUNT: &str =
        "sources[].volume.path must differ between sources that mount a claim";
    /// `spec.coverage.window`.
    pub const COVERAGE_WINDOW_MIN: &str = "coverage.window must be at least 1h";
    /// `spec.storage.accessMode`.
    pub const ACCESS_MODE_IMMUTABLE: &str = "storage.accessMode cannot change: the access modes of the index claim are immutable (create a new KnowledgeBase)";
}

/// Mount points of the index build pod that a claim-backed volume source must not take (exact
/// paths and everything below them).
pub const RESERVED_MOUNT_PATHS: [&str; 6] = [
    "/etc/switchboard",
    "/var/lib/switchboard",
    "/tmp",
    "/dev",
    "/proc",
    "/sys",
];

/// Folders of the index builder's image a volume source without a claim must not read (exact
/// paths and everything below them): the kernel's views of the process (its environment, its
/// memory), configuration and credentials, runtime state and the builder's own files.
pub const SYSTEM_PATHS: [&str; 9] = [
    "/proc",
    "/sys",
    "/dev",
    "/etc",
    "/run",
    "/var/run",
    "/root",
    "/tmp",
    "/var/lib/switchboard",
];

/// Freshness classes every KnowledgeBase has, with their half-lives (None: no decay) and
/// review-after ages. Declaring a class of the same name in `spec.freshnessClasses` overrides it.
///
/// From the design notes: policy documents decay with a 90-day half-life and are flagged for review
/// after 12 months untouched; `standard` help content decays over a year and is reviewed after 18
/// months; evergreen content (install guides, API docs) does not decay; chat exports age fast.
pub const BUILTIN_FRESHNESS_CLASSES: [(&str, Option<&str>, Option<&str>); 4] = [
    ("policy", Some("2160h"), Some("8760h")),
    ("standard", Some("8760h"), Some("13140h")),
    ("evergreen", None, None),
    ("ephemeral", Some("720h"), Some("2160h")),
];

/// A KnowledgeBase: document sources, how they are chunked and embedded, and how passages are
/// retrieved. The operator builds immutable index generations from it with a Job; Routers that
/// reference it switch to a new generation atomically once it is built.
// `printcolumn(...)` entries repeat `type_ = ...`, which clippy mistakes for duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[cfg(feature = "kube")]
#[cfg_attr(feature = "kube", derive(CustomResource, KubeSchema))]
#[cfg_attr(not(feature = "kube"), derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "kube",
    kube(
        group = "switchboard.dev",
        version = "v1alpha1",
        kind = "KnowledgeBase",
        plural = "knowledgebases",
        singular = "knowledgebase",
        shortname = "kb",
        category = "switchboard",
        namespaced,
        status = "KnowledgeBaseStatus",
        derive = "PartialEq",
        doc = "A KnowledgeBase: document sources, chunking, embeddings and hybrid retrieval settings. The operator builds immutable index generations from it.",
        printcolumn(
            name = "Ready",
            type_ = "string",
            json_path = ".status.conditions[?(@.type==\"Ready\")].status"
        ),
        printcolumn(
            name = "Generation",
            type_ = "integer",
            json_path = ".status.indexGeneration",
            description = "Index generation being served"
        ),
        printcolumn(name = "Documents", type_ = "integer", json_path = ".status.documents"),
        printcolumn(name = "Chunks", type_ = "integer", json_path = ".status.chunks"),
        printcolumn(
            name = "Stale",
            type_ = "integer",
            json_path = ".status.staleDocuments",
            description = "Documents past their review age that are still retrieved"
        ),
        printcolumn(
            name = "Gaps",
            type_ = "integer",
            json_path = ".status.coverageGaps",
            description = "Topics the knowledge base does not answer (escalated, nothing found, refused)"
        ),
        printcolumn(
            name = "Age",
            type_ = "date",
            json_path = ".metadata.creationTimestamp"
        )
    )
)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "kube", x_kube(validation = Rule::new("self.sources.all(s, !has(s.freshnessClass) || s.freshnessClass in ['policy', 'standard', 'evergreen', 'ephemeral'] || (has(self.freshnessClasses) && self.freshnessClasses.exists(c, c.name == s.freshnessClass)))").message(messages::UNKNOWN_FRESHNESS_CLASS).field_path(".sources")))]
pub struct KnowledgeBaseSpec {
    /// Where documents come from. Each source has a unique name and exactly one kind
    /// (inline, configMap, volume, http).
    #[schemars(length(min = 1, max = 64))]
    #[cfg_attr(feature = "kube", x_kube(merge_strategy = ListMerge::Map(vec!["name".into()])))]
    pub sources: Vec<Source>,

    /// Freshness classes in addition to (or overriding) the built-in `policy` (90-day half-life,
    /// stale after 12 months), `standard` (365-day half-life, stale after 18 months), `evergreen`
    /// (no decay) and `ephemeral` (30-day half-life, stale after 90 days).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[cfg_attr(feature = "kube", x_kube(merge_strategy = ListMerge::Map(vec!["name".into()])))]
    pub freshness_classes: Vec<FreshnessClass>,

    /// How documents are split into retrievable chunks.
    #[serde(default)]
    pub chunking: Chunking,

    /// The embedding model for dense retrieval.
    #[serde(default)]
    pub embedding: Embedding,

    /// How passages are retrieved: BM25, dense, fusion, rerank, recency decay.
    #[serde(default)]
    pub retrieval: Retrieval,

    /// Stale-document detection: documents older than their class's `staleAfter` that still
    /// answer at least this share of queries are counted in `status.staleDocuments`.
    #[serde(default)]
    pub staleness: Staleness,

    /// Coverage-gap detection: topics whose questions the runtimes of the Routers using this
    /// KnowledgeBase escalated, found no passage for, or refused (clustered by meaning from
    /// their outcome stores) are listed in `status.topCoverageGaps` (condition `ContentCovers`).
    #[serde(default)]
    pub coverage: Coverage,

    /// Re-ingest all sources on this interval (e.g. `24h`). Unset: rebuild only when the spec
    /// or a referenced ConfigMap changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "kube", x_kube(validation = Rule::new(crate::units::duration_at_least_rule("self", "1m")).message(messages::REFRESH_MIN)))]
    pub refresh_interval: Option<GoDuration>,

    /// How many built index generations to keep, so serving can switch back.
    #[serde(default = "default_keep_generations")]
    #[schemars(range(min = 1, max = 20))]
    pub keep_generations: i32,

    /// Storage for index generations.
    #[serde(default)]
    pub storage: Storage,
}

#[cfg(feature = "kube")]
fn default_keep_generations() -> i32 {
    3
}

/// One document source.
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[cfg_attr(not(feature = "kube"), derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "kube", x_kube(validation = Rule::new("(has(self.inline) ? 1 : 0) + (has(self.configMap) ? 1 : 0) + (has(self.volume) ? 1 : 0) + (has(self.http) ? 1 : 0) == 1").message(messages::ONE_SOURCE_KIND)))]
pub struct Source {
    /// Unique name of the source within the KnowledgeBase (a DNS label); appears in citations
    /// and in `status.sourceErrors`.
    #[schemars(length(min = 1, max = 63), pattern(LABEL_PATTERN))]
    pub name: String,

    /// Document format of this source.
    pub format: SourceFormat,

    /// Freshness class of the documents (sets recency decay and review age). Default `evergreen`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), pattern(LABEL_PATTERN))]
    pub freshness_class: Option<String>,

    /// Documents written in the manifest: file name -> content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub inline: Option<BTreeMap<String, String>>,

    /// Documents in a ConfigMap of the same namespace (one document per key, or one key). The
    /// index builder mounts it read-only; a change of its content starts a new build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapSource>,

    /// Documents under a path of a volume in the index builder: a PersistentVolumeClaim
    /// (`claimName`) mounted read-only at `path`, or a path the builder image already holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<VolumeSource>,

    /// A document (or archive of documents) fetched over HTTP(S).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSource>,

    /// Slack exports only: a thread is indexed only when one of its messages carries a reaction
    /// of one of these names (e.g. `white_check_mark`) or starts with one of them in brackets
    /// (`[resolved] ...`). Default: `white_check_mark`, `heavy_check_mark`,
    /// `ballot_box_with_check`, `resolved`, `answer`, `answered`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16), inner(length(min = 1, max = 63)))]
    pub resolved_tags: Option<Vec<String>>,
}

impl Source {
    /// The one kind of this source, if exactly one is set.
    pub fn kind(&self) -> Option<SourceKind<'_>> {
        match (&self.inline, &self.config_map, &self.volume, &self.http) {
            (Some(files), None, None, None) => Some(SourceKind::Inline(files)),
            (None, Some(cm), None, None) => Some(SourceKind::ConfigMap(cm)),
            (None, None, Some(v), None) => Some(SourceKind::Volume(v)),
            (None, None, None, Some(h)) => Some(SourceKind::Http(h)),
            _ => None,
        }
    }

    /// The freshness class name, with the default applied.
    pub fn freshness_class(&self) -> &str {
        self.freshness_class.as_deref().unwrap_or("evergreen")
    }
}

/// Where a source's documents are, once validated.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SourceKind<'a> {
    /// Inline files.
    Inline(&'a BTreeMap<String, String>),
    /// A ConfigMap.
    ConfigMap(&'a ConfigMapSource),
    /// A mounted volume path.
    Volume(&'a VolumeSource),
    /// An HTTP(S) URL.
    Http(&'a HttpSource),
}

/// Document formats the ingester understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SourceFormat {
    /// Markdown; headings become breadcrumbs.
    Markdown,
    /// HTML; the heading hierarchy becomes breadcrumbs.
    Html,
    /// Confluence-style HTML export; the page hierarchy is prepended as a breadcrumb.
    ConfluenceHtml,
    /// Zendesk-style ticket JSON; the resolution note is indexed with the problem as context.
    ZendeskTickets,
    /// Slack export; only threads tagged with a resolved tag are indexed.
    SlackExport,
    /// PDF (text layer); tables are kept as rows.
    Pdf,
    /// Plain text.
    PlainText,
}

/// Documents in a ConfigMap. Keys are file names: with no `key`, the keys with an extension of
/// the source's format (e.g. `.md` for Markdown) are the documents; `binaryData` keys are read
/// too (PDF).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ConfigMapSource {
    /// Name of the ConfigMap in the same namespace. A missing ConfigMap (or key) holds the build
    /// (condition `Degraded`, reason `ReferenceNotFound`); the served generation stays.
    #[schemars(length(min = 1, max = 253), pattern(NAME_PATTERN))]
    pub name: String,
    /// Only this key; unset: every key is a document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), pattern(r"^[-._a-zA-Z0-9]+$"))]
    pub key: Option<String>,
}

/// Documents on a volume path.
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[cfg_attr(not(feature = "kube"), derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "kube", x_kube(validation = Rule::new("!has(self.claimName) || !(self.path == '/' || ['/etc/switchboard', '/var/lib/switchboard', '/tmp', '/dev', '/proc', '/sys'].exists(p, self.path == p || self.path.startsWith(p + '/')))").message(messages::RESERVED_PATH).field_path(".path")))]
#[cfg_attr(feature = "kube", x_kube(validation = Rule::new("has(self.claimName) || !(self.path == '/' || ['/proc', '/sys', '/dev', '/etc', '/run', '/var/run', '/root', '/tmp', '/var/lib/switchboard'].exists(p, self.path == p || self.path.startsWith(p + '/')))").message(messages::SYSTEM_PATH).field_path(".path")))]
pub struct VolumeSource {
    /// Absolute path of a file or directory (directories are read recursively). With
    /// `claimName`, where the claim is mounted in the index builder (its root is read); without,
    /// a path the index builder image holds.
    #[schemars(length(min = 1, max = 4096))]
    #[cfg_attr(feature = "kube", x_kube(validation = Rule::new("self.startsWith('/')").message(messages::ABSOLUTE_PATH)))]
    #[cfg_attr(feature = "kube", x_kube(validation = Rule::new("!self.matches('(^|/)[.][.]?(/|$)') && !self.contains('//')").message(messages::NORMALIZED_PATH)))]
    pub path: String,
    /// A PersistentVolumeClaim in the KnowledgeBase's namespace, mounted read-only at `path` in
    /// the index build pod. Its content is not hashed: edits reach the index on the next
    /// `refreshInterval` or spec change. A ReadWriteOnce claim in use on another node keeps the
    /// build pod pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), pattern(NAME_PATTERN))]
    pub claim_name: Option<String>,
}

impl VolumeSource {
    /// Whether `path` has no `.` or `..` segment and no empty one (`//`): what it names is what
    /// it says, with nothing to climb out of a mount.
    pub fn path_is_normalized(&self) -> bool {
        !self.path.contains("//") && !self.path.split('/').any(|s| s == "." || s == "..")
    }

    /// Whether `path` is one of the index builder's own mount points ([`RESERVED_MOUNT_PATHS`])
    /// or below one, or `/`.
    pub fn path_is_reserved(&self) -> bool {
        self.path_is_under(&RESERVED_MOUNT_PATHS)
    }

    /// Whether `path` is `/` or one of [`SYSTEM_PATHS`] or below one: not a folder of documents
    /// in the index builder's image.
    pub fn path_is_system(&self) -> bool {
        self.path_is_under(&SYSTEM_PATHS)
    }

    fn path_is_under(&self, roots: &[&str]) -> bool {
        self.path == "/"
            || roots.iter().any(|p| {
                self.path == *p
                    || self
                        .path
                        .strip_prefix(p)
                        .is_some_and(|rest| rest.starts_with('/'))
            })
    }
}

/// A document fetched over HTTP(S).
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[cfg_attr(not(feature = "kube"), derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpSource {
    /// The URL.
    #[schemars(length(min = 1, max = 2048))]
    #[cfg_attr(feature = "kube", x_kube(validation = Rule::new("self.matches('^https?://[^\\\\s/]+')").message(messages::HTTP_URL)))]
    pub url: String,
    /// Expected digest (`sha256:<64 hex>`); a mismatch fails the source instead of indexing it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<crate::Digest>,
}

/// A freshness class: how fast documents of this class lose retrieval weight and when they are due
/// for review.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FreshnessClass {
    /// Class name, referenced by `sources[].freshnessClass`.
    #[schemars(length(min = 1, max = 63), pattern(LABEL_PATTERN))]
    pub name: String,
    /// Recency-decay half-life (e.g. `2160h` for 90 days). Unset: no decay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub half_life: Option<GoDuration>,
    /// Documents not modified for this long are stale (e.g. `8760h`). Unset: never stale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_after: Option<GoDuration>,
}

/// Chunking strategy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ChunkingStrategy {
    /// Fixed-size windows with overlap.
    Fixed,
    /// Heading-aware: retrieve paragraphs, expand to their section for generation.
    #[default]
    Hierarchical,
}

/// How documents are split into chunks.
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[cfg_attr(not(feature = "kube"), derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "kube", x_kube(validation = Rule::new("self.overlapTokens < self.maxTokens").message(messages::OVERLAP_BELOW_MAX).field_path(".overlapTokens")))]
pub struct Chunking {
    /// `Fixed` or `Hierarchical` (default).
    #[serde(default)]
    pub strategy: ChunkingStrategy,
    /// Largest chunk, in tokens of the embedding model, breadcrumb included. Keep it under the
    /// encoder's window (256 for all-MiniLM-L6-v2): longer chunks are truncated when embedded.
    #[serde(default = "default_max_tokens")]
    #[schemars(range(min = 32, max = 4096))]
    pub max_tokens: i32,
    /// Tokens shared by consecutive chunks (fixed strategy, and long paragraphs).
    #[serde(default = "default_overlap_tokens")]
    #[schemars(range(min = 0, max = 2048))]
    pub overlap_tokens: i32,
}

fn default_max_tokens() -> i32 {
    200
}
fn default_overlap_tokens() -> i32 {
    32
}

impl Default for Chunking {
    fn default() -> Self {
        Self {
            strategy: ChunkingStrategy::default(),
            max_tokens: default_max_tokens(),
            overlap_tokens: default_overlap_tokens(),
        }
    }
}

/// The embedding model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Embedding {
    /// Path or URI of a Hugging Face BERT-family sentence encoder directory (`config.json`,
    /// `tokenizer.json`, `model.safetensors`), as seen by the runtime.
    #[serde(default = "default_embedding_model")]
    #[schemars(length(min = 1, max = 2048))]
    pub model: String,
}

fn default_embedding_model() -> String {
    "/models/all-MiniLM-L6-v2".to_owned()
}

impl Default for Embedding {
    fn default() -> Self {
        Self {
            model: default_embedding_model(),
        }
    }
}

/// Retrieval settings.
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[cfg_attr(not(feature = "kube"), derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "kube", x_kube(validation = Rule::new("self.bm25.enabled || self.dense.enabled").message(messages::ONE_RETRIEVER)))]
pub struct Retrieval {
    /// Passages returned to generation.
    #[serde(default = "default_top_k")]
    #[schemars(range(min = 1, max = 100))]
    pub top_k: i32,
    /// Passages scoring below this (after fusion and rerank, 0..1) are dropped; a query with
    /// none left is a retrieval failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub min_score: Option<f64>,
    /// Lexical retrieval.
    #[serde(default)]
    pub bm25: Bm25,
    /// Dense (embedding) retrieval.
    #[serde(default)]
    pub dense: Dense,
    /// How BM25 and dense rankings are combined.
    #[serde(default)]
    pub fusion: Fusion,
    /// Cross-encoder rerank of the fused top N.
    #[serde(default)]
    pub rerank: Rerank,
    /// Multiply scores by the recency decay of each document's freshness class.
    #[serde(default)]
    pub recency_decay: RecencyDecay,
}

fn default_top_k() -> i32 {
    8
}

impl Retrieval {
    /// The cross-field rules of retrieval settings, reported under `at` (`spec.retrieval` in a
    /// KnowledgeBase, `knowledgeBase.retrieval` in a RuntimeConfig).
    pub(crate) fn check(&self, errors: &mut Errors, at: &str) {
        errors.check(
            self.bm25.enabled || self.dense.enabled,
            at,
            messages::ONE_RETRIEVER,
        );
        errors.check(
            !self.rerank.enabled || self.rerank.model.is_some(),
            format!("{at}.rerank.model"),
            messages::RERANK_MODEL,
        );
        errors.check(
            (self.fusion.method == FusionMethod::Weighted) == self.fusion.dense_weight.is_some(),
            format!("{at}.fusion.denseWeight"),
            messages::DENSE_WEIGHT,
        );
        errors.check(
            (0.0..=1.0).contains(&self.rerank.weight),
            format!("{at}.rerank.weight"),
            messages::RERANK_WEIGHT,
        );
    }
}

impl Default for Retrieval {
    fn default() -> Self {
        Self {
            top_k: default_top_k(),
            min_score: None,
            bm25: Bm25::default(),
            dense: Dense::default(),
            fusion: Fusion::default(),
            rerank: Rerank::default(),
            recency_decay: RecencyDecay::default(),
        }
    }
}

fn yes() -> bool {
    true
}

/// BM25 settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Bm25 {
    /// Use BM25.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Boost per document field.
    #[serde(default)]
    pub field_weights: FieldWeights,
}

impl Default for Bm25 {
    fn default() -> Self {
        Self {
            enabled: true,
            field_weights: FieldWeights::default(),
        }
    }
}

/// BM25 boost per field: a match in a title counts more than one in passing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FieldWeights {
    /// Document title.
    #[serde(default = "default_title_weight")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub title: f64,
    /// Headings and breadcrumbs.
    #[serde(default = "default_headings_weight")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub headings: f64,
    /// Body text.
    #[serde(default = "default_body_weight")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub body: f64,
    /// Tags and metadata.
    #[serde(default = "default_tags_weight")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub tags: f64,
}

fn default_title_weight() -> f64 {
    3.0
}
fn default_headings_weight() -> f64 {
    2.0
}
fn default_body_weight() -> f64 {
    1.0
}
fn default_tags_weight() -> f64 {
    0.5
}

impl Default for FieldWeights {
    fn default() -> Self {
        Self {
            title: default_title_weight(),
            headings: default_headings_weight(),
            body: default_body_weight(),
            tags: default_tags_weight(),
        }
    }
}

/// Dense retrieval settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Dense {
    /// Use dense retrieval.
    #[serde(default = "yes")]
    pub enabled: bool,
}

impl Default for Dense {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// Fusion method.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum FusionMethod {
    /// Reciprocal rank fusion: `sum 1 / (rrfK + rank)`.
    #[default]
    ReciprocalRank,
    /// Weighted sum of normalised scores: `denseWeight * dense + (1 - denseWeight) * bm25`.
    Weighted,
}

/// How rankings are fused.
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[cfg_attr(not(feature = "kube"), derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "kube", x_kube(validation = Rule::new("(self.method == 'Weighted') == has(self.denseWeight)").message(messages::DENSE_WEIGHT).field_path(".denseWeight")))]
pub struct Fusion {
    /// `ReciprocalRank` (default) or `Weighted`.
    #[serde(default)]
    pub method: FusionMethod,
    /// The `k` of reciprocal rank fusion.
    #[serde(default = "default_rrf_k")]
    #[schemars(range(min = 1, max = 1000))]
    pub rrf_k: i32,
    /// Weight of the dense score in `Weighted` fusion (0..1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub dense_weight: Option<f64>,
}

fn default_rrf_k() -> i32 {
    60
}

impl Default for Fusion {
    fn default() -> Self {
        Self {
            method: FusionMethod::default(),
            rrf_k: default_rrf_k(),
            dense_weight: None,
        }
    }
}

/// Cross-encoder rerank.
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[cfg_attr(not(feature = "kube"), derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "kube", x_kube(validation = Rule::new("!self.enabled || has(self.model)").message(messages::RERANK_MODEL).field_path(".model")))]
pub struct Rerank {
    /// Rerank the fused top N with a cross-encoder.
    #[serde(default)]
    pub enabled: bool,
    /// A `BertForSequenceClassification` checkpoint directory (`config.json`, `tokenizer.json`,
    /// `model.safetensors`) as the runtime sees it: a path (found by its name under the
    /// runtime's model folder when the path does not exist there) or `pvc://<claim>/<path>` (a
    /// claim of this namespace, mounted read-only into the Router's runtime pods). Loaded when a
    /// RuntimeConfig enabling rerank is applied; one that cannot be loaded keeps the runtime on
    /// its previous config, with the model named in the error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub model: Option<String>,
    /// How many fused candidates to rerank.
    #[serde(default = "default_rerank_top_n")]
    #[schemars(range(min = 1, max = 200))]
    pub top_n: i32,
    /// Latency budget: past it the fused order is served and the timeout is counted.
    #[serde(default = "default_rerank_deadline")]
    pub deadline: GoDuration,
    /// Share of the reranked head's order taken by the cross-encoder (0..1). 1 (default) orders
    /// the head by the cross-encoder alone; below 1 its probability is blended with the fused
    /// retrieval score (min-max normalised over the head), so a small in-domain reranker adds its
    /// judgement without discarding what BM25 + dense got right. Pick it on held-out queries
    /// with `switchboard-runtime eval --reranker DIR --rerank-weight 1,0.7,0.5`.
    #[serde(default = "default_rerank_weight")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub weight: f64,
}

fn default_rerank_top_n() -> i32 {
    20
}
fn default_rerank_deadline() -> GoDuration {
    GoDuration::from_millis(300)
}
fn default_rerank_weight() -> f64 {
    1.0
}

impl Default for Rerank {
    fn default() -> Self {
        Self {
            enabled: false,
            model: None,
            top_n: default_rerank_top_n(),
            deadline: default_rerank_deadline(),
            weight: default_rerank_weight(),
        }
    }
}

/// Recency decay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RecencyDecay {
    /// Apply the freshness-class half-lives to retrieval scores.
    #[serde(default = "yes")]
    pub enabled: bool,
}

impl Default for RecencyDecay {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// Stale-document detection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Staleness {
    /// A stale document counts when it answers at least this share of queries.
    #[serde(default = "default_min_query_share")]
    pub min_query_share: Percent,
    /// Query window over which the share is measured.
    #[serde(default = "default_staleness_window")]
    pub window: GoDuration,
}

fn default_min_query_share() -> Percent {
    Percent::from_fraction(0.005)
}
fn default_staleness_window() -> GoDuration {
    GoDuration::from_secs(90 * 24 * 3600)
}

impl Default for Staleness {
    fn default() -> Self {
        Self {
            min_query_share: default_min_query_share(),
            window: default_staleness_window(),
        }
    }
}

/// Coverage-gap detection (`ContentCovers`).
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[cfg_attr(not(feature = "kube"), derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Coverage {
    /// Query window over which gaps are measured (at least `1h`).
    #[serde(default = "default_coverage_window")]
    #[cfg_attr(feature = "kube", x_kube(validation = Rule::new(crate::units::duration_at_least_rule("self", "1h")).message(messages::COVERAGE_WINDOW_MIN)))]
    pub window: GoDuration,
    /// A topic is a gap when at least this many of its queries were escalated, found no passage
    /// or were refused over the window ...
    #[serde(default = "default_coverage_min_queries")]
    #[schemars(range(min = 1, max = 100_000))]
    pub min_queries: i32,
    /// ... and they are at least this share of all the Router's queries over the window.
    #[serde(default = "default_coverage_min_share")]
    pub min_share: Percent,
}

fn default_coverage_window() -> GoDuration {
    GoDuration::from_secs(7 * 24 * 3600)
}
fn default_coverage_min_queries() -> i32 {
    5
}
fn default_coverage_min_share() -> Percent {
    Percent::from_fraction(0.005)
}

impl Default for Coverage {
    fn default() -> Self {
        Self {
            window: default_coverage_window(),
            min_queries: default_coverage_min_queries(),
            min_share: default_coverage_min_share(),
        }
    }
}

/// Access mode of the index claim.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum AccessMode {
    /// Mounted by one node at a time: the build Job and every runtime replica must share a node
    /// (a Router with more than one replica is warned about it).
    #[default]
    ReadWriteOnce,
    /// Mounted by many nodes (needs a StorageClass that supports it, e.g. NFS or CephFS):
    /// runtime replicas may run anywhere.
    ReadWriteMany,
}

impl AccessMode {
    /// The Kubernetes access-mode string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReadWriteOnce => "ReadWriteOnce",
            Self::ReadWriteMany => "ReadWriteMany",
        }
    }
}

#[cfg(feature = "kube")]
/// Storage for index generations.
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[cfg_attr(not(feature = "kube"), derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Storage {
    /// Size of the PersistentVolumeClaim holding index generations.
    #[serde(default = "default_storage_size")]
    pub size: Quantity,
    /// StorageClass of the claim; unset: the cluster default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// `ReadWriteOnce` (default) or `ReadWriteMany`. The build Job writes the claim and every
    /// runtime replica of the Routers using this KnowledgeBase reads it: replicas on several
    /// nodes need `ReadWriteMany`. Immutable (a claim's access modes cannot change).
    #[serde(default)]
    #[cfg_attr(feature = "kube", x_kube(validation = Rule::new("self == oldSelf").message(messages::ACCESS_MODE_IMMUTABLE)))]
    pub access_mode: AccessMode,
}

#[cfg(feature = "kube")]
fn default_storage_size() -> Quantity {
    Quantity("1Gi".to_owned())
}

#[cfg(feature = "kube")]
impl Default for Storage {
    fn default() -> Self {
        Self {
            size: default_storage_size(),
            storage_class_name: None,
            access_mode: AccessMode::default(),
        }
    }
}

#[cfg(feature = "kube")]
/// Observed state of a KnowledgeBase.
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[cfg_attr(not(feature = "kube"), derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KnowledgeBaseStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing`, `Degraded`, `IndexReady`, `SourcesHealthy`, and the content
    /// checks `ContentFresh`, `ContentConsistent`, `ContentCovers`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "kube", x_kube(merge_strategy = ListMerge::Map(vec!["type".into()])))]
    pub conditions: Vec<Condition>,
    /// The index generation being served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_generation: Option<i64>,
    /// The generation served before the current one (what a switch back would serve).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_generation: Option<i64>,
    /// Documents in the served generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub documents: Option<i64>,
    /// Chunks in the served generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks: Option<i64>,
    /// Documents past their class's `staleAfter` that still answer at least
    /// `spec.staleness.minQueryShare` of queries over `spec.staleness.window`, measured on the
    /// runtimes of the Routers that use this KnowledgeBase (condition `ContentFresh`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_documents: Option<i64>,
    /// The stale documents answering the largest shares of queries, largest first (at most 10,
    /// `MAX_LISTED_STALE_DOCUMENTS`; `staleDocuments` counts them all): the review queue.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub top_stale_documents: Vec<StaleDocument>,
    /// Contradiction candidates in the served generation: pairs of passages about the same thing
    /// that state different values (numbers, dates, durations, prices, policy terms), found at
    /// index build time (condition `ContentConsistent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contradictions: Option<i64>,
    /// The best-scoring candidates (at most 5, `MAX_LISTED_CONTRADICTIONS`; the full list is
    /// `contradictions.json` in the generation's directory).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 5))]
    pub top_contradictions: Vec<ContradictionCandidate>,
    /// Topics the runtimes of the Routers using this KnowledgeBase could not answer (escalated,
    /// no passage found, or refused) with at least `spec.coverage.minQueries` queries and
    /// `spec.coverage.minShare` of a Router's queries over `spec.coverage.window`, read from
    /// their outcome stores (condition `ContentCovers`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coverage_gaps: Option<i64>,
    /// The largest gaps, most queries first (at most 10, `MAX_LISTED_COVERAGE_GAPS`;
    /// `coverageGaps` counts them all): what to write next.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub top_coverage_gaps: Vec<CoverageGap>,
    /// Sources (or files) that could not be fetched or parsed in the last build.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_errors: Vec<SourceError>,
    /// When the served generation finished building.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_build_time: Option<Time>,
    /// When the next scheduled refresh starts (with `spec.refreshInterval`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_refresh_time: Option<Time>,
}

/// Stale documents listed in `status.topStaleDocuments`, at most.
pub const MAX_LISTED_STALE_DOCUMENTS: usize = 10;
/// Contradiction candidates listed in `status.topContradictions`, at most.
pub const MAX_LISTED_CONTRADICTIONS: usize = 5;

/// Coverage gaps listed in `status.topCoverageGaps`, at most.
pub const MAX_LISTED_COVERAGE_GAPS: usize = 10;
/// Documents named per listed coverage gap, at most.
pub const MAX_COVERAGE_GAP_DOCUMENTS: usize = 3;

#[cfg(feature = "kube")]
/// A topic the knowledge base does not answer: similar queries (MiniLM cosine 0.75 or more)
/// that were escalated, found no passage, or were refused. Counts and ids only: the queries
/// themselves are customers' words, read through the Router's authenticated admin API
/// (`GET /v1/coverage-gaps`) or `switchboard-runtime coverage-gaps`, never written into status.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CoverageGap {
    /// The Router whose runtimes reported it (`namespace/name`).
    #[schemars(length(max = 317))]
    pub router: String,
    /// An interaction asking the topic's most central question (its id in the Router's outcome
    /// store): the admin API's report lists the topic's questions under it.
    #[schemars(length(max = 128))]
    pub interaction: String,
    /// Its queries over `spec.coverage.window`.
    pub volume: i64,
    /// Their share of all the Router's queries over the window.
    pub share: Percent,
    /// Of those, escalated to a human.
    pub escalated: i64,
    /// Documents retrieved for them, most often first (at most 3; empty: nothing was retrieved):
    /// where the missing answer probably belongs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 3))]
    pub documents: Vec<String>,
    /// When the last of them was asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Time>,
}

#[cfg(feature = "kube")]
/// A document past its freshness class's `staleAfter` that still answers queries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StaleDocument {
    /// Document id (`<source>/<path or item>`), the `document` label of the runtime's
    /// `switchboard_document_retrievals_total`.
    #[schemars(length(max = 1024))]
    pub document: String,
    /// Share of queries over `spec.staleness.window` whose passages included it.
    pub query_share: Percent,
    /// Its last modification, as ingested (unset when the runtimes do not report it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<Time>,
}

/// Two passages of the served generation that state different values about the same thing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContradictionCandidate {
    /// What the two claims state: `duration`, `money`, `percent`, `date`, `count` or `policy`.
    #[schemars(length(max = 16))]
    pub kind: String,
    /// The document stating one value (the older one when both are dated: review it first).
    #[schemars(length(max = 1024))]
    pub document: String,
    /// Its value as written (`30 days`).
    #[schemars(length(max = 128))]
    pub value: String,
    /// The other document.
    #[schemars(length(max = 1024))]
    pub other_document: String,
    /// Its value (`14 days`).
    #[schemars(length(max = 128))]
    pub other_value: String,
}

/// A source (or one file of it) that failed in the last build.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SourceError {
    /// `spec.sources[].name`.
    pub source: String,
    /// The file within the source, when one file failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// CamelCase reason (e.g. `FetchFailed`, `ParseFailed`, `DigestMismatch`).
    pub reason: String,
    /// Human-readable detail.
    #[serde(default)]
    pub message: String,
}

#[cfg(feature = "kube")]
impl KnowledgeBaseSpec {
    /// The freshness class named `name` (declared ones override built-ins), as
    /// `(half_life, stale_after)`.
    pub fn freshness_class(&self, name: &str) -> Option<FreshnessClass> {
        if let Some(class) = self.freshness_classes.iter().find(|c| c.name == name) {
            return Some(class.clone());
        }
        BUILTIN_FRESHNESS_CLASSES
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(n, half, stale)| FreshnessClass {
                name: (*n).to_owned(),
                half_life: half.and_then(|h| h.parse().ok()),
                stale_after: stale.and_then(|s| s.parse().ok()),
            })
    }
}

#[cfg(feature = "kube")]
impl KnowledgeBaseSpec {
    /// The rules about changes (the transition rules of the CRD): `storage.accessMode` is
    /// immutable.
    pub fn validate_update(&self, old: &Self) -> Result<(), ValidationErrors> {
        let mut errors = Errors::default();
        errors.check(
            self.storage.access_mode == old.storage.access_mode,
            "spec.storage.accessMode",
            messages::ACCESS_MODE_IMMUTABLE,
        );
        errors.finish()
    }
}

#[cfg(feature = "kube")]
impl Validate for KnowledgeBaseSpec {
    fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = Errors::default();
        let mut seen = std::collections::BTreeSet::new();
        let mut claim_paths = std::collections::BTreeSet::new();
        for (i, source) in self.sources.iter().enumerate() {
            let field = format!("spec.sources[{i}]");
            errors.check(
                seen.insert(&source.name),
                format!("{field}.name"),
                "sources[].name must be unique",
            );
            errors.check(source.kind().is_some(), &field, messages::ONE_SOURCE_KIND);
            if let Some(v) = &source.volume {
                errors.check(
                    v.path.starts_with('/'),
                    format!("{field}.volume.path"),
                    messages::ABSOLUTE_PATH,
                );
                errors.check(
                    v.path_is_normalized(),
                    format!("{field}.volume.path"),
                    messages::NORMALIZED_PATH,
                );
                if v.claim_name.is_none() {
                    errors.check(
                        !v.path_is_system(),
                        format!("{field}.volume.path"),
                        messages::SYSTEM_PATH,
                    );
                }
                if v.claim_name.is_some() {
                    errors.check(
                        !v.path_is_reserved(),
                        format!("{field}.volume.path"),
                        messages::RESERVED_PATH,
                    );
                    errors.check(
                        claim_paths.insert(v.path.trim_end_matches('/')),
                        format!("{field}.volume.path"),
                        messages::DUPLICATE_MOUNT,
                    );
                }
            }
            if let Some(h) = &source.http {
                let ok = ["http://", "https://"].iter().any(|scheme| {
                    h.url.strip_prefix(scheme).is_some_and(|rest| {
                        rest.chars()
                            .next()
                            .is_some_and(|c| !c.is_whitespace() && c != '/')
                    })
                });
                errors.check(ok, format!("{field}.http.url"), messages::HTTP_URL);
            }
        }
        errors.check(
            self.sources
                .iter()
                .all(|s| self.freshness_class(s.freshness_class()).is_some()),
            "spec.sources",
            messages::UNKNOWN_FRESHNESS_CLASS,
        );
        errors.check(
            self.chunking.overlap_tokens < self.chunking.max_tokens,
            "spec.chunking.overlapTokens",
            messages::OVERLAP_BELOW_MAX,
        );
        self.retrieval.check(&mut errors, "spec.retrieval");
        errors.check(
            self.coverage.window.duration() >= std::time::Duration::from_secs(3600),
            "spec.coverage.window",
            messages::COVERAGE_WINDOW_MIN,
        );
        errors.check(
            (1..=100_000).contains(&self.coverage.min_queries),
            "spec.coverage.minQueries",
            "coverage.minQueries must be between 1 and 100000",
        );
        if let Some(interval) = &self.refresh_interval {
            errors.check(
                interval.duration() >= std::time::Duration::from_secs(60),
                "spec.refreshInterval",
                messages::REFRESH_MIN,
            );
        }
        errors.finish()
    }
}
