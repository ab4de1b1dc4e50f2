//! Odd input never panics: arbitrary JSON, and example manifests with random parts replaced, are
//! deserialised into every type and validated (Rust and CEL) for a bounded time.
//!
//! A small seeded generator stands in for a fuzzing engine so the test is deterministic per seed
//! and needs no extra toolchain; set `FUZZ_SECONDS` to run longer and `FUZZ_SEED` to vary it.

// Helpers outside #[test] fns panic on broken setup too (clippy.toml only covers test fns).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use switchboard_crds::Validate;

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Strings that sit near the formats the API uses.
const STRINGS: &[&str] = &[
    "",
    " ",
    "5%",
    "0.5%",
    "100%",
    "101%",
    "-5%",
    "%",
    "5",
    "1e3%",
    "30s",
    "1h30m",
    "720h",
    "1d",
    "0s",
    "h",
    "99999999999h",
    "1.5.0",
    "1.2.3-rc.1",
    "v1",
    "sha256:",
    "sha256:zz",
    "https://x",
    "file:///",
    "pvc://",
    "/abs",
    "rel",
    "Markdown",
    "Weighted",
    "Never",
    "User",
    "escalationRate",
    "Increase",
    "\u{0}",
    "é",
    "🙂",
    "a\nb",
    "{}",
    "[]",
    "null",
    "true",
];

const KEYS: &[&str] = &[
    "spec",
    "status",
    "name",
    "weight",
    "duration",
    "sources",
    "variants",
    "steps",
    "share",
    "version",
    "lora",
    "rank",
    "inline",
    "http",
    "volume",
    "configMap",
    "path",
    "url",
    "sha256",
    "metric",
    "maxRelativeIncrease",
    "local",
    "endpoint",
    "conditions",
    "type",
    "apiVersion",
    "kind",
];

fn random_value(rng: &mut Rng, depth: u32) -> Value {
    let leaf = depth == 0 || rng.below(3) == 0;
    match if leaf { rng.below(6) } else { 6 + rng.below(2) } {
        0 => Value::Null,
        1 => Value::Bool(rng.below(2) == 0),
        2 => json!(rng.next() as i64 >> rng.below(63)),
        3 => json!(f64::from_bits(rng.next()))
            .as_f64()
            .map_or(json!(0.5), |f| json!(f)),
        4 => json!(rng.pick(STRINGS)),
        5 => {
            let len = rng.below(12);
            Value::String(
                (0..len)
                    .map(|_| char::from(b' ' + rng.below(95) as u8))
                    .collect(),
            )
        }
        6 => Value::Array(
            (0..rng.below(4))
                .map(|_| random_value(rng, depth - 1))
                .collect(),
        ),
        _ => {
            let mut map = Map::new();
            for _ in 0..rng.below(5) {
                map.insert((*rng.pick(KEYS)).to_owned(), random_value(rng, depth - 1));
            }
            Value::Object(map)
        }
    }
}

/// Replaces a random node of `doc` with a random value (or removes a key).
fn mutate(rng: &mut Rng, node: &mut Value) {
    let descend = rng.below(4) != 0;
    match node {
        Value::Object(map) if !map.is_empty() && descend => {
            let key = map
                .keys()
                .nth(rng.below(map.len()))
                .cloned()
                .unwrap_or_default();
            if rng.below(8) == 0 {
                map.remove(&key);
            } else if let Some(child) = map.get_mut(&key) {
                mutate(rng, child);
            }
        }
        Value::Array(items) if !items.is_empty() && descend => {
            let i = rng.below(items.len());
            mutate(rng, &mut items[i]);
        }
        _ => *node = random_value(rng, 3),
    }
}

/// Deserialises `doc` into every type and validates whatever deserialises. Must not panic.
fn exercise(doc: &Value) {
    macro_rules! try_kind {
        ($kind:ty, $spec:ty) => {
            if let Ok(resource) = serde_json::from_value::<$kind>(doc.clone()) {
                let _ = resource.spec.validate();
                let _ = serde_json::to_value(&resource).unwrap();
            }
            if let Ok(spec) = serde_json::from_value::<$spec>(doc.clone()) {
                let _ = spec.validate();
            }
        };
    }
    try_kind!(
        switchboard_crds::KnowledgeBase,
        switchboard_crds::KnowledgeBaseSpec
    );
    try_kind!(
        switchboard_crds::AdapterPatch,
        switchboard_crds::AdapterPatchSpec
    );
    try_kind!(switchboard_crds::Router, switchboard_crds::RouterSpec);
    try_kind!(
        switchboard_crds::Experiment,
        switchboard_crds::ExperimentSpec
    );
    let _ = serde_json::from_value::<switchboard_crds::KnowledgeBaseStatus>(doc.clone());
    let _ = serde_json::from_value::<switchboard_crds::AdapterPatchStatus>(doc.clone());
    let _ = serde_json::from_value::<switchboard_crds::RouterStatus>(doc.clone());
    let _ = serde_json::from_value::<switchboard_crds::ExperimentStatus>(doc.clone());
    let _ = switchboard_crds::resource_from_value(doc.clone());
    if let Ok(yaml) = serde_yaml::to_string(doc) {
        let _ = switchboard_crds::resources_from_yaml(&yaml);
        // Truncated documents: broken YAML must be an error, not a panic.
        let cut = yaml
            .char_indices()
            .nth(yaml.chars().count() / 2)
            .map_or(0, |(i, _)| i);
        let _ = switchboard_crds::resources_from_yaml(&yaml[..cut]);
    }
}

fn budget() -> Duration {
    let secs = std::env::var("FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    Duration::from_secs_f64(secs)
}

fn seed() -> u64 {
    std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_CAFE_F00D_D00D)
}

#[test]
fn arbitrary_json_never_panics() {
    let mut rng = Rng(seed());
    let start = Instant::now();
    let mut runs = 0u64;
    while start.elapsed() < budget() || runs < 1_000 {
        let value = random_value(&mut rng, 5);
        exercise(&value);
        // Shape it like a resource half of the time so the derive reaches the spec.
        let kind = rng.pick(&["KnowledgeBase", "AdapterPatch", "Router", "Experiment"]);
        exercise(
            &json!({"apiVersion": "switchboard.dev/v1alpha1", "kind": kind, "metadata": {"name": "x"}, "spec": value}),
        );
        runs += 1;
    }
    eprintln!("arbitrary JSON: {runs} inputs in {:?}", start.elapsed());
}

#[test]
fn mutated_examples_never_panic_in_rust_or_cel() {
    let docs = support::example_documents();
    let mut rng = Rng(seed() ^ 0xA5A5);
    let start = Instant::now();
    let mut runs = 0u64;
    let mut refused = 0u64;
    while start.elapsed() < budget() || runs < 200 {
        let (_, original) = rng.pick(&docs);
        let mut doc = original.clone();
        for _ in 0..=rng.below(3) {
            mutate(&mut rng, &mut doc);
        }
        exercise(&doc);
        if doc
            .get("kind")
            .and_then(Value::as_str)
            .is_some_and(|k| ["KnowledgeBase", "AdapterPatch", "Router", "Experiment"].contains(&k))
            && doc.get("apiVersion") == original.get("apiVersion")
        {
            // CEL evaluation of odd (even schema-invalid) objects must not panic either.
            if !support::admit(&doc, Some(original)).is_empty() {
                refused += 1;
            }
        }
        runs += 1;
    }
    eprintln!(
        "mutated examples: {runs} inputs ({refused} refused) in {:?}",
        start.elapsed()
    );
    assert!(refused > 0, "mutations should produce refusals");
}
