//! Bounded fuzzing of the HTTP request bodies (issue 24 point 9): mutated `POST /v1/answer`,
//! `/v1/retrieve`, `/v1/feedback` and `/v1/chat/completions` bodies go through the same decoding
//! and validation as the handlers (`serde_json` into the request types, then the query, id,
//! outcome and chat checks) and must be refused or accepted, never panic. The types live in this
//! binary, out of reach of the cargo-fuzz targets (`tests/fuzz`); the seeded mutator is theirs.
//! `FUZZ_SECONDS` (default 2) per body kind.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use switchboard_fuzz::mutation::{Rng, mutate};

use crate::answer::{AnswerRequest, FeedbackRequest};
use crate::openai::ChatRequest;
use crate::service::RetrieveRequest;

fn answer(body: &[u8]) {
    if let Ok(r) = serde_json::from_slice::<AnswerRequest>(body) {
        let _ = crate::service::validate_query(&r.query);
        let _ = crate::limits::validate_id("userId", r.user_id.as_deref());
        let _ = crate::limits::validate_id("accountId", r.account_id.as_deref());
        let _ = crate::limits::validate_id("conversationId", r.conversation_id.as_deref());
        let _ = crate::limits::validate_attributes(&r.attributes);
    }
}

fn retrieve(body: &[u8]) {
    if let Ok(r) = serde_json::from_slice::<RetrieveRequest>(body) {
        let _ = crate::service::validate_query(&r.query);
    }
}

fn feedback(body: &[u8]) {
    if let Ok(r) = serde_json::from_slice::<FeedbackRequest>(body) {
        let _ = switchboard_policy::Outcome::parse(&r.outcome, r.csat);
        let keys = switchboard_policy::TokenKeys::parse("fuzz", &[b'k'; 48])
            .unwrap_or_else(|e| unreachable!("{e}"));
        let _ = keys.verify(&r.token, 1_800_000_000);
    }
}

fn chat(body: &[u8]) {
    if let Ok(r) = serde_json::from_slice::<ChatRequest>(body) {
        let _ = crate::openai::validate(&r, 256);
    }
}

#[test]
fn request_bodies_are_refused_or_accepted_never_a_panic() {
    let seconds = switchboard_fuzz::mutation::fuzz_seconds(2);
    let kinds: [(&str, switchboard_fuzz::Target, &[&str]); 4] = [
        (
            "answer",
            answer,
            &[
                r#"{"query": "How many days do I have to request a refund?", "unit": "u-1"}"#,
                r#"{"query": "refund", "conversationId": "c-9", "forceModel": "large", "stream": true}"#,
                r#"{"query": "refund", "userId": "u-2", "accountId": "a-1", "attributes": {"channel": "chat", "plan": "pro"}}"#,
            ],
        ),
        (
            "retrieve",
            retrieve,
            &[r#"{"query": "cancel my subscription", "topK": 3, "stages": true}"#],
        ),
        (
            "feedback",
            feedback,
            &[
                r#"{"token": "sb1.eyJpIjoiYSJ9.AAAA", "outcome": "csat", "csat": 4}"#,
                r#"{"token": "", "outcome": "escalated"}"#,
            ],
        ),
        (
            "chat",
            chat,
            &[
                r#"{"model": "small", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}], "max_tokens": 64, "temperature": 0.2, "stream": false}"#,
            ],
        ),
    ];
    let mut rng = Rng(0x00b0_d1e5);
    for (kind, f, seeds) in kinds {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let mut runs = 0u64;
        while Instant::now() < deadline {
            let a = seeds[rng.below(seeds.len())].as_bytes();
            let b = seeds[rng.below(seeds.len())].as_bytes();
            let body = mutate(&mut rng, a, b);
            let outcome = catch_unwind(AssertUnwindSafe(|| f(&body)));
            assert!(
                outcome.is_ok(),
                "{kind} body panicked: {:?}",
                String::from_utf8_lossy(&body)
            );
            runs += 1;
        }
        assert!(runs > 0);
    }
}
