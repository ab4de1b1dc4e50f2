//! A small HTTP(S) GET client (hyper + rustls with the webpki roots) shared by the Prometheus
//! source, the runtimes' admin API and the artifact check; the artifact check's client connects
//! only where the egress policy allows (`switchboard_artifact::egress`).

use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use switchboard_artifact::egress::{EgressPolicy, GuardedResolver};

/// GET with a timeout and a body size limit.
#[derive(Clone, Debug)]
pub struct HttpClient {
    client: Client<HttpsConnector<HttpConnector<GuardedResolver>>, Empty<Bytes>>,
    timeout: Duration,
    egress: std::sync::Arc<EgressPolicy>,
}

impl HttpClient {
    /// A client whose requests give up after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self::with_egress(timeout, EgressPolicy::unrestricted())
    }

    /// A client that connects only where `policy` allows.
    pub fn with_egress(timeout: Duration, policy: EgressPolicy) -> Self {
        let mut http = HttpConnector::new_with_resolver(GuardedResolver::new(policy.clone()));
        http.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Self {
            // Idle connections are dropped before a runtime's header-read timeout (10 s) would
            // close them under a request about to be sent on them.
            client: Client::builder(TokioExecutor::new())
                .pool_timer(hyper_util::rt::TokioTimer::new())
                .pool_idle_timeout(Duration::from_secs(5))
                .build(https),
            timeout,
            egress: std::sync::Arc::new(policy),
        }
    }

    /// Where this client may connect.
    pub fn egress(&self) -> &EgressPolicy {
        &self.egress
    }

    /// GETs `url`; `Ok((status, body))` for any response, `Err` for transport failures, a
    /// timeout or a body over `max_bytes`.
    pub async fn get(&self, url: &str, max_bytes: usize) -> Result<(u16, Bytes), String> {
        self.get_with(url, max_bytes, None).await
    }

    /// [`Self::get`] with `Authorization: Bearer <token>` when `bearer` is given.
    pub async fn get_with(
        &self,
        url: &str,
        max_bytes: usize,
        bearer: Option<&str>,
    ) -> Result<(u16, Bytes), String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("invalid URL {url}: {e}"))?;
        self.egress
            .check_url(url)
            .map_err(|e| format!("GET {url}: {e}"))?;
        let mut builder = http::Request::get(uri);
        if let Some(token) = bearer {
            builder = builder.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = builder
            .body(Empty::new())
            .map_err(|e| format!("GET {url}: {e}"))?;
        let request = async {
            let response = self.client.request(request).await.map_err(|e| {
                // The egress refusal is the root cause: name it, not hyper's wrapper.
                let mut message = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    message = format!("{message}: {s}");
                    source = s.source();
                }
                format!("GET {url}: {message}")
            })?;
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), max_bytes)
                .collect()
                .await
                .map_err(|e| format!("GET {url}: reading the body: {e}"))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(self.timeout, request)
            .await
            .map_err(|_| format!("GET {url}: no answer within {:?}", self.timeout))?
    }
}
