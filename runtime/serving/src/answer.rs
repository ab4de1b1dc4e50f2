//! The answer pipeline (DESIGN.md "The runtime, one request") and feedback.
//!
//! experiment assignment -> optional rewrite -> retrieval on the pinned generation -> route
//! (small / large) -> adapter selection by domain centroid and version choice (stable / canary)
//! -> evidence: the passages' sentences scored against the question -> refusal without a model
//! call when no sentence clears the answerability threshold -> a grounded prompt of the best
//! evidence sentences as numbered facts -> generation (stopped at the end of the answer) -> the
//! output checked sentence by sentence against the facts it cites -> the generated answer, the
//! extractive one or a refusal, citations renumbered and mapped to passages -> provenance and a
//! signed interaction token; a sampled share is mirrored to a Shadow candidate off the critical
//! path. The grounding logic itself is `switchboard_policy::grounding` (pure, unit-tested).
//! Decisions are the pure functions of `switchboard-policy`; this module runs them against the
//! models and records the metrics of docs/metrics.md.
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use switchboard_crds::experiment::AssignmentUnit;
use switchboard_crds::router::GroundingMode;
use switchboard_crds::runtime_config::{AdapterRole, HOLDOUT_ARM};
use switchboard_index::{ChunkingSpec, Embedder, Passage, SearchResponse};
use switchboard_model::ModelError;
use switchboard_model::chat::ChatMessage;
use switchboard_model::generate::{GenerationConfig, Sampling};
use switchboard_model::generator_worker::StreamEvent;
use switchboard_policy::experiment::{Enrolment, UnitIds, in_router_holdout, unit_field};
use switchboard_policy::grounding::{
    AnswerPath, Decision, Evidence, EvidenceModel, OutputCheck, QuestionTerms, check_output,
    choose, evidence_sentences, expects, grounded_prompt, select_evidence,
};
use switchboard_policy::hash::unit_interval;
use switchboard_policy::{
    Claims, DifficultyModel, ModelKind, Outcome, OutcomeError, QueryFeatures, RetrievalSignals,
    RouteDecision, RouteInput, RouteRecord, ServingPlan, TokenError, Variant, cosine_distance,
    decide, enrol, is_refusal, new_interaction_id, rewrite_prompt, should_rewrite,
};

use switchboard_store::{Interaction, Recorded};

use crate::engine::{Active, Engine, LargeTarget, adapter_id};
use crate::openai::Message;
use crate::service::{RetrieveRequest, ServiceError, validate_query};

/// Cosine distance between the served and the shadow answer's embeddings above which the shadow
/// answer counts as `divergent`.
pub const DIVERGENCE_THRESHOLD: f64 = 0.25;
/// Characters of a passage put into the prompt (the small model's context and CPU prefill time
/// are the budget).
const PASSAGE_CHARS: usize = 700;
/// Characters of an expanded section (hierarchical chunking): the retrieved paragraph with the
/// section text around it.
const SECTION_CHARS: usize = 1_400;
/// Characters of passage text in the whole prompt when sections are expanded: expansions go to the
/// best-ranked passages while every later passage keeps room for its own chunk text, so the
/// prompt (prefill time on CPU) stays bounded at about 1,400 tokens.
const PROMPT_PASSAGE_CHARS: usize = 5_600;
/// Longest section whose sentences are all evidence candidates (longer ones: the chunk's).
const EVIDENCE_SECTION_CHARS: usize = 3_000;
/// Tokens allowed for a rewritten query.
pub const REWRITE_TOKENS: usize = 48;
/// Evidence sentences considered per answer at most (the encoder embeds them all, in one batch
/// with the question).
const MAX_EVIDENCE_CANDIDATES: usize = 96;
/// A fact scoring below this share of the best one is not given to the model.
const RELATIVE_EVIDENCE: f64 = 0.5;
/// Text after which generation stops: the answer is complete, or the model starts another turn.
const STOP_SEQUENCES: [&str; 3] = ["\n\n", "\nQuestion:", "\nFacts:"];

/// The headings of a breadcrumb (`[Doc > Section]` -> `Doc`, `Section`).
fn headings_of(breadcrumb: &str) -> Vec<String> {
    breadcrumb
        .trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(" > ")
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .collect()
}

/// What the evidence scorers read of a sentence: its section heading (the breadcrumb's last
/// part), for context, then the sentence.
pub fn scorer_text(breadcrumb: &str, sentence: &str) -> String {
    match headings_of(breadcrumb).last() {
        Some(heading) => format!("{heading}: {sentence}"),
        None => sentence.to_owned(),
    }
}

/// Every evidence sentence of `passages`, scored against `query` with the answer's evidence
/// model: the sentences (each with its section heading, for context) are embedded in one batch
/// with the question; their features combine that cosine with IDF-weighted term overlap
/// (`switchboard_policy::grounding`). Sentences come in passage order, at most
/// [`MAX_EVIDENCE_CANDIDATES`].
pub async fn gather_evidence(
    active: &Active,
    model: &EvidenceModel,
    query: &str,
    passages: &[NumberedPassage],
) -> Result<Vec<Evidence>, ServiceError> {
    let mut candidates: Vec<(usize, String, String)> = Vec::new();
    'passages: for (i, p) in passages.iter().enumerate() {
        let headings = headings_of(&p.breadcrumb);
        for sentence in evidence_sentences(&p.raw_text, &headings) {
            if candidates.len() >= MAX_EVIDENCE_CANDIDATES {
                break 'passages;
            }
            let embedded = scorer_text(&p.breadcrumb, &sentence);
            candidates.push((i, sentence, embedded));
        }
    }
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let mut texts = Vec::with_capacity(candidates.len() + 1);
    texts.push(query.to_owned());
    texts.extend(candidates.iter().map(|(_, _, e)| e.clone()));
    let encoder = Arc::clone(&active.encoder);
    let vectors = tokio::task::spawn_blocking(move || encoder.embed(&texts))
        .await
        .map_err(internal)?
        .map_err(internal)?;
    let (question, sentences) = vectors
        .split_first()
        .ok_or_else(|| internal("encoder returned no vector"))?;
    let terms = QuestionTerms::new(query, &active.terms);
    let contexts: Vec<String> = passages
        .iter()
        .map(|p| format!("{} {}", p.breadcrumb, p.raw_text))
        .collect();
    let cosines: Vec<f64> = sentences
        .iter()
        .map(|v| 1.0 - cosine_distance(question, v))
        .collect();
    let best = cosines.iter().copied().fold(f64::MIN, f64::max);
    Ok(candidates
        .into_iter()
        .zip(cosines)
        .map(|((passage, text, _), cosine)| {
            let features = terms.features(&text, &contexts[passage], passage, (cosine, best));
            Evidence {
                passage,
                score: model.score(&features),
                text,
                features,
            }
        })
        .collect())
}

/// The search query in the small model's rewrite output: its first line without quotes, or
/// `None` when that is empty or not a valid query. (`eval --rewrite` measures exactly this.)
pub fn clean_rewrite(generated: &str) -> Option<String> {
    let q = generated
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .trim_matches('"');
    (!q.is_empty() && validate_query(q).is_ok()).then(|| q.to_owned())
}

/// The attributes the enrolled experiment breaks its results down by (`spec.segments`), as
/// `name=value` lines; values redacted like the query (a value is stored and may reach a status).
fn segments_of(
    config: &switchboard_crds::runtime_config::RuntimeConfig,
    assignment: Option<&switchboard_policy::Assignment<'_>>,
    attributes: &std::collections::BTreeMap<String, String>,
    active: &Active,
) -> String {
    let Some(experiment) =
        assignment.and_then(|a| config.experiments.iter().find(|x| x.name == a.experiment))
    else {
        return String::new();
    };
    experiment
        .segments
        .iter()
        .filter_map(|name| {
            attributes
                .get(name)
                .map(|v| format!("{name}={}", active.redactor.redact(v)))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// What the caller sends to `POST /v1/answer`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct AnswerRequest {
    /// The customer's message.
    pub query: String,
    /// The end user's id: the unit of Experiments randomised by `User`, and the key of sticky
    /// canary assignment. `unit` is accepted as its older name.
    #[serde(alias = "unit")]
    pub user_id: Option<String>,
    /// The customer account's id: the unit of Experiments randomised by `Account`.
    pub account_id: Option<String>,
    /// The conversation's id: the unit of Experiments randomised by `Conversation` (and the
    /// canary key when there is no user or account id).
    pub conversation_id: Option<String>,
    /// Request attributes such as `channel` or `plan`: an Experiment that names one in
    /// `spec.segments` breaks its results down by its values.
    pub attributes: std::collections::BTreeMap<String, String>,
    /// `small` or `large`: bypasses the router.
    pub force_model: Option<String>,
    /// HTTP: answer as server-sent events (`started`, `delta`s, `answer`).
    pub stream: bool,
    /// The conversation so far, oldest first, before `query`: `user` and `assistant` turns (at
    /// most [`MAX_HISTORY_TURNS`]). The previous customer message is searched with the question
    /// (a follow-up finds its topic), and the last turns go into the prompt, so an adapter
    /// trained on multi-turn tickets answers in context.
    pub messages: Vec<HistoryTurn>,
    /// Passages to ground on instead of retrieving (the evaluation's gold-context stage; not
    /// part of the API).
    #[serde(skip)]
    pub passages: Option<Vec<Passage>>,
}

/// One earlier turn of the conversation.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct HistoryTurn {
    /// `user` or `assistant`.
    pub role: String,
    /// What was said.
    pub content: String,
}

/// Most earlier turns a request may carry.
pub const MAX_HISTORY_TURNS: usize = 16;

/// Earlier turns that reach the prompt (the latest), each cut to [`HISTORY_TURN_CHARS`].
pub const HISTORY_IN_PROMPT: usize = 6;

/// Characters of an earlier turn kept in the prompt.
pub const HISTORY_TURN_CHARS: usize = 600;

/// Checks the conversation history: roles, sizes, text.
fn validate_history(history: &[HistoryTurn]) -> Result<(), ServiceError> {
    let invalid = |message: String| ServiceError::InvalidArgument {
        field: "messages",
        message,
    };
    if history.len() > MAX_HISTORY_TURNS {
        return Err(invalid(format!(
            "{} turns exceeds the limit of {MAX_HISTORY_TURNS}",
            history.len()
        )));
    }
    for (i, turn) in history.iter().enumerate() {
        if !matches!(turn.role.as_str(), "user" | "assistant") {
            return Err(invalid(format!(
                "messages[{i}].role: `{}` is not user or assistant",
                turn.role
            )));
        }
        validate_query(&turn.content).map_err(|e| match e {
            ServiceError::InvalidArgument { message, .. } => {
                invalid(format!("messages[{i}].content: {message}"))
            }
            other => other,
        })?;
    }
    Ok(())
}

/// What is searched and scored for evidence: the question, after the previous customer message
/// when there is one ("And how long does it take?" alone finds nothing).
fn searched_text(request: &AnswerRequest) -> std::borrow::Cow<'_, str> {
    match request.messages.iter().rev().find(|t| t.role == "user") {
        Some(previous) => format!("{} {}", previous.content.trim(), request.query.trim()).into(),
        None => request.query.as_str().into(),
    }
}

/// A citation mapped to its passage.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Citation {
    /// The number the answer text cites (`[1]`..`[k]`, in order of first appearance).
    pub index: usize,
    /// 1-based number of the cited passage in `passages`.
    pub passage: usize,
    /// The evidence sentence the citation stands for.
    pub evidence: String,
    /// Chunk id.
    pub chunk_id: String,
    /// Document id.
    pub document_id: String,
    /// `[Doc > Section]`.
    pub breadcrumb: String,
    /// Source name.
    pub source: String,
}

/// A passage the answer was grounded on.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NumberedPassage {
    /// 1-based number in the prompt.
    pub index: usize,
    /// Chunk id.
    pub chunk_id: String,
    /// Document id.
    pub document_id: String,
    /// Breadcrumb.
    pub breadcrumb: String,
    /// Source name.
    pub source: String,
    /// Section id (`<document>#<heading>`).
    pub section_id: String,
    /// The text the model saw: the chunk, or with hierarchical chunking its section around it.
    pub text: String,
    /// Whether `text` is the expanded section rather than the retrieved chunk alone.
    pub expanded: bool,
    /// Final retrieval score.
    pub score: f32,
    /// The same text with its line structure (list items, table rows), whence the evidence
    /// sentences are split.
    #[serde(skip)]
    pub raw_text: String,
}

/// The adapter that answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AdapterRef {
    /// Lineage.
    pub lineage: String,
    /// Version.
    pub version: String,
    /// `stable` or `canary`.
    pub role: String,
}

/// Where an answer came from.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Provenance {
    /// `<namespace>/<name>` of the Router.
    pub router: String,
    /// Index generation that was searched.
    pub kb_generation: String,
    /// `small` or `large`.
    pub model: String,
    /// The primary adapter, if one was applied.
    pub adapter: Option<AdapterRef>,
    /// Why the model was chosen (`easy`, `difficult`, `queue_full`, `exploration`, `forced`,
    /// `no_large_model`, `retrieval_failure`).
    pub route_reason: String,
    /// Experiment, empty when not enrolled.
    pub experiment: String,
    /// Arm, empty when not enrolled.
    pub arm: String,
    /// RuntimeConfig revision in force.
    pub config_revision: String,
}

/// An evidence sentence as the answer reports it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EvidenceSentence {
    /// 1-based number of its passage in `passages`.
    pub passage: usize,
    /// The sentence.
    pub text: String,
    /// Probability (0..1) that it answers the question.
    pub score: f64,
}

/// The answer.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AnswerResponse {
    /// The answer text; it cites `[1]`..`[k]`, the entries of `citations`.
    pub answer: String,
    /// The citations of the answer, in the order of their numbers.
    pub citations: Vec<Citation>,
    /// Numbers the model cited that named no fact of its prompt: removed from the answer,
    /// reported here.
    pub invalid_citations: Vec<usize>,
    /// Whether the answer declines to answer.
    pub refused: bool,
    /// How the answer was made: `generative` (the model's answer passed the grounding check),
    /// `extractive` (the best evidence sentences, quoted) or `refusal`.
    pub path: String,
    /// The evidence sentences the model was given, best first.
    pub evidence: Vec<EvidenceSentence>,
    /// The numbered passages of the prompt.
    pub passages: Vec<NumberedPassage>,
    /// Provenance.
    pub provenance: Provenance,
    /// Signed token for `POST /v1/feedback`.
    pub interaction_token: String,
    /// The query searched when it was rewritten.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewritten_query: Option<String>,
}

/// The grounded conversation: the instructions in the system turn, the evidence sentences as
/// numbered facts and the question in the user turn (`switchboard_policy::grounding`). No
/// breadcrumbs or passage headers reach the model, so it has none to copy; the training data of
/// the grounded-answer adapter is rendered by this same function.
pub fn grounded_messages(query: &str, facts: &[Evidence]) -> Vec<ChatMessage> {
    grounded_conversation(&[], query, facts)
}

/// [`grounded_messages`] after the conversation so far: the system turn, the latest
/// [`HISTORY_IN_PROMPT`] earlier turns (each cut to [`HISTORY_TURN_CHARS`]), then the facts
/// and the question.
pub fn grounded_conversation(
    history: &[HistoryTurn],
    query: &str,
    facts: &[Evidence],
) -> Vec<ChatMessage> {
    let mut messages = vec![ChatMessage::system(
        switchboard_policy::grounding::GROUNDED_SYSTEM,
    )];
    let start = history.len().saturating_sub(HISTORY_IN_PROMPT);
    messages.extend(history[start..].iter().map(|t| {
        ChatMessage::new(
            t.role.clone(),
            truncate_chars(&t.content, HISTORY_TURN_CHARS),
        )
    }));
    messages.push(ChatMessage::user(grounded_prompt(query, facts)));
    messages
}

fn truncate_chars(text: &str, max: usize) -> String {
    let text = collapse_whitespace(text);
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text,
    }
}

/// `text` with runs of whitespace collapsed to one space.
fn collapse_whitespace(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Up to `max` characters of `section` around `chunk` (both whitespace-collapsed): the whole
/// section when it fits, else a window with the chunk in the middle, `…` marking each cut. A chunk
/// not found verbatim (a word window cut inside a paragraph) gets the section's beginning.
fn section_window(section: &str, chunk: &str, max: usize) -> String {
    let section = collapse_whitespace(section);
    let total = section.chars().count();
    if total <= max {
        return section;
    }
    let chunk = collapse_whitespace(chunk);
    let chunk_chars = chunk.chars().count();
    let start = section.find(&chunk).map_or(0, |byte| {
        let at = section[..byte].chars().count();
        at.saturating_sub(max.saturating_sub(chunk_chars) / 2)
    });
    let start = start.min(total - max);
    let window: String = section.chars().skip(start).take(max).collect();
    let mut out = String::with_capacity(window.len() + 6);
    if start > 0 {
        out.push('…');
    }
    out.push_str(&window);
    if start + max < total {
        out.push('…');
    }
    out
}

/// The prompt's numbered passages. With `expand_sections` (the generation was chunked
/// hierarchically) a passage carries its section around the retrieved paragraph, once per section
/// and within [`PROMPT_PASSAGE_CHARS`]; otherwise, and beyond the budget, the chunk text.
fn numbered(passages: &[Passage], expand_sections: bool) -> Vec<NumberedPassage> {
    let chunks: Vec<String> = passages
        .iter()
        .map(|p| truncate_chars(&p.text, PASSAGE_CHARS))
        .collect();
    let lengths: Vec<usize> = chunks.iter().map(|c| c.chars().count()).collect();
    let mut expanded_sections = std::collections::HashSet::new();
    let mut used = 0;
    passages
        .iter()
        .zip(chunks)
        .enumerate()
        .map(|(i, (p, chunk))| {
            // Room kept for the chunk text of every later passage.
            let reserved: usize = lengths[i + 1..].iter().sum();
            let section = (expand_sections && !expanded_sections.contains(&p.section_id))
                .then(|| section_window(&p.section_text, &p.text, SECTION_CHARS))
                .filter(|s| {
                    let chars = s.chars().count();
                    chars > lengths[i] && used + chars + reserved <= PROMPT_PASSAGE_CHARS
                });
            let expanded = section.is_some();
            let text = section.unwrap_or(chunk);
            if expanded {
                expanded_sections.insert(p.section_id.clone());
            }
            used += text.chars().count();
            // Evidence comes from whole sentences with their line structure: the section
            // around the chunk (a chunk is a token window that may cut a sentence), unless the
            // section is too long to score in time.
            let raw_text = if p.section_text.chars().count() <= EVIDENCE_SECTION_CHARS {
                p.section_text.clone()
            } else {
                p.text.clone()
            };
            NumberedPassage {
                index: i + 1,
                chunk_id: p.chunk_id.clone(),
                document_id: p.doc_id.clone(),
                breadcrumb: p.breadcrumb.clone(),
                source: p.source.clone(),
                section_id: p.section_id.clone(),
                text,
                expanded,
                score: p.scores.final_score,
                raw_text,
            }
        })
        .collect()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn retrieval_signals(response: &SearchResponse) -> RetrievalSignals {
    let best = response.passages.first();
    let best_final = best.map_or(0.0, |p| p.scores.final_score);
    let mut docs: Vec<&str> = response
        .passages
        .iter()
        .filter(|p| p.scores.final_score >= 0.9 * best_final)
        .map(|p| p.doc_id.as_str())
        .collect();
    docs.sort_unstable();
    docs.dedup();
    RetrievalSignals {
        best_similarity: best.and_then(|p| p.scores.dense).map(f64::from),
        documents_near_top: docs.len(),
    }
}

fn role_label(role: AdapterRole) -> &'static str {
    match role {
        AdapterRole::Stable => "stable",
        AdapterRole::Canary => "canary",
        AdapterRole::Shadow => "shadow",
        AdapterRole::Pinned => "pinned",
    }
}

fn internal(e: impl std::fmt::Display) -> ServiceError {
    ServiceError::Internal(e.to_string())
}

/// A model's error as the service reports it: a full queue is shed load (429), not a failure.
fn generation_error(e: ModelError) -> ServiceError {
    match e {
        ModelError::Overloaded { .. } => ServiceError::Overloaded(e.to_string()),
        other => internal(other),
    }
}

/// Generation of the answer.
struct Generated {
    text: String,
    model: ModelKind,
}

async fn embed_one(active: &Active, text: String) -> Result<Vec<f32>, ServiceError> {
    let encoder = Arc::clone(&active.encoder);
    tokio::task::spawn_blocking(move || encoder.embed(&[text]))
        .await
        .map_err(internal)?
        .map_err(internal)?
        .into_iter()
        .next()
        .ok_or_else(|| internal("encoder returned no vector"))
}

fn greedy(max_new_tokens: usize) -> GenerationConfig {
    GenerationConfig {
        sampling: Sampling::Greedy,
        max_new_tokens,
        stop_token_ids: Vec::new(),
    }
}

/// What a streamed answer sends before its final [`AnswerResponse`].
#[derive(Debug, Clone)]
pub enum AnswerEvent {
    /// The model was admitted and starts generating, grounded on these passages.
    Started {
        /// `small` or `large`.
        model: String,
        /// The numbered passages of the prompt.
        passages: Vec<NumberedPassage>,
    },
    /// Text generated since the previous delta (the final answer is trimmed).
    Delta(String),
}

/// Where a streamed answer's events go.
pub type AnswerEvents = tokio::sync::mpsc::UnboundedSender<AnswerEvent>;

/// One item of a streamed answer: events, then the outcome.
#[derive(Debug)]
pub enum AnswerItem {
    /// Started or a text delta.
    Event(AnswerEvent),
    /// The final answer (the same as [`answer`]'s), or why it failed after it started.
    Done(Box<Result<AnswerResponse, ServiceError>>),
}

/// Starts a streamed answer. An error before anything was streamed (bad input, no config, the
/// model at capacity) is returned as such, so a transport can answer with its status code;
/// after that, the items arrive on the receiver, ending with [`AnswerItem::Done`]. A receiver
/// dropped early stops the generation (the answer is still finished and stored, its token
/// undelivered).
pub async fn answer_stream(
    engine: Arc<Engine>,
    request: AnswerRequest,
) -> Result<tokio::sync::mpsc::UnboundedReceiver<AnswerItem>, ServiceError> {
    let (events, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move { answer_with(&engine, request, Some(events)).await });
    let first = rx.recv().await;
    let (out, items) = tokio::sync::mpsc::unbounded_channel();
    match first {
        // Done without streaming (a refusal without a model call, or an error).
        None => {
            let answer = task.await.map_err(internal)??;
            let _ = out.send(AnswerItem::Done(Box::new(Ok(answer))));
        }
        Some(event) => {
            tokio::spawn(async move {
                let mut next = Some(event);
                while let Some(event) = next {
                    if out.send(AnswerItem::Event(event)).is_err() {
                        // The caller went away: dropping `rx` stops the model at its next step.
                        break;
                    }
                    next = rx.recv().await;
                }
                drop(rx);
                let result = task.await.map_err(internal).and_then(|r| r);
                let _ = out.send(AnswerItem::Done(Box::new(result)));
            });
        }
    }
    Ok(items)
}

/// The prompt passages of `query` as the answer path retrieves them from the pinned generation
/// (no rewrite, no experiment arm): what the evaluation labels evidence on.
pub async fn prompt_passages(
    active: &Active,
    query: &str,
) -> Result<Vec<NumberedPassage>, ServiceError> {
    let retriever = Arc::clone(&active.retriever);
    let hierarchical = matches!(
        retriever.generation().manifest.chunking,
        ChunkingSpec::Hierarchical { .. }
    );
    let search = active
        .retrieval
        .retrieve_on(
            retriever,
            RetrieveRequest {
                query: query.to_owned(),
                ..RetrieveRequest::default()
            },
        )
        .await?;
    if search.failure.is_some() {
        return Ok(Vec::new());
    }
    Ok(numbered(&search.passages, hierarchical))
}

/// Answers one request.
pub async fn answer(
    engine: &Arc<Engine>,
    request: AnswerRequest,
) -> Result<AnswerResponse, ServiceError> {
    answer_with(engine, request, None).await
}

/// Answers one request, streaming [`AnswerEvent`]s to `events` while the model generates. The
/// result is the same [`AnswerResponse`] as [`answer`]'s; an error before `Started` (bad input,
/// no config, a full generation queue) means nothing was generated.
///
/// The stages, in order (docs/runtime.md): `validate` -> `enrol_request` (Router holdout,
/// experiment arm) -> `rewrite_query` -> `retrieve_passages` -> `route_request` ->
/// `select_adapter` -> `ground` (evidence, answerability) -> `draft` (the model, when
/// there is something to ground on) -> `choose_answer` (the output against its facts: generative,
/// extractive or refusal) -> shadow -> `record` (the interaction stored, the token signed).
pub async fn answer_with(
    engine: &Arc<Engine>,
    request: AnswerRequest,
    events: Option<AnswerEvents>,
) -> Result<AnswerResponse, ServiceError> {
    let started = Instant::now();
    let forced = validate(&request)?;
    let active = engine
        .active()
        .ok_or_else(|| ServiceError::Unavailable("no RuntimeConfig has been applied yet".into()))?;
    let turn = Turn {
        engine,
        active: &active,
        router: active.router.as_str(),
        metrics: engine.metrics(),
        id: new_interaction_id(),
    };
    let config = &active.config;

    let enrolled = enrol_request(&turn, &request);
    let overrides = enrolled.overrides();
    let searched = searched_text(&request);
    let rewritten = rewrite_query(&turn, &searched, overrides).await;
    let retrieved =
        retrieve_passages(&turn, &request, &searched, overrides, rewritten.as_deref()).await?;
    let (route, routing) = route_request(&turn, &searched, &retrieved, overrides, forced);
    let selected = select_adapter(&turn, &searched, route, &enrolled).await?;
    let mut variant = selected.variant(&turn, route, &enrolled);
    let grounded = ground(&turn, &request, &searched, &retrieved, route).await?;
    let drafted = draft(
        &turn,
        &retrieved,
        &grounded,
        route,
        selected.adapter.as_ref(),
        events.as_ref(),
    )
    .await?;
    if drafted.model != route.model {
        variant.model = drafted.model.as_str().to_owned();
    }
    let decided = choose_answer(
        &turn,
        &request.query,
        &retrieved,
        &grounded,
        drafted.generated.as_ref(),
        &variant,
    );

    // Shadow, off the critical path: the candidate gets the same facts.
    if let Some((lineage, version)) = selected.shadow {
        spawn_shadow(
            engine,
            &active,
            ShadowRun {
                lineage,
                version,
                messages: grounded.messages.clone(),
                max_new_tokens: drafted.max_new_tokens,
                retrieval_failed: retrieved.failed || !grounded.answerable,
                facts: grounded.facts.iter().map(|f| f.text.clone()).collect(),
                expects: expects(&request.query),
                baseline: decided.decision.text.clone(),
                baseline_refused: decided.refused,
                baseline_citations_ok: decided.invalid_citations.is_empty(),
            },
        );
    }

    let token = record(
        &turn,
        &request,
        &enrolled,
        &retrieved,
        rewritten.as_deref(),
        &decided,
        &variant,
        &drafted.route_reason,
        routing,
    )
    .await;
    let model_label = drafted.model.as_str();
    turn.metrics.answer_stage(
        turn.router,
        model_label,
        "total",
        started.elapsed().as_secs_f64(),
    );
    Ok(AnswerResponse {
        answer: decided.decision.text,
        citations: decided.citations,
        invalid_citations: decided.invalid_citations,
        refused: decided.refused,
        path: decided.decision.path.as_str().to_owned(),
        evidence: grounded
            .facts
            .iter()
            .map(|e| EvidenceSentence {
                passage: e.passage + 1,
                text: e.text.clone(),
                score: e.score,
            })
            .collect(),
        passages: retrieved.passages,
        provenance: Provenance {
            router: turn.router.to_owned(),
            kb_generation: retrieved.search.generation,
            model: model_label.to_owned(),
            adapter: selected.adapter,
            route_reason: drafted.route_reason,
            experiment: variant.experiment,
            arm: variant.arm,
            config_revision: config.revision.clone(),
        },
        interaction_token: token,
        rewritten_query: rewritten,
    })
}

/// What every stage of one answer reads: the engine, the RuntimeConfig in force, the Router's
/// name for metrics and the interaction's id.
struct Turn<'a> {
    engine: &'a Arc<Engine>,
    active: &'a Arc<Active>,
    router: &'a str,
    metrics: &'a Arc<crate::metrics::Metrics>,
    id: String,
}

/// The request's fields checked (the query, the unit ids, the attributes), and the model it
/// forces, if any.
fn validate(request: &AnswerRequest) -> Result<Option<ModelKind>, ServiceError> {
    validate_query(&request.query)?;
    validate_history(&request.messages)?;
    crate::limits::validate_id("userId", request.user_id.as_deref())?;
    crate::limits::validate_id("accountId", request.account_id.as_deref())?;
    crate::limits::validate_id("conversationId", request.conversation_id.as_deref())?;
    crate::limits::validate_attributes(&request.attributes)?;
    match request.force_model.as_deref() {
        None | Some("") => Ok(None),
        Some("small") => Ok(Some(ModelKind::Small)),
        Some("large") => Ok(Some(ModelKind::Large)),
        Some(other) => Err(ServiceError::InvalidArgument {
            field: "forceModel",
            message: format!("`{other}` is not small or large"),
        }),
    }
}

/// Where a request stands: in the Router's permanent holdout, or enrolled in an experiment arm
/// (or neither), and the unit ids it is stored and kept sticky under.
struct Enrolled<'a> {
    /// The Router holdout, when the request's unit is in it.
    holdout: Option<&'a switchboard_crds::runtime_config::HoldoutConfig>,
    /// The experiment and arm.
    assignment: Option<switchboard_policy::Assignment<'a>>,
    /// The unit stored with the interaction: the experiment's, else the most durable id.
    unit: Option<&'a str>,
    /// The canary key: the most durable id, else the interaction id.
    sticky: &'a str,
}

impl Enrolled<'_> {
    fn overrides(&self) -> Option<&switchboard_crds::experiment::Overrides> {
        self.assignment.as_ref().and_then(|a| a.overrides)
    }
}

/// The Router's permanent holdout first (its units stay on the pinned versions, outside every
/// experiment); otherwise each experiment reads the id of its own unit kind. The most durable
/// id given is the holdout's unit and the canary key (whatever experiment the request is in, so
/// a user's canary version never depends on enrolment), and the unit stored with interactions
/// outside experiments; an enrolled interaction is stored under its experiment's unit (the
/// per-unit analysis groups by it).
fn enrol_request<'a>(turn: &'a Turn<'_>, request: &'a AnswerRequest) -> Enrolled<'a> {
    let config = &turn.active.config;
    let ids = UnitIds {
        user: request.user_id.as_deref(),
        account: request.account_id.as_deref(),
        conversation: request.conversation_id.as_deref(),
    };
    let durable = [
        AssignmentUnit::User,
        AssignmentUnit::Account,
        AssignmentUnit::Conversation,
    ]
    .into_iter()
    .find_map(|k| ids.get(k));
    let holdout = config
        .holdout
        .as_ref()
        .filter(|h| durable.is_some_and(|id| in_router_holdout(h.share.fraction(), id)));
    let enrolment = if holdout.is_some() {
        Enrolment::default()
    } else {
        enrol(&config.experiments, ids)
    };
    for x in &enrolment.missing_unit {
        turn.metrics
            .experiment_unenrolled(turn.router, &x.name, unit_field(x.unit));
    }
    let assignment = enrolment.assignment;
    Enrolled {
        holdout,
        unit: assignment.as_ref().map(|a| a.unit).or(durable),
        assignment,
        sticky: durable.unwrap_or(&turn.id),
    }
}

/// The query rewritten by the small model when the policy (or the arm) says so; `None` when it
/// is searched as written (a failed rewrite is logged, not an error).
async fn rewrite_query(
    turn: &Turn<'_>,
    query: &str,
    overrides: Option<&switchboard_crds::experiment::Overrides>,
) -> Option<String> {
    let mut rewrite_policy = turn.active.config.router_policy.query_rewrite.clone();
    if let Some(p) = overrides.and_then(|o| o.query_rewrite_policy) {
        rewrite_policy.policy = p;
    }
    if !should_rewrite(query, &turn.active.vocabulary, &rewrite_policy).rewrite {
        return None;
    }
    let t = Instant::now();
    let prompt = rewrite_prompt(query);
    let rewritten = match turn
        .active
        .small
        .chat(
            vec![ChatMessage::user(prompt)],
            greedy(REWRITE_TOKENS),
            None,
        )
        .await
    {
        Ok(g) => clean_rewrite(&g.text),
        Err(e) => {
            tracing::warn!(error = %e, "query rewrite failed; searching the query as written");
            None
        }
    };
    turn.metrics
        .answer_stage(turn.router, "small", "rewrite", t.elapsed().as_secs_f64());
    rewritten
}

/// What retrieval found for one answer.
struct Retrieved {
    search: SearchResponse,
    /// The prompt's numbered passages (sections, with hierarchical chunking).
    passages: Vec<NumberedPassage>,
    /// Nothing usable was retrieved.
    failed: bool,
    seconds: f64,
}

/// Retrieval on the pinned generation (or the arm's), or the passages the request gives (the
/// evaluation's gold context).
async fn retrieve_passages(
    turn: &Turn<'_>,
    request: &AnswerRequest,
    searched: &str,
    overrides: Option<&switchboard_crds::experiment::Overrides>,
    rewritten: Option<&str>,
) -> Result<Retrieved, ServiceError> {
    let active = turn.active;
    let config = &active.config;
    let t = Instant::now();
    let retriever = match overrides.and_then(|o| o.knowledge_base_generation) {
        Some(n) if Some(n) == config.knowledge_base.previous_generation => active
            .previous
            .clone()
            .unwrap_or_else(|| Arc::clone(&active.retriever)),
        _ => Arc::clone(&active.retriever),
    };
    // Hierarchical chunking retrieves paragraphs and grounds on their sections.
    let hierarchical = matches!(
        retriever.generation().manifest.chunking,
        ChunkingSpec::Hierarchical { .. }
    );
    let search = match request.passages.clone() {
        Some(passages) => SearchResponse {
            generation: retriever.generation().id.clone(),
            passages,
            failure: None,
            rerank: switchboard_index::RerankStatus::Off,
            timings: Default::default(),
        },
        None => {
            active
                .retrieval
                .retrieve_on(
                    retriever,
                    RetrieveRequest {
                        query: rewritten.unwrap_or(searched).to_owned(),
                        ..RetrieveRequest::default()
                    },
                )
                .await?
        }
    };
    Ok(Retrieved {
        failed: search.failure.is_some() || search.passages.is_empty(),
        passages: numbered(&search.passages, hierarchical),
        search,
        seconds: t.elapsed().as_secs_f64(),
    })
}

/// Small or large model: the question's difficulty (the Router's fitted weights, else the
/// hand-set ones) against the threshold (the arm's), the large model's availability and queue,
/// exploration, and a forced model; with the record the interaction is stored with.
fn route_request(
    turn: &Turn<'_>,
    query: &str,
    retrieved: &Retrieved,
    overrides: Option<&switchboard_crds::experiment::Overrides>,
    forced: Option<ModelKind>,
) -> (RouteDecision, RouteRecord) {
    let active = turn.active;
    let config = &active.config;
    let policy = &config.router_policy;
    let features = QueryFeatures::extract(
        query,
        active.vocabulary.terms(),
        &retrieval_signals(&retrieved.search),
    );
    let difficulty =
        DifficultyModel::configured(policy.difficulty_model.as_ref()).estimate(features);
    let large_depth = turn.engine.large_queue_depth();
    turn.metrics.large_queue_depth(turn.router, large_depth);
    turn.metrics
        .generation_queue("small", active.small.queue_depth());
    let input = RouteInput {
        difficulty: difficulty.score,
        threshold: overrides
            .and_then(|o| o.difficulty_threshold)
            .unwrap_or(policy.difficulty_threshold),
        large_available: active.large.is_some(),
        large_queue_depth: large_depth,
        max_queue_depth: usize::try_from(config.large_model.max_queue_depth.max(0)).unwrap_or(0),
        exploration_share: overrides
            .and_then(|o| o.exploration_share.as_ref())
            .unwrap_or(&policy.exploration_share)
            .fraction(),
        exploration_draw: unit_interval(&["exploration", &turn.id]),
        forced,
    };
    let route = decide(&input);
    turn.metrics
        .route(turn.router, route.model.as_str(), route.reason.as_str());
    (route, RouteRecord::new(&input, route, features))
}

/// The adapter that serves a request, and the candidate that shadows it.
struct Selected {
    adapter: Option<AdapterRef>,
    /// `(lineage, version)` of a shadow candidate.
    shadow: Option<(String, String)>,
}

impl Selected {
    /// The metric labels of the answer.
    fn variant(&self, turn: &Turn<'_>, route: RouteDecision, enrolled: &Enrolled<'_>) -> Variant {
        let adapter = self.adapter.as_ref();
        Variant {
            router: turn.router.to_owned(),
            lineage: adapter.map(|a| a.lineage.clone()).unwrap_or_default(),
            adapter_version: adapter.map(|a| a.version.clone()).unwrap_or_default(),
            adapter_role: adapter.map(|a| a.role.clone()).unwrap_or_default(),
            experiment: enrolled
                .assignment
                .as_ref()
                .map(|a| a.experiment.to_owned())
                .unwrap_or_default(),
            arm: match (enrolled.holdout, enrolled.assignment.as_ref()) {
                (Some(_), _) => HOLDOUT_ARM.to_owned(),
                (None, a) => a.map(|a| a.arm.to_owned()).unwrap_or_default(),
            },
            model: route.model.as_str().to_owned(),
        }
    }
}

/// The small model's adapter: the most similar domain's lineage (or the fallback lineage), then
/// the version the lineage serves this unit (stable, canary, an arm's override, or the
/// holdout's pinned version).
async fn select_adapter(
    turn: &Turn<'_>,
    query: &str,
    route: RouteDecision,
    enrolled: &Enrolled<'_>,
) -> Result<Selected, ServiceError> {
    let active = turn.active;
    let config = &active.config;
    let plan = ServingPlan::new(config);
    let mut served = None;
    if route.model == ModelKind::Small && !active.adapters.is_empty() {
        // The generator applies one adapter per request: the most similar domain's (topK is
        // validated to 1).
        let selected = if active.domains.lineages().next().is_some() {
            let query_vector = embed_one(active, query.to_owned()).await?;
            active.domains.select(
                &query_vector,
                1,
                config.router_policy.adapter_selection.min_similarity,
            )
        } else {
            Vec::new()
        };
        // No domain claims the query: the fallback lineage (a general adapter) serves it.
        let lineage = selected
            .first()
            .map(|s| s.lineage.as_str())
            .or(active.fallback.as_deref());
        if let Some(lineage) = lineage {
            served = match enrolled.holdout {
                Some(h) => plan.serve_held_out(lineage, &h.pinned),
                None => plan.serve(lineage, enrolled.sticky, enrolled.assignment.as_ref()),
            };
        }
    }
    Ok(Selected {
        adapter: served.map(|s| AdapterRef {
            lineage: s.adapter.lineage.clone(),
            version: s.adapter.version.clone(),
            role: role_label(s.role).to_owned(),
        }),
        shadow: served
            .and_then(|s| plan.shadow(&s.adapter.lineage, &turn.id))
            .map(|a| (a.lineage.clone(), a.version.clone())),
    })
}

/// The evidence of one answer.
struct Grounded {
    /// The facts the model is given, best first.
    facts: Vec<Evidence>,
    /// The grounded conversation over them.
    messages: Vec<ChatMessage>,
    /// The answerability threshold in force.
    threshold: f64,
    /// The best fact clears it.
    answerable: bool,
}

/// The passages' sentences scored against the question; the best are the facts the model is
/// given. Nothing clears the answerability threshold: the answer refuses without a model call.
async fn ground(
    turn: &Turn<'_>,
    request: &AnswerRequest,
    query: &str,
    retrieved: &Retrieved,
    route: RouteDecision,
) -> Result<Grounded, ServiceError> {
    let grounding = &turn.active.config.router_policy.grounding;
    let t = Instant::now();
    let evidence = if retrieved.failed {
        Vec::new()
    } else {
        gather_evidence(
            turn.active,
            &turn.engine.evidence_model(),
            query,
            &retrieved.passages,
        )
        .await?
    };
    let facts = select_evidence(
        evidence,
        usize::try_from(grounding.evidence_sentences.max(1)).unwrap_or(1),
        RELATIVE_EVIDENCE,
    );
    let threshold = grounding.min_evidence_score;
    let answerable = facts.first().is_some_and(|e| e.score >= threshold);
    turn.metrics.answer_stage(
        turn.router,
        route.model.as_str(),
        "ground",
        t.elapsed().as_secs_f64(),
    );
    Ok(Grounded {
        messages: grounded_conversation(&request.messages, &request.query, &facts),
        facts,
        threshold,
        answerable,
    })
}

/// The model's draft, and what served it.
struct Drafted {
    generated: Option<Generated>,
    /// The model that answered (the routed one, unless the large model failed over).
    model: ModelKind,
    route_reason: String,
    max_new_tokens: usize,
}

/// Generation on the facts: none when retrieval failed, nothing is answerable, or the Router
/// wants extractive answers.
async fn draft(
    turn: &Turn<'_>,
    retrieved: &Retrieved,
    grounded: &Grounded,
    route: RouteDecision,
    adapter: Option<&AdapterRef>,
    events: Option<&AnswerEvents>,
) -> Result<Drafted, ServiceError> {
    let config = &turn.active.config;
    let grounding = &config.router_policy.grounding;
    let max_new_tokens = usize::try_from(config.small_model.max_new_tokens.max(1)).unwrap_or(256);
    let mut route_reason = route.reason.as_str().to_owned();
    let mut generate_seconds = 0.0;
    let generated = if retrieved.failed {
        route_reason = "retrieval_failure".into();
        None
    } else if !grounded.answerable || grounding.mode == GroundingMode::Extractive {
        None
    } else {
        let t = Instant::now();
        let target = GenerationTarget {
            route,
            messages: &grounded.messages,
            max_new_tokens,
            adapter,
            events,
            passages: &retrieved.passages,
        };
        let g = generate(turn.active, target).await.inspect_err(|e| {
            if matches!(e, ServiceError::Overloaded(_)) {
                turn.metrics.generation_shed("small");
            }
        })?;
        generate_seconds = t.elapsed().as_secs_f64();
        Some(g)
    };
    let model = generated.as_ref().map_or(route.model, |g| g.model);
    if model != route.model {
        route_reason = "large_model_error".into();
    }
    if route.model == ModelKind::Large {
        turn.metrics
            .large_queue_depth(turn.router, turn.engine.large_queue_depth());
    }
    turn.metrics
        .answer_stage(turn.router, model.as_str(), "retrieve", retrieved.seconds);
    if generated.is_some() {
        turn.metrics
            .answer_stage(turn.router, model.as_str(), "generate", generate_seconds);
    }
    Ok(Drafted {
        generated,
        model,
        route_reason,
        max_new_tokens,
    })
}

/// What the customer is served.
struct Decided {
    decision: Decision,
    refused: bool,
    citations: Vec<Citation>,
    /// Numbers the model cited that named no fact (removed from the text).
    invalid_citations: Vec<usize>,
}

/// The draft checked against its facts, then generative, extractive or refusal
/// (`switchboard_policy::grounding::choose`); each path and each failed check is counted.
fn choose_answer(
    turn: &Turn<'_>,
    query: &str,
    retrieved: &Retrieved,
    grounded: &Grounded,
    generated: Option<&Generated>,
    variant: &Variant,
) -> Decided {
    let facts = &grounded.facts;
    let passages = &retrieved.passages;
    let fact_texts: Vec<&str> = facts.iter().map(|e| e.text.as_str()).collect();
    let echoes: Vec<&str> = passages.iter().map(|p| p.breadcrumb.as_str()).collect();
    let draft = generated.map(|g| g.text.trim().to_owned());
    let check: Option<OutputCheck> = draft
        .as_deref()
        .map(|d| check_output(d, &fact_texts, expects(query), &echoes));
    let decision: Decision = choose(
        draft.as_deref().zip(check.as_ref()),
        facts,
        grounded.threshold,
    );
    let refused = decision.path == AnswerPath::Refusal;
    let citations: Vec<Citation> = decision
        .facts
        .iter()
        .enumerate()
        .filter_map(|(i, n)| {
            let fact = facts.get(n - 1)?;
            let p = passages.get(fact.passage)?;
            Some(Citation {
                index: i + 1,
                passage: p.index,
                evidence: fact.text.clone(),
                chunk_id: p.chunk_id.clone(),
                document_id: p.document_id.clone(),
                breadcrumb: p.breadcrumb.clone(),
                source: p.source.clone(),
            })
        })
        .collect();
    let invalid_citations = check
        .as_ref()
        .map(|c| c.invalid_citations.clone())
        .unwrap_or_default();
    let metrics = turn.metrics;
    metrics.interaction(variant);
    metrics.answer_path(variant, decision.path.as_str());
    if retrieved.failed {
        metrics.answer_check(variant, "retrieval_failure");
    }
    if refused {
        metrics.answer_check(variant, "refusal");
    }
    if !invalid_citations.is_empty() {
        metrics.answer_check(variant, "invalid_citation");
    }
    if check.as_ref().is_some_and(|c| !c.grounded && !c.refused) {
        metrics.answer_check(variant, "ungrounded");
    }
    Decided {
        decision,
        refused,
        citations,
        invalid_citations,
    }
}

/// Stores the interaction, then signs its token: stored before the token leaves, so feedback
/// reaching any replica finds it (a store failure is logged and counted; the token still
/// verifies on its own).
#[allow(clippy::too_many_arguments)]
async fn record(
    turn: &Turn<'_>,
    request: &AnswerRequest,
    enrolled: &Enrolled<'_>,
    retrieved: &Retrieved,
    rewritten: Option<&str>,
    decided: &Decided,
    variant: &Variant,
    route_reason: &str,
    routing: RouteRecord,
) -> String {
    let engine = turn.engine;
    let active = turn.active;
    let config = &active.config;
    let iat = now_secs();
    let exp = iat + engine.token_ttl().as_secs().max(1);
    let stored = Interaction {
        id: turn.id.clone(),
        created_at: i64::try_from(iat).unwrap_or(i64::MAX),
        expires_at: i64::try_from(exp).unwrap_or(i64::MAX),
        // Pseudonymised: a unit id may be an email address or a customer number.
        unit: enrolled.unit.map(|u| engine.stored_unit(u)),
        variant: variant.clone(),
        kb_generation: retrieved.search.generation.clone(),
        config_revision: config.revision.clone(),
        route_reason: route_reason.to_owned(),
        // Personal data and secrets never reach the store, nor what reads it (the export for
        // training, coverage gaps): the built-in detectors and the Router's own patterns
        // (`switchboard_policy::redact::Redactor`).
        query: active.redactor.redact(&request.query).into_owned(),
        rewritten_query: rewritten.map(|r| active.redactor.redact(r).into_owned()),
        answer: active.redactor.redact(&decided.decision.text).into_owned(),
        refused: decided.refused,
        invalid_citation: !decided.invalid_citations.is_empty(),
        retrieval_failed: retrieved.failed,
        best_score: retrieved
            .search
            .passages
            .first()
            .map(|p| f64::from(p.scores.final_score)),
        cited_documents: decided
            .citations
            .iter()
            .map(|c| c.document_id.clone())
            .collect(),
        retrieved_documents: retrieved
            .passages
            .iter()
            .map(|p| p.document_id.clone())
            .collect(),
        segments: segments_of(
            config,
            enrolled.assignment.as_ref(),
            &request.attributes,
            active,
        ),
        routing: Some(routing),
    };
    if let Err(e) = engine.store().record_interaction(&stored).await {
        // The answer is still served: its feedback verifies from the token alone.
        tracing::warn!(error = %e, "interaction not stored");
        turn.metrics.store_error(e.label());
    }
    engine.keys().sign(&Claims {
        id: turn.id.clone(),
        iat,
        exp,
        variant: variant.clone(),
    })
}

/// What one answer generates, and where its stream goes.
struct GenerationTarget<'a> {
    route: RouteDecision,
    messages: &'a [ChatMessage],
    max_new_tokens: usize,
    adapter: Option<&'a AdapterRef>,
    events: Option<&'a AnswerEvents>,
    passages: &'a [NumberedPassage],
}

impl GenerationTarget<'_> {
    fn started(&self, model: ModelKind) {
        if let Some(events) = self.events {
            let _ = events.send(AnswerEvent::Started {
                model: model.as_str().to_owned(),
                passages: self.passages.to_vec(),
            });
        }
    }

    /// Sends a delta; `false` when nobody listens any more.
    fn delta(&self, text: String) -> bool {
        self.events
            .is_none_or(|events| events.send(AnswerEvent::Delta(text)).is_ok())
    }
}

/// Runs a local model, streaming its text to the answer's events when there are any, and
/// stops it at the first of [`STOP_SEQUENCES`] (the text is cut there).
async fn local_chat(
    worker: &switchboard_model::GeneratorWorker,
    target: &GenerationTarget<'_>,
    model: ModelKind,
    adapter: Option<String>,
) -> Result<String, ServiceError> {
    let config = greedy(target.max_new_tokens);
    let messages = target.messages.to_vec();
    let mut stream = worker
        .chat_stream(messages, config, adapter)
        .map_err(generation_error)?;
    target.started(model);
    let text = read_until_stop(&mut stream, |delta| target.delta(delta)).await;
    let generation = stream
        .done
        .await
        .map_err(|_| internal("the model worker went away"))?
        .map_err(generation_error)?;
    Ok(text.unwrap_or(generation.text))
}

/// Reads a generation's deltas, passing each to `forward` (which returns `false` when nobody
/// listens any more), and stops the generation at the first stop sequence. Returns the text cut
/// before the stop sequence, or `None` when the generation ended on its own (its final text
/// is authoritative then).
async fn read_until_stop(
    stream: &mut switchboard_model::generator_worker::GenerationStream,
    mut forward: impl FnMut(String) -> bool,
) -> Option<String> {
    let mut text = String::new();
    while let Some(StreamEvent::Delta(delta)) = stream.deltas.recv().await {
        let searched_from = text.len().saturating_sub(16);
        text.push_str(&delta);
        let stop = STOP_SEQUENCES
            .iter()
            .filter_map(|s| text[searched_from..].find(s).map(|at| searched_from + at))
            .min();
        if let Some(at) = stop {
            text.truncate(at);
            stream.deltas.close();
            return Some(text);
        }
        if !forward(delta) {
            // Nobody reads the stream: stop generating (the slot goes to the next request).
            stream.deltas.close();
        }
    }
    None
}

async fn generate(
    active: &Active,
    target: GenerationTarget<'_>,
) -> Result<Generated, ServiceError> {
    let GenerationTarget {
        route,
        messages,
        max_new_tokens,
        adapter,
        ..
    } = target;
    if route.model == ModelKind::Large {
        let large = match &active.large {
            Some(LargeTarget::Endpoint(client)) => client
                .chat(
                    messages
                        .iter()
                        .map(|m| Message {
                            role: m.role.clone(),
                            content: m.content.clone(),
                        })
                        .collect(),
                    u32::try_from(max_new_tokens).unwrap_or(u32::MAX),
                )
                .await
                .map(|r| {
                    let text = r
                        .choices
                        .into_iter()
                        .next()
                        .map(|c| c.message.content)
                        .unwrap_or_default();
                    // The endpoint answers whole: one delta.
                    target.started(ModelKind::Large);
                    let _ = target.delta(text.clone());
                    text
                })
                .map_err(|e| e.to_string()),
            Some(LargeTarget::Local(worker)) => local_chat(worker, &target, ModelKind::Large, None)
                .await
                .map_err(|e| e.to_string()),
            None => Err("no large model configured".to_owned()),
        };
        match large {
            Ok(text) => {
                return Ok(Generated {
                    text,
                    model: ModelKind::Large,
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "large model failed; answering with the small model");
            }
        }
    }
    let id = adapter.map(|a| adapter_id(&a.lineage, &a.version));
    let text = local_chat(&active.small, &target, ModelKind::Small, id).await?;
    Ok(Generated {
        text,
        model: ModelKind::Small,
    })
}

struct ShadowRun {
    lineage: String,
    version: String,
    messages: Vec<ChatMessage>,
    max_new_tokens: usize,
    /// Nothing to ground on: neither side generates.
    retrieval_failed: bool,
    facts: Vec<String>,
    expects: switchboard_policy::grounding::Expects,
    baseline: String,
    baseline_refused: bool,
    baseline_citations_ok: bool,
}

struct ShadowSlot(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for ShadowSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn spawn_shadow(engine: &Arc<Engine>, active: &Arc<Active>, run: ShadowRun) {
    let router = active.router.clone();
    let max =
        usize::try_from(active.config.router_policy.shadow_max_concurrent.max(0)).unwrap_or(0);
    let counter = Arc::clone(engine.shadow_in_flight());
    if counter.fetch_add(1, Ordering::Relaxed) >= max {
        counter.fetch_sub(1, Ordering::Relaxed);
        engine.metrics().shadow_skipped(&router, "concurrency");
        return;
    }
    let slot = ShadowSlot(counter);
    let engine = Arc::clone(engine);
    let active = Arc::clone(active);
    tokio::spawn(async move {
        let _slot = slot;
        let metrics = engine.metrics();
        let base_checks = |failed: &mut Vec<(&'static str, &'static str)>| {
            if run.baseline_refused {
                failed.push(("baseline", "refusal"));
            } else if !run.baseline_citations_ok {
                failed.push(("baseline", "invalid_citation"));
            }
        };
        if run.retrieval_failed {
            // Neither side generates: the candidate would have refused the same way.
            let failed = [
                ("baseline", "retrieval_failure"),
                ("baseline", "refusal"),
                ("candidate", "retrieval_failure"),
                ("candidate", "refusal"),
            ];
            metrics.shadow(&router, &run.lineage, &run.version, &failed);
            return;
        }
        let t = Instant::now();
        let id = adapter_id(&run.lineage, &run.version);
        let generated = match active.small.chat_stream(
            run.messages.clone(),
            greedy(run.max_new_tokens),
            Some(id),
        ) {
            Ok(mut stream) => {
                let cut = read_until_stop(&mut stream, |_| true).await;
                match stream.done.await {
                    Ok(Ok(g)) => Ok(cut.unwrap_or(g.text)),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("the model worker went away".to_owned()),
                }
            }
            Err(e) => Err(e.to_string()),
        };
        let candidate = match generated {
            Ok(text) => text.trim().to_owned(),
            Err(e) => {
                tracing::warn!(error = %e, "shadow generation failed");
                metrics.shadow_skipped(&router, "error");
                return;
            }
        };
        let latency = t.elapsed();
        let distance = {
            let encoder = Arc::clone(&active.encoder);
            let texts = vec![run.baseline.clone(), candidate.clone()];
            match tokio::task::spawn_blocking(move || encoder.embed(&texts)).await {
                Ok(Ok(v)) if v.len() == 2 => cosine_distance(&v[0], &v[1]),
                _ => {
                    metrics.shadow_skipped(&router, "error");
                    return;
                }
            }
        };
        let mut failed = Vec::new();
        base_checks(&mut failed);
        let facts: Vec<&str> = run.facts.iter().map(String::as_str).collect();
        let check = check_output(&candidate, &facts, run.expects, &[]);
        if is_refusal(&candidate) {
            failed.push(("candidate", "refusal"));
        } else if !check.invalid_citations.is_empty() {
            failed.push(("candidate", "invalid_citation"));
        } else if !check.grounded {
            failed.push(("candidate", "ungrounded"));
        }
        if distance > DIVERGENCE_THRESHOLD {
            failed.push(("candidate", "divergent"));
        }
        tracing::debug!(lineage = %run.lineage, version = %run.version, distance, latency_ms = latency.as_millis() as u64, "shadow compared");
        metrics.shadow(&router, &run.lineage, &run.version, &failed);
    });
}

/// What the caller sends to `POST /v1/feedback`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FeedbackRequest {
    /// The answer's interaction token.
    pub token: String,
    /// `escalated`, `resolved`, `reopened` or `csat`.
    pub outcome: String,
    /// Rating 1..=5 with `csat`.
    #[serde(default)]
    pub csat: Option<i64>,
}

/// Why feedback was refused.
#[derive(Debug, thiserror::Error)]
pub enum FeedbackError {
    /// Malformed request or token.
    #[error("{0}")]
    Malformed(String),
    /// The token does not verify.
    #[error("{0}")]
    BadSignature(String),
    /// The token expired.
    #[error("{0}")]
    Expired(String),
    /// Already counted.
    #[error("{0}")]
    Replayed(String),
    /// Not an outcome.
    #[error("{0}")]
    UnknownOutcome(String),
    /// The outcome store could not record it (retry later; nothing was counted).
    #[error("{0}")]
    Unavailable(String),
    /// This runtime answers nothing (retrieval only), so it has no interaction to record.
    #[error("{0}")]
    NotServing(String),
}

impl FeedbackError {
    /// `switchboard_feedback_rejected_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::BadSignature(_) => "bad_signature",
            Self::Expired(_) => "expired",
            Self::Replayed(_) => "replayed",
            Self::UnknownOutcome(_) => "unknown_outcome",
            Self::Unavailable(_) => "store_unavailable",
            Self::NotServing(_) => "unavailable",
        }
    }
}

/// Verifies, stores and counts one feedback call.
pub async fn feedback(engine: &Engine, request: &FeedbackRequest) -> Result<(), FeedbackError> {
    let result = record_feedback(engine, request).await;
    if let Err(e) = &result {
        engine.metrics().feedback_rejected(e.reason());
    }
    result
}

async fn record_feedback(engine: &Engine, request: &FeedbackRequest) -> Result<(), FeedbackError> {
    if request.token.trim().is_empty() {
        return Err(FeedbackError::Malformed("token: must not be empty".into()));
    }
    let now = now_secs();
    let claims = engine
        .keys()
        .verify(request.token.trim(), now)
        .map_err(|e| match e {
            TokenError::Malformed(_) => FeedbackError::Malformed(e.to_string()),
            TokenError::BadSignature => FeedbackError::BadSignature(e.to_string()),
            TokenError::Expired { .. } => FeedbackError::Expired(e.to_string()),
        })?;
    let outcome = Outcome::parse(&request.outcome, request.csat).map_err(|e| match e {
        OutcomeError::Unknown(_) => FeedbackError::UnknownOutcome(e.to_string()),
        OutcomeError::CsatRange(_) => FeedbackError::Malformed(e.to_string()),
    })?;
    let at = i64::try_from(now).unwrap_or(i64::MAX);
    match engine.store().record_outcome(&claims.id, outcome, at).await {
        Ok(Recorded::New) => {}
        Ok(Recorded::Replayed) => {
            return Err(FeedbackError::Replayed(format!(
                "feedback {} for interaction {} was already recorded",
                outcome.kind(),
                claims.id
            )));
        }
        Err(e) => {
            engine.metrics().store_error(e.label());
            return Err(FeedbackError::Unavailable(format!(
                "feedback not recorded, retry later: {e}"
            )));
        }
    }
    engine.metrics().feedback(&claims.variant, outcome.label());
    if let Some(active) = engine.active() {
        let windows: Vec<std::time::Duration> = active
            .config
            .guardrail_settle_windows
            .iter()
            .map(switchboard_crds::units::GoDuration::duration)
            .collect();
        engine.metrics().feedback_settled(
            &claims.variant,
            outcome.label(),
            i64::try_from(claims.iat).unwrap_or(i64::MAX),
            at,
            &windows,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_follow_up_is_searched_with_the_previous_customer_message_and_answered_in_context() {
        let turn = |role: &str, content: &str| HistoryTurn {
            role: role.into(),
            content: content.into(),
        };
        let request = AnswerRequest {
            query: "How long does it take?".into(),
            messages: vec![
                turn("user", "Can I get a refund?"),
                turn("assistant", "Yes, within 14 days [1]."),
            ],
            ..AnswerRequest::default()
        };
        assert_eq!(
            searched_text(&request),
            "Can I get a refund? How long does it take?"
        );
        let alone = AnswerRequest {
            query: "How long does it take?".into(),
            ..AnswerRequest::default()
        };
        assert_eq!(searched_text(&alone), "How long does it take?");
        let messages = grounded_conversation(&request.messages, &request.query, &[]);
        let roles: Vec<&str> = messages.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "user"]);
        assert!(messages[3].content.contains("How long does it take?"));
        // Only the latest turns reach the prompt.
        let long: Vec<HistoryTurn> = (0..10)
            .map(|i| turn(if i % 2 == 0 { "user" } else { "assistant" }, "x"))
            .collect();
        assert_eq!(
            grounded_conversation(&long, "q", &[]).len(),
            HISTORY_IN_PROMPT + 2
        );
        assert!(validate_history(&request.messages).is_ok());
        let bad = |turns: Vec<HistoryTurn>| match validate_history(&turns) {
            Err(ServiceError::InvalidArgument { message, .. }) => message,
            other => panic!("{other:?}"),
        };
        assert!(bad(vec![turn("system", "x")]).contains("messages[0].role"));
        assert!(
            bad(vec![turn("user", "ok"), turn("assistant", " ")]).contains("messages[1].content")
        );
        assert!(bad(vec![turn("user", "x"); MAX_HISTORY_TURNS + 1]).contains("limit"));
    }

    use super::*;

    #[test]
    fn the_grounded_prompt_gives_numbered_facts_and_no_breadcrumbs() {
        let fact = |passage: usize, text: &str| Evidence {
            passage,
            text: text.into(),
            score: 0.9,
            features: Default::default(),
        };
        let facts = [
            fact(3, "Refunds are issued within 5 business days."),
            fact(0, "Orders ship in 2 days."),
        ];
        let messages = grounded_messages(" When do refunds arrive? ", &facts);
        assert_eq!(messages[0].role, "system");
        assert!(messages[0].content.contains("[1]"));
        assert!(messages[0].content.contains("I don't know"));
        assert_eq!(
            messages[1].content,
            "Facts:\n[1] Refunds are issued within 5 business days.\n[2] Orders ship in 2 days.\n\nQuestion: When do refunds arrive?"
        );
        assert!(is_refusal(switchboard_policy::grounding::REFUSAL));
        assert_eq!(
            headings_of("[Refund policy > Refund window]"),
            ["Refund policy", "Refund window"]
        );
    }

    #[test]
    fn long_passages_are_cut_on_a_character_boundary() {
        let text = "é".repeat(2 * PASSAGE_CHARS);
        let cut = truncate_chars(&text, PASSAGE_CHARS);
        assert_eq!(cut.chars().count(), PASSAGE_CHARS + 1);
        assert!(cut.ends_with('…'));
        assert_eq!(truncate_chars("a  b\n c", 10), "a b c");
    }
    fn passage(chunk: &str, section_id: &str, section: &str) -> Passage {
        Passage {
            chunk_id: format!("{section_id}/{}", chunk.len()),
            doc_id: section_id.split('#').next().unwrap_or_default().into(),
            section_id: section_id.into(),
            source: "policies".into(),
            title: "Refunds".into(),
            breadcrumb: "[Refunds > Timing]".into(),
            text: chunk.into(),
            section_text: section.into(),
            last_modified: None,
            freshness_class: "policy".into(),
            scores: switchboard_index::StageScores::default(),
        }
    }

    #[test]
    fn hierarchical_chunking_grounds_the_prompt_on_the_section() {
        let hit = "Refunds are issued within 5 business days.";
        let section =
            format!("Refunds go back to the original card.\n\n{hit}\n\nStore credit is instant.");
        let passages = vec![
            passage(hit, "refunds#timing", &section),
            passage("Store credit is instant.", "refunds#timing", &section),
            passage(
                "Orders ship in 2 days.",
                "shipping#when",
                "Orders ship in 2 days.",
            ),
        ];

        let expanded = numbered(&passages, true);
        assert!(expanded[0].expanded);
        assert_eq!(
            expanded[0].text,
            format!("Refunds go back to the original card. {hit} Store credit is instant.")
        );
        // The section is in the prompt once: the second hit in it keeps its own paragraph.
        assert!(!expanded[1].expanded);
        assert_eq!(expanded[1].text, "Store credit is instant.");
        // A section no longer than its chunk is not an expansion.
        assert!(!expanded[2].expanded);

        // Fixed chunking: the chunk alone.
        let fixed = numbered(&passages, false);
        assert!(fixed.iter().all(|p| !p.expanded));
        assert_eq!(fixed[0].text, hit);
    }

    #[test]
    fn a_long_section_is_a_window_around_the_hit_and_the_prompt_stays_bounded() {
        let hit = "The refund window for annual plans is 30 days.";
        let before = "Earlier paragraph text. ".repeat(200);
        let after = "Later paragraph text. ".repeat(200);
        let section = format!("{before}\n\n{hit}\n\n{after}");
        let window = section_window(&section, hit, SECTION_CHARS);
        assert!(window.contains(hit), "{window}");
        assert!(window.starts_with('…') && window.ends_with('…'), "{window}");
        assert_eq!(window.chars().count(), SECTION_CHARS + 2);

        // Ten hits in ten long sections: expansions go to the best-ranked ones and the whole
        // prompt stays within its budget.
        let passages: Vec<Passage> = (0..10)
            .map(|i| passage(hit, &format!("doc{i}#s"), &section))
            .collect();
        let numbered = numbered(&passages, true);
        let total: usize = numbered.iter().map(|p| p.text.chars().count()).sum();
        assert!(total <= PROMPT_PASSAGE_CHARS, "{total}");
        assert!(numbered[0].expanded && numbered[1].expanded);
        assert!(!numbered[9].expanded);
        assert!(numbered.iter().all(|p| p.text.contains(hit)));
    }
}
