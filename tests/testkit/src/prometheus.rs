//! The real Prometheus binary, scraping targets the test names, for PromQL-driven tests.
//!
//! Targets come from a file (`file_sd_configs`, re-read every second), so a test can start
//! Prometheus first and add or replace targets as processes come and go.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::process::{Process, free_addr, http_request, url_encode, workspace_root};

/// One scrape target: `job` label, address, and extra labels.
#[derive(Debug, Clone)]
pub struct Target {
    /// The `job` label.
    pub job: String,
    /// host:port serving `/metrics`.
    pub addr: SocketAddr,
    /// Extra target labels (e.g. `pod`).
    pub labels: BTreeMap<String, String>,
}

impl Target {
    /// A target with only a job label.
    pub fn new(job: &str, addr: SocketAddr) -> Self {
        Self {
            job: job.to_owned(),
            addr,
            labels: BTreeMap::new(),
        }
    }

    /// Adds a target label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_owned(), value.to_owned());
        self
    }
}

/// One sample of an instant vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Series labels.
    pub labels: BTreeMap<String, String>,
    /// Value.
    pub value: f64,
}

/// A running Prometheus; killed on drop.
#[derive(Debug)]
pub struct Prometheus {
    process: Process,
    addr: SocketAddr,
    targets_file: PathBuf,
}

impl Prometheus {
    /// The binary: `$SWITCHBOARD_PROMETHEUS`, else `.cache/bin/prometheus` (`hack/setup.sh tools`),
    /// else `prometheus` on the PATH.
    pub fn binary() -> Option<PathBuf> {
        if let Some(path) = std::env::var_os("SWITCHBOARD_PROMETHEUS") {
            return Some(PathBuf::from(path));
        }
        let cached = workspace_root().join(".cache/bin/prometheus");
        if cached.is_file() {
            return Some(cached);
        }
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("prometheus"))
                .find(|p| p.is_file())
        })
    }

    /// Starts Prometheus in `dir` (config, targets file, TSDB, log) with a 1 s scrape and
    /// evaluation interval, and waits until it is ready.
    pub fn start(dir: &Path, targets: &[Target]) -> Result<Self, String> {
        let binary = Self::binary().ok_or("no prometheus binary: run `hack/setup.sh tools`")?;
        std::fs::create_dir_all(dir.join("tsdb")).map_err(|e| e.to_string())?;
        let targets_file = dir.join("targets.json");
        write_targets(&targets_file, targets)?;
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: switchboard\n    file_sd_configs:\n      - files: ['{}']\n        refresh_interval: 1s\n",
            targets_file.display()
        );
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config).map_err(|e| e.to_string())?;
        let addr = free_addr();
        let mut command = Command::new(binary);
        command
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--storage.tsdb.retention.time=2h")
            .arg("--log.level=warn");
        let mut process = Process::spawn("prometheus", command, dir)?;
        process.wait_for_http_ok(addr, "/-/ready", Duration::from_secs(30))?;
        Ok(Self {
            process,
            addr,
            targets_file,
        })
    }

    /// Replaces the scrape targets (picked up within about a second).
    pub fn set_targets(&self, targets: &[Target]) -> Result<(), String> {
        write_targets(&self.targets_file, targets)
    }

    /// Base URL of the HTTP API.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The listen address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The process (for its log).
    pub fn process(&self) -> &Process {
        &self.process
    }

    /// Instant query: the result vector (a scalar result becomes one sample without labels).
    pub fn query(&self, promql: &str) -> Result<Vec<Sample>, String> {
        let path = format!("/api/v1/query?query={}", url_encode(promql));
        let (status, body) = http_request(self.addr, "GET", &path, None)?;
        let reply: Value =
            serde_json::from_str(&body).map_err(|e| format!("{promql}: {e}: {body}"))?;
        if status != 200 || reply["status"] != "success" {
            return Err(format!("{promql}: HTTP {status}: {body}"));
        }
        let parse_value = |v: &Value| -> f64 {
            v.get(1)
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
                .unwrap_or(f64::NAN)
        };
        let data = &reply["data"];
        match data["resultType"].as_str() {
            Some("vector") => Ok(data["result"]
                .as_array()
                .map(|items| {
                    items
                        .iter()
                        .map(|item| Sample {
                            labels: item["metric"]
                                .as_object()
                                .map(|m| {
                                    m.iter()
                                        .map(|(k, v)| {
                                            (k.clone(), v.as_str().unwrap_or("").to_owned())
                                        })
                                        .collect()
                                })
                                .unwrap_or_default(),
                            value: parse_value(&item["value"]),
                        })
                        .collect()
                })
                .unwrap_or_default()),
            Some("scalar") => Ok(vec![Sample {
                labels: BTreeMap::new(),
                value: parse_value(&data["result"]),
            }]),
            other => Err(format!("{promql}: unexpected result type {other:?}")),
        }
    }

    /// Instant query expected to give at most one sample: its value, or `None` when empty.
    pub fn query_value(&self, promql: &str) -> Result<Option<f64>, String> {
        let samples = self.query(promql)?;
        match samples.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(one.value)),
            many => Err(format!(
                "{promql}: {} samples, expected at most one",
                many.len()
            )),
        }
    }

    /// Polls `promql` until `accept` holds for its value (or `timeout` passes).
    pub fn wait_for_value(
        &self,
        promql: &str,
        timeout: Duration,
        accept: impl Fn(f64) -> bool,
    ) -> Result<f64, String> {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        while Instant::now() < deadline {
            match self.query_value(promql) {
                Ok(Some(value)) if accept(value) => return Ok(value),
                Ok(value) => last = value,
                Err(e) => return Err(e),
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Err(format!(
            "{promql}: condition not met within {timeout:?} (last value {last:?})"
        ))
    }
}

fn write_targets(path: &Path, targets: &[Target]) -> Result<(), String> {
    let groups: Vec<Value> = targets
        .iter()
        .map(|t| {
            let mut labels = t.labels.clone();
            labels.insert("job".into(), t.job.clone());
            json!({"targets": [t.addr.to_string()], "labels": labels})
        })
        .collect();
    // Write-then-rename so Prometheus never reads a half-written file.
    let temp = path.with_extension("json.tmp");
    std::fs::write(&temp, Value::Array(groups).to_string()).map_err(|e| e.to_string())?;
    std::fs::rename(&temp, path).map_err(|e| e.to_string())
}
