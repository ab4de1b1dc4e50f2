//! Load and slow clients: what keeps one client (or a burst) from taking the runtime down.
//!
//! - **Connections**: at most `--max-connections` open at once (the accept loop waits for a slot,
//!   so the kernel's backlog holds the rest); a connection must send a request's headers within
//!   `--header-read-timeout` of opening or of its previous response (a slow-header client and an
//!   idle keep-alive connection are closed after it).
//! - **Bodies**: read within `--body-timeout` (408) and at most `--max-body-bytes` (413, refused
//!   from `Content-Length` before a byte is read when it is declared).
//! - **Requests**: a response must start within `--request-timeout` (503 `deadline_exceeded`).
//! - **Retrieval**: at most `--max-concurrent-retrievals` searches run at once (each holds a
//!   blocking thread and an encoder slot), at most `--max-queued-retrievals` wait; the rest are
//!   shed at once with 429 + `Retry-After` (gRPC `UNAVAILABLE`), as generation already is.
//! - **Admin**: one coverage-gap report (clustering thousands of signals) is computed at a time.
//!
//! Every refusal is counted in `switchboard_limit_refused_total{reason}`; docs/security.md.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use http_body_util::BodyExt as _;
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::metrics::Metrics;
use crate::service::ServiceError;

/// Longest `unit` / `conversationId` accepted, in bytes (an id, not a document).
pub const MAX_ID_BYTES: usize = 256;

/// Checks an assignment id (`unit`, `conversationId`): short, and printable.
pub fn validate_id(field: &'static str, id: Option<&str>) -> Result<(), ServiceError> {
    let Some(id) = id else { return Ok(()) };
    if id.len() > MAX_ID_BYTES {
        return Err(ServiceError::InvalidArgument {
            field,
            message: format!("{} bytes exceeds the limit of {MAX_ID_BYTES}", id.len()),
        });
    }
    if id.chars().any(char::is_control) {
        return Err(ServiceError::InvalidArgument {
            field,
            message: "must not contain control characters".into(),
        });
    }
    Ok(())
}

/// Request attributes an answer request may carry (`attributes`).
pub const MAX_ATTRIBUTES: usize = 16;
/// Bytes of an attribute value.
pub const MAX_ATTRIBUTE_VALUE_BYTES: usize = 64;

/// Checks the answer request's `attributes`: at most [`MAX_ATTRIBUTES`], names like `channel`
/// (a letter, then letters, digits, `_` or `-`, at most 63), values of at most
/// [`MAX_ATTRIBUTE_VALUE_BYTES`] without control characters.
pub fn validate_attributes(
    attributes: &std::collections::BTreeMap<String, String>,
) -> Result<(), ServiceError> {
    let bad = |message: String| ServiceError::InvalidArgument {
        field: "attributes",
        message,
    };
    if attributes.len() > MAX_ATTRIBUTES {
        return Err(bad(format!(
            "{} attributes exceed the limit of {MAX_ATTRIBUTES}",
            attributes.len()
        )));
    }
    for (name, value) in attributes {
        let good_name = name.len() <= 63
            && name.starts_with(|c: char| c.is_ascii_alphabetic())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !good_name {
            return Err(bad(format!(
                "{name:?}: a name is a letter, then letters, digits, _ or -, at most 63"
            )));
        }
        if value.len() > MAX_ATTRIBUTE_VALUE_BYTES || value.chars().any(char::is_control) {
            return Err(bad(format!(
                "{name}: a value is at most {MAX_ATTRIBUTE_VALUE_BYTES} bytes without control characters"
            )));
        }
    }
    Ok(())
}

/// The serving limits (`serve`'s flags).
#[derive(Debug, Clone, clap::Args)]
pub struct LimitArgs {
    /// A connection is closed when a request's headers have not arrived this long after it
    /// opened or after its previous response (slow-header clients, idle keep-alive).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,
    /// A request whose body has not arrived in full this long after its headers gets 408.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub body_timeout: Duration,
    /// A request whose response has not started this long after its body arrived gets 503
    /// `deadline_exceeded` (a streamed answer counts as started at its first event).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// Largest request body accepted (413 above it).
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// HTTP connections open at once; more wait in the listen backlog.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Retrievals (searches, answers' retrieval steps) running at once; 0: one per core.
    #[arg(long, default_value_t = 0)]
    pub max_concurrent_retrievals: usize,
    /// Retrievals waiting for a slot; more are refused at once (429 + Retry-After).
    #[arg(long, default_value_t = 64)]
    pub max_queued_retrievals: usize,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = switchboard_crds::parse_duration(s).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("must be longer than 0s".into());
    }
    Ok(d)
}

impl Default for LimitArgs {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            max_body_bytes: 1 << 20,
            max_connections: 1024,
            max_concurrent_retrievals: 0,
            max_queued_retrievals: 64,
        }
    }
}

impl LimitArgs {
    /// The retrieval admission these limits describe.
    pub fn retrieval_admission(&self) -> Arc<Admission> {
        Arc::new(Admission::new(
            "retrieval",
            self.max_concurrent_retrievals,
            self.max_queued_retrievals,
        ))
    }
}

/// A bounded number of holders and a bounded wait: what is over both is refused at once.
#[derive(Debug)]
pub struct Admission {
    what: &'static str,
    slots: Semaphore,
    in_flight: usize,
    waiting: AtomicUsize,
    max_waiting: usize,
}

impl Default for Admission {
    /// One slot per core and a long queue: tools (eval) that send one request at a time.
    fn default() -> Self {
        Self::new("retrieval", 0, 1024)
    }
}

impl Admission {
    /// `in_flight` holders at once (0: one per core), `max_waiting` waiting.
    pub fn new(what: &'static str, in_flight: usize, max_waiting: usize) -> Self {
        let in_flight = if in_flight == 0 {
            std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
        } else {
            in_flight
        };
        Self {
            what,
            slots: Semaphore::new(in_flight),
            in_flight,
            waiting: AtomicUsize::new(0),
            max_waiting,
        }
    }

    /// A slot, after waiting if others hold them all and fewer than `max_waiting` wait; else
    /// [`ServiceError::Overloaded`] at once.
    pub async fn admit(&self) -> Result<SemaphorePermit<'_>, ServiceError> {
        if let Ok(permit) = self.slots.try_acquire() {
            return Ok(permit);
        }
        let before = self.waiting.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(&self.waiting);
        if before >= self.max_waiting {
            return Err(ServiceError::Overloaded(format!(
                "{} is at capacity ({} running, {} waiting); retry later",
                self.what, self.in_flight, self.max_waiting
            )));
        }
        self.slots
            .acquire()
            .await
            .map_err(|_| ServiceError::Unavailable(format!("{} is shutting down", self.what)))
    }

    /// Requests waiting for a slot now.
    #[cfg(test)]
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }
}

/// Decrements the waiting count however `admit` ends (a dropped request included).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What the request middleware needs.
#[derive(Debug, Clone)]
pub struct RequestLimits {
    /// Reading the body.
    pub body_timeout: Duration,
    /// From the body's end to the response's start.
    pub request_timeout: Duration,
    /// Body size.
    pub max_body_bytes: usize,
    /// Where refusals are counted.
    pub metrics: Arc<Metrics>,
}

/// Middleware: reads the body within the time and size limits (408, 413), then runs the
/// handler within the request timeout (503 `deadline_exceeded`).
pub async fn bounded(
    State(limits): State<Arc<RequestLimits>>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = |limits: &RequestLimits| {
        limits.metrics.limit_refused("body_too_large");
        let mut response = crate::http::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!(
                "request body: larger than the limit of {} bytes (--max-body-bytes)",
                limits.max_body_bytes
            ),
        );
        // The rest of the body is not read: the connection cannot be reused.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        response
    };
    if declared.is_some_and(|n| n > limits.max_body_bytes as u64) {
        return too_large(&limits);
    }
    let read = http_body_util::Limited::new(body, limits.max_body_bytes).collect();
    let bytes = match tokio::time::timeout(limits.body_timeout, read).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return too_large(&limits),
        Ok(Err(e)) => {
            return crate::http::error(
                StatusCode::BAD_REQUEST,
                "invalid_argument",
                format!("request body: {e}"),
            );
        }
        Err(_) => {
            limits.metrics.limit_refused("body_timeout");
            let mut response = crate::http::error(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "request body: not received within {:?} (--body-timeout)",
                    limits.body_timeout
                ),
            );
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return response;
        }
    };
    let request = Request::from_parts(parts, Body::from(bytes));
    match tokio::time::timeout(limits.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            limits.metrics.limit_refused("deadline_exceeded");
            crate::http::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "deadline_exceeded",
                format!(
                    "no response within {:?} (--request-timeout)",
                    limits.request_timeout
                ),
            )
        }
    }
}

/// Serves `app` on `listener` over HTTP/1.1 until `shutdown` resolves, then lets the requests in
/// flight finish (up to 30 s): at most `max_connections` at once, each closed when a request's
/// headers take longer than `header_read_timeout`.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    limits: &LimitArgs,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};

    let max = usize::try_from(limits.max_connections).unwrap_or(usize::MAX);
    let connections = Arc::new(Semaphore::new(max));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&connections).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let mut stop = stop_rx.clone();
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let _permit = permit;
            metrics.connection_opened();
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = async { let _ = stop.wait_for(|stop| *stop).await; } => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            metrics.connection_closed();
            if let Err(e) = result {
                if e.is_timeout() {
                    metrics.limit_refused("header_timeout");
                }
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Every connection holds a slot: all slots back means all connections finished.
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    if tokio::time::timeout(Duration::from_secs(30), connections.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("HTTP connections still open 30 s after shutdown; closing them");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt as _;

    #[tokio::test]
    async fn admission_sheds_past_the_queue_and_counts_dropped_waiters() {
        let gate = Arc::new(Admission::new("retrieval", 1, 1));
        let held = gate.admit().await.unwrap();
        // One may wait...
        let waiter = {
            let gate = Arc::clone(&gate);
            tokio::spawn(async move { gate.admit().await.map(drop) })
        };
        while gate.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        // ...the next is refused at once, naming what is full.
        match gate.admit().await {
            Err(ServiceError::Overloaded(m)) => {
                assert!(
                    m.contains("retrieval is at capacity (1 running, 1 waiting)"),
                    "{m}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            gate.waiting(),
            1,
            "a refused request does not count as waiting"
        );
        drop(held);
        waiter.await.unwrap().unwrap();
        assert_eq!(gate.waiting(), 0);
        // A waiter that goes away (client gone, timeout) frees its place in the queue.
        let held = gate.admit().await.unwrap();
        let gone = {
            let gate = Arc::clone(&gate);
            tokio::spawn(async move { gate.admit().await.map(drop) })
        };
        while gate.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        gone.abort();
        let _ = gone.await;
        assert_eq!(gate.waiting(), 0);
        drop(held);
    }

    /// A router with one echo route and one that never answers, behind the middleware.
    fn app(request_timeout: Duration) -> axum::Router {
        use axum::routing::post;
        axum::Router::new()
            .route("/echo", post(|body: axum::body::Bytes| async move { body }))
            .route(
                "/stuck",
                post(|| async {
                    std::future::pending::<()>().await;
                    "never"
                }),
            )
            .layer(axum::middleware::from_fn_with_state(
                Arc::new(RequestLimits {
                    body_timeout: Duration::from_millis(200),
                    request_timeout,
                    max_body_bytes: 1000,
                    metrics: Arc::new(Metrics::new().unwrap()),
                }),
                bounded,
            ))
    }

    async fn send(app: &mut axum::Router, path: &str, body: Body) -> (StatusCode, String) {
        use tower_service::Service as _;
        let request = Request::post(path).body(body).unwrap();
        let response = app.call(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn bodies_are_bounded_in_size_and_time_and_responses_in_time() {
        let mut app = app(Duration::from_millis(300));
        assert_eq!(
            send(&mut app, "/echo", Body::from("hello")).await,
            (StatusCode::OK, "hello".to_owned())
        );
        // No length declared (a stream): refused once the limit is passed.
        let chunks = futures::stream::iter(
            (0..20).map(|_| Ok::<_, std::io::Error>(axum::body::Bytes::from(vec![b'x'; 100]))),
        );
        let (status, body) = send(&mut app, "/echo", Body::from_stream(chunks)).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
        assert!(
            body.contains("larger than the limit of 1000 bytes"),
            "{body}"
        );
        // A body that stops arriving.
        let stalled = futures::stream::once(async {
            Ok::<_, std::io::Error>(axum::body::Bytes::from_static(b"{"))
        })
        .chain(futures::stream::pending());
        let (status, body) = send(&mut app, "/echo", Body::from_stream(stalled)).await;
        assert_eq!(status, StatusCode::REQUEST_TIMEOUT, "{body}");
        // A handler that never answers.
        let (status, body) = send(&mut app, "/stuck", Body::empty()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body.contains("deadline_exceeded") && body.contains("--request-timeout"));
    }

    #[test]
    fn attributes_are_few_named_and_short() {
        let attrs = |pairs: &[(&str, &str)]| -> std::collections::BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        validate_attributes(&attrs(&[("channel", "chat"), ("plan_tier", "pro-2")])).unwrap();
        for (bad, why) in [
            (attrs(&[("1channel", "chat")]), "a name is a letter"),
            (attrs(&[("channel", "a\nb")]), "without control characters"),
            (attrs(&[("channel", &"x".repeat(65))]), "at most 64 bytes"),
        ] {
            let e = validate_attributes(&bad).unwrap_err().to_string();
            assert!(e.starts_with("attributes:") && e.contains(why), "{e}");
        }
        let many: std::collections::BTreeMap<String, String> =
            (0..17).map(|i| (format!("a{i}"), "v".to_owned())).collect();
        assert!(
            validate_attributes(&many)
                .unwrap_err()
                .to_string()
                .contains("limit of 16")
        );
    }

    #[test]
    fn ids_are_bounded_and_printable() {
        validate_id("unit", None).unwrap();
        validate_id("unit", Some("user-42")).unwrap();
        let long = "u".repeat(MAX_ID_BYTES + 1);
        let err = validate_id("unit", Some(&long)).unwrap_err().to_string();
        assert_eq!(err, "unit: 257 bytes exceeds the limit of 256");
        let err = validate_id("conversationId", Some("a\nb"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("conversationId: "), "{err}");
    }
}
