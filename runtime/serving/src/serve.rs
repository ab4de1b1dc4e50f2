//! `index` and `serve`: build index generations from KnowledgeBase manifests and serve them over
//! gRPC and HTTP.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use switchboard_crds::KnowledgeBase;
use switchboard_index::{BuildOptions, BuildReport, Embedder, Generations, Reranker};
use switchboard_model::generator_worker::WorkerOptions;
use switchboard_model::{CrossEncoder, EncoderWorker};
use switchboard_store::OutcomeStore;

use crate::engine::{Engine, EngineOptions};
use crate::grpc::{GrpcAssistant, GrpcRetrieval};
use crate::http::{HttpState, admin_router, public_router};
use crate::kb;
use crate::metrics::Metrics;
use crate::models::{CrossEncoderReranker, WorkerEmbedder};
use crate::service::RetrievalService;

/// Where the knowledge base comes from and where its generations live.
#[derive(Debug, Clone, clap::Args)]
pub struct KbArgs {
    /// A manifest file or a folder of manifests (the embedded default: `examples/`).
    #[arg(long, default_value = "examples")]
    pub manifests: PathBuf,
    /// Which KnowledgeBase to use when the manifests hold several.
    #[arg(long)]
    pub knowledge_base: Option<String>,
    /// Folder for index generations (one subfolder per KnowledgeBase).
    #[arg(long, default_value = ".cache/switchboard/index")]
    pub data: PathBuf,
    /// Sentence encoder checkpoint; defaults to the KnowledgeBase's `spec.embedding.model` when
    /// that exists, else the encoder hack/setup.sh installs.
    #[arg(long, env = "SWITCHBOARD_ENCODER")]
    pub encoder: Option<PathBuf>,
}

/// The KnowledgeBase, its generation store and its encoder, loaded.
pub struct Loaded {
    /// The manifest.
    pub kb: KnowledgeBase,
    /// Base folder for volume paths.
    pub base: PathBuf,
    /// The generation store.
    pub store: Generations,
    /// The encoder.
    pub embedder: Arc<WorkerEmbedder>,
    /// Its checkpoint.
    pub encoder_path: PathBuf,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("kb", &kb::name(&self.kb))
            .field("base", &self.base)
            .field("encoder_path", &self.encoder_path)
            .finish_non_exhaustive()
    }
}

impl KbArgs {
    /// Reads the manifests, opens the store and starts the encoder.
    pub fn load(&self) -> Result<Loaded> {
        let kbs = kb::load_knowledge_bases(&self.manifests)?;
        let kb = kb::select(kbs, self.knowledge_base.as_deref())?;
        let base = if self.manifests.is_dir() {
            self.manifests.clone()
        } else {
            self.manifests
                .parent()
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
        };
        let store = Generations::open(self.data.join(kb::name(&kb)))
            .with_context(|| format!("opening index store under {}", self.data.display()))?;
        let encoder = self.encoder.clone().unwrap_or_else(|| {
            let from_spec = PathBuf::from(&kb.spec.embedding.model);
            if from_spec.join("config.json").exists() {
                from_spec
            } else {
                PathBuf::from(".cache/models/all-MiniLM-L6-v2")
            }
        });
        let worker =
            EncoderWorker::spawn("encoder", &encoder, switchboard_model::default_device(), 32)
                .with_context(|| format!("loading encoder {}", encoder.display()))?;
        Ok(Loaded {
            kb,
            base,
            store,
            embedder: Arc::new(WorkerEmbedder::new(worker)),
            encoder_path: encoder,
        })
    }
}

/// Builds a generation of `spec` (the index spec of `loaded.kb`, reusing unchanged sources) and,
/// with `publish`, publishes it and prunes to `keep` generations.
pub fn build_and_publish(
    loaded: &Loaded,
    spec: &switchboard_index::IndexSpec,
    publish: bool,
    keep: usize,
) -> Result<BuildReport> {
    let report = switchboard_index::build(
        spec,
        &loaded.store,
        loaded.embedder.as_ref(),
        &BuildOptions {
            embed_batch: 64,
            reuse: true,
        },
    )
    .with_context(|| {
        format!(
            "building an index of KnowledgeBase {}",
            kb::name(&loaded.kb)
        )
    })?;
    if publish {
        loaded.store.publish(&report.manifest.generation)?;
        let pruned = loaded.store.prune(keep.max(2))?;
        if !pruned.is_empty() {
            tracing::info!(?pruned, "pruned old index generations");
        }
    }
    Ok(report)
}

/// Prints a build report for people.
pub fn print_report(report: &BuildReport) {
    let m = &report.manifest;
    println!(
        "generation {}: {} documents, {} sections, {} chunks ({} embedded, {} vectors reused{}) in {:.2}s",
        m.generation,
        m.documents,
        m.sections,
        m.chunks,
        report.chunks_embedded,
        report.vectors_reused,
        report
            .reused_from
            .as_ref()
            .map(|g| format!(" from {g}"))
            .unwrap_or_default(),
        m.build_millis as f64 / 1e3
    );
    for source in &m.sources {
        println!(
            "  source {:<22} {:>3} documents {:>4} chunks{}{}",
            source.name,
            source.documents,
            source.chunks,
            if source.reused {
                "  (unchanged, reused)"
            } else {
                ""
            },
            if source.errors.is_empty() {
                String::new()
            } else {
                format!("  {} errors", source.errors.len())
            }
        );
        for issue in &source.errors {
            println!("      error: {}: {}", issue.item, issue.reason);
        }
    }
    let c = &report.consistency;
    println!(
        "  {} contradiction candidates among {} claims ({}/{})",
        c.total,
        c.claims,
        report.path.display(),
        switchboard_index::consistency::REPORT_FILE
    );
    for candidate in c.contradictions.iter().take(3) {
        println!(
            "      {} {:?} vs {} {:?}",
            candidate.a.doc_id, candidate.a.value, candidate.b.doc_id, candidate.b.value
        );
    }
}

/// Options of `serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    kb: KbArgs,
    /// Internal address blocks adapter artifacts may be downloaded from, comma-separated
    /// (`10.20.0.0/16,fd00::/8`; `*`: any). Public addresses only by default (docs/security.md);
    /// the operator passes its own `--egress-allow` to the pods it creates.
    #[arg(long, env = "SWITCHBOARD_EGRESS_ALLOW", default_value = "", value_parser = parse_egress)]
    egress_allow: switchboard_artifact::egress::EgressPolicy,
    /// gRPC listen address.
    #[arg(long, default_value = "127.0.0.1:50051")]
    grpc_addr: SocketAddr,
    /// HTTP listen address of the public API (answers, retrieval, feedback, chat completions,
    /// /metrics, /healthz, /readyz).
    #[arg(long, default_value = "127.0.0.1:8080")]
    http_addr: SocketAddr,
    /// HTTP listen address of the admin API (config, coverage gaps, hits, CUPED sums,
    /// generations, switch-back): always authenticated, never behind the Router's Service.
    #[arg(long, default_value = "127.0.0.1:8081")]
    admin_addr: SocketAddr,
    /// Bearer tokens of the admin API, one per line (the operator's is in the Router's
    /// `<router>-runtime-token` Secret). Without it a random token is written to
    /// `<data>/admin-token` (mode 0600) at start-up.
    #[arg(long, env = "SWITCHBOARD_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
    /// Bearer tokens the public API (HTTP and gRPC) requires, one per line: a Router's
    /// `spec.access.clientTokens`. Without it the public API is open to whoever can reach it
    /// (the Router's NetworkPolicy decides who can).
    #[arg(long, env = "SWITCHBOARD_CLIENT_TOKEN_FILE")]
    client_token_file: Option<PathBuf>,
    /// The key unit ids are pseudonymised with before they are stored (HMAC-SHA256; the
    /// Router's `<router>-runtime-token` Secret holds it). Without it `<data>/unit-key` is used,
    /// created once (mode 0600) and kept: a new key would split every unit's history.
    #[arg(long, env = "SWITCHBOARD_UNIT_KEY_FILE")]
    unit_key_file: Option<PathBuf>,
    /// Serve gRPC server reflection (lists every service and message: for grpcurl while
    /// developing; off in the pods the operator creates).
    #[arg(long)]
    grpc_reflection: bool,
    /// Cross-encoder checkpoint (BertForSequenceClassification) for reranking.
    #[arg(long, env = "SWITCHBOARD_RERANKER")]
    reranker: Option<PathBuf>,
    /// Serve the published generation as it is instead of (re)building at start-up.
    #[arg(long)]
    no_build: bool,
    /// How often to look for a newly published generation.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    reload_interval: Duration,
    /// Operator mode: the RuntimeConfig JSON to serve, polled for changes and hot-reloaded
    /// (`--manifests` is then not read; index generations come from `--data/<kb name>/`).
    #[arg(long)]
    runtime_config: Option<PathBuf>,
    /// How often the RuntimeConfig file is read for changes.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    config_poll_interval: Duration,
    /// Content-addressed adapter artifact cache (`sha256-<hex>/` per adapter).
    #[arg(long, default_value = ".cache/switchboard/artifacts")]
    artifacts: PathBuf,
    /// HMAC keys for interaction tokens, one per line (the first signs). Without it a random
    /// per-process key is used and tokens die with the process.
    #[arg(long, env = "SWITCHBOARD_TOKEN_KEY_FILE")]
    token_key_file: Option<PathBuf>,
    /// Lifetime of interaction tokens (feedback after it is refused as expired).
    #[arg(long, default_value = "168h", value_parser = parse_duration)]
    token_ttl: Duration,
    /// Folder searched for model files the config names by a path that doesn't exist here.
    #[arg(long, default_value = ".cache/models")]
    models: PathBuf,
    /// Mounted Secrets: the large model's API key is read from `<secrets>/<name>/<key>`, an
    /// `oci://` adapter's registry credentials from `<secrets>/<pullSecret>/.dockerconfigjson`.
    #[arg(long, default_value = "/etc/switchboard/secrets")]
    secrets: PathBuf,
    /// Where the Router mounts the claims that `pvc://<claim>/<path>` adapter artifacts and
    /// models name: `<pvc-root>/<claim>/<path>` (default: `/var/run/switchboard/pvc` with
    /// `--runtime-config`; the manifests' folder in the embedded default, so
    /// `pvc://adapters/x/1.0.0` in `examples/scenario.yaml` is `examples/adapters/x/1.0.0`).
    #[arg(long)]
    pvc_root: Option<PathBuf>,
    /// Where interactions and outcomes are stored (the feedback replay guard, experiment and
    /// training data): `sqlite://<path>` (embedded, one replica) or `postgres://...` (shared by
    /// every replica of a Router).
    #[arg(
        long,
        env = "SWITCHBOARD_OUTCOME_STORE",
        default_value = "sqlite://.cache/switchboard/outcomes.db",
        hide_env_values = true
    )]
    outcome_store: String,
    /// Form of the generators' decoder weights: `int4` decodes with 4-bit weights (a GGUF Q4
    /// file's own; a dense checkpoint is quantised on load) for speed on a CPU, `dense` with f32.
    #[arg(long, env = "SWITCHBOARD_GENERATION_WEIGHTS", default_value = "int4")]
    generation_weights: switchboard_model::llama::WeightFormat,
    /// Sequences a generator decodes together (continuous batching; each one's key/value cache
    /// is held in memory while it runs).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    max_batch: u16,
    /// Prompt tokens prefilled per step while other sequences decode (bounds how long a new
    /// prompt pauses the streams in flight).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u16).range(16..))]
    prefill_chunk: u16,
    /// How long interactions and outcomes are kept (at least the token lifetime: a pruned
    /// interaction's token must have expired, or its feedback could count twice).
    #[arg(long, default_value = "2160h", value_parser = parse_duration)]
    outcome_retention: Duration,
    #[command(flatten)]
    limits: crate::limits::LimitArgs,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    switchboard_crds::parse_duration(s).map_err(|e| e.to_string())
}

fn load_reranker(args: &ServeArgs) -> Result<Option<Arc<dyn Reranker>>> {
    Ok(match &args.reranker {
        Some(dir) => Some(Arc::new(CrossEncoderReranker::new(
            CrossEncoder::load(dir, switchboard_model::default_device())
                .with_context(|| format!("loading reranker {}", dir.display()))?,
        ))),
        None => None,
    })
}

fn token_keys(args: &ServeArgs) -> Result<switchboard_policy::TokenKeys> {
    match &args.token_key_file {
        Some(path) => Ok(switchboard_policy::TokenKeys::from_file(path)?),
        None => {
            tracing::warn!(
                "no --token-key-file: interaction tokens are signed with a random per-process key"
            );
            Ok(switchboard_policy::TokenKeys::random().context("reading /dev/urandom")?)
        }
    }
}

/// Follows `--token-key-file` for rotations (a no-op task without one).
fn watch_keys(args: &ServeArgs, engine: &Arc<Engine>) -> tokio::task::JoinHandle<()> {
    match args.token_key_file.clone() {
        Some(path) => tokio::spawn(
            Arc::clone(engine)
                .watch_keys(path, args.config_poll_interval.max(Duration::from_secs(1))),
        ),
        None => tokio::spawn(async {}),
    }
}

/// The unit pseudonym key: `--unit-key-file`, else `<data>/unit-key` (created once, mode 0600).
fn unit_key(args: &ServeArgs) -> Result<Arc<[u8]>> {
    let path = match &args.unit_key_file {
        Some(path) => path.clone(),
        None => {
            let path = args.kb.data.join("unit-key");
            if !path.exists() {
                // Another process creating it first is fine: its key is used.
                if let Err(e) = crate::auth::write_private(&path, &crate::auth::random_hex(32)?)
                    && !path.exists()
                {
                    return Err(e);
                }
            }
            path
        }
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading the unit key {}", path.display()))?;
    let key = text.trim();
    anyhow::ensure!(
        key.len() >= 32,
        "{}: the unit key must be at least 32 characters",
        path.display()
    );
    Ok(Arc::from(key.as_bytes()))
}

fn engine_options(args: &ServeArgs, reranker: Option<Arc<dyn Reranker>>) -> Result<EngineOptions> {
    Ok(EngineOptions {
        data: args.kb.data.clone(),
        models: args.models.clone(),
        encoder: args.kb.encoder.clone(),
        reranker,
        secrets: args.secrets.clone(),
        pvc_root: args
            .pvc_root
            .clone()
            .unwrap_or_else(|| PathBuf::from(switchboard_artifact::PVC_ROOT)),
        artifacts: args.artifacts.clone(),
        token_ttl: args.token_ttl,
        generation: WorkerOptions {
            max_batch: usize::from(args.max_batch),
            prefill_chunk: usize::from(args.prefill_chunk),
            ..WorkerOptions::new(switchboard_model::default_device())
        }
        .weights(args.generation_weights),
        lenient_large_model: args.runtime_config.is_none(),
        egress: args.egress_allow.clone(),
        retrieval_admission: args.limits.retrieval_admission(),
        unit_key: unit_key(args)?,
    })
}

/// Opens the outcome store and prunes it hourly past the retention.
async fn outcome_store(args: &ServeArgs, metrics: &Arc<Metrics>) -> Result<OutcomeStore> {
    if args.outcome_retention < args.token_ttl {
        anyhow::bail!(
            "--outcome-retention ({:?}) is shorter than --token-ttl ({:?}): feedback for a pruned interaction would count again",
            args.outcome_retention,
            args.token_ttl
        );
    }
    let store = OutcomeStore::connect(&args.outcome_store).await?;
    tracing::info!(store = %store.url(), backend = store.backend().as_str(), "outcome store ready");
    let pruner = store.clone();
    let metrics = Arc::clone(metrics);
    let retention = args.outcome_retention;
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(3600));
        loop {
            every.tick().await;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let before = now.saturating_sub(retention).as_secs();
            match pruner.prune(i64::try_from(before).unwrap_or(0)).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(interactions = n, "pruned the outcome store"),
                Err(e) => {
                    tracing::warn!(error = %e, "pruning the outcome store failed");
                    metrics.store_error(e.label());
                }
            }
        }
    });
    Ok(store)
}

/// Runs the server until SIGINT/SIGTERM.
pub async fn serve(args: ServeArgs) -> Result<()> {
    let metrics = Arc::new(Metrics::new()?);
    let reranker = load_reranker(&args)?;
    let store = outcome_store(&args, &metrics).await?;
    if let Some(path) = args.runtime_config.clone() {
        // Operator mode: everything comes from the RuntimeConfig.
        let engine = Arc::new(Engine::new(
            engine_options(&args, reranker)?,
            Arc::clone(&metrics),
            token_keys(&args)?,
            store,
        )?);
        let watcher =
            tokio::spawn(Arc::clone(&engine).watch_file(path.clone(), args.config_poll_interval));
        let keys_watcher = watch_keys(&args, &engine);
        println!(
            "serving RuntimeConfig {} on grpc://{} and http://{}",
            path.display(),
            args.grpc_addr,
            args.http_addr
        );
        let state = HttpState::new(None, Some(engine), true, metrics);
        let result = run_servers(&args, state, client_token_file(&args, None)).await;
        watcher.abort();
        keys_watcher.abort();
        return result;
    }

    let kb_args = args.kb.clone();
    let no_build = args.no_build;
    let loaded = tokio::task::spawn_blocking(move || -> Result<Loaded> {
        let loaded = kb_args.load()?;
        if !no_build {
            let spec = kb::index_spec(&loaded.kb, &loaded.base)?;
            let report = build_and_publish(
                &loaded,
                &spec,
                true,
                loaded.kb.spec.keep_generations.max(2) as usize,
            )?;
            print_report(&report);
        }
        Ok(loaded)
    })
    .await??;
    let kb_name = kb::name(&loaded.kb).to_owned();
    let router = kb::load_routers(&args.kb.manifests)?
        .into_iter()
        .find(|r| r.spec.knowledge_base_ref.name == kb_name);
    // With a Router the engine loads `rerank.model` from the compiled config (and says when it
    // cannot); retrieval alone reranks only with --reranker.
    if router.is_none() && loaded.kb.spec.retrieval.rerank.enabled && reranker.is_none() {
        tracing::warn!(
            "spec.retrieval.rerank is enabled but no --reranker was given; serving without rerank"
        );
    }
    if let Some(router) = router {
        // The embedded default with a Router: compile its RuntimeConfig locally and serve
        // answers; a newly published generation recompiles it.
        let client_tokens = client_token_file(&args, Some(&router));
        let mut options = engine_options(&args, reranker)?;
        options.encoder = Some(loaded.encoder_path.clone());
        if args.pvc_root.is_none() {
            options.pvc_root = loaded.base.clone();
        }
        let adapters = kb::local_adapters(
            &kb::load_adapter_patches(&args.kb.manifests)?,
            &options.pvc_root,
        );
        let engine = Arc::new(Engine::new(
            options,
            Arc::clone(&metrics),
            token_keys(&args)?,
            store,
        )?);
        engine
            .seed_encoder(loaded.encoder_path.clone(), Arc::clone(&loaded.embedder))
            .await;
        let apply = {
            let engine = Arc::clone(&engine);
            let store = loaded.store.clone();
            let kb = loaded.kb.clone();
            move || {
                let engine = Arc::clone(&engine);
                let store = store.clone();
                let kb = kb.clone();
                let router = router.clone();
                let adapters = adapters.clone();
                async move {
                    let Some(current) = store.current()? else {
                        anyhow::bail!("no index generation published yet");
                    };
                    let n = kb::generation_number(&current)
                        .with_context(|| format!("generation id {current}"))?;
                    if engine
                        .active()
                        .is_some_and(|a| a.config.knowledge_base.index_generation == n)
                    {
                        return Ok(());
                    }
                    let previous = store
                        .list()?
                        .iter()
                        .filter_map(|g| kb::generation_number(&g.id))
                        .filter(|g| *g < n)
                        .max();
                    let config = kb::local_runtime_config(&router, &kb, n, previous, &adapters)?;
                    engine.apply(config).await?;
                    engine.metrics().config_reload("applied");
                    Ok(())
                }
            }
        };
        apply().await?;
        let watcher = {
            let interval = args.reload_interval;
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(interval);
                loop {
                    tick.tick().await;
                    if let Err(e) = apply().await {
                        tracing::warn!(error = %e, "could not serve the published generation; still serving the previous one");
                    }
                }
            })
        };
        println!(
            "serving KnowledgeBase {kb_name} with Router {} on grpc://{} and http://{}",
            engine
                .active()
                .map(|a| a.router.clone())
                .unwrap_or_default(),
            args.grpc_addr,
            args.http_addr
        );
        let keys_watcher = watch_keys(&args, &engine);
        let state = HttpState::new(None, Some(engine), false, metrics);
        let result = run_servers(&args, state, client_tokens).await;
        watcher.abort();
        keys_watcher.abort();
        return result;
    }

    // Retrieval only (no Router among the manifests).
    let options = kb::search_options(&loaded.kb.spec.retrieval, reranker.is_some());
    let embedder: Arc<dyn Embedder> = loaded.embedder.clone();
    let service = Arc::new(RetrievalService::new(
        kb::name(&loaded.kb),
        loaded.store,
        Some(embedder),
        reranker,
        options,
        Arc::clone(&metrics),
        args.limits.retrieval_admission(),
    ));
    {
        let service = Arc::clone(&service);
        tokio::task::spawn_blocking(move || service.reload()).await??;
    }

    // Pick up generations published by `switchboard-runtime index` (or the operator's Job).
    let watcher = {
        let service = Arc::clone(&service);
        let interval = args.reload_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            loop {
                tick.tick().await;
                let s = Arc::clone(&service);
                match tokio::task::spawn_blocking(move || s.reload()).await {
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "could not load the published generation; still serving the previous one")
                    }
                    Err(e) => tracing::warn!(error = %e, "reload task failed"),
                    Ok(Ok(_)) => {}
                }
            }
        })
    };
    tracing::info!(grpc = %args.grpc_addr, http = %args.http_addr, knowledge_base = %service.knowledge_base(), generation = ?service.generation(), "serving");
    println!(
        "serving KnowledgeBase {} (generation {}) on grpc://{} and http://{}",
        service.knowledge_base(),
        service.generation().unwrap_or_default(),
        args.grpc_addr,
        args.http_addr
    );
    let state = HttpState::new(Some(service), None, false, metrics);
    let result = run_servers(&args, state, client_token_file(&args, None)).await;
    watcher.abort();
    result
}

/// The public API's token file: `--client-token-file`, else, in the embedded default, the
/// Router manifest's `spec.access.clientTokens` read as `<secrets>/<name>/<key>` (where a pod
/// mounts Secrets).
fn client_token_file(
    args: &ServeArgs,
    router: Option<&switchboard_crds::Router>,
) -> Option<PathBuf> {
    args.client_token_file.clone().or_else(|| {
        let secret = router?.spec.access.client_tokens.as_ref()?;
        Some(args.secrets.join(&secret.name).join(&secret.key))
    })
}

/// The admin API's tokens: `--admin-token-file`, or a fresh random one in `<data>/admin-token`.
fn admin_tokens(args: &ServeArgs, metrics: &Arc<Metrics>) -> Result<Arc<crate::auth::Tokens>> {
    use crate::auth::{Api, Tokens};
    match &args.admin_token_file {
        Some(path) => Tokens::from_file(Api::Admin, path, Arc::clone(metrics)),
        None => {
            let path = args.kb.data.join("admin-token");
            let tokens = Tokens::generate(Api::Admin, &path, Arc::clone(metrics))?;
            tracing::info!(path = %path.display(), "admin API token written (no --admin-token-file)");
            Ok(tokens)
        }
    }
}

/// Serves gRPC (Retrieval, Assistant when there is an engine, health; reflection with
/// `--grpc-reflection`), the public HTTP API and the admin HTTP API until a shutdown signal;
/// in-flight requests finish.
async fn run_servers(
    args: &ServeArgs,
    state: HttpState,
    client_tokens: Option<PathBuf>,
) -> Result<()> {
    let metrics = Arc::clone(&state.metrics);
    let admins = admin_tokens(args, &metrics)?;
    let clients = client_tokens
        .as_deref()
        .map(|path| {
            crate::auth::Tokens::from_file(crate::auth::Api::Public, path, Arc::clone(&metrics))
                .context(
                    "the public API's client tokens (--client-token-file, or the Router's \
                     spec.access.clientTokens read from <--secrets>/<name>/<key>)",
                )
        })
        .transpose()?;
    let poll = args.config_poll_interval.max(Duration::from_secs(1));
    let mut watchers = vec![tokio::spawn(Arc::clone(&admins).watch(poll))];
    if let Some(clients) = &clients {
        watchers.push(tokio::spawn(Arc::clone(clients).watch(poll)));
    }
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<switchboard_proto::v1::retrieval_server::RetrievalServer<GrpcRetrieval>>()
        .await;
    if state.engine.is_some() {
        health_reporter
            .set_serving::<switchboard_proto::v1::assistant_server::AssistantServer<GrpcAssistant>>(
            )
            .await;
    }
    let reflection = if args.grpc_reflection {
        Some(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(switchboard_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .build_v1()?,
        )
    } else {
        None
    };
    // The same bounds as HTTP where tonic has them: a deadline per call, a bounded number of
    // streams per connection, and keepalive pings that find dead peers. The client tokens guard
    // Retrieval and Assistant; health stays open for probes.
    let limits = &args.limits;
    let auth = crate::auth::GrpcAuth(clients.clone());
    let grpc = tonic::transport::Server::builder()
        .timeout(limits.request_timeout)
        .concurrency_limit_per_connection(64)
        .max_concurrent_streams(64_u32)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(limits.header_read_timeout))
        .add_service(health)
        .add_optional_service(reflection)
        .add_service(
            switchboard_proto::v1::retrieval_server::RetrievalServer::with_interceptor(
                GrpcRetrieval::new(Arc::clone(&state.serving), Arc::clone(&state.metrics)),
                auth.clone(),
            ),
        )
        .add_optional_service(state.engine.is_some().then(|| {
            switchboard_proto::v1::assistant_server::AssistantServer::with_interceptor(
                GrpcAssistant::new(Arc::clone(&state.serving)),
                auth.clone(),
            )
        }))
        .serve_with_shutdown(args.grpc_addr, shutdown_signal());
    let listener = tokio::net::TcpListener::bind(args.http_addr)
        .await
        .with_context(|| format!("binding {}", args.http_addr))?;
    let admin_listener = tokio::net::TcpListener::bind(args.admin_addr)
        .await
        .with_context(|| format!("binding {} (--admin-addr)", args.admin_addr))?;
    let request_limits = crate::limits::RequestLimits {
        body_timeout: limits.body_timeout,
        request_timeout: limits.request_timeout,
        max_body_bytes: limits.max_body_bytes,
        metrics: Arc::clone(&metrics),
    };
    let app = public_router(state.clone(), request_limits.clone(), clients);
    let admin = admin_router(state, request_limits, admins);
    let http = crate::limits::serve_http(
        listener,
        app,
        limits,
        Arc::clone(&metrics),
        shutdown_signal(),
    );
    let admin =
        crate::limits::serve_http(admin_listener, admin, limits, metrics, shutdown_signal());
    tracing::info!(grpc = %args.grpc_addr, http = %args.http_addr, admin = %args.admin_addr, "serving");
    let (grpc, http, admin) = tokio::join!(grpc, http, admin);
    for watcher in watchers {
        watcher.abort();
    }
    grpc.context("gRPC server")?;
    http.context("HTTP server")?;
    admin.context("admin HTTP server")?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down: finishing in-flight requests");
}

/// `--egress-allow`: a comma-separated list of address blocks, or `*`.
pub fn parse_egress(list: &str) -> Result<switchboard_artifact::egress::EgressPolicy, String> {
    switchboard_artifact::egress::EgressPolicy::parse(list)
}
