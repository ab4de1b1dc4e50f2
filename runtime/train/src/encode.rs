//! Examples to token ids, exactly as the runtime will prompt the model: the conversation rendered
//! with the checkpoint's chat template ready for the assistant's turn (what
//! `Generator::chat_prompt_ids` feeds the model), then the answer and the token that ends the
//! assistant's turn (`<|im_end|>` for ChatML templates), which is what makes generation stop.
use switchboard_model::chat::{ChatMessage, ChatTemplate};
use switchboard_model::tokenizer::LlmTokenizer;

use crate::error::{Result, TrainError};

/// One example as ids: `ids[..prompt_len]` is the prompt; the loss is taken on the `spans`
/// (token ranges of assistant turns, end of turn included): the last answer, or every
/// assistant turn of a multi-turn conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// Conversation ids.
    pub ids: Vec<i64>,
    /// Ids before the first trained token (at least 1).
    pub prompt_len: usize,
    /// `[start, end)` ranges of trained (assistant) tokens, in order, not overlapping.
    pub spans: Vec<(usize, usize)>,
}

impl Encoded {
    /// Trained tokens (the loss's tokens), ends of turn included.
    pub fn answer_len(&self) -> usize {
        self.spans.iter().map(|(a, b)| b - a).sum()
    }
}

/// Renders and tokenizes examples with a model's tokenizer and chat template.
#[derive(Debug)]
pub struct Encoder {
    tokenizer: LlmTokenizer,
    template: ChatTemplate,
}

impl Encoder {
    /// The encoder of a tokenizer (its chat template, or ChatML when it has none).
    pub fn new(tokenizer: LlmTokenizer) -> Result<Self> {
        let template = ChatTemplate::new(
            tokenizer.chat_template(),
            tokenizer.bos_token(),
            tokenizer.eos_token(),
        )?;
        if tokenizer.eos_token_ids().is_empty() {
            return Err(TrainError::setting(
                "model",
                "the tokenizer names no end-of-sequence token: a trained answer could never stop",
            ));
        }
        Ok(Self {
            tokenizer,
            template,
        })
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &LlmTokenizer {
        &self.tokenizer
    }

    /// The prompt ids of a conversation (what the runtime feeds the model).
    pub fn prompt_ids(&self, messages: &[ChatMessage]) -> Result<Vec<u32>> {
        let prompt = self.template.render(messages, true)?;
        Ok(self.tokenizer.encode(&prompt, false)?)
    }

    /// The ids of `answer` as the assistant's turn after `messages`, ending with the
    /// end-of-turn token: the part of the template's rendering of the whole conversation after
    /// the prompt, cut after the first end-of-sequence id (templates add a newline after it).
    /// A template that does not close the turn gets the tokenizer's first end-of-sequence id.
    pub fn answer_ids(&self, messages: &[ChatMessage], answer: &str) -> Result<Vec<u32>> {
        let prompt = self.template.render(messages, true)?;
        let mut full = messages.to_vec();
        full.push(ChatMessage::new("assistant", answer));
        let whole = self.template.render(&full, false)?;
        let eos = self.tokenizer.eos_token_ids();
        let mut ids = match whole.strip_prefix(&prompt) {
            Some(suffix) if suffix.starts_with(answer) => self.tokenizer.encode(suffix, false)?,
            _ => self.tokenizer.encode(answer, false)?,
        };
        match ids.iter().position(|id| eos.contains(id)) {
            Some(end) => ids.truncate(end + 1),
            None => ids.push(eos[0]),
        }
        Ok(ids)
    }

    /// Prompt and answer ids of one example.
    pub fn encode(&self, messages: &[ChatMessage], answer: &str) -> Result<Encoded> {
        let prompt = self.prompt_ids(messages)?;
        if prompt.is_empty() {
            return Err(TrainError::setting(
                "data",
                "a conversation renders to an empty prompt",
            ));
        }
        let answer = self.answer_ids(messages, answer)?;
        let prompt_len = prompt.len();
        let ids: Vec<i64> = prompt.into_iter().chain(answer).map(i64::from).collect();
        let end = ids.len();
        Ok(Encoded {
            ids,
            prompt_len,
            spans: vec![(prompt_len, end)],
        })
    }

    /// A conversation `history` + the assistant's `answer`, with the loss on **every**
    /// assistant turn (the earlier ones in `history` too), each encoded exactly as the runtime
    /// prompts and the model generates it: the text before an assistant turn is tokenized as a
    /// prompt, the turn up to its end-of-turn token as an answer. With no earlier assistant turn
    /// it is [`Self::encode`].
    pub fn encode_all_turns(&self, history: &[ChatMessage], answer: &str) -> Result<Encoded> {
        let turns: Vec<usize> = history
            .iter()
            .enumerate()
            .filter(|(_, m)| m.role == "assistant")
            .map(|(i, _)| i)
            .collect();
        if turns.is_empty() {
            return self.encode(history, answer);
        }
        let mut messages = history.to_vec();
        messages.push(ChatMessage::new("assistant", answer));
        let last = messages.len() - 1;
        let mut ids: Vec<i64> = Vec::new();
        let mut spans = Vec::new();
        // Text already turned into ids: a prefix of every later rendering.
        let mut done = String::new();
        for &turn in turns.iter().chain(std::iter::once(&last)) {
            let prompt = self.template.render(&messages[..turn], true)?;
            let before = prompt.strip_prefix(done.as_str()).ok_or_else(|| {
                TrainError::setting(
                    "data",
                    "the chat template renders a conversation differently from its own prefix: multi-turn examples cannot be trained with this model (keep one assistant turn per example)",
                )
            })?;
            ids.extend(
                self.tokenizer
                    .encode(before, false)?
                    .into_iter()
                    .map(i64::from),
            );
            let answer_ids = self.answer_ids(&messages[..turn], &messages[turn].content)?;
            let start = ids.len();
            ids.extend(answer_ids.iter().map(|&i| i64::from(i)));
            spans.push((start, ids.len()));
            // The text the answer ids stand for: the turn up to and including its end marker.
            let rendered = self.template.render(&messages[..=turn], false)?;
            let after_prompt = rendered.strip_prefix(prompt.as_str()).unwrap_or_default();
            let eos_text = self.tokenizer.eos_token().unwrap_or_default();
            let consumed = match after_prompt.find(eos_text).filter(|_| !eos_text.is_empty()) {
                Some(i) => &after_prompt[..i + eos_text.len()],
                None => after_prompt,
            };
            done = format!("{prompt}{consumed}");
        }
        let prompt_len = spans.first().map_or(0, |s| s.0);
        if prompt_len == 0 {
            return Err(TrainError::setting(
                "data",
                "a conversation renders to an empty prompt",
            ));
        }
        Ok(Encoded {
            ids,
            prompt_len,
            spans,
        })
    }
}
