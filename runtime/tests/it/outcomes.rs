//! Outcomes that survive restarts and replicas, and load that is shed instead of queued, with the
//! real binary, MiniLM and SmolLM2:
//! - two runtime replicas behind one token key share a real PostgreSQL: feedback accepted by one
//!   is refused as a replay by the other, and again after a restart; the interaction is stored
//!   with its provenance and cited documents;
//! - the embedded default (SQLite) keeps refusing a replay after a restart;
//! - feedback reaches the guardrails' settled counters when its answer reaches the follow-up;
//! - the Router holdout's units stay out of experiments and are reported against everyone else;
//! - 100 concurrent answers against a small generation queue: every request gets a prompt answer
//!   or a 429 with `Retry-After`, none waits without bound, and the server stays healthy.

use crate::support;
use support::{
    Runtime, admin, admin_json, ask, http, http_full, metric, post_json, prepare, start, start_with,
};

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard_testkit::postgres::Postgres;

fn feedback(rt: &Runtime, token: &str, outcome: &str) -> (u16, Value) {
    post_json(
        rt.http,
        "/v1/feedback",
        &json!({"token": token, "outcome": outcome}),
    )
}

/// An out-of-KB question: refused without a model call, but a real interaction with a token.
fn refused_token(rt: &Runtime, unit: &str) -> String {
    let answer = ask(rt.http, "What is the capital of France?", unit);
    assert_eq!(answer["refused"], true, "{answer}");
    answer["interactionToken"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_is_counted_once_across_replicas_and_restarts() {
    let work = tempfile::tempdir().unwrap();
    let work = work.path();
    let (config_path, key) = prepare(work, json!({}));
    let pg = Postgres::start(work).expect("PostgreSQL (hack/setup.sh tools)");
    let url = pg.url();
    let store = ["--outcome-store", url.as_str()];
    let a = start_with(work, "a", &config_path, &key, &store);
    let b = start_with(work, "b", &config_path, &key, &store);

    // A grounded answer on replica a, its outcome reported to replica b.
    let answer = ask(
        a.http,
        "How many days do I have to request a refund?",
        "user-1",
    );
    assert_eq!(answer["refused"], false, "{answer}");
    let token = answer["interactionToken"].as_str().unwrap().to_owned();
    let (status, body) = feedback(&b, &token, "escalated");
    assert_eq!(status, 200, "{body}");
    // The same outcome again, to the other replica: a replay.
    let (status, body) = feedback(&a, &token, "escalated");
    assert_eq!(status, 409, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("already recorded"),
        "{body}"
    );
    // Another kind of outcome is new.
    let (status, _) = feedback(&a, &token, "reopened");
    assert_eq!(status, 200);

    // Stored once, with who served it and what it cited.
    let id = answer_id(&token);
    assert_eq!(
        pg.psql(
            "switchboard",
            &format!("SELECT count(*) FROM outcomes WHERE interaction_id = '{id}'")
        )
        .unwrap(),
        "2"
    );
    let row = pg
        .psql(
            "switchboard",
            &format!(
                "SELECT router || '|' || model || '|' || kb_generation || '|' || cited_documents \
                 FROM interactions WHERE id = '{id}'"
            ),
        )
        .unwrap();
    let cited: Vec<String> = answer["citations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["documentId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        row,
        format!(
            "support/helpdesk|small|gen-000001|{}",
            serde_json::to_string(&cited).unwrap()
        )
    );

    // Counted once across both replicas' metrics.
    let escalated: f64 = [&a, &b]
        .iter()
        .map(|rt| {
            let (_, text) = http(rt.http, "GET", "/metrics", "");
            metric(
                &text,
                "switchboard_feedback_total",
                &[("outcome", "escalated")],
            )
        })
        .sum();
    assert_eq!(escalated, 1.0);

    // Replica a restarts (a new process, a new pod): the replay is still refused, and feedback
    // for an interaction it never saw (served by b) is accepted once.
    let refused = refused_token(&b, "user-2");
    drop(a);
    let a = start_with(work, "a", &config_path, &key, &store);
    let (status, _) = feedback(&a, &token, "escalated");
    assert_eq!(status, 409);
    let (status, body) = feedback(&a, &refused, "resolved");
    assert_eq!(status, 200, "{body}");
    let (status, _) = feedback(&b, &refused, "resolved");
    assert_eq!(status, 409);

    // The CUPED input of the Experiment analysis reads the same store; bad input is named.
    let cuped = admin_json(
        a.admin,
        "/v1/experiments/none/cuped?metric=escalationRate&startedAt=0&preperiod=24h",
    );
    assert_eq!(cuped["arms"], json!({}), "{cuped}");
    let (status, body) = admin(
        a.admin,
        "GET",
        "/v1/experiments/none/cuped?metric=happiness&startedAt=0&preperiod=24h",
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("metric"), "{body}");

    // The database goes away: feedback is refused as retryable (503), nothing is counted, and
    // answers are still served.
    pg.psql(
        "switchboard",
        "ALTER TABLE outcomes RENAME TO outcomes_away",
    )
    .unwrap();
    let (status, body) = feedback(&b, &refused, "csat");
    assert_eq!(status, 400, "csat without a rating is malformed: {body}");
    let (status, body) = post_json(
        b.http,
        "/v1/feedback",
        &json!({"token": refused, "outcome": "csat", "csat": 5}),
    );
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "store_unavailable", "{body}");
    refused_token(&b, "user-3");
}

/// The interaction id inside a token (`sb1.<payload>.<mac>`, payload = JSON claims).
fn answer_id(token: &str) -> String {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    claims["id"].as_str().unwrap().to_owned()
}

/// Two experiments on one Router, each randomised by its own unit and holding half of the layer:
/// every answer is enrolled exactly where the policy says (user ids for one, account ids for the
/// other), requests without the account id are counted, and the admin API reports distinct
/// units per arm from the store, not interactions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn experiments_enrol_by_their_own_unit_and_count_units_per_arm() {
    use switchboard_crds::runtime_config::ExperimentConfig;
    use switchboard_policy::experiment::{UnitIds, enrol};
    let work = tempfile::tempdir().unwrap();
    let work = work.path();
    let experiment = |name: &str, unit: &str, start: u32, end: u32| {
        json!({
            "name": name, "unit": unit, "salt": format!("{name}-salt"),
            "range": {"start": start, "end": end}, "holdoutShare": "0%", "control": "control",
            "variants": [{"name": "control", "weight": 50}, {"name": "treatment", "weight": 50}],
        })
    };
    let mut by_user = experiment("by-user", "User", 0, 5_000);
    by_user["segments"] = json!(["channel"]);
    let experiments = json!([by_user, experiment("by-account", "Account", 5_000, 10_000)]);
    let (config_path, key) = prepare(work, json!({"experiments": experiments.clone()}));
    let configs: Vec<ExperimentConfig> = serde_json::from_value(experiments).unwrap();
    let rt = start(work, "x", &config_path, &key);

    // 30 users, each asking twice; even users send their account id too.
    let mut expected_units: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    let mut missing_account = 0;
    for _ in 0..2 {
        for i in 0..30 {
            let user = format!("user-{i}");
            let account = format!("account-{}", i / 2);
            let ids = UnitIds {
                user: Some(&user),
                account: (i % 2 == 0).then_some(account.as_str()),
                conversation: None,
            };
            let channel = if i % 3 == 0 { "email" } else { "chat" };
            let mut body = json!({"query": "What is the capital of France?", "userId": user,
                                  "attributes": {"channel": channel, "plan": "pro"}});
            if let Some(a) = ids.account {
                body["accountId"] = json!(a);
            }
            let (status, answer) = post_json(rt.http, "/v1/answer", &body);
            assert_eq!(status, 200, "{answer}");
            let want = enrol(&configs, ids);
            missing_account += want.missing_unit.len();
            let p = &answer["provenance"];
            match want.assignment {
                Some(a) => {
                    assert_eq!(
                        (p["experiment"].as_str(), p["arm"].as_str()),
                        (Some(a.experiment), Some(a.arm)),
                        "{i}"
                    );
                    expected_units
                        .entry(format!("{}/{}", a.experiment, a.arm))
                        .or_default()
                        .insert(a.unit.to_owned());
                }
                None => assert_eq!(p["experiment"], "", "{answer}"),
            }
        }
    }
    assert!(expected_units.len() >= 3, "{expected_units:?}");
    assert!(missing_account > 0);
    let (_, text) = http(rt.http, "GET", "/metrics", "");
    assert_eq!(
        metric(
            &text,
            "switchboard_experiment_unenrolled_total",
            &[("experiment", "by-account"), ("field", "accountId")]
        ),
        missing_account as f64
    );
    for name in ["by-user", "by-account"] {
        let units = admin_json(
            rt.admin,
            &format!(
                "/v1/experiments/{name}/units?startedAt=0&metrics=refusalRate:0s,escalationRate:72h"
            ),
        );
        for arm in ["control", "treatment"] {
            let want = expected_units
                .get(&format!("{name}/{arm}"))
                .map_or(0, std::collections::BTreeSet::len);
            let got = &units["arms"][arm];
            assert_eq!(
                got["units"].as_u64().unwrap_or(0),
                want as u64,
                "{name}/{arm}: {units}"
            );
            if want > 0 {
                // Every unit asked twice (two interactions), and every answer was a refusal.
                assert_eq!(got["interactions"], json!(2 * want), "{units}");
                let refusals = &got["metrics"]["refusalRate"];
                assert_eq!(refusals["numerator"], refusals["denominator"], "{units}");
                // Escalations settle for 72h: none of these counts yet.
                assert!(got["metrics"].get("escalationRate").is_none(), "{units}");
            }
        }
        assert!(units["unsettled"]["escalationRate"].as_u64().unwrap() > 0);
    }
    // by-user breaks its results down by channel (refusals settle at once).
    let units = admin_json(
        rt.admin,
        "/v1/experiments/by-user/units?startedAt=0&metrics=refusalRate:0s&segments=channel",
    );
    let channels = &units["segments"]["channel"];
    let segment_units = |value: &str| -> u64 {
        ["control", "treatment"]
            .iter()
            .map(|arm| channels[value][arm]["units"].as_u64().unwrap_or(0))
            .sum()
    };
    let enrolled: usize = ["control", "treatment"]
        .iter()
        .map(|arm| {
            expected_units
                .get(&format!("by-user/{arm}"))
                .map_or(0, std::collections::BTreeSet::len)
        })
        .sum();
    assert_eq!(
        segment_units("chat") + segment_units("email"),
        enrolled as u64,
        "{units}"
    );
    assert!(
        channels.get("(other)").is_none(),
        "plan is not a segment: {units}"
    );
    // Bad attributes are named.
    let (status, body) = post_json(
        rt.http,
        "/v1/answer",
        &json!({"query": "hi", "userId": "u", "attributes": {"1bad": "x"}}),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().starts_with("attributes:"),
        "{body}"
    );
    let (status, body) = admin(
        rt.admin,
        "GET",
        "/v1/experiments/by-user/units?startedAt=0&metrics=happiness:1h",
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("`happiness` is not a metric"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_holdout_stays_out_of_experiments_and_is_compared_with_everyone_else() {
    use switchboard_crds::runtime_config::ExperimentConfig;
    use switchboard_policy::experiment::{UnitIds, enrol, in_router_holdout};
    let work = tempfile::tempdir().unwrap();
    let work = work.path();
    // 20% of users held out; an experiment over the whole layer for everyone else.
    let experiments = json!([{
        "name": "tone", "unit": "User", "salt": "tone-salt",
        "range": {"start": 0, "end": 10_000}, "holdoutShare": "0%", "control": "control",
        "variants": [{"name": "control", "weight": 50}, {"name": "treatment", "weight": 50}],
    }]);
    let (config_path, key) = prepare(
        work,
        json!({"experiments": experiments.clone(), "holdout": {"share": "20%", "pinned": {}}}),
    );
    let configs: Vec<ExperimentConfig> = serde_json::from_value(experiments).unwrap();
    let rt = start(work, "holdout", &config_path, &key);

    let mut held_out = 0;
    for i in 0..40 {
        let user = format!("user-{i}");
        let answer = ask(rt.http, "What is the capital of France?", &user);
        let p = &answer["provenance"];
        if in_router_holdout(0.2, &user) {
            held_out += 1;
            assert_eq!(
                (p["experiment"].as_str(), p["arm"].as_str()),
                (Some(""), Some("router-holdout")),
                "{answer}"
            );
            // Held-out users escalate.
            let token = answer["interactionToken"].as_str().unwrap();
            assert_eq!(feedback(&rt, token, "escalated").0, 200);
        } else {
            let want = enrol(
                &configs,
                UnitIds {
                    user: Some(&user),
                    account: None,
                    conversation: None,
                },
            );
            assert_eq!(p["experiment"], "tone", "{answer}");
            assert_eq!(
                p["arm"].as_str(),
                want.assignment.map(|a| a.arm),
                "{answer}"
            );
        }
    }
    assert!((3..=15).contains(&held_out), "{held_out}");
    // The comparison's data: held out against everyone else, per unit (escalations counted at
    // once here).
    let units = admin_json(
        rt.admin,
        "/v1/holdout/units?startedAt=0&metrics=escalationRate:0s",
    );
    assert_eq!(
        units["arms"]["holdout"]["units"],
        json!(held_out),
        "{units}"
    );
    assert_eq!(
        units["arms"]["exposed"]["units"],
        json!(40 - held_out),
        "{units}"
    );
    let rate = |group: &str| {
        let m = &units["arms"][group]["metrics"]["escalationRate"];
        m["numerator"].as_f64().unwrap() / m["denominator"].as_f64().unwrap()
    };
    assert_eq!((rate("holdout"), rate("exposed")), (1.0, 0.0), "{units}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_store_refuses_a_replay_after_a_restart() {
    let work = tempfile::tempdir().unwrap();
    let work = work.path();
    let (config_path, key) = prepare(work, json!({}));
    let rt = start(work, "solo", &config_path, &key);
    let token = refused_token(&rt, "user-1");
    assert_eq!(feedback(&rt, &token, "resolved").0, 200);
    drop(rt);
    let rt = start(work, "solo", &config_path, &key);
    let (status, body) = feedback(&rt, &token, "resolved");
    assert_eq!(status, 409, "{body}");
    assert!(work.join("outcomes-solo.db").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_reaches_the_settled_counters_when_its_answer_is_old_enough() {
    // The guardrails watching this Router follow each answer for 3 s and for an hour.
    let work = tempfile::tempdir().unwrap();
    let work = work.path();
    let (config_path, key) = prepare(work, json!({"guardrailSettleWindows": ["3s", "1h"]}));
    let rt = start(work, "settle", &config_path, &key);
    let settled = |settle: &str| {
        let (_, text) = http(rt.http, "GET", "/metrics", "");
        metric(
            &text,
            "switchboard_feedback_settled_total",
            &[("outcome", "escalated"), ("settle", settle)],
        )
    };
    let token = refused_token(&rt, "user-1");
    assert_eq!(feedback(&rt, &token, "escalated").0, 200);
    // Reported at once, but its answer is younger than either follow-up: not compared yet
    // (the series exist at zero, so the first increase is seen).
    let (_, text) = http(rt.http, "GET", "/metrics", "");
    assert_eq!(
        metric(
            &text,
            "switchboard_feedback_total",
            &[("outcome", "escalated")]
        ),
        1.0
    );
    assert!(
        text.contains("switchboard_feedback_settled_total{") && text.contains("settle=\"3600s\""),
        "{text}"
    );
    assert_eq!(settled("3s"), 0.0);
    // Once the answer is 3 s old it counts at the 3 s follow-up; the hour's is still to come.
    std::thread::sleep(Duration::from_millis(4_200));
    assert_eq!(settled("3s"), 1.0);
    assert_eq!(settled("3600s"), 0.0);
}

#[test]
fn a_burst_of_100_answers_is_shed_not_queued() {
    let work = tempfile::tempdir().unwrap();
    let work = work.path();
    let limit = 2;
    let (config_path, key) = prepare(
        work,
        json!({"smallModel": {"maxQueueDepth": limit, "maxNewTokens": 8}}),
    );
    let rt = start(work, "burst", &config_path, &key);
    let addr = rt.http;

    let n = 100;
    let barrier = Arc::new(Barrier::new(n + 1));
    let clients: Vec<_> = (0..n)
        .map(|i| {
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                let body = json!({"query": "How do I reset two-factor authentication?", "unit": format!("u{i}")});
                let (status, head, body) = http_full(addr, "POST", "/v1/answer", &body.to_string());
                (status, head, body)
            })
        })
        .collect();
    barrier.wait();
    // The server stays responsive while the burst is being handled.
    let started = Instant::now();
    let (health, _) = http(addr, "GET", "/healthz", "");
    assert_eq!(health, 200);
    assert!(started.elapsed() < Duration::from_secs(30));

    let results: Vec<(u16, String, String)> =
        clients.into_iter().map(|c| c.join().unwrap()).collect();
    let ok = results.iter().filter(|r| r.0 == 200).count();
    let shed: Vec<_> = results.iter().filter(|r| r.0 == 429).collect();
    assert_eq!(
        ok + shed.len(),
        n,
        "every request is answered or shed: {:?}",
        results
            .iter()
            .filter(|r| r.0 != 200 && r.0 != 429)
            .collect::<Vec<_>>()
    );
    println!("burst of {n}: {ok} answered, {} shed with 429", shed.len());
    assert!(ok >= limit, "{ok} answered");
    assert!(shed.len() >= n / 2, "only {} shed", shed.len());
    for (_, head, body) in &shed {
        assert!(
            head.to_ascii_lowercase().contains("retry-after: 1"),
            "{head}"
        );
        let body: Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["code"], "overloaded", "{body}");
        assert!(
            body["message"].as_str().unwrap().contains("at capacity"),
            "{body}"
        );
    }
    // Shed at the model's queue, or earlier at retrieval's (`--max-queued-retrievals`): each
    // counted once, by where.
    let (_, text) = http(addr, "GET", "/metrics", "");
    let at_model = metric(
        &text,
        "switchboard_generation_shed_total",
        &[("model", "small")],
    );
    let at_retrieval = metric(
        &text,
        "switchboard_limit_refused_total",
        &[("reason", "retrieval_overloaded")],
    );
    println!("shed at the model's queue: {at_model}, at retrieval: {at_retrieval}");
    assert_eq!(at_model + at_retrieval, shed.len() as f64);
    // Capacity comes back: the next answer is served.
    ask(addr, "How do I reset two-factor authentication?", "after");
}
