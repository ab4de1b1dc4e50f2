//! The retrieval service: validates queries, searches the served index generation off the async
//! executor, records metrics, and switches generations atomically.
//!
//! Protocol adapters (gRPC in `grpc.rs`, HTTP in `http.rs`) only convert to and from these types.
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use switchboard_index::{
    Embedder, Generation, Generations, Reranker, Retriever, SearchOptions, SearchResponse,
};

use crate::limits::Admission;
use crate::metrics::Metrics;

/// Longest query accepted, in bytes.
pub const MAX_QUERY_BYTES: usize = 4096;
/// Most passages one request may ask for.
pub const MAX_TOP_K: usize = 50;

/// Why a request was not served. Each protocol maps it to its own status once (`grpc.rs`, `http.rs`).
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request is malformed; `field` names what was wrong.
    #[error("{field}: {message}")]
    InvalidArgument {
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// Nothing can be served yet (no index generation loaded).
    #[error("{0}")]
    Unavailable(String),
    /// A failure inside the service.
    #[error("{0}")]
    Internal(String),
    /// At capacity: the request was shed without being worked on (retry later or elsewhere).
    #[error("{0}")]
    Overloaded(String),
}

impl ServiceError {
    /// Short label for metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::InvalidArgument { .. } => "invalid_argument",
            Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "internal",
            Self::Overloaded(_) => "overloaded",
        }
    }
}

/// Per-request stage switches (evaluation); `None` keeps the served configuration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default)]
pub struct StageSwitches {
    /// BM25 on/off.
    pub bm25: Option<bool>,
    /// Dense retrieval on/off.
    pub dense: Option<bool>,
    /// Rerank on/off (on only takes effect when the service has a reranker configured).
    pub rerank: Option<bool>,
    /// Recency decay on/off.
    pub recency: Option<bool>,
}

/// A retrieval request, protocol-neutral.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct RetrieveRequest {
    /// The customer's query.
    pub query: String,
    /// Passages wanted (0 = the configured default).
    pub top_k: usize,
    /// Stage switches.
    pub stages: StageSwitches,
}

/// Checks a query: not empty, not huge, and text rather than binary.
pub fn validate_query(query: &str) -> Result<(), ServiceError> {
    let invalid = |message: String| ServiceError::InvalidArgument {
        field: "query",
        message,
    };
    if query.trim().is_empty() {
        return Err(invalid("must not be empty".into()));
    }
    if query.len() > MAX_QUERY_BYTES {
        return Err(invalid(format!(
            "{} bytes exceeds the limit of {MAX_QUERY_BYTES}",
            query.len()
        )));
    }
    let control = query
        .chars()
        .filter(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
        .count();
    let replacement = query.chars().filter(|&c| c == '\u{FFFD}').count();
    if control > 0 || replacement * 10 > query.chars().count() {
        return Err(invalid(format!(
            "looks like binary data ({control} control characters, {replacement} replacement characters); send UTF-8 text"
        )));
    }
    Ok(())
}

/// Serves retrieval over the current generation of one knowledge base.
pub struct RetrievalService {
    knowledge_base: String,
    store: Generations,
    embedder: Option<Arc<dyn Embedder>>,
    reranker: Option<Arc<dyn Reranker>>,
    options: ArcSwap<SearchOptions>,
    current: ArcSwapOption<Retriever>,
    metrics: Arc<Metrics>,
    admission: Arc<Admission>,
}

impl std::fmt::Debug for RetrievalService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetrievalService")
            .field("knowledge_base", &self.knowledge_base)
            .field("store", &self.store.root())
            .field("serving", &self.generation())
            .finish()
    }
}

impl RetrievalService {
    /// A service over `store`; call [`reload`](Self::reload) to load the published generation.
    pub fn new(
        knowledge_base: impl Into<String>,
        store: Generations,
        embedder: Option<Arc<dyn Embedder>>,
        reranker: Option<Arc<dyn Reranker>>,
        options: SearchOptions,
        metrics: Arc<Metrics>,
        admission: Arc<Admission>,
    ) -> Self {
        Self {
            knowledge_base: knowledge_base.into(),
            store,
            embedder,
            reranker,
            options: ArcSwap::from_pointee(options),
            current: ArcSwapOption::empty(),
            metrics,
            admission,
        }
    }

    /// Name of the knowledge base served.
    pub fn knowledge_base(&self) -> &str {
        &self.knowledge_base
    }

    /// The generation store.
    pub fn store(&self) -> &Generations {
        &self.store
    }

    /// Id of the generation being served, if any.
    pub fn generation(&self) -> Option<String> {
        self.current
            .load()
            .as_ref()
            .map(|r| r.generation().id.clone())
    }

    /// Whether a generation is loaded (readiness).
    pub fn ready(&self) -> bool {
        self.current.load().is_some()
    }

    /// Loads the store's published generation if it is not the one being served, and swaps it in
    /// atomically: requests in flight finish on the old one. Returns the id now served. A
    /// generation that fails to load leaves the served one in place.
    pub fn reload(&self) -> switchboard_index::Result<Option<String>> {
        let Some(published) = self.store.current()? else {
            return Ok(self.generation());
        };
        if self.generation().as_deref() == Some(published.as_str()) {
            return Ok(Some(published));
        }
        let generation = Arc::new(Generation::load(&self.store, &published)?);
        let mut retriever = Retriever::new(Arc::clone(&generation), self.embedder.clone())?;
        if let Some(reranker) = &self.reranker {
            retriever = retriever.with_reranker(Arc::clone(reranker));
        }
        self.metrics.serving(&published, generation.chunks().len());
        self.metrics.serving_documents(generation.documents());
        self.current.store(Some(Arc::new(retriever)));
        tracing::info!(knowledge_base = %self.knowledge_base, generation = %published, "serving index generation");
        Ok(Some(published))
    }

    /// Replaces the served search options (a RuntimeConfig's `knowledgeBase.retrieval`); requests
    /// in flight keep the options they started with.
    pub fn set_options(&self, options: SearchOptions) {
        self.options.store(Arc::new(options));
    }

    /// Whether a reranker is configured.
    pub fn has_reranker(&self) -> bool {
        self.reranker.is_some()
    }

    /// A retriever over generation `id` (the one served when it is that generation, else loaded
    /// from the store). Blocks: call it from the blocking pool.
    pub fn retriever(&self, id: &str) -> switchboard_index::Result<Arc<Retriever>> {
        if let Some(current) = self.current.load_full()
            && current.generation().id == id
        {
            return Ok(current);
        }
        let generation = Arc::new(Generation::load(&self.store, id)?);
        let mut retriever = Retriever::new(generation, self.embedder.clone())?;
        if let Some(reranker) = &self.reranker {
            retriever = retriever.with_reranker(Arc::clone(reranker));
        }
        Ok(Arc::new(retriever))
    }

    /// Serves `retriever` (a generation pinned by the RuntimeConfig) for plain retrieval requests.
    pub fn serve(&self, retriever: Arc<Retriever>) {
        if self.generation().as_deref() == Some(retriever.generation().id.as_str()) {
            return;
        }
        self.metrics.serving(
            &retriever.generation().id,
            retriever.generation().chunks().len(),
        );
        self.metrics
            .serving_documents(retriever.generation().documents());
        tracing::info!(knowledge_base = %self.knowledge_base, generation = %retriever.generation().id, "serving index generation");
        self.current.store(Some(retriever));
    }

    /// Publishes the previous generation again and serves it.
    pub fn switch_back(&self) -> switchboard_index::Result<String> {
        let id = self.store.switch_back()?;
        self.reload()?;
        Ok(id)
    }

    /// Answers one request on the blocking pool (embedding and tantivy search block).
    pub async fn retrieve(&self, request: RetrieveRequest) -> Result<SearchResponse, ServiceError> {
        validate_query(&request.query)?;
        if request.top_k > MAX_TOP_K {
            return Err(ServiceError::InvalidArgument {
                field: "top_k",
                message: format!("{} exceeds the limit of {MAX_TOP_K}", request.top_k),
            });
        }
        let retriever = self.current.load_full().ok_or_else(|| {
            ServiceError::Unavailable(format!(
                "knowledge base {} has no index generation loaded yet",
                self.knowledge_base
            ))
        })?;
        self.retrieve_on(retriever, request).await
    }

    /// Answers one request on `retriever`'s generation (validated by the caller or here).
    pub async fn retrieve_on(
        &self,
        retriever: Arc<Retriever>,
        request: RetrieveRequest,
    ) -> Result<SearchResponse, ServiceError> {
        validate_query(&request.query)?;
        let options = self.options_for(&request);
        let query = request.query;
        // Each search holds a blocking thread and an encoder slot: bounded, and shed past the
        // queue (429) instead of growing threads (`crate::limits`).
        let _slot = self.admission.admit().await.inspect_err(|_| {
            self.metrics.limit_refused("retrieval_overloaded");
        })?;
        let response = tokio::task::spawn_blocking(move || retriever.search(&query, &options))
            .await
            .map_err(|e| ServiceError::Internal(format!("retrieval task failed: {e}")))?
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        self.metrics.observe(&response);
        Ok(response)
    }

    fn options_for(&self, request: &RetrieveRequest) -> SearchOptions {
        let mut options = SearchOptions::clone(&self.options.load());
        if request.top_k > 0 {
            options.top_k = request.top_k;
        }
        let s = request.stages;
        if let Some(on) = s.bm25 {
            options.bm25 = on;
        }
        if let Some(on) = s.dense {
            options.dense = on && self.embedder.is_some();
        }
        if let Some(on) = s.recency {
            options.recency = on;
        }
        match s.rerank {
            Some(false) => options.rerank = None,
            Some(true) if options.rerank.is_none() && self.reranker.is_some() => {
                options.rerank = Some(crate::kb::rerank_options(&Default::default()));
            }
            _ => {}
        }
        options
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_validated_with_the_field_named() {
        for (query, needle) in [
            ("", "must not be empty"),
            ("   \n\t", "must not be empty"),
            ("a\u{0}b", "binary"),
            ("\u{FFFD}\u{FFFD}x", "binary"),
        ] {
            let err = validate_query(query).unwrap_err();
            assert!(err.to_string().starts_with("query: "), "{err}");
            assert!(err.to_string().contains(needle), "{err}");
        }
        let huge = "refund ".repeat(1000);
        assert!(
            validate_query(&huge)
                .unwrap_err()
                .to_string()
                .contains("exceeds")
        );
        validate_query("How do I get a refund?\nThanks").unwrap();
        validate_query("Café: ¿dónde está mi factura? 请帮忙").unwrap();
    }
}
