//! Every PromQL expression of the Grafana dashboard and of the alerts, evaluated by a real
//! Prometheus (scrape interval 1 s) scraping a running `switchboard-runtime serve` on the sample
//! knowledge base after a few retrievals. Each expression must evaluate without error; each one
//! over series this demo produces (and not looking a week back) must return data. The alert rules
//! are also loaded into Prometheus's rule manager, which must report every rule healthy.

use std::time::{Duration, Instant};

use switchboard_chart_tests::harness::{
    http, instant_query, rule_health, start_prometheus, start_runtime, stored_metric_names,
};
use switchboard_chart_tests::{
    alert_expressions, chart_dir, dashboard_expressions, kind, metric_names, render, root,
    rule_groups, substitute_dashboard_variables,
};

/// Windows that a run of a few seconds at a 1 s scrape interval fills.
const WINDOW: &str = "1m";
const RATE_INTERVAL: &str = "20s";

#[test]
fn dashboard_and_alert_queries_evaluate_against_a_live_runtime() {
    assert!(
        root()
            .join(".cache/models/all-MiniLM-L6-v2/model.safetensors")
            .exists(),
        "run hack/setup.sh models"
    );
    let work = tempfile::tempdir().expect("tempdir");

    // The alert rules as a plain rule file, as the PrometheusRule would give them to Prometheus.
    let prometheus_rule = render(&["-f", "ci/full-values.yaml"])
        .into_iter()
        .find(|o| kind(o) == "PrometheusRule")
        .expect("PrometheusRule");
    let rules_file = work.path().join("switchboard.rules.yaml");
    let mut groups = serde_yaml::Mapping::new();
    groups.insert("groups".into(), rule_groups(&prometheus_rule).clone());
    std::fs::write(&rules_file, serde_yaml::to_string(&groups).expect("yaml")).expect("rules");

    let (_runtime, runtime_addr) = start_runtime(work.path());
    let (_prometheus, prometheus) = start_prometheus(work.path(), &[runtime_addr], &[rules_file]);

    // Demo traffic: answerable questions, one nothing in the knowledge base answers, one invalid.
    for query in [
        "How many days do I have to request a refund?",
        "reset two-factor authentication",
        "How do I connect Stripe?",
        "what are the API rate limits",
        "cancel my subscription",
        "quantum chromodynamics lattice gauge zebra migration",
    ] {
        let body = serde_json::json!({ "query": query, "topK": 3 }).to_string();
        let (status, text) = http(runtime_addr, "POST", "/v1/retrieve", &body).expect("retrieve");
        assert_eq!(status, 200, "{query}: {text}");
    }
    let (status, _) =
        http(runtime_addr, "POST", "/v1/retrieve", r#"{"query": "  "}"#).expect("retrieve");
    assert_eq!(status, 400);

    // Enough scrapes after the traffic for rate() and increase() over the test windows.
    let started = Instant::now();
    loop {
        let scraped = instant_query(
            prometheus,
            "count_over_time(switchboard_retrieval_requests_total{outcome=\"ok\"}[1m]) >= 6",
        );
        if scraped == Ok(1) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "Prometheus did not scrape the runtime: {scraped:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    let produced = stored_metric_names(prometheus);
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(chart_dir().join("files/dashboards/switchboard-overview.json"))
            .expect("dashboard"),
    )
    .expect("JSON");
    let mut expressions = dashboard_expressions(&dashboard);
    expressions.extend(alert_expressions(&prometheus_rule));

    let mut errors = Vec::new();
    let (mut evaluated, mut with_data) = (0, 0);
    for expression in &expressions {
        let promql = if expression.from_dashboard {
            substitute_dashboard_variables(&expression.promql, WINDOW, RATE_INTERVAL)
        } else {
            expression.promql.clone()
        };
        evaluated += 1;
        let demo_series = metric_names(&promql).iter().all(|name| {
            produced.iter().any(|p| {
                p == name
                    || p.strip_prefix(name.as_str())
                        .is_some_and(|s| s == "_bucket")
            })
        });
        // Alerts filter on a threshold, so a healthy demo rightly returns nothing for them.
        let expect_data = demo_series && expression.from_dashboard && !promql.contains("offset");
        match instant_query(prometheus, &promql) {
            Err(e) => errors.push(format!("{}: {e}\n  {promql}", expression.origin)),
            Ok(0) if expect_data => errors.push(format!(
                "{}: no data, though the demo produces its series\n  {promql}",
                expression.origin
            )),
            Ok(n) => with_data += usize::from(n > 0),
        }
    }
    eprintln!(
        "{evaluated} expressions evaluated, {with_data} returned data; demo series: {produced:?}"
    );
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    // The demo covers the retrieval panels at least; guard against a vacuous pass.
    assert!(with_data >= 5, "only {with_data} expressions returned data");

    // Prometheus's own rule manager evaluates every alert without error.
    let started = Instant::now();
    loop {
        let health = rule_health(prometheus);
        let alerts = alert_expressions(&prometheus_rule).len();
        let bad: Vec<_> = health.iter().filter(|(_, h, _)| h != "ok").collect();
        if health.len() == alerts && bad.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20)
                && bad.iter().all(|(_, h, _)| h == "unknown"),
            "rules not healthy ({} of {alerts} loaded): {bad:?}",
            health.len()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
