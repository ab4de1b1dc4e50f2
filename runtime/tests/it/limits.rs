//! Slow clients and bursts, as an attacker would send them to a running runtime: slow-header
//! connections and idle keep-alives are closed on time, a body that trickles gets 408, an
//! oversized one 413, a burst of searches is shed with 429 + Retry-After instead of growing
//! threads, and `/healthz` answers throughout (issue 24, point 6; docs/security.md).

use crate::support;
use support::{
    Server, copy_dir, free_addr, http, http_full, metric, root, runtime_cmd, wait_until_ready,
};

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Reads until the server closes the connection or `limit` passes; the time it took to close.
fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 4096];
    while started.elapsed() < limit {
        match stream.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Some(started.elapsed()),
        }
    }
    None
}

/// Threads of process `pid` now (`/proc/<pid>/status`).
fn threads(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap()
}

fn healthy(addr: SocketAddr) {
    let (status, body) = http(addr, "GET", "/healthz", "");
    assert_eq!((status, body.as_str()), (200, "ok"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_and_bursts_are_bounded() {
    assert!(
        root()
            .join(".cache/models/all-MiniLM-L6-v2/model.safetensors")
            .exists(),
        "run hack/setup.sh models"
    );
    let work = tempfile::tempdir().unwrap();
    let kb_dir = work.path().join("kb");
    copy_dir(&root().join("examples/kb"), &kb_dir);
    let addr = free_addr();
    let server = Server(
        runtime_cmd()
            .arg("serve")
            .arg("--manifests")
            .arg(kb_dir.join("knowledgebase.yaml"))
            .arg("--data")
            .arg(work.path().join("data"))
            .args(["--grpc-addr", &free_addr().to_string()])
            .args(["--http-addr", &addr.to_string()])
            .args(["--admin-addr", &free_addr().to_string()])
            .args(["--header-read-timeout", "1s", "--body-timeout", "1s"])
            .args(["--max-body-bytes", "65536", "--max-connections", "64"])
            .args(["--max-concurrent-retrievals", "1"])
            .args(["--max-queued-retrievals", "2"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = server.0.id();
    wait_until_ready(addr);

    // 1. Forty slow-header clients (a header byte every 200 ms, never finishing): each is
    //    closed about a second after it opened, and /healthz answers meanwhile.
    let slow: Vec<_> = (0..40)
        .map(|_| {
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(addr).unwrap();
                stream
                    .write_all(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
                    .unwrap();
                let opened = Instant::now();
                stream.set_nonblocking(true).unwrap();
                let mut buf = [0u8; 256];
                while opened.elapsed() < Duration::from_secs(10) {
                    std::thread::sleep(Duration::from_millis(200));
                    match stream.read(&mut buf) {
                        Ok(0) => return Some(opened.elapsed()),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        _ => return Some(opened.elapsed()),
                    }
                    if stream.write_all(b"a").is_err() {
                        return Some(opened.elapsed());
                    }
                }
                None
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    healthy(addr);
    for client in slow {
        let closed = client.join().unwrap();
        assert!(
            closed.is_some_and(|t| t < Duration::from_secs(4)),
            "a slow-header connection stayed open: {closed:?}"
        );
    }

    // 2. An idle keep-alive connection is closed after the same timeout.
    let mut idle = TcpStream::connect(addr).unwrap();
    write!(idle, "GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let closed = closed_within(&mut idle, Duration::from_secs(5));
    assert!(
        closed.is_some_and(|t| t >= Duration::from_millis(500)),
        "idle keep-alive connection: {closed:?}"
    );

    // 3. A body that trickles: 408 after the body timeout, naming the flag.
    let mut trickle = TcpStream::connect(addr).unwrap();
    write!(
        trickle,
        "POST /v1/retrieve HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"query\":"
    )
    .unwrap();
    let asked = Instant::now();
    let mut response = String::new();
    trickle
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = trickle.read_to_string(&mut response);
    assert!(
        response.starts_with("HTTP/1.1 408"),
        "trickled body: {response}"
    );
    assert!(response.contains("--body-timeout"), "{response}");
    assert!(asked.elapsed() < Duration::from_secs(4));

    // 4. An oversized body is refused from its Content-Length, before it is sent.
    let mut large = TcpStream::connect(addr).unwrap();
    write!(
        large,
        "POST /v1/retrieve HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    large
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = large.read_to_string(&mut response);
    assert!(
        response.starts_with("HTTP/1.1 413"),
        "oversized: {response}"
    );
    assert!(response.contains("--max-body-bytes"), "{response}");

    // 5. A burst of 40 searches against one slot and a queue of two: the excess is shed at once
    //    with 429 + Retry-After, the rest are answered, and the threads stay bounded.
    let before = threads(pid);
    let sampler = std::thread::spawn(move || {
        let mut most = 0;
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            most = most.max(threads(pid));
            std::thread::sleep(Duration::from_millis(20));
        }
        most
    });
    let burst: Vec<_> = (0..40)
        .map(|i| {
            std::thread::spawn(move || {
                let body = format!(r#"{{"query": "refund after {i} days"}}"#);
                http_full(addr, "POST", "/v1/retrieve", &body)
            })
        })
        .collect();
    let (mut ok, mut shed) = (0, 0);
    for request in burst {
        let (status, head, body) = request.join().unwrap();
        match status {
            200 => ok += 1,
            429 => {
                shed += 1;
                assert!(
                    head.to_ascii_lowercase().contains("retry-after: 1"),
                    "{head}"
                );
                assert!(body.contains("retrieval is at capacity"), "{body}");
            }
            other => panic!("burst request: {other} {body}"),
        }
    }
    let most = sampler.join().unwrap();
    println!("burst of 40: {ok} answered, {shed} shed; threads {before} -> at most {most}");
    assert!(ok >= 3 && shed >= 1, "burst: {ok} answered, {shed} shed");
    assert!(
        most <= before + 4,
        "threads grew from {before} to {most} under a burst"
    );
    healthy(addr);

    // Every refusal is counted by reason.
    let (_, metrics) = http(addr, "GET", "/metrics", "");
    let refused = |reason: &str| {
        metric(
            &metrics,
            "switchboard_limit_refused_total",
            &[("reason", reason)],
        )
    };
    assert!(refused("header_timeout") >= 40.0, "{metrics}");
    assert!(refused("body_timeout") >= 1.0);
    assert!(refused("body_too_large") >= 1.0);
    assert!(refused("retrieval_overloaded") >= f64::from(shed));
}
