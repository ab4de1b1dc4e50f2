//! Readiness probes, as a kubelet's prober runs them: `httpGet` (a status in 200..400 passes) and
//! `tcpSocket` against the container's local ports, every `periodSeconds`, each within
//! `timeoutSeconds`; `successThreshold` passes in a row make the container ready,
//! `failureThreshold` failures in a row unready. Liveness and startup probes are not run (the
//! agent does not restart containers).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Probe;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// What a probe checks, resolved to a local address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// `GET <path>` answers 2xx or 3xx.
    Http {
        /// Where.
        addr: SocketAddr,
        /// The request path.
        path: String,
    },
    /// A connection is accepted.
    Tcp(SocketAddr),
}

/// Why a probe cannot run on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsupported(pub String);

/// The check of `probe`, with container ports resolved by `port` (a number or a port name).
pub fn check(
    probe: &Probe,
    port: impl Fn(&IntOrString) -> Option<SocketAddr>,
) -> Result<Check, Unsupported> {
    let resolve = |p: &IntOrString| {
        port(p).ok_or_else(|| Unsupported(format!("probe port {p:?} is not a container port")))
    };
    if let Some(http) = &probe.http_get {
        if http.host.is_some() || http.scheme.as_deref().is_some_and(|s| s != "HTTP") {
            return Err(Unsupported(
                "only plain HTTP probes of the pod itself".to_owned(),
            ));
        }
        return Ok(Check::Http {
            addr: resolve(&http.port)?,
            path: http.path.clone().unwrap_or_else(|| "/".to_owned()),
        });
    }
    if let Some(tcp) = &probe.tcp_socket {
        return Ok(Check::Tcp(resolve(&tcp.port)?));
    }
    Err(Unsupported("only httpGet and tcpSocket probes".to_owned()))
}

impl Check {
    async fn passes(&self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.attempt())
            .await
            .unwrap_or(false)
    }

    async fn attempt(&self) -> bool {
        match self {
            Self::Tcp(addr) => TcpStream::connect(addr).await.is_ok(),
            Self::Http { addr, path } => {
                let Ok(mut stream) = TcpStream::connect(addr).await else {
                    return false;
                };
                let request = format!(
                    "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.35\r\nConnection: close\r\n\r\n"
                );
                if stream.write_all(request.as_bytes()).await.is_err() {
                    return false;
                }
                // The status line is enough: `HTTP/1.1 200 OK`.
                let mut head = [0u8; 12];
                if stream.read_exact(&mut head).await.is_err() {
                    return false;
                }
                std::str::from_utf8(&head[9..12])
                    .ok()
                    .and_then(|code| code.parse::<u16>().ok())
                    .is_some_and(|code| (200..400).contains(&code))
            }
        }
    }
}

/// A running readiness prober; stops when dropped.
#[derive(Debug)]
pub struct Prober {
    ready: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Prober {
    /// Starts probing `check` with `probe`'s timing on the current tokio runtime; `changed` is
    /// notified whenever readiness flips.
    pub fn start(check: Check, probe: &Probe, changed: Arc<Notify>) -> Self {
        let seconds = |value: Option<i32>, default: u64| {
            Duration::from_secs(value.and_then(|v| u64::try_from(v).ok()).unwrap_or(default))
        };
        let initial_delay = seconds(probe.initial_delay_seconds, 0);
        let period = seconds(probe.period_seconds, 10).max(Duration::from_secs(1));
        let timeout = seconds(probe.timeout_seconds, 1).max(Duration::from_secs(1));
        let to_pass = probe.success_threshold.unwrap_or(1).max(1);
        let to_fail = probe.failure_threshold.unwrap_or(3).max(1);
        let ready = Arc::new(AtomicBool::new(false));
        let task = {
            let ready = ready.clone();
            tokio::spawn(async move {
                tokio::time::sleep(initial_delay).await;
                let (mut passed, mut failed) = (0, 0);
                loop {
                    if check.passes(timeout).await {
                        (passed, failed) = (passed + 1, 0);
                    } else {
                        (passed, failed) = (0, failed + 1);
                    }
                    let was = ready.load(Ordering::Relaxed);
                    let now = if was {
                        failed < to_fail
                    } else {
                        passed >= to_pass
                    };
                    if now != was {
                        ready.store(now, Ordering::Relaxed);
                        changed.notify_one();
                    }
                    tokio::time::sleep(period).await;
                }
            })
        };
        Self { ready, task }
    }

    /// Whether the container is ready.
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{HTTPGetAction, TCPSocketAction};

    use super::*;

    #[test]
    fn probes_resolve_named_and_numbered_ports_to_local_addresses() {
        let local: SocketAddr = "127.0.0.1:40001".parse().unwrap_or_else(|_| unreachable!());
        let port = |p: &IntOrString| match p {
            IntOrString::String(name) if name == "http" => Some(local),
            IntOrString::Int(8080) => Some(local),
            _ => None,
        };
        let http = Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/readyz".to_owned()),
                port: IntOrString::String("http".to_owned()),
                ..HTTPGetAction::default()
            }),
            ..Probe::default()
        };
        assert_eq!(
            check(&http, port),
            Ok(Check::Http {
                addr: local,
                path: "/readyz".to_owned()
            })
        );
        let tcp = Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(8080),
                ..TCPSocketAction::default()
            }),
            ..Probe::default()
        };
        assert_eq!(check(&tcp, port), Ok(Check::Tcp(local)));
        let elsewhere = Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(9090),
                ..TCPSocketAction::default()
            }),
            ..Probe::default()
        };
        assert!(check(&elsewhere, port).is_err());
        assert!(
            check(&Probe::default(), port).is_err(),
            "exec probes are not run"
        );
    }
}
