//! What a Router's runtime reads from its outcome store: per-unit experiment data (CUPED) and the
//! knowledge base's coverage gaps; the [`OutcomeSource`] trait and its HTTP implementation.
//!
//! Prometheus counts outcomes per arm, which is all the guardrails and the per-interaction
//! estimates need. CUPED needs each unit's outcome rate next to its own rate before the
//! experiment, and unit ids do not belong in metric labels. The runtime keeps interactions and
//! outcomes in its outcome store (PostgreSQL shared by every replica in a cluster) and answers
//! `GET /v1/experiments/{name}/cuped` with per-arm sufficient statistics; the operator reads them
//! through the Router's Service. The same store holds the questions the knowledge base does not
//! answer (escalated, nothing retrieved, refused): `GET /v1/coverage-gaps` clusters them by
//! meaning, and the KnowledgeBase controller reads them for `ContentCovers`.

use std::{collections::BTreeMap, fmt, time::Duration};

use serde::Deserialize;
use switchboard_analysis::{CupedArm, ExperimentUnits};

use crate::{
    http_client::HttpClient,
    names::runtime_name,
    ports::{
        BoxFuture, CoverageReport, CoverageRequest, CupedRequest, HoldoutRequest, OutcomeSource,
        UnitsRequest,
    },
};

/// The runtime's admin API behind the Router's admin Service.
#[derive(Clone)]
pub struct RuntimeOutcomes {
    template: String,
    http: HttpClient,
    /// Reads the Router's admin token from its `<router>-runtime-token` Secret; `None`: requests
    /// go without one (a test's runtime stand-in).
    secrets: Option<kube::Client>,
}

impl fmt::Debug for RuntimeOutcomes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuntimeOutcomes")
            .field("template", &self.template)
            .field("admin_tokens", &self.secrets.is_some())
            .finish_non_exhaustive()
    }
}

impl RuntimeOutcomes {
    /// Reads from the runtime at `template`, where `{service}` and `{namespace}` are replaced by
    /// the Router's Service and namespace (default [`DEFAULT_RUNTIME_URL`]).
    pub fn new(template: impl Into<String>, timeout: Duration) -> Self {
        Self {
            template: template.into(),
            http: HttpClient::new(timeout),
            secrets: None,
        }
    }

    /// Sends each Router's admin token (key `admin-token` of its `<router>-runtime-token`
    /// Secret, which the Router controller creates) with the requests.
    #[must_use]
    pub fn with_admin_tokens(mut self, client: kube::Client) -> Self {
        self.secrets = Some(client);
        self
    }

    /// The admin token of `namespace/router`, when tokens are sent.
    async fn admin_token(&self, namespace: &str, router: &str) -> Result<Option<String>, String> {
        let Some(client) = &self.secrets else {
            return Ok(None);
        };
        let name = crate::names::token_secret_name(router);
        let secret =
            kube::Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), namespace)
                .get_opt(&name)
                .await
                .map_err(|e| format!("reading the admin token (Secret {namespace}/{name}): {e}"))?;
        let token = secret
            .and_then(|s| s.data)
            .and_then(|d| d.get(crate::names::ADMIN_TOKEN_KEY).cloned())
            .map(|b| String::from_utf8_lossy(&b.0).trim().to_owned())
            .filter(|t| !t.is_empty());
        match token {
            Some(t) => Ok(Some(t)),
            None => Err(format!(
                "Secret {namespace}/{name} has no {} yet (the Router controller writes it)",
                crate::names::ADMIN_TOKEN_KEY
            )),
        }
    }

    fn base(&self, namespace: &str, router: &str) -> String {
        self.template
            .replace("{service}", &runtime_name(router))
            .replace("{namespace}", namespace)
            .trim_end_matches('/')
            .to_owned()
    }

    /// The request URL.
    pub fn url(&self, r: &CupedRequest) -> String {
        format!(
            "{}/v1/experiments/{}/cuped?metric={}&covariate={}&startedAt={}&preperiod={}s&until={}",
            self.base(&r.namespace, &r.router),
            crate::observe::percent_encode(&r.experiment),
            r.metric.as_str(),
            r.covariate.as_str(),
            r.started_at,
            r.preperiod.as_secs(),
            r.settled_before
        )
    }

    /// The unit-level statistics URL.
    pub fn units_url(&self, r: &UnitsRequest) -> String {
        let metrics: Vec<String> = r
            .metrics
            .iter()
            .map(|(m, settle)| format!("{}:{}s", m.as_str(), settle.as_secs()))
            .collect();
        let mut url = format!(
            "{}/v1/experiments/{}/units?startedAt={}&until={}&metrics={}",
            self.base(&r.namespace, &r.router),
            crate::observe::percent_encode(&r.experiment),
            r.started_at,
            r.until,
            crate::observe::percent_encode(&metrics.join(","))
        );
        if !r.segments.is_empty() {
            url.push_str("&segments=");
            url.push_str(&crate::observe::percent_encode(&r.segments.join(",")));
        }
        url
    }

    /// The holdout URL.
    pub fn holdout_url(&self, r: &HoldoutRequest) -> String {
        let metrics: Vec<String> = r
            .metrics
            .iter()
            .map(|(m, settle)| format!("{}:{}s", m.as_str(), settle.as_secs()))
            .collect();
        format!(
            "{}/v1/holdout/units?startedAt={}&until={}&metrics={}",
            self.base(&r.namespace, &r.router),
            r.started_at,
            r.until,
            crate::observe::percent_encode(&metrics.join(","))
        )
    }

    /// The coverage-gaps URL.
    pub fn coverage_url(&self, r: &CoverageRequest) -> String {
        format!(
            "{}/v1/coverage-gaps?since={}s&minQueries={}&limit={}",
            self.base(&r.namespace, &r.router),
            r.window.as_secs(),
            r.min_queries,
            r.limit
        )
    }

    /// GETs `url` and decodes a 200 body; any other status is an error with the runtime's
    /// message.
    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        namespace: &str,
        router: &str,
    ) -> Result<T, String> {
        let token = self.admin_token(namespace, router).await?;
        let (status, body) = self.http.get_with(url, 1 << 20, token.as_deref()).await?;
        if status != 200 {
            let message = serde_json::from_slice::<ErrorBody>(&body)
                .map(|e| e.message)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
            return Err(format!("GET {url}: HTTP {status}: {message}"));
        }
        serde_json::from_slice::<T>(&body).map_err(|e| format!("GET {url}: unexpected body: {e}"))
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
    fn units<'a>(
        &'a self,
        request: &'a UnitsRequest,
    ) -> BoxFuture<'a, Result<ExperimentUnits, String>> {
        Box::pin(async move {
            self.get_json(
                &self.units_url(request),
                &request.namespace,
                &request.router,
            )
            .await
        })
    }

    fn holdout_units<'a>(
        &'a self,
        request: &'a HoldoutRequest,
    ) -> BoxFuture<'a, Result<ExperimentUnits, String>> {
        Box::pin(async move {
            self.get_json(
                &self.holdout_url(request),
                &request.namespace,
                &request.router,
            )
            .await
        })
    }

    fn cuped<'a>(
        &'a self,
        request: &'a CupedRequest,
    ) -> BoxFuture<'a, Result<BTreeMap<String, CupedArm>, String>> {
        Box::pin(async move {
            let url = self.url(request);
            self.get_json::<Response>(&url, &request.namespace, &request.router)
                .await
                .map(|r| r.arms)
        })
    }

    fn coverage_gaps<'a>(
        &'a self,
        request: &'a CoverageRequest,
    ) -> BoxFuture<'a, Result<CoverageReport, String>> {
        Box::pin(async move {
            self.get_json(
                &self.coverage_url(request),
                &request.namespace,
                &request.router,
            )
            .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::{ReportedDocument, ReportedGap};
    use switchboard_crds::Metric;

    #[test]
    fn the_url_names_the_routers_service_and_the_query() {
        let source =
            RuntimeOutcomes::new(crate::names::DEFAULT_RUNTIME_URL, Duration::from_secs(5));
        let url = source.url(&CupedRequest {
            namespace: "support".into(),
            router: "helpdesk".into(),
            experiment: "prompt v2".into(),
            metric: Metric::EscalationRate,
            covariate: Metric::CsatLow,
            started_at: 1_700_000_000,
            preperiod: Duration::from_secs(14 * 86_400),
            settled_before: 1_700_086_400,
        });
        assert_eq!(
            url,
            format!(
                "http://{}-admin.support.svc:8081/v1/experiments/prompt%20v2/cuped?metric=escalationRate&covariate=csatLow&startedAt=1700000000&preperiod=1209600s&until=1700086400",
                runtime_name("helpdesk")
            )
        );
        let units = source.units_url(&UnitsRequest {
            namespace: "support".into(),
            router: "helpdesk".into(),
            experiment: "prompt-v2".into(),
            metrics: vec![(Metric::EscalationRate, Duration::from_secs(72 * 3600))],
            segments: Vec::new(),
            started_at: 1_700_000_000,
            until: 1_700_086_400,
        });
        assert!(
            units.ends_with(
                "/v1/experiments/prompt-v2/units?startedAt=1700000000&until=1700086400&metrics=escalationRate%3A259200s"
            ),
            "{units}"
        );
        let url = source.coverage_url(&CoverageRequest {
            namespace: "support".into(),
            router: "helpdesk".into(),
            window: Duration::from_secs(7 * 86_400),
            min_queries: 5,
            limit: 100,
        });
        assert_eq!(
            url,
            format!(
                "http://{}-admin.support.svc:8081/v1/coverage-gaps?since=604800s&minQueries=5&limit=100",
                runtime_name("helpdesk")
            )
        );
    }

    #[test]
    fn the_runtimes_gap_report_is_read_ignoring_what_the_operator_does_not_use() {
        // The body of GET /v1/coverage-gaps (switchboard-flywheel's GapReport), trimmed.
        let body = r#"{"router":"support/helpdesk","from":1,"until":2,"interactions":400,
            "signals":31,"truncated":false,"clusters":9,"gapsFound":1,
            "gaps":[{"query":"Can Ledgerly run payroll?","interaction":"i-42","volume":12,
              "share":0.03,"escalated":9,"escalationShare":0.75,"retrievalFailures":12,
              "refusals":12,"lowScore":0,
              "examples":["Can Ledgerly run payroll?","payroll for staff"],
              "documents":[{"document":"help-pages/team.html","interactions":7}],
              "firstSeen":10,"lastSeen":20}],
            "settings":{"minScore":null,"threshold":0.75,"minQueries":5,"limit":100,"examples":3},
            "encoder":"all-MiniLM-L6-v2","seconds":0.01}"#;
        let report: CoverageReport = serde_json::from_str(body).unwrap_or_default();
        assert_eq!((report.interactions, report.signals), (400, 31));
        assert_eq!(
            report.gaps,
            [ReportedGap {
                query: "Can Ledgerly run payroll?".into(),
                interaction: "i-42".into(),
                volume: 12,
                share: 0.03,
                escalated: 9,
                documents: vec![ReportedDocument {
                    document: "help-pages/team.html".into()
                }],
                last_seen: 20,
            }]
        );
    }
}
