//! Tokenizer rebuilt from GGUF metadata, chat template and generation against transformers
//! (`hack/reference/llama_fixture.py`).
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns
use std::path::{Path, PathBuf};

use switchboard_model::GeneratorWorker;
use switchboard_model::chat::ChatMessage;
use switchboard_model::generate::{FinishReason, GenerationConfig, Generator, Sampling};
use switchboard_model::gguf::GgufFile;
use switchboard_model::tokenizer::LlmTokenizer;
use tch::Device;

fn gguf_path() -> PathBuf {
    let path = std::env::var_os("SWITCHBOARD_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache/models"))
        .join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.exists(),
        "{} not found: run hack/setup.sh models",
        path.display()
    );
    path
}

#[derive(serde::Deserialize)]
struct Reference {
    tokenizer: Vec<TokenizerCase>,
    chat: Chat,
}

#[derive(serde::Deserialize)]
struct TokenizerCase {
    text: String,
    ids: Vec<u32>,
}

#[derive(serde::Deserialize)]
struct Chat {
    messages: Vec<ChatMessage>,
    rendered: String,
    ids: Vec<u32>,
    greedy_ids: Vec<u32>,
    greedy_text: String,
}

fn reference() -> Reference {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smollm2_reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn gguf_tokenizer_matches_transformers() {
    let reference = reference();
    let tokenizer = LlmTokenizer::from_gguf(&GgufFile::open(gguf_path()).unwrap()).unwrap();
    assert_eq!(tokenizer.vocab_size(), 49_152);
    for case in &reference.tokenizer {
        let ids = tokenizer.encode(&case.text, true).unwrap();
        assert_eq!(ids, case.ids, "{:?}", case.text);
        // Byte-level BPE round-trips any text, special tokens included.
        assert_eq!(tokenizer.decode(&ids, false).unwrap(), case.text);
    }
    // SmolLM2's GGUF names <|endoftext|> as EOS; the chat turn ends with <|im_end|>.
    assert_eq!(tokenizer.eos_token_ids(), [0, 2]);
    assert_eq!(tokenizer.bos_token_id(), Some(1));
    assert!(tokenizer.chat_template().unwrap().contains("<|im_start|>"));

    // The same tokenizer as a Hugging Face directory: tokenizer.json + tokenizer_config.json.
    let dir = tempfile::tempdir().unwrap();
    tokenizer
        .inner()
        .save(dir.path().join("tokenizer.json"), false)
        .unwrap();
    let config = serde_json::json!({
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "chat_template": tokenizer.chat_template(),
    });
    std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
    let from_dir = LlmTokenizer::load(dir.path()).unwrap();
    for case in &reference.tokenizer {
        assert_eq!(
            from_dir.encode(&case.text, false).unwrap(),
            case.ids,
            "{:?}",
            case.text
        );
    }
    assert_eq!(from_dir.eos_token_ids(), [2]);
    assert_eq!(from_dir.chat_template(), tokenizer.chat_template());
}

#[test]
fn greedy_chat_answer_matches_transformers_and_sampling_is_seeded() {
    let reference = reference();
    let generator = Generator::load(gguf_path(), Device::Cpu).unwrap();

    // The GGUF's own template, rendered by minijinja, equals transformers' apply_chat_template.
    let chat = &reference.chat;
    assert_eq!(
        generator.render_chat(&chat.messages).unwrap(),
        chat.rendered
    );
    assert_eq!(
        generator.tokenizer().encode(&chat.rendered, false).unwrap(),
        chat.ids
    );

    let greedy = GenerationConfig {
        max_new_tokens: 32,
        ..GenerationConfig::default()
    };
    let answer = generator.chat(&chat.messages, &greedy, None).unwrap();
    assert_eq!(
        answer.token_ids,
        chat.greedy_ids[..chat.greedy_ids.len() - 1],
        "{:?}",
        answer.text
    );
    assert_eq!(answer.text, chat.greedy_text);
    assert!(answer.text.contains("Paris"), "{:?}", answer.text);
    assert_eq!(answer.finish_reason, FinishReason::Stop);
    assert_eq!(answer.prompt_tokens, chat.ids.len());

    // max_new_tokens cuts the answer; an extra stop token ends it early.
    let short = GenerationConfig {
        max_new_tokens: 3,
        ..greedy.clone()
    };
    let cut = generator.chat(&chat.messages, &short, None).unwrap();
    assert_eq!(
        (cut.token_ids.as_slice(), cut.finish_reason),
        (&answer.token_ids[..3], FinishReason::Length)
    );
    let stop_at = answer.token_ids[2];
    let stopped = GenerationConfig {
        stop_token_ids: vec![stop_at],
        ..greedy.clone()
    };
    let early = generator.chat(&chat.messages, &stopped, None).unwrap();
    assert_eq!(
        (early.token_ids.as_slice(), early.finish_reason),
        (&answer.token_ids[..2], FinishReason::Stop)
    );

    // Sampling: the same seed reproduces the answer; seeds differ from each other.
    let sampled = |seed| {
        let cfg = GenerationConfig {
            sampling: Sampling::TopP {
                temperature: 1.2,
                top_p: 0.95,
                seed,
            },
            max_new_tokens: 12,
            ..GenerationConfig::default()
        };
        let prompt = [ChatMessage::user("Write one sentence about the sea.")];
        generator.chat(&prompt, &cfg, None).unwrap().token_ids
    };
    let first = sampled(1);
    assert!(!first.is_empty());
    assert_eq!(first, sampled(1));
    let others: Vec<Vec<u32>> = (2..5).map(sampled).collect();
    assert!(
        others.iter().any(|o| *o != first),
        "sampling ignores the seed"
    );

    // An unknown adapter is an error naming it, not a silent base-model answer.
    let err = generator
        .chat(&chat.messages, &greedy, Some("billing-v3"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("billing-v3") && err.contains("not loaded"),
        "{err}"
    );
}

#[tokio::test]
async fn worker_serves_chat_and_swaps_adapters() {
    let lora = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lora");
    let worker = GeneratorWorker::spawn("smollm2", gguf_path(), Device::Cpu).unwrap();
    let question = vec![ChatMessage::user("What is the capital of France?")];
    let config = GenerationConfig {
        max_new_tokens: 16,
        ..GenerationConfig::default()
    };

    let base = worker
        .chat(question.clone(), config.clone(), None)
        .await
        .unwrap();
    assert!(base.text.contains("Paris"), "{:?}", base.text);
    assert_eq!(worker.queue_depth(), 0);

    // The fixture adapter scaled up (alpha 8 -> 400) so that it visibly changes the greedy answer.
    let loud = tempfile::tempdir().unwrap();
    for file in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(lora.join("qv").join(file), loud.path().join(file)).unwrap();
    }
    let config_path = loud.path().join("adapter_config.json");
    let mut adapter_config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    adapter_config["lora_alpha"] = 400.into();
    std::fs::write(&config_path, adapter_config.to_string()).unwrap();
    worker.load_adapter("qv", loud.path()).await.unwrap();
    worker.load_adapter("mlp", lora.join("mlp")).await.unwrap();
    assert_eq!(worker.adapters().await.unwrap(), ["mlp", "qv"]);
    // Concurrent requests on different adapters; each gets its own adapter's answer.
    let (with_qv, with_mlp, plain) = tokio::join!(
        worker.chat(question.clone(), config.clone(), Some("qv".to_owned())),
        worker.chat(question.clone(), config.clone(), Some("mlp".to_owned())),
        worker.chat(question.clone(), config.clone(), None),
    );
    assert_eq!(plain.unwrap().token_ids, base.token_ids);
    assert_ne!(
        with_qv.unwrap().token_ids,
        base.token_ids,
        "the scaled-up adapter should change the answer"
    );
    with_mlp.unwrap();

    assert!(worker.unload_adapter("qv").await.unwrap());
    let err = worker
        .chat(question.clone(), config.clone(), Some("qv".to_owned()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not loaded"), "{err}");
    let err = worker
        .load_adapter("broken", lora.join("missing"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("adapter_config.json"), "{err}");
    assert_eq!(worker.adapters().await.unwrap(), ["mlp"]);
}
