//! A small HTTP(S)/1.1 client (hyper + rustls with the webpki roots) for adapter artifacts, HTTP
//! KnowledgeBase sources and the large model's OpenAI-compatible endpoint. Fetches whose address
//! a manifest's author chooses (sources, artifacts) go through [`HttpClient::with_egress`]: every
//! address is checked against the egress policy (`switchboard_artifact::egress`).
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use switchboard_artifact::egress::{EgressPolicy, GuardedResolver};

/// A pooled client; cheap to clone.
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpsConnector<HttpConnector<GuardedResolver>>, Full<Bytes>>,
    egress: std::sync::Arc<EgressPolicy>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient").finish_non_exhaustive()
    }
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new()
    }
}

/// A response: status and body.
#[derive(Debug)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Body bytes.
    pub body: Bytes,
}

fn check_scheme(url: &str) -> Result<(), String> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!("{url}: not an http(s):// URL"));
    }
    Ok(())
}

impl HttpClient {
    /// A new client with a connection pool, to any address (the large model's endpoint, which
    /// the platform team configures; tools run by hand).
    pub fn new() -> Self {
        Self::with_egress(EgressPolicy::unrestricted())
    }

    /// A client that connects only where `policy` allows (sources and artifacts).
    pub fn with_egress(policy: EgressPolicy) -> Self {
        let mut http = HttpConnector::new_with_resolver(GuardedResolver::new(policy.clone()));
        http.set_connect_timeout(Some(Duration::from_secs(5)));
        http.set_nodelay(true);
        http.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Self {
            inner: Client::builder(TokioExecutor::new()).build(https),
            egress: std::sync::Arc::new(policy),
        }
    }

    /// Where this client may connect.
    pub fn egress(&self) -> &EgressPolicy {
        &self.egress
    }

    async fn send(
        &self,
        request: hyper::Request<Full<Bytes>>,
        max_bytes: usize,
    ) -> Result<HttpResponse, String> {
        // The large model's client is unrestricted: no per-request URI copy on the answer path.
        if !self.egress.is_unrestricted() {
            self.egress
                .check_url(&request.uri().to_string())
                .map_err(|e| e.to_string())?;
        }
        let response = self.inner.request(request).await.map_err(|e| {
            let mut message = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                message.push_str(&format!(": {s}"));
                source = s.source();
            }
            message
        })?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), max_bytes)
            .collect()
            .await
            .map_err(|e| format!("reading the body: {e}"))?
            .to_bytes();
        Ok(HttpResponse { status, body })
    }

    /// `GET url`; the body when the status is 2xx.
    pub async fn get(&self, url: &str, max_bytes: usize) -> Result<Bytes, String> {
        check_scheme(url)?;
        let request = hyper::Request::get(url)
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let response = self.send(request, max_bytes).await?;
        if !(200..300).contains(&response.status) {
            return Err(format!("HTTP {}", response.status));
        }
        Ok(response.body)
    }

    /// `POST url` with a JSON body and optional bearer token, within `timeout`.
    pub async fn post_json(
        &self,
        url: &str,
        bearer: Option<&str>,
        body: Vec<u8>,
        timeout: Duration,
        max_bytes: usize,
    ) -> Result<HttpResponse, String> {
        check_scheme(url)?;
        let mut builder = hyper::Request::post(url).header("content-type", "application/json");
        if let Some(token) = bearer {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        let request = builder
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        tokio::time::timeout(timeout, self.send(request, max_bytes))
            .await
            .map_err(|_| format!("timed out after {timeout:?}"))?
    }
}
