//! The Rust parsers and the CEL rules in the schema accept exactly the same percentage, duration
//! and digest strings, so nothing the API server admits fails to deserialise in the operator.

// Helpers outside #[test] fns panic on broken setup too (clippy.toml only covers test fns).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use kube::core::cel::Validator;
use serde_json::{Value, json};
use switchboard_crds::{Digest, GoDuration, Percent};

fn schema_of<T: schemars::JsonSchema>() -> Value {
    let generator = schemars::generate::SchemaSettings::openapi3().into_generator();
    serde_json::to_value(generator.into_root_schema_for::<T>()).unwrap()
}

fn cel_accepts(schema: &Value, s: &str) -> bool {
    Validator::new().validate(schema, &json!(s), None).is_ok()
}

/// Every string of length <= 4 over an alphabet around the formats, plus longer samples.
fn candidates(alphabet: &[&str]) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut frontier = vec![String::new()];
    for _ in 0..4 {
        let mut next = Vec::new();
        for prefix in &frontier {
            for piece in alphabet {
                next.push(format!("{prefix}{piece}"));
            }
        }
        out.extend(next.iter().cloned());
        frontier = next;
    }
    out
}

#[test]
fn percent_parser_agrees_with_cel() {
    let schema = schema_of::<Percent>();
    let mut inputs = candidates(&["0", "5", "1", ".", "%", "-"]);
    inputs.extend(
        [
            "100%",
            "100.0%",
            "100.0001%",
            "99.9999%",
            "99.99999%",
            "1000%",
            "0.0001%",
        ]
        .map(String::from),
    );
    let mut accepted = 0;
    for s in &inputs {
        let rust = s.parse::<Percent>().is_ok();
        assert_eq!(rust, cel_accepts(&schema, s), "Percent {s:?}: Rust {rust}");
        accepted += usize::from(rust);
    }
    assert!(
        accepted > 20,
        "the alphabet should produce valid percentages too ({accepted})"
    );
}

#[test]
fn duration_parser_agrees_with_cel() {
    let schema = schema_of::<GoDuration>();
    let mut inputs = candidates(&["1", "0", ".", "h", "m", "s", "ms", "d"]);
    inputs.extend(
        [
            "720h",
            "1h30m",
            "1.5h",
            "999999h",
            "1000000h",
            "1h1h1h1h1h1h",
            "1h1h1h1h1h1h1h",
            "1us",
            "5ns",
            "1.0000000001s",
        ]
        .map(String::from),
    );
    for s in &inputs {
        let rust = s.parse::<GoDuration>().is_ok();
        assert_eq!(
            rust,
            cel_accepts(&schema, s),
            "GoDuration {s:?}: Rust {rust}"
        );
    }
}

#[test]
fn digest_parser_agrees_with_cel() {
    let schema = schema_of::<Digest>();
    let hex = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    let inputs = [
        format!("sha256:{hex}"),
        format!("sha256:{}", hex.to_uppercase()),
        format!("sha256:{}", &hex[1..]),
        format!("sha256:{hex}0"),
        format!("sha512:{hex}"),
        hex.to_owned(),
        format!("sha256:{}g", &hex[1..]),
        String::new(),
    ];
    for s in &inputs {
        let rust = s.parse::<Digest>().is_ok();
        assert_eq!(rust, cel_accepts(&schema, s), "Digest {s:?}: Rust {rust}");
    }
    assert!(inputs[0].parse::<Digest>().unwrap().matches_hex(hex));
}
