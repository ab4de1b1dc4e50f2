//! `switchboard-runtime index` as the operator's build Job runs it: ConfigMap sources read from
//! kubelet-style projections under `--sources-dir` (`..data` and `..<timestamp>` entries besides
//! the key links), a claim-backed volume source under `--volume-root`, and HTTP sources fetched
//! from a local server — one verified, one with a wrong sha256, one missing — each failure
//! reported per source in the build report, never aborting the build.

use crate::support;
use support::{runtime_cmd, stderr_of_failure};

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::symlink;
use std::path::Path;

use sha2::{Digest, Sha256};

/// Lays out `files` as kubelet projects a ConfigMap volume: the files in a timestamped hidden
/// folder, `..data` linking to it, and one link per key into `..data`.
fn project_config_map(dir: &Path, files: &[(&str, &str)]) {
    let stamp = "..2026_11_27_18_00_00.000000001";
    std::fs::create_dir_all(dir.join(stamp)).unwrap();
    for (key, content) in files {
        std::fs::write(dir.join(stamp).join(key), content).unwrap();
        symlink(format!("..data/{key}"), dir.join(key)).unwrap();
    }
    symlink(stamp, dir.join("..data")).unwrap();
}

/// Serves `GET <path>` from `routes` (404 otherwise), one request per connection, until the
/// test process ends.
fn serve(routes: Vec<(&'static str, &'static str)>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap() > 2 {
                line.clear();
            }
            let path = request_line.split_whitespace().nth(1).unwrap_or_default();
            let (status, body) = routes
                .iter()
                .find(|(p, _)| *p == path)
                .map_or(("404 Not Found", "not here"), |(_, b)| ("200 OK", *b));
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

const REMOTE: &str = "# Remote FAQ\n\nQuasar plans renew every 30 days unless cancelled.\n";
const TAMPERED: &str = "# Tampered\n\nThis page changed since its digest was pinned.\n";

#[test]
fn index_reads_mounted_config_maps_claims_and_fetched_http_sources() {
    let tmp = tempfile::tempdir().unwrap();
    let addr = serve(vec![
        ("/docs/remote-faq.md", REMOTE),
        ("/docs/tampered.md", TAMPERED),
    ]);
    let sha = |s: &str| {
        let digest = Sha256::digest(s.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("sha256:{hex}")
    };
    let manifest = tmp.path().join("kb.yaml");
    std::fs::write(
        &manifest,
        format!(
            r#"apiVersion: switchboard.dev/v1alpha1
kind: KnowledgeBase
metadata: {{name: help, namespace: support}}
spec:
  sources:
    - {{name: policies, format: Markdown, configMap: {{name: policy-docs}}}}
    - {{name: refunds, format: Markdown, configMap: {{name: policy-docs, key: refunds.md}}}}
    - {{name: guides, format: Markdown, volume: {{path: /data/guides, claimName: guides}}}}
    - name: remote
      format: Markdown
      http: {{url: "http://{addr}/docs/remote-faq.md", sha256: "{remote}"}}
    - name: tampered
      format: Markdown
      http: {{url: "http://{addr}/docs/tampered.md", sha256: "{wrong}"}}
    - {{name: gone, format: Markdown, http: {{url: "http://{addr}/docs/gone.md"}}}}
"#,
            remote = sha(REMOTE),
            wrong = sha("something else"),
        ),
    )
    .unwrap();
    let sources = tmp.path().join("sources");
    project_config_map(
        &sources.join("policies"),
        &[
            (
                "refunds.md",
                "# Refunds\n\nRefunds are possible within 30 days of purchase.\n",
            ),
            (
                "shipping.md",
                "# Shipping\n\nShipping is free above 50 euros.\n",
            ),
        ],
    );
    project_config_map(
        &sources.join("refunds"),
        &[(
            "refunds.md",
            "# Refunds\n\nRefunds are possible within 30 days of purchase.\n",
        )],
    );
    let volumes = tmp.path().join("root");
    std::fs::create_dir_all(volumes.join("data/guides")).unwrap();
    std::fs::write(
        volumes.join("data/guides/install.md"),
        "# Install\n\nRun the installer and sign in with your account.\n",
    )
    .unwrap();
    let data = tmp.path().join("data");
    let report_file = tmp.path().join("report.json");

    // Without --sources-dir a ConfigMap source is refused with a clear error.
    let stderr = stderr_of_failure(
        runtime_cmd()
            .args(["index", "--manifests"])
            .arg(&manifest)
            .arg("--data")
            .arg(&data),
    );
    assert!(
        stderr.contains("ConfigMap policy-docs") && stderr.contains("--sources-dir"),
        "{stderr}"
    );

    // The sources are served on loopback: by default the index builder refuses to fetch from an
    // internal address (the source fails with EgressRefused, naming the rule), and indexes the rest.
    let refused_report = tmp.path().join("refused.json");
    let out = runtime_cmd()
        .env_remove("SWITCHBOARD_EGRESS_ALLOW")
        .args(["index", "--no-publish", "--manifests"])
        .arg(&manifest)
        .arg("--data")
        .arg(tmp.path().join("refused-data"))
        .arg("--sources-dir")
        .arg(&sources)
        .arg("--volume-root")
        .arg(&volumes)
        .arg("--report-file")
        .arg(&refused_report)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let refused: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&refused_report).unwrap()).unwrap();
    let remote = refused["sourceErrors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["source"] == "remote")
        .unwrap_or_else(|| panic!("{refused}"));
    assert_eq!(remote["reason"], "EgressRefused", "{refused}");
    let message = remote["message"].as_str().unwrap();
    assert!(
        message.contains("loopback") && message.contains("egress.allowCidrs"),
        "{message}"
    );
    assert_eq!(refused["documents"], 4, "{refused}");

    let out = runtime_cmd()
        .args(["index", "--manifests"])
        .arg(&manifest)
        .arg("--data")
        .arg(&data)
        .arg("--sources-dir")
        .arg(&sources)
        .arg("--volume-root")
        .arg(&volumes)
        .arg("--report-file")
        .arg(&report_file)
        .args(["--egress-allow", "127.0.0.0/8,::1"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report_file).unwrap()).unwrap();
    // policies: 2 keys (the `..data` and timestamp entries are not read again), refunds: its
    // one key, guides: 1, remote: 1; the tampered and missing pages are not indexed.
    assert_eq!(report["documents"], 5, "{report}\n{stdout}");
    assert_eq!(report["generation"], 1);
    let errors = report["sourceErrors"].as_array().unwrap();
    let error_of = |source: &str| {
        errors
            .iter()
            .find(|e| e["source"] == source)
            .unwrap_or_else(|| panic!("no error for {source}: {report}"))
    };
    assert_eq!(error_of("tampered")["reason"], "DigestMismatch");
    assert!(error_of("tampered").get("file").is_none());
    assert_eq!(error_of("gone")["reason"], "FetchFailed");
    assert!(
        error_of("gone")["message"]
            .as_str()
            .unwrap()
            .contains("HTTP 404"),
        "{report}"
    );
    assert_eq!(
        errors.len(),
        2,
        "only the two bad HTTP sources fail: {report}"
    );
    assert!(report.to_string().len() <= 4096);
}
