//! gRPC adapter: converts `switchboard.runtime.v1` messages to the service's types and back, and
//! maps [`ServiceError`] to `tonic::Status` in one place.
use std::sync::Arc;

use switchboard_index::{Passage, RerankStatus, SearchResponse};
use switchboard_proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::service::{RetrievalService, RetrieveRequest, ServiceError, StageSwitches};

/// `switchboard.runtime.v1.Retrieval` over a [`RetrievalService`].
#[derive(Debug, Clone)]
pub struct GrpcRetrieval {
    service: Arc<RetrievalService>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl GrpcRetrieval {
    /// Wraps the service.
    pub fn new(service: Arc<RetrievalService>, metrics: Arc<crate::metrics::Metrics>) -> Self {
        Self { service, metrics }
    }
}

impl From<ServiceError> for Status {
    fn from(err: ServiceError) -> Self {
        match err {
            ServiceError::InvalidArgument { .. } => Status::invalid_argument(err.to_string()),
            ServiceError::Unavailable(message) => Status::unavailable(message),
            ServiceError::Internal(message) => Status::internal(message),
        }
    }
}

#[tonic::async_trait]
impl pb::retrieval_server::Retrieval for GrpcRetrieval {
    async fn retrieve(
        &self,
        request: Request<pb::RetrieveRequest>,
    ) -> Result<Response<pb::RetrieveResponse>, Status> {
        let request = request.into_inner();
        let stages = request.stages.unwrap_or_default();
        let result = self
            .service
            .retrieve(RetrieveRequest {
                query: request.query,
                top_k: request.top_k as usize,
                stages: StageSwitches {
                    bm25: stages.bm25,
                    dense: stages.dense,
                    rerank: stages.rerank,
                    recency: stages.recency,
                },
            })
            .await;
        match result {
            Ok(response) => {
                self.metrics.request("grpc", "ok");
                Ok(Response::new(to_proto(response)))
            }
            Err(err) => {
                self.metrics.request("grpc", err.outcome());
                Err(err.into())
            }
        }
    }
}

fn millis(d: Option<std::time::Duration>) -> f64 {
    d.map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

/// The protobuf form of a search response.
pub fn to_proto(response: SearchResponse) -> pb::RetrieveResponse {
    let t = &response.timings;
    pb::RetrieveResponse {
        timings: Some(pb::StageTimings {
            bm25_ms: millis(t.bm25),
            dense_ms: millis(t.embed) + millis(t.dense),
            fusion_ms: millis(Some(t.fusion)),
            rerank_ms: millis(t.rerank),
            total_ms: millis(Some(t.total)),
        }),
        generation: response.generation,
        failure: response
            .failure
            .map(|f| serde_json::to_string(&f).unwrap_or_default())
            .unwrap_or_default(),
        rerank: match response.rerank {
            RerankStatus::Off => "off",
            RerankStatus::Completed { .. } => "completed",
            RerankStatus::TimedOut { .. } => "timed_out",
            RerankStatus::Failed { .. } => "failed",
        }
        .to_owned(),
        passages: response.passages.into_iter().map(passage).collect(),
    }
}

fn passage(p: Passage) -> pb::Passage {
    pb::Passage {
        scores: Some(pb::Scores {
            bm25: p.scores.bm25,
            dense: p.scores.dense,
            fused: p.scores.fused,
            decay: p.scores.decay,
            rerank: p.scores.rerank,
            r#final: p.scores.final_score,
        }),
        chunk_id: p.chunk_id,
        doc_id: p.doc_id,
        section_id: p.section_id,
        source: p.source,
        title: p.title,
        breadcrumb: p.breadcrumb,
        text: p.text,
        section_text: p.section_text,
        last_modified: p.last_modified.unwrap_or(0),
        freshness_class: p.freshness_class,
    }
}
