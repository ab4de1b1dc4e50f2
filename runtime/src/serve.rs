//! `index` and `serve`: build index generations from KnowledgeBase manifests and serve them over
//! gRPC and HTTP.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use switchboard_crds::KnowledgeBase;
use switchboard_index::{BuildOptions, BuildReport, Embedder, Generations, Reranker};
use switchboard_model::{CrossEncoder, EncoderWorker};

use crate::grpc::GrpcRetrieval;
use crate::http::{HttpState, router};
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
        })
    }
}

/// Builds a generation of `loaded.kb` (reusing unchanged sources) and publishes it.
pub fn build_and_publish(loaded: &Loaded, publish: bool, keep: usize) -> Result<BuildReport> {
    let spec = kb::index_spec(&loaded.kb, &loaded.base)?;
    let report = switchboard_index::build(
        &spec,
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
}

/// Options of `serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    kb: KbArgs,
    /// gRPC listen address.
    #[arg(long, default_value = "127.0.0.1:50051")]
    grpc_addr: SocketAddr,
    /// HTTP listen address (JSON API, /metrics, /healthz, /readyz).
    #[arg(long, default_value = "127.0.0.1:8080")]
    http_addr: SocketAddr,
    /// Cross-encoder checkpoint (BertForSequenceClassification) for reranking.
    #[arg(long, env = "SWITCHBOARD_RERANKER")]
    reranker: Option<PathBuf>,
    /// Serve the published generation as it is instead of (re)building at start-up.
    #[arg(long)]
    no_build: bool,
    /// How often to look for a newly published generation.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    reload_interval: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    switchboard_crds::parse_duration(s).map_err(|e| e.to_string())
}

/// Runs the server until SIGINT/SIGTERM.
pub async fn serve(args: ServeArgs) -> Result<()> {
    let kb_args = args.kb.clone();
    let no_build = args.no_build;
    let loaded = tokio::task::spawn_blocking(move || -> Result<Loaded> {
        let loaded = kb_args.load()?;
        if !no_build {
            let report = build_and_publish(
                &loaded,
                true,
                loaded.kb.spec.keep_generations.max(2) as usize,
            )?;
            print_report(&report);
        }
        Ok(loaded)
    })
    .await??;
    let reranker: Option<Arc<dyn Reranker>> = match &args.reranker {
        Some(dir) => Some(Arc::new(CrossEncoderReranker::new(
            CrossEncoder::load(dir, switchboard_model::default_device())
                .with_context(|| format!("loading reranker {}", dir.display()))?,
        ))),
        None => None,
    };
    if loaded.kb.spec.retrieval.rerank.enabled && reranker.is_none() {
        tracing::warn!(
            "spec.retrieval.rerank is enabled but no --reranker was given; serving without rerank"
        );
    }
    let metrics = Arc::new(Metrics::new()?);
    let options = kb::search_options(&loaded.kb, reranker.is_some());
    let embedder: Arc<dyn Embedder> = loaded.embedder.clone();
    let service = Arc::new(RetrievalService::new(
        kb::name(&loaded.kb),
        loaded.store,
        Some(embedder),
        reranker,
        options,
        Arc::clone(&metrics),
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

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<switchboard_proto::v1::retrieval_server::RetrievalServer<GrpcRetrieval>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(switchboard_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let grpc = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(reflection)
        .add_service(
            switchboard_proto::v1::retrieval_server::RetrievalServer::new(GrpcRetrieval::new(
                Arc::clone(&service),
                Arc::clone(&metrics),
            )),
        )
        .serve_with_shutdown(args.grpc_addr, shutdown_signal());
    let listener = tokio::net::TcpListener::bind(args.http_addr)
        .await
        .with_context(|| format!("binding {}", args.http_addr))?;
    let http = axum::serve(
        listener,
        router(HttpState {
            service: Arc::clone(&service),
            metrics,
        }),
    )
    .with_graceful_shutdown(shutdown_signal());
    tracing::info!(grpc = %args.grpc_addr, http = %args.http_addr, knowledge_base = %service.knowledge_base(), generation = ?service.generation(), "serving");
    println!(
        "serving KnowledgeBase {} (generation {}) on grpc://{} and http://{}",
        service.knowledge_base(),
        service.generation().unwrap_or_default(),
        args.grpc_addr,
        args.http_addr
    );
    let (grpc, http) = tokio::join!(grpc, async { http.await });
    watcher.abort();
    grpc.context("gRPC server")?;
    http.context("HTTP server")?;
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
