//! Per-unit experiment data (CUPED) from a Router's runtime: the [`OutcomeSource`] trait and its
//! HTTP implementation.
//!
//! Prometheus counts outcomes per arm, which is all the guardrails and the per-interaction
//! estimates need. CUPED needs each unit's outcome rate next to its own rate before the
//! experiment, and unit ids do not belong in metric labels. The runtime keeps interactions and
//! outcomes in its outcome store (PostgreSQL shared by every replica in a cluster) and answers
//! `GET /v1/experiments/{name}/cuped` with per-arm sufficient statistics; the operator reads them
//! through the Router's Service.

use std::{collections::BTreeMap, fmt, time::Duration};

use serde::Deserialize;
use switchboard_analysis::CupedArm;
use switchboard_crds::Metric;

use crate::{http_client::HttpClient, observe::BoxFuture, router::build::runtime_name};

/// What the Experiment analysis asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct CupedRequest {
    /// Namespace of the Router.
    pub namespace: String,
    /// The Router.
    pub router: String,
    /// The Experiment.
    pub experiment: String,
    /// The metric compared.
    pub metric: Metric,
    /// The pre-period covariate.
    pub covariate: Metric,
    /// When the experiment started (Unix seconds).
    pub started_at: i64,
    /// Length of the pre-period.
    pub preperiod: Duration,
}

/// Where per-unit outcomes come from.
pub trait OutcomeSource: Send + Sync + fmt::Debug {
    /// Per-arm CUPED statistics; `Err(reason)` when the runtime or its store cannot answer.
    fn cuped<'a>(
        &'a self,
        request: &'a CupedRequest,
    ) -> BoxFuture<'a, Result<BTreeMap<String, CupedArm>, String>>;
}

/// The runtime's HTTP API behind the Router's Service.
#[derive(Clone, Debug)]
pub struct RuntimeOutcomes {
    template: String,
    http: HttpClient,
}

/// The in-cluster address of a Router's runtime Service.
pub const DEFAULT_RUNTIME_URL: &str = "http://{service}.{namespace}.svc:8080";

impl RuntimeOutcomes {
    /// Reads from the runtime at `template`, where `{service}` and `{namespace}` are replaced by
    /// the Router's Service and namespace (default [`DEFAULT_RUNTIME_URL`]).
    pub fn new(template: impl Into<String>, timeout: Duration) -> Self {
        Self {
            template: template.into(),
            http: HttpClient::new(timeout),
        }
    }

    /// The request URL.
    pub fn url(&self, r: &CupedRequest) -> String {
        let base = self
            .template
            .replace("{service}", &runtime_name(&r.router))
            .replace("{namespace}", &r.namespace);
        format!(
            "{}/v1/experiments/{}/cuped?metric={}&covariate={}&startedAt={}&preperiod={}s",
            base.trim_end_matches('/'),
            crate::observe::percent_encode(&r.experiment),
            r.metric.as_str(),
            r.covariate.as_str(),
            r.started_at,
            r.preperiod.as_secs()
        )
    }
}

#[derive(Deserialize)]
struct Response {
    arms: BTreeMap<String, CupedArm>,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    message: String,
}

impl OutcomeSource for RuntimeOutcomes {
    fn cuped<'a>(
        &'a self,
        request: &'a CupedRequest,
    ) -> BoxFuture<'a, Result<BTreeMap<String, CupedArm>, String>> {
        Box::pin(async move {
            let url = self.url(request);
            let (status, body) = self.http.get(&url, 1 << 20).await?;
            if status != 200 {
                let message = serde_json::from_slice::<ErrorBody>(&body)
                    .map(|e| e.message)
                    .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
                return Err(format!("GET {url}: HTTP {status}: {message}"));
            }
            serde_json::from_slice::<Response>(&body)
                .map(|r| r.arms)
                .map_err(|e| format!("GET {url}: unexpected body: {e}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_names_the_routers_service_and_the_query() {
        let source = RuntimeOutcomes::new(DEFAULT_RUNTIME_URL, Duration::from_secs(5));
        let url = source.url(&CupedRequest {
            namespace: "support".into(),
            router: "helpdesk".into(),
            experiment: "prompt v2".into(),
            metric: Metric::EscalationRate,
            covariate: Metric::CsatLow,
            started_at: 1_700_000_000,
            preperiod: Duration::from_secs(14 * 86_400),
        });
        assert_eq!(
            url,
            format!(
                "http://{}.support.svc:8080/v1/experiments/prompt%20v2/cuped?metric=escalationRate&covariate=csatLow&startedAt=1700000000&preperiod=1209600s",
                runtime_name("helpdesk")
            )
        );
    }
}
