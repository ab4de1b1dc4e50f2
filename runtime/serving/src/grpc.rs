//! gRPC adapter: converts `switchboard.runtime.v1` messages to the service's types and back, and
//! maps [`ServiceError`] to `tonic::Status` in one place.
use std::sync::Arc;

use switchboard_index::{Passage, RerankStatus, SearchResponse};
use switchboard_proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::service::{RetrieveRequest, ServiceError, StageSwitches};
use crate::serving::Serving;

/// `switchboard.runtime.v1.Retrieval` over a [`Serving`].
#[derive(Debug, Clone)]
pub struct GrpcRetrieval {
    serving: Arc<dyn Serving>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl GrpcRetrieval {
    /// Serves `serving`'s retrieval, counting requests in `metrics`.
    pub fn new(serving: Arc<dyn Serving>, metrics: Arc<crate::metrics::Metrics>) -> Self {
        Self { serving, metrics }
    }
}

impl From<ServiceError> for Status {
    fn from(err: ServiceError) -> Self {
        match err {
            ServiceError::InvalidArgument { .. } => Status::invalid_argument(err.to_string()),
            // UNAVAILABLE: clients' retry policies treat it as retryable, which shedding is.
            ServiceError::Unavailable(message) | ServiceError::Overloaded(message) => {
                Status::unavailable(message)
            }
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
        let metrics = &self.metrics;
        let result = self
            .serving
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
                metrics.request("grpc", "ok");
                Ok(Response::new(to_proto(response)))
            }
            Err(err) => {
                metrics.request("grpc", err.outcome());
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

/// `switchboard.runtime.v1.Assistant` over a [`Serving`].
#[derive(Debug, Clone)]
pub struct GrpcAssistant {
    serving: Arc<dyn Serving>,
}

impl GrpcAssistant {
    /// Serves `serving`'s answers and feedback.
    pub fn new(serving: Arc<dyn Serving>) -> Self {
        Self { serving }
    }
}

impl From<crate::answer::FeedbackError> for Status {
    fn from(err: crate::answer::FeedbackError) -> Self {
        use crate::answer::FeedbackError as E;
        match err {
            E::Malformed(m) | E::UnknownOutcome(m) => Status::invalid_argument(m),
            E::BadSignature(m) => Status::unauthenticated(m),
            E::Expired(m) => Status::failed_precondition(m),
            E::Replayed(m) => Status::already_exists(m),
            E::Unavailable(m) | E::NotServing(m) => Status::unavailable(m),
        }
    }
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn index32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The protobuf form of an answer.
pub fn answer_to_proto(a: crate::answer::AnswerResponse) -> pb::AnswerResponse {
    pb::AnswerResponse {
        answer: a.answer,
        citations: a
            .citations
            .into_iter()
            .map(|c| pb::Citation {
                index: index32(c.index),
                chunk_id: c.chunk_id,
                document_id: c.document_id,
                breadcrumb: c.breadcrumb,
                source: c.source,
                passage: index32(c.passage),
                evidence: c.evidence,
            })
            .collect(),
        invalid_citations: a.invalid_citations.into_iter().map(index32).collect(),
        refused: a.refused,
        passages: a.passages.into_iter().map(passage_to_proto).collect(),
        provenance: Some(pb::Provenance {
            router: a.provenance.router,
            kb_generation: a.provenance.kb_generation,
            model: a.provenance.model,
            adapter: a.provenance.adapter.map(|r| pb::AdapterRef {
                lineage: r.lineage,
                version: r.version,
                role: r.role,
            }),
            route_reason: a.provenance.route_reason,
            experiment: a.provenance.experiment,
            arm: a.provenance.arm,
            config_revision: a.provenance.config_revision,
        }),
        interaction_token: a.interaction_token,
        rewritten_query: a.rewritten_query.unwrap_or_default(),
        path: a.path,
        evidence: a
            .evidence
            .into_iter()
            .map(|e| pb::EvidenceSentence {
                passage: index32(e.passage),
                text: e.text,
                score: e.score,
            })
            .collect(),
    }
}

fn answer_request(r: pb::AnswerRequest) -> crate::answer::AnswerRequest {
    crate::answer::AnswerRequest {
        query: r.query,
        user_id: non_empty(r.user_id),
        account_id: non_empty(r.account_id),
        attributes: r.attributes.into_iter().collect(),
        conversation_id: non_empty(r.conversation_id),
        force_model: non_empty(r.force_model),
        stream: false,
        messages: r
            .messages
            .into_iter()
            .map(|t| crate::answer::HistoryTurn {
                role: t.role,
                content: t.content,
            })
            .collect(),
        passages: None,
    }
}

fn passage_to_proto(p: crate::answer::NumberedPassage) -> pb::NumberedPassage {
    pb::NumberedPassage {
        index: index32(p.index),
        chunk_id: p.chunk_id,
        document_id: p.document_id,
        breadcrumb: p.breadcrumb,
        source: p.source,
        text: p.text,
        score: p.score,
    }
}

/// The stream of `AnswerStream`.
pub type AnswerEventStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::AnswerEvent, Status>> + Send>>;

#[tonic::async_trait]
impl pb::assistant_server::Assistant for GrpcAssistant {
    async fn answer(
        &self,
        request: Request<pb::AnswerRequest>,
    ) -> Result<Response<pb::AnswerResponse>, Status> {
        let answer = self
            .serving
            .answer(answer_request(request.into_inner()))
            .await?;
        Ok(Response::new(answer_to_proto(answer)))
    }

    type AnswerStreamStream = AnswerEventStream;

    async fn answer_stream(
        &self,
        request: Request<pb::AnswerRequest>,
    ) -> Result<Response<AnswerEventStream>, Status> {
        use crate::answer::{AnswerEvent, AnswerItem};
        use pb::answer_event::Event;
        let items = self
            .serving
            .answer_stream(answer_request(request.into_inner()))
            .await?;
        let stream = futures::stream::unfold(items, |mut items| async move {
            let item = items.recv().await?;
            let event = match item {
                AnswerItem::Event(AnswerEvent::Started { model, passages }) => {
                    Ok(Event::Started(pb::AnswerStarted {
                        model,
                        passages: passages.into_iter().map(passage_to_proto).collect(),
                    }))
                }
                AnswerItem::Event(AnswerEvent::Delta(text)) => Ok(Event::Delta(text)),
                AnswerItem::Done(done) => match *done {
                    Ok(answer) => Ok(Event::Answer(answer_to_proto(answer))),
                    Err(e) => Err(Status::from(e)),
                },
            };
            Some((event.map(|e| pb::AnswerEvent { event: Some(e) }), items))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn feedback(
        &self,
        request: Request<pb::FeedbackRequest>,
    ) -> Result<Response<pb::FeedbackResponse>, Status> {
        let r = request.into_inner();
        self.serving
            .feedback(crate::answer::FeedbackRequest {
                token: r.token,
                outcome: r.outcome,
                csat: r.csat.map(i64::from),
            })
            .await?;
        Ok(Response::new(pb::FeedbackResponse { accepted: true }))
    }
}
