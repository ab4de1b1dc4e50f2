//! The hooks adapter training uses: `LlamaModel::forward_train` (autograd over a right-padded
//! batch) and trainable adapters (`LoraAdapter::new_trainable`, `save_peft`), on a tiny generated
//! Llama checkpoint so they run in well under a second.
//!
//! What a user would notice if they broke: a training forward that differs from the inference
//! forward (the trained adapter would behave differently when served), padding that leaks into
//! real tokens, gradients that are wrong (training would not converge), and a saved directory
//! that does not load back to the same logits.
use std::path::Path;

use switchboard_model::llama::{LlamaModel, LoadOptions, WeightFormat};
use switchboard_model::lora::{LoraAdapter, LoraConfig};
use tch::{Device, Kind, Tensor, nn};

const VOCAB: i64 = 61;

/// A random Llama checkpoint (2 layers, width 32, GQA 4/2 heads) as a Hugging Face directory.
fn tiny_llama(dir: &Path) {
    tch::manual_seed(7);
    let (h, ffn, layers, heads, kv_heads) = (32i64, 64i64, 2, 4i64, 2i64);
    let head_dim = h / heads;
    let config = serde_json::json!({
        "_name_or_path": "tiny-llama", "vocab_size": VOCAB, "hidden_size": h,
        "intermediate_size": ffn, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv_heads, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "max_position_embeddings": 128, "tie_word_embeddings": true, "eos_token_id": 2,
    });
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let rand = |shape: &[i64]| Tensor::randn(shape, (Kind::Float, Device::Cpu)) * 0.2;
    let mut tensors = vec![
        ("model.embed_tokens.weight".to_owned(), rand(&[VOCAB, h])),
        (
            "model.norm.weight".to_owned(),
            Tensor::ones([h], (Kind::Float, Device::Cpu)),
        ),
    ];
    for i in 0..layers {
        let p = format!("model.layers.{i}");
        for (name, shape) in [
            ("self_attn.q_proj", [heads * head_dim, h]),
            ("self_attn.k_proj", [kv_heads * head_dim, h]),
            ("self_attn.v_proj", [kv_heads * head_dim, h]),
            ("self_attn.o_proj", [h, heads * head_dim]),
            ("mlp.gate_proj", [ffn, h]),
            ("mlp.up_proj", [ffn, h]),
            ("mlp.down_proj", [h, ffn]),
        ] {
            tensors.push((format!("{p}.{name}.weight"), rand(&shape)));
        }
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            tensors.push((
                format!("{p}.{norm}.weight"),
                Tensor::ones([h], (Kind::Float, Device::Cpu)) + rand(&[h]) * 0.1,
            ));
        }
    }
    Tensor::write_safetensors(&tensors, dir.join("model.safetensors")).unwrap();
}

fn setup() -> (tempfile::TempDir, LlamaModel) {
    let dir = tempfile::tempdir().unwrap();
    tiny_llama(dir.path());
    let model = LlamaModel::load(dir.path(), Device::Cpu).unwrap();
    (dir, model)
}

fn all_linear(r: i64) -> LoraConfig {
    let modules = [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ];
    LoraConfig::new(
        r,
        2.0 * r as f64,
        modules.map(str::to_owned).to_vec(),
        Some("tiny-llama".to_owned()),
    )
}

/// A trainable adapter whose B is random, so it changes the output.
fn noisy_adapter(vs: &nn::VarStore, model: &LlamaModel) -> LoraAdapter {
    tch::manual_seed(11);
    let adapter = LoraAdapter::new_trainable("t", all_linear(4), &vs.root(), model).unwrap();
    tch::no_grad(|| {
        for (name, mut var) in vs.variables() {
            if name.ends_with("lora_b_t") {
                var.copy_(&(Tensor::randn(var.size(), (Kind::Float, Device::Cpu)) * 0.1));
            }
        }
    });
    adapter
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn training_forward_is_the_inference_forward_and_padding_never_leaks() {
    let (_dir, model) = setup();
    let vs = nn::VarStore::new(Device::Cpu);
    let adapter = noisy_adapter(&vs, &model);
    let long: Vec<i64> = vec![1, 5, 9, 14, 3, 7, 22, 40];
    let short: Vec<i64> = vec![1, 8, 30];
    // Right-padded batch: the short row is padded with token 0.
    let mut padded = short.clone();
    padded.resize(long.len(), 0);
    let batch = Tensor::from_slice2(&[long.clone(), padded]);
    for adapter in [None, Some(&adapter)] {
        let train = model.forward_train(&batch, adapter, None).unwrap();
        assert_eq!(train.size(), [2, 8, VOCAB]);
        for (row, ids) in [&long, &short].into_iter().enumerate() {
            let alone = model
                .forward(
                    &Tensor::from_slice(ids).unsqueeze(0),
                    &mut model.new_cache(),
                    adapter,
                )
                .unwrap()
                .get(0);
            let from_batch = train.get(row as i64).narrow(0, 0, ids.len() as i64);
            let diff = max_diff(&from_batch, &alone);
            assert!(diff < 1e-5, "row {row}: {diff} from the inference forward");
        }
        // Selected positions are the same rows of the full output (flat index row * seq + t).
        let picked = model
            .forward_train(&batch, adapter, Some(&Tensor::from_slice(&[2i64, 9, 10])))
            .unwrap();
        let full = train.reshape([16, VOCAB]);
        assert!(
            max_diff(
                &picked,
                &full.index_select(0, &Tensor::from_slice(&[2i64, 9, 10]))
            ) < 1e-5
        );
    }
    // The adapter matters (so the comparison above compared something).
    let base = model.forward_train(&batch, None, None).unwrap();
    let with = model.forward_train(&batch, Some(&adapter), None).unwrap();
    assert!(max_diff(&base, &with) > 1e-2);
}

#[test]
fn gradients_reach_only_the_adapter_and_match_finite_differences() {
    let (_dir, model) = setup();
    let vs = nn::VarStore::new(Device::Cpu);
    let adapter = noisy_adapter(&vs, &model);
    let batch = Tensor::from_slice2(&[[1i64, 4, 9, 16, 25, 36], [2, 3, 5, 7, 0, 0]]);
    let targets = Tensor::from_slice(&[4i64, 9, 16, 25, 36, 3, 5, 7]);
    let positions = Tensor::from_slice(&[0i64, 1, 2, 3, 4, 6, 7, 8]);
    let loss = |adapter: &LoraAdapter| -> Tensor {
        model
            .forward_train(&batch, Some(adapter), Some(&positions))
            .unwrap()
            .log_softmax(-1, Kind::Float)
            .gather(1, &targets.unsqueeze(1), false)
            .mean(Kind::Float)
            .neg()
    };
    let value = loss(&adapter);
    value.backward();
    let variables = vs.variables();
    for name in [
        "layer0.q_proj.lora_a_t",
        "layer1.down_proj.lora_b_t",
        "layer0.v_proj.lora_b_t",
        "layer1.gate_proj.lora_a_t",
    ] {
        let mut var = variables[name].shallow_clone();
        let grad = var.grad();
        assert!(grad.defined(), "{name} got no gradient");
        // Central differences on the 3 largest-gradient entries (f32: eps 1e-2, 3% tolerance).
        let flat = grad.flatten(0, -1);
        let (_, top) = flat.abs().topk(3, 0, true, true);
        for i in Vec::<i64>::try_from(&top).unwrap() {
            let bump = |delta: f64| -> f64 {
                tch::no_grad(|| {
                    let mut element = var.view(-1).get(i);
                    let _ = element.g_add_scalar_(delta);
                    let l = loss(&adapter).double_value(&[]);
                    let _ = element.g_sub_scalar_(delta);
                    l
                })
            };
            let eps = 1e-2;
            let numeric = (bump(eps) - bump(-eps)) / (2.0 * eps);
            let analytic = flat.double_value(&[i]);
            assert!(
                (numeric - analytic).abs() <= 0.03 * analytic.abs().max(1e-3),
                "{name}[{i}]: autograd {analytic}, finite differences {numeric}"
            );
        }
        var.zero_grad();
    }
    // The base model's weights are plain tensors: nothing to train there.
    for layer in 0..2 {
        let w = model
            .projection_weight(layer, switchboard_model::llama::Proj::Q)
            .unwrap();
        assert!(!w.requires_grad());
    }
}

#[test]
fn a_saved_adapter_is_peft_and_loads_back_to_the_same_logits() {
    let (dir, model) = setup();
    let vs = nn::VarStore::new(Device::Cpu);
    let adapter = noisy_adapter(&vs, &model);
    let out = tempfile::tempdir().unwrap();
    adapter.save_peft(out.path()).unwrap();

    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["task_type"], "CAUSAL_LM");
    assert_eq!(config["r"], 4);
    assert_eq!(
        config["lora_alpha"], 8,
        "an integral alpha is written as PEFT writes it"
    );
    assert_eq!(config["use_rslora"], false);
    assert_eq!(config["base_model_name_or_path"], "tiny-llama");
    assert_eq!(config["target_modules"].as_array().unwrap().len(), 7);

    let weights = Tensor::read_safetensors(out.path().join("adapter_model.safetensors")).unwrap();
    assert_eq!(weights.len(), 2 * 7 * 2);
    let named: std::collections::HashMap<_, _> = weights.into_iter().collect();
    // PEFT's layout: lora_A [r, in], lora_B [out, r].
    assert_eq!(
        named["base_model.model.model.layers.1.self_attn.k_proj.lora_A.weight"].size(),
        [4, 32]
    );
    assert_eq!(
        named["base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight"].size(),
        [16, 4]
    );
    let header = std::fs::read(out.path().join("adapter_model.safetensors")).unwrap();
    let len = u64::from_le_bytes(header[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&header[8..8 + len]).unwrap();
    assert_eq!(header["__metadata__"]["format"], "pt");

    let loaded = LoraAdapter::load("loaded", out.path(), &model).unwrap();
    assert_eq!(loaded.num_modules(), 14);
    let ids = Tensor::from_slice2(&[[1i64, 2, 3, 4, 5]]);
    let a = model.forward_train(&ids, Some(&adapter), None).unwrap();
    let b = tch::no_grad(|| model.forward_train(&ids, Some(&loaded), None).unwrap());
    assert!(max_diff(&a, &b) < 1e-6);
    drop(dir);
}

#[test]
fn a_new_adapter_starts_as_the_identity_and_int4_models_refuse_to_train() {
    let (dir, model) = setup();
    let vs = nn::VarStore::new(Device::Cpu);
    tch::manual_seed(3);
    let config = LoraConfig::new(8, 16.0, vec!["q_proj".into(), "v_proj".into()], None);
    let adapter = LoraAdapter::new_trainable("fresh", config, &vs.root(), &model).unwrap();
    assert_eq!(adapter.num_modules(), 4);
    let ids = Tensor::from_slice2(&[[1i64, 2, 3]]);
    let base = model.forward_train(&ids, None, None).unwrap();
    let with = model.forward_train(&ids, Some(&adapter), None).unwrap();
    assert!(
        max_diff(&base, &with) == 0.0,
        "B = 0: the adapter adds nothing"
    );
    // PEFT's kaiming_uniform_(a=√5) bound for A is 1/√in.
    let a = &vs.variables()["layer0.q_proj.lora_a_t"];
    let bound = 1.0 / (32f64).sqrt();
    assert!(a.abs().max().double_value(&[]) <= bound);
    assert!(a.abs().max().double_value(&[]) > 0.5 * bound);

    let bad = LoraConfig::new(4, 8.0, vec!["lm_head".into()], None);
    let err = LoraAdapter::new_trainable("bad", bad, &(vs.root() / "bad"), &model)
        .unwrap_err()
        .to_string();
    assert!(err.contains("lm_head"), "{err}");

    let int4 = LlamaModel::load_with(
        dir.path(),
        LoadOptions {
            weights: WeightFormat::Int4,
            ..LoadOptions::new(Device::Cpu)
        },
    )
    .unwrap();
    let err = int4
        .forward_train(&ids, None, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("dense"), "{err}");
}
