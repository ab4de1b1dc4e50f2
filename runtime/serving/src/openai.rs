//! The OpenAI chat-completions wire format: what the runtime serves on
//! `POST /v1/chat/completions` (the small model, whole or streamed) and what it sends to the large
//! model's endpoint (`largeModel.endpoint`), so one runtime can be another's large model.
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchboard_crds::runtime_config::EndpointConfig;
use switchboard_model::chat::ChatMessage;

use crate::http_client::HttpClient;

/// Largest response body accepted from the large model.
const MAX_RESPONSE_BYTES: usize = 8 << 20;

/// One message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// Text content.
    pub content: String,
}

/// `stop`: one string or several.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One stop sequence.
    One(String),
    /// Up to four stop sequences.
    Many(Vec<String>),
}

impl Stop {
    /// The sequences.
    pub fn sequences(&self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s.clone()],
            Self::Many(v) => v.clone(),
        }
    }
}

/// A chat-completions request (the fields this server honours; others are ignored, as OpenAI's
/// own clients send many optional ones).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ChatRequest {
    /// Model name; a resident adapter id (`lineage@version`) applies that adapter.
    #[serde(default)]
    pub model: String,
    /// The conversation.
    pub messages: Vec<Message>,
    /// Most tokens to generate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Newer name of `max_tokens`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u32>,
    /// 0 = greedy; default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Nucleus sampling mass; default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Stop sequences (not part of the output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Stop>,
    /// Seed of the sampler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Stream the answer as server-sent `chat.completion.chunk` events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Must be 1 or absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
}

/// One choice of a response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Choice {
    /// Always 0 (n = 1).
    pub index: u32,
    /// The assistant's message.
    pub message: Message,
    /// `stop` or `length`.
    pub finish_reason: Option<String>,
}

/// Token counts.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Generated tokens.
    pub completion_tokens: u64,
    /// Sum.
    pub total_tokens: u64,
}

/// A chat-completions response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatResponse {
    /// `chatcmpl-<id>`.
    pub id: String,
    /// `chat.completion`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// The model that answered.
    pub model: String,
    /// One choice.
    pub choices: Vec<Choice>,
    /// Token counts.
    #[serde(default)]
    pub usage: Usage,
}

/// OpenAI's error body: `{"error": {...}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The error.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// What went wrong.
    pub message: String,
    /// `invalid_request_error`, `server_error`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// The offending parameter.
    pub param: Option<String>,
    /// A short code.
    pub code: Option<String>,
}

impl ErrorBody {
    /// An `invalid_request_error` naming `param`.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                message: message.into(),
                kind: "invalid_request_error".into(),
                param: Some(param.into()),
                code: Some("invalid_value".into()),
            },
        }
    }

    /// A `server_error`.
    pub fn server(code: &str, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                message: message.into(),
                kind: "server_error".into(),
                param: None,
                code: Some(code.into()),
            },
        }
    }
}

/// Model-layer messages of a request.
pub fn chat_messages(messages: &[Message]) -> Vec<ChatMessage> {
    messages
        .iter()
        .map(|m| ChatMessage::new(m.role.clone(), m.content.clone()))
        .collect()
}

/// Validates a request into (max new tokens, sampling temperature/top-p, stop sequences); the
/// error names the parameter.
pub fn validate(request: &ChatRequest, default_max: u32) -> Result<Vec<String>, ErrorBody> {
    if request.n.is_some_and(|n| n != 1) {
        return Err(ErrorBody::invalid("n", "only n = 1 is supported"));
    }
    if request.messages.is_empty() {
        return Err(ErrorBody::invalid("messages", "must not be empty"));
    }
    for (i, m) in request.messages.iter().enumerate() {
        if !matches!(m.role.as_str(), "system" | "user" | "assistant") {
            return Err(ErrorBody::invalid(
                &format!("messages[{i}].role"),
                format!("`{}` is not one of system, user, assistant", m.role),
            ));
        }
    }
    let max = request.max_completion_tokens.or(request.max_tokens);
    if max == Some(0) || max.is_some_and(|m| m > default_max.max(4096)) {
        return Err(ErrorBody::invalid(
            "max_tokens",
            format!("must be between 1 and {}", default_max.max(4096)),
        ));
    }
    if let Some(t) = request.temperature
        && !(0.0..=2.0).contains(&t)
    {
        return Err(ErrorBody::invalid("temperature", "must be between 0 and 2"));
    }
    if let Some(p) = request.top_p
        && !(p > 0.0 && p <= 1.0)
    {
        return Err(ErrorBody::invalid("top_p", "must be in (0, 1]"));
    }
    let stops = request
        .stop
        .as_ref()
        .map(Stop::sequences)
        .unwrap_or_default();
    if stops.len() > 4 {
        return Err(ErrorBody::invalid("stop", "at most 4 sequences"));
    }
    Ok(stops)
}

/// Why a large-model call failed.
#[derive(Debug, thiserror::Error)]
pub enum LargeModelError {
    /// Transport failure or timeout.
    #[error("large model {url}: {message}")]
    Transport {
        /// Endpoint.
        url: String,
        /// What happened.
        message: String,
    },
    /// A non-2xx status.
    #[error("large model {url}: HTTP {status}: {message}")]
    Status {
        /// Endpoint.
        url: String,
        /// Status code.
        status: u16,
        /// Error message from the body.
        message: String,
    },
    /// A 2xx response that isn't a chat completion.
    #[error("large model {url}: unexpected response: {message}")]
    Malformed {
        /// Endpoint.
        url: String,
        /// What was wrong.
        message: String,
    },
}

/// Client of the large model's OpenAI-compatible endpoint. Counts requests in flight (the queue
/// depth the router compares with `maxQueueDepth`); the counter is shared across config reloads.
#[derive(Debug, Clone)]
pub struct LargeModel {
    endpoint: EndpointConfig,
    api_key: Option<String>,
    http: HttpClient,
    in_flight: Arc<AtomicUsize>,
}

struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl LargeModel {
    /// A client of `endpoint`.
    pub fn new(
        endpoint: EndpointConfig,
        api_key: Option<String>,
        http: HttpClient,
        in_flight: Arc<AtomicUsize>,
    ) -> Self {
        Self {
            endpoint,
            api_key,
            http,
            in_flight,
        }
    }

    /// `POST <url>/chat/completions` (greedy, `max_tokens`); the assistant's text and usage.
    pub async fn chat(
        &self,
        messages: Vec<Message>,
        max_tokens: u32,
    ) -> Result<ChatResponse, LargeModelError> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let _guard = InFlight(Arc::clone(&self.in_flight));
        let url = format!(
            "{}/chat/completions",
            self.endpoint.url.trim_end_matches('/')
        );
        let request = ChatRequest {
            model: self.endpoint.model.clone(),
            messages,
            max_tokens: Some(max_tokens),
            temperature: Some(0.0),
            ..ChatRequest::default()
        };
        let body = serde_json::to_vec(&request).map_err(|e| LargeModelError::Malformed {
            url: url.clone(),
            message: e.to_string(),
        })?;
        let timeout = self
            .endpoint
            .timeout
            .duration()
            .max(Duration::from_millis(1));
        let response = self
            .http
            .post_json(
                &url,
                self.api_key.as_deref(),
                body,
                timeout,
                MAX_RESPONSE_BYTES,
            )
            .await
            .map_err(|message| LargeModelError::Transport {
                url: url.clone(),
                message,
            })?;
        if !(200..300).contains(&response.status) {
            let message = serde_json::from_slice::<ErrorBody>(&response.body)
                .map(|e| e.error.message)
                .unwrap_or_else(|_| {
                    String::from_utf8_lossy(&response.body[..response.body.len().min(300)])
                        .into_owned()
                });
            return Err(LargeModelError::Status {
                url,
                status: response.status,
                message,
            });
        }
        let parsed: ChatResponse =
            serde_json::from_slice(&response.body).map_err(|e| LargeModelError::Malformed {
                url: url.clone(),
                message: e.to_string(),
            })?;
        if parsed.choices.is_empty() {
            return Err(LargeModelError::Malformed {
                url,
                message: "no choices".into(),
            });
        }
        Ok(parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_validated_naming_the_parameter() {
        let ok: ChatRequest = serde_json::from_value(serde_json::json!({
            "model": "small", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 16, "temperature": 0, "stop": "\n\n"
        }))
        .unwrap();
        assert_eq!(validate(&ok, 256).unwrap(), vec!["\n\n".to_owned()]);
        for (patch, param) in [
            (serde_json::json!({"messages": []}), "messages"),
            (serde_json::json!({"temperature": 3.0}), "temperature"),
            (serde_json::json!({"top_p": 0.0}), "top_p"),
            (serde_json::json!({"max_tokens": 0}), "max_tokens"),
            (
                serde_json::json!({"messages": [{"role": "tool", "content": "x"}]}),
                "messages[0].role",
            ),
        ] {
            let mut value = serde_json::to_value(&ok).unwrap();
            for (k, v) in patch.as_object().unwrap() {
                value[k] = v.clone();
            }
            let request: ChatRequest = serde_json::from_value(value).unwrap();
            let err = validate(&request, 256).unwrap_err();
            assert_eq!(err.error.param.as_deref(), Some(param));
            assert_eq!(err.error.kind, "invalid_request_error");
        }
    }
}
