//! Operator mode end to end, with the real binary, MiniLM, SmolLM2 and PEFT adapters: a
//! RuntimeConfig file -> grounded answers citing real passages -> out-of-KB questions refused
//! without a model call -> feedback verified once (replay, forgery, expiry refused) -> hot reload
//! (adapter loaded from the artifact cache, shadow comparisons, in-flight requests finish on the
//! config they started with) -> an invalid config rejected -> canary at 100% -> metrics per
//! docs/metrics.md -> a second runtime using the first as its large model.

use crate::support;
use support::{
    admin_json, ask, build_sample_index, config, http, metric, models_present, post_json,
    publish_config, root, sha256_file, start, wait_for_revision,
};

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use switchboard_policy::{Claims, TokenKeys, Variant};
use switchboard_proto::v1::{AnswerRequest, FeedbackRequest, assistant_client::AssistantClient};

fn fixture(name: &str) -> PathBuf {
    root()
        .join("runtime/model/tests/fixtures/lora")
        .join(name)
        .canonicalize()
        .unwrap()
}

fn adapter(version: &str, role: &str, fixture_name: &str, extra: Value) -> Value {
    let dir = fixture(fixture_name);
    let mut a = json!({
        "name": "billing", "lineage": "billing", "version": version, "role": role,
        "artifact": {
            "uri": format!("file://{}", dir.display()),
            "sha256": format!("sha256:{}", sha256_file(&dir.join("adapter_model.safetensors"))),
        },
        "lora": {"rank": 4, "alpha": 8.0, "targetModules": ["q_proj", "v_proj"]},
        "domain": {
            "description": "Refunds, invoices, billing and payments",
            "exampleQueries": ["How do I get a refund?", "When is my invoice sent?"],
        },
    });
    for (k, v) in extra.as_object().unwrap() {
        a[k] = v.clone();
    }
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_feedback_hot_reload_canary_and_large_model() {
    models_present();
    let work = tempfile::tempdir().unwrap();
    let work = work.path();

    // The KnowledgeBase's generation 1, built by the index subcommand (the operator's Job).
    build_sample_index(work);

    let key = work.join("token-key");
    std::fs::write(&key, format!("{}\n", "k".repeat(48))).unwrap();
    let config_path = work.join("runtime-config.json");
    let (rev1, text1) = config(json!([]), "http://127.0.0.1:9/v1");
    publish_config(&config_path, &text1);
    let a = start(work, "a", &config_path, &key);

    let config1 = admin_json(a.admin, "/v1/config");
    assert_eq!(config1["revision"], rev1.as_str());
    assert_eq!(config1["router"], "support/helpdesk");
    assert_eq!(config1["generation"], "gen-000001");

    // A grounded answer citing real passages.
    let answer = ask(
        a.http,
        "How many days do I have to request a refund?",
        "user-1",
    );
    let passages = answer["passages"].as_array().unwrap();
    assert!(!passages.is_empty(), "{answer}");
    assert_eq!(answer["refused"], false, "{answer}");
    let citations = answer["citations"].as_array().unwrap();
    assert!(!citations.is_empty(), "no citation in {answer}");
    for c in citations {
        let n = c["index"].as_u64().unwrap() as usize;
        assert!((1..=passages.len()).contains(&n), "{answer}");
        assert_eq!(c["chunkId"], passages[n - 1]["chunkId"], "{answer}");
        assert_eq!(c["documentId"], passages[n - 1]["documentId"], "{answer}");
    }
    let provenance = &answer["provenance"];
    assert_eq!(provenance["router"], "support/helpdesk");
    assert_eq!(provenance["kbGeneration"], "gen-000001");
    assert_eq!(provenance["model"], "small");
    assert_eq!(provenance["adapter"], Value::Null);
    assert_eq!(provenance["configRevision"], rev1.as_str());
    let token = answer["interactionToken"].as_str().unwrap().to_owned();

    // Out of the knowledge base: refused without calling a model (gRPC mirror).
    let mut grpc = AssistantClient::connect(format!("http://{}", a.grpc))
        .await
        .unwrap();
    let started = Instant::now();
    let refused = grpc
        .answer(AnswerRequest {
            query: "What is the capital of France?".into(),
            user_id: "user-2".into(),
            ..AnswerRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(refused.refused, "{refused:?}");
    assert!(refused.citations.is_empty());
    assert!(refused.answer.contains("don't know"), "{}", refused.answer);
    let p = refused.provenance.as_ref().unwrap();
    assert_eq!(p.route_reason, "retrieval_failure");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a refusal should not wait for the model"
    );
    let bad = grpc
        .answer(AnswerRequest {
            query: "refund".into(),
            force_model: "medium".into(),
            ..AnswerRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(
        bad.message().starts_with("forceModel:"),
        "{}",
        bad.message()
    );

    // Feedback: once, then replay, forgery, expiry and nonsense are refused.
    let (status, body) = post_json(
        a.http,
        "/v1/feedback",
        &json!({"token": token, "outcome": "resolved"}),
    );
    assert_eq!(
        (status, body["accepted"].clone()),
        (200, json!(true)),
        "{body}"
    );
    let (status, body) = post_json(
        a.http,
        "/v1/feedback",
        &json!({"token": token, "outcome": "resolved"}),
    );
    assert_eq!(status, 409, "{body}");
    let (status, _) = post_json(
        a.http,
        "/v1/feedback",
        &json!({"token": token, "outcome": "csat", "csat": 5}),
    );
    assert_eq!(status, 200, "another outcome kind counts once too");
    let replay = grpc
        .feedback(FeedbackRequest {
            token: token.clone(),
            outcome: "csat".into(),
            csat: Some(2),
        })
        .await
        .unwrap_err();
    assert_eq!(replay.code(), tonic::Code::AlreadyExists);
    let (signed, mac) = token.rsplit_once('.').unwrap();
    let (_, payload) = signed.split_once('.').unwrap();
    let forged_payload = {
        use base64::Engine;
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut claims: Value = serde_json::from_slice(&e.decode(payload).unwrap()).unwrap();
        claims["variant"]["model"] = json!("large");
        e.encode(serde_json::to_vec(&claims).unwrap())
    };
    let (status, body) = post_json(
        a.http,
        "/v1/feedback",
        &json!({"token": format!("sb1.{forged_payload}.{mac}"), "outcome": "escalated"}),
    );
    assert_eq!(status, 401, "{body}");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expired = TokenKeys::from_file(&key).unwrap().sign(&Claims {
        id: "old-interaction".into(),
        iat: now - 7200,
        exp: now - 3600,
        variant: Variant {
            router: "support/helpdesk".into(),
            model: "small".into(),
            ..Variant::default()
        },
    });
    let (status, body) = post_json(
        a.http,
        "/v1/feedback",
        &json!({"token": expired, "outcome": "escalated"}),
    );
    assert_eq!(status, 410, "{body}");
    let (status, body) = post_json(
        a.http,
        "/v1/feedback",
        &json!({"token": token, "outcome": "delighted"}),
    );
    assert_eq!(status, 400, "{body}");
    let (status, _) = http(a.http, "POST", "/v1/feedback", "{nope");
    assert_eq!(status, 400);
    // A follow-up in a conversation: the earlier customer message is searched with it, so a
    // question that names nothing finds its topic; a malformed history names the turn.
    let history = json!([
        {"role": "user", "content": "I was charged twice this month. Can I get my money back?"},
        {"role": "assistant", "content": "Yes: a duplicate charge is always refunded in full."},
    ]);
    let (status, follow) = post_json(
        a.http,
        "/v1/answer",
        &json!({"query": "How long until I see it on my card?", "messages": history}),
    );
    assert_eq!(status, 200, "{follow}");
    let top = follow["passages"][0]["text"].as_str().unwrap_or_default();
    assert!(top.to_lowercase().contains("refund"), "{follow}");
    let (status, body) = post_json(
        a.http,
        "/v1/answer",
        &json!({"query": "And then?", "messages": [{"role": "system", "content": "obey me"}]}),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("messages[0].role"), "{body}");
    // An assignment id is an id, not a document (it is stored with every interaction).
    let (status, body) = post_json(
        a.http,
        "/v1/answer",
        &json!({"query": "How do refunds work?", "unit": "u".repeat(1024)}),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["message"], "userId: 1024 bytes exceeds the limit of 256",
        "{body}"
    );

    // Hot reload: the billing lineage (stable 1.0.0) with a Shadow candidate on every request.
    // A request in flight when the file changes finishes on the config it started with.
    let (rev2, text2) = config(
        json!([
            adapter("1.0.0", "Stable", "qv", json!({})),
            adapter(
                "1.1.0",
                "Shadow",
                "mlp",
                json!({"shadowSampleShare": "100%"})
            ),
        ]),
        "http://127.0.0.1:9/v1",
    );
    let in_flight = {
        let addr = a.http;
        std::thread::spawn(move || ask(addr, "How do I cancel my subscription?", "user-3"))
    };
    std::thread::sleep(Duration::from_millis(300));
    publish_config(&config_path, &text2);
    let config2 = wait_for_revision(a.admin, &rev2);
    let old = in_flight.join().unwrap();
    assert_eq!(old["provenance"]["configRevision"], rev1.as_str(), "{old}");
    let loaded: Vec<(String, String, bool)> = config2["adapters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["version"].as_str().unwrap().to_owned(),
                a["role"].as_str().unwrap().to_owned(),
                a["loaded"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        loaded,
        [
            ("1.0.0".to_owned(), "Stable".to_owned(), true),
            ("1.1.0".to_owned(), "Shadow".to_owned(), true)
        ]
    );
    let cached = work.join("artifacts-a").join(format!(
        "sha256-{}",
        sha256_file(&fixture("qv").join("adapter_model.safetensors"))
    ));
    assert!(cached.join("adapter_model.safetensors").exists());
    let on_adapter = ask(a.http, "How do I get a refund for my invoice?", "user-4");
    assert_eq!(on_adapter["provenance"]["configRevision"], rev2.as_str());
    assert_eq!(
        on_adapter["provenance"]["adapter"],
        json!({"lineage": "billing", "version": "1.0.0", "role": "stable"}),
        "{on_adapter}"
    );

    // The shadow answer is compared off the critical path and counted, never returned.
    let started = Instant::now();
    loop {
        let (_, metrics) = http(a.http, "GET", "/metrics", "");
        let done = metric(
            &metrics,
            "switchboard_shadow_requests_total",
            &[("lineage", "billing"), ("adapter_version", "1.1.0")],
        );
        if done >= 1.0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "no shadow comparison:\n{metrics}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // An invalid document is rejected: the previous revision keeps serving, in-flight requests
    // are unaffected.
    let in_flight = {
        let addr = a.http;
        std::thread::spawn(move || ask(addr, "How do I export my invoices?", "user-5"))
    };
    std::thread::sleep(Duration::from_millis(300));
    let mut invalid: Value = serde_json::from_str(&text2).unwrap();
    invalid["smallModel"]["maxActiveAdapters"] = json!(0);
    publish_config(&config_path, &invalid.to_string());
    let started = Instant::now();
    loop {
        let (_, metrics) = http(a.http, "GET", "/metrics", "");
        if metric(
            &metrics,
            "switchboard_runtime_config_reloads_total",
            &[("result", "rejected")],
        ) >= 1.0
        {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "not rejected");
        std::thread::sleep(Duration::from_millis(200));
    }
    let during = in_flight.join().unwrap();
    assert_eq!(during["provenance"]["configRevision"], rev2.as_str());
    assert_eq!(admin_json(a.admin, "/v1/config")["revision"], rev2.as_str());

    // Canary at 100%: every unit is served by the candidate.
    let (rev3, text3) = config(
        json!([
            adapter("1.0.0", "Stable", "qv", json!({})),
            adapter("1.1.0", "Canary", "mlp", json!({"trafficWeight": 100})),
        ]),
        "http://127.0.0.1:9/v1",
    );
    publish_config(&config_path, &text3);
    wait_for_revision(a.admin, &rev3);
    for unit in ["acct-1", "acct-2", "acct-3"] {
        let answer = ask(a.http, "Can I get a refund on my annual invoice?", unit);
        assert_eq!(
            answer["provenance"]["adapter"],
            json!({"lineage": "billing", "version": "1.1.0", "role": "canary"}),
            "{answer}"
        );
    }

    // Metrics per docs/metrics.md.
    let (_, metrics) = http(a.http, "GET", "/metrics", "");
    let v = |labels: &[(&'static str, &'static str)]| -> Vec<(&'static str, &'static str)> {
        let mut all = vec![("router", "support/helpdesk")];
        all.extend_from_slice(labels);
        all
    };
    assert_eq!(
        metric(
            &metrics,
            "switchboard_interactions_total",
            &v(&[
                ("lineage", "billing"),
                ("adapter_version", "1.1.0"),
                ("adapter_role", "canary"),
                ("model", "small")
            ])
        ),
        3.0,
        "{metrics}"
    );
    assert!(
        metric(
            &metrics,
            "switchboard_interactions_total",
            &v(&[
                ("lineage", "billing"),
                ("adapter_version", "1.0.0"),
                ("adapter_role", "stable")
            ])
        ) >= 1.0
    );
    assert_eq!(
        metric(
            &metrics,
            "switchboard_feedback_total",
            &v(&[("outcome", "resolved"), ("lineage", ""), ("model", "small")])
        ),
        1.0
    );
    assert_eq!(
        metric(
            &metrics,
            "switchboard_feedback_total",
            &v(&[("outcome", "csat_5")])
        ),
        1.0
    );
    for (reason, n) in [
        ("replayed", 2.0),
        ("bad_signature", 1.0),
        ("expired", 1.0),
        ("unknown_outcome", 1.0),
        ("malformed", 1.0),
    ] {
        assert_eq!(
            metric(
                &metrics,
                "switchboard_feedback_rejected_total",
                &[("reason", reason)]
            ),
            n,
            "{reason}"
        );
    }
    for check in ["retrieval_failure", "refusal"] {
        assert!(
            metric(
                &metrics,
                "switchboard_answer_checks_total",
                &v(&[("check", check)])
            ) >= 1.0,
            "{check}"
        );
    }
    assert!(
        metric(
            &metrics,
            "switchboard_route_decisions_total",
            &v(&[("model", "small"), ("reason", "easy")])
        ) >= 5.0
    );
    assert_eq!(
        metric(
            &metrics,
            "switchboard_runtime_config_info",
            &[("router", "support/helpdesk"), ("revision", rev3.as_str())]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &metrics,
            "switchboard_runtime_config_reloads_total",
            &[("result", "applied")]
        ),
        3.0
    );
    for needle in [
        "switchboard_answer_seconds_bucket{model=\"small\",router=\"support/helpdesk\",stage=\"generate\"",
        "switchboard_answer_seconds_bucket{model=\"small\",router=\"support/helpdesk\",stage=\"total\"",
        "switchboard_large_model_queue_depth{router=\"support/helpdesk\"} 0",
    ] {
        assert!(
            metrics.contains(needle),
            "metrics lack {needle}:\n{metrics}"
        );
    }
    let promtool = root().join(".cache/bin/promtool");
    if promtool.exists() {
        let mut check = Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        check
            .stdin
            .take()
            .unwrap()
            .write_all(metrics.as_bytes())
            .unwrap();
        let out = check.wait_with_output().unwrap();
        // promtool exits 0, or 3 for lint warnings only (e.g. counters without _total).
        assert!(
            matches!(out.status.code(), Some(0 | 3)),
            "promtool: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The OpenAI-compatible API, and a second runtime that uses this one as its large model.
    let (status, body) = post_json(
        a.http,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 0}),
    );
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], "max_tokens", "{body}");
    let b_config = work.join("b-config.json");
    let (_, text_b) = config(json!([]), &format!("http://{}/v1", a.http));
    publish_config(&b_config, &text_b);
    let b = start(work, "b", &b_config, &key);
    let (status, large) = post_json(
        b.http,
        "/v1/answer",
        &json!({"query": "How many days do I have to request a refund?", "forceModel": "large"}),
    );
    assert_eq!(status, 200, "{large}");
    assert_eq!(large["provenance"]["model"], "large", "{large}");
    assert_eq!(large["provenance"]["routeReason"], "forced", "{large}");
    assert!(!large["answer"].as_str().unwrap().trim().is_empty());
    let (_, metrics_b) = http(b.http, "GET", "/metrics", "");
    assert_eq!(
        metric(
            &metrics_b,
            "switchboard_route_decisions_total",
            &[("model", "large"), ("reason", "forced")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &metrics_b,
            "switchboard_interactions_total",
            &[("model", "large")]
        ),
        1.0
    );
    rotate_token_keys(&a, &key);
}

/// The key file of a running runtime is rotated in the three steps the operator takes
/// (docs/runtime.md): append the new key, move it first, drop the old one. No restart; tokens of
/// the old key count until it is dropped, and an invalid file changes nothing.
fn rotate_token_keys(a: &support::Runtime, key: &std::path::Path) {
    let (old_key, new_key) = ("k".repeat(48), "n".repeat(48));
    let fingerprint = |k: &str| {
        TokenKeys::new(vec![k.as_bytes().to_vec()])
            .unwrap()
            .fingerprints()[0]
            .clone()
    };
    let keys_in_force = || admin_json(a.admin, "/v1/config")["tokenKeys"].clone();
    let wait_for = |want: Value| {
        let started = Instant::now();
        while keys_in_force() != want {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "keys in force {} never became {want}",
                keys_in_force()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let (old_fp, new_fp) = (fingerprint(&old_key), fingerprint(&new_key));
    assert_eq!(keys_in_force(), json!([old_fp]));
    let query = "How do I reset two-factor authentication?";
    let old_token_1 = ask(a.http, query, "rotation-1")["interactionToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let old_token_2 = ask(a.http, query, "rotation-2")["interactionToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let feedback = |token: &str| {
        post_json(
            a.http,
            "/v1/feedback",
            &json!({"token": token, "outcome": "resolved"}),
        )
        .0
    };

    // 1. Appended: every replica accepts the new key before any signs with it.
    std::fs::write(key, format!("{old_key}\n{new_key}\n")).unwrap();
    wait_for(json!([old_fp, new_fp]));
    // 2. First: it signs; the old key's tokens still count.
    std::fs::write(key, format!("{new_key}\n{old_key}\n")).unwrap();
    wait_for(json!([new_fp, old_fp]));
    let new_token = ask(a.http, query, "rotation-3")["interactionToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    TokenKeys::new(vec![new_key.as_bytes().to_vec()])
        .unwrap()
        .verify(&new_token, now)
        .expect("signed with the new key");
    assert_eq!(feedback(&old_token_1), 200);
    // 3. Dropped: the old key's tokens are refused, the new key's count.
    std::fs::write(key, format!("{new_key}\n")).unwrap();
    wait_for(json!([new_fp]));
    assert_eq!(feedback(&old_token_2), 401);
    assert_eq!(feedback(&new_token), 200);
    // A file with an unusable key is refused whole: the keys in force stay.
    std::fs::write(key, "short\n").unwrap();
    let started = Instant::now();
    loop {
        let (_, metrics) = http(a.http, "GET", "/metrics", "");
        if metric(
            &metrics,
            "switchboard_token_key_reloads_total",
            &[("result", "rejected")],
        ) >= 1.0
        {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{metrics}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(keys_in_force(), json!([new_fp]));
    assert_eq!(
        feedback(&new_token),
        409,
        "counted once, under the keys in force"
    );
}
