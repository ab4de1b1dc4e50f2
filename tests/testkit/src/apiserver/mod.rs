//! A stand-in Kubernetes API server in the test process.
//!
//! kube-rs clients, `kube::runtime` watchers and controllers, and separate processes (through a
//! kubeconfig) talk to it unmodified over plain HTTP on `127.0.0.1`. It stores objects of the types
//! in [`resources::RESOURCES`] generically and implements the API semantics controllers rely on:
//! GET/LIST (label and field selectors, `limit`/`continue`), WATCH (resume from a resource version,
//! bookmarks, `410 Gone` after compaction, `sendInitialEvents`), POST, PUT (optimistic concurrency),
//! PATCH (merge, JSON, strategic-as-merge, server-side apply with per-manager field ownership and
//! conflicts), the `/status` subresource, DELETE with finalizers and cascading garbage collection,
//! `generation` bumps on spec changes, and errors as `metav1.Status`.
//!
//! Not modelled: admission (CEL or webhooks), schema validation and defaulting, authentication,
//! ownership transfer of fields written by non-apply updates, foreground deletion ordering.

mod http;
mod patch;
pub mod resources;
mod selector;
mod store;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{Value, json};

pub use selector::{FieldSelector, LabelSelector};
pub use store::ApiError;

/// Settings of a stand-in API server.
#[derive(Debug, Clone)]
pub struct Options {
    /// Changes kept for watches that resume from a resource version; older ones get 410 Gone.
    pub history_limit: usize,
    /// How often a watch that allows bookmarks receives one.
    pub bookmark_interval: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            history_limit: 10_000,
            bookmark_interval: Duration::from_secs(1),
        }
    }
}

/// A running stand-in API server; stops when dropped.
#[derive(Debug)]
pub struct ApiServer {
    addr: SocketAddr,
    shared: Arc<http::Shared>,
    shutdown: Option<tokio::sync::watch::Sender<bool>>,
    thread: Option<JoinHandle<()>>,
}

impl ApiServer {
    /// Starts a server with default options on a free port of 127.0.0.1.
    pub fn start() -> std::io::Result<Self> {
        Self::start_with(Options::default())
    }

    /// Starts a server on its own thread and runtime, so it serves sync tests, async tests and
    /// other processes alike, and outlives none of them.
    pub fn start_with(options: Options) -> std::io::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
        let shared = Arc::new(http::Shared {
            store: Mutex::new(store::Store::new(options.history_limit)),
            bookmark_interval: options.bookmark_interval,
            shutdown: shutdown_rx.clone(),
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("apiserver")
            .enable_all()
            .build()?;
        let router = axum::Router::new()
            .fallback(http::handle)
            .with_state(shared.clone());
        let listener = {
            let _guard = runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        let thread = std::thread::Builder::new()
            .name("apiserver".into())
            .spawn(move || {
                let mut stop = shutdown_rx;
                runtime.block_on(async move {
                    let serve = axum::serve(listener, router).with_graceful_shutdown(async move {
                        let _ = stop.changed().await;
                    });
                    if let Err(e) = serve.await {
                        tracing::error!(error = %e, "stand-in API server failed");
                    }
                });
                runtime.shutdown_timeout(Duration::from_secs(1));
            })?;
        Ok(Self {
            addr,
            shared,
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        })
    }

    /// The socket address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kube client configuration for this server (default namespace `default`).
    pub fn config(&self) -> kube::Config {
        let url = self
            .url()
            .parse()
            .unwrap_or_else(|_| unreachable!("a socket address is a valid URI authority"));
        kube::Config::new(url)
    }

    /// A kube client for this server. Must be called inside a tokio runtime.
    pub fn client(&self) -> kube::Client {
        kube::Client::try_from(self.config())
            .unwrap_or_else(|e| panic!("a plain-HTTP kube client always builds: {e}"))
    }

    /// The kubeconfig document that points at this server (context `standin`, namespace `default`).
    pub fn kubeconfig(&self) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "standin", "cluster": {"server": self.url()}}],
            "users": [{"name": "standin", "user": {}}],
            "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "standin", "namespace": "default"}}],
            "current-context": "standin",
        })
    }

    /// Writes [`Self::kubeconfig`] as YAML, for processes (`KUBECONFIG=<path>`).
    pub fn write_kubeconfig(&self, path: impl AsRef<Path>) -> std::io::Result<()> {
        let yaml = serde_yaml::to_string(&self.kubeconfig()).map_err(std::io::Error::other)?;
        std::fs::write(path, yaml)
    }

    /// The current global resource version.
    pub fn resource_version(&self) -> u64 {
        self.shared.store().resource_version()
    }

    /// Forgets the change history, so watches resuming from any earlier version get 410 Gone
    /// (what etcd compaction does to a real API server).
    pub fn compact(&self) {
        self.shared.store().compact();
    }

    /// Reads one object directly (no HTTP), by `apiVersion`-style group/version and plural.
    /// `None` if the type is unknown or the object is absent.
    pub fn object(
        &self,
        api_version: &str,
        plural: &str,
        namespace: &str,
        name: &str,
    ) -> Option<Value> {
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let resource = resources::find(group, version, plural)?;
        self.shared.store().get(resource, namespace, name).ok()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(true);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
