//! The real reconcilers against the real kube-apiserver (switchboard-testkit's control plane,
//! one per test binary, a namespace per test), with a fake metrics source, a fake clock and a
//! fixed artifact check. The reconcilers authenticate as the operator's ServiceAccount under the
//! chart's RBAC, so a call the chart does not grant fails the test; the test's own fixtures are
//! written as the admin. kube-controller-manager runs without the workload controllers: the
//! tests play the Job controller and the kubelet (envtest-style), and the real apiserver
//! validates what they write.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        batch::v1::Job,
        core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service},
        events::v1::Event,
        networking::v1::NetworkPolicy,
    },
    jiff::Timestamp,
};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;
use switchboard_crds::{
    AdapterPatch, Experiment, KnowledgeBase, Router,
    adapter_patch::{AdapterPhase, AnalysisDecision},
    conditions::{self as cond, reasons},
    experiment::{ExperimentDecision, ExperimentPhase},
    find_condition,
    router::DifficultySource,
    runtime_config::{AdapterRole, RuntimeConfig},
};
use switchboard_operator::{
    adapter_patch,
    context::{Context, Settings},
    controllers, experiment,
    fakes::{FakeClock, FixedArtifacts, FnSource, scalar},
    knowledge_base,
    leader::LeaseLock,
    metrics::Metrics,
    ports::ArtifactCheck,
    router,
};
use switchboard_testkit::controlplane::{ControlPlane, OPERATOR_NAMESPACE, Options};
const MODEL: &str = "/models/smollm2.gguf";

fn digest(c: char) -> String {
    format!("sha256:{}", c.to_string().repeat(64))
}

struct World {
    /// The test's namespace.
    ns: String,
    /// The admin, default namespace `ns`: the test's own fixtures.
    client: Client,
    /// The reconcilers' context, with the operator's client.
    ctx: Arc<Context>,
    clock: FakeClock,
    artifacts: FixedArtifacts,
    metrics: Arc<Metrics>,
}

/// The control plane of this binary (CRDs and the chart's RBAC installed) and a new namespace
/// whose owner granted the operator Secrets.
async fn namespace() -> String {
    tokio::task::spawn_blocking(|| plane().operator_namespace("ctl"))
        .await
        .unwrap()
}

fn plane() -> &'static ControlPlane {
    ControlPlane::shared_with(&Options::without_workload_controllers())
}

async fn world(source: FnSource) -> World {
    world_in(namespace().await, source).await
}

async fn world_in(ns: String, source: FnSource) -> World {
    let client = plane().admin_client(&ns).await;
    let operator = plane().operator_client(&ns).await;
    let clock = FakeClock::new(Timestamp::from_second(1_800_000_000).unwrap());
    let artifacts = FixedArtifacts::new(ArtifactCheck::Verified);
    let metrics = Arc::new(Metrics::new());
    let ctx = Arc::new(Context::new(
        operator,
        Some("test".to_owned()),
        metrics.clone(),
        Arc::new(source),
        Arc::new(artifacts.clone()),
        Settings {
            runtime_image: "runtime:test".to_owned(),
            analysis_interval: Duration::from_secs(2),
            ..Settings::default()
        },
        Arc::new(clock.clone()),
    ));
    World {
        ns,
        client,
        ctx,
        clock,
        artifacts,
        metrics,
    }
}

async fn create_kb(client: &Client, generation: Option<i64>) {
    let kbs: Api<KnowledgeBase> = Api::default_namespaced(client.clone());
    let kb: KnowledgeBase = serde_json::from_value(json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "KnowledgeBase",
        "metadata": {"name": "help"},
        "spec": {"sources": [{"name": "faq", "format": "Markdown", "inline": {"a.md": "# A\nanswer"}}]},
    }))
    .unwrap();
    kbs.create(&PostParams::default(), &kb).await.unwrap();
    if let Some(g) = generation {
        kbs.patch_status(
            "help",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"indexGeneration": g}})),
        )
        .await
        .unwrap();
    }
}

async fn create_router(client: &Client) -> Router {
    let routers: Api<Router> = Api::default_namespaced(client.clone());
    let r: Router = serde_json::from_value(json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "Router",
        "metadata": {"name": "frontline"},
        "spec": {
            "knowledgeBaseRef": {"name": "help"},
            "smallModel": {"model": MODEL, "adapterSelector": {"matchLabels": {"team": "billing"}}},
            "largeModel": {"endpoint": {"url": "https://llm.internal/v1", "model": "big"}},
        },
    }))
    .unwrap();
    routers.create(&PostParams::default(), &r).await.unwrap()
}

async fn get<K>(client: &Client, name: &str) -> K
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    Api::<K>::default_namespaced(client.clone())
        .get(name)
        .await
        .unwrap()
}

async fn events(client: &Client, regarding: &str) -> Vec<Event> {
    Api::<Event>::default_namespaced(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(regarding))
        .collect()
}

fn reasons_of(events: &[Event]) -> Vec<String> {
    events.iter().filter_map(|e| e.reason.clone()).collect()
}

#[tokio::test]
async fn a_router_gets_its_config_map_deployment_and_service_with_owner_references() {
    let w = world(FnSource::empty()).await;
    create_kb(&w.client, Some(3)).await;
    let created = create_router(&w.client).await;
    let r = get::<Router>(&w.client, "frontline").await;
    router::reconcile(Arc::new(r), w.ctx.clone()).await.unwrap();

    let uid = created.uid().unwrap();
    let cm: ConfigMap = get(&w.client, "frontline-runtime").await;
    let d: Deployment = get(&w.client, "frontline-runtime").await;
    let s: Service = get(&w.client, "frontline-runtime").await;
    let token: Secret = get(&w.client, "frontline-runtime-token").await;
    let admin: Service = get(&w.client, "frontline-runtime-admin").await;
    let policy: NetworkPolicy = get(&w.client, "frontline-runtime").await;
    for owners in [
        cm.metadata.owner_references.clone(),
        d.metadata.owner_references.clone(),
        s.metadata.owner_references.clone(),
        token.metadata.owner_references.clone(),
        admin.metadata.owner_references.clone(),
        policy.metadata.owner_references.clone(),
    ] {
        let owner = &owners.unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("Router", uid.as_str(), Some(true))
        );
    }
    let managers: Vec<String> = cm
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(
        managers.is_empty() || managers.contains(&"switchboard-operator".to_owned()),
        "{managers:?}"
    );
    let config: RuntimeConfig =
        serde_json::from_str(&cm.data.as_ref().unwrap()["runtime-config.json"]).unwrap();
    assert_eq!(config.knowledge_base.index_generation, 3);
    assert_eq!(config.router.name, "frontline");
    let pod = d.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.containers[0].image.as_deref(), Some("runtime:test"));
    // The admin API: its own Service and port, a token in the token Secret, the operator
    // alone admitted by the policy the API server stored.
    let service_ports = |s: &Service| -> Vec<i32> {
        s.spec
            .as_ref()
            .unwrap()
            .ports
            .iter()
            .flatten()
            .map(|p| p.port)
            .collect()
    };
    assert_eq!(service_ports(&s), [50051, 8080]);
    assert_eq!(service_ports(&admin), [8081]);
    let admin_token =
        String::from_utf8(token.data.as_ref().unwrap()["admin-token"].0.clone()).unwrap();
    assert_eq!(admin_token.trim().len(), 64);
    let unit_key = String::from_utf8(token.data.as_ref().unwrap()["unit-key"].0.clone()).unwrap();
    assert_eq!(unit_key.trim().len(), 64);
    let rules = policy.spec.unwrap().ingress.unwrap();
    assert_eq!(rules.len(), 2);
    assert_eq!(
        rules[1].from.as_ref().unwrap()[0],
        w.ctx.settings.operator_peer
    );

    let status = get::<Router>(&w.client, "frontline").await.status.unwrap();
    assert_eq!(
        status.runtime_config_hash.as_deref(),
        Some(config.revision.as_str())
    );
    assert_eq!(status.knowledge_base_generation, Some(3));
    assert!(
        status
            .conditions
            .iter()
            .all(|c| c.observed_generation == created.metadata.generation)
    );
    // No pods run (no Deployment controller, no node): not ready, waiting for children; the revision is not
    // confirmed by any pod.
    let ready = find_condition(&status.conditions, cond::READY).unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", reasons::WAITING_FOR_CHILDREN)
    );
    let applied = find_condition(&status.conditions, cond::RUNTIME_CONFIG_APPLIED).unwrap();
    assert_eq!(
        (applied.status.as_str(), applied.reason.as_str()),
        ("Unknown", reasons::CONFIG_PENDING)
    );
    assert!(
        reasons_of(&events(&w.client, "frontline").await)
            .contains(&"RuntimeConfigWritten".to_owned())
    );

    // A second reconcile changes nothing and keeps the token key.
    let r = get::<Router>(&w.client, "frontline").await;
    router::reconcile(Arc::new(r), w.ctx.clone()).await.unwrap();
    let again: Secret = get(&w.client, "frontline-runtime-token").await;
    assert_eq!(again.data, token.data);
    let cm2: ConfigMap = get(&w.client, "frontline-runtime").await;
    assert_eq!(cm2.data, cm.data);
}

/// `router fit` writes `spec.difficulty` (weights, threshold, calibration); the API server
/// checks it, the operator compiles the weights into the RuntimeConfig, and the status says
/// the threshold is calibrated and since when.
#[tokio::test]
async fn a_fitted_difficulty_model_reaches_the_runtime_config_and_the_status_shows_its_calibration()
{
    let w = world(FnSource::empty()).await;
    create_kb(&w.client, Some(3)).await;
    create_router(&w.client).await;
    let routers: Api<Router> = Api::default_namespaced(w.client.clone());
    let r = get::<Router>(&w.client, "frontline").await;
    router::reconcile(Arc::new(r), w.ctx.clone()).await.unwrap();
    let status = get::<Router>(&w.client, "frontline").await.status.unwrap();
    let d = status.difficulty.unwrap();
    assert_eq!((d.source, d.threshold), (DifficultySource::HandSet, 0.5));

    let fitted = |fitted_at: &str| {
        json!({"spec": {"difficulty": {
            "threshold": 0.3463,
            "model": {
                "weights": {"bias": -3.6468, "length": 1.9481, "clauses": 0.1305,
                            "qualifications": 0.1438, "knownIdentifiers": -0.169,
                            "unknownIdentifiers": -1.9857, "multiDocument": -0.1211,
                            "weakMatch": 4.3655},
                "calibration": {"fittedAt": fitted_at, "trainExamples": 121,
                                "heldOutExamples": 36, "heldOutAccuracy": 0.8056,
                                "brierScore": 0.1405, "largeShare": 0.2778},
            },
        }}})
    };
    // Not a time: refused by the API server, naming the field.
    let err = routers
        .patch(
            "frontline",
            &PatchParams::default(),
            &Patch::Merge(fitted("last tuesday")),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("fittedAt"), "{err}");

    routers
        .patch(
            "frontline",
            &PatchParams::default(),
            &Patch::Merge(fitted("2026-12-08T02:40:22Z")),
        )
        .await
        .unwrap();
    let r = get::<Router>(&w.client, "frontline").await;
    router::reconcile(Arc::new(r), w.ctx.clone()).await.unwrap();
    let cm: ConfigMap = get(&w.client, "frontline-runtime").await;
    let config: RuntimeConfig =
        serde_json::from_str(&cm.data.as_ref().unwrap()["runtime-config.json"]).unwrap();
    let weights = config.router_policy.difficulty_model.unwrap();
    assert_eq!((weights.bias, weights.weak_match), (-3.6468, 4.3655));
    assert_eq!(config.router_policy.difficulty_threshold, 0.3463);
    let status = get::<Router>(&w.client, "frontline").await.status.unwrap();
    let d = status.difficulty.unwrap();
    assert_eq!((d.source, d.threshold), (DifficultySource::Fitted, 0.3463));
    assert_eq!(d.fitted_at.as_deref(), Some("2026-12-08T02:40:22Z"));
    assert_eq!(
        (d.held_out_accuracy, d.brier_score),
        (Some(0.8056), Some(0.1405))
    );
}

fn key_lines(secret: &Secret) -> Vec<String> {
    String::from_utf8(secret.data.as_ref().unwrap()["key"].0.clone())
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn a_token_key_rotates_on_request_in_three_steps_and_no_other_secret_can_be_updated() {
    use router::token_key::{DISTRIBUTION, ROTATE_ANNOTATION, TOKEN_LIFETIME};
    let w = world(FnSource::empty()).await;
    create_kb(&w.client, Some(1)).await;
    create_router(&w.client).await;
    let reconcile = || async {
        let r = get::<Router>(&w.client, "frontline").await;
        router::reconcile(Arc::new(r), w.ctx.clone()).await.unwrap();
        key_lines(&get::<Secret>(&w.client, "frontline-runtime-token").await)
    };
    let first = reconcile().await;
    assert_eq!(first.len(), 1);
    assert_eq!(reconcile().await, first, "kept while nothing is requested");

    // Requested by annotating the Router (a GitOps commit or `kubectl annotate`).
    Api::<Router>::default_namespaced(w.client.clone())
        .patch(
            "frontline",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {ROTATE_ANNOTATION: "2026-12-07"}}})),
        )
        .await
        .unwrap();
    // 1. Appended: accepted by every runtime before any signs with it.
    let appended = reconcile().await;
    assert_eq!((appended.len(), &appended[0]), (2, &first[0]));
    let new = appended[1].clone();
    assert_ne!(new, first[0]);
    assert_eq!(
        reconcile().await,
        appended,
        "not promoted before it is distributed"
    );
    // 2. After the distribution delay: it signs; the old key still verifies.
    w.clock.advance(DISTRIBUTION);
    assert_eq!(reconcile().await, [new.clone(), first[0].clone()]);
    w.clock.advance(Duration::from_secs(3600));
    assert_eq!(
        reconcile().await.len(),
        2,
        "the old key verifies for the token lifetime"
    );
    // 3. After the token lifetime: dropped.
    w.clock.advance(TOKEN_LIFETIME);
    assert_eq!(reconcile().await, std::slice::from_ref(&new));
    assert_eq!(reconcile().await, [new], "one rotation per request");
    let seen = reasons_of(&events(&w.client, "frontline").await);
    for reason in [
        "TokenKeyRotationStarted",
        "TokenKeySigning",
        "TokenKeyRotated",
    ] {
        assert!(seen.contains(&reason.to_owned()), "{reason}: {seen:?}");
    }

    // The operator's `update` on Secrets (granted here) reaches no other Secret: the chart's
    // admission policy refuses it, and refuses taking a Router's Secret away from it.
    let admin: Api<Secret> = Api::default_namespaced(w.client.clone());
    let db: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "helpdesk-db", "labels": {"switchboard.dev/usable": "true"}},
        "stringData": {"url": "postgres://support:hunter2@db/support"},
    }))
    .unwrap();
    admin.create(&PostParams::default(), &db).await.unwrap();
    let operator: Api<Secret> = Api::namespaced(w.ctx.client.clone(), &w.ns);
    let mut stolen = operator.get("helpdesk-db").await.unwrap();
    stolen.string_data = Some([("url".to_owned(), "postgres://evil/".to_owned())].into());
    let refused = operator
        .replace("helpdesk-db", &PostParams::default(), &stolen)
        .await
        .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("may update only the Secrets a Router controls"),
        "{refused}"
    );
    let mut orphaned = operator.get("frontline-runtime-token").await.unwrap();
    orphaned.metadata.owner_references = None;
    assert!(
        operator
            .replace("frontline-runtime-token", &PostParams::default(), &orphaned)
            .await
            .is_err()
    );
    assert_eq!(
        admin.get("helpdesk-db").await.unwrap().data.unwrap()["url"].0,
        b"postgres://support:hunter2@db/support"
    );
}

#[tokio::test]
async fn a_router_or_adapter_patch_may_name_only_secrets_its_author_can_read() {
    // An author who may write Routers and AdapterPatches but not read Secrets: naming a Secret
    // would have the operator read it (and the runtime send it) on their behalf. The chart's
    // admission policies refuse it, naming the Secret; a Secret they may read is accepted.
    let w = world(FnSource::empty()).await;
    let ns = w.ns.clone();
    let kubeconfig = tokio::task::spawn_blocking(move || {
        plane().user_kubeconfig(
            &ns,
            "author",
            &[
                (
                    "switchboard.dev",
                    "routers",
                    &["get", "create", "update", "patch"],
                ),
                (
                    "switchboard.dev",
                    "adapterpatches",
                    &["get", "create", "update"],
                ),
            ],
        )
    })
    .await
    .unwrap();
    let author = switchboard_testkit::controlplane::client_from(&kubeconfig, &w.ns).await;
    let admin: Api<Secret> = Api::default_namespaced(w.client.clone());
    for name in ["llm-api", "team-llm-api"] {
        let secret: Secret = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "labels": {"switchboard.dev/usable": "true"}},
            "stringData": {"token": "sk-live-1234"},
        }))
        .unwrap();
        admin.create(&PostParams::default(), &secret).await.unwrap();
    }
    let router = |secret: &str| -> Router {
        serde_json::from_value(json!({
            "apiVersion": "switchboard.dev/v1alpha1", "kind": "Router",
            "metadata": {"name": "frontline"},
            "spec": {
                "knowledgeBaseRef": {"name": "help"},
                "smallModel": {"model": MODEL},
                "largeModel": {"endpoint": {"url": "https://llm.internal/v1", "model": "big",
                                            "secretRef": {"name": secret, "key": "token"}}},
            },
        }))
        .unwrap()
    };
    let routers: Api<Router> = Api::default_namespaced(author.clone());
    let refused = routers
        .create(&PostParams::default(), &router("llm-api"))
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains(&format!(
            "this Router may name only Secrets its author can read: you may not get every Secret it newly names in namespace {} (llm-api)",
            w.ns
        )),
        "{refused}"
    );
    // The client tokens of the public API are a Secret reference like any other.
    let mut tokens_of_another = router("team-llm-api");
    tokens_of_another
        .spec
        .large_model
        .endpoint
        .as_mut()
        .unwrap()
        .secret_ref = None;
    tokens_of_another.spec.access.client_tokens =
        Some(serde_json::from_value(json!({"name": "llm-api", "key": "token"})).unwrap());
    let refused = routers
        .create(&PostParams::default(), &tokens_of_another)
        .await
        .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("you may not get every Secret it newly names"),
        "{refused}"
    );
    let patches: Api<AdapterPatch> = Api::default_namespaced(author.clone());
    let mut patch = patch("1.0.0", &digest('a'));
    "oci://registry.example.com/adapters/pricing:1.0.0".clone_into(&mut patch.spec.artifact.uri);
    patch.spec.artifact.pull_secret_ref =
        Some(serde_json::from_value(json!({"name": "llm-api"})).unwrap());
    let refused = patches
        .create(&PostParams::default(), &patch)
        .await
        .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("you may not get every Secret it newly names"),
        "{refused}"
    );

    // The namespace's owner lets the author read one Secret: a Router naming it is accepted.
    let role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "author-reads-team-llm-api"},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["team-llm-api"],
                   "verbs": ["get"]}],
    });
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "author-reads-team-llm-api"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                    "name": "author-reads-team-llm-api"},
        "subjects": [{"kind": "ServiceAccount", "name": "author", "namespace": w.ns}],
    });
    Api::<k8s_openapi::api::rbac::v1::Role>::default_namespaced(w.client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(role).unwrap(),
        )
        .await
        .unwrap();
    Api::<k8s_openapi::api::rbac::v1::RoleBinding>::default_namespaced(w.client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(binding).unwrap(),
        )
        .await
        .unwrap();
    // The authorizer sees new bindings through an informer: retry briefly.
    let mut accepted = None;
    for _ in 0..100 {
        match routers
            .create(&PostParams::default(), &router("team-llm-api"))
            .await
        {
            Ok(r) => {
                accepted = Some(r);
                break;
            }
            Err(e)
                if e.to_string()
                    .contains("may name only Secrets its author can read") =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    let accepted = accepted.expect("a Router naming a Secret its author may read");
    // Edits that keep the Secrets it names need no further check; switching to one the author
    // may not read is refused like a creation.
    let mut scaled = accepted.clone();
    scaled.spec.replicas = 2;
    let scaled = routers
        .replace("frontline", &PostParams::default(), &scaled)
        .await
        .unwrap();
    let mut switched = scaled.clone();
    switched
        .spec
        .large_model
        .endpoint
        .as_mut()
        .unwrap()
        .secret_ref =
        Some(serde_json::from_value(json!({"name": "llm-api", "key": "token"})).unwrap());
    let refused = routers
        .replace("frontline", &PostParams::default(), &switched)
        .await
        .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("you may not get every Secret it newly names"),
        "{refused}"
    );
}

#[tokio::test]
async fn secrets_are_used_only_where_the_namespaces_owner_granted_them() {
    // A namespace whose owner has not bound the chart's Secrets ClusterRole: the operator, under
    // the chart's RBAC, may not create the Router's token key there, and says so (what to bind,
    // where) instead of a bare 403; nothing else is lost.
    let ns = tokio::task::spawn_blocking(|| plane().namespace("nogrant"))
        .await
        .unwrap();
    let w = world_in(ns.clone(), FnSource::empty()).await;
    create_kb(&w.client, Some(1)).await;
    create_router(&w.client).await;
    let r = Arc::new(get::<Router>(&w.client, "frontline").await);
    let err = router::reconcile(r.clone(), w.ctx.clone())
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "SecretAccessNotGranted");
    let degraded = find_condition(
        &get::<Router>(&w.client, "frontline")
            .await
            .status
            .unwrap()
            .conditions,
        cond::DEGRADED,
    )
    .unwrap()
    .clone();
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "SecretAccessNotGranted")
    );
    for needle in [
        format!("Secret {ns}/frontline-runtime-token"),
        "operator-secrets".to_owned(),
        "rbac.secretNamespaces".to_owned(),
    ] {
        assert!(
            degraded.message.contains(&needle),
            "{needle}: {}",
            degraded.message
        );
    }
    assert!(
        Api::<Secret>::default_namespaced(w.client.clone())
            .get_opt("frontline-runtime-token")
            .await
            .unwrap()
            .is_none()
    );

    // The owner grants it: the next reconcile creates the key and the runtime's children.
    let granted = ns.clone();
    tokio::task::spawn_blocking(move || plane().grant_operator_secrets(&granted))
        .await
        .unwrap();
    let r = Arc::new(get::<Router>(&w.client, "frontline").await);
    router::reconcile(r, w.ctx.clone()).await.unwrap();
    let _: Secret = get(&w.client, "frontline-runtime-token").await;
    let _: Deployment = get(&w.client, "frontline-runtime").await;
}

#[tokio::test]
async fn a_missing_knowledge_base_is_a_condition_with_backoff_then_the_watch_recovers() {
    let w = world(FnSource::empty()).await;
    create_router(&w.client).await;
    let r = Arc::new(get::<Router>(&w.client, "frontline").await);
    let err = router::reconcile(r.clone(), w.ctx.clone())
        .await
        .unwrap_err();
    assert_eq!(err.reason(), reasons::REFERENCE_NOT_FOUND);
    let status = get::<Router>(&w.client, "frontline").await.status.unwrap();
    let degraded = find_condition(&status.conditions, cond::DEGRADED).unwrap();
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", reasons::REFERENCE_NOT_FOUND)
    );
    // Backoff grows: no hot loop.
    let first = router::error_policy(r.clone(), &err, w.ctx.clone());
    let second = router::error_policy(r.clone(), &err, w.ctx.clone());
    assert_eq!(
        format!("{first:?}"),
        format!(
            "{:?}",
            kube::runtime::controller::Action::requeue(Duration::from_secs(5))
        )
    );
    assert_eq!(
        format!("{second:?}"),
        format!(
            "{:?}",
            kube::runtime::controller::Action::requeue(Duration::from_secs(10))
        )
    );

    // Run the real controllers: creating the KnowledgeBase (with a generation) reaches the
    // Router through the watch mapping and its children appear.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        let mut rx = stop_rx;
        let _ = rx.wait_for(|s| *s).await;
    };
    let run = tokio::spawn(controllers::run(
        w.ctx.clone(),
        Some(w.ns.clone()),
        futures::FutureExt::shared(Box::pin(shutdown)),
    ));
    create_kb(&w.client, Some(1)).await;
    let cms: Api<ConfigMap> = Api::default_namespaced(w.client.clone());
    let mut found = None;
    for _ in 0..100 {
        if let Some(cm) = cms.get_opt("frontline-runtime").await.unwrap() {
            found = Some(cm);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        found.is_some(),
        "the Router was not reconciled after its KnowledgeBase appeared"
    );
    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .unwrap()
        .unwrap();
    assert!(
        w.metrics
            .render()
            .contains("switchboard_operator_reconciles_total{controller=\"router\",result=\"ok\"}")
    );
}

/// Answers per adapter version: every version has 2000 interactions and 1000 mirrored shadow
/// requests; escalations are 10% unless the version is marked bad (20%); 1% refusals.
fn helpdesk(bad: Arc<AtomicBool>, bad_version: &'static str) -> FnSource {
    FnSource::new(move |q| {
        let version = ["1.0.0", "1.1.0", "1.2.0"]
            .into_iter()
            .find(|v| q.contains(&format!("adapter_version=\"{v}\"")));
        let Some(version) = version else {
            return Ok(Vec::new());
        };
        let is_bad = version == bad_version && bad.load(Ordering::Relaxed);
        if q.contains("switchboard_shadow_requests_total") {
            Ok(scalar(1000.0))
        } else if q.contains("switchboard_shadow_checks_total") {
            Ok(scalar(20.0))
        } else if q.contains("switchboard_answer_checks_total") {
            // A guardrail needs expected events in both arms to decide (zero refusals on both
            // sides would hold the rollout with InsufficientSamples).
            Ok(scalar(20.0))
        } else if q.contains("switchboard_interactions_total") {
            Ok(scalar(2000.0))
        } else if q.contains("outcome=\"escalated\"") {
            Ok(scalar(if is_bad { 400.0 } else { 200.0 }))
        } else {
            Ok(Vec::new())
        }
    })
}

fn patch(version: &str, sha: &str) -> AdapterPatch {
    serde_json::from_value(json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "AdapterPatch",
        "metadata": {"name": "pricing", "labels": {"team": "billing"}},
        "spec": {
            "lineage": "pricing", "baseModel": MODEL, "version": version,
            "artifact": {"uri": format!("file:///adapters/pricing/{version}"), "sha256": sha},
            "lora": {"rank": 4},
            "domain": {"description": "prices, plans and invoices"},
            "rollout": {
                "shadow": {"duration": "2m", "sampleShare": "20%"},
                "canary": {"steps": [{"weight": 10, "duration": "1m"}, {"weight": 50, "duration": "1m"}]},
                "postPromotionWatch": "10m",
            },
            "guardrails": [
                {"metric": "escalationRate", "maxRelativeIncrease": "5%", "window": "1h", "minSamples": 100},
                {"metric": "refusalRate", "maxRelativeIncrease": "50%", "window": "1h", "minSamples": 100},
            ],
        },
    }))
    .unwrap()
}

async fn reconcile_patch(w: &World) -> AdapterPatch {
    let p = get::<AdapterPatch>(&w.client, "pricing").await;
    adapter_patch::reconcile(Arc::new(p), w.ctx.clone())
        .await
        .unwrap();
    get::<AdapterPatch>(&w.client, "pricing").await
}

async fn set_version(w: &World, version: &str, sha: &str) {
    Api::<AdapterPatch>::default_namespaced(w.client.clone())
        .patch(
            "pricing",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"version": version, "artifact": {"uri": format!("file:///adapters/pricing/{version}"), "sha256": sha}}})),
        )
        .await
        .unwrap();
}

async fn compiled(w: &World) -> RuntimeConfig {
    let r = get::<Router>(&w.client, "frontline").await;
    router::reconcile(Arc::new(r), w.ctx.clone()).await.unwrap();
    let cm: ConfigMap = get(&w.client, "frontline-runtime").await;
    serde_json::from_str(&cm.data.unwrap()["runtime-config.json"]).unwrap()
}

#[tokio::test]
async fn an_adapter_walks_shadow_canary_promoted_and_a_breach_rolls_back_with_an_event() {
    let bad = Arc::new(AtomicBool::new(false));
    let w = world(helpdesk(bad.clone(), "1.2.0")).await;
    create_kb(&w.client, Some(1)).await;
    create_router(&w.client).await;
    Api::<AdapterPatch>::default_namespaced(w.client.clone())
        .create(&PostParams::default(), &patch("1.0.0", &digest('a')))
        .await
        .unwrap();

    // The first version has no baseline: promoted once verified.
    let p = reconcile_patch(&w).await;
    let s = p.status.clone().unwrap();
    assert_eq!(
        (s.phase, s.stable_version.as_deref()),
        (AdapterPhase::Promoted, Some("1.0.0"))
    );

    // 1.1.0: shadow, then two canary steps, then promoted; each step waits for its duration.
    set_version(&w, "1.1.0", &digest('b')).await;
    let s = reconcile_patch(&w).await.status.unwrap();
    assert_eq!(s.phase, AdapterPhase::Shadow);
    let config = compiled(&w).await;
    assert!(
        config
            .adapters
            .iter()
            .any(|a| a.version == "1.1.0" && a.role == AdapterRole::Shadow)
    );
    w.clock.advance(Duration::from_secs(60));
    let s = reconcile_patch(&w).await.status.unwrap();
    assert_eq!(s.phase, AdapterPhase::Shadow, "the shadow stage lasts 2m");
    assert_eq!(
        s.last_analysis.as_ref().unwrap().decision,
        AnalysisDecision::Continue
    );
    w.clock.advance(Duration::from_secs(61));
    let s = reconcile_patch(&w).await.status.unwrap();
    assert_eq!((s.phase, s.canary_weight), (AdapterPhase::Canary, Some(10)));
    let config = compiled(&w).await;
    let canary = config
        .adapters
        .iter()
        .find(|a| a.role == AdapterRole::Canary)
        .unwrap();
    assert_eq!(
        (canary.version.as_str(), canary.traffic_weight),
        ("1.1.0", Some(10))
    );
    w.clock.advance(Duration::from_secs(61));
    let s = reconcile_patch(&w).await.status.unwrap();
    assert_eq!((s.phase, s.canary_weight), (AdapterPhase::Canary, Some(50)));
    w.clock.advance(Duration::from_secs(61));
    let s = reconcile_patch(&w).await.status.unwrap();
    assert_eq!(
        (s.phase, s.stable_version.as_deref()),
        (AdapterPhase::Promoted, Some("1.1.0"))
    );
    let config = compiled(&w).await;
    let served: Vec<_> = config
        .adapters
        .iter()
        .map(|a| (a.version.as_str(), a.role))
        .collect();
    assert_eq!(served, [("1.1.0", AdapterRole::Stable)]);
    let seen = reasons_of(&events(&w.client, "pricing").await);
    for reason in [
        "RolloutStarted",
        reasons::SHADOW_ANALYSIS,
        reasons::CANARY_STEP,
        reasons::PROMOTED,
    ] {
        assert!(
            seen.contains(&reason.to_owned()),
            "no {reason} Event in {seen:?}"
        );
    }

    // 1.2.0 escalates twice as often: rolled back at its first canary step, with the numbers.
    bad.store(true, Ordering::Relaxed);
    w.clock.advance(Duration::from_secs(700));
    set_version(&w, "1.2.0", &digest('c')).await;
    let s = reconcile_patch(&w).await.status.unwrap();
    assert_eq!(s.phase, AdapterPhase::Shadow);
    // The previous stable version is compiled from its history entry, URI included.
    let config = compiled(&w).await;
    let stable = config
        .adapters
        .iter()
        .find(|a| a.role == AdapterRole::Stable)
        .unwrap();
    assert_eq!(
        stable.artifact.uri.as_deref(),
        Some("file:///adapters/pricing/1.1.0")
    );
    w.clock.advance(Duration::from_secs(121));
    let s = reconcile_patch(&w).await.status.unwrap();
    assert_eq!(s.phase, AdapterPhase::Canary);
    let s = reconcile_patch(&w).await.status.unwrap();
    assert_eq!(
        (s.phase, s.stable_version.as_deref()),
        (AdapterPhase::RolledBack, Some("1.1.0"))
    );
    let analysis = s.last_analysis.unwrap();
    assert_eq!(analysis.decision, AnalysisDecision::Rollback);
    let escalation = analysis
        .guardrails
        .iter()
        .find(|g| g.metric == "escalationRate")
        .unwrap();
    assert!(escalation.breached);
    assert_eq!(
        (escalation.baseline.events, escalation.candidate.events),
        (200, 400)
    );
    let degraded = find_condition(&s.conditions, cond::DEGRADED).unwrap();
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", reasons::GUARDRAIL_BREACHED)
    );
    let warning = events(&w.client, "pricing")
        .await
        .into_iter()
        .find(|e| e.reason.as_deref() == Some(reasons::GUARDRAIL_BREACHED))
        .expect("a GuardrailBreached Event");
    assert_eq!(warning.type_.as_deref(), Some("Warning"));
    assert!(warning.note.unwrap_or_default().contains("escalationRate"));
    let config = compiled(&w).await;
    assert!(
        config.adapters.iter().all(|a| a.version != "1.2.0"),
        "the runtime must stop serving 1.2.0"
    );
    let text = w.metrics.render();
    let rollback = format!(
        "switchboard_adapter_rollbacks_total{{lineage=\"pricing\",name=\"pricing\",namespace=\"{}\",reason=\"GuardrailBreached\"}} 1",
        w.ns
    );
    assert!(text.contains(&rollback), "{text}");
    assert!(text.contains("phase=\"RolledBack\"} 1"));
}

#[tokio::test]
async fn unreachable_metrics_hold_a_canary_and_bad_input_is_a_condition_not_a_crash() {
    let w = world(FnSource::new(|_| Err("connection refused".to_owned()))).await;
    create_kb(&w.client, Some(1)).await;
    create_router(&w.client).await;
    let api = Api::<AdapterPatch>::default_namespaced(w.client.clone());
    api.create(&PostParams::default(), &patch("1.0.0", &digest('a')))
        .await
        .unwrap();
    reconcile_patch(&w).await;
    set_version(&w, "1.1.0", &digest('b')).await;
    let s = reconcile_patch(&w).await.status.unwrap();
    assert_eq!(s.phase, AdapterPhase::Shadow);
    // Hours pass without metrics: the rollout holds in Shadow and says why.
    for _ in 0..5 {
        w.clock.advance(Duration::from_secs(3600));
        let s = reconcile_patch(&w).await.status.unwrap();
        assert_eq!(s.phase, AdapterPhase::Shadow);
        let g = find_condition(&s.conditions, cond::GUARDRAILS_HEALTHY).unwrap();
        assert_eq!(
            (g.status.as_str(), g.reason.as_str()),
            ("Unknown", reasons::METRICS_UNAVAILABLE)
        );
        assert!(g.message.contains("connection refused"), "{}", g.message);
    }

    // A digest mismatch fails the version with the reason and an Event; 1.0.0 keeps serving.
    w.artifacts.set(ArtifactCheck::Failed {
        reason: reasons::DIGEST_MISMATCH.to_owned(),
        message: "adapter_model.safetensors has digest sha256:00..".to_owned(),
    });
    set_version(&w, "1.2.0", &digest('c')).await;
    let s = reconcile_patch(&w).await.status.unwrap();
    assert_eq!(
        (s.phase, s.stable_version.as_deref()),
        (AdapterPhase::Failed, Some("1.0.0"))
    );
    let verified = find_condition(&s.conditions, cond::ARTIFACT_VERIFIED).unwrap();
    assert_eq!(
        (verified.status.as_str(), verified.reason.as_str()),
        ("False", reasons::DIGEST_MISMATCH)
    );
    assert!(
        reasons_of(&events(&w.client, "pricing").await)
            .contains(&reasons::DIGEST_MISMATCH.to_owned())
    );

    // A spec admission refuses: kube-apiserver names the field (the CRD's CEL rule)...
    let bad_steps = json!([{"weight": 50, "duration": "1m"}, {"weight": 10, "duration": "1m"}]);
    let refused = api
        .patch(
            "pricing",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"rollout": {"canary": {"steps": bad_steps}}}})),
        )
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("spec.rollout.canary.steps"),
        "{refused}"
    );
    // ...and one stored before the rule existed (an older CRD) is a condition and backoff, not a
    // crash: the reconciler validates what it reads.
    let mut stored = serde_json::to_value(get::<AdapterPatch>(&w.client, "pricing").await).unwrap();
    stored["spec"]["rollout"]["canary"]["steps"] = bad_steps;
    let p: Arc<AdapterPatch> = Arc::new(serde_json::from_value(stored).unwrap());
    let err = adapter_patch::reconcile(p.clone(), w.ctx.clone())
        .await
        .unwrap_err();
    assert_eq!(err.reason(), reasons::INVALID_SPEC);
    let s = get::<AdapterPatch>(&w.client, "pricing")
        .await
        .status
        .unwrap();
    let degraded = find_condition(&s.conditions, cond::DEGRADED).unwrap();
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", reasons::INVALID_SPEC)
    );
    assert!(
        degraded.message.contains("spec.rollout.canary.steps"),
        "{}",
        degraded.message
    );
    // The rollout state survives the failure.
    assert_eq!(s.stable_version.as_deref(), Some("1.0.0"));
    assert!(!s.history.is_empty());
    let delays: Vec<String> = (0..3)
        .map(|_| {
            format!(
                "{:?}",
                adapter_patch::error_policy(p.clone(), &err, w.ctx.clone())
            )
        })
        .collect();
    assert_ne!(delays[0], delays[1]);
    assert_ne!(delays[1], delays[2]);
}

#[tokio::test]
async fn one_leader_at_a_time_and_release_hands_over() {
    // As the chart's ServiceAccount, in the leader-election namespace its Role covers; a Lease
    // name of this test's own (the namespace is shared by the binary's tests).
    let ns = namespace().await;
    let client = plane().operator_client(OPERATOR_NAMESPACE).await;
    let lease = format!("leader-{ns}");
    let a = LeaseLock::new(
        client.clone(),
        OPERATOR_NAMESPACE,
        &lease,
        "a",
        Duration::from_secs(15),
    );
    let b = LeaseLock::new(
        client.clone(),
        OPERATOR_NAMESPACE,
        &lease,
        "b",
        Duration::from_secs(15),
    );
    let now = Timestamp::now();
    assert!(a.try_acquire_or_renew(now).await.unwrap());
    assert!(!b.try_acquire_or_renew(now).await.unwrap());
    assert!(
        a.try_acquire_or_renew(now).await.unwrap(),
        "the holder renews"
    );
    a.release().await.unwrap();
    assert!(
        b.try_acquire_or_renew(now).await.unwrap(),
        "a released Lease is taken at once"
    );
    assert!(!a.try_acquire_or_renew(now).await.unwrap());
    // An expired holder is replaced.
    let later = now
        .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(16))
        .unwrap();
    assert!(a.try_acquire_or_renew(later).await.unwrap());
}

async fn reconcile_kb(w: &World) -> KnowledgeBase {
    let kb = get::<KnowledgeBase>(&w.client, "help").await;
    knowledge_base::reconcile(Arc::new(kb), w.ctx.clone())
        .await
        .unwrap();
    get::<KnowledgeBase>(&w.client, "help").await
}

async fn jobs(w: &World) -> Vec<Job> {
    let mut jobs = Api::<Job>::default_namespaced(w.client.clone())
        .list(&ListParams::default().labels("switchboard.dev/knowledge-base=help"))
        .await
        .unwrap()
        .items;
    jobs.sort_by_key(knowledge_base::build::build_number);
    jobs
}

/// Plays kubelet and the Job controller: the build pod ends with `report` (or fails). The Job's
/// status is what the real Job controller writes, which kube-apiserver checks: `Complete` only
/// after `SuccessCriteriaMet`, `Failed` only after `FailureTarget`, a start time, and a
/// completion time on success alone.
async fn finish_build(w: &World, job: &str, report: Option<serde_json::Value>) {
    let jobs: Api<Job> = Api::default_namespaced(w.client.clone());
    let done = w.clock.now_string();
    let conditions = if report.is_some() {
        json!([
            {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached", "message": "Reached expected number of succeeded pods"},
            {"type": "Complete", "status": "True", "reason": "CompletionsReached", "message": "Reached expected number of succeeded pods"},
        ])
    } else {
        json!([
            {"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"},
            {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"},
        ])
    };
    let (succeeded, failed) = if report.is_some() { (1, 0) } else { (0, 3) };
    jobs.patch_status(
        job,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {
            "conditions": conditions,
            "startTime": done, "completionTime": if report.is_some() { json!(done) } else { json!(null) },
            "succeeded": succeeded, "failed": failed,
        }})),
    )
    .await
    .unwrap();
    if let Some(report) = report {
        let pods: Api<Pod> = Api::default_namespaced(w.client.clone());
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("{job}-x1"), "labels": {"job-name": job}},
            "spec": {"containers": [{"name": "indexer", "image": "runtime:test"}]},
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
        pods.patch_status(
            &format!("{job}-x1"),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"containerStatuses": [{
                "name": "indexer", "image": "runtime:test", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 0, "message": report.to_string()}},
            }]}})),
        )
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn a_knowledge_base_builds_in_a_job_and_reports_its_generation_keeping_the_previous_one() {
    let w = world(FnSource::empty()).await;
    create_kb(&w.client, None).await;
    let kb = reconcile_kb(&w).await;
    let claim: PersistentVolumeClaim = get(&w.client, "help-index").await;
    assert_eq!(
        claim.metadata.owner_references.unwrap()[0].kind,
        "KnowledgeBase"
    );
    let manifest: ConfigMap = get(&w.client, "help-kb").await;
    assert!(manifest.data.unwrap()["knowledgebase.json"].contains("\"faq\""));
    let built = jobs(&w).await;
    assert_eq!(built.len(), 1);
    let first = built[0].metadata.name.clone().unwrap();
    let s = kb.status.unwrap();
    let ready = find_condition(&s.conditions, cond::READY).unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", reasons::INDEX_BUILDING)
    );
    assert!(switchboard_crds::is_condition_true(
        &s.conditions,
        cond::PROGRESSING
    ));
    // Reconciling while it runs starts nothing new.
    reconcile_kb(&w).await;
    assert_eq!(jobs(&w).await.len(), 1);

    finish_build(
        &w,
        &first,
        Some(json!({"generation": 7, "documents": 12, "chunks": 80, "staleDocuments": 1,
                    "sourceErrors": [{"source": "faq", "file": "b.md", "reason": "ParseFailed", "message": "bad"}]})),
    )
    .await;
    let s = reconcile_kb(&w).await.status.unwrap();
    // Stale documents come from Prometheus, not from the build report (no Router uses this
    // KnowledgeBase here, so none is retrieved).
    assert_eq!(
        (s.index_generation, s.documents, s.chunks, s.stale_documents),
        (Some(7), Some(12), Some(80), Some(0))
    );
    assert!(switchboard_crds::is_condition_true(
        &s.conditions,
        cond::READY
    ));
    let sources = find_condition(&s.conditions, cond::SOURCES_HEALTHY).unwrap();
    assert_eq!(
        (sources.status.as_str(), sources.reason.as_str()),
        ("False", reasons::SOURCE_ERRORS)
    );
    assert!(sources.message.contains("faq/b.md"), "{}", sources.message);
    assert_eq!(
        jobs(&w).await.len(),
        1,
        "a finished build of the same spec is not repeated"
    );
    assert!(w.metrics.render().contains("result=\"succeeded\"} 1"));

    // A spec change builds again; a failure keeps generation 7 serving.
    Api::<KnowledgeBase>::default_namespaced(w.client.clone())
        .patch(
            "help",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"keepGenerations": 4}})),
        )
        .await
        .unwrap();
    reconcile_kb(&w).await;
    let built = jobs(&w).await;
    assert_eq!(built.len(), 2);
    let second = built[1].metadata.name.clone().unwrap();
    assert_ne!(second, first);
    w.clock.advance(Duration::from_secs(30));
    finish_build(&w, &second, None).await;
    let s = reconcile_kb(&w).await.status.unwrap();
    assert_eq!(s.index_generation, Some(7));
    let degraded = find_condition(&s.conditions, cond::DEGRADED).unwrap();
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", reasons::INDEX_BUILD_FAILED)
    );
    assert!(
        degraded.message.contains("generation 7 keeps serving"),
        "{}",
        degraded.message
    );
    assert!(switchboard_crds::is_condition_true(
        &s.conditions,
        cond::READY
    ));
    assert_eq!(
        jobs(&w).await.len(),
        2,
        "a failed build is not retried in a loop"
    );
    // A successful rebuild serves generation 8 and keeps 7 for switching back.
    Api::<KnowledgeBase>::default_namespaced(w.client.clone())
        .patch(
            "help",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"keepGenerations": 5}})),
        )
        .await
        .unwrap();
    reconcile_kb(&w).await;
    let third = jobs(&w).await[2].metadata.name.clone().unwrap();
    w.clock.advance(Duration::from_secs(30));
    finish_build(
        &w,
        &third,
        Some(json!({"generation": 8, "documents": 13, "chunks": 90})),
    )
    .await;
    let s = reconcile_kb(&w).await.status.unwrap();
    assert_eq!(
        (s.index_generation, s.previous_generation),
        (Some(8), Some(7))
    );
    assert!(!switchboard_crds::is_condition_true(
        &s.conditions,
        cond::DEGRADED
    ));
}

#[tokio::test]
async fn an_experiment_runs_is_compiled_measures_its_arms_and_concludes_at_its_size() {
    use switchboard_policy::{Outcome, Variant};
    use switchboard_store::{Interaction, OutcomeStore};
    let start = 1_800_000_000_i64;
    let ns = namespace().await;
    let dir = tempfile::tempdir().unwrap();
    let store = OutcomeStore::connect(&format!("sqlite://{}/o.db", dir.path().display()))
        .await
        .unwrap();
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let addr = serve_outcomes(store.clone(), asked.clone(), format!("{ns}/frontline")).await;
    // What the runtime stores: `units` new users per variant (the holdout its 10% share), each
    // asking twice at `at`; escalations 20% of users in control, 14% in rewrite (both of a
    // user's interactions), so the per-unit difference is exactly -6 points.
    let n = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let add_users = |units: u64, at: i64| {
        let (store, ns, n) = (store.clone(), ns.clone(), n.clone());
        async move {
            for (arm, count, rate) in [
                ("control", units, 0.20),
                ("rewrite", units, 0.14),
                ("holdout", units * 2 / 9, 0.20),
            ] {
                #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
                let escalating = (count as f64 * rate).round() as u64;
                for u in 0..count {
                    let user = n.fetch_add(1, Ordering::Relaxed);
                    for turn in 0..2 {
                        let id = format!("i{user}-{turn}");
                        store
                            .record_interaction(&Interaction {
                                id: id.clone(),
                                created_at: at + turn,
                                expires_at: at + 86_400,
                                unit: Some(format!("user-{user}")),
                                variant: Variant {
                                    router: format!("{ns}/frontline"),
                                    experiment: "rewrite".into(),
                                    arm: arm.into(),
                                    model: "small".into(),
                                    ..Variant::default()
                                },
                                segments: format!(
                                    "channel={}",
                                    if user % 4 == 0 { "email" } else { "chat" }
                                ),
                                ..Interaction::default()
                            })
                            .await
                            .unwrap();
                        if u < escalating {
                            // Reported hours after the answer.
                            store
                                .record_outcome(&id, Outcome::Escalated, at + 6 * 3600)
                                .await
                                .unwrap();
                        }
                    }
                }
            }
        }
    };
    let w = world_in(ns.clone(), FnSource::new(|_| Ok(Vec::new()))).await;
    let ctx = with_runtime(&w, addr);
    create_kb(&w.client, Some(1)).await;
    let r = create_router(&w.client).await;
    router::reconcile(Arc::new(r), w.ctx.clone()).await.unwrap();
    let api = Api::<Experiment>::default_namespaced(w.client.clone());
    let x: Experiment = serde_json::from_value(json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "Experiment",
        "metadata": {"name": "rewrite"},
        "spec": {
            "routerRef": {"name": "frontline"}, "salt": "2026-11",
            "holdout": {"share": "10%"},
            "variants": [{"name": "control", "weight": 50},
                         {"name": "rewrite", "weight": 50, "overrides": {"queryRewritePolicy": "Always"}}],
            "primaryMetric": {"name": "escalationRate", "direction": "Decrease"},
            "minimumDetectableEffect": {"absolute": "5%"},
            "expectedBaselineRate": "20%",
            "segments": ["channel"],
        },
    }))
    .unwrap();
    api.create(&PostParams::default(), &x).await.unwrap();
    let reconcile = || async {
        let x = get::<Experiment>(&w.client, "rewrite").await;
        experiment::reconcile(Arc::new(x), ctx.clone())
            .await
            .unwrap();
        get::<Experiment>(&w.client, "rewrite")
            .await
            .status
            .unwrap()
    };
    let s = reconcile().await;
    assert_eq!(s.phase, ExperimentPhase::Running);
    assert_eq!(s.started_at.as_ref().unwrap().0.as_second(), start);
    // No traffic declared: the whole layer.
    assert_eq!(s.allocation.map(|r| (r.start, r.end)), Some((0, 10_000)));
    let config = compiled(&w).await;
    assert_eq!(config.experiments.len(), 1);
    assert_eq!(config.experiments[0].control, "control");

    // Six hours in: 500 users per variant, 1,000 interactions each, none settled yet (72h).
    add_users(500, start + 60).await;
    w.clock.advance(Duration::from_secs(6 * 3600));
    let s = reconcile().await;
    assert_eq!((s.samples, s.holdout_samples), (Some(1000), Some(111)));
    assert_eq!(s.unsettled_interactions, Some(2 * 1111));
    assert!(!s.srm.as_ref().unwrap().detected);
    let rewrite = s.per_variant.iter().find(|v| v.name == "rewrite").unwrap();
    assert_eq!((rewrite.units, rewrite.trials), (500, 0));
    assert!(rewrite.estimate.is_none(), "nothing settled to compare");
    let request = asked.lock().unwrap().last().cloned().unwrap();
    assert!(
        request.starts_with("units rewrite ") && request.contains("escalationRate:259200s"),
        "{request}"
    );
    assert!(!request.contains("authorization=none"), "{request}");

    // Three days later they have settled: a unit-level estimate; not yet the planned size.
    w.clock.advance(Duration::from_secs(67 * 3600));
    let s = reconcile().await;
    assert_eq!(s.phase, ExperimentPhase::Running);
    assert_eq!(s.unsettled_interactions, Some(0));
    let required = s.required_samples_per_variant.unwrap();
    assert!((500..1000).contains(&required), "{required}");
    assert!(s.eta.is_some());
    let rewrite = s.per_variant.iter().find(|v| v.name == "rewrite").unwrap();
    assert_eq!(
        (rewrite.units, rewrite.trials, rewrite.events),
        (500, 1000, 140)
    );
    assert!((rewrite.estimate.unwrap() + 0.06).abs() < 1e-9);
    assert!(rewrite.p_value.unwrap() < 0.05);
    assert_eq!(rewrite.adjusted_p_value, rewrite.p_value, "one comparison");
    // Broken down by channel: every rewrite unit is in one of the two values.
    let values: Vec<&str> = s.per_segment.iter().map(|r| r.value.as_str()).collect();
    assert_eq!(values, ["chat", "email"], "{:?}", s.per_segment);
    let rewrite_units: i64 = s
        .per_segment
        .iter()
        .map(|r| {
            r.variants
                .iter()
                .find(|v| v.name == "rewrite")
                .unwrap()
                .units
        })
        .sum();
    assert_eq!(rewrite_units, 500);
    assert!(w.metrics.render().contains(&format!(
        "switchboard_experiment_samples{{arm=\"rewrite\",name=\"rewrite\",namespace=\"{}\"}} 500",
        w.ns
    )));

    // 500 more users per variant; once they have settled it concludes at the planned size, and
    // the Router stops compiling it.
    add_users(500, start + 73 * 3600).await;
    w.clock.advance(Duration::from_secs(3600));
    let s = reconcile().await;
    assert_eq!(s.phase, ExperimentPhase::Running, "{:?}", s.message);
    assert_eq!(s.samples, Some(2000));
    w.clock.advance(Duration::from_secs(73 * 3600));
    let s = reconcile().await;
    assert_eq!(
        (s.phase, s.decision, s.winner.as_deref()),
        (
            ExperimentPhase::Concluded,
            ExperimentDecision::ShipVariant,
            Some("rewrite")
        ),
        "{:?}",
        s.message
    );
    assert!(s.message.as_deref().unwrap().contains("Holm-adjusted p"));
    assert!(compiled(&w).await.experiments.is_empty());
    assert!(
        reasons_of(&events(&w.client, "rewrite").await).contains(&reasons::CONCLUDED.to_owned())
    );
}

#[tokio::test]
async fn experiments_get_fixed_disjoint_ranges_and_a_full_layer_waits_with_the_reason() {
    let w = world(FnSource::new(|_| Ok(Vec::new()))).await;
    create_kb(&w.client, Some(1)).await;
    create_router(&w.client).await;
    let api = Api::<Experiment>::default_namespaced(w.client.clone());
    let make = |name: &str, traffic: &str| -> Experiment {
        serde_json::from_value(json!({
            "apiVersion": "switchboard.dev/v1alpha1", "kind": "Experiment",
            "metadata": {"name": name},
            "spec": {
                "routerRef": {"name": "frontline"}, "salt": name, "traffic": traffic,
                "variants": [{"name": "control", "weight": 50},
                             {"name": "treatment", "weight": 50, "overrides": {"queryRewritePolicy": "Always"}}],
                "primaryMetric": {"name": "escalationRate", "direction": "Decrease"},
                "minimumDetectableEffect": {"absolute": "5%"},
                "expectedBaselineRate": "20%",
            },
        }))
        .unwrap()
    };
    let reconcile = |name: &'static str| {
        let w = &w;
        async move {
            let x = get::<Experiment>(&w.client, name).await;
            experiment::reconcile(Arc::new(x), w.ctx.clone())
                .await
                .unwrap();
            get::<Experiment>(&w.client, name).await.status.unwrap()
        }
    };
    for (name, traffic) in [("tone", "30%"), ("rewrite", "50%"), ("big", "40%")] {
        api.create(&PostParams::default(), &make(name, traffic))
            .await
            .unwrap();
    }
    // Started together: disjoint ranges of their traffic's size.
    let (tone, rewrite) = tokio::join!(reconcile("tone"), reconcile("rewrite"));
    let (a, b) = (tone.allocation.unwrap(), rewrite.allocation.unwrap());
    assert_eq!((a.len(), b.len()), (3_000, 5_000));
    assert!(!a.overlaps(&b), "{a} and {b}");
    // 20% is left: the 40% one waits, and says why.
    let big = reconcile("big").await;
    assert_eq!(big.phase, ExperimentPhase::Pending);
    let c = find_condition(&big.conditions, "Allocated").unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "LayerFull")
    );
    assert!(
        c.message
            .contains("largest free range is 2000 buckets (20%)"),
        "{}",
        c.message
    );
    assert!(reasons_of(&events(&w.client, "big").await).contains(&"LayerFull".to_owned()));
    let config = compiled(&w).await;
    let ranges: Vec<_> = config
        .experiments
        .iter()
        .map(|x| (x.name.as_str(), x.range))
        .collect();
    assert_eq!(ranges.len(), 2, "{ranges:?}");
    assert!(ranges.contains(&("tone", a)) && ranges.contains(&("rewrite", b)));

    // rewrite stops: big takes its place; tone's range never moved.
    api.patch(
        "rewrite",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"switchboard.dev/action": "stop"}}})),
    )
    .await
    .unwrap();
    assert_eq!(reconcile("rewrite").await.phase, ExperimentPhase::Stopped);
    let big = reconcile("big").await;
    assert_eq!(big.phase, ExperimentPhase::Running);
    let c = big.allocation.unwrap();
    assert_eq!(c.len(), 4_000);
    assert!(!c.overlaps(&a));
    assert_eq!(reconcile("tone").await.allocation, Some(a));
    // Traffic is fixed once allocated.
    let refused = api
        .patch(
            "tone",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"traffic": "35%"}})),
        )
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("traffic is immutable"),
        "{refused}"
    );
}

async fn create_kb_reading(client: &Client, claim: &str) {
    let kb: KnowledgeBase = serde_json::from_value(json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "KnowledgeBase",
        "metadata": {"name": "help"},
        "spec": {"sources": [
            {"name": "faq", "format": "Markdown", "inline": {"a.md": "# A\nanswer"}},
            {"name": "policies", "format": "Markdown", "configMap": {"name": "policy-docs"}},
            {"name": "refunds", "format": "Markdown",
             "configMap": {"name": "policy-docs", "key": "refunds.md"}},
            {"name": "tickets", "format": "ZendeskTickets",
             "volume": {"path": "/data/tickets", "claimName": claim}},
        ]},
    }))
    .unwrap();
    Api::<KnowledgeBase>::default_namespaced(client.clone())
        .create(&PostParams::default(), &kb)
        .await
        .unwrap();
}

async fn put_config_map(client: &Client, data: serde_json::Value, labels: serde_json::Value) {
    let cm: ConfigMap = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "policy-docs", "labels": labels},
        "data": data,
    }))
    .unwrap();
    Api::<ConfigMap>::default_namespaced(client.clone())
        .patch(
            "policy-docs",
            &PatchParams::apply("test").force(),
            &Patch::Apply(&cm),
        )
        .await
        .unwrap();
}

async fn create_claim(client: &Client, name: &str) {
    let claim: PersistentVolumeClaim = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": "1Gi"}}},
    }))
    .unwrap();
    Api::<PersistentVolumeClaim>::default_namespaced(client.clone())
        .create(&PostParams::default(), &claim)
        .await
        .unwrap();
}

#[tokio::test]
async fn config_map_sources_are_mounted_rebuild_on_content_changes_and_a_missing_one_holds_the_build()
 {
    let w = world(FnSource::empty()).await;
    create_claim(&w.client, "zendesk-exports").await;
    create_kb_reading(&w.client, "zendesk-exports").await;

    // The ConfigMap does not exist yet: no Job, a condition naming it, backoff.
    let kb = Arc::new(get::<KnowledgeBase>(&w.client, "help").await);
    let err = knowledge_base::reconcile(kb.clone(), w.ctx.clone())
        .await
        .unwrap_err();
    assert_eq!(err.reason(), reasons::REFERENCE_NOT_FOUND);
    assert!(jobs(&w).await.is_empty(), "no build without its ConfigMap");
    let s = get::<KnowledgeBase>(&w.client, "help")
        .await
        .status
        .unwrap();
    let degraded = find_condition(&s.conditions, cond::DEGRADED).unwrap();
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", reasons::REFERENCE_NOT_FOUND)
    );
    assert!(
        degraded.message.contains("ConfigMap policy-docs"),
        "{}",
        degraded.message
    );
    let sources = find_condition(&s.conditions, cond::SOURCES_HEALTHY).unwrap();
    assert_eq!(sources.status, "False");
    let first = knowledge_base::error_policy(kb.clone(), &err, w.ctx.clone());
    let second = knowledge_base::error_policy(kb.clone(), &err, w.ctx.clone());
    assert_ne!(format!("{first:?}"), format!("{second:?}"), "backoff grows");
    let warnings: Vec<Event> = events(&w.client, "help")
        .await
        .into_iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .collect();
    assert!(
        warnings
            .iter()
            .any(|e| e.reason.as_deref() == Some(reasons::REFERENCE_NOT_FOUND)),
        "{warnings:?}"
    );

    // Creating the ConfigMap reaches the KnowledgeBase through the controller's watch: the
    // build starts.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        let mut rx = stop_rx;
        let _ = rx.wait_for(|s| *s).await;
    };
    let run = tokio::spawn(controllers::run(
        w.ctx.clone(),
        Some(w.ns.clone()),
        futures::FutureExt::shared(Box::pin(shutdown)),
    ));
    put_config_map(
        &w.client,
        json!({"refunds.md": "# Refunds\nWithin 30 days.", "shipping.md": "# Shipping\nFree."}),
        json!({}),
    )
    .await;
    let mut built = Vec::new();
    for _ in 0..100 {
        built = jobs(&w).await;
        if !built.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        built.len(),
        1,
        "the ConfigMap's creation did not start a build"
    );

    // The Job mounts the ConfigMap (whole, and one key) and the claim, read-only, and tells the
    // indexer where.
    let pod = built[0].spec.clone().unwrap().template.spec.unwrap();
    let args = pod.containers[0].args.clone().unwrap();
    assert!(
        args.windows(2)
            .any(|a| a == ["--sources-dir", "/etc/switchboard/sources"]),
        "{args:?}"
    );
    let mounts = pod.containers[0].volume_mounts.clone().unwrap();
    let volumes = pod.volumes.unwrap();
    let volume_at = |path: &str| {
        let m = mounts.iter().find(|m| m.mount_path == path).unwrap();
        assert_eq!(m.read_only, Some(true));
        volumes.iter().find(|v| v.name == m.name).unwrap().clone()
    };
    assert_eq!(
        volume_at("/etc/switchboard/sources/policies")
            .config_map
            .unwrap()
            .name,
        "policy-docs"
    );
    assert_eq!(
        volume_at("/etc/switchboard/sources/refunds")
            .config_map
            .unwrap()
            .items
            .unwrap()[0]
            .key,
        "refunds.md"
    );
    assert_eq!(
        volume_at("/data/tickets")
            .persistent_volume_claim
            .unwrap()
            .claim_name,
        "zendesk-exports"
    );

    let first_job = built[0].metadata.name.clone().unwrap();
    finish_build(
        &w,
        &first_job,
        Some(json!({"generation": 1, "documents": 4, "chunks": 8})),
    )
    .await;
    let s = reconcile_kb(&w).await.status.unwrap();
    assert_eq!(s.index_generation, Some(1));
    assert!(!switchboard_crds::is_condition_true(
        &s.conditions,
        cond::DEGRADED
    ));

    // Metadata-only changes do not rebuild; a content change does.
    put_config_map(
        &w.client,
        json!({"refunds.md": "# Refunds\nWithin 30 days.", "shipping.md": "# Shipping\nFree."}),
        json!({"team": "policy"}),
    )
    .await;
    reconcile_kb(&w).await;
    assert_eq!(jobs(&w).await.len(), 1, "relabelling rebuilt the index");
    put_config_map(
        &w.client,
        json!({"refunds.md": "# Refunds\nWithin 60 days.", "shipping.md": "# Shipping\nFree."}),
        json!({"team": "policy"}),
    )
    .await;
    reconcile_kb(&w).await;
    let built = jobs(&w).await;
    assert_eq!(built.len(), 2, "an edited ConfigMap did not rebuild");
    w.clock.advance(Duration::from_secs(30));
    finish_build(
        &w,
        built[1].metadata.name.as_deref().unwrap(),
        Some(json!({"generation": 2, "documents": 4, "chunks": 8})),
    )
    .await;
    reconcile_kb(&w).await;

    // The key a source reads disappears: held again, generation 2 keeps serving.
    put_config_map(
        &w.client,
        json!({"shipping.md": "# Shipping\nFree."}),
        json!({"team": "policy"}),
    )
    .await;
    let kb = Arc::new(get::<KnowledgeBase>(&w.client, "help").await);
    let err = knowledge_base::reconcile(kb, w.ctx.clone())
        .await
        .unwrap_err();
    assert_eq!(err.reason(), reasons::REFERENCE_NOT_FOUND);
    assert_eq!(jobs(&w).await.len(), 2);
    let s = get::<KnowledgeBase>(&w.client, "help")
        .await
        .status
        .unwrap();
    assert_eq!(s.index_generation, Some(2));
    assert!(switchboard_crds::is_condition_true(
        &s.conditions,
        cond::READY
    ));
    let degraded = find_condition(&s.conditions, cond::DEGRADED).unwrap();
    assert!(
        degraded.message.contains("policy-docs/refunds.md")
            && degraded.message.contains("generation 2 keeps serving"),
        "{}",
        degraded.message
    );
}

#[tokio::test]
async fn a_missing_claim_holds_the_build() {
    let w = world(FnSource::empty()).await;
    put_config_map(&w.client, json!({"refunds.md": "# R"}), json!({})).await;
    create_kb_reading(&w.client, "zendesk-exports").await;
    let kb = Arc::new(get::<KnowledgeBase>(&w.client, "help").await);
    let err = knowledge_base::reconcile(kb, w.ctx.clone())
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("PersistentVolumeClaim zendesk-exports"),
        "{err}"
    );
    assert!(jobs(&w).await.is_empty());
    create_claim(&w.client, "zendesk-exports").await;
    reconcile_kb(&w).await;
    assert_eq!(jobs(&w).await.len(), 1);
}

#[tokio::test]
async fn a_router_mounts_its_endpoint_secret_and_says_when_it_or_a_shared_index_is_missing() {
    let w = world(FnSource::empty()).await;
    create_kb(&w.client, Some(3)).await;
    let routers: Api<Router> = Api::default_namespaced(w.client.clone());
    let r: Router = serde_json::from_value(json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "Router",
        "metadata": {"name": "frontline"},
        "spec": {
            "knowledgeBaseRef": {"name": "help"},
            "smallModel": {"model": MODEL},
            "largeModel": {"endpoint": {"url": "https://llm.internal/v1", "model": "big",
                                        "secretRef": {"name": "llm-api", "key": "token"}}},
            "replicas": 2,
        },
    }))
    .unwrap();
    routers.create(&PostParams::default(), &r).await.unwrap();
    let reconcile = || async {
        let r = get::<Router>(&w.client, "frontline").await;
        router::reconcile(Arc::new(r), w.ctx.clone()).await.unwrap();
        get::<Router>(&w.client, "frontline").await.status.unwrap()
    };

    // The Secret is missing: the Router is still rolled out (the volume is optional) and says
    // what to create.
    let s = reconcile().await;
    let degraded = find_condition(&s.conditions, cond::DEGRADED).unwrap();
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", reasons::REFERENCE_NOT_FOUND)
    );
    assert!(
        degraded.message.contains("Secret llm-api"),
        "{}",
        degraded.message
    );
    let d: Deployment = get(&w.client, "frontline-runtime").await;
    let pod = d.spec.unwrap().template.spec.unwrap();
    let mount = pod.containers[0]
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.mount_path == "/var/run/switchboard/secrets/llm-api")
        .cloned()
        .unwrap();
    let volume = pod
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name == mount.name)
        .unwrap();
    assert_eq!(
        volume.secret.unwrap().secret_name.as_deref(),
        Some("llm-api")
    );
    // Two replicas on a ReadWriteOnce index: flagged, with a Warning Event.
    let shared = find_condition(&s.conditions, cond::INDEX_VOLUME_SHAREABLE).unwrap();
    assert_eq!(
        (shared.status.as_str(), shared.reason.as_str()),
        ("False", reasons::READ_WRITE_ONCE_INDEX)
    );
    let warnings: Vec<String> = events(&w.client, "frontline")
        .await
        .into_iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .filter_map(|e| e.reason)
        .collect();
    assert!(
        warnings.contains(&reasons::READ_WRITE_ONCE_INDEX.to_owned()),
        "{warnings:?}"
    );

    // The Secret exists but its owner has not opted it in (label switchboard.dev/usable):
    // nothing is applied (a change of the Router waits), and the Router says how to opt in.
    let secrets: Api<Secret> = Api::default_namespaced(w.client.clone());
    let secret = |key: &str, usable: bool| -> Secret {
        let labels = if usable {
            json!({"switchboard.dev/usable": "true"})
        } else {
            json!({})
        };
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "llm-api", "labels": labels},
            "data": {key: "c2VjcmV0"},
        }))
        .unwrap()
    };
    secrets
        .create(&PostParams::default(), &secret("apiKey", false))
        .await
        .unwrap();
    routers
        .patch(
            "frontline",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await
        .unwrap();
    let r = get::<Router>(&w.client, "frontline").await;
    let err = router::reconcile(Arc::new(r), w.ctx.clone())
        .await
        .unwrap_err();
    assert_eq!(err.reason(), reasons::SECRET_NOT_USABLE, "{err}");
    let s = get::<Router>(&w.client, "frontline").await.status.unwrap();
    let degraded = find_condition(&s.conditions, cond::DEGRADED).unwrap();
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", reasons::SECRET_NOT_USABLE)
    );
    assert!(
        degraded.message.contains(
            "Secret llm-api (spec.largeModel.endpoint.secretRef) is not labelled switchboard.dev/usable=true"
        ) && degraded.message.contains("kubectl label secret llm-api"),
        "{}",
        degraded.message
    );
    let d: Deployment = get(&w.client, "frontline-runtime").await;
    assert_eq!(d.spec.unwrap().replicas, Some(2), "children untouched");

    // Opted in, a Secret without the key is still a problem; with it, the condition clears.
    secrets
        .patch(
            "llm-api",
            &PatchParams::apply("test").force(),
            &Patch::Apply(&secret("apiKey", true)),
        )
        .await
        .unwrap();
    let s = reconcile().await;
    let degraded = find_condition(&s.conditions, cond::DEGRADED).unwrap();
    assert!(
        degraded.status == "True" && degraded.message.contains("no key token"),
        "{degraded:?}"
    );
    secrets
        .patch(
            "llm-api",
            &PatchParams::apply("test").force(),
            &Patch::Apply(&secret("token", true)),
        )
        .await
        .unwrap();
    // One replica: a ReadWriteOnce index is fine.
    routers
        .patch(
            "frontline",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 1}})),
        )
        .await
        .unwrap();
    let s = reconcile().await;
    assert!(!switchboard_crds::is_condition_true(
        &s.conditions,
        cond::DEGRADED
    ));
    assert!(switchboard_crds::is_condition_true(
        &s.conditions,
        cond::INDEX_VOLUME_SHAREABLE
    ));
}

/// An AdapterPatch of lineage `pricing` on `uri`, selected by `create_router`'s Router.
fn patch_at(version: &str, uri: &str, sha: &str) -> AdapterPatch {
    let mut p = patch(version, sha);
    p.spec.artifact.uri = uri.to_owned();
    p
}

async fn set_artifact(w: &World, version: &str, uri: &str, sha: &str) {
    Api::<AdapterPatch>::default_namespaced(w.client.clone())
        .patch(
            "pricing",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"version": version, "artifact": {"uri": uri, "sha256": sha}}}),
            ),
        )
        .await
        .unwrap();
}

async fn verify_jobs(w: &World) -> Vec<Job> {
    Api::<Job>::default_namespaced(w.client.clone())
        .list(&ListParams::default().labels("switchboard.dev/adapter-patch=pricing"))
        .await
        .unwrap()
        .items
}

/// The report `switchboard-runtime verify-artifact` writes for a directory with these weights.
fn verify_report(uri: &str, sha: &str) -> serde_json::Value {
    json!({"uri": uri, "sha256": sha, "config": json!({"peft_type": "LORA", "r": 4}).to_string()})
}

fn artifact_condition(
    p: &AdapterPatch,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    find_condition(
        &p.status.as_ref().unwrap().conditions,
        cond::ARTIFACT_VERIFIED,
    )
    .unwrap()
    .clone()
}

#[tokio::test]
async fn a_pvc_artifact_is_verified_by_a_job_mounted_into_the_runtime_and_a_mismatch_fails_the_version()
 {
    let w = world(FnSource::empty()).await;
    create_kb(&w.client, Some(1)).await;
    create_router(&w.client).await;
    let v1 = "pvc://adapters/pricing/1.0.0";
    Api::<AdapterPatch>::default_namespaced(w.client.clone())
        .create(&PostParams::default(), &patch_at("1.0.0", v1, &digest('a')))
        .await
        .unwrap();

    // The claim does not exist yet: no Job, the artifact is unavailable (retried) and says why.
    let p = reconcile_patch(&w).await;
    let c = artifact_condition(&p);
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", reasons::ARTIFACT_UNAVAILABLE)
    );
    assert!(
        c.message
            .contains("PersistentVolumeClaim adapters does not exist"),
        "{}",
        c.message
    );
    assert!(verify_jobs(&w).await.is_empty());

    // With the claim: a verification Job mounts it read-only where the runtime will, and the
    // version waits for it.
    create_claim(&w.client, "adapters").await;
    let p = reconcile_patch(&w).await;
    assert_eq!(p.status.as_ref().unwrap().phase, AdapterPhase::Validating);
    assert_eq!(artifact_condition(&p).status, "Unknown");
    let jobs = verify_jobs(&w).await;
    assert_eq!(jobs.len(), 1);
    let job = &jobs[0];
    let job_name = job.metadata.name.clone().unwrap();
    let owner = &job.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("AdapterPatch", Some(true))
    );
    let pod = job.spec.clone().unwrap().template.spec.unwrap();
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some("runtime:test"));
    let args = c.args.clone().unwrap();
    assert_eq!(&args[..3], ["verify-artifact", "--uri", v1]);
    let mount = &c.volume_mounts.as_ref().unwrap()[0];
    assert_eq!(
        (mount.mount_path.as_str(), mount.read_only),
        ("/var/run/switchboard/pvc/adapters", Some(true))
    );
    let claim = pod.volumes.unwrap()[0]
        .persistent_volume_claim
        .clone()
        .unwrap();
    assert_eq!(
        (claim.claim_name.as_str(), claim.read_only),
        ("adapters", Some(true))
    );
    // A reconcile while it runs starts no second Job.
    reconcile_patch(&w).await;
    assert_eq!(verify_jobs(&w).await.len(), 1);

    // The pod reports the digest the spec names: verified, and (first version) promoted.
    finish_build(&w, &job_name, Some(verify_report(v1, &digest('a')))).await;
    let p = reconcile_patch(&w).await;
    let s = p.status.clone().unwrap();
    assert_eq!(artifact_condition(&p).status, "True");
    assert_eq!(s.stable_version.as_deref(), Some("1.0.0"));

    // The Router mounts the claim read-only at the runtime's --pvc-root and serves the pvc://
    // URI, which the runtime resolves under it.
    let config = compiled(&w).await;
    let served = config.adapter("pricing", "1.0.0").unwrap();
    assert_eq!(served.artifact.uri.as_deref(), Some(v1));
    let d: Deployment = get(&w.client, "frontline-runtime").await;
    let pod = d.spec.unwrap().template.spec.unwrap();
    let c = &pod.containers[0];
    let args = c.args.clone().unwrap();
    let root = args.iter().position(|a| a == "--pvc-root").unwrap();
    assert_eq!(args[root + 1], "/var/run/switchboard/pvc");
    let mount = c
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.mount_path == "/var/run/switchboard/pvc/adapters")
        .cloned()
        .unwrap();
    assert_eq!(mount.read_only, Some(true));
    let volume = pod
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name == mount.name)
        .unwrap();
    let claim = volume.persistent_volume_claim.unwrap();
    assert_eq!(
        (claim.claim_name.as_str(), claim.read_only),
        ("adapters", Some(true))
    );

    // 1.1.0's weights on the claim are not the ones its spec names: DigestMismatch, the version
    // fails with a Warning Event, 1.0.0 keeps serving. No crash loop: the check is final.
    let v2 = "pvc://adapters/pricing/1.1.0";
    set_artifact(&w, "1.1.0", v2, &digest('b')).await;
    reconcile_patch(&w).await;
    let job_name = verify_jobs(&w)
        .await
        .into_iter()
        .filter_map(|j| j.metadata.name)
        .find(|n| *n != job_name)
        .expect("a new Job for the new version");
    finish_build(&w, &job_name, Some(verify_report(v2, &digest('c')))).await;
    let p = reconcile_patch(&w).await;
    let s = p.status.clone().unwrap();
    let c = artifact_condition(&p);
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", reasons::DIGEST_MISMATCH)
    );
    assert!(
        c.message.contains(v2) && c.message.contains(&digest('c')),
        "{}",
        c.message
    );
    assert_eq!(s.phase, AdapterPhase::Failed);
    assert_eq!(s.stable_version.as_deref(), Some("1.0.0"));
    let config = compiled(&w).await;
    assert!(config.adapter("pricing", "1.1.0").is_none());
    assert!(config.adapter("pricing", "1.0.0").is_some());
    assert!(
        reasons_of(&events(&w.client, "pricing").await)
            .contains(&reasons::DIGEST_MISMATCH.to_owned())
    );
    // Failed is final: reconciling again starts no new Job.
    let before = verify_jobs(&w).await.len();
    reconcile_patch(&w).await;
    assert_eq!(verify_jobs(&w).await.len(), before);

    // A Job that fails (the pod never started: an unbound claim) is unavailable, deleted, and
    // the next check starts it again.
    let v3 = "pvc://adapters/pricing/1.2.0";
    set_artifact(&w, "1.2.0", v3, &digest('d')).await;
    let p = reconcile_patch(&w).await;
    let job_name = adapter_patch::verify_job::job_name("pricing", &p.spec);
    let names = |jobs: Vec<Job>| -> Vec<String> {
        jobs.into_iter().filter_map(|j| j.metadata.name).collect()
    };
    assert!(names(verify_jobs(&w).await).contains(&job_name));
    finish_build(&w, &job_name, None).await;
    let p = reconcile_patch(&w).await;
    let c = artifact_condition(&p);
    assert_eq!(c.reason, reasons::ARTIFACT_UNAVAILABLE);
    assert!(c.message.contains("failed"), "{}", c.message);
    assert_eq!(p.status.as_ref().unwrap().phase, AdapterPhase::Validating);
    let remaining = names(verify_jobs(&w).await);
    assert!(!remaining.contains(&job_name), "{remaining:?}");
    reconcile_patch(&w).await;
    let remaining = names(verify_jobs(&w).await);
    assert!(
        remaining.contains(&job_name),
        "started again: {remaining:?}"
    );
}

#[tokio::test]
async fn an_oci_artifact_pull_secret_is_read_by_the_check_and_mounted_into_the_runtime() {
    use k8s_openapi::ByteString;
    let w = world(FnSource::empty()).await;
    create_kb(&w.client, Some(1)).await;
    create_router(&w.client).await;
    let uri = "oci://registry.example.com/adapters/pricing:1.0.0";
    let mut p = patch_at("1.0.0", uri, &digest('a'));
    p.spec.artifact.pull_secret_ref = Some(switchboard_crds::ObjectRef::new("registry-creds"));
    Api::<AdapterPatch>::default_namespaced(w.client.clone())
        .create(&PostParams::default(), &p)
        .await
        .unwrap();

    // The Secret does not exist: unavailable, naming it (retried until it does).
    let p = reconcile_patch(&w).await;
    let c = artifact_condition(&p);
    assert_eq!(c.reason, reasons::ARTIFACT_UNAVAILABLE);
    assert!(c.message.contains("Secret registry-creds"), "{}", c.message);

    let docker_config =
        json!({"auths": {"registry.example.com": {"username": "u", "password": "p"}}});
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("registry-creds".into()),
            namespace: Some(w.ns.clone()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/dockerconfigjson".into()),
        data: Some(std::collections::BTreeMap::from([(
            ".dockerconfigjson".to_owned(),
            ByteString(docker_config.to_string().into_bytes()),
        )])),
        ..Secret::default()
    };
    let secrets = Api::<Secret>::default_namespaced(w.client.clone());
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    // Not opted in by its owner: unavailable, saying how.
    let p = reconcile_patch(&w).await;
    let c = artifact_condition(&p);
    assert_eq!(c.reason, reasons::ARTIFACT_UNAVAILABLE);
    assert!(
        c.message
            .contains("is not labelled switchboard.dev/usable=true"),
        "{}",
        c.message
    );
    secrets
        .patch(
            "registry-creds",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"switchboard.dev/usable": "true"}}})),
        )
        .await
        .unwrap();
    let p = reconcile_patch(&w).await;
    assert_eq!(artifact_condition(&p).status, "True");

    // The runtime gets the Secret's name with the artifact and the Secret where it reads it.
    let config = compiled(&w).await;
    let served = config.adapter("pricing", "1.0.0").unwrap();
    assert_eq!(
        served.artifact.pull_secret.as_deref(),
        Some("registry-creds")
    );
    let d: Deployment = get(&w.client, "frontline-runtime").await;
    let pod = d.spec.unwrap().template.spec.unwrap();
    let mount = pod.containers[0]
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.mount_path == "/var/run/switchboard/secrets/registry-creds")
        .cloned()
        .unwrap();
    assert_eq!(mount.read_only, Some(true));
    let volume = pod
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name == mount.name)
        .unwrap();
    assert_eq!(
        volume.secret.unwrap().secret_name.as_deref(),
        Some("registry-creds")
    );
}

/// The runtime's admin side of an Experiment's analysis: `GET /v1/experiments/{name}/units` and
/// `.../cuped` answered from a real outcome store (SQLite) filled with simulated units, as the
/// runtime's handlers do. Every request is logged with its query and authorization.
async fn serve_outcomes(
    store: switchboard_store::OutcomeStore,
    asked: Arc<std::sync::Mutex<Vec<String>>>,
    router: String,
) -> std::net::SocketAddr {
    use axum::extract::{Path, Query, State};
    type Shared = (
        switchboard_store::OutcomeStore,
        Arc<std::sync::Mutex<Vec<String>>>,
        String,
    );
    fn log(asked: &std::sync::Mutex<Vec<String>>, what: String, headers: &http::HeaderMap) {
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none");
        asked
            .lock()
            .unwrap()
            .push(format!("{what} authorization={auth}"));
    }
    fn metric(name: &str) -> switchboard_crds::Metric {
        serde_json::from_value(json!(name)).unwrap()
    }
    async fn cuped(
        State((store, asked, router)): State<Shared>,
        Path(name): Path<String>,
        Query(q): Query<std::collections::BTreeMap<String, String>>,
        headers: http::HeaderMap,
    ) -> axum::Json<switchboard_store::CupedData> {
        log(&asked, format!("cuped {name} {q:?}"), &headers);
        let data = store
            .cuped(&switchboard_store::CupedQuery {
                router: &router,
                experiment: &name,
                metric: metric(&q["metric"]),
                covariate: metric(&q["covariate"]),
                started_at: q["startedAt"].parse().unwrap(),
                preperiod: switchboard_crds::parse_duration(&q["preperiod"]).unwrap(),
                now: q["until"].parse().unwrap(),
            })
            .await
            .unwrap();
        axum::Json(data)
    }
    async fn units(
        State((store, asked, router)): State<Shared>,
        Path(name): Path<String>,
        Query(q): Query<std::collections::BTreeMap<String, String>>,
        headers: http::HeaderMap,
    ) -> axum::Json<switchboard_store::ExperimentUnits> {
        log(&asked, format!("units {name} {q:?}"), &headers);
        let mut metrics = Vec::new();
        let mut settle = std::collections::BTreeMap::new();
        for item in q["metrics"].split(',') {
            let (m, window) = item.split_once(':').unwrap();
            metrics.push(metric(m));
            settle.insert(metric(m), switchboard_crds::parse_duration(window).unwrap());
        }
        let data = store
            .experiment_units(&switchboard_store::UnitsQuery {
                router: &router,
                experiment: &name,
                metrics: &metrics,
                started_at: q["startedAt"].parse().unwrap(),
                now: q["until"].parse().unwrap(),
                settle: &settle,
                segments: &q
                    .get("segments")
                    .map(|s| s.split(',').map(str::to_owned).collect::<Vec<_>>())
                    .unwrap_or_default(),
            })
            .await
            .unwrap();
        axum::Json(data)
    }
    let app = axum::Router::new()
        .route("/v1/experiments/{name}/cuped", axum::routing::get(cuped))
        .route("/v1/experiments/{name}/units", axum::routing::get(units))
        .with_state((store, asked, router));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// A context reading outcomes from the stand-in at `addr`, with the Router's admin token.
fn with_runtime(w: &World, addr: std::net::SocketAddr) -> Arc<Context> {
    Arc::new(
        (*w.ctx).clone().with_outcomes(Arc::new(
            switchboard_operator::outcomes::RuntimeOutcomes::new(
                format!("http://{addr}"),
                Duration::from_secs(10),
            )
            .with_admin_tokens(w.client.clone()),
        )),
    )
}

#[tokio::test]
async fn an_experiment_with_cuped_reads_per_unit_outcomes_and_adjusts_its_estimates() {
    use switchboard_policy::{Outcome, Variant};
    use switchboard_store::{Interaction, OutcomeStore};
    let start = 1_800_000_000_i64;
    let ns = namespace().await;
    let dir = tempfile::tempdir().unwrap();
    let store = OutcomeStore::connect(&format!("sqlite://{}/o.db", dir.path().display()))
        .await
        .unwrap();
    // 300 users with their own escalation propensity: 10 interactions in the week before the
    // start, 4 during it; the rewrite arm escalates 10 points less.
    let mut seed = 3_u64;
    let mut uniform = move || {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        (seed >> 11) as f64 / (1_u64 << 53) as f64
    };
    let (mut interactions, mut escalations) = ([0_u64; 2], [0_u64; 2]);
    let mut n = 0;
    for unit in 0..300 {
        let arm = unit % 2;
        let propensity = 0.1 + 0.6 * uniform();
        for i in 0..14 {
            let during = i >= 10;
            let p = if during && arm == 1 {
                propensity - 0.1
            } else {
                propensity
            };
            n += 1;
            let id = format!("i{n}");
            let at = if during {
                start + 60 + i
            } else {
                start - 3 * 86_400 + i
            };
            store
                .record_interaction(&Interaction {
                    id: id.clone(),
                    created_at: at,
                    expires_at: at + 86_400,
                    unit: Some(format!("user-{unit}")),
                    variant: Variant {
                        router: format!("{ns}/frontline"),
                        experiment: if during {
                            "rewrite".into()
                        } else {
                            String::new()
                        },
                        arm: if during {
                            ["control", "rewrite"][arm].into()
                        } else {
                            String::new()
                        },
                        model: "small".into(),
                        ..Variant::default()
                    },
                    ..Interaction::default()
                })
                .await
                .unwrap();
            let escalated = uniform() < p;
            if escalated {
                store
                    .record_outcome(&id, Outcome::Escalated, at)
                    .await
                    .unwrap();
            }
            if during {
                interactions[arm] += 1;
                escalations[arm] += u64::from(escalated);
            }
        }
    }
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let addr = serve_outcomes(store, asked.clone(), format!("{ns}/frontline")).await;
    // Prometheus' per-arm counts agree with the store.
    let source = FnSource::new(move |q| {
        let arm = ["control", "rewrite"]
            .into_iter()
            .position(|a| q.contains(&format!("arm=\"{a}\"")));
        match arm {
            Some(a) if q.contains("switchboard_interactions_total") => {
                Ok(scalar(interactions[a] as f64))
            }
            Some(a) if q.contains("outcome=\"escalated\"") => Ok(scalar(escalations[a] as f64)),
            _ => Ok(Vec::new()),
        }
    });
    let w = world_in(ns, source).await;
    // The admin API is called with the Router's admin token, from its token Secret.
    let ctx = with_runtime(&w, addr);
    create_kb(&w.client, Some(1)).await;
    let r = create_router(&w.client).await;
    router::reconcile(Arc::new(r), w.ctx.clone()).await.unwrap();
    let secret = get::<Secret>(&w.client, "frontline-runtime-token").await;
    let admin_token = String::from_utf8(secret.data.unwrap()["admin-token"].0.clone()).unwrap();
    let x: Experiment = serde_json::from_value(json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "Experiment",
        "metadata": {"name": "rewrite"},
        "spec": {
            "routerRef": {"name": "frontline"}, "salt": "2026-12",
            "holdout": {"share": "0%"},
            "variants": [{"name": "control", "weight": 50}, {"name": "rewrite", "weight": 50}],
            "primaryMetric": {"name": "escalationRate", "direction": "Decrease"},
            "minimumDetectableEffect": {"absolute": "5%"},
            "expectedBaselineRate": "40%",
            "cuped": {"preperiod": "168h"},
        },
    }))
    .unwrap();
    Api::<Experiment>::default_namespaced(w.client.clone())
        .create(&PostParams::default(), &x)
        .await
        .unwrap();
    let reconcile = || async {
        let x = get::<Experiment>(&w.client, "rewrite").await;
        experiment::reconcile(Arc::new(x), ctx.clone())
            .await
            .unwrap();
        get::<Experiment>(&w.client, "rewrite")
            .await
            .status
            .unwrap()
    };
    // Start at the fake clock's time, then analyse once the escalations have settled (72h).
    let s = reconcile().await;
    assert_eq!(s.phase, ExperimentPhase::Running);
    assert_eq!(s.started_at.as_ref().unwrap().0.as_second(), start);
    w.clock.advance(Duration::from_secs(73 * 3600));
    let s = reconcile().await;

    let request = asked.lock().unwrap().last().cloned().unwrap();
    for part in [
        "cuped rewrite ",
        "\"metric\": \"escalationRate\"",
        "\"covariate\": \"escalationRate\"",
        &format!("\"startedAt\": \"{start}\""),
        "\"preperiod\": \"604800s\"",
        &format!("authorization=Bearer {}", admin_token.trim()),
    ] {
        assert!(request.contains(part), "{part} not in {request}");
    }
    let c = find_condition(&s.conditions, cond::CUPED_APPLIED).unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", reasons::CUPED_ADJUSTED),
        "{}",
        c.message
    );
    let rewrite = s.per_variant.iter().find(|v| v.name == "rewrite").unwrap();
    assert_eq!(rewrite.units_with_covariate, Some(150));
    let reduction = rewrite.variance_reduction.unwrap();
    assert!(reduction > 0.1, "variance reduction {reduction}");
    let (low, high) = (rewrite.ci_low.unwrap(), rewrite.ci_high.unwrap());
    assert!(low < -0.1 && -0.1 < high, "[{low}, {high}]");
    assert_ne!(rewrite.estimate, rewrite.unadjusted_estimate);
}

/// Prometheus for the staleness check: two stale documents over the minimum share on the
/// Router's runtimes, one with its last modification; `down` makes every query fail.
fn stale_source(down: Arc<AtomicBool>, empty: Arc<AtomicBool>) -> FnSource {
    use switchboard_operator::ports::Sample;
    let doc = |d: &str, v: f64| Sample {
        labels: [("document".to_owned(), d.to_owned())].into(),
        value: v,
    };
    FnSource::new(move |q| {
        if down.load(Ordering::SeqCst) {
            return Err("Prometheus answered HTTP 503".to_owned());
        }
        if empty.load(Ordering::SeqCst) {
            return Ok(Vec::new());
        }
        if q.starts_with("count (") {
            Ok(scalar(3.0))
        } else if q.contains("switchboard_document_last_modified_timestamp_seconds") {
            Ok(vec![doc("notes/refund-faq-2024.txt", 1_717_200_000.0)])
        } else if q.contains("switchboard_document_retrievals_total") {
            Ok(vec![
                doc("wiki/Refund-Policy.html", 0.012),
                doc("notes/refund-faq-2024.txt", 0.031),
            ])
        } else {
            Ok(Vec::new())
        }
    })
}

#[tokio::test]
async fn stale_documents_are_measured_on_the_routers_runtimes_and_contradictions_come_from_the_build()
 {
    let (down, empty) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let source = stale_source(down.clone(), empty.clone());
    let w = world(source.clone()).await;
    create_kb(&w.client, Some(3)).await;
    create_router(&w.client).await;

    let s = reconcile_kb(&w).await.status.unwrap();
    assert_eq!(s.stale_documents, Some(2));
    let top: Vec<(&str, &str)> = s
        .top_stale_documents
        .iter()
        .map(|d| (d.document.as_str(), d.query_share.as_str()))
        .collect();
    assert_eq!(
        top,
        [
            ("notes/refund-faq-2024.txt", "3.1%"),
            ("wiki/Refund-Policy.html", "1.2%")
        ]
    );
    assert_eq!(
        s.top_stale_documents[0]
            .last_modified
            .as_ref()
            .map(|t| t.0.as_second()),
        Some(1_717_200_000)
    );
    let fresh = find_condition(&s.conditions, cond::CONTENT_FRESH).unwrap();
    assert_eq!(
        (fresh.status.as_str(), fresh.reason.as_str()),
        ("False", reasons::STALE_DOCUMENTS_FOUND)
    );
    assert!(
        fresh.message.contains("notes/refund-faq-2024.txt (3.1%)")
            && fresh
                .message
                .contains("3 served documents are past staleAfter"),
        "{}",
        fresh.message
    );
    // Ready and Degraded are untouched: stale content is for review, not an outage.
    assert!(switchboard_crds::is_condition_true(
        &s.conditions,
        cond::READY
    ));
    assert!(!switchboard_crds::is_condition_true(
        &s.conditions,
        cond::DEGRADED
    ));
    let warning = events(&w.client, "help")
        .await
        .into_iter()
        .find(|e| e.reason.as_deref() == Some(reasons::STALE_DOCUMENTS_FOUND))
        .expect("a StaleDocumentsFound Event");
    assert_eq!(warning.type_.as_deref(), Some("Warning"));
    // Every query is scoped to the runtimes of the Router using the KnowledgeBase, over the
    // default window (90 days), with the default minimum share (0.5%).
    let asked = source.asked();
    assert_eq!(asked.len(), 3, "{asked:#?}");
    for q in &asked {
        assert!(
            q.contains(&format!(
                r#"switchboard_runtime_config_info{{router="{}/frontline"}}[7776000s]"#,
                w.ns
            )),
            "{q}"
        );
    }
    assert!(
        asked[0].contains(">= 0.005 and on (document)"),
        "{}",
        asked[0]
    );
    // The generation was recorded without a build report: not checked for contradictions.
    let consistent = find_condition(&s.conditions, cond::CONTENT_CONSISTENT).unwrap();
    assert_eq!(
        (consistent.status.as_str(), consistent.reason.as_str()),
        ("Unknown", reasons::NOT_CHECKED)
    );

    // A build whose report carries contradiction candidates.
    let job = jobs(&w).await[0].metadata.name.clone().unwrap();
    w.clock.advance(Duration::from_secs(30));
    finish_build(
        &w,
        &job,
        Some(json!({"generation": 4, "documents": 33, "chunks": 96, "sourceErrors": [],
            "contradictions": {"count": 5, "top": [
                {"kind": "duration", "a": {"document": "wiki/Refund-Policy.html", "value": "30 days"},
                 "b": {"document": "policies/refund-policy.md", "value": "14-day"}},
                {"kind": "duration", "a": {"document": "notes/refund-faq-2024.txt", "value": "30 days"},
                 "b": {"document": "policies/refund-policy.md", "value": "14 days"}}]}})),
    )
    .await;
    let s = reconcile_kb(&w).await.status.unwrap();
    assert_eq!((s.index_generation, s.contradictions), (Some(4), Some(5)));
    assert_eq!(s.top_contradictions.len(), 2);
    assert_eq!(
        (
            s.top_contradictions[0].document.as_str(),
            s.top_contradictions[0].value.as_str(),
            s.top_contradictions[0].other_document.as_str(),
            s.top_contradictions[0].other_value.as_str()
        ),
        (
            "wiki/Refund-Policy.html",
            "30 days",
            "policies/refund-policy.md",
            "14-day"
        )
    );
    let consistent = find_condition(&s.conditions, cond::CONTENT_CONSISTENT).unwrap();
    assert_eq!(
        (consistent.status.as_str(), consistent.reason.as_str()),
        ("False", reasons::CONTRADICTIONS_FOUND)
    );
    assert!(
        consistent
            .message
            .starts_with("5 contradiction candidates in index generation 4"),
        "{}",
        consistent.message
    );
    assert!(
        reasons_of(&events(&w.client, "help").await)
            .contains(&reasons::CONTRADICTIONS_FOUND.to_owned())
    );

    // Prometheus down: the last counts stay, the condition says they could not be measured.
    down.store(true, Ordering::SeqCst);
    let s = reconcile_kb(&w).await.status.unwrap();
    assert_eq!(s.stale_documents, Some(2));
    assert_eq!(s.top_stale_documents.len(), 2);
    let fresh = find_condition(&s.conditions, cond::CONTENT_FRESH).unwrap();
    assert_eq!(
        (fresh.status.as_str(), fresh.reason.as_str()),
        ("Unknown", reasons::METRICS_UNAVAILABLE)
    );
    assert!(fresh.message.contains("HTTP 503"), "{}", fresh.message);

    // The documents were updated (or stopped being retrieved): fresh again.
    down.store(false, Ordering::SeqCst);
    empty.store(true, Ordering::SeqCst);
    let s = reconcile_kb(&w).await.status.unwrap();
    assert_eq!(s.stale_documents, Some(0));
    assert!(s.top_stale_documents.is_empty());
    assert!(switchboard_crds::is_condition_true(
        &s.conditions,
        cond::CONTENT_FRESH
    ));
}

#[tokio::test]
async fn a_routers_outcome_store_is_shared_through_its_secret_or_flagged_per_pod() {
    let w = world(FnSource::empty()).await;
    create_kb(&w.client, Some(1)).await;
    create_router(&w.client).await;
    let routers = Api::<Router>::default_namespaced(w.client.clone());
    let reconcile = || async {
        let r = get::<Router>(&w.client, "frontline").await;
        router::reconcile(Arc::new(r), w.ctx.clone()).await.unwrap();
        get::<Router>(&w.client, "frontline").await.status.unwrap()
    };
    let condition = |s: &switchboard_crds::router::RouterStatus, t: &str| {
        let c = find_condition(&s.conditions, t).unwrap();
        (c.status.clone(), c.reason.clone(), c.message.clone())
    };

    // Two replicas with per-pod SQLite files: flagged.
    routers
        .patch(
            "frontline",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 2}})),
        )
        .await
        .unwrap();
    let s = reconcile().await;
    let (status, reason, message) = condition(&s, cond::OUTCOME_STORE_SHARED);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", reasons::PER_POD_OUTCOME_STORE)
    );
    assert!(message.contains("2 replicas"), "{message}");

    // PostgreSQL named, its Secret missing: Degraded names it; the pods get the URL from it.
    routers
        .patch(
            "frontline",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"outcomeStore": {"postgres": {"name": "outcomes-db", "key": "url"}}}})),
        )
        .await
        .unwrap();
    let s = reconcile().await;
    let (status, reason, message) = condition(&s, cond::DEGRADED);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", reasons::REFERENCE_NOT_FOUND)
    );
    assert!(
        message.contains("outcomes-db") && message.contains("spec.outcomeStore.postgres"),
        "{message}"
    );
    assert_eq!(condition(&s, cond::OUTCOME_STORE_SHARED).0, "True");
    let d = get::<Deployment>(&w.client, "frontline-runtime").await;
    let c = &d.spec.unwrap().template.spec.unwrap().containers[0];
    let env = c
        .env
        .as_ref()
        .unwrap()
        .iter()
        .find(|e| e.name == "SWITCHBOARD_OUTCOME_STORE")
        .unwrap();
    let key = env
        .value_from
        .as_ref()
        .unwrap()
        .secret_key_ref
        .as_ref()
        .unwrap();
    assert_eq!(
        (key.name.as_str(), key.key.as_str()),
        ("outcomes-db", "url")
    );
    assert!(
        !c.args
            .as_ref()
            .unwrap()
            .iter()
            .any(|a| a == "--outcome-store")
    );

    // The Secret appears: healthy.
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "outcomes-db", "labels": {"switchboard.dev/usable": "true"}},
        "stringData": {"url": "postgres://sb:pw@db:5432/switchboard"},
    }))
    .unwrap();
    Api::<Secret>::default_namespaced(w.client.clone())
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let s = reconcile().await;
    assert_eq!(condition(&s, cond::DEGRADED).0, "False");
}

#[tokio::test]
async fn a_router_holdout_pins_todays_versions_compares_and_ends() {
    use switchboard_analysis::{ArmUnits, ExperimentUnits, RatioMoments};
    use switchboard_crds::router::HoldoutPhase;
    let w = world(helpdesk(Arc::new(AtomicBool::new(false)), "9.9.9")).await;
    let outcomes = switchboard_operator::fakes::FixedOutcomes::default();
    let ctx = Arc::new((*w.ctx).clone().with_outcomes(Arc::new(outcomes.clone())));
    let reconcile = || async {
        let r = get::<Router>(&w.client, "frontline").await;
        router::reconcile(Arc::new(r), ctx.clone()).await.unwrap();
        let cm: ConfigMap = get(&w.client, "frontline-runtime").await;
        let config: RuntimeConfig =
            serde_json::from_str(&cm.data.unwrap()["runtime-config.json"]).unwrap();
        (get::<Router>(&w.client, "frontline").await, config)
    };
    create_kb(&w.client, Some(1)).await;
    create_router(&w.client).await;
    Api::<AdapterPatch>::default_namespaced(w.client.clone())
        .create(&PostParams::default(), &patch("1.0.0", &digest('a')))
        .await
        .unwrap();
    assert_eq!(
        reconcile_patch(&w)
            .await
            .status
            .unwrap()
            .stable_version
            .as_deref(),
        Some("1.0.0")
    );

    // A 5% holdout for an hour: pricing@1.0.0 is pinned, and said so.
    let routers = Api::<Router>::default_namespaced(w.client.clone());
    routers
        .patch(
            "frontline",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"holdout": {"share": "5%", "duration": "1h"}}})),
        )
        .await
        .unwrap();
    let (r, config) = reconcile().await;
    let h = r.status.unwrap().holdout.unwrap();
    assert_eq!(h.phase, HoldoutPhase::Running);
    assert_eq!(h.started_at.0.to_string(), w.clock.now_string());
    assert_eq!(
        h.pinned
            .iter()
            .map(|p| format!("{}@{}", p.lineage, p.version))
            .collect::<Vec<_>>(),
        ["pricing@1.0.0"]
    );
    let holdout = config.holdout.unwrap();
    assert_eq!(holdout.share.to_string(), "5%");
    assert_eq!(holdout.pinned["pricing"], "1.0.0");
    assert!(
        reasons_of(&events(&w.client, "frontline").await).contains(&"HoldoutStarted".to_owned())
    );

    // It cannot be changed while it exists (a new one would pin new versions).
    let err = routers
        .patch(
            "frontline",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"holdout": {"share": "10%"}}})),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains(switchboard_crds::router::messages::HOLDOUT_IMMUTABLE),
        "{err}"
    );

    // pricing ships 1.1.0: everyone else gets it, the holdout keeps 1.0.0 loaded.
    set_version(&w, "1.1.0", &digest('b')).await;
    Api::<AdapterPatch>::default_namespaced(w.client.clone())
        .patch_status(
            "pricing",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Promoted", "stableVersion": "1.1.0",
                "candidateVersion": "1.1.0", "history": [
                    {"version": "1.0.0", "sha256": digest('a'), "uri": "file:///adapters/pricing/1.0.0", "phase": "Superseded"},
                    {"version": "1.1.0", "sha256": digest('b'), "uri": "file:///adapters/pricing/1.1.0", "phase": "Promoted"}]}})),
        )
        .await
        .unwrap();
    // The runtime's report: held-out users escalate 20%, everyone else 15%.
    let group = |n: u64, escalating: u64| ArmUnits {
        units: n,
        interactions: 2 * n,
        metrics: [(
            "escalationRate".to_owned(),
            RatioMoments::from_units((0..n).map(|i| (if i < escalating { 1.0 } else { 0.0 }, 2.0))),
        )]
        .into_iter()
        .collect(),
    };
    outcomes.set_holdout(Ok(ExperimentUnits {
        arms: [
            ("holdout".to_owned(), group(1_000, 400)),
            ("exposed".to_owned(), group(19_000, 5_700)),
        ]
        .into_iter()
        .collect(),
        ..ExperimentUnits::default()
    }));
    w.clock.advance(Duration::from_secs(30 * 60));
    let (r, config) = reconcile().await;
    let roles: Vec<(String, AdapterRole)> = config
        .adapters
        .iter()
        .map(|a| (a.version.clone(), a.role))
        .collect();
    assert_eq!(
        roles,
        [
            ("1.1.0".to_owned(), AdapterRole::Stable),
            ("1.0.0".to_owned(), AdapterRole::Pinned)
        ]
    );
    let h = r.status.unwrap().holdout.unwrap();
    assert_eq!((h.units, h.exposed_units), (Some(1_000), Some(19_000)));
    let c = &h.comparisons[0];
    assert_eq!(c.metric.as_str(), "escalationRate");
    assert!(
        (c.holdout_rate - 0.2).abs() < 1e-9 && (c.exposed_rate - 0.15).abs() < 1e-9,
        "{c:?}"
    );
    assert!(c.ci_high < 0.0, "{c:?}");
    // What the operator asked the runtime: since the start, escalations settled for 72h.
    let asked = outcomes.holdout_asked();
    let last = asked.last().unwrap();
    assert_eq!(
        (last.started_at, last.metrics.clone()),
        (
            h.started_at.0.as_second(),
            vec![(
                switchboard_crds::Metric::EscalationRate,
                Duration::from_secs(72 * 3600)
            )]
        )
    );

    // An hour after the start it ends: its units rejoin, the comparison stays, said so.
    w.clock.advance(Duration::from_secs(31 * 60));
    let (r, config) = reconcile().await;
    let h = r.status.unwrap().holdout.unwrap();
    assert_eq!(h.phase, HoldoutPhase::Ended);
    assert_eq!(h.comparisons.len(), 1);
    assert!(config.holdout.is_none());
    assert!(
        config
            .adapters
            .iter()
            .all(|a| a.role != AdapterRole::Pinned)
    );
    let reasons = reasons_of(&events(&w.client, "frontline").await);
    assert!(reasons.contains(&"HoldoutEnded".to_owned()), "{reasons:?}");
}
