//! Bad input fails before any training, with a message that names the problem: the file and
//! line, the option, the location. Data, settings and the output location are checked before the
//! base model is loaded, so these cost milliseconds, not a model load.

use crate::support;

use std::path::{Path, PathBuf};

/// A trainer invocation: the real model, the SFT test data and an output in a fresh directory,
/// each replaceable.
struct Run {
    work: tempfile::TempDir,
    method: &'static str,
    model: PathBuf,
    data: PathBuf,
    output: PathBuf,
}

impl Run {
    fn new() -> Self {
        let work = tempfile::tempdir().unwrap();
        let output = work.path().join("out");
        Self {
            work,
            method: "sft",
            model: support::model(),
            data: support::data("support_sft.jsonl"),
            output,
        }
    }

    fn dir(&self) -> &Path {
        self.work.path()
    }

    /// Runs it with `extra` options; returns the error message, panics if it succeeded.
    fn fails(&self, extra: &[&str]) -> String {
        let mut args = vec![
            self.method,
            "--model",
            self.model.to_str().unwrap(),
            "--data",
            self.data.to_str().unwrap(),
            "--output",
            self.output.to_str().unwrap(),
            "--threads",
            "1",
        ];
        args.extend_from_slice(extra);
        let out = support::train(&args, &[]);
        let err = support::stderr(&out);
        assert!(!out.status.success(), "succeeded: {err}");
        assert!(
            err.starts_with("switchboard-train: ") || err.contains("error:"),
            "{err}"
        );
        err
    }
}

#[test]
fn a_missing_data_file_is_named() {
    let mut run = Run::new();
    run.data = run.dir().join("no-such-data.jsonl");
    let err = run.fails(&[]);
    assert!(err.contains(run.data.to_str().unwrap()), "{err}");
    assert!(!run.output.exists());
}

#[test]
fn a_missing_model_is_named() {
    let mut run = Run::new();
    run.model = run.dir().join("SmolLM2-missing.gguf");
    let err = run.fails(&[]);
    assert!(err.contains(run.model.to_str().unwrap()), "{err}");
}

#[test]
fn a_line_that_is_no_known_row_names_its_file_and_line() {
    let mut run = Run::new();
    run.data = run.dir().join("tickets.jsonl");
    std::fs::write(
        &run.data,
        concat!(
            r#"{"prompt": "How much is Solo?", "completion": "6 euros per month."}"#,
            "\n\n",
            r#"{"question": "How much is Team?", "reply": "11 euros per seat."}"#,
            "\n"
        ),
    )
    .unwrap();
    let err = run.fails(&[]);
    assert!(err.contains("tickets.jsonl line 3"), "{err}");

    // Malformed JSON too.
    std::fs::write(&run.data, "{\"prompt\": \"x\", \n").unwrap();
    let err = run.fails(&[]);
    assert!(err.contains("tickets.jsonl line 1"), "{err}");

    // DPO refuses SFT rows (no rejected answer), naming the first one.
    run.method = "dpo";
    run.data = support::data("support_sft.jsonl");
    let err = run.fails(&[]);
    assert!(err.contains("support_sft.jsonl line 1"), "{err}");
}

#[test]
fn settings_out_of_range_name_the_option() {
    let mut run = Run::new();
    let err = run.fails(&["--rank", "65"]);
    assert!(err.contains("--rank") && err.contains("65"), "{err}");
    let err = run.fails(&["--lr", "0"]);
    assert!(err.contains("--lr"), "{err}");
    let err = run.fails(&["--schedule", "sawtooth"]);
    assert!(err.contains("sawtooth"), "{err}");
    // {version} needs a version to put there.
    run.output = run.dir().join("adapters/{version}");
    let err = run.fails(&[]);
    assert!(err.contains("{version}"), "{err}");
}

#[test]
fn an_existing_artifact_is_not_overwritten_without_overwrite() {
    let mut run = Run::new();
    run.output = run.dir().join("pricing/1.4.0");
    let weights = run.output.join("adapter_model.safetensors");
    std::fs::create_dir_all(&run.output).unwrap();
    std::fs::write(&weights, b"the 1.4.0 in production").unwrap();
    let err = run.fails(&[]);
    assert!(
        err.contains("already holds files") && err.contains("--overwrite"),
        "{err}"
    );
    assert_eq!(std::fs::read(&weights).unwrap(), b"the 1.4.0 in production");

    // A registry is not a place to write to.
    run.output = PathBuf::from("oci://registry.example.com/adapters/pricing:1.4.0");
    let err = run.fails(&[]);
    assert!(
        err.contains("oci://") && err.contains("--artifact-uri"),
        "{err}"
    );
}
