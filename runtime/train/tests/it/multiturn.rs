//! Multi-turn SFT encoding with the real SmolLM2 tokenizer and chat template: every assistant
//! turn of a ticket conversation carries the loss, each encoded as the runtime prompts and the
//! model generates it.

use crate::support;

use switchboard_model::chat::ChatMessage;
use switchboard_model::tokenizer::LlmTokenizer;
use switchboard_train::encode::Encoder;

#[test]
fn every_assistant_turn_is_trained_as_the_runtime_would_generate_it() {
    let tokenizer = LlmTokenizer::load(support::model()).unwrap();
    let encoder = Encoder::new(tokenizer).unwrap();
    let history = vec![
        ChatMessage::new("user", "I was charged twice for October."),
        ChatMessage::new(
            "assistant",
            "Sorry about that! I have refunded the duplicate charge.",
        ),
        ChatMessage::new("user", "When will I see the money?"),
    ];
    let answer = "The refund shows on your card within 5 to 10 business days.";
    let all = encoder.encode_all_turns(&history, answer).unwrap();
    assert_eq!(all.spans.len(), 2, "{:?}", all.spans);
    let text = |ids: &[i64]| {
        let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
        encoder.tokenizer().decode(&ids, false).unwrap()
    };
    let first = text(&all.ids[all.spans[0].0..all.spans[0].1]);
    let second = text(&all.ids[all.spans[1].0..all.spans[1].1]);
    assert!(
        first.starts_with("Sorry about that!") && first.ends_with("<|im_end|>"),
        "{first:?}"
    );
    assert!(
        second.starts_with("The refund shows") && second.ends_with("<|im_end|>"),
        "{second:?}"
    );
    // The last turn is the same tokens as the single-turn encoding of the same example: the
    // final answer is learned the same way either way, the earlier reply is learned too.
    let last = encoder.encode(&history, answer).unwrap();
    assert_eq!(all.ids, last.ids, "the same conversation, the same ids");
    assert_eq!(all.spans[1], last.spans[0]);
    assert!(all.answer_len() > last.answer_len());
    // The whole thing is the template's rendering of the conversation.
    let rendered = text(&all.ids);
    assert!(rendered.contains("<|im_start|>user\nWhen will I see the money?<|im_end|>"));
}
