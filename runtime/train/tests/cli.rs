//! Bad input fails before any training, with a message that names the problem: the file and
//! line, the option, the location. Data, settings and the output location are checked before the
//! base model is loaded, so these cost milliseconds, not a model load.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod support;

use std::path::Path;

/// Runs `switchboard-train <method> --model <model> --data <data> --output <output> <extra>`
/// and returns its error message; panics if it succeeded.
fn fails(method: &str, model: &Path, data: &Path, output: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        method,
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
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

#[test]
fn a_missing_data_file_is_named() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("no-such-data.jsonl");
    let err = fails(
        "sft",
        &support::model(),
        &data,
        &work.path().join("out"),
        &[],
    );
    assert!(err.contains(data.to_str().unwrap()), "{err}");
    assert!(!work.path().join("out").exists());
}

#[test]
fn a_missing_model_is_named() {
    let work = tempfile::tempdir().unwrap();
    let model = work.path().join("SmolLM2-missing.gguf");
    let err = fails(
        "sft",
        &model,
        &support::data("support_sft.jsonl"),
        &work.path().join("out"),
        &[],
    );
    assert!(err.contains("SmolLM2-missing.gguf"), "{err}");
}

#[test]
fn a_line_that_is_no_known_row_names_its_file_and_line() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("tickets.jsonl");
    std::fs::write(
        &data,
        concat!(
            r#"{"prompt": "How much is Solo?", "completion": "6 euros per month."}"#,
            "\n\n",
            r#"{"question": "How much is Team?", "reply": "11 euros per seat."}"#,
            "\n"
        ),
    )
    .unwrap();
    let err = fails(
        "sft",
        &support::model(),
        &data,
        &work.path().join("out"),
        &[],
    );
    assert!(err.contains("tickets.jsonl line 3"), "{err}");

    // DPO refuses SFT rows (no rejected answer), naming the first one.
    let err = fails(
        "dpo",
        &support::model(),
        &support::data("support_sft.jsonl"),
        &work.path().join("out"),
        &[],
    );
    assert!(err.contains("support_sft.jsonl line 1"), "{err}");

    // Malformed JSON too.
    std::fs::write(&data, "{\"prompt\": \"x\", \n").unwrap();
    let err = fails(
        "sft",
        &support::model(),
        &data,
        &work.path().join("out"),
        &[],
    );
    assert!(err.contains("tickets.jsonl line 1"), "{err}");
}

#[test]
fn settings_out_of_range_name_the_option() {
    let work = tempfile::tempdir().unwrap();
    let data = support::data("support_sft.jsonl");
    let out = work.path().join("out");
    let err = fails("sft", &support::model(), &data, &out, &["--rank", "65"]);
    assert!(err.contains("--rank") && err.contains("65"), "{err}");
    let err = fails("sft", &support::model(), &data, &out, &["--lr", "0"]);
    assert!(err.contains("--lr"), "{err}");
    let err = fails(
        "sft",
        &support::model(),
        &data,
        &out,
        &["--schedule", "sawtooth"],
    );
    assert!(err.contains("sawtooth"), "{err}");
    // {version} needs a version to put there.
    let templated = work.path().join("adapters/{version}");
    let err = fails("sft", &support::model(), &data, &templated, &[]);
    assert!(err.contains("{version}"), "{err}");
}

#[test]
fn an_existing_artifact_is_not_overwritten_without_overwrite() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("pricing/1.4.0");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join("adapter_model.safetensors"),
        b"the 1.4.0 in production",
    )
    .unwrap();
    let err = fails(
        "sft",
        &support::model(),
        &support::data("support_sft.jsonl"),
        &out,
        &[],
    );
    assert!(
        err.contains("already holds files") && err.contains("--overwrite"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(out.join("adapter_model.safetensors")).unwrap(),
        b"the 1.4.0 in production"
    );
    // A registry is not a place to write to.
    let err = fails(
        "sft",
        &support::model(),
        &support::data("support_sft.jsonl"),
        Path::new("oci://registry.example.com/adapters/pricing:1.4.0"),
        &[],
    );
    assert!(
        err.contains("oci://") && err.contains("--artifact-uri"),
        "{err}"
    );
}
