//! `switchboard-operator`: runs the four controllers under a leader Lease, serves `/metrics`,
//! `/healthz` and `/readyz`, and shuts down gracefully on SIGTERM/SIGINT.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use anyhow::{Context as _, Result};
use clap::Parser;
use futures::FutureExt;
use kube::{Api, Client, api::ListParams};
use switchboard_artifact::egress::EgressPolicy;
use switchboard_crds::Router;
use switchboard_operator::{
    adapter_patch::artifact::PeftArtifacts,
    context::{Context, Settings, SystemClock, default_runtime_image},
    controllers,
    leader::LeaseLock,
    metrics::Metrics,
    observe::Prometheus,
    outcomes::RuntimeOutcomes,
    server::{Health, routes},
};
use tokio::sync::watch;

fn duration(s: &str) -> Result<Duration, String> {
    switchboard_crds::parse_duration(s).map_err(|e| e.to_string())
}

/// The Switchboard operator.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Prometheus base URL for guardrail and experiment metrics (e.g. http://prometheus:9090).
    #[arg(long, env = "SWITCHBOARD_PROMETHEUS_URL")]
    prometheus_url: String,
    /// Listen address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_addr: String,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "SWITCHBOARD_NAMESPACE")]
    namespace: Option<String>,
    /// Namespace of the leader Lease (default: --namespace, else POD_NAMESPACE, else `default`).
    #[arg(long)]
    leader_election_namespace: Option<String>,
    /// Name of the leader Lease.
    #[arg(long, default_value = "switchboard-operator")]
    leader_election_lease: String,
    /// Run without leader election (a single replica only).
    #[arg(long)]
    disable_leader_election: bool,
    /// Lease duration: a leader that has not renewed for this long is replaced.
    #[arg(long, default_value = "15s", value_parser = duration)]
    lease_duration: Duration,
    /// Runtime image for Routers without spec.image and for index build Jobs.
    #[arg(long, default_value_t = default_runtime_image())]
    runtime_image: String,
    /// Directory for verified adapter artifacts (content-addressed: sha256-<hex>/).
    #[arg(long)]
    artifact_cache: Option<PathBuf>,
    /// Internal address blocks (comma-separated CIDRs, `10.20.0.0/16,fd00::/8`) that adapter
    /// artifacts and HTTP KnowledgeBase sources may be fetched from; passed on to the index-build
    /// Jobs, runtimes and evaluation Jobs it creates. Without it only public addresses are
    /// fetched: loopback, private, link-local (cloud metadata) and other internal addresses are
    /// refused after DNS resolution (docs/security.md). The chart sets it from `egress.allowCidrs`.
    #[arg(long, env = "SWITCHBOARD_EGRESS_ALLOW", value_parser = egress_list)]
    egress_allow: Option<String>,
    /// Base URL of a Router's runtime admin API, for experiments' per-unit (CUPED) data and
    /// KnowledgeBases' coverage gaps; `{service}` and `{namespace}` are replaced by the Router's
    /// runtime Service name and namespace. Requests carry the Router's admin token (its
    /// `<router>-runtime-token` Secret).
    #[arg(long, default_value = switchboard_operator::names::DEFAULT_RUNTIME_URL)]
    runtime_url: String,
    /// The operator's namespace: the runtime pods' NetworkPolicies admit the operator's pods of
    /// this namespace to their admin port (unset: its pods in any namespace).
    #[arg(long, env = "POD_NAMESPACE")]
    operator_namespace: Option<String>,
    /// Labels of the operator's pods (`key=value,...`), for the same NetworkPolicies.
    #[arg(long, default_value = "app.kubernetes.io/component=operator", value_parser = label_list)]
    operator_pod_labels: BTreeMap<String, String>,
    /// Longest time between two analyses of a running rollout or experiment.
    #[arg(long, default_value = "60s", value_parser = duration)]
    analysis_interval: Duration,
    /// Re-check of idle objects (drift correction).
    #[arg(long, default_value = "5m", value_parser = duration)]
    resync_interval: Duration,
    /// Timeout of one Prometheus query.
    #[arg(long, default_value = "10s", value_parser = duration)]
    prometheus_timeout: Duration,
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::warn!(%error, "listening for SIGINT failed");
            futures::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "listening for SIGTERM failed");
                futures::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = futures::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// Resolves once `rx` holds `true`.
async fn flag_set(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

fn identity() -> String {
    let host = std::env::var("POD_NAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "switchboard-operator".to_owned());
    format!("{host}-{}", std::process::id())
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let client = Client::try_default()
        .await
        .context("building a Kubernetes client from KUBECONFIG or the in-cluster config")?;

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested: finishing the reconciles in flight");
        let _ = stop_tx.send(true);
    });

    let metrics = Arc::new(Metrics::new());
    let health = Health {
        metrics: metrics.clone(),
        ready: Arc::default(),
    };
    let ready = health.ready.clone();
    let listener = tokio::net::TcpListener::bind(&cli.metrics_addr)
        .await
        .with_context(|| format!("binding {}", cli.metrics_addr))?;
    tracing::info!(addr = %cli.metrics_addr, "serving /metrics, /healthz, /readyz");
    let server_stop = flag_set(stop_rx.clone());
    let server = tokio::spawn(async move {
        axum::serve(listener, routes(health))
            .with_graceful_shutdown(server_stop)
            .await
    });

    let identity = identity();
    let ctx = Arc::new(
        Context::new(
            client.clone(),
            Some(identity.clone()),
            metrics.clone(),
            Arc::new(Prometheus::new(&cli.prometheus_url, cli.prometheus_timeout)),
            Arc::new(PeftArtifacts::with_egress(
                cli.artifact_cache.clone(),
                egress_policy(cli.egress_allow.as_deref()),
            )),
            Settings {
                runtime_image: cli.runtime_image.clone(),
                analysis_interval: cli.analysis_interval,
                resync_interval: cli.resync_interval,
                artifact_cache: cli.artifact_cache.clone(),
                egress_allow: cli.egress_allow.clone(),
                operator_peer: switchboard_operator::pod::operator_peer(
                    cli.operator_namespace.as_deref(),
                    cli.operator_pod_labels.clone(),
                ),
            },
            Arc::new(SystemClock),
        )
        .with_outcomes(Arc::new(
            RuntimeOutcomes::new(cli.runtime_url.clone(), cli.prometheus_timeout)
                .with_admin_tokens(client.clone()),
        )),
    );
    let stopped = || *stop_rx.borrow();

    let lost_leadership = if cli.disable_leader_election {
        loop {
            match Api::<Router>::all(client.clone())
                .list(&ListParams::default().limit(1))
                .await
            {
                Ok(_) => break,
                Err(_) if stopped() => return Ok(()),
                Err(error) => {
                    tracing::warn!(%error, "the API server does not answer yet");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }
        ready.store(true, Ordering::Relaxed);
        metrics.set_leader(true);
        controllers::run(
            ctx,
            cli.namespace.clone(),
            flag_set(stop_rx.clone()).shared(),
        )
        .await;
        metrics.set_leader(false);
        false
    } else {
        let lease_namespace = cli
            .leader_election_namespace
            .clone()
            .or_else(|| cli.namespace.clone())
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| "default".to_owned());
        let lock = LeaseLock::new(
            client.clone(),
            &lease_namespace,
            cli.leader_election_lease.clone(),
            identity.clone(),
            cli.lease_duration,
        );
        let retry = (cli.lease_duration / 5).max(Duration::from_millis(200));
        loop {
            if stopped() {
                let _ = server.await;
                return Ok(());
            }
            match lock
                .try_acquire_or_renew(k8s_openapi::jiff::Timestamp::now())
                .await
            {
                Ok(true) => break,
                // Standing by is ready: a standby replica is healthy.
                Ok(false) => ready.store(true, Ordering::Relaxed),
                Err(error) => {
                    tracing::warn!(%error, "leader election: the Lease could not be read")
                }
            }
            tokio::select! {
                () = tokio::time::sleep(retry) => {}
                () = flag_set(stop_rx.clone()) => {}
            }
        }
        ready.store(true, Ordering::Relaxed);
        metrics.set_leader(true);
        tracing::info!(%identity, lease = %format!("{lease_namespace}/{}", cli.leader_election_lease), "leading");

        // Renew until shutdown; losing the Lease stops the controllers.
        let (lost_tx, lost_rx) = watch::channel(false);
        let renew_lock = lock.clone();
        let renew_every = (cli.lease_duration / 3).max(Duration::from_millis(200));
        let deadline = cli.lease_duration.mul_f64(2.0 / 3.0);
        let renew_stop = stop_rx.clone();
        let renewer = tokio::spawn(async move {
            let mut last_ok = tokio::time::Instant::now();
            loop {
                tokio::select! {
                    () = tokio::time::sleep(renew_every) => {}
                    () = flag_set(renew_stop.clone()) => return,
                }
                match renew_lock
                    .try_acquire_or_renew(k8s_openapi::jiff::Timestamp::now())
                    .await
                {
                    Ok(true) => last_ok = tokio::time::Instant::now(),
                    Ok(false) => {
                        tracing::error!("leader election: another replica holds the Lease");
                        let _ = lost_tx.send(true);
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "leader election: renewing the Lease failed");
                        if last_ok.elapsed() > deadline {
                            let _ = lost_tx.send(true);
                            return;
                        }
                    }
                }
            }
        });
        let stop = flag_set(stop_rx.clone());
        let lost = flag_set(lost_rx.clone());
        let stop_or_lost = async move {
            tokio::select! {
                () = stop => {}
                () = lost => {}
            }
        };
        controllers::run(ctx, cli.namespace.clone(), stop_or_lost.boxed().shared()).await;
        metrics.set_leader(false);
        renewer.abort();
        let lost = *lost_rx.borrow();
        if !lost {
            match lock.release().await {
                Ok(()) => tracing::info!("released the leader Lease"),
                Err(error) => tracing::warn!(%error, "releasing the leader Lease failed"),
            }
        }
        lost
    };
    if lost_leadership {
        anyhow::bail!("lost the leader Lease; exiting so that a fresh replica stands by");
    }
    let _ = server.await;
    tracing::info!("stopped");
    Ok(())
}

/// `--egress-allow`: checked here, passed on verbatim.
fn label_list(list: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    for pair in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?}: a label is key=value"))?;
        labels.insert(key.trim().to_owned(), value.trim().to_owned());
    }
    if labels.is_empty() {
        return Err("at least one key=value label".to_owned());
    }
    Ok(labels)
}

fn egress_list(list: &str) -> Result<String, String> {
    EgressPolicy::parse(list)?;
    Ok(list.trim().to_owned())
}

fn egress_policy(list: Option<&str>) -> EgressPolicy {
    list.and_then(|l| EgressPolicy::parse(l).ok())
        .unwrap_or_else(EgressPolicy::public_only)
}
