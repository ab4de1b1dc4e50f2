//! Tokenizer rebuilt from GGUF metadata, chat template and generation against transformers
//! (`hack/reference/llama_fixture.py`).
use std::path::{Path, PathBuf};

use switchboard_model::GeneratorWorker;
use switchboard_model::chat::ChatMessage;
use switchboard_model::generate::{FinishReason, GenerationConfig, Generator, Sampling};
use switchboard_model::generator_worker::{StreamEvent, WorkerOptions};
use switchboard_model::gguf::GgufFile;
use switchboard_model::llama::WeightFormat;
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

/// A copy of the qv fixture adapter scaled up (alpha 8 -> 400) so that it visibly changes answers.
fn loud_adapter() -> tempfile::TempDir {
    let lora = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lora");
    let loud = tempfile::tempdir().unwrap();
    for file in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(lora.join("qv").join(file), loud.path().join(file)).unwrap();
    }
    let config_path = loud.path().join("adapter_config.json");
    let mut adapter_config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    adapter_config["lora_alpha"] = 400.into();
    std::fs::write(&config_path, adapter_config.to_string()).unwrap();
    loud
}

/// Continuous batching changes nothing a caller sees: requests decoded together in slots (two at
/// a time, prompts prefilled in 7-token chunks between decoding steps, a third request waiting
/// for a slot, each through its own adapter) get token for token what they get one at a time, and
/// a stream's deltas add up to its text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_batching_matches_one_at_a_time_and_streams() {
    let loud = loud_adapter();
    let mlp = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lora/mlp");
    let config = GenerationConfig {
        max_new_tokens: 12,
        ..GenerationConfig::default()
    };
    let requests = [
        ("What is the capital of France?", None),
        ("Name a primary colour.", Some("qv")),
        (
            "How many legs does a spider have? Answer with a number.",
            Some("mlp"),
        ),
    ];
    // One at a time, on this thread.
    let mut generator = Generator::load(gguf_path(), Device::Cpu).unwrap();
    generator.load_adapter("qv", loud.path()).unwrap();
    generator.load_adapter("mlp", &mlp).unwrap();
    let expected: Vec<Vec<u32>> = requests
        .iter()
        .map(|(q, adapter)| {
            generator
                .chat(&[ChatMessage::user(*q)], &config, *adapter)
                .unwrap()
                .token_ids
        })
        .collect();
    drop(generator);

    let worker = GeneratorWorker::spawn_with(
        "batched",
        gguf_path(),
        WorkerOptions {
            max_batch: 2,
            prefill_chunk: 7,
            ..WorkerOptions::new(Device::Cpu)
        },
    )
    .unwrap();
    worker.load_adapter("qv", loud.path()).await.unwrap();
    worker.load_adapter("mlp", &mlp).await.unwrap();
    let chat = |i: usize| {
        let (q, adapter) = requests[i];
        worker.chat(
            vec![ChatMessage::user(q)],
            config.clone(),
            adapter.map(str::to_owned),
        )
    };
    let mut stream = worker
        .chat_stream(vec![ChatMessage::user(requests[0].0)], config.clone(), None)
        .unwrap();
    let (a, b, c) = tokio::join!(chat(0), chat(1), chat(2));
    for (i, got) in [a, b, c].into_iter().enumerate() {
        assert_eq!(got.unwrap().token_ids, expected[i], "request {i}");
    }
    let mut streamed = String::new();
    while let Some(StreamEvent::Delta(delta)) = stream.deltas.recv().await {
        streamed.push_str(&delta);
    }
    let done = stream.done.await.unwrap().unwrap();
    assert_eq!(done.token_ids, expected[0]);
    assert_eq!(streamed, done.text);
    assert_eq!(worker.queue_depth(), 0);

    // A caller that goes away frees its slot.
    let abandoned = worker
        .chat_stream(
            vec![ChatMessage::user("Tell me a long story.")],
            GenerationConfig {
                max_new_tokens: 500,
                ..GenerationConfig::default()
            },
            None,
        )
        .unwrap();
    drop(abandoned);
    let started = std::time::Instant::now();
    while worker.queue_depth() > 0 {
        assert!(started.elapsed() < std::time::Duration::from_secs(60));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The int4 form decodes with the GGUF file's own 4-bit weights: the same answers as the dense
/// reference on factual questions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn int4_weights_answer_like_the_dense_model() {
    let worker = GeneratorWorker::spawn_with(
        "int4",
        gguf_path(),
        WorkerOptions::new(Device::Cpu).weights(WeightFormat::Int4),
    )
    .unwrap();
    let config = GenerationConfig {
        max_new_tokens: 16,
        ..GenerationConfig::default()
    };
    let reference = Generator::load(gguf_path(), Device::Cpu).unwrap();
    let mut agree = 0;
    let mut total = 0;
    for question in [
        "What is the capital of France?",
        "What is the largest planet in our solar system?",
        "Which ocean lies between Europe and North America?",
    ] {
        let messages = vec![ChatMessage::user(question)];
        let dense = reference.chat(&messages, &config, None).unwrap();
        let int4 = worker.chat(messages, config.clone(), None).await.unwrap();
        // Greedy decoding is chaotic after a first divergence: compare the common prefix.
        let same = dense
            .token_ids
            .iter()
            .zip(&int4.token_ids)
            .take_while(|(a, b)| a == b)
            .count();
        agree += same;
        total += dense.token_ids.len().min(int4.token_ids.len());
        eprintln!(
            "{question}\n  dense: {:?}\n  int4:  {:?}",
            dense.text, int4.text
        );
    }
    assert!(
        agree * 10 >= total * 7,
        "int4 agrees with the dense model on {agree} of {total} leading tokens"
    );
}

/// A group decoded as one batch (GRPO's sampling) answers like one request at a time: greedy
/// rows give the single greedy answer; sampled rows with the seeds of single requests give
/// their answers; a row that stops early ends where it stopped.
#[test]
fn a_group_decoded_together_answers_like_one_request_at_a_time() {
    use switchboard_model::generate::{Sampling, generate_group};
    let reference = reference();
    let generator = Generator::load(gguf_path(), Device::Cpu).unwrap();
    let ids = generator.chat_prompt_ids(&reference.chat.messages).unwrap();
    let greedy = GenerationConfig {
        max_new_tokens: 24,
        ..GenerationConfig::default()
    };
    let single = generator.generate_ids(&ids, &greedy, None).unwrap();
    let group = generate_group(
        generator.model(),
        generator.tokenizer(),
        &ids,
        &greedy,
        &[1, 2, 3],
        None,
    )
    .unwrap();
    assert_eq!(group.len(), 3);
    for g in &group {
        assert_eq!(
            g.token_ids, single.token_ids,
            "{:?} vs {:?}",
            g.text, single.text
        );
        assert_eq!(g.finish_reason, single.finish_reason);
    }
    let sampled = |seed| GenerationConfig {
        sampling: Sampling::TopP {
            temperature: 1.0,
            top_p: 0.95,
            seed,
        },
        max_new_tokens: 24,
        stop_token_ids: Vec::new(),
    };
    let seeds = [11u64, 12, 13, 14];
    let together = generate_group(
        generator.model(),
        generator.tokenizer(),
        &ids,
        &sampled(0),
        &seeds,
        None,
    )
    .unwrap();
    let alone: Vec<_> = seeds
        .iter()
        .map(|&s| generator.generate_ids(&ids, &sampled(s), None).unwrap())
        .collect();
    let same = together
        .iter()
        .zip(&alone)
        .filter(|(a, b)| a.token_ids == b.token_ids)
        .count();
    // Batched float sums may round differently and flip a sampled token; most rows match.
    assert!(same >= 3, "{same} of 4 rows match: {together:?} {alone:?}");
    let distinct: std::collections::BTreeSet<_> =
        together.iter().map(|g| g.token_ids.clone()).collect();
    assert!(distinct.len() > 1, "different seeds, different answers");
}
