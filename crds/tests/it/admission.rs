//! Each admission rule refuses a bad manifest with a message naming the field, and the Rust-side
//! validation (or deserialisation) refuses the same manifest for the same reason.

// Helpers outside #[test] fns panic on broken setup too (clippy.toml only covers test fns).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

use serde_json::{Value, json};
use switchboard_crds::{
    adapter_patch::messages as ap,
    common::{
        DIGEST_MESSAGE, GUARDRAIL_INCREASE_MESSAGE, GUARDRAIL_SETTLE_MESSAGE,
        GUARDRAIL_SETTLE_METRIC_MESSAGE,
    },
    experiment::messages as exp,
    knowledge_base::messages as kb,
    router::messages as rt,
};

/// What the Rust path must say about a case.
enum Rust {
    /// `Validate` (or `validate_update`) refuses with this field and message.
    Field(&'static str, &'static str),
    /// Deserialisation into the typed resource fails at the admission field with a message
    /// containing this.
    Deserialize(&'static str),
    /// Only the schema checks it (string lengths, name patterns, unknown fields).
    SchemaOnly,
}

struct Case {
    name: &'static str,
    file: &'static str,
    kind: &'static str,
    edit: fn(&mut Value),
    /// Whether `edit` applies to an update of the unedited object (transition rules).
    update: bool,
    field: &'static str,
    message: &'static str,
    rust: Rust,
}

fn set(doc: &mut Value, pointer: &str, value: Value) {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let parent = doc
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("no {parent}"));
    match parent {
        Value::Object(map) => {
            map.insert(key.to_owned(), value);
        }
        Value::Array(items) => items[key.parse::<usize>().unwrap()] = value,
        other => panic!("cannot set {key} in {other}"),
    }
}

fn remove(doc: &mut Value, pointer: &str) {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    doc.pointer_mut(parent)
        .unwrap()
        .as_object_mut()
        .unwrap()
        .remove(key);
}

const DURATION_MESSAGE: &str = "must be a Go duration like";
const PERCENT_MESSAGE: &str = "must be a percentage between 0% and 100%";

fn cases() -> Vec<Case> {
    vec![
        // --- AdapterPatch -------------------------------------------------------------------
        Case {
            name: "version is not semver",
            file: "adapterpatch.yaml",
            kind: "AdapterPatch",
            update: false,
            edit: |d| set(d, "/spec/version", json!("1.3")),
            field: "spec.version",
            message: ap::SEMVER,
            rust: Rust::Field("spec.version", ap::SEMVER),
        },
        Case {
            name: "version with leading v",
            file: "adapterpatch.yaml",
            kind: "AdapterPatch",
            update: false,
            edit: |d| set(d, "/spec/version", json!("v1.3.0")),
            field: "spec.version",
            message: ap::SEMVER,
            rust: Rust::Field("spec.version", ap::SEMVER),
        },
        Case {
            name: "digest is not sha256:<64 hex>",
            file: "adapterpatch.yaml",
            kind: "AdapterPatch",
            update: false,
            edit: |d| set(d, "/spec/artifact/sha256", json!("sha256:9F86D081")),
            field: "spec.artifact.sha256",
            message: DIGEST_MESSAGE,
            rust: Rust::Deserialize(DIGEST_MESSAGE),
        },
        Case {
            name: "digest without algorithm",
            file: "adapterpatch.yaml",
            kind: "AdapterPatch",
            update: false,
            edit: |d| {
                set(
                    d,
                    "/spec/artifact/sha256",
                    json!("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"),
                )
            },
            field: "spec.artifact.sha256",
            message: DIGEST_MESSAGE,
            rust: Rust::Deserialize(DIGEST_MESSAGE),
        },
        Case {
            name: "LoRA rank above 64",
            file: "adapterpatch.yaml",
            kind: "AdapterPatch",
            update: false,
            edit: |d| set(d, "/spec/lora/rank", json!(128)),
            field: "spec.lora.rank",
            message: "128 is greater than the maximum of 64",
            rust: Rust::Field("spec.lora.rank", "lora.rank must be between 1 and 64"),
        },
        Case {
            name: "LoRA rank 0",
            file: "adapterpatch.yaml",
            kind: "AdapterPatch",
            update: false,
            edit: |d| set(d, "/spec/lora/rank", json!(0)),
            field: "spec.lora.rank",
            message: "0 is less than the minimum of 1",
            rust: Rust::Field("spec.lora.rank", "lora.rank must be between 1 and 64"),
        },
        Case {
            name: "canary steps decreasing",
            file: "adapterpatch.yaml",
            kind: "AdapterPatch",
            update: false,
            edit: |d| {
                set(
                    d,
                    "/spec/rollout/canary/steps",
                    json!([{"weight": 50, "duration": "1h"}, {"weight": 25, "duration": "1h"}]),
                )
            },
            field: "spec.rollout.canary.steps",
            message: ap::STEPS_INCREASING,
            rust: Rust::Field("spec.rollout.canary.steps", ap::STEPS_INCREASING),
        },
        Case {
            name: "canary steps repeat a weight",
            file: "adapterpatch.yaml",
            kind: "AdapterPatch",
            update: false,
            edit: |d| {
                set(
                    d,
                    "/spec/rollout/canary/steps",
                    json!([{"weight": 25, "duration": "1h"}, {"weight": 25, "duration": "2h"}]),
                )
            },
            field: "spec.rollout.canary.steps",
            message: ap::STEPS_INCREASING,
            rust: Rust::Field("spec.rollout.canary.steps", ap::STEPS_INCREASING),
        },
        Case {
            name: "canary step weight above 100",
            file: "adapterpatch.yaml",
            kind: "AdapterPatch",
            update: false,
            edit: |d| set(d, "/spec/rollout/canary/steps/2/weight", json!(120)),
            field: "spec.rollout.canary.steps[2].weight",
            message: "120 is greater than the maximum of 100",
            rust: Rust::Field("spec.rollout.canary.steps", ap::STEPS_INCREASING),
        },
        Case {
            name: "canary step duration does not parse",
            file: "adapterpatch.yaml",
            kind: "AdapterPatch",
            update: false,
            edit: |d| set(d, "/spec/rollout/canary/steps/0/duration", json!("1d")),
            field: "spec.rollout.canary.steps[0].duration",
            message: DURATION_MESSAGE,
            rust: Rust::Deserialize("invalid duration \"1d\""),
        },
        Case {
            name: "canary step too short",
            file: "adapterpatch.yaml",
            kind: "AdapterPatch",
            update: false,
            edit: |d| set(d, "/spec/rollout/canary/steps/0/duration", json!("30s")),
            field: "spec.rollout.canary.steps[0].duration",
            message: ap::STEP_DURATION,
            rust: Rust::Field("spec.rollout.canary.steps[0].duration", ap::STEP_DURATION),
        },
        Case {
            name: "guardrail relative increase of 0%",
            file: "adapterpatch.yaml",
            kind: "AdapterPatch",
            update: false,
            edit: |d| set(d, "/spec/guardrails/0/maxRelativeIncrease", json!("0%")),
            field: "spec.guardrails[0].maxRelativeIncrease",
            message: GUARDRAIL_INCREASE_MESSAGE,
            rust: Rust::Field(
                "spec.guardrails[0].maxRelativeIncrease",
                GUARDRAIL_INCREASE_MESSAGE,
            ),
        },
        Case {
            name: "guardrail relative increase above 100%",
            file: "adapterpatch.yaml",
            kind: "AdapterPatch",
            update: false,
            edit: |d| set(d, "/spec/guardrails/0/maxRelativeIncrease", json!("150%")),
            field: "spec.guardrails[0].maxRelativeIncrease",
            message: GUARDRAIL_INCREASE_MESSAGE,
            rust: Rust::Deserialize("must be between 0% and 100%"),
        },
        Case {
            name: "guardrail increase written as a number",
            file: "adapterpatch.yaml",
            kind: "AdapterPatch",
            update: false,
            edit: |d| set(d, "/spec/guardrails/0/maxRelativeIncrease", json!("0.05")),
            field: "spec.guardrails[0].maxRelativeIncrease",
            message: PERCENT_MESSAGE,
            rust: Rust::Deserialize("invalid percentage \"0.05\""),
        },
        Case {
            name: "guardrail follow-up on an answer-time metric",
            file: "adapterpatch.yaml",
            kind: "AdapterPatch",
            update: false,
            edit: |d| set(d, "/spec/guardrails/0/metric", json!("refusalRate")),
            field: "spec.guardrails[0].settleAfter",
            message: GUARDRAIL_SETTLE_METRIC_MESSAGE,
            rust: Rust::Field(
                "spec.guardrails[0].settleAfter",
                GUARDRAIL_SETTLE_METRIC_MESSAGE,
            ),
        },
        Case {
            name: "guardrail follow-up of zero",
            file: "adapterpatch.yaml",
            kind: "AdapterPatch",
            update: false,
            edit: |d| set(d, "/spec/guardrails/0/settleAfter", json!("0s")),
            field: "spec.guardrails[0].settleAfter",
            message: GUARDRAIL_SETTLE_MESSAGE,
            rust: Rust::Field("spec.guardrails[0].settleAfter", GUARDRAIL_SETTLE_MESSAGE),
        },
        Case {
            name: "guardrail on an unknown metric",
            file: "adapterpatch.yaml",
            kind: "AdapterPatch",
            update: false,
            edit: |d| set(d, "/spec/guardrails/0/metric", json!("happiness")),
            field: "spec.guardrails[0].metric",
            message: "is not one of",
            rust: Rust::Deserialize("unknown variant `happiness`"),
        },
        Case {
            name: "shadow sample share of 0%",
            file: "adapterpatch.yaml",
            kind: "AdapterPatch",
            update: false,
            edit: |d| set(d, "/spec/rollout/shadow/sampleShare", json!("0%")),
            field: "spec.rollout.shadow.sampleShare",
            message: ap::SHADOW_SHARE,
            rust: Rust::Field("spec.rollout.shadow.sampleShare", ap::SHADOW_SHARE),
        },
        Case {
            name: "artifact URI with an unsupported scheme",
            file: "adapterpatch.yaml",
            kind: "AdapterPatch",
            update: false,
            edit: |d| set(d, "/spec/artifact/uri", json!("s3://bucket/pricing")),
            field: "spec.artifact.uri",
            message: ap::ARTIFACT_URI,
            rust: Rust::Field("spec.artifact.uri", ap::ARTIFACT_URI),
        },
        Case {
            name: "rollback window shorter than 1h",
            file: "adapterpatch.yaml",
            kind: "AdapterPatch",
            update: false,
            edit: |d| set(d, "/spec/rollbackWindow", json!("30m")),
            field: "spec.rollbackWindow",
            message: ap::ROLLBACK_WINDOW,
            rust: Rust::Field("spec.rollbackWindow", ap::ROLLBACK_WINDOW),
        },
        Case {
            name: "evaluation timeout shorter than 1m",
            file: "adapterpatch.yaml",
            kind: "AdapterPatch",
            update: false,
            edit: |d| {
                set(
                    d,
                    "/spec/evaluation",
                    json!({"routerRef": {"name": "acme"}, "goldenSet": {"name": "golden", "key": "golden.jsonl"}, "timeout": "30s"}),
                )
            },
            field: "spec.evaluation.timeout",
            message: ap::EVALUATION_TIMEOUT,
            rust: Rust::Field("spec.evaluation.timeout", ap::EVALUATION_TIMEOUT),
        },
        Case {
            name: "evaluation limit above 100%",
            file: "adapterpatch.yaml",
            kind: "AdapterPatch",
            update: false,
            edit: |d| {
                set(
                    d,
                    "/spec/evaluation",
                    json!({"routerRef": {"name": "acme"}, "goldenSet": {"name": "golden", "key": "golden.jsonl"}, "maxKeyFactAccuracyDrop": "150%"}),
                )
            },
            field: "spec.evaluation.maxKeyFactAccuracyDrop",
            message: switchboard_crds::units::PERCENT_MESSAGE,
            // The Percent type refuses it while parsing.
            rust: Rust::Deserialize("must be between 0% and 100%"),
        },
        Case {
            name: "base model changed on update",
            file: "adapterpatch.yaml",
            kind: "AdapterPatch",
            update: true,
            edit: |d| set(d, "/spec/baseModel", json!("/models/other-base")),
            field: "spec.baseModel",
            message: ap::BASE_MODEL_IMMUTABLE,
            rust: Rust::Field("spec.baseModel", ap::BASE_MODEL_IMMUTABLE),
        },
        Case {
            name: "lineage changed on update",
            file: "adapterpatch.yaml",
            kind: "AdapterPatch",
            update: true,
            edit: |d| set(d, "/spec/lineage", json!("billing")),
            field: "spec.lineage",
            message: ap::LINEAGE_IMMUTABLE,
            rust: Rust::Field("spec.lineage", ap::LINEAGE_IMMUTABLE),
        },
        Case {
            name: "misspelt field",
            file: "adapterpatch.yaml",
            kind: "AdapterPatch",
            update: false,
            edit: |d| set(d, "/spec/lora/rnak", json!(8)),
            field: "spec.lora.rnak",
            message: "unknown field",
            rust: Rust::SchemaOnly,
        },
        Case {
            name: "missing artifact",
            file: "adapterpatch.yaml",
            kind: "AdapterPatch",
            update: false,
            edit: |d| remove(d, "/spec/artifact"),
            field: "spec",
            message: "\"artifact\" is a required property",
            rust: Rust::Deserialize("missing field `artifact`"),
        },
        // --- KnowledgeBase ------------------------------------------------------------------
        Case {
            name: "source with two kinds",
            file: "knowledgebase.yaml",
            kind: "KnowledgeBase",
            update: false,
            edit: |d| {
                set(
                    d,
                    "/spec/sources/0/volume",
                    json!({"path": "/data/policies"}),
                )
            },
            field: "spec.sources[0]",
            message: kb::ONE_SOURCE_KIND,
            rust: Rust::Field("spec.sources[0]", kb::ONE_SOURCE_KIND),
        },
        Case {
            name: "source with no kind",
            file: "knowledgebase.yaml",
            kind: "KnowledgeBase",
            update: false,
            edit: |d| remove(d, "/spec/sources/1/volume"),
            field: "spec.sources[1]",
            message: kb::ONE_SOURCE_KIND,
            rust: Rust::Field("spec.sources[1]", kb::ONE_SOURCE_KIND),
        },
        Case {
            name: "unknown freshness class",
            file: "knowledgebase.yaml",
            kind: "KnowledgeBase",
            update: false,
            edit: |d| set(d, "/spec/sources/0/freshnessClass", json!("weekly")),
            field: "spec.sources",
            message: kb::UNKNOWN_FRESHNESS_CLASS,
            rust: Rust::Field("spec.sources", kb::UNKNOWN_FRESHNESS_CLASS),
        },
        Case {
            name: "half-life in days",
            file: "knowledgebase.yaml",
            kind: "KnowledgeBase",
            update: false,
            edit: |d| set(d, "/spec/freshnessClasses/0/halfLife", json!("7d")),
            field: "spec.freshnessClasses[0].halfLife",
            message: DURATION_MESSAGE,
            rust: Rust::Deserialize("invalid duration \"7d\""),
        },
        Case {
            name: "chunk overlap not below max tokens",
            file: "knowledgebase.yaml",
            kind: "KnowledgeBase",
            update: false,
            edit: |d| set(d, "/spec/chunking/overlapTokens", json!(256)),
            field: "spec.chunking.overlapTokens",
            message: kb::OVERLAP_BELOW_MAX,
            rust: Rust::Field("spec.chunking.overlapTokens", kb::OVERLAP_BELOW_MAX),
        },
        Case {
            name: "both retrievers disabled",
            file: "knowledgebase.yaml",
            kind: "KnowledgeBase",
            update: false,
            edit: |d| {
                set(d, "/spec/retrieval/bm25/enabled", json!(false));
                set(d, "/spec/retrieval/dense/enabled", json!(false));
            },
            field: "spec.retrieval",
            message: kb::ONE_RETRIEVER,
            rust: Rust::Field("spec.retrieval", kb::ONE_RETRIEVER),
        },
        Case {
            name: "rerank enabled without a model",
            file: "knowledgebase.yaml",
            kind: "KnowledgeBase",
            update: false,
            edit: |d| remove(d, "/spec/retrieval/rerank/model"),
            field: "spec.retrieval.rerank.model",
            message: kb::RERANK_MODEL,
            rust: Rust::Field("spec.retrieval.rerank.model", kb::RERANK_MODEL),
        },
        Case {
            name: "rerank weight above 1",
            file: "knowledgebase.yaml",
            kind: "KnowledgeBase",
            update: false,
            edit: |d| set(d, "/spec/retrieval/rerank/weight", json!(1.5)),
            field: "spec.retrieval.rerank.weight",
            message: "1.5 is greater than the maximum of 1",
            rust: Rust::Field("spec.retrieval.rerank.weight", kb::RERANK_WEIGHT),
        },
        Case {
            name: "weighted fusion without a dense weight",
            file: "knowledgebase.yaml",
            kind: "KnowledgeBase",
            update: false,
            edit: |d| set(d, "/spec/retrieval/fusion/method", json!("Weighted")),
            field: "spec.retrieval.fusion.denseWeight",
            message: kb::DENSE_WEIGHT,
            rust: Rust::Field("spec.retrieval.fusion.denseWeight", kb::DENSE_WEIGHT),
        },
        Case {
            name: "relative volume path",
            file: "knowledgebase.yaml",
            kind: "KnowledgeBase",
            update: false,
            edit: |d| set(d, "/spec/sources/1/volume/path", json!("data/help-pages")),
            field: "spec.sources[1].volume.path",
            message: kb::ABSOLUTE_PATH,
            rust: Rust::Field("spec.sources[1].volume.path", kb::ABSOLUTE_PATH),
        },
        Case {
            name: "volume path climbing out with ..",
            file: "knowledgebase.yaml",
            kind: "KnowledgeBase",
            update: false,
            edit: |d| {
                set(
                    d,
                    "/spec/sources/3/volume/path",
                    json!("/data/tickets/../../var/run/secrets"),
                )
            },
            field: "spec.sources[3].volume.path",
            message: kb::NORMALIZED_PATH,
            rust: Rust::Field("spec.sources[3].volume.path", kb::NORMALIZED_PATH),
        },
        Case {
            name: "image path reading the process environment",
            file: "knowledgebase.yaml",
            kind: "KnowledgeBase",
            update: false,
            edit: |d| {
                set(
                    d,
                    "/spec/sources/1/volume/path",
                    json!("/proc/self/environ"),
                )
            },
            field: "spec.sources[1].volume.path",
            message: kb::SYSTEM_PATH,
            rust: Rust::Field("spec.sources[1].volume.path", kb::SYSTEM_PATH),
        },
        Case {
            name: "image path reading a ServiceAccount token",
            file: "knowledgebase.yaml",
            kind: "KnowledgeBase",
            update: false,
            edit: |d| {
                set(
                    d,
                    "/spec/sources/1/volume/path",
                    json!("/var/run/secrets/kubernetes.io/serviceaccount"),
                )
            },
            field: "spec.sources[1].volume.path",
            message: kb::SYSTEM_PATH,
            rust: Rust::Field("spec.sources[1].volume.path", kb::SYSTEM_PATH),
        },
        Case {
            name: "claim mounted over the index builder's own paths",
            file: "knowledgebase.yaml",
            kind: "KnowledgeBase",
            update: false,
            edit: |d| {
                set(
                    d,
                    "/spec/sources/3/volume/path",
                    json!("/var/lib/switchboard/index"),
                )
            },
            field: "spec.sources[3].volume.path",
            message: kb::RESERVED_PATH,
            rust: Rust::Field("spec.sources[3].volume.path", kb::RESERVED_PATH),
        },
        Case {
            name: "index claim access mode changed",
            file: "knowledgebase.yaml",
            kind: "KnowledgeBase",
            update: true,
            edit: |d| set(d, "/spec/storage/accessMode", json!("ReadWriteOnce")),
            field: "spec.storage.accessMode",
            message: kb::ACCESS_MODE_IMMUTABLE,
            rust: Rust::Field("spec.storage.accessMode", kb::ACCESS_MODE_IMMUTABLE),
        },
        Case {
            name: "non-HTTP source URL",
            file: "knowledgebase.yaml",
            kind: "KnowledgeBase",
            update: false,
            edit: |d| {
                set(
                    d,
                    "/spec/sources/2/http/url",
                    json!("ftp://exports.example.com/space.tgz"),
                )
            },
            field: "spec.sources[2].http.url",
            message: kb::HTTP_URL,
            rust: Rust::Field("spec.sources[2].http.url", kb::HTTP_URL),
        },
        Case {
            name: "refresh interval too short",
            file: "knowledgebase.yaml",
            kind: "KnowledgeBase",
            update: false,
            edit: |d| set(d, "/spec/refreshInterval", json!("30s")),
            field: "spec.refreshInterval",
            message: kb::REFRESH_MIN,
            rust: Rust::Field("spec.refreshInterval", kb::REFRESH_MIN),
        },
        Case {
            name: "coverage window too short",
            file: "knowledgebase.yaml",
            kind: "KnowledgeBase",
            update: false,
            edit: |d| set(d, "/spec/coverage", json!({"window": "30m"})),
            field: "spec.coverage.window",
            message: kb::COVERAGE_WINDOW_MIN,
            rust: Rust::Field("spec.coverage.window", kb::COVERAGE_WINDOW_MIN),
        },
        Case {
            name: "coverage minQueries zero",
            file: "knowledgebase.yaml",
            kind: "KnowledgeBase",
            update: false,
            edit: |d| set(d, "/spec/coverage", json!({"minQueries": 0})),
            field: "spec.coverage.minQueries",
            message: "0 is less than the minimum of 1",
            rust: Rust::Field(
                "spec.coverage.minQueries",
                "coverage.minQueries must be between 1 and 100000",
            ),
        },
        Case {
            name: "unknown source format",
            file: "knowledgebase.yaml",
            kind: "KnowledgeBase",
            update: false,
            edit: |d| set(d, "/spec/sources/0/format", json!("Docx")),
            field: "spec.sources[0].format",
            message: "is not one of",
            rust: Rust::Deserialize("unknown variant `Docx`"),
        },
        Case {
            name: "source name not a DNS label",
            file: "knowledgebase.yaml",
            kind: "KnowledgeBase",
            update: false,
            edit: |d| set(d, "/spec/sources/0/name", json!("Policies_2025")),
            field: "spec.sources[0].name",
            message: "does not match",
            rust: Rust::SchemaOnly,
        },
        // --- Router -------------------------------------------------------------------------
        Case {
            name: "large model both local and endpoint",
            file: "router.yaml",
            kind: "Router",
            update: false,
            edit: |d| {
                set(
                    d,
                    "/spec/largeModel/local",
                    json!({"model": "/models/large"}),
                )
            },
            field: "spec.largeModel",
            message: rt::ONE_LARGE_MODEL,
            rust: Rust::Field("spec.largeModel", rt::ONE_LARGE_MODEL),
        },
        Case {
            name: "holdout of 30% of units",
            file: "router.yaml",
            kind: "Router",
            update: false,
            edit: |d| set(d, "/spec/holdout/share", json!("30%")),
            field: "spec.holdout.share",
            message: rt::HOLDOUT_SHARE,
            rust: Rust::Field("spec.holdout.share", rt::HOLDOUT_SHARE),
        },
        Case {
            name: "holdout compared on shadow divergence",
            file: "router.yaml",
            kind: "Router",
            update: false,
            edit: |d| {
                set(
                    d,
                    "/spec/holdout/metrics",
                    json!(["escalationRate", "shadowDivergence"]),
                )
            },
            field: "spec.holdout.metrics",
            message: rt::HOLDOUT_METRICS,
            rust: Rust::Field("spec.holdout.metrics", rt::HOLDOUT_METRICS),
        },
        Case {
            name: "holdout changed while it exists",
            file: "router.yaml",
            kind: "Router",
            update: true,
            edit: |d| set(d, "/spec/holdout/share", json!("5%")),
            field: "spec.holdout",
            message: rt::HOLDOUT_IMMUTABLE,
            rust: Rust::Field("spec.holdout", rt::HOLDOUT_IMMUTABLE),
        },
        Case {
            name: "large model neither local nor endpoint",
            file: "router.yaml",
            kind: "Router",
            update: false,
            edit: |d| remove(d, "/spec/largeModel/endpoint"),
            field: "spec.largeModel",
            message: rt::ONE_LARGE_MODEL,
            rust: Rust::Field("spec.largeModel", rt::ONE_LARGE_MODEL),
        },
        Case {
            name: "answerability threshold above 1",
            file: "router.yaml",
            kind: "Router",
            update: false,
            edit: |d| {
                set(
                    d,
                    "/spec/generation",
                    json!({"grounding": {"minEvidenceScore": 1.5}}),
                )
            },
            field: "spec.generation.grounding.minEvidenceScore",
            message: "1.5 is greater than the maximum of 1",
            rust: Rust::Field(
                "spec.generation.grounding.minEvidenceScore",
                rt::MIN_EVIDENCE_SCORE,
            ),
        },
        Case {
            name: "no evidence sentences",
            file: "router.yaml",
            kind: "Router",
            update: false,
            edit: |d| {
                set(
                    d,
                    "/spec/generation",
                    json!({"grounding": {"evidenceSentences": 0}}),
                )
            },
            field: "spec.generation.grounding.evidenceSentences",
            message: "0 is less than the minimum of 1",
            rust: Rust::Field(
                "spec.generation.grounding.evidenceSentences",
                rt::EVIDENCE_SENTENCES,
            ),
        },
        Case {
            name: "exploration share above 50%",
            file: "router.yaml",
            kind: "Router",
            update: false,
            edit: |d| set(d, "/spec/exploration/share", json!("60%")),
            field: "spec.exploration.share",
            message: rt::EXPLORATION_SHARE,
            rust: Rust::Field("spec.exploration.share", rt::EXPLORATION_SHARE),
        },
        Case {
            name: "two adapters per query (deprecated: one is applied)",
            file: "router.yaml",
            kind: "Router",
            update: false,
            edit: |d| set(d, "/spec/adapterSelection/topK", json!(2)),
            field: "spec.adapterSelection.topK",
            message: "2 is greater than the maximum of 1",
            rust: Rust::SchemaOnly,
        },
        Case {
            name: "difficulty threshold above 1",
            file: "router.yaml",
            kind: "Router",
            update: false,
            edit: |d| set(d, "/spec/difficulty/threshold", json!(1.5)),
            field: "spec.difficulty.threshold",
            message: "1.5 is greater than the maximum of 1",
            rust: Rust::SchemaOnly,
        },
        Case {
            name: "endpoint URL without scheme",
            file: "router.yaml",
            kind: "Router",
            update: false,
            edit: |d| {
                set(
                    d,
                    "/spec/largeModel/endpoint/url",
                    json!("llm.internal.example.com/v1"),
                )
            },
            field: "spec.largeModel.endpoint.url",
            message: rt::ENDPOINT_URL,
            rust: Rust::Field("spec.largeModel.endpoint.url", rt::ENDPOINT_URL),
        },
        Case {
            name: "API key over plain http",
            file: "router.yaml",
            kind: "Router",
            update: false,
            edit: |d| {
                set(
                    d,
                    "/spec/largeModel/endpoint/url",
                    json!("http://llm.example.com/v1"),
                )
            },
            field: "spec.largeModel.endpoint",
            message: rt::PLAINTEXT_CREDENTIALS,
            rust: Rust::Field("spec.largeModel.endpoint", rt::PLAINTEXT_CREDENTIALS),
        },
        Case {
            name: "plaintext allowed only to an in-cluster Service",
            file: "router.yaml",
            kind: "Router",
            update: false,
            edit: |d| {
                set(
                    d,
                    "/spec/largeModel/endpoint/url",
                    json!("http://llm.example.com/v1"),
                );
                set(
                    d,
                    "/spec/largeModel/endpoint/allowPlaintextInCluster",
                    json!(true),
                );
            },
            field: "spec.largeModel.endpoint",
            message: rt::PLAINTEXT_CREDENTIALS,
            rust: Rust::Field("spec.largeModel.endpoint", rt::PLAINTEXT_CREDENTIALS),
        },
        Case {
            name: "knowledge base reference not a name",
            file: "router.yaml",
            kind: "Router",
            update: false,
            edit: |d| set(d, "/spec/knowledgeBaseRef/name", json!("Support KB")),
            field: "spec.knowledgeBaseRef.name",
            message: "does not match",
            rust: Rust::SchemaOnly,
        },
        // --- Experiment ---------------------------------------------------------------------
        Case {
            name: "variant weights sum to 90",
            file: "experiment.yaml",
            kind: "Experiment",
            update: false,
            edit: |d| set(d, "/spec/variants/1/weight", json!(40)),
            field: "spec.variants",
            message: exp::WEIGHTS_SUM,
            rust: Rust::Field("spec.variants", exp::WEIGHTS_SUM),
        },
        Case {
            name: "duplicate variant names",
            file: "experiment.yaml",
            kind: "Experiment",
            update: false,
            edit: |d| set(d, "/spec/variants/1/name", json!("current")),
            field: "spec.variants",
            message: exp::VARIANT_NAMES_UNIQUE,
            rust: Rust::Field("spec.variants", exp::VARIANT_NAMES_UNIQUE),
        },
        Case {
            name: "holdout above 20%",
            file: "experiment.yaml",
            kind: "Experiment",
            update: false,
            edit: |d| set(d, "/spec/holdout/share", json!("25%")),
            field: "spec.holdout.share",
            message: exp::HOLDOUT_SHARE,
            rust: Rust::Field("spec.holdout.share", exp::HOLDOUT_SHARE),
        },
        Case {
            name: "holdout share without %",
            file: "experiment.yaml",
            kind: "Experiment",
            update: false,
            edit: |d| set(d, "/spec/holdout/share", json!("5")),
            field: "spec.holdout.share",
            message: PERCENT_MESSAGE,
            rust: Rust::Deserialize("invalid percentage \"5\""),
        },
        Case {
            name: "control names no variant",
            file: "experiment.yaml",
            kind: "Experiment",
            update: false,
            edit: |d| set(d, "/spec/control", json!("baseline")),
            field: "spec.control",
            message: exp::CONTROL_EXISTS,
            rust: Rust::Field("spec.control", exp::CONTROL_EXISTS),
        },
        Case {
            name: "both absolute and relative MDE",
            file: "experiment.yaml",
            kind: "Experiment",
            update: false,
            edit: |d| set(d, "/spec/minimumDetectableEffect/relative", json!("5%")),
            field: "spec.minimumDetectableEffect",
            message: exp::ONE_MDE,
            rust: Rust::Field("spec.minimumDetectableEffect", exp::ONE_MDE),
        },
        Case {
            name: "MDE of 0%",
            file: "experiment.yaml",
            kind: "Experiment",
            update: false,
            edit: |d| set(d, "/spec/minimumDetectableEffect/absolute", json!("0%")),
            field: "spec.minimumDetectableEffect.absolute",
            message: exp::MDE_POSITIVE,
            rust: Rust::Field("spec.minimumDetectableEffect.absolute", exp::MDE_POSITIVE),
        },
        Case {
            name: "alpha of 30%",
            file: "experiment.yaml",
            kind: "Experiment",
            update: false,
            edit: |d| set(d, "/spec/alpha", json!("30%")),
            field: "spec.alpha",
            message: exp::ALPHA,
            rust: Rust::Field("spec.alpha", exp::ALPHA),
        },
        Case {
            name: "power of 40%",
            file: "experiment.yaml",
            kind: "Experiment",
            update: false,
            edit: |d| set(d, "/spec/power", json!("40%")),
            field: "spec.power",
            message: exp::POWER,
            rust: Rust::Field("spec.power", exp::POWER),
        },
        Case {
            name: "adapter version override not semver",
            file: "scenario.yaml",
            kind: "Experiment",
            update: false,
            edit: |d| {
                set(
                    d,
                    "/spec/variants/1/overrides/adapterVersions/pricing",
                    json!("latest"),
                )
            },
            field: "spec.variants[1].overrides.adapterVersions",
            message: exp::ADAPTER_VERSIONS,
            rust: Rust::Field(
                "spec.variants[1].overrides.adapterVersions",
                exp::ADAPTER_VERSIONS,
            ),
        },
        Case {
            name: "unknown assignment unit",
            file: "experiment.yaml",
            kind: "Experiment",
            update: false,
            edit: |d| set(d, "/spec/unit", json!("Session")),
            field: "spec.unit",
            message: "is not one of",
            rust: Rust::Deserialize("unknown variant `Session`"),
        },
        Case {
            name: "traffic changed on update",
            file: "experiment.yaml",
            kind: "Experiment",
            update: true,
            edit: |d| set(d, "/spec/traffic", json!("60%")),
            field: "spec.traffic",
            message: exp::TRAFFIC_IMMUTABLE,
            rust: Rust::Field("spec.traffic", exp::TRAFFIC_IMMUTABLE),
        },
        Case {
            name: "the same segment twice",
            file: "experiment.yaml",
            kind: "Experiment",
            update: false,
            edit: |d| set(d, "/spec/segments", json!(["channel", "channel"])),
            field: "spec.segments",
            message: exp::SEGMENTS,
            rust: Rust::Field("spec.segments", exp::SEGMENTS),
        },
        Case {
            name: "no traffic",
            file: "experiment.yaml",
            kind: "Experiment",
            update: false,
            edit: |d| set(d, "/spec/traffic", json!("0%")),
            field: "spec.traffic",
            message: exp::TRAFFIC,
            rust: Rust::Field("spec.traffic", exp::TRAFFIC),
        },
        Case {
            name: "salt changed on update",
            file: "experiment.yaml",
            kind: "Experiment",
            update: true,
            edit: |d| set(d, "/spec/salt", json!("rewrite-2025-07")),
            field: "spec.salt",
            message: exp::ASSIGNMENT_IMMUTABLE,
            rust: Rust::Field("spec.salt", exp::ASSIGNMENT_IMMUTABLE),
        },
        Case {
            name: "router reference changed on update",
            file: "experiment.yaml",
            kind: "Experiment",
            update: true,
            edit: |d| set(d, "/spec/routerRef/name", json!("other")),
            field: "spec.routerRef",
            message: exp::ASSIGNMENT_IMMUTABLE,
            rust: Rust::Field("spec.routerRef", exp::ASSIGNMENT_IMMUTABLE),
        },
        Case {
            name: "one variant only",
            file: "experiment.yaml",
            kind: "Experiment",
            update: false,
            edit: |d| {
                set(
                    d,
                    "/spec/variants",
                    json!([{"name": "current", "weight": 100}]),
                )
            },
            field: "spec.variants",
            message: "has less than 2 items",
            rust: Rust::SchemaOnly,
        },
        Case {
            name: "max duration too short",
            file: "experiment.yaml",
            kind: "Experiment",
            update: false,
            edit: |d| set(d, "/spec/maxDuration", json!("30m")),
            field: "spec.maxDuration",
            message: exp::MAX_DURATION,
            rust: Rust::Field("spec.maxDuration", exp::MAX_DURATION),
        },
    ]
}

#[test]
fn every_rule_refuses_its_bad_manifest_naming_the_field() {
    let mut failures = Vec::new();
    for case in cases() {
        let good = support::example(case.file, case.kind);
        let mut bad = good.clone();
        (case.edit)(&mut bad);
        let old = case.update.then_some(&good);

        let rejections = support::admit(&bad, old);
        // A rule on a map's values names the key below the field (`adapterVersions.pricing`).
        let hit = rejections.iter().any(|r| {
            (r.field == case.field
                || r.field.starts_with(&format!("{}.", case.field))
                || r.field.starts_with(&format!("{}[", case.field)))
                && r.message.contains(case.message)
        });
        if !hit {
            failures.push(format!(
                "[{}] admission: expected `{}: {}`, got {:#?}",
                case.name, case.field, case.message, rejections
            ));
        }
        if case.update {
            // The same object is accepted on creation: the rule is about the change.
            let created = support::admit(&bad, None);
            if !created.is_empty() {
                failures.push(format!("[{}] refused on creation: {created:#?}", case.name));
            }
        }

        // The embedded default's reader (`serve --manifests`) refuses every creation the API
        // server refuses, SchemaOnly cases included, naming the field.
        if !case.update {
            let yaml = serde_yaml::to_string(&bad).unwrap();
            match switchboard_crds::resources_from_yaml(&yaml) {
                Ok(_) => failures.push(format!("[{}] --manifests accepted it", case.name)),
                Err(e) if !e.to_string().contains(case.field) => failures.push(format!(
                    "[{}] --manifests refused it without naming {}: {e}",
                    case.name, case.field
                )),
                Err(_) => {}
            }
        }

        let rust = support::rust_check(&bad, old);
        match (&case.rust, rust) {
            (Rust::Field(field, message), Err(errors)) => {
                let expected = format!("{field}: {message}");
                if !errors.iter().any(|e| e == &expected) {
                    failures.push(format!(
                        "[{}] Rust: expected `{expected}`, got {errors:#?}",
                        case.name
                    ));
                }
            }
            (Rust::Deserialize(text), Err(errors)) => {
                if !(errors.len() == 1
                    && errors[0].starts_with(&format!("{}: ", case.field))
                    && errors[0].contains(text))
                {
                    failures.push(format!("[{}] Rust: expected a deserialisation error with `{text}`, got {errors:#?}", case.name));
                }
            }
            (Rust::SchemaOnly, _) => {}
            (_, Ok(())) => failures.push(format!(
                "[{}] Rust path accepted the bad manifest",
                case.name
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn refusals_point_at_a_field_of_the_manifest() {
    // kubectl prints `<field>: Invalid value: ...: <message>`; every refusal carries a path.
    for case in cases() {
        let mut bad = support::example(case.file, case.kind);
        (case.edit)(&mut bad);
        for rejection in support::admit(&bad, None) {
            assert!(
                rejection.field.starts_with("spec"),
                "[{}] refusal without a spec field: {rejection:?}",
                case.name
            );
        }
    }
}

#[test]
fn two_claims_cannot_share_a_mount_path_but_image_paths_can() {
    let mut doc = support::example("knowledgebase.yaml", "KnowledgeBase");
    // Two sources reading one folder of the builder image in two formats: allowed.
    set(
        &mut doc,
        "/spec/sources/3/volume",
        json!({"path": "/data/help-pages"}),
    );
    support::rust_check(&doc, None).unwrap();
    // Two claims mounted at one path: the build pod could not mount both.
    set(
        &mut doc,
        "/spec/sources/1/volume",
        json!({"path": "/data/help-pages/", "claimName": "help-exports"}),
    );
    set(
        &mut doc,
        "/spec/sources/3/volume",
        json!({"path": "/data/help-pages", "claimName": "zendesk-exports"}),
    );
    let errors = support::rust_check(&doc, None).unwrap_err();
    assert!(
        errors.contains(&format!(
            "spec.sources[3].volume.path: {}",
            kb::DUPLICATE_MOUNT
        )),
        "{errors:?}"
    );
}

// --- The real kube-apiserver ------------------------------------------------------------------
//
// The same cases against kube-apiserver itself (built from the upstream modules by `hack/setup.sh
// controlplane`, started by the testkit): the generated CRDs installed with `kubectl apply
// --server-side`, every example and every bad manifest sent with `--dry-run=server`, so the real
// schema validation, defaulting, CEL rules (with the CEL cost budget) and kubectl's parser decide.

const NAMESPACE: &str = "admission";

/// The control plane of this test binary with the CRDs established and the test namespace.
fn apiserver() -> &'static switchboard_testkit::controlplane::ControlPlane {
    static READY: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    let plane = switchboard_testkit::controlplane::ControlPlane::shared();
    READY.get_or_init(|| {
        plane.install_crds();
        plane.kubectl(&["create", "namespace", NAMESPACE]).unwrap();
    });
    plane
}

/// kube-apiserver's wording of an OpenAPI schema refusal whose local check (the `jsonschema`
/// crate) words it differently; CEL messages are the rules' own and pass through unchanged.
fn server_wording(local: &str) -> String {
    let after = |pattern: &str| local.split_once(pattern).map(|(_, n)| n.to_owned());
    if let Some(n) = after(" is greater than the maximum of ") {
        format!("should be less than or equal to {n}")
    } else if let Some(n) = after(" is less than the minimum of ") {
        format!("should be greater than or equal to {n}")
    } else if let Some(n) = after("has less than ") {
        format!("should have at least {n}")
    } else if local.contains("is not one of") {
        "Unsupported value".to_owned()
    } else if local.contains("does not match") {
        "should match".to_owned()
    } else if local.contains("is a required property") {
        "Required value".to_owned()
    } else {
        local.to_owned()
    }
}

/// `kubectl <verb> -f -` with `doc` on stdin.
fn kubectl_stdin(args: &[&str], doc: &Value) -> Result<String, String> {
    use std::io::Write;
    let mut child = apiserver()
        .kubectl_command()
        .args(args)
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(doc.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

#[test]
fn the_real_apiserver_admits_every_example() {
    let plane = apiserver();
    assert!(plane.version().starts_with("v1."), "{}", plane.version());
    let docs = support::example_documents();
    assert!(docs.len() >= 8, "{}", docs.len());
    for (name, doc) in docs {
        let mut doc = doc.clone();
        doc["metadata"]["namespace"] = json!(NAMESPACE);
        kubectl_stdin(
            &["apply", "--server-side", "--dry-run=server", "-o", "name"],
            &doc,
        )
        .unwrap_or_else(|e| panic!("kube-apiserver {} refuses {name}: {e}", plane.version()));
    }
}

#[test]
fn the_real_apiserver_refuses_every_bad_manifest_naming_the_field() {
    let plane = apiserver();
    let mut failures = Vec::new();
    let cases = cases();
    for (i, case) in cases.iter().enumerate() {
        let mut good = support::example(case.file, case.kind);
        good["metadata"] = json!({"name": format!("case-{i}"), "namespace": NAMESPACE});
        let mut bad = good.clone();
        (case.edit)(&mut bad);
        let result = if case.update {
            // The transition rules judge a change: the good object exists, the bad one replaces it.
            if let Err(e) = kubectl_stdin(&["create", "-o", "name"], &good) {
                failures.push(format!(
                    "[{}] the unedited example is refused: {e}",
                    case.name
                ));
                continue;
            }
            kubectl_stdin(&["replace", "--dry-run=server", "-o", "name"], &bad)
        } else {
            kubectl_stdin(&["create", "--dry-run=server", "-o", "name"], &bad)
        };
        let expected = server_wording(case.message);
        match result {
            Ok(_) => failures.push(format!("[{}] accepted", case.name)),
            Err(message) => {
                if !message.contains(case.field) || !message.contains(&expected) {
                    failures.push(format!(
                        "[{}] expected `{}` and `{expected}`, kube-apiserver said: {message}",
                        case.name, case.field
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "kube-apiserver {}: {} of {} cases disagree:\n{}",
        plane.version(),
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
