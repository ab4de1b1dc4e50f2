//! Examples to token ids, exactly as the runtime will prompt the model: the conversation rendered
//! with the checkpoint's chat template ready for the assistant's turn (what
//! `Generator::chat_prompt_ids` feeds the model), then the answer and the token that ends the
//! assistant's turn (`<|im_end|>` for ChatML templates), which is what makes generation stop.
use switchboard_model::chat::{ChatMessage, ChatTemplate};
use switchboard_model::tokenizer::LlmTokenizer;

use crate::error::{Result, TrainError};

/// One example as ids: `ids[..prompt_len]` is the prompt, the rest the answer (the loss is
/// taken on the answer tokens only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// Prompt then answer ids.
    pub ids: Vec<i64>,
    /// Number of prompt ids (at least 1).
    pub prompt_len: usize,
}

impl Encoded {
    /// Answer tokens (the loss's tokens), end of turn included.
    pub fn answer_len(&self) -> usize {
        self.ids.len() - self.prompt_len
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
        Ok(Encoded {
            ids: prompt.into_iter().chain(answer).map(i64::from).collect(),
            prompt_len,
        })
    }
}
