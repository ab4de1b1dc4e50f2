//! The public surface of a runtime — retrieve, answer (whole or streamed), feedback — as one
//! trait that both front ends call: the gRPC services of [`crate::grpc`] and the HTTP handlers
//! of [`crate::http`] translate their wire formats and errors, [`Serving`] does the work. Tests
//! drive the answer path through it in-process, and a front end can be tested against a stand-in.

use std::{fmt, future::Future, pin::Pin, sync::Arc};

use switchboard_index::SearchResponse;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::answer::{AnswerItem, AnswerRequest, AnswerResponse, FeedbackError, FeedbackRequest};
use crate::engine::Engine;
use crate::service::{RetrievalService, RetrieveRequest, ServiceError};

/// A boxed, sendable future (the trait is used as `dyn Serving`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why answers and feedback are refused by a runtime serving retrieval only.
pub const NO_ROUTER: &str =
    "no Router: answers need a RuntimeConfig (--runtime-config) or a Router manifest";

/// Why nothing is retrieved before the first index generation is loaded.
pub const NO_GENERATION: &str = "no index generation loaded yet";

/// The retrieval service in force: the engine's (once a RuntimeConfig is applied) when there is
/// an engine, else the fixed one of a retrieval-only runtime.
pub fn service_in_force(
    service: Option<&Arc<RetrievalService>>,
    engine: Option<&Arc<Engine>>,
) -> Option<Arc<RetrievalService>> {
    match engine {
        Some(engine) => engine.active().map(|a| Arc::clone(&a.retrieval)),
        None => service.cloned(),
    }
}

/// What a runtime serves, whatever the transport.
pub trait Serving: Send + Sync + fmt::Debug {
    /// Ranked passages for a query.
    fn retrieve(
        &self,
        request: RetrieveRequest,
    ) -> BoxFuture<'_, Result<SearchResponse, ServiceError>>;

    /// A grounded answer with its citations and interaction token.
    fn answer(&self, request: AnswerRequest)
    -> BoxFuture<'_, Result<AnswerResponse, ServiceError>>;

    /// A streamed answer: an error before anything was generated is returned as such; after
    /// that the items arrive on the receiver, ending with [`AnswerItem::Done`]. Dropping the
    /// receiver stops the generation.
    fn answer_stream(
        &self,
        request: AnswerRequest,
    ) -> BoxFuture<'_, Result<UnboundedReceiver<AnswerItem>, ServiceError>>;

    /// Records the outcome of an answered interaction (its token, once).
    fn feedback(&self, request: FeedbackRequest) -> BoxFuture<'_, Result<(), FeedbackError>>;
}

/// The runtime's own [`Serving`]: the engine of the RuntimeConfig in force, or a fixed
/// retrieval service when no RuntimeConfig drives serving (retrieval only: answers and
/// feedback are refused with [`NO_ROUTER`]).
#[derive(Clone, Debug, Default)]
pub struct Runtime {
    service: Option<Arc<RetrievalService>>,
    engine: Option<Arc<Engine>>,
}

impl Runtime {
    /// Serves `engine` when there is one, else retrieval alone from `service` (neither: nothing
    /// is served yet).
    pub fn new(service: Option<Arc<RetrievalService>>, engine: Option<Arc<Engine>>) -> Self {
        Self { service, engine }
    }

    /// Serves answers, feedback and retrieval from `engine`.
    pub fn engine(engine: Arc<Engine>) -> Self {
        Self::new(None, Some(engine))
    }

    /// The retrieval service in force ([`service_in_force`]).
    pub fn service(&self) -> Option<Arc<RetrievalService>> {
        service_in_force(self.service.as_ref(), self.engine.as_ref())
    }

    fn answering(&self) -> Result<&Arc<Engine>, ServiceError> {
        self.engine
            .as_ref()
            .ok_or_else(|| ServiceError::Unavailable(NO_ROUTER.to_owned()))
    }
}

impl Serving for Runtime {
    fn retrieve(
        &self,
        request: RetrieveRequest,
    ) -> BoxFuture<'_, Result<SearchResponse, ServiceError>> {
        Box::pin(async move {
            let service = self
                .service()
                .ok_or_else(|| ServiceError::Unavailable(NO_GENERATION.to_owned()))?;
            service.retrieve(request).await
        })
    }

    fn answer(
        &self,
        request: AnswerRequest,
    ) -> BoxFuture<'_, Result<AnswerResponse, ServiceError>> {
        Box::pin(async move { crate::answer::answer(self.answering()?, request).await })
    }

    fn answer_stream(
        &self,
        request: AnswerRequest,
    ) -> BoxFuture<'_, Result<UnboundedReceiver<AnswerItem>, ServiceError>> {
        Box::pin(async move {
            let engine = Arc::clone(self.answering()?);
            crate::answer::answer_stream(engine, request).await
        })
    }

    fn feedback(&self, request: FeedbackRequest) -> BoxFuture<'_, Result<(), FeedbackError>> {
        Box::pin(async move {
            let engine = self
                .engine
                .as_ref()
                .ok_or_else(|| FeedbackError::NotServing(NO_ROUTER.to_owned()))?;
            crate::answer::feedback(engine, &request).await
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt as _;
    use switchboard_proto::v1 as pb;

    use super::*;
    use crate::metrics::Metrics;

    /// A stand-in runtime: at capacity for answers, feedback already counted.
    #[derive(Debug)]
    struct Saturated;

    impl Serving for Saturated {
        fn retrieve(
            &self,
            _: RetrieveRequest,
        ) -> BoxFuture<'_, Result<SearchResponse, ServiceError>> {
            Box::pin(async { Err(ServiceError::Unavailable("warming up".into())) })
        }
        fn answer(&self, _: AnswerRequest) -> BoxFuture<'_, Result<AnswerResponse, ServiceError>> {
            Box::pin(async { Err(ServiceError::Overloaded("queue full".into())) })
        }
        fn answer_stream(
            &self,
            _: AnswerRequest,
        ) -> BoxFuture<'_, Result<UnboundedReceiver<AnswerItem>, ServiceError>> {
            Box::pin(async { Err(ServiceError::Overloaded("queue full".into())) })
        }
        fn feedback(&self, request: FeedbackRequest) -> BoxFuture<'_, Result<(), FeedbackError>> {
            Box::pin(async move { Err(FeedbackError::Replayed(request.token)) })
        }
    }

    async fn post(app: axum::Router, path: &str, body: &str) -> (StatusCode, String) {
        use tower_service::Service as _;
        let mut app = app;
        let request = Request::post(path)
            .header("content-type", "application/json")
            .body(Body::from(body.to_owned()))
            .unwrap();
        let response = app.call(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Both front ends answer what the trait says, each in its own wire format: the HTTP
    /// status codes and the gRPC codes come from one error per outcome.
    #[tokio::test]
    async fn both_front_ends_serve_through_the_trait() {
        let metrics = Arc::new(Metrics::new().unwrap());
        let mut state = crate::http::HttpState::new(None, None, false, Arc::clone(&metrics));
        state.serving = Arc::new(Saturated);
        let limits = || crate::limits::RequestLimits {
            body_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            max_body_bytes: 64 * 1024,
            metrics: Arc::clone(&metrics),
        };
        let app = crate::http::public_router(state.clone(), limits(), None);
        let (status, body) = post(app.clone(), "/v1/answer", r#"{"query":"refund?"}"#).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
        assert!(body.contains("queue full"), "{body}");
        let (status, body) = post(
            app.clone(),
            "/v1/feedback",
            r#"{"token":"t1","outcome":"resolved"}"#,
        )
        .await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        let (status, body) = post(app, "/v1/retrieve", r#"{"query":"refund?"}"#).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body.contains("warming up"), "{body}");

        use pb::assistant_server::Assistant as _;
        use pb::retrieval_server::Retrieval as _;
        let assistant = crate::grpc::GrpcAssistant::new(Arc::clone(&state.serving));
        let request = pb::AnswerRequest {
            query: "refund?".into(),
            ..Default::default()
        };
        let status = assistant
            .answer(tonic::Request::new(request))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        let feedback = pb::FeedbackRequest {
            token: "t1".into(),
            outcome: "resolved".into(),
            ..Default::default()
        };
        let status = assistant
            .feedback(tonic::Request::new(feedback))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::AlreadyExists);
        let retrieval = crate::grpc::GrpcRetrieval::new(Arc::clone(&state.serving), metrics);
        let request = pb::RetrieveRequest {
            query: "refund?".into(),
            ..Default::default()
        };
        let status = retrieval
            .retrieve(tonic::Request::new(request))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
    }

    /// A runtime without a Router serves retrieval alone and says why answers are refused.
    #[tokio::test]
    async fn a_runtime_without_a_router_refuses_answers_and_feedback() {
        let runtime = Runtime::default();
        let err = runtime.answer(AnswerRequest::default()).await.unwrap_err();
        assert!(
            matches!(&err, ServiceError::Unavailable(m) if m == NO_ROUTER),
            "{err}"
        );
        let err = runtime
            .feedback(FeedbackRequest::default())
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "unavailable");
        let err = runtime
            .retrieve(RetrieveRequest::default())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no index generation"), "{err}");
    }
}
