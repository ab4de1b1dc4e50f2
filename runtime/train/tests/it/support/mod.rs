//! What the trainer's tests share: the repository's paths, the real base model, the test data
//! and a way to run the `switchboard-train` binary.
#![allow(dead_code, clippy::unwrap_used)] // each test file uses a part

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// SmolLM2-135M-Instruct (the GGUF `hack/setup.sh models` installs; trained with dense f32
/// weights dequantised from it).
pub fn model() -> PathBuf {
    let path = root().join(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.exists(),
        "run hack/setup.sh models: {} is missing",
        path.display()
    );
    path
}

/// A file of `runtime/train/tests/data`.
pub fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// `examples/<name>`.
pub fn example(name: &str) -> PathBuf {
    root().join("examples").join(name)
}

/// The trainer binary with CPU-cheap defaults (2 libtorch threads, CPU) and quiet logs.
pub fn train_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard-train"));
    cmd.env("RUST_LOG", "warn")
        .env_remove("SWITCHBOARD_TRAIN_MODEL")
        .env_remove("KUBECONFIG");
    cmd
}

/// Runs the trainer with `args`; returns its output.
pub fn train(args: &[&str], envs: &[(&str, &Path)]) -> Output {
    let mut cmd = train_command();
    cmd.args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// The trainer's standard error, as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The first AdapterPatch document of `examples/adapterpatch.yaml`.
pub fn example_adapter_patch() -> serde_json::Value {
    let text = std::fs::read_to_string(example("adapterpatch.yaml")).unwrap();
    serde_yaml::from_str(&text).unwrap()
}
