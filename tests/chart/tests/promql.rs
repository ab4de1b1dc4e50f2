//! Every PromQL expression of the Grafana dashboard and of the alerts, evaluated by a real
//! Prometheus (scrape interval 1 s) scraping a running `switchboard-runtime serve` on the sample
//! knowledge base after a few retrievals. Each expression must evaluate without error; each one
//! over series this demo produces (and not looking a week back) must return data. The alert rules
//! are also loaded into Prometheus's rule manager, which must report every rule healthy.

use std::time::{Duration, Instant};

use switchboard_chart_tests::harness::{
    http, instant_query, instant_samples, promtool_test_rules, rule_health, start_prometheus,
    start_runtime, stored_metric_names,
};
use switchboard_chart_tests::{
    alert_expressions, chart_dir, dashboard_expressions, kind, metric_names, render, root,
    rule_groups, substitute_dashboard_variables,
};

/// A document of the sample knowledge base past its freshness class's `staleAfter`.
const STALE_DOCUMENT: &str = "notes/refund-faq-2024.txt";

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

    // Prometheus has scraped the runtime once before any traffic: every document's retrieval
    // counter is there at zero, so increase() counts first retrievals too.
    let started = Instant::now();
    while instant_query(
        prometheus,
        &format!("switchboard_document_retrievals_total{{document=\"{STALE_DOCUMENT}\"}} == 0"),
    ) != Ok(1)
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no zero retrieval counter for {STALE_DOCUMENT}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }

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
    // An agent searches without recency decay (the stage switch of the Retrieve API) and finds
    // the 2024 refund FAQ: a policy-class document last modified 2024-06-01, past the class's
    // staleAfter (a year), still retrieved. (With decay the 2026 policy outranks it, as
    // docs/retrieval.md shows.)
    let body = serde_json::json!({
        "query": "How long do I have to ask for a refund? Can I just reply to my receipt email?",
        "topK": 3,
        "stages": {"recency": false},
    })
    .to_string();
    let (status, text) = http(runtime_addr, "POST", "/v1/retrieve", &body).expect("retrieve");
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains(STALE_DOCUMENT),
        "the stale FAQ is not retrieved: {text}"
    );

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

    // The runtime exports the stale document as stale (and an evergreen guide as not), and the
    // alert's expression finds it against the live series.
    let stale = |document: &str| {
        instant_samples(
            prometheus,
            &format!("switchboard_document_stale{{document=\"{document}\"}}"),
        )
        .expect("query")
        .first()
        .map(|(_, v)| *v)
    };
    assert_eq!(stale(STALE_DOCUMENT), Some(1.0));
    assert_eq!(stale("guides/password-reset.md"), Some(0.0));
    let modified = instant_samples(
        prometheus,
        &format!(
            "switchboard_document_last_modified_timestamp_seconds{{document=\"{STALE_DOCUMENT}\"}}"
        ),
    )
    .expect("query");
    assert_eq!(
        modified.first().map(|(_, v)| *v),
        Some(1_717_200_000.0),
        "2024-06-01"
    );
    let stale_alert = alert_expressions(&prometheus_rule)
        .into_iter()
        .find(|e| e.origin == "alert: SwitchboardStaleDocumentHighTraffic")
        .expect("the stale document alert");
    let firing = instant_samples(prometheus, &stale_alert.promql).expect("alert expression");
    assert!(
        firing
            .iter()
            .any(|(labels, _)| labels.get("document").map(String::as_str) == Some(STALE_DOCUMENT)),
        "the alert's expression does not find {STALE_DOCUMENT}: {firing:?}\n{}",
        stale_alert.promql
    );

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

/// A promtool unit test of the rendered stale-document alert: it stays pending for its `for: 1h`
/// and then fires with the document's label; and the operator's staleness query (the
/// KnowledgeBase controller's) returns only the documents of the runtimes of the Routers asked
/// about, with their share.
#[test]
fn the_stale_document_alert_fires_and_the_operator_query_is_scoped_to_its_routers() {
    let work = tempfile::tempdir().expect("tempdir");
    let prometheus_rule = render(&["-f", "ci/full-values.yaml"])
        .into_iter()
        .find(|o| kind(o) == "PrometheusRule")
        .expect("PrometheusRule");
    let mut groups = serde_yaml::Mapping::new();
    groups.insert("groups".into(), rule_groups(&prometheus_rule).clone());
    std::fs::write(
        work.path().join("switchboard.rules.yaml"),
        serde_yaml::to_string(&groups).expect("yaml"),
    )
    .expect("rules");

    // One runtime's series, as scraped (job and instance are target labels).
    let runtime = |instance: &'static str| {
        move |name: &str, extra: &str, values: &str| {
            serde_json::json!({
                "series": format!("{name}{{job=\"switchboard-runtime\",instance=\"{instance}\"{extra}}}"),
                "values": values,
            })
        }
    };
    let a = runtime("10.0.0.1:8080");
    let b = runtime("10.0.0.2:8080");
    let faq = format!(",document=\"{STALE_DOCUMENT}\"");
    let policy = ",document=\"policies/refund-policy.md\"";
    let other = ",document=\"wiki/Refund-Policy.html\"";
    // Per minute: 20 searches, 1 of them retrieving the stale FAQ (5%) and 10 the current policy.
    let alert_series = vec![
        a(
            "switchboard_retrieval_stage_seconds_count",
            ",stage=\"total\"",
            "0+20x200",
        ),
        a("switchboard_document_retrievals_total", &faq, "0+1x200"),
        a("switchboard_document_retrievals_total", policy, "0+10x200"),
        a("switchboard_document_stale", &faq, "1x200"),
        a("switchboard_document_stale", policy, "0x200"),
    ];
    // The operator's query, over two runtimes of two Routers (same job, as one PodMonitor
    // would scrape them): frontline retrieves the stale FAQ at 1% (under the 2% minimum) and
    // the stale wiki page at 10%; the other Router's runtime retrieves the FAQ at 75%.
    let info = |router: &str| format!(",router=\"{router}\",revision=\"sha256:1\"");
    let operator_series = vec![
        a(
            "switchboard_runtime_config_info",
            &info("support/frontline"),
            "1x200",
        ),
        a(
            "switchboard_retrieval_stage_seconds_count",
            ",stage=\"total\"",
            "0+100x200",
        ),
        a("switchboard_document_retrievals_total", &faq, "0+1x200"),
        a("switchboard_document_retrievals_total", other, "0+10x200"),
        a("switchboard_document_stale", &faq, "1x200"),
        a("switchboard_document_stale", other, "1x200"),
        a(
            "switchboard_document_last_modified_timestamp_seconds",
            other,
            "1739318400x200",
        ),
        b(
            "switchboard_runtime_config_info",
            &info("support/other"),
            "1x200",
        ),
        b(
            "switchboard_retrieval_stage_seconds_count",
            ",stage=\"total\"",
            "0+20x200",
        ),
        b("switchboard_document_retrievals_total", &faq, "0+15x200"),
        b("switchboard_document_stale", &faq, "1x200"),
    ];
    let queries = |routers: &[&str]| {
        switchboard_operator::knowledge_base::content::stale_queries(
            &routers.iter().map(|r| (*r).to_owned()).collect::<Vec<_>>(),
            Duration::from_secs(3600),
            0.02,
        )
    };
    let frontline = queries(&["support/frontline"]);
    let both = queries(&["support/frontline", "support/other"]);
    let labels = |document: &str| format!("{{document=\"{document}\"}}");
    let test = serde_json::json!({
        "rule_files": ["switchboard.rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": alert_series,
                "alert_rule_test": [
                    // Pending during its `for: 1h`: nothing fires yet.
                    {"eval_time": "30m", "alertname": "SwitchboardStaleDocumentHighTraffic", "exp_alerts": []},
                    {"eval_time": "2h", "alertname": "SwitchboardStaleDocumentHighTraffic", "exp_alerts": [{
                        "exp_labels": {
                            "severity": "info", "team": "support-platform",
                            "job": "switchboard-runtime", "document": STALE_DOCUMENT,
                        },
                        "exp_annotations": {
                            "summary": format!("Stale document {STALE_DOCUMENT} answers 5% of queries"),
                            "description": "Update or retire the document at its source; the next ingest picks it up. The KnowledgeBase's status.topStaleDocuments lists the stale documents by traffic (condition ContentFresh).",
                        },
                    }]},
                ],
            },
            {
                "interval": "1m",
                "input_series": operator_series,
                "promql_expr_test": [
                    {"expr": frontline.stale, "eval_time": "2h",
                     "exp_samples": [{"labels": labels("wiki/Refund-Policy.html"), "value": 0.1}]},
                    {"expr": frontline.modified, "eval_time": "2h",
                     "exp_samples": [{"labels": labels("wiki/Refund-Policy.html"), "value": 1_739_318_400}]},
                    {"expr": frontline.past_stale_after, "eval_time": "2h",
                     "exp_samples": [{"labels": "{}", "value": 2}]},
                    // Several Routers on one KnowledgeBase: their runtimes are summed.
                    {"expr": both.stale, "eval_time": "2h",
                     "exp_samples": [
                        {"labels": labels(STALE_DOCUMENT), "value": 16.0 / 120.0},
                        {"labels": labels("wiki/Refund-Policy.html"), "value": 10.0 / 120.0},
                     ]},
                ],
            },
        ],
    });
    let test_file = work.path().join("switchboard.rules.test.yaml");
    std::fs::write(&test_file, serde_yaml::to_string(&test).expect("yaml")).expect("test file");
    match promtool_test_rules(&test_file) {
        Ok(out) => eprintln!("{out}"),
        Err(out) => panic!(
            "promtool test rules failed:\n{out}\n{}",
            std::fs::read_to_string(&test_file).unwrap_or_default()
        ),
    }
}
