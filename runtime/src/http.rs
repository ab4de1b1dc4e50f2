//! HTTP/JSON mirror of the gRPC API, plus `/metrics`, `/healthz`, `/readyz` and generation admin.
use std::sync::Arc;

use axum::extract::{Json, State, rejection::JsonRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::metrics::Metrics;
use crate::service::{RetrievalService, RetrieveRequest, ServiceError};

/// Shared state of the HTTP handlers.
#[derive(Debug, Clone)]
pub struct HttpState {
    /// The retrieval service.
    pub service: Arc<RetrievalService>,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
}

/// The HTTP routes.
pub fn router(state: HttpState) -> axum::Router {
    axum::Router::new()
        .route("/v1/retrieve", post(retrieve))
        .route("/v1/generations", get(generations))
        .route("/v1/generations/switch-back", post(switch_back))
        .route("/v1/hits", get(hits))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

fn error(status: StatusCode, code: &str, message: String) -> Response {
    (status, Json(json!({ "code": code, "message": message }))).into_response()
}

impl IntoResponse for ServiceError {
    fn into_response(self) -> Response {
        let status = match self {
            Self::InvalidArgument { .. } => StatusCode::BAD_REQUEST,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
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
    match state.service.retrieve(request).await {
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
    match state.service.store().list() {
        Ok(list) => Json(json!({
            "serving": state.service.generation(),
            "generations": list,
        }))
        .into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    }
}

async fn switch_back(State(state): State<HttpState>) -> Response {
    let service = Arc::clone(&state.service);
    match tokio::task::spawn_blocking(move || service.switch_back()).await {
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
    Json(json!({ "generation": state.service.generation(), "chunks": top })).into_response()
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

async fn readyz(State(state): State<HttpState>) -> Response {
    if state.service.ready() {
        (StatusCode::OK, "ready").into_response()
    } else {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "no index generation loaded".into(),
        )
    }
}
