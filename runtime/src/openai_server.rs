//! `POST /v1/chat/completions` served on the small model (the large-model role of another
//! runtime in tests, and a plain OpenAI-compatible endpoint for tools).
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use switchboard_model::generate::{FinishReason, GenerationConfig, Sampling};
use switchboard_policy::new_interaction_id;

use crate::engine::Active;
use crate::openai::{
    ChatRequest, ChatResponse, Choice, ErrorBody, Message, Usage, apply_stop, chat_messages,
    validate,
};

/// Answers one request; the error is OpenAI's error body with its HTTP status.
pub async fn complete(
    active: &Active,
    request: ChatRequest,
) -> Result<ChatResponse, (StatusCode, ErrorBody)> {
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
    let generation = active
        .small
        .chat(
            chat_messages(&request.messages),
            GenerationConfig {
                sampling,
                max_new_tokens,
                stop_token_ids: Vec::new(),
            },
            adapter.clone(),
        )
        .await
        .map_err(|e| {
            (
                if matches!(e, switchboard_model::ModelError::Overloaded { .. }) {
                    StatusCode::TOO_MANY_REQUESTS
                } else {
                    StatusCode::INTERNAL_SERVER_ERROR
                },
                ErrorBody::server("generation_failed", e.to_string()),
            )
        })?;
    let mut text = generation.text;
    let stopped_by_sequence = apply_stop(&mut text, &stops);
    let finish = if stopped_by_sequence || generation.finish_reason == FinishReason::Stop {
        "stop"
    } else {
        "length"
    };
    let prompt_tokens = generation.prompt_tokens as u64;
    let completion_tokens = generation.token_ids.len() as u64;
    Ok(ChatResponse {
        id: format!("chatcmpl-{}", new_interaction_id()),
        object: "chat.completion".into(),
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        model: adapter.unwrap_or_else(|| {
            std::path::Path::new(&active.config.small_model.model)
                .file_name()
                .map_or_else(
                    || active.config.small_model.model.clone(),
                    |n| n.to_string_lossy().into_owned(),
                )
        }),
        choices: vec![Choice {
            index: 0,
            message: Message {
                role: "assistant".into(),
                content: text,
            },
            finish_reason: Some(finish.into()),
        }],
        usage: Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        },
    })
}
