//! Helpers shared by the runtime's integration tests (each test file includes this module).
#![allow(dead_code)] // not every test file uses every helper

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `switchboard-runtime` binary under test, run from the workspace root with the cached
/// MiniLM encoder, two threads and quiet logs.
pub fn runtime_cmd() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard-runtime"));
    cmd.current_dir(root())
        .env(
            "SWITCHBOARD_ENCODER",
            root().join(".cache/models/all-MiniLM-L6-v2"),
        )
        .env("SWITCHBOARD_THREADS", "2")
        .env("RUST_LOG", "warn");
    cmd
}

/// Runs `cmd`, asserts that it fails, and returns its standard error (to check the message).
pub fn stderr_of_failure(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "{cmd:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A free TCP port on 127.0.0.1.
pub fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port on 127.0.0.1")
}

/// Copies a folder tree.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create folder");
    for entry in std::fs::read_dir(from).expect("read folder") {
        let entry = entry.expect("folder entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy file");
        }
    }
}

/// The admin token the test runtimes are started with (`--admin-token-file`).
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";

/// Writes [`ADMIN_TOKEN`] to `<work>/admin-token` and returns the path.
pub fn admin_token_file(work: &Path) -> PathBuf {
    let path = work.join("admin-token");
    std::fs::write(&path, format!("{ADMIN_TOKEN}\n")).expect("write admin token");
    path
}

/// Minimal HTTP/1.1 client (one request per connection): `(status, head, body)`.
pub fn http_full(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String, String) {
    http_with(addr, method, path, body, None)
}

/// [`http_full`] with `Authorization: Bearer <token>` when `token` is given.
pub fn http_with(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    let auth = token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("write request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let status = response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .map(|(h, b)| (h.to_owned(), b.to_owned()))
        .unwrap_or_default();
    (status, head, body)
}

/// [`http_full`] without the head.
pub fn http(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let (status, _, body) = http_full(addr, method, path, body);
    (status, body)
}

/// POSTs JSON; the body as JSON (`{"raw": text}` when it is not).
pub fn post_json(
    addr: std::net::SocketAddr,
    path: &str,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    let (status, text) = http(addr, "POST", path, &body.to_string());
    let value = serde_json::from_str(&text).unwrap_or_else(|_| serde_json::json!({ "raw": text }));
    (status, value)
}

/// GETs JSON, asserting 200.
pub fn get_json(addr: std::net::SocketAddr, path: &str) -> serde_json::Value {
    let (status, text) = http(addr, "GET", path, "");
    assert_eq!(status, 200, "{path}: {text}");
    serde_json::from_str(&text).expect("JSON body")
}

/// An admin API request with [`ADMIN_TOKEN`]: `(status, body)`.
pub fn admin(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String) {
    let (status, _, body) = http_with(addr, method, path, "", Some(ADMIN_TOKEN));
    (status, body)
}

/// GETs JSON from the admin API with [`ADMIN_TOKEN`], asserting 200.
pub fn admin_json(addr: std::net::SocketAddr, path: &str) -> serde_json::Value {
    let (status, text) = admin(addr, "GET", path);
    assert_eq!(status, 200, "{path}: {text}");
    serde_json::from_str(&text).expect("JSON body")
}

/// Waits (up to 300 s: a first index build) until `addr` answers `/readyz` with 200.
pub fn wait_until_ready(addr: std::net::SocketAddr) {
    let started = std::time::Instant::now();
    while !(std::net::TcpStream::connect(addr).is_ok() && http(addr, "GET", "/readyz", "").0 == 200)
    {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(300),
            "runtime not ready"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

/// A child process killed on drop.
pub struct Server(pub std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sum of the samples of metric `name` (Prometheus text format) whose labels include `labels`.
pub fn metric(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(
        std::fs::read(path).expect("read file"),
    ))
}

/// Copies the sample knowledge base into `work/kb` and builds its generation 1 into
/// `work/data` with the `index` subcommand (what the operator's index Job runs).
pub fn build_sample_index(work: &Path) {
    let kb_dir = work.join("kb");
    copy_dir(&root().join("examples/kb"), &kb_dir);
    let index = runtime_cmd()
        .arg("index")
        .arg("--manifests")
        .arg(kb_dir.join("knowledgebase.yaml"))
        .arg("--data")
        .arg(work.join("data"))
        .output()
        .expect("run the index subcommand");
    assert!(
        index.status.success(),
        "{}",
        String::from_utf8_lossy(&index.stderr)
    );
}

/// Merges `patch` into `target` (objects recursively, anything else replaced).
fn merge(target: &mut serde_json::Value, patch: serde_json::Value) {
    match (target, patch) {
        (serde_json::Value::Object(t), serde_json::Value::Object(p)) => {
            for (k, v) in p {
                merge(t.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (t, p) => *t = p,
    }
}

/// A RuntimeConfig document over the sample KB's generation 1 with its content revision;
/// `large_url` is the large model's OpenAI-compatible base URL.
pub fn config(adapters: serde_json::Value, large_url: &str) -> (String, String) {
    config_with(adapters, large_url, serde_json::json!({}))
}

/// [`config`] with `patch` merged into the document (e.g. `{"smallModel": {"maxQueueDepth": 2}}`).
pub fn config_with(
    adapters: serde_json::Value,
    large_url: &str,
    patch: serde_json::Value,
) -> (String, String) {
    use sha2::Digest;
    use switchboard_crds::runtime_config::RuntimeConfig;
    let mut value = serde_json::json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "RuntimeConfig", "revision": "",
        "router": {"namespace": "support", "name": "helpdesk"},
        "knowledgeBase": {
            "name": "ledgerly-support", "indexGeneration": 1,
            "embeddingModel": root().join(".cache/models/all-MiniLM-L6-v2").canonicalize().expect("encoder"),
            "retrieval": {"topK": 3, "minScore": 0.35},
        },
        "smallModel": {
            "model": "/models/SmolLM2-135M-Instruct.Q4_1.gguf",
            "maxActiveAdapters": 4, "maxNewTokens": 40,
        },
        "adapters": adapters,
        "largeModel": {
            "endpoint": {"url": large_url, "model": "smollm2", "timeout": "300s"},
            "maxQueueDepth": 4,
        },
        "routerPolicy": {
            "difficultyThreshold": 0.99,
            "adapterSelection": {"topK": 1, "minSimilarity": 0.1},
            "queryRewrite": {"policy": "Never"},
            "explorationShare": "0%",
            "shadowMaxConcurrent": 2,
        },
    });
    merge(&mut value, patch);
    let mut c: RuntimeConfig = serde_json::from_value(value).expect("a RuntimeConfig");
    c.revision = format!(
        "sha256:{}",
        hex(&sha2::Sha256::digest(
            c.canonical_bytes().expect("canonical")
        ))
    );
    let text = serde_json::to_string_pretty(&c).expect("JSON");
    RuntimeConfig::from_json(text.as_bytes()).expect("a valid RuntimeConfig");
    (c.revision, text)
}

/// Replaces the config file the way a ConfigMap volume does: write aside, rename over.
pub fn publish_config(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write config");
    std::fs::rename(&tmp, path).expect("rename config");
}

/// A runtime process in operator mode.
pub struct Runtime {
    /// HTTP address.
    pub http: std::net::SocketAddr,
    /// gRPC address.
    pub grpc: std::net::SocketAddr,
    /// Admin API address ([`ADMIN_TOKEN`]).
    pub admin: std::net::SocketAddr,
    /// The process.
    pub server: Server,
}

/// Starts `serve --runtime-config` with its own artifact cache and an SQLite outcome store in
/// `work`, and waits until it is ready.
pub fn start(work: &Path, name: &str, config_path: &Path, key: &Path) -> Runtime {
    start_with(work, name, config_path, key, &[])
}

/// [`start`] with extra arguments (e.g. `--outcome-store postgres://...`, which replaces the
/// SQLite file).
pub fn start_with(
    work: &Path,
    name: &str,
    config_path: &Path,
    key: &Path,
    extra: &[&str],
) -> Runtime {
    let http_addr = free_addr();
    let grpc_addr = free_addr();
    let admin_addr = free_addr();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(work.join(format!("{name}.log")))
        .expect("log file");
    let mut command = runtime_cmd();
    command
        .env_remove("SWITCHBOARD_ENCODER")
        .arg("serve")
        .arg("--runtime-config")
        .arg(config_path)
        .arg("--data")
        .arg(work.join("data"))
        .arg("--artifacts")
        .arg(work.join(format!("artifacts-{name}")))
        .arg("--token-key-file")
        .arg(key)
        .arg("--models")
        .arg(root().join(".cache/models"))
        .args(["--grpc-addr", &grpc_addr.to_string()])
        .args(["--http-addr", &http_addr.to_string()])
        .args(["--admin-addr", &admin_addr.to_string()])
        .arg("--admin-token-file")
        .arg(admin_token_file(work))
        .args(["--config-poll-interval", "200ms"]);
    if !extra.contains(&"--outcome-store") {
        command.arg("--outcome-store").arg(format!(
            "sqlite://{}",
            work.join(format!("outcomes-{name}.db")).display()
        ));
    }
    let server = Server(
        command
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the runtime"),
    );
    let started = std::time::Instant::now();
    loop {
        if std::net::TcpStream::connect(http_addr).is_ok()
            && http(http_addr, "GET", "/readyz", "").0 == 200
        {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(300),
            "runtime {name} not ready:\n{}",
            std::fs::read_to_string(work.join(format!("{name}.log"))).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    Runtime {
        http: http_addr,
        grpc: grpc_addr,
        admin: admin_addr,
        server,
    }
}

/// Waits until the runtime serves config `revision`; returns `/v1/config` (`admin`: the admin
/// API's address).
pub fn wait_for_revision(admin: std::net::SocketAddr, revision: &str) -> serde_json::Value {
    let started = std::time::Instant::now();
    loop {
        let config = admin_json(admin, "/v1/config");
        if config["revision"] == revision {
            return config;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(120),
            "revision {revision} not applied: {config}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// `POST /v1/answer`, asserting 200.
pub fn ask(addr: std::net::SocketAddr, query: &str, unit: &str) -> serde_json::Value {
    let (status, body) = post_json(
        addr,
        "/v1/answer",
        &serde_json::json!({"query": query, "userId": unit}),
    );
    assert_eq!(status, 200, "{body}");
    body
}

/// The body of an HTTP/1.1 response, de-chunked when it was sent with chunked encoding.
pub fn dechunk(head: &str, body: &str) -> String {
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return body.to_owned();
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

/// Server-sent events of a response body: `(event name, data)` pairs (`message` when unnamed).
pub fn sse_events(body: &str) -> Vec<(String, String)> {
    body.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .filter_map(|block| {
            let mut name = "message".to_owned();
            let mut data = Vec::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push(v.strip_prefix(' ').unwrap_or(v));
                }
            }
            (!data.is_empty()).then(|| (name, data.join("\n")))
        })
        .collect()
}

/// Asserts the models `hack/setup.sh models` installs are present.
pub fn models_present() {
    for needed in [
        ".cache/models/all-MiniLM-L6-v2/model.safetensors",
        ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf",
    ] {
        assert!(root().join(needed).exists(), "run hack/setup.sh models");
    }
}

/// The sample KB indexed, a token key and a published config (no adapters, no reachable large
/// model, `patch` merged in) in `work`: `(config file, key file)`.
pub fn prepare(work: &Path, patch: serde_json::Value) -> (PathBuf, PathBuf) {
    models_present();
    build_sample_index(work);
    let key = work.join("token-key");
    std::fs::write(&key, format!("{}\n", "k".repeat(48))).expect("write the token key");
    let config_path = work.join("runtime-config.json");
    let (_, text) = config_with(serde_json::json!([]), "http://127.0.0.1:9/v1", patch);
    publish_config(&config_path, &text);
    (config_path, key)
}
