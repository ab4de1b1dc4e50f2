//! LoRA adapters (PEFT format) applied per request, against PEFT's own logits and against merged
//! weights; the registry's hot replace/unload; rejection of adapters that don't fit the base model.
//! Fixtures: `hack/reference/llama_lora_fixture.py`.
//!
//! Tolerances: vs PEFT, the same fp32 computation in a different summation order, as in
//! `tests/it/llama.rs` (measured <= 1.7e-5; required 1e-4). Unmerged vs merged: `W x + s·B(A x)` and
//! `(W + s·BA) x` differ only by rounding (measured <= 4e-5; required 1e-4), while the adapters
//! shift logits by 0.54-1.9, so a missing or misplaced adapter term fails loudly.
use std::path::{Path, PathBuf};

use switchboard_model::llama::{LlamaModel, Proj};
use switchboard_model::lora::{LoraAdapter, LoraRegistry};
use tch::{Device, Kind, Tensor};

const TOLERANCE: f64 = 1e-4;

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

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn adapter_dir(name: &str) -> PathBuf {
    fixtures().join("lora").join(name)
}

#[derive(serde::Deserialize)]
struct Reference {
    adapters: std::collections::BTreeMap<String, Vec<Case>>,
}

#[derive(serde::Deserialize)]
struct Case {
    prompt: String,
    ids: Vec<i64>,
    top_ids: Vec<i64>,
    top_logits: Vec<f32>,
    head_logits: Vec<f32>,
}

fn reference() -> Reference {
    let text = std::fs::read_to_string(fixtures().join("lora_reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn next_logits(model: &LlamaModel, ids: &[i64], adapter: Option<&LoraAdapter>) -> Tensor {
    let input = Tensor::from_slice(ids).unsqueeze(0);
    model
        .forward_last(&input, &mut model.new_cache(), adapter)
        .unwrap()
        .get(0)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

fn diff_to_reference(logits: &Tensor, case: &Case) -> f64 {
    let logits: Vec<f32> = logits.to_kind(Kind::Float).try_into().unwrap();
    let top = case
        .top_ids
        .iter()
        .zip(&case.top_logits)
        .map(|(&i, &w)| (logits[i as usize], w));
    let head = logits.iter().copied().zip(case.head_logits.iter().copied());
    top.chain(head)
        .map(|(g, w)| (f64::from(g) - f64::from(w)).abs())
        .fold(0.0, f64::max)
}

/// Replaces every adapted base weight by `W + s·B·A` (returns the originals to restore).
fn merge(model: &LlamaModel, adapter: &LoraAdapter) -> Vec<(Tensor, Tensor)> {
    let mut originals = Vec::new();
    tch::no_grad(|| {
        for layer in 0..model.config().num_hidden_layers as usize {
            for proj in Proj::ALL {
                if let Some(delta) = adapter.merged_delta(layer, proj).unwrap() {
                    let mut weight = model
                        .projection_weight(layer, proj)
                        .unwrap()
                        .shallow_clone();
                    originals.push((weight.shallow_clone(), weight.copy()));
                    let merged = &weight + delta;
                    weight.copy_(&merged);
                }
            }
        }
    });
    originals
}

fn unmerge(originals: Vec<(Tensor, Tensor)>) {
    tch::no_grad(|| {
        for (mut weight, original) in originals {
            weight.copy_(&original);
        }
    });
}

#[test]
fn adapters_match_peft_and_merged_weights_and_swap_while_serving() {
    let reference = reference();
    let model = LlamaModel::load(gguf_path(), Device::Cpu).unwrap();
    let mut registry = LoraRegistry::new();
    for name in ["qv", "mlp"] {
        assert!(
            registry
                .load(name, adapter_dir(name), &model)
                .unwrap()
                .is_none()
        );
    }
    assert_eq!(registry.ids(), ["mlp", "qv"]);
    assert_eq!(registry.get("qv").unwrap().num_modules(), 60); // q, v x 30 layers
    assert_eq!(registry.get("mlp").unwrap().num_modules(), 12); // 4 modules x layers 1, 15, 28
    assert_eq!(registry.get("qv").unwrap().scale(), 2.0);

    let mut outputs = std::collections::BTreeMap::new();
    for (name, cases) in &reference.adapters {
        let adapter = registry.get(name).unwrap();
        for case in cases {
            let base = next_logits(&model, &case.ids, None);
            let with = next_logits(&model, &case.ids, Some(&adapter));
            let shift = max_diff(&base, &with);
            assert!(
                shift > 0.5,
                "{name} {:?}: the adapter barely changes logits ({shift})",
                case.prompt
            );

            let vs_peft = diff_to_reference(&with, case);
            let originals = merge(&model, &adapter);
            let merged = next_logits(&model, &case.ids, None);
            unmerge(originals);
            let vs_merged = max_diff(&with, &merged);
            eprintln!(
                "{name} {:?}: shift {shift:.3}, |vs peft| {vs_peft:.2e}, |vs merged| {vs_merged:.2e}",
                case.prompt
            );
            assert!(
                vs_peft <= TOLERANCE,
                "{name} {:?}: {vs_peft} from PEFT's logits",
                case.prompt
            );
            assert!(
                vs_merged <= TOLERANCE,
                "{name} {:?}: {vs_merged} from merged weights",
                case.prompt
            );
            // Unmerging restored the base: no adapter state leaks into requests without one.
            assert!(max_diff(&next_logits(&model, &case.ids, None), &base) == 0.0);
            outputs.insert((name.clone(), case.prompt.clone()), with);
        }
    }

    // Hot replace while a request holds the old adapter: it keeps computing with what it started
    // with; new requests see the replacement; unloading leaves in-flight requests untouched.
    let case = &reference.adapters["qv"][0];
    let in_flight = registry.get("qv").unwrap();
    let replaced = registry
        .load("qv", adapter_dir("mlp"), &model)
        .unwrap()
        .unwrap();
    assert!(std::rc::Rc::ptr_eq(&replaced, &in_flight));
    let old = next_logits(&model, &case.ids, Some(&in_flight));
    assert!(max_diff(&old, &outputs[&("qv".to_owned(), case.prompt.clone())]) == 0.0);
    let new = next_logits(&model, &case.ids, Some(&registry.get("qv").unwrap()));
    let mlp_case = &reference.adapters["mlp"][0];
    assert_eq!(mlp_case.prompt, case.prompt);
    assert!(max_diff(&new, &outputs[&("mlp".to_owned(), case.prompt.clone())]) == 0.0);
    assert!(registry.remove("qv").is_some());
    assert!(registry.get("qv").is_none());
    assert_eq!(registry.len(), 1);
    assert!(max_diff(&next_logits(&model, &case.ids, Some(&in_flight)), &old) == 0.0);
}

fn copy_adapter(from: &str, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for file in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(adapter_dir(from).join(file), to.join(file)).unwrap();
    }
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("adapter_config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(&path, config.to_string()).unwrap();
}

fn write_weights(dir: &Path, tensors: &[(&str, Tensor)]) {
    Tensor::write_safetensors(tensors, dir.join("adapter_model.safetensors")).unwrap();
}

#[test]
fn adapters_that_do_not_fit_are_rejected_with_the_reason() {
    let model = LlamaModel::load(gguf_path(), Device::Cpu).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut registry = LoraRegistry::new();
    registry.load("good", adapter_dir("qv"), &model).unwrap();
    let reject = |registry: &mut LoraRegistry, dir: &Path| {
        let err = registry.load("bad", dir, &model).unwrap_err().to_string();
        assert!(err.contains("LoRA adapter `bad`"), "{err}");
        assert_eq!(
            registry.ids(),
            ["good"],
            "a rejected adapter must leave the registry unchanged"
        );
        err
    };

    // Trained on another base model.
    let other_base = tmp.path().join("other-base");
    copy_adapter("qv", &other_base);
    edit_config(&other_base, |c| {
        c["base_model_name_or_path"] = "HuggingFaceTB/SmolLM2-360M-Instruct".into()
    });
    let err = reject(&mut registry, &other_base);
    assert!(
        err.contains("SmolLM2-360M-Instruct") && err.contains("SmolLM2-135M-Instruct"),
        "{err}"
    );

    // A lora_B whose output width is not the module's (e.g. made for a wider model).
    let zeros = |shape: &[i64]| Tensor::zeros(shape, (Kind::Float, Device::Cpu));
    let wrong_shape = tmp.path().join("wrong-shape");
    copy_adapter("qv", &wrong_shape);
    write_weights(
        &wrong_shape,
        &[
            (
                "base_model.model.model.layers.3.self_attn.v_proj.lora_A.weight",
                zeros(&[4, 576]),
            ),
            (
                "base_model.model.model.layers.3.self_attn.v_proj.lora_B.weight",
                zeros(&[320, 4]),
            ),
        ],
    );
    let err = reject(&mut registry, &wrong_shape);
    assert!(
        err.contains("layer 3 self_attn.v_proj")
            && err.contains("[320, 4]")
            && err.contains("[192, 4]"),
        "{err}"
    );

    // A rank that disagrees with `r`.
    let wrong_rank = tmp.path().join("wrong-rank");
    copy_adapter("qv", &wrong_rank);
    edit_config(&wrong_rank, |c| c["r"] = 8.into());
    let err = reject(&mut registry, &wrong_rank);
    // Which tensor is checked first depends on the file's order; the error must name the module,
    // the shape found and the rank it contradicts.
    assert!(
        err.contains("self_attn.")
            && (err.contains("lora_A has shape [4, 576]") || err.contains("lora_B has shape ["))
            && err.contains("r = 8"),
        "{err}"
    );

    // A module outside target_modules, and a layer the model doesn't have.
    let untargeted = tmp.path().join("untargeted");
    copy_adapter("qv", &untargeted);
    edit_config(&untargeted, |c| {
        c["target_modules"] = serde_json::json!(["q_proj"])
    });
    let err = reject(&mut registry, &untargeted);
    assert!(
        err.contains("v_proj") && err.contains("not in target_modules"),
        "{err}"
    );
    let deep = tmp.path().join("deep");
    copy_adapter("qv", &deep);
    write_weights(
        &deep,
        &[
            (
                "base_model.model.model.layers.30.self_attn.q_proj.lora_A.weight",
                zeros(&[4, 576]),
            ),
            (
                "base_model.model.model.layers.30.self_attn.q_proj.lora_B.weight",
                zeros(&[576, 4]),
            ),
        ],
    );
    let err = reject(&mut registry, &deep);
    assert!(err.contains("layer 30 does not exist"), "{err}");

    // Unsupported PEFT features are named, not silently mis-applied.
    let dora = tmp.path().join("dora");
    copy_adapter("qv", &dora);
    edit_config(&dora, |c| c["use_dora"] = true.into());
    assert!(reject(&mut registry, &dora).contains("DoRA"));
}
