//! `train-reranker`, `synth-queries` and `eval --rewrite` end to end with the real binary, on a
//! six-question FAQ. Training uses a tiny generated BERT (random weights, the MiniLM tokenizer) so
//! it takes seconds; the small-model paths use SmolLM2 as served.

use crate::support;
use support::{models_present, root, runtime_cmd, stderr_of_failure};

use std::path::Path;

use serde_json::Value;
use switchboard_model::bert::{BertConfig, BertModel};
use tch::{Device, Tensor, nn};

const FAQ: [(&str, &str); 6] = [
    (
        "How do I renew a passport?",
        "Passport renewal: bring the expired passport and a photo to the passport office.",
    ),
    (
        "Where can I park a bicycle?",
        "Bicycle parking racks stand next to the railway station entrance.",
    ),
    (
        "When is the swimming pool open?",
        "The swimming pool opens at seven in the morning on weekdays.",
    ),
    (
        "How often is recycling collected?",
        "Recycling bins are emptied every Tuesday by the city.",
    ),
    (
        "Can I bring my dog to the library?",
        "Dogs are not allowed in the library, except assistance dogs.",
    ),
    (
        "What does a parking permit cost?",
        "A resident parking permit costs 600 per year, paid at the town hall.",
    ),
];

fn write_faq(dir: &Path) -> String {
    let lines: Vec<String> = FAQ
        .iter()
        .enumerate()
        .map(|(i, (q, a))| serde_json::json!({"id": format!("r{i}"), "q": q, "a": a}).to_string())
        .collect();
    let path = dir.join("faq.jsonl");
    std::fs::write(&path, lines.join("\n")).unwrap();
    path.to_str().unwrap().to_owned()
}

/// A tiny random BERT encoder (no pooler) with the MiniLM tokenizer.
fn tiny_encoder(dir: &Path) -> String {
    let minilm = root().join(".cache/models/all-MiniLM-L6-v2");
    assert!(
        minilm.join("tokenizer.json").exists(),
        "run hack/setup.sh models"
    );
    std::fs::create_dir_all(dir).unwrap();
    let config = serde_json::json!({
        "architectures": ["BertModel"], "model_type": "bert",
        "vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 64, "hidden_act": "gelu", "max_position_embeddings": 128,
        "type_vocab_size": 2, "layer_norm_eps": 1e-12, "pad_token_id": 0,
        "hidden_dropout_prob": 0.1, "initializer_range": 0.02
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::copy(minilm.join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    let cfg: BertConfig = serde_json::from_value(config).unwrap();
    tch::manual_seed(11);
    let vs = nn::VarStore::new(Device::Cpu);
    let _model = BertModel::new(vs.root(), &cfg, false);
    let tensors: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    Tensor::write_safetensors(&tensors, dir.join("model.safetensors")).unwrap();
    dir.to_str().unwrap().to_owned()
}

fn run_json(args: &[&str]) -> Value {
    let output = runtime_cmd().args(args).output().unwrap();
    assert!(
        output.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stdout)))
}

fn row<'a>(report: &'a Value, prefix: &str) -> &'a Value {
    report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["config"].as_str().unwrap().starts_with(prefix))
        .unwrap_or_else(|| panic!("no row {prefix} in {report}"))
}

/// Asserts a training run's loss fell below 30 % of its first epoch's and its directory holds a
/// loadable checkpoint with `training.json`; returns the epoch losses.
fn assert_trained(record: &Value, out: &Path) -> Vec<f64> {
    let losses: Vec<f64> = record["epoch_loss"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert!(
        losses.last().unwrap() < &(0.3 * losses[0]),
        "loss did not fall: {losses:?}"
    );
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "training.json",
    ] {
        assert!(out.join(file).exists(), "{file}");
    }
    losses
}

/// The reranker learns the training half: trained on the three `train` rows, the saved
/// checkpoint puts their answers first under `eval --split train --reranker`, and training
/// continues from it (`--init` a cross-encoder).
#[test]
fn train_reranker_learns_its_queries_and_eval_uses_it() {
    let dir = tempfile::tempdir().unwrap();
    let faq = write_faq(dir.path());
    let encoder = tiny_encoder(&dir.path().join("encoder"));
    let out = dir.path().join("reranker");
    let out_str = out.to_str().unwrap();
    let train = [
        "train-reranker",
        "--zaragoza",
        &faq,
        "--encoder",
        &encoder,
        "--epochs",
        "40",
        "--lr",
        "1e-3",
        "--head-lr-multiplier",
        "3",
        "--group-size",
        "4",
        "--batch-groups",
        "3",
        "--negatives-depth",
        "5",
        "--dropout",
        "0",
        "--max-len",
        "64",
        "--out",
        out_str,
    ];
    let record = run_json(&train);
    assert_eq!(record["golden_queries"], 3, "{record}");
    assert_eq!(record["steps"], 40, "{record}");
    // Negatives come only from the answers of training queries: the other two train answers,
    // never the held-out half's (which would be learned as "never relevant").
    assert_eq!(record["negatives_from"], "positives", "{record}");
    assert_eq!(record["mean_pool"], 2.0, "{record}");
    let losses = assert_trained(&record, &out);

    let report = run_json(&[
        "eval",
        "--zaragoza",
        &faq,
        "--encoder",
        &encoder,
        "--split",
        "train",
        "--reranker",
        out_str,
        "--rerank-top-n",
        "6",
        "--rerank-weight",
        "1,0",
        "--json",
    ]);
    assert_eq!(report["queries"], 3);
    assert_eq!(report["split"], "train");
    let reranked = row(&report, "hybrid+rerank");
    assert_eq!(reranked["mrr@10"], 1.0, "{report}");
    // Weight 0 keeps the fused order: the row equals plain hybrid.
    let kept = row(&report, "hybrid+rerank (rrf k=60, top 6, weight 0)");
    assert_eq!(
        kept["mrr@10"],
        row(&report, "hybrid (")["mrr@10"],
        "{report}"
    );

    // A one-label cross-encoder as --init continues training.
    let resumed = dir.path().join("resumed");
    let mut again: Vec<&str> = train[..train.len() - 2].to_vec();
    let epochs = again.iter().position(|a| *a == "40").unwrap();
    again[epochs] = "1";
    again.extend(["--init", out_str, "--out", resumed.to_str().unwrap()]);
    again.extend(["--negatives-from", "corpus"]);
    let record = run_json(&again);
    assert_eq!(record["mean_pool"], 5.0, "every other answer: {record}");
    assert!(
        record["epoch_loss"][0].as_f64().unwrap() < 0.3 * losses[0],
        "resumed from the trained head: {record}"
    );

    // Distillation from the retrieval encoder: the run records it and its loss adds the soft
    // cross-entropy against the encoder's ordering.
    let distilled = dir.path().join("distilled");
    let mut distill: Vec<&str> = train[..train.len() - 2].to_vec();
    distill[epochs] = "2";
    distill.extend([
        "--distill-weight",
        "1",
        "--out",
        distilled.to_str().unwrap(),
    ]);
    let record = run_json(&distill);
    assert_eq!(record["distill_weight"], 1.0, "{record}");
    assert_eq!(record["distill_temperature"], 0.05, "{record}");
    assert!(
        record["epoch_loss"][0].as_f64().unwrap() > losses[0],
        "the distillation term adds to the listwise loss: {record}"
    );
    let bad = stderr_of_failure(runtime_cmd().args([
        "train-reranker",
        "--zaragoza",
        &faq,
        "--encoder",
        &encoder,
        "--distill-temperature",
        "0",
        "--distill-weight",
        "1",
        "--out",
        dir.path().join("never").to_str().unwrap(),
    ]));
    assert!(
        bad.contains("--distill-temperature must be > 0 (got 0)"),
        "{bad}"
    );
}

/// `train-encoder` fine-tunes the retrieval encoder: trained on the three `train` rows, the saved
/// directory loads as a sentence encoder, `eval --encoder` puts their answers first by dense
/// search alone, and it teaches a cross-encoder as a distillation teacher (`--distill-encoder`).
#[test]
fn train_encoder_learns_its_queries_and_serves_as_encoder_and_teacher() {
    let dir = tempfile::tempdir().unwrap();
    let faq = write_faq(dir.path());
    let encoder = tiny_encoder(&dir.path().join("encoder"));
    let dense = |encoder: &str| {
        let report = run_json(&[
            "eval",
            "--zaragoza",
            &faq,
            "--encoder",
            encoder,
            "--split",
            "train",
            "--json",
        ]);
        row(&report, "dense")["mrr@10"].as_f64().unwrap()
    };
    let before = dense(&encoder);
    let out = dir.path().join("tuned");
    let out_str = out.to_str().unwrap();
    let record = run_json(&[
        "train-encoder",
        "--zaragoza",
        &faq,
        "--encoder",
        &encoder,
        "--epochs",
        "30",
        "--lr",
        "1e-3",
        "--batch-size",
        "3",
        "--negatives-depth",
        "2",
        "--dropout",
        "0",
        "--max-len",
        "64",
        "--out",
        out_str,
    ]);
    assert_eq!(record["golden_queries"], 3, "{record}");
    assert_eq!(
        record["steps"], 30,
        "one batch of three per epoch: {record}"
    );
    assert_trained(&record, &out);
    let after = dense(out_str);
    // Random weights put the answers anywhere (0.33); the fine-tuned ones first or second (0.83:
    // one answer is outranked by a held-out answer it never saw as a negative).
    assert!(
        before < 0.5 && after >= 0.8,
        "dense MRR@10 on the trained queries: {before} -> {after}"
    );

    // The fine-tuned encoder as the teacher of a cross-encoder.
    let reranker = dir.path().join("reranker");
    let record = run_json(&[
        "train-reranker",
        "--zaragoza",
        &faq,
        "--encoder",
        &encoder,
        "--epochs",
        "2",
        "--group-size",
        "3",
        "--max-len",
        "64",
        "--distill-weight",
        "1",
        "--distill-encoder",
        out_str,
        "--out",
        reranker.to_str().unwrap(),
    ]);
    assert_eq!(record["distill_encoder"], out_str, "{record}");

    // Writing over the encoder being trained is refused, and the encoder is left as it was.
    let weights = std::fs::read(Path::new(&encoder).join("model.safetensors")).unwrap();
    let err = stderr_of_failure(runtime_cmd().args([
        "train-encoder",
        "--zaragoza",
        &faq,
        "--encoder",
        &encoder,
        "--out",
        &encoder,
    ]));
    assert!(err.contains("is the encoder being trained"), "{err}");
    // So is a directory of the same name elsewhere: it would share the source's model id.
    let twin = dir.path().join("elsewhere/encoder");
    let err = stderr_of_failure(runtime_cmd().args([
        "train-encoder",
        "--zaragoza",
        &faq,
        "--encoder",
        &encoder,
        "--out",
        twin.to_str().unwrap(),
    ]));
    assert!(err.contains("model id \"encoder\""), "{err}");
    assert!(!twin.exists());
    assert_eq!(
        std::fs::read(Path::new(&encoder).join("model.safetensors")).unwrap(),
        weights
    );
}

/// `eval --rewrite`: the policy row is the query as written when the policy rewrites nothing
/// (short FAQ questions), and the rewritten row when it rewrites everything; the fine-tuning file
/// holds only rewrites that raised their gold's rank.
#[test]
fn rewrite_comparison_follows_the_policy() {
    models_present();
    let dir = tempfile::tempdir().unwrap();
    let faq = write_faq(dir.path());
    let sft = dir.path().join("sft.jsonl");
    let rewrite_rows = |extra: &[&str]| {
        let mut args = vec!["eval", "--zaragoza", &faq, "--rewrite", "--json"];
        args.extend_from_slice(extra);
        let report = run_json(&args);
        let rows = report["rewrite"]["rows"].as_array().unwrap().clone();
        let find = |bucket: &str, variant: &str| {
            rows.iter()
                .find(|r| r["bucket"] == bucket && r["variant"] == variant)
                .unwrap_or_else(|| panic!("no {bucket}/{variant} in {rows:?}"))
                .clone()
        };
        (
            report.clone(),
            find("all", "original"),
            find("all", "rewritten"),
            find("all", "policy"),
            find("all", "oracle"),
        )
    };

    let (report, original, rewritten, policy, oracle) = rewrite_rows(&[
        "--rewrite-sft-out",
        sft.to_str().unwrap(),
        "--rewrite-sft-keep",
    ]);
    assert_eq!(original["queries"], 6);
    assert_eq!(policy["rewritten"], 0, "short questions are kept: {report}");
    assert_eq!(policy["mrr@10"], original["mrr@10"]);
    let mrr = |r: &Value| r["mrr@10"].as_f64().unwrap();
    assert!(mrr(&oracle) >= mrr(&original).max(mrr(&rewritten)) - 1e-9);
    let count = |key: &str| report["rewrite"][key].as_u64().unwrap() as usize;
    let lines = std::fs::read_to_string(&sft).unwrap();
    // Every query gives a pair (its better rewrite, or itself when no rewrite beats it) unless
    // its better rewrite is too long.
    assert_eq!(lines.lines().count() + count("sft_too_long"), 6, "{report}");
    assert_eq!(count("sft_pairs"), lines.lines().count());
    assert!(count("sft_pairs") - count("sft_kept_original") <= count("improved"));
    let mut kept = 0;
    for line in lines.lines() {
        let pair: Value = serde_json::from_str(line).unwrap();
        if pair["completion"] == pair["query"] {
            kept += 1;
            assert_eq!(pair["rewrite_rank"], pair["original_rank"], "{pair}");
        }
        assert!(
            pair["messages"][0]["content"]
                .as_str()
                .unwrap()
                .starts_with("Rewrite the following customer query")
        );
        assert!(pair["completion"].as_str().is_some_and(|c| !c.is_empty()));
    }

    assert_eq!(kept, count("sft_kept_original"));

    let (_, _, rewritten_all, policy_all, _) =
        rewrite_rows(&["--rewrite-min-words", "1", "--rewrite-max-overlap", "1.0"]);
    assert_eq!(policy_all["mrr@10"], rewritten_all["mrr@10"]);
    assert_eq!(policy_all["rewritten"], rewritten_all["rewritten"]);

    // A fine-tuned rewriter is measured through its LoRA adapter (here the PEFT fixture).
    let adapter = root().join("runtime/model/tests/fixtures/lora/qv");
    let (report, original_lora, ..) =
        rewrite_rows(&["--rewrite-adapter", adapter.to_str().unwrap()]);
    assert_eq!(report["rewrite"]["adapter"], adapter.to_str().unwrap());
    assert_eq!(original_lora["mrr@10"], original["mrr@10"]);
    let missing = dir.path().join("no-such-adapter");
    let stderr = stderr_of_failure(
        runtime_cmd()
            .args(["eval", "--zaragoza", &faq, "--rewrite-adapter"])
            .arg(&missing),
    );
    assert!(
        stderr.contains("loading the LoRA adapter") && stderr.contains("no-such-adapter"),
        "{stderr}"
    );
}

/// `synth-queries`: every kept question names its source passage's document, and with
/// `--keep-top 0` every well-formed question is kept.
#[test]
fn synthetic_queries_name_their_passage() {
    models_present();
    let dir = tempfile::tempdir().unwrap();
    let faq = write_faq(dir.path());
    let out = dir.path().join("synthetic.jsonl");
    let summary = run_json(&[
        "synth-queries",
        "--zaragoza",
        &faq,
        "--limit",
        "2",
        "--samples",
        "1",
        "--keep-top",
        "0",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(summary["passages"], 2);
    assert_eq!(summary["generations"], 4);
    let text = std::fs::read_to_string(&out).unwrap();
    let rows: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), summary["questions"].as_u64().unwrap() as usize);
    assert!(!rows.is_empty(), "SmolLM2 wrote no question: {summary}");
    for r in &rows {
        assert!(r["query"].as_str().unwrap().ends_with('?'), "{r}");
        assert_eq!(r["kept"], true);
        let doc = r["gold_docs"][0].as_str().unwrap();
        assert!(
            doc == "zaragoza/0001.txt" || doc == "zaragoza/0002.txt",
            "{doc}"
        );
    }
}
