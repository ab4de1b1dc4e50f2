//! Helpers for the chart tests: render the chart with the cached helm binary and pull the PromQL
//! expressions out of the dashboard and the alerts. The tests live in `tests/`.
#![forbid(unsafe_code)]

pub mod harness;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml::Value;

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The chart's directory.
pub fn chart_dir() -> PathBuf {
    root().join("charts/switchboard")
}

/// A tool installed by `hack/setup.sh tools` (helm, promtool, prometheus).
pub fn tool(name: &str) -> PathBuf {
    let path = root().join(".cache/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run hack/setup.sh tools",
        path.display()
    );
    path
}

/// The values files of the two configurations CI renders: defaults, and everything switched on.
pub const VALUE_SETS: [(&str, &[&str]); 2] =
    [("default", &[]), ("full", &["-f", "ci/full-values.yaml"])];

/// Runs helm in the chart directory and returns stdout; panics with helm's stderr on failure.
pub fn helm(args: &[&str]) -> String {
    let output = Command::new(tool("helm"))
        .current_dir(chart_dir())
        .args(args)
        .output()
        .expect("running helm");
    assert!(
        output.status.success(),
        "helm {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("helm prints UTF-8")
}

/// `helm template` (CRDs included) with extra arguments, split into its objects.
pub fn render(extra: &[&str]) -> Vec<Value> {
    let mut args = vec![
        "template",
        "switchboard",
        ".",
        "--namespace",
        "switchboard-system",
        "--include-crds",
    ];
    args.extend_from_slice(extra);
    parse_documents(&helm(&args))
}

/// Splits a multi-document YAML stream into its non-empty documents.
pub fn parse_documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| <Value as serde::Deserialize>::deserialize(doc).expect("valid YAML"))
        .filter(|doc| !doc.is_null())
        .collect()
}

/// `kind` of a rendered object.
pub fn kind(object: &Value) -> &str {
    object["kind"].as_str().unwrap_or_default()
}

/// `metadata.name` of a rendered object.
pub fn name(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

/// One PromQL expression and where it comes from (for failure messages).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expression {
    /// `dashboard: <panel title> [refId]` or `alert: <name>`.
    pub origin: String,
    /// The query as written (dashboard variables not substituted).
    pub promql: String,
    /// Whether it comes from the dashboard (whose variables must be substituted).
    pub from_dashboard: bool,
}

/// Every query of the Grafana dashboard JSON: panel targets, template variables and annotations.
pub fn dashboard_expressions(dashboard: &serde_json::Value) -> Vec<Expression> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                out.push(Expression {
                    origin: format!(
                        "dashboard: {} [{}]",
                        panel["title"].as_str().unwrap_or("?"),
                        target["refId"].as_str().unwrap_or("?")
                    ),
                    promql: expr.to_owned(),
                    from_dashboard: true,
                });
            }
        }
    }
    for annotation in dashboard["annotations"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(expr) = annotation["expr"].as_str() {
            out.push(Expression {
                origin: format!(
                    "dashboard annotation: {}",
                    annotation["name"].as_str().unwrap_or("?")
                ),
                promql: expr.to_owned(),
                from_dashboard: true,
            });
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        // label_values(<selector>, <label>): the selector is a PromQL series selector.
        let Some(definition) = variable["definition"].as_str() else {
            continue;
        };
        if let Some(inner) = definition
            .strip_prefix("label_values(")
            .and_then(|rest| rest.strip_suffix(')'))
            .and_then(|inner| inner.rsplit_once(','))
            .map(|(selector, _label)| selector.trim())
        {
            out.push(Expression {
                origin: format!(
                    "dashboard variable: {}",
                    variable["name"].as_str().unwrap_or("?")
                ),
                promql: inner.to_owned(),
                from_dashboard: true,
            });
        }
    }
    out
}

/// The rule groups of a rendered PrometheusRule (`spec.groups`).
pub fn rule_groups(prometheus_rule: &Value) -> &Value {
    &prometheus_rule["spec"]["groups"]
}

/// Every alert expression of a PrometheusRule.
pub fn alert_expressions(prometheus_rule: &Value) -> Vec<Expression> {
    let mut out = Vec::new();
    for group in rule_groups(prometheus_rule)
        .as_sequence()
        .into_iter()
        .flatten()
    {
        for rule in group["rules"].as_sequence().into_iter().flatten() {
            let name = rule["alert"]
                .as_str()
                .or_else(|| rule["record"].as_str())
                .unwrap_or("?");
            if let Some(expr) = rule["expr"].as_str() {
                out.push(Expression {
                    origin: format!("alert: {name}"),
                    promql: expr.to_owned(),
                    from_dashboard: false,
                });
            }
        }
    }
    out
}

/// Substitutes Grafana's variables with values a plain Prometheus accepts: every template
/// variable selects all (`.*`), the window and rate interval fit a short test run.
pub fn substitute_dashboard_variables(promql: &str, window: &str, rate_interval: &str) -> String {
    promql
        .replace("$__rate_interval", rate_interval)
        .replace("$__interval", rate_interval)
        .replace("$__range", window)
        .replace("$window", window)
        .replace("$router", ".*")
        .replace("$lineage", ".*")
        .replace("$namespace", ".*")
        .replace("$settle", "1s")
}

/// The metric names (`switchboard_*`) an expression reads, with histogram suffixes removed.
pub fn metric_names(promql: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = promql.as_bytes();
    let mut i = 0;
    while let Some(found) = promql[i..].find("switchboard_") {
        let start = i + found;
        let preceded_by_ident =
            start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = promql[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(promql.len(), |len| start + len);
        if !preceded_by_ident {
            let name = &promql[start..end];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name);
            if !names.iter().any(|n| n == base) {
                names.push(base.to_owned());
            }
        }
        i = end;
    }
    names
}

/// The metric names documented in docs/metrics.md (the contract the queries may use).
pub fn documented_metric_names() -> Vec<String> {
    let text = std::fs::read_to_string(root().join("docs/metrics.md")).expect("docs/metrics.md");
    metric_names(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_strip_histogram_suffixes_and_dedupe() {
        let names = metric_names(
            "histogram_quantile(0.5, sum by (le) (rate(switchboard_answer_seconds_bucket{a=\"b\"}[1m]))) \
             / switchboard_answer_seconds_count + my_switchboard_x",
        );
        assert_eq!(names, vec!["switchboard_answer_seconds".to_owned()]);
    }

    #[test]
    fn variables_are_substituted() {
        assert_eq!(
            substitute_dashboard_variables(
                "rate(x{router=~\"$router\"}[$__rate_interval]) + increase(y[$window])",
                "1m",
                "15s"
            ),
            "rate(x{router=~\".*\"}[15s]) + increase(y[1m])"
        );
    }
}
