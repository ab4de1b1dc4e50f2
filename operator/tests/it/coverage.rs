//! `ContentCovers`: the KnowledgeBase reconciler reads the coverage gaps of the runtimes of the
//! Routers that use it (a fake outcome source standing in for `GET /v1/coverage-gaps`) against
//! the real kube-apiserver (as the chart's ServiceAccount), and flags the topics over `spec.coverage`'s thresholds.

use std::{sync::Arc, time::Duration};

use k8s_openapi::{api::events::v1::Event, jiff::Timestamp};
use kube::{
    Api, Client,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;
use switchboard_crds::{
    KnowledgeBase, Router,
    conditions::{self as cond, reasons},
    find_condition,
    knowledge_base::KnowledgeBaseStatus,
};
use switchboard_operator::{
    context::{Context, Settings},
    fakes::{FakeClock, FixedArtifacts, FixedOutcomes, FnSource},
    knowledge_base,
    metrics::Metrics,
    ports::{ArtifactCheck, CoverageReport, ReportedDocument, ReportedGap},
};
use switchboard_testkit::controlplane::{ControlPlane, Options};

struct World {
    /// The test's namespace.
    ns: String,
    /// The admin, default namespace `ns`: the test's fixtures.
    client: Client,
    ctx: Arc<Context>,
    outcomes: FixedOutcomes,
}

/// A namespace of this binary's control plane (CRDs and the chart's RBAC installed); the
/// reconciler runs as the chart's ServiceAccount.
async fn world() -> World {
    let plane = || ControlPlane::shared_with(&Options::without_workload_controllers());
    let ns = tokio::task::spawn_blocking(move || plane().operator_namespace("coverage"))
        .await
        .unwrap();
    let client = plane().admin_client(&ns).await;
    let outcomes = FixedOutcomes::default();
    let ctx = Context::new(
        plane().operator_client(&ns).await,
        Some("test".to_owned()),
        Arc::new(Metrics::new()),
        Arc::new(FnSource::empty()),
        Arc::new(FixedArtifacts::new(ArtifactCheck::Verified)),
        Settings {
            runtime_image: "runtime:test".to_owned(),
            analysis_interval: Duration::from_secs(2),
            ..Settings::default()
        },
        Arc::new(FakeClock::new(
            Timestamp::from_second(1_800_000_000).unwrap(),
        )),
    )
    .with_outcomes(Arc::new(outcomes.clone()));
    World {
        ns,
        client,
        ctx: Arc::new(ctx),
        outcomes,
    }
}

async fn create(client: &Client) {
    let kbs: Api<KnowledgeBase> = Api::default_namespaced(client.clone());
    let kb: KnowledgeBase = serde_json::from_value(json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "KnowledgeBase",
        "metadata": {"name": "help"},
        "spec": {
            "sources": [{"name": "faq", "format": "Markdown", "inline": {"a.md": "# A\nanswer"}}],
            "coverage": {"window": "72h", "minQueries": 4, "minShare": "2%"},
        },
    }))
    .unwrap();
    kbs.create(&PostParams::default(), &kb).await.unwrap();
    kbs.patch_status(
        "help",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"indexGeneration": 3}})),
    )
    .await
    .unwrap();
    let routers: Api<Router> = Api::default_namespaced(client.clone());
    let r: Router = serde_json::from_value(json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "Router",
        "metadata": {"name": "frontline"},
        "spec": {
            "knowledgeBaseRef": {"name": "help"},
            "smallModel": {"model": "/models/smollm2.gguf"},
            "largeModel": {"endpoint": {"url": "https://llm.internal/v1", "model": "big"}},
        },
    }))
    .unwrap();
    routers.create(&PostParams::default(), &r).await.unwrap();
}

async fn reconcile(w: &World) -> KnowledgeBaseStatus {
    let kbs: Api<KnowledgeBase> = Api::default_namespaced(w.client.clone());
    let kb = kbs.get("help").await.unwrap();
    knowledge_base::reconcile(Arc::new(kb), w.ctx.clone())
        .await
        .unwrap();
    kbs.get("help").await.unwrap().status.unwrap()
}

fn gap(query: &str, volume: u64, share: f64) -> ReportedGap {
    ReportedGap {
        query: query.to_owned(),
        volume,
        share,
        interaction: "0f3c9a1e-payroll".to_owned(),
        escalated: volume / 2,
        documents: [
            "help-pages/team.html",
            "wiki/Billing.html",
            "policies/refund-policy.md",
            "guides/api.md",
        ]
        .into_iter()
        .map(|d| ReportedDocument {
            document: d.to_owned(),
        })
        .collect(),
        last_seen: 1_799_990_000,
    }
}

async fn warnings(client: &Client) -> Vec<String> {
    Api::<Event>::default_namespaced(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .filter_map(|e| e.reason)
        .collect()
}

#[tokio::test]
async fn coverage_gaps_of_the_routers_runtimes_flip_content_covers() {
    let w = world().await;
    let router = format!("{}/frontline", w.ns);
    create(&w.client).await;

    // The runtime cannot be reached: Unknown, naming the Router, nothing listed.
    let s = reconcile(&w).await;
    let covers = find_condition(&s.conditions, cond::CONTENT_COVERS).unwrap();
    assert_eq!(
        (covers.status.as_str(), covers.reason.as_str()),
        ("Unknown", reasons::COVERAGE_UNAVAILABLE)
    );
    assert!(
        covers.message.contains(&format!("Router {router}"))
            && covers.message.contains("connection refused"),
        "{}",
        covers.message
    );
    assert_eq!(s.coverage_gaps, None);
    // Asked with the spec's window and minimum.
    let asked = w.outcomes.coverage_asked();
    assert_eq!(asked.len(), 1);
    assert_eq!(
        (
            asked[0].namespace.as_str(),
            asked[0].router.as_str(),
            asked[0].window,
            asked[0].min_queries
        ),
        (
            w.ns.as_str(),
            "frontline",
            Duration::from_secs(72 * 3600),
            4
        )
    );

    // The runtime reports a payroll topic (12 queries, 3% of all): a gap. A topic below the
    // minimum share (1%) and one below the minimum count (3 queries) are not.
    w.outcomes.set_coverage(
        &router,
        Ok(CoverageReport {
            interactions: 400,
            signals: 40,
            gaps: vec![
                gap("Can Ledgerly run payroll?", 12, 0.03),
                gap("Do you have an iPhone app?", 4, 0.01),
                gap("Is there a Linux desktop app?", 3, 0.03),
            ],
        }),
    );
    let s = reconcile(&w).await;
    let covers = find_condition(&s.conditions, cond::CONTENT_COVERS).unwrap();
    assert_eq!(
        (covers.status.as_str(), covers.reason.as_str()),
        ("False", reasons::COVERAGE_GAPS_FOUND)
    );
    assert!(
        covers.message.starts_with(
            "1 topics with 4 or more escalated, unanswered or refused queries and 2% or more of a Router's queries over 72h: interaction 0f3c9a1e-payroll (12 queries, 3%, retrieving help-pages/team.html)"
        ),
        "{}",
        covers.message
    );
    assert_eq!(s.coverage_gaps, Some(1));
    let top = &s.top_coverage_gaps[0];
    assert_eq!(
        (
            top.router.as_str(),
            top.interaction.as_str(),
            top.volume,
            top.share.as_str(),
            top.escalated
        ),
        (router.as_str(), "0f3c9a1e-payroll", 12, "3%", 6)
    );
    assert_eq!(top.documents.len(), 3, "capped: {:?}", top.documents);
    // The customers' words stay in the Router's store: not in status, not in Events.
    let kb = serde_json::to_string(&s).unwrap();
    assert!(!kb.contains("payroll?"), "{kb}");
    assert_eq!(
        top.last_seen.as_ref().map(|t| t.0.as_second()),
        Some(1_799_990_000)
    );
    assert!(
        warnings(&w.client)
            .await
            .contains(&reasons::COVERAGE_GAPS_FOUND.to_owned())
    );
    // A coverage gap is for review: the KnowledgeBase stays Ready.
    assert!(switchboard_crds::is_condition_true(
        &s.conditions,
        cond::READY
    ));

    // The runtime goes away: Unknown, the last list stays.
    w.outcomes
        .set_coverage(&router, Err("HTTP 503: store unavailable".into()));
    let s = reconcile(&w).await;
    let covers = find_condition(&s.conditions, cond::CONTENT_COVERS).unwrap();
    assert_eq!(covers.status, "Unknown");
    assert!(covers.message.contains("HTTP 503"), "{}", covers.message);
    assert_eq!(s.coverage_gaps, Some(1));
    assert_eq!(s.top_coverage_gaps.len(), 1);

    // Content was added: no gap left.
    w.outcomes.set_coverage(
        &router,
        Ok(CoverageReport {
            interactions: 500,
            signals: 6,
            gaps: Vec::new(),
        }),
    );
    let s = reconcile(&w).await;
    let covers = find_condition(&s.conditions, cond::CONTENT_COVERS).unwrap();
    assert_eq!(
        (covers.status.as_str(), covers.reason.as_str()),
        ("True", reasons::RECONCILED)
    );
    assert!(
        covers.message.contains("(500 queries read)"),
        "{}",
        covers.message
    );
    assert_eq!(s.coverage_gaps, Some(0));
    assert!(s.top_coverage_gaps.is_empty());
}
