//! The GGUF reader and the Llama model against references from the `gguf` package and transformers
//! (`hack/reference/llama_fixture.py`).
//!
//! Tolerance on logits: the reference runs transformers' `LlamaForCausalLM` in fp32 on the same
//! dequantised weights, so the only differences are fp32 summation order (different matmul/SDPA
//! kernels and blockings) accumulated over 30 layers. Measured on x86-64 CPU: at most 7e-6 on logits
//! of magnitude ~10-20. We require every compared logit within 1e-4 absolute (headroom for other
//! CPUs' SIMD paths and thread counts) and the same top-5 order. A wrong RoPE layout, Q/K
//! permutation or norm epsilon moves logits by > 0.1.
use std::path::{Path, PathBuf};

use switchboard_model::gguf::{GgmlType, GgufFile, dequantize};
use switchboard_model::llama::LlamaModel;
use tch::{Device, Kind, Tensor};

const LOGIT_TOLERANCE: f64 = 1e-4;

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

fn fixture<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[derive(serde::Deserialize)]
struct Blocks {
    synthetic: Vec<Synthetic>,
    real: Vec<Real>,
}

#[derive(serde::Deserialize)]
struct Synthetic {
    #[serde(rename = "type")]
    ty: String,
    bytes: String,
    values: Vec<f32>,
}

#[derive(serde::Deserialize)]
struct Real {
    name: String,
    #[serde(rename = "type")]
    ty: String,
    shape: Vec<i64>,
    row: i64,
    values: Vec<f32>,
    sum: f64,
}

#[derive(serde::Deserialize)]
struct Reference {
    logits: Vec<LogitsCase>,
}

#[derive(serde::Deserialize)]
struct LogitsCase {
    prompt: String,
    ids: Vec<i64>,
    top_ids: Vec<i64>,
    top_logits: Vec<f32>,
    head_logits: Vec<f32>,
}

fn ggml_type(name: &str) -> GgmlType {
    match name {
        "F32" => GgmlType::F32,
        "F16" => GgmlType::F16,
        "Q4_0" => GgmlType::Q4_0,
        "Q4_1" => GgmlType::Q4_1,
        "Q8_0" => GgmlType::Q8_0,
        other => panic!("fixture type {other}"),
    }
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn dequantization_matches_gguf_package() {
    let blocks: Blocks = fixture("gguf_blocks.json");
    let types: Vec<&str> = blocks.synthetic.iter().map(|s| s.ty.as_str()).collect();
    assert_eq!(types, ["Q4_0", "Q4_1", "Q8_0", "F16", "F32"]);
    for case in &blocks.synthetic {
        let values = dequantize(ggml_type(&case.ty), &hex(&case.bytes)).unwrap();
        // Both sides compute d * q (+ m) in f32 from the same f16 scales: bit-exact.
        assert_eq!(values, case.values, "{}", case.ty);
    }

    let gguf = GgufFile::open(gguf_path()).unwrap();
    assert_eq!(blocks.real.len(), 4);
    for case in &blocks.real {
        let info = gguf.tensor_info(&case.name).unwrap();
        assert_eq!(info.ggml_type, ggml_type(&case.ty), "{}", case.name);
        let tensor = gguf.tensor(&case.name, Device::Cpu).unwrap();
        assert_eq!(tensor.size(), case.shape, "{}", case.name);
        let rows = tensor.reshape([-1, *case.shape.last().unwrap()]);
        let row = rows.get(case.row.min(rows.size()[0] - 1));
        let got: Vec<f32> = row
            .narrow(0, 0, case.values.len() as i64)
            .try_into()
            .unwrap();
        assert_eq!(got, case.values, "{}", case.name);
        let sum = tensor
            .to_kind(Kind::Double)
            .sum(Kind::Double)
            .double_value(&[]);
        assert!(
            (sum - case.sum).abs() <= 1e-6 * case.sum.abs().max(1.0),
            "{}: {sum} vs {}",
            case.name,
            case.sum
        );
    }
}

#[test]
fn gguf_metadata_and_infos() {
    let gguf = GgufFile::open(gguf_path()).unwrap();
    assert_eq!(gguf.version(), 3);
    assert_eq!(gguf.tensors().len(), 272);
    assert_eq!(
        gguf.get("general.architecture").unwrap().as_str(),
        Some("llama")
    );
    assert_eq!(gguf.get("llama.block_count").unwrap().as_u64(), Some(30));
    assert_eq!(
        gguf.get("llama.rope.freq_base").unwrap().as_f64(),
        Some(100_000.0)
    );
    assert_eq!(
        gguf.get("tokenizer.ggml.tokens")
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        49_152
    );
    assert_eq!(
        gguf.get("tokenizer.ggml.merges")
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        48_900
    );
    assert_eq!(
        gguf.get("tokenizer.ggml.add_bos_token").unwrap().as_bool(),
        Some(false)
    );
    let embd = gguf.tensor_info("token_embd.weight").unwrap();
    assert_eq!(
        (embd.ggml_type, embd.shape()),
        (GgmlType::Q8_0, vec![49_152, 576])
    );
    assert_eq!(gguf.data_start() % 32, 0);
}

#[test]
fn gguf_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.gguf");
    std::fs::write(&bad, b"GGML\x03\0\0\0").unwrap();
    let err = GgufFile::open(&bad).unwrap_err().to_string();
    assert!(
        err.contains("bad.gguf") && err.contains("not a GGUF file"),
        "{err}"
    );

    // A real header cut short in the metadata.
    let head = std::fs::read(gguf_path()).unwrap()[..4096].to_vec();
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, head).unwrap();
    let err = GgufFile::open(&cut).unwrap_err().to_string();
    assert!(
        err.contains("cut.gguf") && err.contains("truncated"),
        "{err}"
    );
}

fn check_logits(case: &LogitsCase, logits: &Tensor) {
    let logits: Vec<f32> = logits.to_kind(Kind::Float).try_into().unwrap();
    let mut worst = 0f64;
    for (&id, &want) in case.top_ids.iter().zip(&case.top_logits) {
        worst = worst.max((f64::from(logits[id as usize]) - f64::from(want)).abs());
    }
    for (got, want) in logits.iter().zip(&case.head_logits) {
        worst = worst.max((f64::from(*got) - f64::from(*want)).abs());
    }
    eprintln!("{:?}: max |logit diff| = {worst:.2e}", case.prompt);
    assert!(
        worst <= LOGIT_TOLERANCE,
        "{:?}: max |logit diff| {worst} > {LOGIT_TOLERANCE}",
        case.prompt
    );
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    let top5: Vec<i64> = order[..5].iter().map(|&i| i as i64).collect();
    assert_eq!(top5, case.top_ids[..5], "{:?}: top-5 ids", case.prompt);
}

/// Next-token logits of the GGUF model equal transformers' on the same weights, and decoding with
/// the KV cache (prompt prefix, then one token at a time) reproduces the full-sequence forward.
#[test]
fn smollm2_gguf_matches_transformers_and_kv_cache_is_exact() {
    let reference: Reference = fixture("smollm2_reference.json");
    let start = std::time::Instant::now();
    let model = LlamaModel::load(gguf_path(), Device::Cpu).unwrap();
    eprintln!("GGUF load: {:.2?}", start.elapsed());
    let cfg = model.config();
    assert_eq!(
        (
            cfg.num_hidden_layers,
            cfg.num_attention_heads,
            cfg.kv_heads()
        ),
        (30, 9, 3)
    );
    assert!(cfg.tie_word_embeddings);
    assert_eq!(cfg.rope_theta, 100_000.0);

    for case in &reference.logits {
        let ids = Tensor::from_slice(&case.ids).unsqueeze(0);
        let mut cache = model.new_cache();
        let last = model.forward_last(&ids, &mut cache, None).unwrap();
        assert_eq!(cache.len(), case.ids.len() as i64);
        check_logits(case, &last.get(0));

        // All positions at once == prefix then token by token through the cache.
        let full = model
            .forward(&ids, &mut model.new_cache(), None)
            .unwrap()
            .get(0);
        let n = case.ids.len() as i64;
        let split = n / 2;
        let mut cache = model.new_cache();
        let mut steps = vec![
            model
                .forward(&ids.narrow(1, 0, split), &mut cache, None)
                .unwrap()
                .get(0),
        ];
        // A two-token chunk after the prefix exercises the explicit causal mask over cached keys.
        steps.push(
            model
                .forward(&ids.narrow(1, split, 2), &mut cache, None)
                .unwrap()
                .get(0),
        );
        for pos in split + 2..n {
            steps.push(
                model
                    .forward(&ids.narrow(1, pos, 1), &mut cache, None)
                    .unwrap()
                    .get(0),
            );
        }
        let incremental = Tensor::cat(&steps, 0);
        let diff = (&full - &incremental).abs().max().double_value(&[]);
        assert!(
            diff <= 1e-4,
            "{:?}: cached vs full forward differ by {diff}",
            case.prompt
        );
        let last_full = full.get(n - 1);
        assert!((&last_full - last.get(0)).abs().max().double_value(&[]) <= 1e-4);
    }

    // The same weights as a Hugging Face directory (config.json + model.safetensors) load by name
    // and give identical logits.
    let dir = tempfile::tempdir().unwrap();
    model.save_hf_dir(dir.path()).unwrap();
    let hf = LlamaModel::load(dir.path(), Device::Cpu).unwrap();
    assert!(hf.config().tie_word_embeddings);
    assert!(
        hf.source()
            .names
            .iter()
            .any(|n| n == "SmolLM2-135M-Instruct")
    );
    let case = &reference.logits[0];
    let ids = Tensor::from_slice(&case.ids).unsqueeze(0);
    let a = model
        .forward_last(&ids, &mut model.new_cache(), None)
        .unwrap();
    let b = hf.forward_last(&ids, &mut hf.new_cache(), None).unwrap();
    assert!(a.equal(&b), "safetensors round trip changed the logits");
    drop(hf);

    // Context overflow is an error, not a panic.
    let mut cache = model.new_cache();
    let too_long = Tensor::zeros(
        [1, cfg.max_position_embeddings + 1],
        (Kind::Int64, Device::Cpu),
    );
    let err = model
        .forward_last(&too_long, &mut cache, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("context length"), "{err}");
}
