//! The fuzz targets on the stable toolchain, bounded: every seed and regression input, then
//! seeded mutations of them (bit flips, byte edits, cuts, splices, repeats, interesting bytes)
//! for `FUZZ_SECONDS` per target (default 3; `FUZZ_SEED` varies the run). A failure prints the
//! input, hex-encoded, and writes it to `target/fuzz-failures/<target>-<n>`: keep it in
//! `fuzz/regressions/<target>/` with the fix. Coverage-guided runs: `hack/fuzz.sh`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use switchboard_fuzz::TARGETS;
use switchboard_fuzz::mutation::{Rng, fuzz_seconds, mutate, panic_message};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The files of `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/`.
fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for folder in ["corpus", "regressions"] {
        let dir = root().join("fuzz").join(folder).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for path in paths.into_iter().filter(|p| p.is_file()) {
            let bytes = std::fs::read(&path).unwrap();
            out.push((path, bytes));
        }
    }
    out
}

fn run(target: &str, f: fn(&[u8]), input: &[u8], what: &str) {
    let started = Instant::now();
    let result = catch_unwind(AssertUnwindSafe(|| f(input)));
    let took = started.elapsed();
    let failure = match result {
        Err(e) => Some(panic_message(e.as_ref())),
        // A parser that takes seconds on a small input is a denial of service.
        Ok(()) if took > Duration::from_secs(2) && input.len() < 1 << 16 => {
            Some(format!("took {took:?} on {} bytes", input.len()))
        }
        Ok(()) => None,
    };
    if let Some(message) = failure {
        let dir = root().join("target/fuzz-failures");
        std::fs::create_dir_all(&dir).unwrap();
        let n = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
        let path = dir.join(format!("{target}-{n}"));
        std::fs::write(&path, input).unwrap();
        let hex: String = input.iter().take(512).map(|b| format!("{b:02x}")).collect();
        panic!(
            "fuzz target {target} failed on {what} ({message}); input written to {} (first bytes: {hex})",
            path.display()
        );
    }
}

#[test]
fn every_target_has_a_seed_corpus_and_a_cargo_fuzz_target() {
    for (target, _) in TARGETS {
        assert!(
            inputs(target).len() >= 3,
            "fuzz/corpus/{target}/ needs seed inputs"
        );
        let source = root()
            .join("fuzz/fuzz_targets")
            .join(format!("{target}.rs"));
        let text = std::fs::read_to_string(&source)
            .unwrap_or_else(|e| panic!("{}: {e}", source.display()));
        assert!(
            text.contains(&format!("switchboard_fuzz::{target}(")),
            "{} must call switchboard_fuzz::{target}",
            source.display()
        );
        let manifest = std::fs::read_to_string(root().join("fuzz/Cargo.toml")).unwrap();
        assert!(
            manifest.contains(&format!("name = \"{target}\"")),
            "fuzz/Cargo.toml lacks [[bin]] {target}"
        );
    }
}

#[test]
fn targets_survive_their_corpus_and_bounded_mutation() {
    let seconds = fuzz_seconds(3);
    let seed: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_f00d);
    // Panics a target catches itself (pdf-extract's, contained in the PDF parser) would print
    // thousands of messages: the hook is silenced, and an uncaught one still fails the run.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let outcome = catch_unwind(AssertUnwindSafe(|| run_all(seconds, seed)));
    std::panic::set_hook(hook);
    if let Err(e) = outcome {
        panic!("{}", panic_message(e.as_ref()));
    }
}

fn run_all(seconds: u64, seed: u64) {
    for (target, f) in TARGETS {
        let corpus = inputs(target);
        for (path, bytes) in &corpus {
            run(target, *f, bytes, &path.display().to_string());
        }
        let mut rng = Rng(seed ^ (target.len() as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let mut runs = 0u64;
        while Instant::now() < deadline {
            let (_, a) = &corpus[rng.below(corpus.len())];
            let (_, b) = &corpus[rng.below(corpus.len())];
            let input = mutate(&mut rng, a, b);
            run(target, *f, &input, &format!("mutation {runs}"));
            runs += 1;
        }
        println!(
            "{target}: {} corpus inputs, {runs} mutations in {seconds} s",
            corpus.len()
        );
    }
}
