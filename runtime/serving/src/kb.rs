//! KnowledgeBase manifests -> the index crate's build spec and search options.
//!
//! This is the runtime's half of "the operator is a compiler": the same conversion serves a folder
//! of manifests locally (the embedded default) and the index-build Job in a cluster.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use sha2::Digest as _;
use switchboard_crds::knowledge_base::{
    ChunkingStrategy, FusionMethod, Retrieval, SourceFormat as CrdFormat, SourceKind,
};
use switchboard_crds::{AdapterPatch, KnowledgeBase, Resource, Validate};
use switchboard_index::{
    ChunkingSpec, FieldBoosts, FreshnessClass, Fusion, IndexSpec, InlineFile, RelevanceFloor,
    RerankOptions, SearchOptions, SourceFormat, SourceLocation, SourceSpec,
};

/// Every Switchboard resource in the `*.yaml`/`*.yml` files under `path` (a file or a
/// directory, not recursive), with the file it came from.
fn load_resources(path: &Path) -> Result<Vec<(PathBuf, Resource)>> {
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("reading {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
            .collect();
        files.sort();
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        let resources = switchboard_crds::resources_from_yaml(&text)
            .with_context(|| format!("{}", file.display()))?;
        out.extend(resources.into_iter().map(|r| (file.clone(), r)));
    }
    Ok(out)
}

/// Reads every `*.yaml`/`*.yml` file under `path` (a file or a directory, not recursive) and
/// returns the KnowledgeBases, each validated with the same rules the API server enforces.
pub fn load_knowledge_bases(path: &Path) -> Result<Vec<KnowledgeBase>> {
    let mut out = Vec::new();
    for (file, resource) in load_resources(path)? {
        if let Resource::KnowledgeBase(kb) = resource {
            kb.spec.validate().map_err(|e| {
                anyhow::anyhow!("{}: KnowledgeBase {}: {e}", file.display(), name(&kb))
            })?;
            out.push(kb);
        }
    }
    Ok(out)
}

/// The AdapterPatches among the manifests under `path` (as [`load_knowledge_bases`] reads
/// them), validated.
pub fn load_adapter_patches(path: &Path) -> Result<Vec<AdapterPatch>> {
    let mut out = Vec::new();
    for (file, resource) in load_resources(path)? {
        if let Resource::AdapterPatch(patch) = resource {
            patch.spec.validate().map_err(|e| {
                anyhow::anyhow!(
                    "{}: AdapterPatch {}: {e}",
                    file.display(),
                    patch.metadata.name.as_deref().unwrap_or_default()
                )
            })?;
            out.push(patch);
        }
    }
    Ok(out)
}

/// The AdapterPatches whose artifacts are on this machine — `pvc://<claim>/<path>` under
/// `pvc_root`, or `file:///<dir>` — for the embedded default to compile
/// ([`local_runtime_config`]). Local manifests carry no rollout state (that lives in a cluster's
/// status), so each serves its `spec.version` as the stable version of its lineage; an artifact
/// that is not here is left out with a log line, as the operator would hold it in Validating.
/// The runtime verifies the digest when it loads the adapter.
pub fn local_adapters(patches: &[AdapterPatch], pvc_root: &Path) -> Vec<AdapterPatch> {
    patches
        .iter()
        .filter(|patch| {
            let uri = &patch.spec.artifact.uri;
            let local = match uri.split_once("://") {
                Some(("pvc", rest)) => Some(pvc_root.join(rest)),
                Some(("file", rest)) => Some(PathBuf::from(rest)),
                _ => None,
            };
            let here = local.is_some_and(|dir| dir.join("adapter_model.safetensors").is_file());
            if !here {
                tracing::info!(adapterpatch = patch.metadata.name.as_deref().unwrap_or_default(), %uri, "adapter artifact not on this machine; the embedded default serves without it");
            }
            here
        })
        .cloned()
        .collect()
}

/// `metadata.name` (empty when unset).
pub fn name(kb: &KnowledgeBase) -> &str {
    kb.metadata.name.as_deref().unwrap_or_default()
}

/// Picks the KnowledgeBase named `wanted`, or the only one.
pub fn select(kbs: Vec<KnowledgeBase>, wanted: Option<&str>) -> Result<KnowledgeBase> {
    match wanted {
        Some(wanted) => kbs
            .into_iter()
            .find(|kb| name(kb) == wanted)
            .with_context(|| format!("no KnowledgeBase named {wanted}")),
        None => {
            let mut kbs = kbs;
            match kbs.len() {
                0 => bail!("no KnowledgeBase manifest found"),
                1 => Ok(kbs.remove(0)),
                _ => bail!(
                    "several KnowledgeBases ({}); pick one with --knowledge-base",
                    kbs.iter().map(name).collect::<Vec<_>>().join(", ")
                ),
            }
        }
    }
}

fn format(f: CrdFormat) -> SourceFormat {
    match f {
        CrdFormat::Markdown => SourceFormat::Markdown,
        CrdFormat::Html => SourceFormat::Html,
        CrdFormat::ConfluenceHtml => SourceFormat::ConfluenceHtml,
        CrdFormat::ZendeskTickets => SourceFormat::ZendeskTickets,
        CrdFormat::SlackExport => SourceFormat::SlackExport,
        CrdFormat::Pdf => SourceFormat::Pdf,
        CrdFormat::PlainText => SourceFormat::PlainText,
    }
}

/// Where the sources a manifest only names are on this machine.
#[derive(Debug, Clone, Default)]
pub struct SourceRoots {
    /// Volume paths resolve under this folder: the manifests' folder locally, `/` in the
    /// index-build Job (claims are mounted at their paths there).
    pub volumes: PathBuf,
    /// `--sources-dir`: each ConfigMap source is mounted at `<dir>/<source name>/` (holding
    /// only the key's file when the source names a key), as the index-build Job does. `None`:
    /// ConfigMap sources are refused.
    pub config_maps: Option<PathBuf>,
    /// HTTP sources fetched before the build ([`fetch_http_sources`]), by source name. `None`:
    /// HTTP sources are refused. A source missing from the map failed to fetch: it is left out
    /// of this build and its failure is reported.
    pub fetched: Option<BTreeMap<String, PathBuf>>,
}

/// The build spec of a KnowledgeBase whose volume paths resolve against `base` (the manifest
/// folder), as `serve` builds it locally: ConfigMap and HTTP sources are refused (see
/// [`index_spec_with`]).
pub fn index_spec(kb: &KnowledgeBase, base: &Path) -> Result<IndexSpec> {
    index_spec_with(
        kb,
        &SourceRoots {
            volumes: base.to_path_buf(),
            ..SourceRoots::default()
        },
    )
}

/// The build spec of a KnowledgeBase, with its sources found through `roots`.
pub fn index_spec_with(kb: &KnowledgeBase, roots: &SourceRoots) -> Result<IndexSpec> {
    let spec = &kb.spec;
    let mut sources = Vec::new();
    for source in &spec.sources {
        let location = match source.kind() {
            Some(SourceKind::Inline(files)) => SourceLocation::Inline {
                files: files
                    .iter()
                    .map(|(name, content)| InlineFile {
                        name: name.clone(),
                        content: content.clone(),
                    })
                    .collect(),
            },
            Some(SourceKind::Volume(volume)) => SourceLocation::Path {
                path: roots.volumes.join(volume.path.trim_start_matches('/')),
            },
            // The projection of a ConfigMap volume holds `..data` and `..<timestamp>` entries
            // besides the key files (symlinks into them): the directory walk skips hidden
            // entries and follows the links.
            Some(SourceKind::ConfigMap(cm)) => match &roots.config_maps {
                Some(dir) => {
                    let mounted = dir.join(&source.name);
                    SourceLocation::Path {
                        path: match &cm.key {
                            Some(key) => mounted.join(key),
                            None => mounted,
                        },
                    }
                }
                None => bail!(
                    "source {}: ConfigMap {} is read where the index-build Job mounts it \
                     (--sources-dir); not available in local mode",
                    source.name,
                    cm.name
                ),
            },
            Some(SourceKind::Http(http)) => match &roots.fetched {
                Some(fetched) => match fetched.get(&source.name) {
                    Some(path) => SourceLocation::Path { path: path.clone() },
                    None => continue,
                },
                None => bail!(
                    "source {}: {} must be fetched before the build (`index` does; `serve` \
                     does not)",
                    source.name,
                    http.url
                ),
            },
            None => bail!(
                "source {}: exactly one of inline, configMap, volume, http must be set",
                source.name
            ),
        };
        sources.push(SourceSpec {
            name: source.name.clone(),
            format: format(source.format),
            freshness_class: source.freshness_class().to_owned(),
            location,
            resolved_tags: source.resolved_tags.clone(),
        });
    }
    let mut freshness_classes = switchboard_index::spec::default_freshness_classes();
    let days = |d: &switchboard_crds::GoDuration| d.duration().as_secs_f64() / 86_400.0;
    for class in &spec.freshness_classes {
        // A declared class replaces the built-in of that name entirely (as the CRD documents):
        // without `staleAfter` it is never stale.
        freshness_classes.insert(
            class.name.clone(),
            FreshnessClass {
                half_life_days: class.half_life.as_ref().map(days),
                stale_after_days: class.stale_after.as_ref().map(days),
            },
        );
    }
    let max_tokens = spec.chunking.max_tokens.max(1) as usize;
    let overlap = spec.chunking.overlap_tokens.max(0) as usize;
    let chunking = match spec.chunking.strategy {
        ChunkingStrategy::Fixed => ChunkingSpec::Fixed {
            max_tokens,
            overlap,
        },
        ChunkingStrategy::Hierarchical => ChunkingSpec::Hierarchical {
            max_tokens,
            overlap,
        },
    };
    Ok(IndexSpec {
        sources,
        freshness_classes,
        chunking,
    })
}

/// A source that could not be read before the build. It is reported in the build report and
/// left out of the generation; the build goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFailure {
    /// `spec.sources[].name`.
    pub source: String,
    /// `FetchFailed` or `DigestMismatch`.
    pub reason: &'static str,
    /// What happened.
    pub message: String,
}

/// Largest HTTP source body (the index's limit on one file).
pub const MAX_HTTP_SOURCE_BYTES: usize = switchboard_index::ingest::MAX_FILE_BYTES as usize;

/// Time allowed to fetch one HTTP source, body included.
pub const HTTP_SOURCE_TIMEOUT: Duration = Duration::from_secs(120);

/// Fetches the HTTP sources of `kb` into `dir` (`<dir>/<source name>/<last URL path segment>`),
/// each within `timeout` and [`MAX_HTTP_SOURCE_BYTES`], checking `sha256` when set. Returns the
/// fetched files by source name and the sources that failed; one failure never stops the others.
pub async fn fetch_http_sources(
    kb: &KnowledgeBase,
    dir: &Path,
    client: &crate::http_client::HttpClient,
    timeout: Duration,
) -> (BTreeMap<String, PathBuf>, Vec<SourceFailure>) {
    let mut fetched = BTreeMap::new();
    let mut failures = Vec::new();
    for source in &kb.spec.sources {
        let Some(SourceKind::Http(http)) = source.kind() else {
            continue;
        };
        let fail = |reason, message| SourceFailure {
            source: source.name.clone(),
            reason,
            message,
        };
        let body = match tokio::time::timeout(timeout, client.get(&http.url, MAX_HTTP_SOURCE_BYTES))
            .await
        {
            Ok(Ok(body)) => body,
            Ok(Err(e)) => {
                // A refusal names the rule; no response body is ever quoted.
                let reason = if e.contains(switchboard_artifact::egress::REFUSED) {
                    "EgressRefused"
                } else {
                    "FetchFailed"
                };
                failures.push(fail(reason, format!("GET {}: {e}", http.url)));
                continue;
            }
            Err(_) => {
                failures.push(fail(
                    "FetchFailed",
                    format!("GET {}: timed out after {timeout:?}", http.url),
                ));
                continue;
            }
        };
        if let Some(want) = &http.sha256 {
            let got = crate::artifacts::hex(&sha2::Sha256::digest(&body));
            if !want.matches_hex(&got) {
                failures.push(fail(
                    "DigestMismatch",
                    format!(
                        "{} has sha256:{got}, the spec expects {}",
                        http.url,
                        want.as_str()
                    ),
                ));
                continue;
            }
        }
        let folder = dir.join(&source.name);
        let path = folder.join(url_file_name(&http.url));
        let written = std::fs::create_dir_all(&folder).and_then(|()| std::fs::write(&path, &body));
        match written {
            Ok(()) => {
                fetched.insert(source.name.clone(), path);
            }
            Err(e) => failures.push(fail(
                "FetchFailed",
                format!("writing {}: {e}", path.display()),
            )),
        }
    }
    (fetched, failures)
}

/// The file name a fetched document is indexed under (part of its document id, so stable
/// across builds): the URL's last path segment, reduced to `[A-Za-z0-9._-]`; `document` when
/// that leaves nothing usable.
pub fn url_file_name(url: &str) -> String {
    let without_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let path = without_scheme.split(['?', '#']).next().unwrap_or_default();
    let last = path
        .split_once('/')
        .map_or("", |(_, p)| p)
        .rsplit('/')
        .next()
        .unwrap_or_default();
    let name: String = last
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .collect();
    if name.trim_matches('.').is_empty() {
        "document".to_owned()
    } else {
        name
    }
}

/// Search options from `spec.retrieval` (a KnowledgeBase's, or a RuntimeConfig's copy of it).
/// `has_reranker`: whether a cross-encoder is loaded (rerank stays off without one, and the caller
/// says so).
pub fn search_options(r: &Retrieval, has_reranker: bool) -> SearchOptions {
    let w = &r.bm25.field_weights;
    SearchOptions {
        top_k: r.top_k.max(1) as usize,
        bm25: r.bm25.enabled,
        boosts: FieldBoosts {
            title: w.title as f32,
            headings: w.headings as f32,
            body: w.body as f32,
            tags: w.tags as f32,
        },
        dense: r.dense.enabled,
        fusion: match r.fusion.method {
            FusionMethod::ReciprocalRank => Fusion::Rrf {
                k: r.fusion.rrf_k.max(1) as f32,
            },
            FusionMethod::Weighted => {
                let dense = r.fusion.dense_weight.unwrap_or(0.5) as f32;
                Fusion::Weighted {
                    bm25: 1.0 - dense,
                    dense,
                }
            }
        },
        recency: r.recency_decay.enabled,
        rerank: (r.rerank.enabled && has_reranker).then(|| rerank_options(&r.rerank)),
        floor: r
            .min_score
            .map(|s| RelevanceFloor::Dense(s as f32))
            .filter(|_| r.dense.enabled),
        ..SearchOptions::default()
    }
}

/// A KnowledgeBase's rerank settings as search options (a request that asks for a rerank the
/// KnowledgeBase leaves off gets the CRD's defaults: `Rerank::default()`).
pub fn rerank_options(r: &switchboard_crds::knowledge_base::Rerank) -> RerankOptions {
    RerankOptions {
        top_n: r.top_n.max(1) as usize,
        deadline: r.deadline.duration().max(Duration::from_millis(1)),
        weight: r.weight as f32,
    }
}

/// The Routers among the manifests under `path` (a file or a folder, as
/// [`load_knowledge_bases`] reads it), validated.
pub fn load_routers(path: &Path) -> Result<Vec<switchboard_crds::Router>> {
    let mut out = Vec::new();
    for (file, resource) in load_resources(path)? {
        if let Resource::Router(router) = resource {
            router.spec.validate().map_err(|e| {
                anyhow::anyhow!(
                    "{}: Router {}: {e}",
                    file.display(),
                    router.metadata.name.as_deref().unwrap_or_default()
                )
            })?;
            out.push(router);
        }
    }
    Ok(out)
}

/// The RuntimeConfig of the embedded default, compiled by the one compiler
/// ([`switchboard_crds::compile::compile_embedded`]): what the operator would compile for
/// `router` and `kb` serving index generation `generation` (`previous`: the one before), with
/// the AdapterPatches of [`local_adapters`] stable and no experiments (their state lives in a
/// cluster's status, which local manifests don't carry). The Router is reported as
/// `local/<name>` (docs/metrics.md). What the compiler left out is logged.
pub fn local_runtime_config(
    router: &switchboard_crds::Router,
    kb: &KnowledgeBase,
    generation: i64,
    previous: Option<i64>,
    adapters: &[AdapterPatch],
) -> Result<switchboard_crds::runtime_config::RuntimeConfig> {
    let compiled =
        switchboard_crds::compile::compile_embedded(switchboard_crds::compile::EmbeddedInput {
            router,
            knowledge_base: kb,
            generation,
            previous,
            adapters,
        })?;
    for skipped in &compiled.skipped {
        tracing::warn!(kind = skipped.kind, name = %skipped.name, reason = skipped.reason, "{}", skipped.message);
    }
    Ok(compiled.config)
}

/// The number of an index generation id (`gen-000007` -> 7).
pub fn generation_number(id: &str) -> Option<i64> {
    id.strip_prefix("gen-")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rerank_settings_reach_the_search_options() {
        let mut r = Retrieval::default();
        r.rerank.enabled = true;
        r.rerank.model = Some("/models/reranker".into());
        r.rerank.top_n = 12;
        r.rerank.weight = 0.4;
        let rerank = search_options(&r, true).rerank.expect("rerank on");
        assert_eq!(rerank.top_n, 12);
        assert!((rerank.weight - 0.4).abs() < 1e-6);
        // Without a loaded cross-encoder rerank stays off rather than failing the search.
        assert_eq!(search_options(&r, false).rerank, None);
    }

    /// The embedded default and the operator compile the same RuntimeConfig from the same
    /// objects: one compiler, one revision. The operator's side is built here as the API server
    /// would hold the demo's manifests once applied in namespace `local` and rolled out (the
    /// KnowledgeBase at generation 3, each AdapterPatch's version promoted).
    #[test]
    fn embedded_and_operator_paths_compile_the_same_revision() {
        use switchboard_crds::compile::{CompileInput, HoldoutPins, compile};
        let manifests = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/scenario.yaml");
        let routers = load_routers(&manifests).unwrap();
        let kb = select(load_knowledge_bases(&manifests).unwrap(), None).unwrap();
        let patches = load_adapter_patches(&manifests).unwrap();
        assert!(patches.len() >= 2, "the demo has adapters to compile");
        let router = &routers[0];

        let embedded = local_runtime_config(router, &kb, 3, Some(2), &patches).unwrap();

        let in_cluster = |mut v: serde_json::Value, status: serde_json::Value| {
            v["metadata"]["namespace"] = "local".into();
            v["status"] = status;
            v
        };
        let cluster_router: switchboard_crds::Router = serde_json::from_value(in_cluster(
            serde_json::to_value(router).unwrap(),
            serde_json::Value::Null,
        ))
        .unwrap();
        let cluster_kb: KnowledgeBase = serde_json::from_value(in_cluster(
            serde_json::to_value(&kb).unwrap(),
            serde_json::json!({"indexGeneration": 3, "previousGeneration": 2}),
        ))
        .unwrap();
        let cluster_patches: Vec<AdapterPatch> = patches
            .iter()
            .map(|p| {
                let status =
                    serde_json::json!({"phase": "Promoted", "stableVersion": p.spec.version});
                serde_json::from_value(in_cluster(serde_json::to_value(p).unwrap(), status))
                    .unwrap()
            })
            .collect();
        let operator = compile(CompileInput {
            router: &cluster_router,
            knowledge_base: &cluster_kb,
            adapters: &cluster_patches,
            experiments: &[],
            holdout: HoldoutPins::Off,
        })
        .unwrap()
        .config;

        assert_eq!(embedded.revision, operator.revision);
        assert_eq!(embedded, operator);
        assert_eq!(
            embedded.adapters.len(),
            patches.len(),
            "every demo adapter is selected: {:?}",
            embedded.adapters
        );
        // Shares are normalised on both paths (the embedded one used not to).
        assert_eq!(
            embedded.router_policy.exploration_share,
            switchboard_crds::Percent::from_fraction(router.spec.exploration.share.fraction())
        );
    }
}
