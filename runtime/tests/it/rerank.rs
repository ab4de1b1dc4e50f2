//! Operator mode, with the real binary: what a cluster's RuntimeConfig names is loaded at apply
//! time — the cross-encoder of `knowledgeBase.retrieval.rerank.model` (a small generated
//! `BertForSequenceClassification` checkpoint, the MiniLM tokenizer) and an adapter artifact —
//! both from `pvc://` URIs resolved under `--pvc-root`, where the Router mounts the claims.
//! `/v1/retrieve` then reports the rerank it applied; a config naming a model that does not exist
//! is rejected with the model named, and the config in force keeps serving; turning rerank off
//! hot-reloads too.

use crate::support;
use support::{root, runtime_cmd};

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard_crds::runtime_config::RuntimeConfig;

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Minimal HTTP/1.1 client (one request per connection).
fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn retrieve(addr: SocketAddr, query: &str) -> Value {
    let body = json!({"query": query}).to_string();
    let (status, text) = http(addr, "POST", "/v1/retrieve", &body);
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn copy_files(from: &Path, to: &Path, files: &[&str]) {
    std::fs::create_dir_all(to).unwrap();
    for file in files {
        std::fs::copy(from.join(file), to.join(file)).unwrap();
    }
}

/// A RuntimeConfig with `retrieval`, one `pvc://` adapter, and its content revision.
fn config(retrieval: Value, adapter_sha: &str) -> (String, String) {
    let value = json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "RuntimeConfig", "revision": "",
        "router": {"namespace": "support", "name": "helpdesk"},
        "knowledgeBase": {
            "name": "ledgerly-support", "indexGeneration": 1,
            "embeddingModel": root().join(".cache/models/all-MiniLM-L6-v2").canonicalize().unwrap(),
            "retrieval": retrieval,
        },
        "smallModel": {
            "model": "/models/SmolLM2-135M-Instruct.Q4_1.gguf",
            "maxActiveAdapters": 2, "maxNewTokens": 16,
        },
        "adapters": [{
            "name": "billing", "lineage": "billing", "version": "1.0.0", "role": "Stable",
            "artifact": {"uri": "pvc://adapters/billing/1.0.0", "sha256": adapter_sha},
            "lora": {"rank": 4, "alpha": 8.0, "targetModules": ["q_proj", "v_proj"]},
            "domain": {"description": "Refunds, invoices, billing and payments"},
        }],
        "largeModel": {"endpoint": {"url": "http://127.0.0.1:9/v1", "model": "none", "timeout": "5s"},
                       "maxQueueDepth": 1},
        "routerPolicy": {
            "difficultyThreshold": 0.99, "adapterSelection": {"topK": 1, "minSimilarity": 0.1},
            "queryRewrite": {"policy": "Never"}, "explorationShare": "0%", "shadowMaxConcurrent": 1,
        },
    });
    let mut c: RuntimeConfig = serde_json::from_value(value).unwrap();
    c.revision = format!(
        "sha256:{}",
        switchboard_artifact::sha256_hex(&c.canonical_bytes().unwrap())
    );
    let text = serde_json::to_string_pretty(&c).unwrap();
    RuntimeConfig::from_json(text.as_bytes()).unwrap();
    (c.revision, text)
}

/// Replaces the config file the way a ConfigMap volume does: write aside, rename over.
fn publish_config(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool, log: &Path) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < timeout,
            "{what} within {timeout:?}; runtime log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn rejected_reloads(addr: SocketAddr) -> f64 {
    let (_, metrics) = http(addr, "GET", "/metrics", "");
    metrics
        .lines()
        .filter(|l| l.starts_with("switchboard_runtime_config_reloads_total{"))
        .filter(|l| l.contains("result=\"rejected\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn the_config_s_rerank_model_and_pvc_artifacts_are_loaded_where_the_router_mounts_them() {
    for needed in [
        ".cache/models/all-MiniLM-L6-v2/tokenizer.json",
        ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf",
    ] {
        assert!(root().join(needed).exists(), "run hack/setup.sh models");
    }
    let work = tempfile::tempdir().unwrap();
    let work = work.path();

    // Generation 1 of the sample knowledge base (what the index Job builds).
    let kb_dir = work.join("kb");
    copy_dir(&root().join("examples/kb"), &kb_dir);
    let index = runtime_cmd()
        .arg("index")
        .arg("--manifests")
        .arg(kb_dir.join("knowledgebase.yaml"))
        .arg("--data")
        .arg(work.join("data"))
        .output()
        .unwrap();
    assert!(
        index.status.success(),
        "{}",
        String::from_utf8_lossy(&index.stderr)
    );

    // Two claims as the Router mounts them under --pvc-root: `models` holding the cross-encoder
    // (the generated tiny checkpoint and MiniLM's tokenizer, same vocabulary) and `adapters`
    // holding a PEFT directory.
    let pvc = work.join("pvc");
    let reranker = pvc.join("models/tiny-reranker");
    copy_files(
        &root().join("runtime/model/tests/fixtures/tiny-cross-encoder"),
        &reranker,
        &["config.json", "model.safetensors"],
    );
    copy_files(
        &root().join(".cache/models/all-MiniLM-L6-v2"),
        &reranker,
        &["tokenizer.json"],
    );
    let adapter = pvc.join("adapters/billing/1.0.0");
    copy_files(
        &root().join("runtime/model/tests/fixtures/lora/qv"),
        &adapter,
        &["adapter_config.json", "adapter_model.safetensors"],
    );
    let adapter_sha = format!(
        "sha256:{}",
        switchboard_artifact::weights_digest(&adapter).unwrap()
    );

    let rerank_on = json!({"topK": 3, "rerank": {
        "enabled": true, "model": "pvc://models/tiny-reranker", "topN": 5, "deadline": "60s",
    }});
    let (rev1, text1) = config(rerank_on, &adapter_sha);
    let config_path = work.join("runtime-config.json");
    publish_config(&config_path, &text1);

    let http_addr = free_addr();
    let grpc_addr = free_addr();
    let admin_addr = free_addr();
    let log = work.join("runtime.log");
    let _server = Server(
        runtime_cmd()
            .env_remove("SWITCHBOARD_ENCODER")
            .env("RUST_LOG", "info")
            .arg("serve")
            .arg("--runtime-config")
            .arg(&config_path)
            .arg("--data")
            .arg(work.join("data"))
            .arg("--artifacts")
            .arg(work.join("artifacts"))
            .arg("--pvc-root")
            .arg(&pvc)
            .arg("--models")
            .arg(root().join(".cache/models"))
            .args(["--grpc-addr", &grpc_addr.to_string()])
            .args(["--http-addr", &http_addr.to_string()])
            .args(["--admin-addr", &admin_addr.to_string()])
            .arg("--admin-token-file")
            .arg(support::admin_token_file(work))
            .args(["--config-poll-interval", "200ms"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_for(
        "the runtime applies its first RuntimeConfig",
        Duration::from_secs(300),
        || TcpStream::connect(http_addr).is_ok() && http(http_addr, "GET", "/readyz", "").0 == 200,
        &log,
    );
    let applied = support::admin_json(admin_addr, "/v1/config");
    assert_eq!(applied["revision"], rev1.as_str());
    // The pvc:// adapter was copied from the claim, verified and loaded.
    assert_eq!(applied["adapters"][0]["loaded"], true, "{applied}");
    let cached = work
        .join("artifacts")
        .join(format!("sha256-{}", &adapter_sha["sha256:".len()..]));
    assert!(cached.join("adapter_model.safetensors").is_file());

    // Rerank was applied by the config's cross-encoder: the response says so and every served
    // passage carries its rerank score.
    let response = retrieve(http_addr, "How many days do I have to request a refund?");
    assert_eq!(response["rerank"]["status"], "completed", "{response}");
    assert!(
        response["rerank"]["candidates"].as_u64().unwrap() >= 1,
        "{response}"
    );
    let passages = response["passages"].as_array().unwrap();
    assert!(!passages.is_empty(), "{response}");
    for p in passages {
        assert!(p["scores"]["rerank"].is_number(), "{p}");
    }

    // A config naming a model that is not there: rejected with the model named, the config in
    // force keeps serving (and keeps reranking).
    let missing = json!({"topK": 3, "rerank": {
        "enabled": true, "model": "pvc://models/no-such-reranker", "topN": 5, "deadline": "60s",
    }});
    let (_, text2) = config(missing, &adapter_sha);
    let rejected_before = rejected_reloads(http_addr);
    publish_config(&config_path, &text2);
    wait_for(
        "the config naming a missing reranker is rejected",
        Duration::from_secs(60),
        || rejected_reloads(http_addr) > rejected_before,
        &log,
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("knowledgeBase.retrieval.rerank.model")
            && logged.contains("pvc://models/no-such-reranker"),
        "the rejection names the model:\n{logged}"
    );
    assert_eq!(
        support::admin_json(admin_addr, "/v1/config")["revision"],
        rev1.as_str()
    );
    let response = retrieve(http_addr, "How many days do I have to request a refund?");
    assert_eq!(response["rerank"]["status"], "completed", "{response}");

    // Rerank turned off: hot-reloaded, no restart.
    let (rev3, text3) = config(json!({"topK": 3}), &adapter_sha);
    publish_config(&config_path, &text3);
    wait_for(
        "the config without rerank is applied",
        Duration::from_secs(120),
        || support::admin_json(admin_addr, "/v1/config")["revision"] == rev3.as_str(),
        &log,
    );
    let response = retrieve(http_addr, "How many days do I have to request a refund?");
    assert_eq!(response["rerank"]["status"], "off", "{response}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
