//! End to end, with the real binary, the real MiniLM encoder and the sample knowledge base:
//! a KnowledgeBase manifest -> index generation -> gRPC and HTTP retrieval -> bad input refused ->
//! metrics -> a newly published generation is picked up while serving -> switched back.

use crate::support;
use support::{Server, copy_dir, free_addr, http, http_with, root, runtime_cmd};

/// The client token the test's Router requires (`--client-token-file`).
const CLIENT_TOKEN: &str = "helpdesk-0123456789abcdef";

use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use switchboard_proto::v1::{RetrieveRequest, retrieval_client::RetrievalClient};

async fn retrieve(
    client: &mut RetrievalClient<tonic::transport::Channel>,
    query: &str,
) -> Result<switchboard_proto::v1::RetrieveResponse, tonic::Status> {
    retrieve_as(client, query, Some(CLIENT_TOKEN)).await
}

async fn retrieve_as(
    client: &mut RetrievalClient<tonic::transport::Channel>,
    query: &str,
    token: Option<&str>,
) -> Result<switchboard_proto::v1::RetrieveResponse, tonic::Status> {
    let mut request = tonic::Request::new(RetrieveRequest {
        query: query.to_owned(),
        top_k: 3,
        stages: None,
    });
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    client
        .retrieve(request)
        .await
        .map(tonic::Response::into_inner)
}

/// A public API request with the client token.
fn as_client(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let (status, _, body) = http_with(addr, method, path, body, Some(CLIENT_TOKEN));
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_retrieve_reject_switch_generations() {
    assert!(
        root()
            .join(".cache/models/all-MiniLM-L6-v2/model.safetensors")
            .exists(),
        "run hack/setup.sh models"
    );
    let work = tempfile::tempdir().unwrap();
    let kb_dir = work.path().join("kb");
    copy_dir(&root().join("examples/kb"), &kb_dir);
    let manifest = kb_dir.join("knowledgebase.yaml");
    let data = work.path().join("data");
    let grpc_addr = free_addr();
    let http_addr = free_addr();
    let admin_addr = free_addr();
    let clients = work.path().join("client-tokens");
    std::fs::write(&clients, format!("# the helpdesk\n{CLIENT_TOKEN}\n")).unwrap();

    let _server = Server(
        runtime_cmd()
            .arg("serve")
            .arg("--manifests")
            .arg(&manifest)
            .arg("--data")
            .arg(&data)
            .args(["--grpc-addr", &grpc_addr.to_string()])
            .args(["--http-addr", &http_addr.to_string()])
            .args(["--admin-addr", &admin_addr.to_string()])
            .arg("--client-token-file")
            .arg(&clients)
            .args(["--reload-interval", "200ms"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );

    // Ready once the first generation is built and loaded.
    let started = Instant::now();
    loop {
        if TcpStream::connect(http_addr).is_ok() && http(http_addr, "GET", "/readyz", "").0 == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "runtime not ready"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let mut client = RetrievalClient::connect(format!("http://{grpc_addr}"))
        .await
        .unwrap();
    let answer = retrieve(&mut client, "How many days do I have to request a refund?")
        .await
        .unwrap();
    let first_generation = answer.generation.clone();
    assert!(first_generation.starts_with("gen-"), "{first_generation}");
    assert!(!answer.passages.is_empty());
    let top = &answer.passages[0];
    assert!(
        top.breadcrumb.starts_with('['),
        "breadcrumb {:?}",
        top.breadcrumb
    );
    assert!(
        answer.passages.iter().any(|p| p.doc_id.contains("refund")),
        "no refund document in {:?}",
        answer
            .passages
            .iter()
            .map(|p| &p.doc_id)
            .collect::<Vec<_>>()
    );

    // The public API wants a client token, over both protocols; health and metrics stay open.
    let refused = retrieve_as(&mut client, "refund", None).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    let refused = retrieve_as(&mut client, "refund", Some("not-a-client-token-0123"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    let body = r#"{"query": "refund"}"#;
    let (status, head, _) = http_with(http_addr, "POST", "/v1/retrieve", body, None);
    assert_eq!(status, 401);
    assert!(head.contains("www-authenticate: Bearer"), "{head}");
    let (status, _, _) = http_with(
        http_addr,
        "POST",
        "/v1/retrieve",
        body,
        Some("not-a-client-token-0123"),
    );
    assert_eq!(status, 401);
    assert_eq!(http(http_addr, "GET", "/healthz", "").0, 200);
    // The admin API is not on the public listener, and wants the admin token: without
    // `--admin-token-file` one was written to `<data>/admin-token`, readable by its owner only.
    assert_eq!(http(http_addr, "GET", "/v1/hits?limit=5", "").0, 404);
    assert_eq!(http(admin_addr, "GET", "/v1/hits?limit=5", "").0, 401);
    let (status, _, _) = http_with(
        admin_addr,
        "GET",
        "/v1/hits?limit=5",
        "",
        Some(CLIENT_TOKEN),
    );
    assert_eq!(status, 401, "a client token is not an admin token");
    let admin_token = std::fs::read_to_string(data.join("admin-token")).unwrap();
    let admin_token = admin_token.trim();
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(data.join("admin-token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "admin-token mode {mode:o}");
    }

    // Bad input: clear errors naming the field, over both protocols.
    let empty = retrieve(&mut client, "  ").await.unwrap_err();
    assert_eq!(empty.code(), tonic::Code::InvalidArgument);
    assert!(empty.message().starts_with("query:"), "{}", empty.message());
    let huge = serde_json::json!({ "query": "refund ".repeat(1000) }).to_string();
    let (status, body) = as_client(http_addr, "POST", "/v1/retrieve", &huge);
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("query: ") && body.contains("exceeds"),
        "{body}"
    );
    let binary = serde_json::json!({ "query": "\u{0}\u{1}PK\u{3}\u{4}" }).to_string();
    let (status, body) = as_client(http_addr, "POST", "/v1/retrieve", &binary);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("binary"), "{body}");
    let (status, body) = as_client(http_addr, "POST", "/v1/retrieve", "{not json");
    assert_eq!(status, 400, "{body}");

    // The HTTP mirror answers like gRPC.
    let (status, body) = as_client(
        http_addr,
        "POST",
        "/v1/retrieve",
        r#"{"query": "How many days do I have to request a refund?", "topK": 3}"#,
    );
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["generation"], first_generation.as_str());
    assert_eq!(json["passages"][0]["chunkId"], top.chunk_id.as_str());

    // Metrics a dashboard needs.
    let (_, metrics) = http(http_addr, "GET", "/metrics", "");
    for needle in [
        "switchboard_retrieval_stage_seconds_bucket{stage=\"bm25\"",
        "switchboard_retrieval_stage_seconds_bucket{stage=\"dense\"",
        "switchboard_retrieval_requests_total{outcome=\"invalid_argument\",protocol=\"grpc\"} 1",
        "switchboard_retrieval_requests_total{outcome=\"ok\",protocol=\"http\"} 1",
        "switchboard_retrieval_concentration_ratio",
        "switchboard_document_retrievals_total{document=",
        "switchboard_auth_refused_total{api=\"public\",reason=\"missing\"} 2",
        "switchboard_auth_refused_total{api=\"public\",reason=\"invalid\"} 2",
        "switchboard_auth_refused_total{api=\"admin\",reason=\"missing\"} 1",
        "switchboard_auth_refused_total{api=\"admin\",reason=\"invalid\"} 1",
    ] {
        assert!(
            metrics.contains(needle),
            "metrics lack {needle}:\n{metrics}"
        );
    }

    let (status, _, body) = http_with(admin_addr, "GET", "/v1/hits?limit=5", "", Some(admin_token));
    assert_eq!(status, 200, "{body}");
    let hits: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        hits["chunks"].as_array().is_some_and(|c| !c.is_empty()),
        "{body}"
    );

    // A new policy is added and indexed by a second process; the server switches to it atomically.
    std::fs::write(
        kb_dir.join("policies/loyalty-programme.md"),
        "---\ntitle: Zorblax loyalty programme\nlast_modified: 2026-11-01\n---\n# Zorblax loyalty programme\n\n\
         Customers on any paid plan for 24 months earn Zorblax points worth 5% of their subscription.\n",
    )
    .unwrap();
    let index = runtime_cmd()
        .arg("index")
        .arg("--manifests")
        .arg(&manifest)
        .arg("--data")
        .arg(&data)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&index.stdout);
    assert!(
        index.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&index.stderr)
    );
    assert!(
        stdout.contains("(unchanged, reused)"),
        "unchanged sources were rebuilt:\n{stdout}"
    );

    let question = "What are Zorblax points?";
    let started = Instant::now();
    let second = loop {
        let answer = retrieve(&mut client, question).await.unwrap();
        if answer.generation != first_generation {
            break answer;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "new generation not picked up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        second.passages[0].text.contains("Zorblax"),
        "{:?}",
        second.passages[0]
    );

    // ... and back.
    let (status, _, body) = http_with(
        admin_addr,
        "POST",
        "/v1/generations/switch-back",
        "",
        Some(admin_token),
    );
    assert_eq!(status, 200, "{body}");
    let back = retrieve(&mut client, question).await.unwrap();
    assert_eq!(back.generation, first_generation);
    assert!(back.passages.iter().all(|p| !p.text.contains("Zorblax")));
}

#[test]
fn validate_admits_the_examples_and_refuses_what_the_api_server_would() {
    let ok = runtime_cmd()
        .arg("validate")
        .arg(root().join("examples/scenario.yaml"))
        .arg(root().join("examples/kb/knowledgebase.yaml"))
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    let work = tempfile::tempdir().unwrap();
    let bad = work.path().join("router.yaml");
    std::fs::write(
        &bad,
        "apiVersion: switchboard.dev/v1alpha1\nkind: Router\nmetadata: {name: support}\nspec:\n  knowledgeBaseRef: {name: kb}\n  smallModel: {model: /m}\n  largeModel: {local: {model: /l}}\n  rolout: {canary: {}}\n  difficulty: {threshold: 1.5}\n",
    )
    .unwrap();
    let refused = runtime_cmd().arg("validate").arg(&bad).output().unwrap();
    assert!(!refused.status.success());
    let out = String::from_utf8_lossy(&refused.stdout);
    for needle in [
        "spec.rolout: unknown field \"rolout\"",
        "spec.difficulty.threshold: 1.5 is greater than the maximum of 1.0",
    ] {
        assert!(out.contains(needle), "{needle}: {out}");
    }
}
