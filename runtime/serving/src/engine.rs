//! The serving engine: the RuntimeConfig in force and what it was compiled into (retriever of the
//! pinned index generation, small-model worker with its resident adapters, domain centroids, KB
//! vocabulary, large-model client).
//!
//! A config is applied in full before it is swapped in ([`ArcSwapOption`]): every request loads
//! the [`Active`] snapshot once and finishes on it, so a reload never changes a request midway.
//! A document that fails to apply (missing generation, artifact digest mismatch, adapter that
//! doesn't fit the base model, ...) is rejected and the previous one stays in force. Adapters that
//! the new config no longer names are unloaded only after every request that started on an older
//! snapshot has finished.
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use switchboard_crds::runtime_config::{AdapterConfig, AdapterRole, RuntimeConfig};
use switchboard_index::{Embedder, Generations, Reranker, Retriever};
use switchboard_model::{EncoderWorker, GeneratorWorker};
use switchboard_policy::grounding::{EvidenceModel, TermStats};
use switchboard_policy::{DomainIndex, TokenKeys, Vocabulary};
use switchboard_store::OutcomeStore;

use crate::artifacts::ArtifactCache;
use crate::http_client::HttpClient;
use crate::kb;
use crate::metrics::Metrics;
use crate::models::WorkerEmbedder;
use crate::openai::LargeModel;
use crate::service::RetrievalService;

/// Where the engine finds models, index generations, artifacts and secrets.
#[derive(Clone)]
pub struct EngineOptions {
    /// Index generations: `<data>/<kb name>/`.
    pub data: PathBuf,
    /// Folder searched for model files named by the config when the path itself doesn't exist.
    pub models: PathBuf,
    /// Encoder checkpoint overriding the config's `embeddingModel`.
    pub encoder: Option<PathBuf>,
    /// Cross-encoder for reranking given on the command line (`--reranker`): it overrides the
    /// config's `knowledgeBase.retrieval.rerank.model`.
    pub reranker: Option<Arc<dyn Reranker>>,
    /// Mounted secrets: `<secrets>/<name>/<key>`.
    pub secrets: PathBuf,
    /// Where the Router mounts the claims of `pvc://<claim>/<path>` artifacts and models
    /// (`<pvc_root>/<claim>`).
    pub pvc_root: PathBuf,
    /// Content-addressed adapter cache.
    pub artifacts: PathBuf,
    /// Lifetime of interaction tokens.
    pub token_ttl: Duration,
    /// Serve without the large model, or without rerank, when it cannot be loaded (the embedded
    /// default, whose manifests name cluster paths) instead of rejecting the config.
    pub lenient_large_model: bool,
    /// How local generators load their weights and batch requests.
    pub generation: switchboard_model::generator_worker::WorkerOptions,
    /// Where adapter artifacts may be downloaded from (`--egress-allow`).
    pub egress: switchboard_artifact::egress::EgressPolicy,
    /// Bounds the retrievals running and waiting, across generations and configs
    /// (`--max-concurrent-retrievals`, `--max-queued-retrievals`).
    pub retrieval_admission: Arc<crate::limits::Admission>,
    /// The key units are pseudonymised with before they are stored (`--unit-key-file`;
    /// `switchboard_policy::hash::pseudonym`). Empty in evaluations, whose store is thrown away.
    pub unit_key: Arc<[u8]>,
}

impl std::fmt::Debug for EngineOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineOptions")
            .field("data", &self.data)
            .field("models", &self.models)
            .field("encoder", &self.encoder)
            .field("reranker", &self.reranker.as_ref().map(|r| r.model_id()))
            .field("secrets", &self.secrets)
            .field("artifacts", &self.artifacts)
            .finish()
    }
}

/// Why a config was not applied; the message names the part at fault.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ApplyError(String);

/// The config in force and what it was compiled into. Immutable; replaced as a whole.
pub struct Active {
    /// The document.
    pub config: RuntimeConfig,
    /// `<namespace>/<name>`: the `router` metric label.
    pub router: String,
    /// Retrieval service of the knowledge base.
    pub retrieval: Arc<RetrievalService>,
    /// The pinned index generation.
    pub retriever: Arc<Retriever>,
    /// The previous generation, for experiment arms that pin it.
    pub previous: Option<Arc<Retriever>>,
    /// Sentence encoder (query embedding for adapter selection and shadow divergence).
    pub encoder: Arc<WorkerEmbedder>,
    /// The small model.
    pub small: GeneratorWorker,
    /// Adapters by id (`lineage@version`).
    pub adapters: BTreeMap<String, AdapterConfig>,
    /// Domain centroids by lineage.
    pub domains: DomainIndex,
    /// The lineage serving queries no domain is selected for (`domain.fallback`).
    pub fallback: Option<String>,
    /// The KB vocabulary (rewrite policy, identifier features).
    pub vocabulary: Arc<Vocabulary>,
    /// Term statistics of the pinned generation's chunks (evidence scoring).
    pub terms: Arc<TermStats>,
    /// The large model, when configured.
    pub large: Option<LargeTarget>,
    /// The built-in detectors and the Router's own patterns: applied to what is stored.
    pub redactor: switchboard_policy::redact::Redactor,
}

/// The large model: an endpoint, or a second local model.
#[derive(Debug, Clone)]
pub enum LargeTarget {
    /// OpenAI-compatible endpoint.
    Endpoint(Box<LargeModel>),
    /// A model loaded in this runtime.
    Local(GeneratorWorker),
}

impl std::fmt::Debug for Active {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Active")
            .field("revision", &self.config.revision)
            .field("router", &self.router)
            .field("generation", &self.retriever.generation().id)
            .field("adapters", &self.adapters.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Adapter id in the generator.
pub fn adapter_id(lineage: &str, version: &str) -> String {
    format!("{lineage}@{version}")
}

/// Index generation id of a config's `indexGeneration` number.
pub fn generation_id(n: i64) -> String {
    format!("gen-{n:06}")
}

/// Resources shared across configs, changed only under the apply lock.
#[derive(Default)]
struct Resources {
    encoders: HashMap<PathBuf, Arc<WorkerEmbedder>>,
    /// Keyed by knowledge base, encoder and reranker (a service's reranker is fixed).
    services: HashMap<(String, PathBuf, Option<PathBuf>), Arc<RetrievalService>>,
    /// Cross-encoders loaded from a config's `rerank.model`, by path.
    rerankers: HashMap<PathBuf, Arc<dyn Reranker>>,
    small: Option<(PathBuf, GeneratorWorker)>,
    large_local: Option<(PathBuf, GeneratorWorker)>,
    /// Adapters resident in the current small worker: id -> digest.
    resident: BTreeMap<String, String>,
    vocabularies: HashMap<(String, String), (Arc<Vocabulary>, Arc<TermStats>)>,
}

/// The engine.
pub struct Engine {
    options: EngineOptions,
    metrics: Arc<Metrics>,
    http: HttpClient,
    artifacts: ArtifactCache,
    /// Swapped whole when the key file changes (`watch_keys`).
    keys: arc_swap::ArcSwap<TokenKeys>,
    store: OutcomeStore,
    active: ArcSwapOption<Active>,
    /// Snapshots replaced but possibly still held by requests: their adapters stay resident.
    retiring: std::sync::Mutex<Vec<std::sync::Weak<Active>>>,
    resources: tokio::sync::Mutex<Resources>,
    large_in_flight: Arc<AtomicUsize>,
    shadow_in_flight: Arc<AtomicUsize>,
    /// Scores evidence sentences (`switchboard_policy::grounding`).
    evidence_model: std::sync::RwLock<EvidenceModel>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("options", &self.options)
            .field(
                "active",
                &self
                    .active
                    .load()
                    .as_ref()
                    .map(|a| a.config.revision.clone()),
            )
            .finish_non_exhaustive()
    }
}

fn reject(message: impl Into<String>) -> ApplyError {
    ApplyError(message.into())
}

async fn blocking<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, ApplyError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| reject(format!("{what}: task failed: {e}")))?
        .map_err(|e| reject(format!("{what}: {e}")))
}

impl Engine {
    /// An engine with nothing applied yet; interactions and outcomes go to `store`.
    pub fn new(
        options: EngineOptions,
        metrics: Arc<Metrics>,
        keys: TokenKeys,
        store: OutcomeStore,
    ) -> anyhow::Result<Self> {
        let http = HttpClient::new();
        let artifacts = ArtifactCache::open(
            &options.artifacts,
            HttpClient::with_egress(options.egress.clone()),
        )
        .map_err(|e| {
            anyhow::anyhow!(
                "opening the artifact cache {}: {e}",
                options.artifacts.display()
            )
        })?
        .with_sources(options.pvc_root.clone(), options.secrets.clone());
        Ok(Self {
            options,
            metrics,
            http,
            artifacts,
            keys: arc_swap::ArcSwap::from_pointee(keys),
            store,
            active: ArcSwapOption::empty(),
            retiring: std::sync::Mutex::new(Vec::new()),
            resources: tokio::sync::Mutex::new(Resources::default()),
            large_in_flight: Arc::new(AtomicUsize::new(0)),
            shadow_in_flight: Arc::new(AtomicUsize::new(0)),
            evidence_model: std::sync::RwLock::new(EvidenceModel::default()),
        })
    }

    /// Seeds the encoder cache (the embedded default already loaded one to build the index).
    pub async fn seed_encoder(&self, path: PathBuf, encoder: Arc<WorkerEmbedder>) {
        self.resources.lock().await.encoders.insert(path, encoder);
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The token keys in force.
    pub fn keys(&self) -> Arc<TokenKeys> {
        self.keys.load_full()
    }

    /// Re-reads the token key file every `interval`; a changed file with valid keys replaces the
    /// keys in force (tokens are signed with its first key from then on, and verified with any
    /// of its keys), an invalid one is logged, counted and ignored: the keys in force stay.
    pub async fn watch_keys(self: Arc<Self>, path: PathBuf, interval: Duration) {
        let shown = path.display().to_string();
        crate::auth::follow_file(path, interval, None, |bytes| {
            match TokenKeys::parse(&shown, bytes) {
                Ok(keys) if keys.fingerprints() == self.keys().fingerprints() => {}
                Ok(keys) => {
                    let fingerprints = keys.fingerprints();
                    tracing::info!(path = %shown, signing = %fingerprints[0], keys = ?fingerprints, "token keys reloaded");
                    self.keys.store(Arc::new(keys));
                    self.metrics.token_keys_reload("applied");
                }
                Err(e) => {
                    tracing::error!(error = %e, "token keys rejected; keeping the keys in force");
                    self.metrics.token_keys_reload("rejected");
                }
            }
        })
        .await;
    }

    /// The durable interactions and outcomes (the feedback replay guard across replicas and
    /// restarts).
    pub fn store(&self) -> &OutcomeStore {
        &self.store
    }

    /// Token lifetime.
    pub fn token_ttl(&self) -> Duration {
        self.options.token_ttl
    }

    /// What a unit id is stored as: its pseudonym under the unit key.
    pub fn stored_unit(&self, unit: &str) -> String {
        switchboard_policy::hash::pseudonym(&self.options.unit_key, unit)
    }

    /// The evidence model answers are grounded with.
    pub fn evidence_model(&self) -> EvidenceModel {
        self.evidence_model
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the evidence model (the evaluation's fitted one).
    pub fn set_evidence_model(&self, model: EvidenceModel) {
        *self
            .evidence_model
            .write()
            .unwrap_or_else(|e| e.into_inner()) = model;
    }

    /// The config in force (a snapshot: hold it for the whole request).
    pub fn active(&self) -> Option<Arc<Active>> {
        self.active.load_full()
    }

    /// Shadow runs in flight (bounded by `routerPolicy.shadowMaxConcurrent`).
    pub fn shadow_in_flight(&self) -> &Arc<AtomicUsize> {
        &self.shadow_in_flight
    }

    /// Large-model requests in flight.
    pub fn large_queue_depth(&self) -> usize {
        self.large_in_flight.load(Ordering::Relaxed)
    }

    /// Resolves a model named by the config: the path itself when it exists, else the file (or
    /// folder) of that name under `--models`.
    /// A `pvc://<claim>/<path>` model is read where the Router mounts the claim (`--pvc-root`).
    pub fn resolve_model(&self, spec: &str) -> Result<PathBuf, ApplyError> {
        match switchboard_artifact::ArtifactUri::parse(spec) {
            Ok(switchboard_artifact::ArtifactUri::Pvc { claim, path }) => {
                let local = switchboard_artifact::pvc_path(&self.options.pvc_root, &claim, &path);
                return if local.exists() {
                    Ok(local)
                } else {
                    Err(reject(format!(
                        "model {spec}: {} does not exist (is claim {claim} mounted?)",
                        local.display()
                    )))
                };
            }
            Err(e) if spec.starts_with("pvc://") => return Err(reject(format!("model {e}"))),
            _ => {}
        }
        let path = PathBuf::from(spec.strip_prefix("file://").unwrap_or(spec));
        if path.exists() {
            return Ok(path);
        }
        if let Some(name) = path.file_name() {
            let local = self.options.models.join(name);
            if local.exists() {
                return Ok(local);
            }
        }
        Err(reject(format!(
            "model {spec}: not found (neither the path nor {} exists)",
            self.options
                .models
                .join(path.file_name().unwrap_or_default())
                .display()
        )))
    }

    /// The cross-encoder of `retrieval.rerank`: `--reranker` when given, else `rerank.model`
    /// while rerank is enabled, loaded once per path (a config naming another model hot-reloads
    /// it). One that cannot be found or loaded rejects the config with a message naming it; the
    /// embedded default serves without rerank instead, and says so.
    async fn reranker(
        &self,
        retrieval: &switchboard_crds::knowledge_base::Retrieval,
        res: &mut Resources,
    ) -> Result<Option<(PathBuf, Arc<dyn Reranker>)>, ApplyError> {
        if let Some(reranker) = &self.options.reranker {
            return Ok(Some((PathBuf::from("--reranker"), Arc::clone(reranker))));
        }
        let rerank = &retrieval.rerank;
        let Some(model) = rerank.model.as_deref().filter(|_| rerank.enabled) else {
            return Ok(None);
        };
        let what = format!("knowledgeBase.retrieval.rerank.model {model}");
        let loaded = match self.resolve_model(model) {
            Ok(path) => match res.rerankers.get(&path) {
                Some(r) => Ok((path, Arc::clone(r))),
                None => {
                    let p = path.clone();
                    blocking(&what, move || {
                        switchboard_model::CrossEncoder::load(
                            &p,
                            switchboard_model::default_device(),
                        )
                        .map(|m| {
                            Arc::new(crate::models::CrossEncoderReranker::new(m))
                                as Arc<dyn Reranker>
                        })
                        .map_err(|e| format!("{}: {e}", p.display()))
                    })
                    .await
                    .map(|r| {
                        tracing::info!(model = %path.display(), "reranker loaded");
                        res.rerankers.clear();
                        res.rerankers.insert(path.clone(), Arc::clone(&r));
                        (path, r)
                    })
                }
            },
            Err(e) => Err(reject(format!("knowledgeBase.retrieval.rerank.model: {e}"))),
        };
        match loaded {
            Ok(loaded) => Ok(Some(loaded)),
            Err(e) if self.options.lenient_large_model => {
                tracing::warn!(error = %e, "serving without rerank");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn read_secret(&self, name: &str, key: &str) -> Option<String> {
        let path = self.options.secrets.join(name).join(key);
        match std::fs::read_to_string(&path) {
            Ok(s) => Some(s.trim().to_owned()),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "large-model API key not readable; calling the endpoint without one");
                None
            }
        }
    }

    /// Applies `config`: loads everything it names, swaps it in, and schedules the unloading of
    /// adapters it no longer names. On error nothing changes for requests.
    pub async fn apply(self: &Arc<Self>, config: RuntimeConfig) -> Result<(), ApplyError> {
        let started = Instant::now();
        let mut res = self.resources.lock().await;
        let kb_config = &config.knowledge_base;

        // Encoder.
        let encoder_path = match &self.options.encoder {
            Some(p) => p.clone(),
            None => self.resolve_model(&kb_config.embedding_model)?,
        };
        let encoder = match res.encoders.get(&encoder_path) {
            Some(e) => Arc::clone(e),
            None => {
                let path = encoder_path.clone();
                let worker = blocking("loading the encoder", move || {
                    EncoderWorker::spawn("encoder", &path, switchboard_model::default_device(), 32)
                        .map_err(|e| format!("{}: {e}", path.display()))
                })
                .await?;
                let e = Arc::new(WorkerEmbedder::new(worker));
                res.encoders.insert(encoder_path.clone(), Arc::clone(&e));
                e
            }
        };

        // Retrieval service (with its reranker) and the pinned generation(s).
        let reranker = self.reranker(&kb_config.retrieval, &mut res).await?;
        let key = (
            kb_config.name.clone(),
            encoder_path.clone(),
            reranker.as_ref().map(|(path, _)| path.clone()),
        );
        let service = match res.services.get(&key) {
            Some(s) => Arc::clone(s),
            None => {
                let root = self.options.data.join(&kb_config.name);
                let store = Generations::open(&root)
                    .map_err(|e| reject(format!("index store {}: {e}", root.display())))?;
                let embedder: Arc<dyn Embedder> = encoder.clone();
                let reranker = reranker.map(|(_, r)| r);
                let s = Arc::new(RetrievalService::new(
                    kb_config.name.clone(),
                    store,
                    Some(embedder),
                    reranker.clone(),
                    kb::search_options(&kb_config.retrieval, reranker.is_some()),
                    Arc::clone(&self.metrics),
                    Arc::clone(&self.options.retrieval_admission),
                ));
                // A service replaced (another encoder or reranker) is held only by the snapshots
                // still using it.
                res.services.retain(|(kb, _, _), _| *kb != kb_config.name);
                res.services.insert(key, Arc::clone(&s));
                s
            }
        };
        let id = generation_id(kb_config.index_generation);
        let retriever = {
            let (s, id) = (Arc::clone(&service), id.clone());
            blocking(
                &format!("knowledgeBase {} generation {id}", kb_config.name),
                move || s.retriever(&id).map_err(|e| e.to_string()),
            )
            .await?
        };
        let previous = match kb_config.previous_generation {
            Some(n) => {
                let (s, id) = (Arc::clone(&service), generation_id(n));
                match blocking("previous generation", move || {
                    s.retriever(&id).map_err(|e| e.to_string())
                })
                .await
                {
                    Ok(r) => Some(r),
                    Err(e) => {
                        tracing::warn!(error = %e, "previous index generation not loadable; arms pinning it get the current one");
                        None
                    }
                }
            }
            None => None,
        };
        let (vocabulary, terms) = {
            let key = (kb_config.name.clone(), id.clone());
            match res.vocabularies.get(&key) {
                Some((v, t)) => (Arc::clone(v), Arc::clone(t)),
                None => {
                    let r = Arc::clone(&retriever);
                    let (v, t) = blocking("vocabulary", move || {
                        let chunks = r.generation().chunks();
                        let texts: Vec<String> =
                            chunks.iter().map(|c| c.embedding_text()).collect();
                        Ok((
                            Vocabulary::from_texts(chunks.iter().map(|c| c.text.as_str())),
                            TermStats::from_texts(texts.iter().map(String::as_str)),
                        ))
                    })
                    .await?;
                    let (v, t) = (Arc::new(v), Arc::new(t));
                    res.vocabularies.clear();
                    res.vocabularies
                        .insert(key, (Arc::clone(&v), Arc::clone(&t)));
                    (v, t)
                }
            }
        };

        // Small model (a changed model starts a new worker; the old one ends with the last
        // request holding it).
        let small_path = self.resolve_model(&config.small_model.model)?;
        let small = match &res.small {
            Some((path, worker)) if *path == small_path => worker.clone(),
            _ => {
                let path = small_path.clone();
                let generation = self.options.generation;
                let worker = blocking("loading the small model", move || {
                    GeneratorWorker::spawn_with("small", &path, generation)
                        .map_err(|e| format!("{}: {e}", path.display()))
                })
                .await?;
                res.small = Some((small_path.clone(), worker.clone()));
                res.resident.clear();
                worker
            }
        };
        small.set_queue_limit(
            usize::try_from(config.small_model.max_queue_depth.max(1)).unwrap_or(1),
        );

        // Adapters.
        let servable: Vec<&AdapterConfig> = config.adapters.iter().collect();
        let max = usize::try_from(config.small_model.max_active_adapters.max(1)).unwrap_or(1);
        if servable.len() > max {
            return Err(reject(format!(
                "{} adapters exceed smallModel.maxActiveAdapters {max}",
                servable.len()
            )));
        }
        let mut adapters = BTreeMap::new();
        for adapter in servable {
            let id = adapter_id(&adapter.lineage, &adapter.version);
            let digest = adapter.artifact.sha256.hex().to_owned();
            if res.resident.get(&id) != Some(&digest) {
                let dir = self
                    .artifacts
                    .ensure(&adapter.artifact)
                    .await
                    .map_err(|e| reject(format!("adapter {id}: {e}")))?;
                small
                    .load_adapter(id.clone(), dir)
                    .await
                    .map_err(|e| reject(format!("adapter {id}: {e}")))?;
                tracing::info!(adapter = %id, role = ?adapter.role, "adapter loaded");
                res.resident.insert(id.clone(), digest);
            }
            adapters.insert(id, adapter.clone());
        }

        // Domain centroids: one per lineage, from its serving version's domain (the stable one
        // when there is one; a shadow-only lineage is never selected by similarity).
        let mut domains: BTreeMap<String, Vec<String>> = BTreeMap::new();
        // The fallback lineage (at most one, by validation) serves what no domain claims; its
        // own domain is never compared with queries.
        let fallback = config
            .adapters
            .iter()
            .find(|a| a.domain.fallback && a.role == AdapterRole::Stable)
            .map(|a| a.lineage.clone());
        for adapter in config.adapters.iter().filter(|a| {
            matches!(a.role, AdapterRole::Stable | AdapterRole::Canary) && !a.domain.fallback
        }) {
            let texts = domains.entry(adapter.lineage.clone()).or_default();
            if texts.is_empty() || adapter.role == AdapterRole::Stable {
                texts.clear();
                texts.push(adapter.domain.description.clone());
                texts.extend(adapter.domain.example_queries.iter().cloned());
                texts.retain(|t| !t.trim().is_empty());
            }
        }
        let domains = {
            let encoder = Arc::clone(&encoder);
            blocking("embedding adapter domains", move || {
                let mut out = Vec::new();
                for (lineage, texts) in domains {
                    if texts.is_empty() {
                        continue;
                    }
                    let vectors = encoder.embed(&texts).map_err(|e| e.to_string())?;
                    out.push((lineage, vectors));
                }
                Ok(DomainIndex::new(out))
            })
            .await?
        };

        // Large model.
        let large = match (&config.large_model.endpoint, &config.large_model.local) {
            (Some(endpoint), _) => {
                let api_key = endpoint
                    .secret_ref
                    .as_ref()
                    .and_then(|s| self.read_secret(&s.name, &s.key));
                Some(LargeTarget::Endpoint(Box::new(LargeModel::new(
                    endpoint.clone(),
                    api_key,
                    self.http.clone(),
                    Arc::clone(&self.large_in_flight),
                ))))
            }
            (None, Some(local)) => {
                let loaded = match self.resolve_model(local) {
                    Ok(path) => match &res.large_local {
                        Some((p, w)) if *p == path => Ok(w.clone()),
                        _ => {
                            let p = path.clone();
                            let generation = self.options.generation;
                            blocking("loading the local large model", move || {
                                GeneratorWorker::spawn_with("large", &p, generation)
                                    .map_err(|e| format!("{}: {e}", p.display()))
                            })
                            .await
                            .inspect(|w| res.large_local = Some((path, w.clone())))
                        }
                    },
                    Err(e) => Err(e),
                };
                match loaded {
                    Ok(worker) => Some(LargeTarget::Local(worker)),
                    Err(e) if self.options.lenient_large_model => {
                        tracing::warn!(error = %e, "serving without the large model");
                        None
                    }
                    Err(e) => return Err(e),
                }
            }
            (None, None) => None,
        };

        service.set_options(kb::search_options(
            &config.knowledge_base.retrieval,
            service.has_reranker(),
        ));
        let redactor = switchboard_policy::redact::Redactor::new(&config.router_policy.redact)
            .map_err(reject)?;
        let router = format!("{}/{}", config.router.namespace, config.router.name);
        let active = Arc::new(Active {
            redactor,
            router: router.clone(),
            retrieval: Arc::clone(&service),
            retriever: Arc::clone(&retriever),
            previous,
            encoder,
            small,
            adapters,
            domains,
            fallback,
            vocabulary,
            terms,
            large,
            config,
        });
        service.serve(retriever);
        let old = self.active.swap(Some(Arc::clone(&active)));
        self.metrics
            .config_in_force(&router, &active.config.revision);
        initialise_served_series(&self.metrics, &router, &active.config);
        tracing::info!(
            revision = %active.config.revision,
            router = %router,
            generation = %active.retriever.generation().id,
            adapters = ?active.adapters.keys().collect::<Vec<_>>(),
            millis = started.elapsed().as_millis() as u64,
            "RuntimeConfig applied"
        );
        drop(res);
        if let Some(old) = old {
            self.retiring
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(Arc::downgrade(&old));
            let engine = Arc::clone(self);
            tokio::spawn(async move { engine.retire(old).await });
        }
        Ok(())
    }

    /// Waits until no request holds `old` (or a generous deadline), then unloads adapters that
    /// neither the config now in force nor a snapshot still held by a request names.
    async fn retire(&self, old: Arc<Active>) {
        let deadline = Instant::now() + Duration::from_secs(300);
        while Arc::strong_count(&old) > 1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(old);
        let mut res = self.resources.lock().await;
        let Some(current) = self.active.load_full() else {
            return;
        };
        let Some((_, small)) = res.small.clone() else {
            return;
        };
        let mut keep: std::collections::BTreeSet<String> =
            current.adapters.keys().cloned().collect();
        {
            let mut retiring = self
                .retiring
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            retiring.retain(|w| w.strong_count() > 0);
            for snapshot in retiring.iter().filter_map(std::sync::Weak::upgrade) {
                keep.extend(snapshot.adapters.keys().cloned());
            }
        }
        let stale: Vec<String> = res
            .resident
            .keys()
            .filter(|id| !keep.contains(*id))
            .cloned()
            .collect();
        for id in stale {
            match small.unload_adapter(id.clone()).await {
                Ok(_) => {
                    tracing::info!(adapter = %id, "adapter unloaded");
                    res.resident.remove(&id);
                }
                Err(e) => tracing::warn!(adapter = %id, error = %e, "unloading adapter failed"),
            }
        }
    }

    /// Ids of the adapters resident in the small model.
    pub async fn resident_adapters(&self) -> Vec<String> {
        match self.active() {
            Some(active) => active.small.adapters().await.unwrap_or_default(),
            None => Vec::new(),
        }
    }

    /// Reads `path` every `interval` and applies a changed, valid document. Content is compared
    /// (ConfigMap volumes change by symlink swap, which file events don't report reliably). A
    /// document that doesn't parse or validate is rejected until its content changes; one that
    /// fails to apply (e.g. an artifact not reachable yet) is retried every 10 s.
    pub async fn watch_file(self: Arc<Self>, path: PathBuf, interval: Duration) {
        let mut last: Option<Vec<u8>> = None;
        let mut failed_apply: Option<Instant> = None;
        let mut missing_logged = false;
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let bytes = match tokio::fs::read(&path).await {
                Ok(b) => {
                    missing_logged = false;
                    b
                }
                Err(e) => {
                    if !missing_logged {
                        tracing::warn!(path = %path.display(), error = %e, "RuntimeConfig not readable; keeping the config in force");
                        missing_logged = true;
                    }
                    continue;
                }
            };
            let retry = failed_apply.is_some_and(|t| t.elapsed() >= Duration::from_secs(10));
            if last.as_deref() == Some(bytes.as_slice()) && !retry {
                continue;
            }
            last = Some(bytes.clone());
            failed_apply = None;
            if let Err(true) = self.offer(&bytes, &path).await {
                failed_apply = Some(Instant::now());
            }
        }
    }

    /// Parses, validates and applies one document; `Err(true)` when it was valid but failed to
    /// apply (worth retrying), `Err(false)` when it is invalid.
    pub async fn offer(self: &Arc<Self>, bytes: &[u8], source: &Path) -> Result<(), bool> {
        let config = match RuntimeConfig::from_json(bytes) {
            Ok(c) => c,
            Err(e) => {
                self.metrics.config_reload("rejected");
                tracing::error!(path = %source.display(), error = %e, "RuntimeConfig rejected; keeping the config in force");
                return Err(false);
            }
        };
        if self
            .active()
            .is_some_and(|a| a.config.revision == config.revision)
        {
            self.metrics.config_reload("unchanged");
            return Ok(());
        }
        let revision = config.revision.clone();
        match self.apply(config).await {
            Ok(()) => {
                self.metrics.config_reload("applied");
                Ok(())
            }
            Err(e) => {
                self.metrics.config_reload("rejected");
                tracing::error!(path = %source.display(), %revision, error = %e, "RuntimeConfig not applied; keeping the config in force");
                Err(true)
            }
        }
    }
}

/// Creates at zero the outcome series of every variant `config` serves without an experiment
/// (the base model, and each stable or canary adapter), so a guardrail counts a new version's
/// first answers too (see [`Metrics::initialise`]).
fn initialise_served_series(metrics: &Metrics, router: &str, config: &RuntimeConfig) {
    let variant = |lineage: &str, version: &str, role: &str| crate::metrics::Variant {
        router: router.to_owned(),
        lineage: lineage.to_owned(),
        adapter_version: version.to_owned(),
        adapter_role: role.to_owned(),
        experiment: String::new(),
        arm: String::new(),
        model: "small".to_owned(),
    };
    let windows: Vec<Duration> = config
        .guardrail_settle_windows
        .iter()
        .map(switchboard_crds::units::GoDuration::duration)
        .collect();
    metrics.initialise(&variant("", "", ""), &windows);
    for adapter in &config.adapters {
        let role = match adapter.role {
            AdapterRole::Stable => "stable",
            AdapterRole::Canary => "canary",
            AdapterRole::Shadow | AdapterRole::Pinned => continue,
        };
        metrics.initialise(&variant(&adapter.lineage, &adapter.version, role), &windows);
    }
    // The Router holdout's units: each pinned version, and the base model for the rest.
    if let Some(holdout) = &config.holdout {
        let held_out = |mut v: crate::metrics::Variant| {
            v.arm = switchboard_crds::runtime_config::HOLDOUT_ARM.to_owned();
            v
        };
        metrics.initialise(&held_out(variant("", "", "")), &windows);
        for (lineage, version) in &holdout.pinned {
            metrics.initialise(&held_out(variant(lineage, version, "pinned")), &windows);
        }
    }
}
