//! `POST /v1/chat/completions` served on the small model (the large-model role of another
//! runtime in tests, and a plain OpenAI-compatible endpoint for tools), whole or streamed
//! (`stream: true`: server-sent `chat.completion.chunk` events, then `data: [DONE]`).
//!
//! Both run the generation as a stream: a stop sequence ends the generation as soon as it
//! appears (the slot goes to the next request), and streamed text never shows a stop sequence or
//! the beginning of one that may still complete.
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use serde::Serialize;
use switchboard_model::ModelError;
use switchboard_model::generate::{FinishReason, GenerationConfig, Sampling};
use switchboard_model::generator_worker::{GenerationStream, StreamEvent};
use switchboard_policy::new_interaction_id;

use crate::engine::Active;
use crate::openai::{
    ChatRequest, ChatResponse, Choice, ErrorBody, Message, Usage, chat_messages, validate,
};

/// An error as OpenAI's API answers it.
pub type ApiError = (StatusCode, ErrorBody);

/// One `chat.completion.chunk` of a streamed response.
#[derive(Debug, Clone, Serialize)]
pub struct ChatChunk {
    /// Same for every chunk of a response.
    pub id: String,
    /// `chat.completion.chunk`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The model that answers.
    pub model: String,
    /// One choice.
    pub choices: Vec<ChunkChoice>,
}

/// The choice of a chunk.
#[derive(Debug, Clone, Serialize)]
pub struct ChunkChoice {
    /// Always 0.
    pub index: u32,
    /// `{"role": "assistant"}` first, then `{"content": ...}` pieces, then `{}`.
    pub delta: serde_json::Value,
    /// `stop` or `length` on the last chunk.
    pub finish_reason: Option<&'static str>,
}

/// A validated request, its generation started.
pub struct Started {
    id: String,
    created: u64,
    model: String,
    stops: Vec<String>,
    stream: GenerationStream,
}

impl std::fmt::Debug for Started {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Started")
            .field("id", &self.id)
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

fn model_error(e: &ModelError) -> ApiError {
    (
        if matches!(e, ModelError::Overloaded { .. }) {
            StatusCode::TOO_MANY_REQUESTS
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        },
        ErrorBody::server("generation_failed", e.to_string()),
    )
}

/// Validates `request` and starts its generation (admission happens here: a full queue is a 429
/// before any byte of a stream is sent).
pub fn start(active: &Active, request: ChatRequest) -> Result<Started, ApiError> {
    let default_max = u32::try_from(active.config.small_model.max_new_tokens.max(1)).unwrap_or(256);
    let stops = validate(&request, default_max).map_err(|e| (StatusCode::BAD_REQUEST, e))?;
    // A resident adapter may be named as the model (`lineage@version`); anything else is the
    // base model.
    let adapter = active
        .adapters
        .contains_key(&request.model)
        .then(|| request.model.clone());
    let temperature = request.temperature.unwrap_or(1.0);
    let sampling = if temperature <= 0.0 {
        Sampling::Greedy
    } else {
        Sampling::TopP {
            temperature,
            top_p: request.top_p.unwrap_or(1.0),
            seed: request.seed.unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64)
            }),
        }
    };
    let max_new_tokens = request
        .max_completion_tokens
        .or(request.max_tokens)
        .unwrap_or(default_max) as usize;
    let model = adapter.clone().unwrap_or_else(|| {
        std::path::Path::new(&active.config.small_model.model)
            .file_name()
            .map_or_else(
                || active.config.small_model.model.clone(),
                |n| n.to_string_lossy().into_owned(),
            )
    });
    let stream = active
        .small
        .chat_stream(
            chat_messages(&request.messages),
            GenerationConfig {
                sampling,
                max_new_tokens,
                stop_token_ids: Vec::new(),
            },
            adapter,
        )
        .map_err(|e| model_error(&e))?;
    Ok(Started {
        id: format!("chatcmpl-{}", new_interaction_id()),
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        model,
        stops,
        stream,
    })
}

/// Length of the longest suffix of `text` that is a proper prefix of a stop sequence (text that
/// must be held back: the stop sequence may still complete).
fn held_back(text: &str, stops: &[String]) -> usize {
    stops
        .iter()
        .filter(|s| !s.is_empty())
        .flat_map(|s| {
            (1..s.len())
                .filter(|&n| s.is_char_boundary(n))
                .filter(|&n| text.ends_with(&s[..n]))
                .max()
        })
        .max()
        .unwrap_or(0)
}

impl Started {
    /// Runs the generation to its end, calling `on_text` with each piece of text that is final
    /// (stop sequences cut, a possible stop sequence held back). Returns the text, the finish
    /// reason and the token counts. Dropping out early (a stop sequence) ends the generation.
    pub async fn run(
        self,
        mut on_text: impl FnMut(&str),
    ) -> Result<(String, &'static str, Usage), ApiError> {
        let Started {
            stops, mut stream, ..
        } = self;
        let mut text = String::new();
        let mut sent: usize = 0;
        while let Some(StreamEvent::Delta(delta)) = stream.deltas.recv().await {
            text.push_str(&delta);
            let search_from = sent.saturating_sub(stops.iter().map(String::len).max().unwrap_or(0));
            let search_from = (0..=search_from)
                .rev()
                .find(|&i| text.is_char_boundary(i))
                .unwrap_or(0);
            let stop_at = stops
                .iter()
                .filter(|s| !s.is_empty())
                .filter_map(|s| {
                    text[search_from..]
                        .find(s.as_str())
                        .map(|i| search_from + i)
                })
                .min();
            if let Some(at) = stop_at {
                if at > sent {
                    on_text(&text[sent..at]);
                }
                text.truncate(at);
                sent = at;
                // Closing the stream frees the model's slot at its next step.
                stream.deltas.close();
                break;
            }
            let safe = text.len() - held_back(&text, &stops);
            if safe > sent {
                on_text(&text[sent..safe]);
                sent = safe;
            }
        }
        let generation = stream
            .done
            .await
            .map_err(|_| model_error(&ModelError::WorkerGone("small".into())))?
            .map_err(|e| model_error(&e))?;
        let (text, finish) = match generation.finish_reason {
            // Ended on one of our stop sequences: `text` is cut before it.
            FinishReason::Cancelled => (text, "stop"),
            FinishReason::Stop => (generation.text, "stop"),
            FinishReason::Length => (generation.text, "length"),
        };
        if text.len() > sent {
            on_text(&text[sent..]);
        }
        let prompt_tokens = generation.prompt_tokens as u64;
        let completion_tokens = generation.token_ids.len() as u64;
        Ok((
            text,
            finish,
            Usage {
                prompt_tokens,
                completion_tokens,
                total_tokens: prompt_tokens + completion_tokens,
            },
        ))
    }

    /// A chunk of this response.
    pub fn chunk(
        &self,
        delta: serde_json::Value,
        finish_reason: Option<&'static str>,
    ) -> ChatChunk {
        ChatChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model.clone(),
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                finish_reason,
            }],
        }
    }
}

/// Answers one request whole; the error is OpenAI's error body with its HTTP status.
pub async fn complete(active: &Active, request: ChatRequest) -> Result<ChatResponse, ApiError> {
    let started = start(active, request)?;
    let (id, created, model) = (started.id.clone(), started.created, started.model.clone());
    let (text, finish, usage) = started.run(|_| {}).await?;
    Ok(ChatResponse {
        id,
        object: "chat.completion".into(),
        created,
        model,
        choices: vec![Choice {
            index: 0,
            message: Message {
                role: "assistant".into(),
                content: text,
            },
            finish_reason: Some(finish.into()),
        }],
        usage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_possible_stop_sequence_is_held_back() {
        let stops = vec!["\nUser:".to_owned(), "END".to_owned()];
        assert_eq!(held_back("Hello\nUs", &stops), 3);
        assert_eq!(held_back("Hello E", &stops), 1);
        assert_eq!(held_back("Hello", &stops), 0);
        assert_eq!(held_back("ünïcödé", &["é!".to_owned()]), 2);
    }
}
