//! Processes for the PromQL test: the `switchboard-runtime` binary serving the sample knowledge
//! base, and a real Prometheus scraping it. Small on purpose: when `switchboard-testkit` grows its
//! Prometheus launcher and process helpers, these functions switch over to it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{root, tool};

/// A free local TCP address.
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// A child process killed (and reaped) on drop, whose log file is shown when a wait fails.
#[derive(Debug)]
pub struct Process {
    child: Child,
    name: String,
    log: PathBuf,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    /// Starts `command` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut command: Command, log: &Path) -> Self {
        let file = std::fs::File::create(log).expect("log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Self {
            child,
            name: name.to_owned(),
            log: log.to_owned(),
        }
    }

    /// Waits until `GET path` on `addr` answers 200, or panics with the process's log.
    pub fn wait_http_ok(&mut self, addr: SocketAddr, path: &str, timeout: Duration) {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited with {status}:\n{}", self.name, self.log_text());
            }
            if matches!(http(addr, "GET", path, ""), Ok((200, _))) {
                return;
            }
            if started.elapsed() > timeout {
                panic!(
                    "{} not ready on {addr}{path} after {timeout:?}:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The last 4 KiB of the process's log.
    pub fn log_text(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(4096);
        let start = (start..text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(text.len());
        text[start..].to_owned()
    }
}

/// One HTTP/1.1 request on a fresh connection: (status, body). Chunked bodies are decoded.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, payload) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {head:?}")))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(payload)
    } else {
        payload.to_owned()
    };
    Ok((status, body))
}

fn dechunk(mut payload: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = payload.split_once("\r\n") {
        let size =
            usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        payload = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// Percent-encodes a query-string value.
pub fn url_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The `switchboard-runtime` binary of this target directory. `cargo test` of the workspace
/// builds it; `cargo test -p switchboard-chart-tests` alone needs
/// `cargo build -p switchboard-runtime` first (the message says so).
pub fn runtime_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("SWITCHBOARD_RUNTIME_BIN") {
        return PathBuf::from(path);
    }
    // target/<profile>/deps/<test> -> target/<profile>/switchboard-runtime
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let path = profile_dir.join("switchboard-runtime");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p switchboard-runtime` (same target dir), or \
         set SWITCHBOARD_RUNTIME_BIN",
        path.display()
    );
    path
}

/// `switchboard-runtime serve` on the sample knowledge base (retrieval only), ready.
pub fn start_runtime(work: &Path) -> (Process, SocketAddr) {
    let http_addr = free_addr();
    let grpc_addr = free_addr();
    let mut command = Command::new(runtime_binary());
    command
        .current_dir(root())
        .env(
            "SWITCHBOARD_ENCODER",
            root().join(".cache/models/all-MiniLM-L6-v2"),
        )
        .env("SWITCHBOARD_THREADS", "2")
        .env("RUST_LOG", "warn")
        .arg("serve")
        .arg("--manifests")
        .arg(root().join("examples/kb/knowledgebase.yaml"))
        .arg("--data")
        .arg(work.join("data"))
        .args(["--grpc-addr", &grpc_addr.to_string()])
        .args(["--http-addr", &http_addr.to_string()])
        .args(["--admin-addr", &free_addr().to_string()]);
    let mut process = Process::spawn("switchboard-runtime", command, &work.join("runtime.log"));
    // The first start indexes the sample knowledge base with the real encoder.
    process.wait_http_ok(http_addr, "/readyz", Duration::from_secs(600));
    (process, http_addr)
}

/// A real Prometheus scraping `targets` every second and evaluating the rule files `rules`
/// every second, ready.
pub fn start_prometheus(
    work: &Path,
    targets: &[SocketAddr],
    rules: &[PathBuf],
) -> (Process, SocketAddr) {
    let addr = free_addr();
    let list = targets
        .iter()
        .map(|t| format!("'{t}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let rule_files = rules
        .iter()
        .map(|r| format!("'{}'", r.display()))
        .collect::<Vec<_>>()
        .join(", ");
    let config = work.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files: [{rule_files}]\n\
             scrape_configs:\n  - job_name: switchboard-runtime\n    static_configs:\n      - targets: [{list}]\n"
        ),
    )
    .expect("prometheus.yml");
    let mut command = Command::new(tool("prometheus"));
    command
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            work.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .arg("--log.level=warn");
    let mut process = Process::spawn("prometheus", command, &work.join("prometheus.log"));
    process.wait_http_ok(addr, "/-/ready", Duration::from_secs(60));
    (process, addr)
}

/// The result of an instant query: `Ok(number of series)` or Prometheus's error.
pub fn instant_query(prometheus: SocketAddr, promql: &str) -> Result<usize, String> {
    let (status, body) = http(
        prometheus,
        "GET",
        &format!("/api/v1/query?query={}", url_encode(promql)),
        "",
    )
    .map_err(|e| format!("HTTP: {e}"))?;
    let json: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("HTTP {status}: {e}: {body}"))?;
    if json["status"] != "success" {
        return Err(format!(
            "HTTP {status}: {}: {}",
            json["errorType"].as_str().unwrap_or("?"),
            json["error"].as_str().unwrap_or("?")
        ));
    }
    let data = &json["data"];
    match data["resultType"].as_str() {
        Some("vector" | "matrix") => Ok(data["result"].as_array().map_or(0, Vec::len)),
        Some("scalar" | "string") => Ok(1),
        other => Err(format!("unexpected result type {other:?}")),
    }
}

/// The labels of a sample.
pub type Labels = std::collections::BTreeMap<String, String>;

/// The samples of an instant query (labels, value), or Prometheus's error.
pub fn instant_samples(prometheus: SocketAddr, promql: &str) -> Result<Vec<(Labels, f64)>, String> {
    let (status, body) = http(
        prometheus,
        "GET",
        &format!("/api/v1/query?query={}", url_encode(promql)),
        "",
    )
    .map_err(|e| format!("HTTP: {e}"))?;
    let json: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("HTTP {status}: {e}: {body}"))?;
    if json["status"] != "success" {
        return Err(format!(
            "HTTP {status}: {}",
            json["error"].as_str().unwrap_or("?")
        ));
    }
    let mut out = Vec::new();
    for sample in json["data"]["result"].as_array().into_iter().flatten() {
        let labels = sample["metric"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
            .collect();
        let value = sample["value"][1]
            .as_str()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("no value in {sample}"))?;
        out.push((labels, value));
    }
    Ok(out)
}

/// Runs `promtool test rules <test_file>` (rule unit tests: input series, expected alerts and
/// expression results at given times); `Err` holds promtool's output when a test fails.
pub fn promtool_test_rules(test_file: &Path) -> Result<String, String> {
    let output = Command::new(tool("promtool"))
        .arg("test")
        .arg("rules")
        .arg(test_file)
        .output()
        .map_err(|e| format!("running promtool: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

/// Every loaded rule as (name, health, last error), from `/api/v1/rules`.
pub fn rule_health(prometheus: SocketAddr) -> Vec<(String, String, String)> {
    let (_, body) = http(prometheus, "GET", "/api/v1/rules", "").expect("rules");
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let mut out = Vec::new();
    for group in json["data"]["groups"].as_array().into_iter().flatten() {
        for rule in group["rules"].as_array().into_iter().flatten() {
            out.push((
                rule["name"].as_str().unwrap_or("?").to_owned(),
                rule["health"].as_str().unwrap_or("?").to_owned(),
                rule["lastError"].as_str().unwrap_or("").to_owned(),
            ));
        }
    }
    out
}

/// The metric names Prometheus has stored.
pub fn stored_metric_names(prometheus: SocketAddr) -> Vec<String> {
    let (_, body) =
        http(prometheus, "GET", "/api/v1/label/__name__/values", "").expect("label values");
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    json["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_are_decoded() {
        assert_eq!(dechunk("4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n"), "Wikipedia");
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(
            url_encode("sum(rate(x{a=\"b\"}[1m])) > 0"),
            "sum%28rate%28x%7Ba%3D%22b%22%7D%5B1m%5D%29%29%20%3E%200"
        );
    }
}
