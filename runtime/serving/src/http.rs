//! HTTP/JSON mirror of the gRPC API, plus `/metrics`, `/healthz`, `/readyz` (the public
//! listener), and the admin API on its own listener (crate::auth).
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Json, State, rejection::JsonRejection};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::answer::{AnswerRequest, FeedbackError, FeedbackRequest};
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::openai::{ChatRequest, ErrorBody};
use crate::service::{RetrievalService, RetrieveRequest, ServiceError};
use crate::serving::{Runtime, Serving};

/// Shared state of the HTTP handlers.
#[derive(Debug, Clone)]
pub struct HttpState {
    /// The retrieval service when no RuntimeConfig drives serving (retrieval-only mode).
    pub service: Option<Arc<RetrievalService>>,
    /// The engine (answers, feedback, config) when a RuntimeConfig drives serving.
    pub engine: Option<Arc<Engine>>,
    /// Whether the index generation is pinned by a RuntimeConfig file (operator mode): the
    /// switch-back endpoint is refused, the operator switches generations.
    pub pinned: bool,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// What the public API serves (retrieve, answer, feedback): the runtime's own
    /// [`Runtime`](crate::serving::Runtime) over `service` or `engine`, or a stand-in in tests.
    pub serving: Arc<dyn Serving>,
    /// One coverage-gap report (clustering up to 20,000 signals) is computed at a time.
    reports: Arc<tokio::sync::Semaphore>,
}

impl HttpState {
    /// The state of a server: `service` alone (retrieval only) or an `engine`.
    pub fn new(
        service: Option<Arc<RetrievalService>>,
        engine: Option<Arc<Engine>>,
        pinned: bool,
        metrics: Arc<Metrics>,
    ) -> Self {
        let serving: Arc<dyn Serving> = Arc::new(Runtime::new(service.clone(), engine.clone()));
        Self {
            service,
            engine,
            pinned,
            metrics,
            serving,
            reports: Arc::new(tokio::sync::Semaphore::new(1)),
        }
    }

    /// The retrieval service in force.
    pub fn service(&self) -> Option<Arc<RetrievalService>> {
        crate::serving::service_in_force(self.service.as_ref(), self.engine.as_ref())
    }

    fn engine(&self) -> Result<&Arc<Engine>, Box<Response>> {
        self.engine.as_ref().ok_or_else(|| {
            Box::new(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                crate::serving::NO_ROUTER.into(),
            ))
        })
    }
}

fn unavailable() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        crate::serving::NO_GENERATION.into(),
    )
}

/// The public HTTP API (answers, retrieval, feedback, chat completions; `/metrics`, `/healthz`,
/// `/readyz`), each request bounded by `limits` (body size and time, response deadline) and, with
/// `clients`, authenticated by a client bearer token (probes and `/metrics` excepted).
pub fn public_router(
    state: HttpState,
    limits: crate::limits::RequestLimits,
    clients: Option<Arc<crate::auth::Tokens>>,
) -> axum::Router {
    let routes = axum::Router::new()
        .route("/v1/answer", post(answer))
        .route("/v1/feedback", post(feedback))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/retrieve", post(retrieve))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz));
    let routes = match clients {
        // On the routes only: a path that is not the public API's is a 404 either way.
        Some(tokens) => routes.route_layer(axum::middleware::from_fn_with_state(
            tokens,
            crate::auth::require,
        )),
        None => routes,
    };
    routes
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(limits),
            crate::limits::bounded,
        ))
        .with_state(state)
}

/// The admin HTTP API (`--admin-addr`, not exposed by the Router's Service): the configuration
/// in force, coverage gaps (customer queries), hits, CUPED sums, generations and switch-back.
/// Every request but `/healthz` needs an admin bearer token.
pub fn admin_router(
    state: HttpState,
    limits: crate::limits::RequestLimits,
    admins: Arc<crate::auth::Tokens>,
) -> axum::Router {
    axum::Router::new()
        .route("/v1/experiments/{name}/cuped", get(experiment_cuped))
        .route("/v1/experiments/{name}/units", get(experiment_units))
        .route("/v1/holdout/units", get(holdout_units))
        .route("/v1/coverage-gaps", get(coverage_gaps))
        .route("/v1/config", get(config))
        .route("/v1/generations", get(generations))
        .route("/v1/generations/switch-back", post(switch_back))
        .route("/v1/hits", get(hits))
        .route("/healthz", get(|| async { "ok" }))
        .layer(axum::middleware::from_fn_with_state(
            admins,
            crate::auth::require,
        ))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(limits),
            crate::limits::bounded,
        ))
        .with_state(state)
}

/// The `{code, message}` error body every JSON endpoint answers with.
pub fn error(status: StatusCode, code: &str, message: String) -> Response {
    (status, Json(json!({ "code": code, "message": message }))).into_response()
}

impl IntoResponse for ServiceError {
    fn into_response(self) -> Response {
        let status = match self {
            Self::InvalidArgument { .. } => StatusCode::BAD_REQUEST,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Overloaded(_) => {
                let mut response = error(
                    StatusCode::TOO_MANY_REQUESTS,
                    self.outcome(),
                    self.to_string(),
                );
                response.headers_mut().insert(
                    axum::http::header::RETRY_AFTER,
                    axum::http::HeaderValue::from_static("1"),
                );
                return response;
            }
        };
        error(status, self.outcome(), self.to_string())
    }
}

async fn retrieve(
    State(state): State<HttpState>,
    body: Result<Json<RetrieveRequest>, JsonRejection>,
) -> Response {
    let Json(request) = match body {
        Ok(body) => body,
        Err(rejection) => {
            state.metrics.request("http", "invalid_argument");
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_argument",
                format!("request body: {}", rejection.body_text()),
            );
        }
    };
    match state.serving.retrieve(request).await {
        Ok(response) => {
            state.metrics.request("http", "ok");
            Json(response).into_response()
        }
        Err(err) => {
            state.metrics.request("http", err.outcome());
            err.into_response()
        }
    }
}

async fn generations(State(state): State<HttpState>) -> Response {
    let Some(service) = state.service() else {
        return unavailable();
    };
    match service.store().list() {
        Ok(list) => Json(json!({
            "serving": service.generation(),
            "generations": list,
        }))
        .into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    }
}

async fn switch_back(State(state): State<HttpState>) -> Response {
    if state.pinned {
        return error(
            StatusCode::CONFLICT,
            "failed_precondition",
            "the RuntimeConfig pins the index generation; switch back through the KnowledgeBase"
                .into(),
        );
    }
    let Some(service) = state.service() else {
        return unavailable();
    };
    let store = service.store().clone();
    let result = if state.engine.is_some() {
        // The embedded default: publish the previous generation; the manifest watcher
        // recompiles the RuntimeConfig and serves it.
        tokio::task::spawn_blocking(move || store.switch_back()).await
    } else {
        tokio::task::spawn_blocking(move || service.switch_back()).await
    };
    match result {
        Ok(Ok(id)) => Json(json!({ "serving": id })).into_response(),
        Ok(Err(e)) => error(StatusCode::CONFLICT, "failed_precondition", e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    }
}

/// The most-retrieved chunks since the served generation was loaded (`?limit=N`, default 20): the
/// detail behind `switchboard_retrieval_concentration_ratio`.
async fn hits(
    State(state): State<HttpState>,
    axum::extract::Query(params): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Response {
    let limit = match params.get("limit").map(|l| l.parse::<usize>()) {
        None => 20,
        Some(Ok(n)) if n <= 1000 => n,
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_argument",
                "limit: must be an integer from 0 to 1000".into(),
            );
        }
    };
    let top: Vec<serde_json::Value> = state
        .metrics
        .top_chunks(limit)
        .into_iter()
        .map(|(chunk, hits)| json!({ "chunkId": chunk, "hits": hits }))
        .collect();
    Json(json!({ "generation": state.service().and_then(|s| s.generation()), "chunks": top }))
        .into_response()
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

async fn readyz(State(state): State<HttpState>) -> Response {
    if let Some(engine) = &state.engine
        && engine.active().is_none()
    {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "no RuntimeConfig applied yet".into(),
        );
    }
    if state.service().is_some_and(|s| s.ready()) {
        (StatusCode::OK, "ready").into_response()
    } else {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "no index generation loaded".into(),
        )
    }
}

fn feedback_status(err: &FeedbackError) -> StatusCode {
    match err {
        FeedbackError::Malformed(_) | FeedbackError::UnknownOutcome(_) => StatusCode::BAD_REQUEST,
        FeedbackError::BadSignature(_) => StatusCode::UNAUTHORIZED,
        FeedbackError::Expired(_) => StatusCode::GONE,
        FeedbackError::Replayed(_) => StatusCode::CONFLICT,
        FeedbackError::Unavailable(_) | FeedbackError::NotServing(_) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
    }
}

async fn answer(
    State(state): State<HttpState>,
    body: Result<Json<AnswerRequest>, JsonRejection>,
) -> Response {
    let Json(request) = match body {
        Ok(body) => body,
        Err(rejection) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_argument",
                format!("request body: {}", rejection.body_text()),
            );
        }
    };
    if request.stream {
        return answer_events(state.serving.as_ref(), request).await;
    }
    match state.serving.answer(request).await {
        Ok(answer) => Json(answer).into_response(),
        Err(err) => err.into_response(),
    }
}

/// A response of server-sent events from a channel (ends when the channel closes).
fn sse(events: tokio::sync::mpsc::UnboundedReceiver<Event>) -> Response {
    let stream = futures::stream::unfold(events, |mut events| async move {
        let event = events.recv().await?;
        Some((Ok::<_, std::convert::Infallible>(event), events))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn json_event(name: &str, data: &impl serde::Serialize) -> Event {
    Event::default()
        .event(name)
        .json_data(data)
        .unwrap_or_else(|e| Event::default().event("error").data(e.to_string()))
}

/// `POST /v1/answer` with `"stream": true`: `started` (model, passages), `delta` (`{"text"}`)
/// events while the model generates, then `answer` (the same body as without streaming) or
/// `error` (`{code, message}`). Errors before anything streamed get their usual status code.
async fn answer_events(serving: &dyn Serving, request: AnswerRequest) -> Response {
    use crate::answer::{AnswerEvent, AnswerItem};
    let mut items = match serving.answer_stream(request).await {
        Ok(items) => items,
        Err(err) => return err.into_response(),
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(item) = items.recv().await {
            let event = match item {
                AnswerItem::Event(AnswerEvent::Started { model, passages }) => {
                    json_event("started", &json!({ "model": model, "passages": passages }))
                }
                AnswerItem::Event(AnswerEvent::Delta(text)) => {
                    json_event("delta", &json!({ "text": text }))
                }
                AnswerItem::Done(done) => match *done {
                    Ok(answer) => json_event("answer", &answer),
                    Err(e) => json_event(
                        "error",
                        &json!({ "code": e.outcome(), "message": e.to_string() }),
                    ),
                },
            };
            if tx.send(event).is_err() {
                break;
            }
        }
    });
    sse(rx)
}

async fn feedback(
    State(state): State<HttpState>,
    body: Result<Json<FeedbackRequest>, JsonRejection>,
) -> Response {
    let Json(request) = match body {
        Ok(body) => body,
        Err(rejection) => {
            state.metrics.feedback_rejected("malformed");
            return error(
                StatusCode::BAD_REQUEST,
                "malformed",
                format!("request body: {}", rejection.body_text()),
            );
        }
    };
    match state.serving.feedback(request).await {
        Ok(()) => Json(json!({ "accepted": true })).into_response(),
        Err(err) => error(feedback_status(&err), err.reason(), err.to_string()),
    }
}

/// Query of `GET /v1/experiments/{name}/cuped`.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CupedParams {
    /// The metric compared (`escalationRate`, ...).
    metric: switchboard_crds::Metric,
    /// The pre-period covariate; default: the metric.
    #[serde(default)]
    covariate: Option<switchboard_crds::Metric>,
    /// When the experiment started (Unix seconds).
    started_at: i64,
    /// Length of the pre-period (`336h`).
    preperiod: String,
    /// Only interactions before this (Unix seconds) count for the metric: those whose outcomes
    /// have settled; default: now.
    #[serde(default)]
    until: Option<i64>,
}

/// Query of `GET /v1/experiments/{name}/units`.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct UnitsParams {
    /// When the experiment started (Unix seconds).
    started_at: i64,
    /// Until when (Unix seconds, exclusive: the analysis' now); default: the end of this second.
    #[serde(default)]
    until: Option<i64>,
    /// Comma-separated `metric:settle` pairs, e.g. `escalationRate:72h,refusalRate:0s`.
    metrics: String,
    /// Comma-separated request attributes to break the first metric down by (at most 3).
    #[serde(default)]
    segments: String,
}

/// Parses `escalationRate:72h,refusalRate:0s` into metrics and their settle windows.
fn parse_metric_windows(
    text: &str,
) -> Result<
    (
        Vec<switchboard_crds::Metric>,
        BTreeMap<switchboard_crds::Metric, Duration>,
    ),
    String,
> {
    let mut metrics = Vec::new();
    let mut settle = BTreeMap::new();
    for item in text.split(',').filter(|i| !i.trim().is_empty()) {
        let (name, window) = item.split_once(':').unwrap_or((item, "0s"));
        let metric: switchboard_crds::Metric =
            serde_json::from_value(serde_json::Value::String(name.trim().to_owned()))
                .map_err(|_| format!("metrics: `{}` is not a metric", name.trim()))?;
        let window = switchboard_crds::parse_duration(window.trim())
            .map_err(|e| format!("metrics: {}: {e}", metric.as_str()))?;
        metrics.push(metric);
        settle.insert(metric, window);
    }
    if metrics.is_empty() || metrics.len() > 16 {
        return Err("metrics: name 1 to 16 metrics as metric:settle pairs".to_owned());
    }
    Ok((metrics, settle))
}

/// Unit-level statistics of an experiment on this Router, from the outcome store: per arm the
/// units and interactions enrolled, per metric the delta-method moments over settled
/// interactions (what the operator's Experiment analysis decides on; docs/statistics.md).
async fn experiment_units(
    State(state): State<HttpState>,
    axum::extract::Path(name): axum::extract::Path<String>,
    params: Result<axum::extract::Query<UnitsParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let report = match Report::read(&state, params, |p: &UnitsParams| p.metrics.as_str()) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let Report {
        engine,
        params,
        metrics,
        settle,
        active,
    } = report;
    let segments: Vec<String> = params
        .segments
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if segments.len() > 3 {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "segments: at most 3 attributes".into(),
        );
    }
    let now = unix_now();
    let query = switchboard_store::UnitsQuery {
        router: &active.router,
        experiment: &name,
        metrics: &metrics,
        started_at: params.started_at,
        now: params.until.unwrap_or(now + 1),
        settle: &settle,
        segments: &segments,
    };
    store_response(engine, engine.store().experiment_units(&query).await)
}

/// Query of `GET /v1/holdout/units`.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HoldoutParams {
    /// When the holdout started (Unix seconds).
    started_at: i64,
    /// Until when (Unix seconds, exclusive); default: the end of this second.
    #[serde(default)]
    until: Option<i64>,
    /// Comma-separated `metric:settle` pairs, e.g. `escalationRate:72h`.
    metrics: String,
}

/// The Router's permanent holdout against everyone else, from the outcome store: per group
/// (`holdout`, `exposed`) the units and interactions since the start, per metric the
/// delta-method moments over settled interactions (what the Router controller reports in
/// `status.holdout`).
async fn holdout_units(
    State(state): State<HttpState>,
    params: Result<axum::extract::Query<HoldoutParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let report = match Report::read(&state, params, |p: &HoldoutParams| p.metrics.as_str()) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let Report {
        engine,
        params,
        metrics,
        settle,
        active,
    } = report;
    let query = switchboard_store::HoldoutQuery {
        router: &active.router,
        started_at: params.started_at,
        now: params.until.unwrap_or(unix_now() + 1),
        metrics: &metrics,
        settle: &settle,
    };
    store_response(engine, engine.store().holdout_units(&query).await)
}

/// What an outcome-store report handler reads before its query: the engine, its query
/// parameters, their `metric:settle` list and the RuntimeConfig in force.
struct Report<'a, P> {
    engine: &'a Arc<Engine>,
    params: P,
    metrics: Vec<switchboard_crds::Metric>,
    settle: BTreeMap<switchboard_crds::Metric, Duration>,
    active: Arc<crate::engine::Active>,
}

impl<'a, P> Report<'a, P> {
    /// Reads them, or the error response that says which one is missing or wrong.
    fn read(
        state: &'a HttpState,
        params: Result<axum::extract::Query<P>, axum::extract::rejection::QueryRejection>,
        metrics_of: impl Fn(&P) -> &str,
    ) -> Result<Self, Box<Response>> {
        let engine = state.engine()?;
        let params = query_params(params)?;
        let (metrics, settle) = parse_metric_windows(metrics_of(&params))
            .map_err(|e| Box::new(error(StatusCode::BAD_REQUEST, "invalid_argument", e)))?;
        let active = active_config(engine)?;
        Ok(Self {
            engine,
            params,
            metrics,
            settle,
            active,
        })
    }
}

/// The RuntimeConfig in force, or the 503 that says there is none yet.
fn active_config(engine: &Engine) -> Result<Arc<crate::engine::Active>, Box<Response>> {
    engine.active().ok_or_else(|| {
        Box::new(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "no RuntimeConfig applied yet".into(),
        ))
    })
}

/// Now, in Unix seconds.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// An outcome-store answer as JSON: a question the stored data cannot answer is the caller's
/// 400, any other failure a retryable 503 (counted in `switchboard_store_errors_total`).
fn store_response<T: serde::Serialize>(
    engine: &Engine,
    result: Result<T, switchboard_store::StoreError>,
) -> Response {
    match result {
        Ok(data) => Json(data).into_response(),
        Err(e @ switchboard_store::StoreError::Unsupported(_)) => {
            error(StatusCode::BAD_REQUEST, "invalid_argument", e.to_string())
        }
        Err(e) => {
            engine.metrics().store_error(e.label());
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            )
        }
    }
}

/// A request's query parameters, or the 400 that names what was wrong with them.
fn query_params<T>(
    params: Result<axum::extract::Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, Box<Response>> {
    params
        .map(|axum::extract::Query(p)| p)
        .map_err(|rejection| {
            Box::new(error(
                StatusCode::BAD_REQUEST,
                "invalid_argument",
                format!("query: {}", rejection.body_text()),
            ))
        })
}

/// Per-arm CUPED statistics of an experiment on this Router, from the outcome store (what the
/// operator's Experiment analysis reads when `spec.cuped` is set; docs/statistics.md).
async fn experiment_cuped(
    State(state): State<HttpState>,
    axum::extract::Path(name): axum::extract::Path<String>,
    params: Result<axum::extract::Query<CupedParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let engine = match state.engine() {
        Ok(e) => e,
        Err(r) => return *r,
    };
    let params = match query_params(params) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let preperiod = match switchboard_crds::parse_duration(&params.preperiod) {
        Ok(d) => d,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_argument",
                format!("preperiod: {e}"),
            );
        }
    };
    let active = match active_config(engine) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let now = unix_now();
    let query = switchboard_store::CupedQuery {
        router: &active.router,
        experiment: &name,
        metric: params.metric,
        covariate: params.covariate.unwrap_or(params.metric),
        started_at: params.started_at,
        preperiod,
        now: params.until.unwrap_or(now + 1),
    };
    store_response(engine, engine.store().cuped(&query).await)
}

/// The questions this Router's knowledge base does not answer (escalated, nothing found,
/// refused, or below `minScore`), clustered by meaning and ranked by volume, from the outcome
/// store: what the KnowledgeBase's `ContentCovers` condition reads (docs/training-data.md).
async fn coverage_gaps(
    State(state): State<HttpState>,
    params: Result<
        axum::extract::Query<crate::flywheel::GapParams>,
        axum::extract::rejection::QueryRejection,
    >,
) -> Response {
    let engine = match state.engine() {
        Ok(e) => e,
        Err(r) => return *r,
    };
    let params = match query_params(params) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let Ok(_report) = state.reports.try_acquire() else {
        state.metrics.limit_refused("admin_busy");
        let mut response = error(
            StatusCode::TOO_MANY_REQUESTS,
            "overloaded",
            "a coverage-gap report is being computed; retry later".into(),
        );
        response.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from_static("5"),
        );
        return response;
    };
    match crate::flywheel::gaps_of_engine(engine, params).await {
        Ok(report) => Json(report).into_response(),
        Err(crate::flywheel::GapError::Invalid(m)) => {
            error(StatusCode::BAD_REQUEST, "invalid_argument", m)
        }
        Err(crate::flywheel::GapError::Unavailable(m)) => {
            error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", m)
        }
    }
}

/// `{revision, router, adapters: [{lineage, version, role, loaded}], knowledgeBase, generation}`.
async fn config(State(state): State<HttpState>) -> Response {
    let engine = match state.engine() {
        Ok(e) => e,
        Err(r) => return *r,
    };
    let active = match active_config(engine) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let resident = engine.resident_adapters().await;
    let adapters: Vec<serde_json::Value> = active
        .config
        .adapters
        .iter()
        .map(|a| {
            let id = crate::engine::adapter_id(&a.lineage, &a.version);
            json!({
                "lineage": a.lineage,
                "version": a.version,
                "role": a.role,
                "loaded": resident.contains(&id),
            })
        })
        .collect();
    Json(json!({
        "revision": active.config.revision,
        "router": active.router,
        "knowledgeBase": active.config.knowledge_base.name,
        "generation": active.retriever.generation().id,
        "adapters": adapters,
        // Fingerprints (not the keys), the signing key first: follows a key rotation.
        "tokenKeys": engine.keys().fingerprints(),
    }))
    .into_response()
}

fn openai_error(status: StatusCode, body: ErrorBody) -> Response {
    (status, Json(body)).into_response()
}

/// OpenAI-compatible chat completions on the small model (non-streaming).
async fn chat_completions(
    State(state): State<HttpState>,
    body: Result<Json<ChatRequest>, JsonRejection>,
) -> Response {
    let Some(active) = state.engine.as_ref().and_then(|e| e.active()) else {
        return openai_error(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorBody::server("unavailable", "no model loaded yet"),
        );
    };
    let Json(request) = match body {
        Ok(body) => body,
        Err(rejection) => {
            return openai_error(
                StatusCode::BAD_REQUEST,
                ErrorBody::invalid("body", rejection.body_text()),
            );
        }
    };
    if request.stream == Some(true) {
        return chat_completion_chunks(&active, request);
    }
    match crate::openai_server::complete(&active, request).await {
        Ok(response) => Json(response).into_response(),
        Err((status, body)) => openai_error(status, body),
    }
}

/// `stream: true`: `chat.completion.chunk` events (the role first, then content pieces, then the
/// finish reason), then `data: [DONE]`, as OpenAI's clients expect.
fn chat_completion_chunks(active: &crate::engine::Active, request: ChatRequest) -> Response {
    let started = match crate::openai_server::start(active, request) {
        Ok(started) => started,
        Err((status, body)) => return openai_error(status, body),
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let data = |chunk: &crate::openai_server::ChatChunk| {
        Event::default()
            .json_data(chunk)
            .unwrap_or_else(|e| Event::default().data(e.to_string()))
    };
    let first = started.chunk(json!({"role": "assistant", "content": ""}), None);
    let last = started.chunk(json!({}), None);
    let piece = started.chunk(json!({}), None);
    let _ = tx.send(data(&first));
    tokio::spawn(async move {
        let sender = tx.clone();
        let result = started
            .run(|text| {
                let mut chunk = piece.clone();
                chunk.choices[0].delta = json!({ "content": text });
                let _ = sender.send(data(&chunk));
            })
            .await;
        match result {
            Ok((_, finish, _)) => {
                let mut chunk = last;
                chunk.choices[0].finish_reason = Some(finish);
                let _ = tx.send(data(&chunk));
            }
            Err((_, body)) => {
                let _ = tx.send(
                    Event::default()
                        .json_data(&body)
                        .unwrap_or_else(|e| Event::default().data(e.to_string())),
                );
            }
        }
        let _ = tx.send(Event::default().data("[DONE]"));
    });
    sse(rx)
}
