//! The outcome store against both databases it supports: an SQLite file (restarts) and a real
//! PostgreSQL server shared by two stores (replicas). The same assertions run on both.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns
use std::time::Duration;

use switchboard_crds::Metric;
use switchboard_policy::{Outcome, QueryFeatures, RouteRecord, Variant};
use switchboard_store::{
    CupedQuery, Interaction, OutcomeStore, Recorded, StoreError, UnitQuery, UnitsQuery,
};
use switchboard_testkit::postgres::Postgres;

fn interaction(id: &str, unit: &str, arm: &str, created_at: i64) -> Interaction {
    Interaction {
        id: id.into(),
        created_at,
        expires_at: created_at + 3600,
        unit: Some(unit.into()),
        variant: Variant {
            router: "support/helpdesk".into(),
            lineage: "pricing".into(),
            adapter_version: "1.3.0".into(),
            adapter_role: "canary".into(),
            experiment: if arm.is_empty() {
                String::new()
            } else {
                "prompt-test".into()
            },
            arm: arm.into(),
            model: "small".into(),
        },
        kb_generation: "gen-000003".into(),
        config_revision: "r1".into(),
        route_reason: "easy".into(),
        query: format!("question {id}"),
        rewritten_query: None,
        answer: format!("answer {id} [1]"),
        refused: false,
        invalid_citation: false,
        retrieval_failed: false,
        best_score: Some(0.8),
        cited_documents: vec!["refunds".into()],
        retrieved_documents: vec!["refunds".into(), "billing".into()],
        segments: String::new(),
        // The routing decision round-trips (what `router fit` reads back).
        routing: Some(RouteRecord {
            difficulty: 0.72,
            threshold: 0.6,
            propensity: 0.05,
            features: QueryFeatures {
                length: 0.25,
                weak_match: 0.4,
                ..QueryFeatures::default()
            },
        }),
    }
}

/// What both backends must do: store, refuse replays, aggregate per unit, export.
async fn behaves(store: &OutcomeStore, replica: &OutcomeStore) {
    let i = interaction("i-1", "user-1", "", 1_000);
    store.record_interaction(&i).await.unwrap();
    // Idempotent on the id (a retried write).
    store.record_interaction(&i).await.unwrap();

    assert_eq!(
        store
            .record_outcome("i-1", Outcome::Escalated, 1_010)
            .await
            .unwrap(),
        Recorded::New
    );
    // The same kind again, on this replica or the other: a replay.
    assert_eq!(
        store
            .record_outcome("i-1", Outcome::Escalated, 1_011)
            .await
            .unwrap(),
        Recorded::Replayed
    );
    assert_eq!(
        replica
            .record_outcome("i-1", Outcome::Escalated, 1_012)
            .await
            .unwrap(),
        Recorded::Replayed
    );
    // Another kind counts once; one CSAT rating whatever its value.
    assert_eq!(
        replica
            .record_outcome("i-1", Outcome::Csat(2), 1_013)
            .await
            .unwrap(),
        Recorded::New
    );
    assert_eq!(
        store
            .record_outcome("i-1", Outcome::Csat(5), 1_014)
            .await
            .unwrap(),
        Recorded::Replayed
    );

    let stored = replica.interaction("i-1").await.unwrap().expect("stored");
    assert_eq!(stored.interaction, i);
    assert!(stored.outcomes.escalated && !stored.outcomes.resolved);
    assert_eq!(stored.outcomes.csat, Some(2));
    assert!(store.interaction("nope").await.unwrap().is_none());

    // Many concurrent reports of one outcome across both replicas: exactly one is counted.
    store
        .record_interaction(&interaction("i-race", "user-2", "", 1_001))
        .await
        .unwrap();
    let attempts = (0..16).map(|n| {
        let s = if n % 2 == 0 {
            store.clone()
        } else {
            replica.clone()
        };
        tokio::spawn(async move { s.record_outcome("i-race", Outcome::Resolved, 1_020).await })
    });
    let mut new = 0;
    for attempt in attempts {
        if attempt.await.unwrap().unwrap() == Recorded::New {
            new += 1;
        }
    }
    assert_eq!(new, 1, "a replay raced through");

    // Per-unit aggregation: user-a escalates 1 of 2 during the experiment, user-b 0 of 1.
    for (id, unit, arm, at) in [
        ("e-1", "user-a", "control", 2_000),
        ("e-2", "user-a", "control", 2_001),
        ("e-3", "user-b", "treatment", 2_002),
        ("p-1", "user-a", "", 1_500),
        ("p-2", "user-b", "", 1_501),
    ] {
        store
            .record_interaction(&interaction(id, unit, arm, at))
            .await
            .unwrap();
    }
    for id in ["e-1", "p-1", "p-2"] {
        store
            .record_outcome(id, Outcome::Escalated, 2_100)
            .await
            .unwrap();
    }
    let mut rows = replica
        .unit_outcomes(&UnitQuery {
            router: "support/helpdesk",
            experiment: Some("prompt-test"),
            metric: Metric::EscalationRate,
            from: 2_000,
            until: 3_000,
        })
        .await
        .unwrap();
    rows.sort_by(|a, b| a.unit.cmp(&b.unit));
    let summary: Vec<_> = rows
        .iter()
        .map(|r| (r.unit.as_str(), r.arm.as_str(), r.events, r.trials))
        .collect();
    assert_eq!(
        summary,
        [("user-a", "control", 1, 2), ("user-b", "treatment", 0, 1)]
    );
    // CSAT metrics count rated interactions only.
    let rated = store
        .unit_outcomes(&UnitQuery {
            router: "support/helpdesk",
            experiment: None,
            metric: Metric::CsatLow,
            from: 0,
            until: 1_500,
        })
        .await
        .unwrap();
    assert_eq!(rated.len(), 1);
    assert_eq!((rated[0].events, rated[0].trials), (1, 1));

    let cuped = store
        .cuped(&CupedQuery {
            router: "support/helpdesk",
            experiment: "prompt-test",
            metric: Metric::EscalationRate,
            covariate: Metric::EscalationRate,
            started_at: 2_000,
            preperiod: Duration::from_secs(900),
            now: 3_000,
        })
        .await
        .unwrap();
    assert_eq!(cuped.arms["control"].moments.units, 1);
    assert_eq!(cuped.arms["control"].units_with_covariate, 1);
    // user-a: y = 0.5, x = 1.0 (escalated in the pre-period).
    assert!((cuped.arms["control"].moments.sum_xy - 0.5).abs() < 1e-12);

    // Unit-level counts per arm; a metric counts only interactions past its settle window.
    let units = |now, settle: u64| {
        let replica = replica.clone();
        async move {
            let settle = [(Metric::EscalationRate, Duration::from_secs(settle))].into();
            replica
                .experiment_units(&UnitsQuery {
                    router: "support/helpdesk",
                    experiment: "prompt-test",
                    metrics: &[Metric::EscalationRate, Metric::RefusalRate],
                    started_at: 2_000,
                    now,
                    settle: &settle,
                    segments: &["channel".to_owned()],
                })
                .await
                .unwrap()
        }
    };
    let all = units(3_000, 0).await;
    let control = &all.arms["control"];
    assert_eq!((control.units, control.interactions), (1, 2));
    let esc = control.metrics["escalationRate"];
    assert_eq!((esc.units, esc.numerator, esc.denominator), (1, 1.0, 2.0));
    assert_eq!(all.arms["treatment"].units, 1);
    assert_eq!(all.unsettled["escalationRate"], 0);
    // At 2_501 with a 500 s window only e-1 (2_000) has settled: e-2 and e-3 wait.
    let early = units(2_501, 500).await;
    assert_eq!(early.arms["control"].interactions, 2);
    let esc = early.arms["control"].metrics["escalationRate"];
    assert_eq!((esc.numerator, esc.denominator), (1.0, 1.0));
    assert!(
        !early.arms["treatment"]
            .metrics
            .contains_key("escalationRate")
    );
    assert_eq!(early.unsettled["escalationRate"], 2);
    // Answer-time metrics need no wait.
    assert_eq!(early.unsettled["refusalRate"], 0);
    // Interactions stored without the attribute are the (other) segment.
    let other = &all.segments["channel"]["(other)"]["control"];
    assert_eq!(other.metrics["escalationRate"].numerator, 1.0);
    assert!(matches!(
        store
            .unit_outcomes(&UnitQuery {
                router: "support/helpdesk",
                experiment: None,
                metric: Metric::ShadowDivergence,
                from: 0,
                until: 1,
            })
            .await,
        Err(StoreError::Unsupported(_))
    ));

    // Export pages through everything in creation order, outcomes joined.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = replica.export(0, 10_000, after.clone(), 3).await.unwrap();
        if page.is_empty() {
            break;
        }
        let last = page.last().unwrap();
        after = Some((last.interaction.created_at, last.interaction.id.clone()));
        seen.extend(
            page.into_iter()
                .map(|r| (r.interaction.id, r.outcomes.escalated)),
        );
    }
    let ids: Vec<&str> = seen.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(ids, ["i-1", "i-race", "p-1", "p-2", "e-1", "e-2", "e-3"]);
    assert!(seen.iter().find(|s| s.0 == "e-1").unwrap().1);

    // Pruning keeps what is not both old and expired.
    assert_eq!(
        store.prune(1_600).await.unwrap(),
        0,
        "tokens not expired yet"
    );
    assert_eq!(store.prune(10_000).await.unwrap(), 7);
}

/// What the flywheel reads: one Router's page of the export, and the coverage-gap signals
/// (escalated, nothing found, refused, or a low best score), newest first.
async fn flywheel_reads(store: &OutcomeStore) {
    let mut other = interaction("f-other", "u", "", 60_000);
    other.variant.router = "support/vip".into();
    other.retrieval_failed = true;
    let mut failed = interaction("f-failed", "u", "", 60_001);
    failed.retrieval_failed = true;
    failed.refused = true;
    let mut weak = interaction("f-weak", "u", "", 60_002);
    weak.best_score = Some(0.1);
    for i in [
        other,
        failed,
        weak,
        interaction("f-escalated", "u", "", 60_003),
        interaction("f-fine", "u", "", 60_004),
    ] {
        store.record_interaction(&i).await.unwrap();
    }
    store
        .record_outcome("f-escalated", Outcome::Escalated, 60_010)
        .await
        .unwrap();
    store
        .record_outcome("f-fine", Outcome::Resolved, 60_010)
        .await
        .unwrap();
    let ids = |rows: Vec<switchboard_store::InteractionWithOutcomes>| -> Vec<String> {
        rows.into_iter().map(|r| r.interaction.id).collect()
    };
    let page = store
        .export_page(Some("support/helpdesk"), 60_000, 61_000, None, 10)
        .await
        .unwrap();
    assert_eq!(ids(page), ["f-failed", "f-weak", "f-escalated", "f-fine"]);
    let all = store
        .export_page(None, 60_000, 61_000, None, 10)
        .await
        .unwrap();
    assert_eq!(all.len(), 5);
    let signals = store
        .coverage_signals(Some("support/helpdesk"), 60_000, 61_000, None, 10)
        .await
        .unwrap();
    assert_eq!(ids(signals), ["f-escalated", "f-failed"]);
    let signals = store
        .coverage_signals(None, 60_000, 61_000, Some(0.5), 2)
        .await
        .unwrap();
    assert_eq!(
        ids(signals),
        ["f-escalated", "f-weak"],
        "newest first, limited"
    );
    // The denominator of a gap's share: every interaction of the window (of the Router).
    assert_eq!(
        store
            .count_interactions(Some("support/helpdesk"), 60_000, 61_000)
            .await
            .unwrap(),
        4
    );
    assert_eq!(
        store
            .count_interactions(None, 60_000, 61_000)
            .await
            .unwrap(),
        5
    );
    assert_eq!(
        store
            .count_interactions(None, 60_001, 60_002)
            .await
            .unwrap(),
        1
    );
}

#[tokio::test]
async fn sqlite_keeps_outcomes_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/state/outcomes.db", dir.path().display());
    let store = OutcomeStore::connect(&url).await.unwrap();
    let second = OutcomeStore::connect(&url).await.unwrap();
    behaves(&store, &second).await;
    flywheel_reads(&second).await;

    store
        .record_interaction(&interaction("after", "u", "", 50_000))
        .await
        .unwrap();
    assert_eq!(
        store
            .record_outcome("after", Outcome::Reopened, 50_001)
            .await
            .unwrap(),
        Recorded::New
    );
    drop(store);
    drop(second);
    // A restarted runtime refuses the replay.
    let restarted = OutcomeStore::connect(&url).await.unwrap();
    assert_eq!(
        restarted
            .record_outcome("after", Outcome::Reopened, 50_002)
            .await
            .unwrap(),
        Recorded::Replayed
    );
}

#[tokio::test]
async fn postgres_is_shared_by_replicas() {
    let work = tempfile::tempdir().unwrap();
    let pg = Postgres::start(work.path()).expect("PostgreSQL (hack/setup.sh tools)");
    // Two replicas connecting at once migrate the schema once: one row per migration.
    let url = pg.url();
    let (a, b) = tokio::join!(OutcomeStore::connect(&url), OutcomeStore::connect(&url));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(
        pg.psql("switchboard", "SELECT count(*) FROM switchboard_migrations")
            .unwrap(),
        switchboard_store::schema::latest().to_string()
    );
    behaves(&a, &b).await;
    flywheel_reads(&b).await;
}

#[tokio::test]
async fn bad_urls_and_newer_schemas_are_refused_by_name() {
    let err = OutcomeStore::connect("mysql://db/x").await.unwrap_err();
    assert!(err.to_string().contains("expected sqlite://"), "{err}");
    let err = OutcomeStore::connect("sqlite://").await.unwrap_err();
    assert!(err.to_string().contains("no database file path"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/o.db", dir.path().display());
    let store = OutcomeStore::connect(&url).await.unwrap();
    store
        .record_interaction(&interaction("kept", "u", "", 1))
        .await
        .unwrap();
    drop(store);
    // A newer release migrated this file: this build refuses it and changes nothing.
    let raw = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query("INSERT INTO switchboard_migrations VALUES (99, 0)")
        .execute(&raw)
        .await
        .unwrap();
    raw.close().await;
    let err = OutcomeStore::connect(&url).await.unwrap_err();
    assert!(
        err.to_string().contains("schema version 99") && err.to_string().contains("o.db"),
        "{err}"
    );
}
