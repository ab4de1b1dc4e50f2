//! Reading outcome counts: the [`MetricsSource`] trait, its Prometheus implementation, and the
//! PromQL of docs/metrics.md.
//!
//! Counters of the runtime only appear once incremented, so a query over the *trials* that returns
//! no series is missing data (it holds a rollout, never promotes it), while an *events* query that
//! returns no series next to trials means zero events.

use std::{collections::BTreeMap, time::Duration};

use serde::Deserialize;
use switchboard_analysis::Counts;
use switchboard_crds::{Guardrail, Metric};

use crate::{
    http_client::HttpClient,
    ports::{BoxFuture, MetricsSource, Sample},
};

/// The Prometheus HTTP API (`GET /api/v1/query`).
#[derive(Clone, Debug)]
pub struct Prometheus {
    base: String,
    http: HttpClient,
}

impl Prometheus {
    /// A source querying the server at `base` (e.g. `http://prometheus:9090`).
    pub fn new(base: impl Into<String>, timeout: Duration) -> Self {
        Self {
            base: base.into().trim_end_matches('/').to_owned(),
            http: HttpClient::new(timeout),
        }
    }

    /// The URL of an instant query.
    pub fn query_url(&self, promql: &str) -> String {
        format!(
            "{}/api/v1/query?query={}",
            self.base,
            percent_encode(promql)
        )
    }
}

impl MetricsSource for Prometheus {
    fn query<'a>(&'a self, promql: &'a str) -> BoxFuture<'a, Result<Vec<Sample>, String>> {
        Box::pin(async move {
            let url = self.query_url(promql);
            let (status, body) = self.http.get(&url, 16 << 20).await?;
            parse_response(status, &body)
        })
    }
}

/// Percent-encodes a query parameter value (RFC 3986 unreserved characters stay).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(Deserialize)]
struct ApiResponse {
    status: String,
    #[serde(default)]
    data: Option<ApiData>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApiData {
    result_type: String,
    result: serde_json::Value,
}

#[derive(Deserialize)]
struct VectorSample {
    #[serde(default)]
    metric: BTreeMap<String, String>,
    value: (f64, String),
}

/// Parses a `/api/v1/query` response (vector or scalar results).
pub fn parse_response(status: u16, body: &[u8]) -> Result<Vec<Sample>, String> {
    let response: ApiResponse = serde_json::from_slice(body).map_err(|e| {
        let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        format!("Prometheus answered HTTP {status} with an unreadable body ({e}): {text}")
    })?;
    if response.status != "success" {
        return Err(format!(
            "Prometheus refused the query (HTTP {status}, {}): {}",
            response.error_type.unwrap_or_default(),
            response.error.unwrap_or_default()
        ));
    }
    let data = response
        .data
        .ok_or_else(|| "Prometheus answered without data".to_owned())?;
    let value = |v: &str| {
        v.parse::<f64>()
            .map_err(|e| format!("Prometheus sample value {v:?}: {e}"))
    };
    match data.result_type.as_str() {
        "vector" => {
            let samples: Vec<VectorSample> = serde_json::from_value(data.result)
                .map_err(|e| format!("Prometheus vector result: {e}"))?;
            samples
                .into_iter()
                .map(|s| {
                    Ok(Sample {
                        labels: s.metric,
                        value: value(&s.value.1)?,
                    })
                })
                .collect()
        }
        "scalar" => {
            let (_, v): (f64, String) = serde_json::from_value(data.result)
                .map_err(|e| format!("Prometheus scalar result: {e}"))?;
            Ok(vec![Sample {
                labels: BTreeMap::new(),
                value: value(&v)?,
            }])
        }
        other => Err(format!(
            "Prometheus answered a {other} result to an instant query"
        )),
    }
}

/// A count from a `sum(increase(...))` query: `Ok(None)` when no series matched. `increase()`
/// extrapolates, so the value is rounded to an integer.
pub async fn count(source: &dyn MetricsSource, promql: &str) -> Result<Option<u64>, String> {
    let samples = source.query(promql).await?;
    let Some(first) = samples.first() else {
        return Ok(None);
    };
    let total: f64 = samples.iter().map(|s| s.value).sum();
    if !total.is_finite() || first.value.is_nan() {
        return Err(format!("{promql} returned {total}"));
    }
    // Counter resets can make extrapolated increases slightly negative.
    let rounded = total.round().max(0.0);
    // Integers up to 2^53 are exact in f64; counts here are far below.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Ok(Some(rounded as u64))
}

/// A PromQL string literal.
fn literal(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Matcher of the `router` label: one Router exactly, several by an anchored alternation.
pub fn router_matcher(routers: &[String]) -> String {
    match routers {
        [one] => format!("router={}", literal(one)),
        many => {
            let alternation = many
                .iter()
                .map(|r| regex_escape(r))
                .collect::<Vec<_>>()
                .join("|");
            format!("router=~{}", literal(&alternation))
        }
    }
}

fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Range of a window in a form every Prometheus version parses (`[86400s]`).
pub fn range(window: Duration) -> String {
    format!(
        "[{}]",
        switchboard_crds::units::prometheus_duration(window.max(Duration::from_millis(1)))
    )
}

/// Which series a guardrail compares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Arm {
    /// Served answers of one adapter version of a lineage.
    AdapterVersion {
        /// Routers (`namespace/name`) serving the lineage.
        routers: Vec<String>,
        /// Lineage.
        lineage: String,
        /// Version.
        version: String,
    },
    /// Mirrored requests of a Shadow candidate: `side` is `baseline` or `candidate`.
    Shadow {
        /// Routers serving the lineage.
        routers: Vec<String>,
        /// Lineage.
        lineage: String,
        /// The candidate version.
        version: String,
        /// `baseline` or `candidate`.
        side: &'static str,
    },
    /// One arm of an Experiment.
    ExperimentArm {
        /// The Experiment's Router.
        router: String,
        /// Experiment name.
        experiment: String,
        /// Arm (`holdout`, the control or a variant).
        arm: String,
    },
}

impl Arm {
    fn selector(&self) -> String {
        match self {
            Self::AdapterVersion {
                routers,
                lineage,
                version,
            }
            | Self::Shadow {
                routers,
                lineage,
                version,
                ..
            } => format!(
                "{},lineage={},adapter_version={}",
                router_matcher(routers),
                literal(lineage),
                literal(version)
            ),
            Self::ExperimentArm {
                router,
                experiment,
                arm,
            } => format!(
                "router={},experiment={},arm={}",
                literal(router),
                literal(experiment),
                literal(arm)
            ),
        }
    }
}

/// The (events, trials) queries of `metric` for `arm` over `window`, as in docs/metrics.md.
/// `settle` is the guardrail's follow-up (zero for the answer-time metrics): an outcome metric
/// compares the answers given between `window + settle` and `settle` ago
/// (`switchboard_interactions_total` offset by `settle`) with the feedback that arrived within
/// `settle` of each (`switchboard_feedback_settled_total{settle}`, counted when its answer is
/// `settle` old), so a young arm and an old one are compared at the same follow-up.
/// `Err` for a metric the arm cannot measure (outcomes of unserved shadow answers; divergence
/// of served ones).
pub fn metric_queries(
    metric: Metric,
    arm: &Arm,
    window: Duration,
    settle: Duration,
) -> Result<(String, String), String> {
    let sel = arm.selector();
    let w = range(window);
    let sum = |series: &str, extra: &str| format!("sum(increase({series}{{{sel}{extra}}}{w}))");
    if let Arm::Shadow { side, .. } = arm {
        let check = match metric {
            Metric::RefusalRate => "refusal",
            Metric::InvalidCitationRate => "invalid_citation",
            Metric::RetrievalFailureRate => "retrieval_failure",
            Metric::ShadowDivergence => "divergent",
            other => {
                return Err(format!(
                    "{} is not measured on shadow answers (they are never served)",
                    other.as_str()
                ));
            }
        };
        return Ok((
            sum(
                "switchboard_shadow_checks_total",
                &format!(",side={},check={}", literal(side), literal(check)),
            ),
            sum("switchboard_shadow_requests_total", ""),
        ));
    }
    if metric.is_outcome() && !settle.is_zero() {
        let h = switchboard_crds::units::prometheus_duration(settle);
        let settled = |outcome: &str| {
            sum(
                "switchboard_feedback_settled_total",
                &format!("{outcome},settle=\"{h}\""),
            )
        };
        let answers =
            format!("sum(increase(switchboard_interactions_total{{{sel}}}{w} offset {h}))");
        let rated = settled(",outcome=~\"csat_[1-5]\"");
        return Ok(match metric {
            Metric::EscalationRate => (settled(",outcome=\"escalated\""), answers),
            Metric::ReopenRate => (settled(",outcome=\"reopened\""), answers),
            Metric::ResolutionRate => (settled(",outcome=\"resolved\""), answers),
            Metric::CsatLow => (settled(",outcome=~\"csat_1|csat_2\""), rated),
            Metric::CsatHigh => (settled(",outcome=~\"csat_4|csat_5\""), rated),
            other => return Err(format!("{} is not an outcome metric", other.as_str())),
        });
    }
    let interactions = sum("switchboard_interactions_total", "");
    let feedback = |outcome: &str| sum("switchboard_feedback_total", outcome);
    let checks = |check: &str| {
        sum(
            "switchboard_answer_checks_total",
            &format!(",check={}", literal(check)),
        )
    };
    let csat_trials = feedback(",outcome=~\"csat_[1-5]\"");
    Ok(match metric {
        Metric::EscalationRate => (feedback(",outcome=\"escalated\""), interactions),
        Metric::ReopenRate => (feedback(",outcome=\"reopened\""), interactions),
        Metric::ResolutionRate => (feedback(",outcome=\"resolved\""), interactions),
        Metric::CsatLow => (feedback(",outcome=~\"csat_1|csat_2\""), csat_trials),
        Metric::CsatHigh => (feedback(",outcome=~\"csat_4|csat_5\""), csat_trials),
        Metric::RefusalRate => (checks("refusal"), interactions),
        Metric::InvalidCitationRate => (checks("invalid_citation"), interactions),
        Metric::RetrievalFailureRate => (checks("retrieval_failure"), interactions),
        Metric::ShadowDivergence => {
            return Err(
                "shadowDivergence is only measured while the candidate is in Shadow".to_owned(),
            );
        }
    })
}

/// The query of the answers of `arm` younger than `settle`: given, but not compared yet.
pub fn unsettled_query(arm: &Arm, settle: Duration) -> String {
    format!(
        "sum(increase(switchboard_interactions_total{{{}}}{}))",
        arm.selector(),
        range(settle)
    )
}

/// Events out of trials of `metric` for `arm` (at follow-up `settle`). Missing trials (no
/// series) are an error: missing data. Missing events next to trials are zero events.
pub async fn arm_counts(
    source: &dyn MetricsSource,
    metric: Metric,
    arm: &Arm,
    window: Duration,
    settle: Duration,
) -> Result<Counts, String> {
    let (events_q, trials_q) = metric_queries(metric, arm, window, settle)?;
    let trials = count(source, &trials_q)
        .await?
        .ok_or_else(|| format!("no data for {trials_q}"))?;
    let events = count(source, &events_q).await?.unwrap_or(0);
    // Scrapes of the two counters are not atomic: never report more events than trials.
    Ok(Counts {
        events: events.min(trials),
        trials,
    })
}

/// Baseline and candidate counts of one guardrail metric over its window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArmObservation {
    /// The stable version (or, in the post-promotion watch, the previous version).
    pub baseline: Counts,
    /// The candidate.
    pub candidate: Counts,
    /// Answers of (baseline, candidate) younger than the guardrail's follow-up, not compared
    /// yet; `None` for the answer-time metrics.
    pub unsettled: Option<(u64, u64)>,
}

/// Per guardrail metric: the counts, or why they could not be read. A metric absent from the map
/// is missing too. Missing data holds the rollout; it never promotes.
pub type Observations = BTreeMap<Metric, Result<ArmObservation, String>>;

/// Metrics the runtime can measure on shadow answers (never shown to users); outcome metrics
/// (escalations, CSAT, ...) only exist for answers that were served.
pub fn observable_in_shadow(metric: Metric) -> bool {
    matches!(
        metric,
        Metric::RefusalRate
            | Metric::InvalidCitationRate
            | Metric::RetrievalFailureRate
            | Metric::ShadowDivergence
    )
}

/// What a rollout compares: the Routers serving a lineage, and the baseline and candidate
/// versions in the current stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RolloutScope {
    /// Routers (`namespace/name`) that load this AdapterPatch.
    pub routers: Vec<String>,
    /// Lineage.
    pub lineage: String,
    /// Baseline version (stable, or the previous stable in the post-promotion watch).
    pub baseline: String,
    /// Candidate version.
    pub candidate: String,
    /// Shadow stage: compare the two sides of mirrored requests of the candidate.
    pub shadow: bool,
}

impl RolloutScope {
    /// The baseline and candidate arms.
    pub fn arms(&self) -> (Arm, Arm) {
        if self.shadow {
            let side = |side| Arm::Shadow {
                routers: self.routers.clone(),
                lineage: self.lineage.clone(),
                version: self.candidate.clone(),
                side,
            };
            (side("baseline"), side("candidate"))
        } else {
            let version = |v: &str| Arm::AdapterVersion {
                routers: self.routers.clone(),
                lineage: self.lineage.clone(),
                version: v.to_owned(),
            };
            (version(&self.baseline), version(&self.candidate))
        }
    }
}

/// Reads every guardrail's counts for a rollout stage. Guardrails the stage cannot measure are
/// left out (the state machine skips them in Shadow); errors are kept per metric.
pub async fn observe_rollout(
    source: &dyn MetricsSource,
    scope: &RolloutScope,
    guardrails: &[Guardrail],
) -> Observations {
    let mut out = Observations::new();
    let (baseline_arm, candidate_arm) = scope.arms();
    for g in guardrails {
        if scope.shadow && !observable_in_shadow(g.metric) {
            continue;
        }
        if scope.routers.is_empty() {
            out.insert(
                g.metric,
                Err("no Router loads this adapter, so nothing is measured".to_owned()),
            );
            continue;
        }
        let window = g.window.duration();
        let settle = if scope.shadow {
            Duration::ZERO
        } else {
            g.settle()
        };
        let observation = async {
            let mut baseline = arm_counts(source, g.metric, &baseline_arm, window, settle).await;
            if scope.shadow && g.metric == Metric::ShadowDivergence {
                // The served answer never diverges from itself: the baseline is zero events
                // out of the same mirrored requests.
                baseline = arm_counts(source, g.metric, &candidate_arm, window, settle)
                    .await
                    .map(|c| Counts {
                        events: 0,
                        trials: c.trials,
                    });
            }
            let candidate = arm_counts(source, g.metric, &candidate_arm, window, settle).await?;
            let unsettled = if settle.is_zero() {
                None
            } else {
                // Informational (status): no series is no young answer.
                let young = |arm| async move {
                    count(source, &unsettled_query(arm, settle))
                        .await
                        .map(|n| n.unwrap_or(0))
                };
                Some((young(&baseline_arm).await?, young(&candidate_arm).await?))
            };
            Ok(ArmObservation {
                baseline: baseline?,
                candidate,
                unsettled,
            })
        };
        out.insert(g.metric, observation.await);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Answers from a function of the query, recording what was asked.
    #[derive(Debug, Default)]
    struct Recorded {
        asked: Mutex<Vec<String>>,
    }

    impl MetricsSource for Recorded {
        fn query<'a>(&'a self, promql: &'a str) -> BoxFuture<'a, Result<Vec<Sample>, String>> {
            Box::pin(async move {
                self.asked.lock().unwrap().push(promql.to_owned());
                if promql.contains("feedback") {
                    // No escalation series yet.
                    Ok(vec![])
                } else {
                    Ok(vec![Sample {
                        labels: BTreeMap::new(),
                        value: 99.6,
                    }])
                }
            })
        }
    }

    fn scope(shadow: bool) -> RolloutScope {
        RolloutScope {
            routers: vec!["support/frontline".to_owned()],
            lineage: "pricing".to_owned(),
            baseline: "1.0.0".to_owned(),
            candidate: "1.1.0".to_owned(),
            shadow,
        }
    }

    #[test]
    fn queries_follow_the_metrics_contract() {
        let (base, cand) = scope(false).arms();
        let w = Duration::from_secs(24 * 3600);
        let none = Duration::ZERO;
        let hour = Duration::from_secs(3600);
        // Outcome metrics at a follow-up: the answers given between window + settle and settle
        // ago, and the feedback that arrived within settle of each.
        assert_eq!(
            metric_queries(Metric::EscalationRate, &cand, w, hour).unwrap(),
            (
                r#"sum(increase(switchboard_feedback_settled_total{router="support/frontline",lineage="pricing",adapter_version="1.1.0",outcome="escalated",settle="3600s"}[86400s]))"#.to_owned(),
                r#"sum(increase(switchboard_interactions_total{router="support/frontline",lineage="pricing",adapter_version="1.1.0"}[86400s] offset 3600s))"#.to_owned(),
            )
        );
        assert_eq!(
            metric_queries(Metric::CsatLow, &base, Duration::from_secs(60), Duration::from_millis(1500)).unwrap(),
            (
                r#"sum(increase(switchboard_feedback_settled_total{router="support/frontline",lineage="pricing",adapter_version="1.0.0",outcome=~"csat_1|csat_2",settle="1500ms"}[60s]))"#.to_owned(),
                r#"sum(increase(switchboard_feedback_settled_total{router="support/frontline",lineage="pricing",adapter_version="1.0.0",outcome=~"csat_[1-5]",settle="1500ms"}[60s]))"#.to_owned(),
            )
        );
        assert_eq!(
            unsettled_query(&cand, hour),
            r#"sum(increase(switchboard_interactions_total{router="support/frontline",lineage="pricing",adapter_version="1.1.0"}[3600s]))"#
        );
        // Without a follow-up (the Experiment analysis' own per-arm counts): as reported.
        assert_eq!(
            metric_queries(Metric::EscalationRate, &cand, w, none).unwrap(),
            (
                r#"sum(increase(switchboard_feedback_total{router="support/frontline",lineage="pricing",adapter_version="1.1.0",outcome="escalated"}[86400s]))"#.to_owned(),
                r#"sum(increase(switchboard_interactions_total{router="support/frontline",lineage="pricing",adapter_version="1.1.0"}[86400s]))"#.to_owned(),
            )
        );
        assert_eq!(
            metric_queries(Metric::InvalidCitationRate, &base, w, none)
                .unwrap()
                .0,
            r#"sum(increase(switchboard_answer_checks_total{router="support/frontline",lineage="pricing",adapter_version="1.0.0",check="invalid_citation"}[86400s]))"#
        );
        assert!(metric_queries(Metric::ShadowDivergence, &base, w, none).is_err());

        let (sb, sc) = scope(true).arms();
        assert_eq!(
            metric_queries(Metric::RefusalRate, &sb, w, none).unwrap(),
            (
                r#"sum(increase(switchboard_shadow_checks_total{router="support/frontline",lineage="pricing",adapter_version="1.1.0",side="baseline",check="refusal"}[86400s]))"#.to_owned(),
                r#"sum(increase(switchboard_shadow_requests_total{router="support/frontline",lineage="pricing",adapter_version="1.1.0"}[86400s]))"#.to_owned(),
            )
        );
        assert!(
            metric_queries(Metric::ShadowDivergence, &sc, w, none)
                .unwrap()
                .0
                .contains(r#"side="candidate",check="divergent""#)
        );
        assert!(metric_queries(Metric::EscalationRate, &sc, w, hour).is_err());

        let arm = Arm::ExperimentArm {
            router: "support/frontline".to_owned(),
            experiment: "rewrite".to_owned(),
            arm: "holdout".to_owned(),
        };
        assert_eq!(
            metric_queries(
                Metric::ResolutionRate,
                &arm,
                Duration::from_millis(1500),
                Duration::from_secs(60)
            )
            .unwrap()
            .0,
            r#"sum(increase(switchboard_feedback_settled_total{router="support/frontline",experiment="rewrite",arm="holdout",outcome="resolved",settle="60s"}[1500ms]))"#
        );
    }

    #[test]
    fn several_routers_match_by_anchored_alternation() {
        assert_eq!(
            router_matcher(&["a/r.1".to_owned(), "a/r2".to_owned()]),
            r#"router=~"a/r\\.1|a/r2""#
        );
        assert_eq!(literal("a\"b"), r#""a\"b""#);
        assert_eq!(
            percent_encode(r#"sum(x{a="b"})"#),
            "sum%28x%7Ba%3D%22b%22%7D%29"
        );
    }

    #[tokio::test]
    async fn missing_events_are_zero_but_missing_trials_hold() {
        let source = Recorded::default();
        let obs = observe_rollout(
            &source,
            &scope(false),
            &[Guardrail::new(
                Metric::EscalationRate,
                switchboard_crds::Percent::from_fraction(0.05),
            )],
        )
        .await;
        let o = obs[&Metric::EscalationRate].clone().unwrap();
        assert_eq!(
            o.candidate,
            Counts {
                events: 0,
                trials: 100
            }
        );
        // Events and trials of each arm, then each arm's answers still within the follow-up.
        assert_eq!(source.asked.lock().unwrap().len(), 6);
        assert_eq!(o.unsettled, Some((100, 100)));

        #[derive(Debug)]
        struct Empty;
        impl MetricsSource for Empty {
            fn query<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Vec<Sample>, String>> {
                Box::pin(async { Ok(vec![]) })
            }
        }
        let obs = observe_rollout(
            &Empty,
            &scope(false),
            &[Guardrail::new(
                Metric::EscalationRate,
                switchboard_crds::Percent::from_fraction(0.05),
            )],
        )
        .await;
        let err = obs[&Metric::EscalationRate].clone().unwrap_err();
        assert!(err.starts_with("no data for "), "{err}");

        // In Shadow, outcome guardrails are not observed at all.
        let obs = observe_rollout(
            &Empty,
            &scope(true),
            &[Guardrail::new(
                Metric::EscalationRate,
                switchboard_crds::Percent::from_fraction(0.05),
            )],
        )
        .await;
        assert!(obs.is_empty());
    }

    #[test]
    fn parses_prometheus_answers() {
        let vector = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1700000000.1,"41.9"]}]}}"#;
        assert_eq!(parse_response(200, vector).unwrap()[0].value, 41.9);
        let empty = br#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert!(parse_response(200, empty).unwrap().is_empty());
        let scalar = br#"{"status":"success","data":{"resultType":"scalar","result":[1.0,"3"]}}"#;
        assert_eq!(parse_response(200, scalar).unwrap()[0].value, 3.0);
        let error = br#"{"status":"error","errorType":"bad_data","error":"parse error"}"#;
        let e = parse_response(400, error).unwrap_err();
        assert!(e.contains("bad_data") && e.contains("parse error"), "{e}");
        assert!(parse_response(502, b"<html>bad gateway</html>").is_err());
    }
}
