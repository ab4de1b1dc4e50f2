//! Fuzz targets: each takes arbitrary bytes and must return without panicking, in bounded time,
//! whatever they hold. The same functions are run
//!
//! - coverage-guided by libFuzzer: `fuzz/fuzz_targets/<target>.rs` call them (cargo-fuzz,
//!   nightly; `hack/fuzz.sh [seconds]`), starting from the seed corpus in `fuzz/corpus/<target>/`;
//! - by `cargo test -p switchboard-fuzz` on stable: every corpus and regression file, then a
//!   seeded mutation run of `FUZZ_SECONDS` (default 3) per target (`tests/fuzz.rs`).
//!
//! An input that once crashed a target is kept in `fuzz/regressions/<target>/`, so the fix is
//! tested forever.

use std::collections::BTreeMap;

/// The seeded mutator of the bounded runs (`cargo test`), shared with other crates' tests of
/// input they decode (the runtime's request bodies).
pub mod mutation {
    /// Seconds of mutation per target: `FUZZ_SECONDS`, else `default`.
    pub fn fuzz_seconds(default: u64) -> u64 {
        std::env::var("FUZZ_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    }

    /// The message of a caught panic's payload.
    pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "panic".to_owned())
    }

    /// xorshift64*.
    #[derive(Debug)]
    pub struct Rng(pub u64);

    impl Rng {
        /// The next number (xorshift64*).
        pub fn next_u64(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        /// A number below `n` (0 when `n` is 0).
        pub fn below(&mut self, n: usize) -> usize {
            if n == 0 {
                0
            } else {
                (self.next_u64() % n as u64) as usize
            }
        }
    }

    /// Byte strings that sit near the formats the targets read.
    pub const INTERESTING: &[&[u8]] = &[
        b"\0",
        b"\xff",
        b"\xc3",
        b"\xe2\x80\xa8",
        b"{",
        b"}",
        b"[",
        b"]",
        b"\"",
        b"\\",
        b"<",
        b">",
        b"</",
        b"<!--",
        b"---\n",
        b"#",
        b"|",
        b"\n\n",
        b"\r\n",
        b"%PDF-",
        b"stream",
        b"endobj",
        b"1e999",
        b"-1",
        b"18446744073709551616",
        b"null",
        b"true",
        b"sb1.",
        b".",
        b"[1]",
        b"[99]",
        b"@example.com",
        b"4111 1111 1111 1111",
        b"DE89 3704 0044 0532 0130 00",
        b"sk-",
        b"&amp;",
        b"&#x0;",
        b"\xef\xbb\xbf",
        b"apiVersion: ",
        b"kind: ",
        b"  - ",
        b": ",
        b"*a",
        b"&a ",
        b"!!binary ",
    ];

    /// `seed` with one to five random edits: bit flips, byte changes, cuts, inserted
    /// [`INTERESTING`] words, splices from `other`, repeats, truncation.
    pub fn mutate(rng: &mut Rng, seed: &[u8], other: &[u8]) -> Vec<u8> {
        let mut data = seed.to_vec();
        for _ in 0..=rng.below(4) {
            let len = data.len();
            match rng.below(7) {
                0 if len > 0 => {
                    let i = rng.below(len);
                    data[i] ^= 1 << rng.below(8);
                }
                1 if len > 0 => {
                    let i = rng.below(len);
                    data[i] = rng.next_u64() as u8;
                }
                2 if len > 0 => {
                    let at = rng.below(len);
                    let end = (at + 1 + rng.below(64)).min(len);
                    data.drain(at..end);
                }
                3 => {
                    let at = rng.below(len + 1);
                    let word = INTERESTING[rng.below(INTERESTING.len())];
                    data.splice(at..at, word.iter().copied());
                }
                4 if !other.is_empty() => {
                    let at = rng.below(len + 1);
                    let from = rng.below(other.len());
                    let end = (from + 1 + rng.below(256)).min(other.len());
                    data.splice(at..at, other[from..end].iter().copied());
                }
                5 if len > 0 && len < 1 << 16 => {
                    let from = rng.below(len);
                    let end = (from + 1 + rng.below(32)).min(len);
                    let piece = data[from..end].to_vec();
                    for _ in 0..rng.below(16) {
                        data.splice(from..from, piece.iter().copied());
                    }
                }
                _ => data.truncate(rng.below(len + 1)),
            }
        }
        data
    }
}

use switchboard_index::chunk::chunk_document;
use switchboard_index::parse::{InputFile, parse_file, parse_slack_export};
use switchboard_index::{ChunkingSpec, SourceFormat};

/// A fuzz target: arbitrary bytes in, no panic out.
pub type Target = fn(&[u8]);

/// Every target, by name (the name of its `fuzz/fuzz_targets/` file and corpus folder).
pub const TARGETS: &[(&str, Target)] = &[
    ("documents", documents),
    ("slack_export", slack_export),
    ("manifests", manifests),
    ("interaction_token", interaction_token),
    ("redact", redact),
    ("model_output", model_output),
    ("gguf", gguf),
    ("tokenizer_input", tokenizer_input),
];

/// The format a `documents` input is parsed as: its first byte.
const FORMATS: [SourceFormat; 6] = [
    SourceFormat::Markdown,
    SourceFormat::Html,
    SourceFormat::ConfluenceHtml,
    SourceFormat::ZendeskTickets,
    SourceFormat::Pdf,
    SourceFormat::PlainText,
];

/// One file of any per-file source format (the first byte picks it; the rest is the file), then
/// the chunker over what it yields: ingestion reads files an author points a KnowledgeBase at.
pub fn documents(data: &[u8]) {
    let Some((&pick, bytes)) = data.split_first() else {
        return;
    };
    let format = FORMATS[usize::from(pick) % FORMATS.len()];
    let file = InputFile {
        rel_path: "fuzz/input".to_owned(),
        bytes: bytes.to_vec(),
        mtime: Some(1_800_000_000),
    };
    if let Ok(parsed) = parse_file(format, "fuzz", &file) {
        chunk(&parsed.documents);
    }
}

/// A Slack workspace export: the input is split into files at NUL bytes (the first names
/// `channels.json`, then `users.json`, then day files of channel `general`).
pub fn slack_export(data: &[u8]) {
    let mut files = Vec::new();
    for (i, part) in data.split(|b| *b == 0).take(16).enumerate() {
        let rel_path = match i {
            0 => "channels.json".to_owned(),
            1 => "users.json".to_owned(),
            n => format!("general/2026-01-{:02}.json", n - 1),
        };
        files.push(InputFile {
            rel_path,
            bytes: part.to_vec(),
            mtime: None,
        });
    }
    let tags = ["resolved".to_owned(), "white_check_mark".to_owned()];
    let (parsed, _errors) = parse_slack_export("slack", &files, &tags);
    chunk(&parsed.documents);
}

fn chunk(documents: &[switchboard_index::Document]) {
    let spec = ChunkingSpec::default();
    for doc in documents {
        let (chunks, _sections) = chunk_document(doc, "standard", &spec);
        // The chunker's contract: no empty chunk.
        assert!(chunks.iter().all(|c| !c.text.trim().is_empty()));
    }
}

/// A manifest file as `serve --manifests` and `switchboard-runtime validate` read it: YAML
/// documents, the API server's schema and CEL rules, the Rust rules.
pub fn manifests(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = switchboard_crds::manifest::resources_from_yaml(text);
}

/// An interaction token as feedback carries it (`sb1.<claims>.<mac>`), verified with fixed keys;
/// and a key file.
pub fn interaction_token(data: &[u8]) {
    let keys = switchboard_policy::TokenKeys::parse(
        "fuzz",
        b"0123456789abcdef0123456789abcdef0123456789abcdef\n",
    )
    .unwrap_or_else(|e| unreachable!("fixed keys: {e}"));
    if let Ok(token) = std::str::from_utf8(data) {
        let _ = keys.verify(token, 1_800_000_000);
    }
    let _ = switchboard_policy::TokenKeys::parse("fuzz", data);
}

/// The redaction every stored query and answer goes through: never panics, and what it leaves
/// is left alone by a second pass (no detector fires on its own placeholders).
pub fn redact(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let once = switchboard_policy::redact::redact(&text).into_owned();
    let twice = switchboard_policy::redact::redact(&once);
    assert_eq!(once, twice, "redaction is not idempotent");
}

/// A model's answer checked against its facts: citation parsing, sentence splitting, the
/// grounding check and the choice of the answer served (the model's output is outside input).
pub fn model_output(data: &[u8]) {
    use switchboard_policy::grounding::{
        Evidence, EvidenceFeatures, answer_sentences, check_output, choose, evidence_sentences,
        expects, strip_citations,
    };
    let text = String::from_utf8_lossy(data);
    let (answer, rest) = text.split_once('\u{0}').unwrap_or((&text, ""));
    let facts: Vec<String> = evidence_sentences(rest, &["Heading".to_owned()]);
    let fact_refs: Vec<&str> = facts.iter().map(String::as_str).collect();
    let _ = switchboard_policy::parse_citations(answer);
    let _ = switchboard_policy::check_citations(answer, facts.len());
    let _ = answer_sentences(answer);
    let _ = strip_citations(answer);
    let kind = expects(answer);
    let check = check_output(answer, &fact_refs, kind, &["[Heading]"]);
    let evidence: Vec<Evidence> = facts
        .iter()
        .enumerate()
        .map(|(i, f)| Evidence {
            passage: i,
            text: f.clone(),
            score: 0.9 - 0.01 * i as f64,
            features: EvidenceFeatures::default(),
        })
        .collect();
    let decision = choose(Some((answer, &check)), &evidence, 0.5);
    // Served citations are always facts that were given.
    let cited: BTreeMap<usize, ()> = decision.facts.iter().map(|f| (*f, ())).collect();
    assert!(cited.keys().all(|f| (1..=evidence.len()).contains(f)));
}

/// A GGUF model file (adapters and models come from manifests' artifact URIs): the header,
/// metadata and tensor table, then the tokenizer rebuilt from its metadata.
pub fn gguf(data: &[u8]) {
    use std::io::Write as _;
    // The reader takes a path: a per-thread scratch file.
    let path = std::env::temp_dir().join(format!(
        "switchboard-fuzz-{}-{:?}.gguf",
        std::process::id(),
        std::thread::current().id()
    ));
    let written = std::fs::File::create(&path).and_then(|mut f| f.write_all(data));
    if written.is_err() {
        return;
    }
    if let Ok(file) = switchboard_model::gguf::GgufFile::open(&path)
        && let Ok(tokenizer) = switchboard_model::tokenizer::LlmTokenizer::from_gguf(&file)
    {
        let _ = tokenizer.encode("How many days do I have to request a refund?", true);
    }
    let _ = std::fs::remove_file(&path);
}

/// Customers' text through the small model's tokenizer (SmolLM2's byte-level BPE, read from the
/// model file `hack/setup.sh models` installs) and its chat template: encoding and decoding never
/// fail, and a prompt holding the text has exactly the turns the template wrote (a customer cannot
/// open one by typing a control token). Decoding does not always give the text back: some bytes
/// (seen: a control character, the lead byte 0xF2) come out of this vocabulary as
/// `<|endoftext|>` (docs/security.md, Open).
pub fn tokenizer_input(data: &[u8]) {
    use std::sync::OnceLock;
    use switchboard_model::chat::{ChatMessage, ChatTemplate};
    use switchboard_model::tokenizer::LlmTokenizer;
    static LOADED: OnceLock<(LlmTokenizer, ChatTemplate, u32)> = OnceLock::new();
    let (tokenizer, template, im_start) = LOADED.get_or_init(|| {
        let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf");
        let tokenizer = LlmTokenizer::load(&model)
            .unwrap_or_else(|e| panic!("{}: {e} (run hack/setup.sh models)", model.display()));
        let template = ChatTemplate::new(None, None, None)
            .unwrap_or_else(|e| panic!("the ChatML template: {e}"));
        let ids = tokenizer
            .encode("<|im_start|>", false)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ids.len(), 1, "<|im_start|> is one token");
        (tokenizer, template, ids[0])
    });
    let text = String::from_utf8_lossy(data);
    // What a message's content becomes before the tokenizer sees it.
    let content = switchboard_model::chat::neutralise_control_tokens(&text);
    let ids = tokenizer
        .encode(&content, false)
        .unwrap_or_else(|e| panic!("encoding {content:?}: {e}"));
    tokenizer
        .decode(&ids, false)
        .unwrap_or_else(|e| panic!("decoding {ids:?}: {e}"));
    let prompt = template
        .render(
            &[
                ChatMessage::system("Be brief."),
                ChatMessage::user(text.as_ref()),
            ],
            true,
        )
        .unwrap_or_else(|e| panic!("rendering: {e}"));
    let turns = tokenizer
        .encode(&prompt, false)
        .unwrap_or_else(|e| panic!("encoding the prompt: {e}"))
        .iter()
        .filter(|id| *id == im_start)
        .count();
    assert_eq!(turns, 3, "system, user and the answer's turn: {prompt:?}");
}
