#!/usr/bin/env python3
"""Writes files/dashboards/switchboard-overview.json, the Grafana dashboard the chart ships.

The dashboard is generated so panel ids and grid positions stay consistent; edit the panel list
below and run `python3 charts/switchboard/hack/dashboard.py`. Queries use only the series of
docs/metrics.md; the chart tests (tests/chart) evaluate every one against a real Prometheus.
Standard library only.
"""
import json
import os
import pathlib

# SWITCHBOARD_DASHBOARD_OUT: write elsewhere (the chart tests compare a fresh copy with the file).
OUT = pathlib.Path(os.environ.get("SWITCHBOARD_DASHBOARD_OUT") or
                   pathlib.Path(__file__).resolve().parent.parent / "files/dashboards/switchboard-overview.json")
DS = {"type": "prometheus", "uid": "${datasource}"}

R = 'router=~"$router"'
RL = 'router=~"$router",lineage=~"$lineage"'
NS = 'namespace=~"$namespace"'
VARIANT = "router, lineage, adapter_version, adapter_role"


def rate_by_variant(outcome_matcher):
    """events / interactions per variant over the selected window."""
    return (
        f"sum by ({VARIANT}) (increase(switchboard_feedback_total{{{RL},{outcome_matcher}}}[$window]))\n"
        f"  / sum by ({VARIANT}) (increase(switchboard_interactions_total{{{RL}}}[$window]))"
    )


def csat_share(low):
    picked = 'outcome=~"csat_1|csat_2"' if low else 'outcome=~"csat_4|csat_5"'
    return (
        f"sum by ({VARIANT}) (increase(switchboard_feedback_total{{{RL},{picked}}}[$window]))\n"
        f'  / sum by ({VARIANT}) (increase(switchboard_feedback_total{{{RL},outcome=~"csat_[1-5]"}}[$window]))'
    )


def quantiles(bucket, matcher, by):
    sel = f"{bucket}{{{matcher}}}" if matcher else bucket
    return [
        (f"histogram_quantile({q}, sum by (le, {by}) (rate({sel}[$__rate_interval])))", f"p{int(q * 100)} {{{{{by}}}}}")
        for q in (0.5, 0.99)
    ]


# (row title, [(panel title, type, unit, [(expr, legend)], description)])
ROWS = [
    ("Traffic and routing", [
        ("Answers per second by Router", "timeseries", "reqps",
         [(f"sum by (router) (rate(switchboard_interactions_total{{{R}}}[$__rate_interval]))", "{{router}}")],
         "Answers returned to callers (one interaction token each)."),
        ("Share routed to the large model", "timeseries", "percentunit",
         [(f'sum by (router) (rate(switchboard_route_decisions_total{{{R},model="large"}}[$__rate_interval]))\n'
           f"  / sum by (router) (rate(switchboard_route_decisions_total{{{R}}}[$__rate_interval]))", "{{router}}")],
         "Routing decisions that picked the large model."),
        ("Route decisions by reason", "timeseries", "reqps",
         [(f"sum by (router, model, reason) (rate(switchboard_route_decisions_total{{{R}}}[$__rate_interval]))",
           "{{router}} {{model}} {{reason}}")],
         "easy / difficult by the difficulty estimate; queue_full: difficult but served small; exploration; forced."),
        ("Large-model queue depth", "timeseries", "short",
         [(f"max by (router) (switchboard_large_model_queue_depth{{{R}}})", "{{router}}")],
         "Requests queued or in flight to the large model."),
        ("RuntimeConfig revision in force", "table", "short",
         [(f"count by (router, revision) (switchboard_runtime_config_info{{{R}}})", "")],
         "Pods per Router and revision: more than one revision per Router means a reload is still spreading."),
        ("RuntimeConfig reloads", "timeseries", "short",
         [("sum by (result) (increase(switchboard_runtime_config_reloads_total[$__rate_interval]))", "{{result}}")],
         "rejected: an invalid document was refused and the previous one kept serving."),
    ]),
    ("Outcomes per variant (Router, lineage, adapter version)", [
        ("Escalation rate", "timeseries", "percentunit",
         [(rate_by_variant('outcome="escalated"'), "{{lineage}}@{{adapter_version}} {{adapter_role}} ({{router}})")],
         "Escalated feedback / answers, over the selected window, as reported: a version that started recently reads low because its late escalations have not arrived yet. The rollout guardrails compare at their follow-up instead: the next panel."),
        ("Escalation rate at the guardrail's follow-up", "timeseries", "percentunit",
         [(f"sum by ({VARIANT}) (increase(switchboard_feedback_settled_total{{{RL},outcome=\"escalated\",settle=\"$settle\"}}[$window]))\n"
           f"  / sum by ({VARIANT}) (increase(switchboard_interactions_total{{{RL}}}[$window] offset $settle))",
           "{{lineage}}@{{adapter_version}} {{adapter_role}} ({{router}})")],
         "What a rollout guardrail compares: the answers given between window + follow-up and follow-up ago, with the escalations that arrived within the follow-up of each (settleAfter; pick it above). Versions of any age compare fairly."),
        ("Reopen rate", "timeseries", "percentunit",
         [(rate_by_variant('outcome="reopened"'), "{{lineage}}@{{adapter_version}} {{adapter_role}} ({{router}})")], ""),
        ("Resolution rate", "timeseries", "percentunit",
         [(rate_by_variant('outcome="resolved"'), "{{lineage}}@{{adapter_version}} {{adapter_role}} ({{router}})")], ""),
        ("CSAT 4-5 and 1-2 share", "timeseries", "percentunit",
         [(csat_share(False), "4-5 {{lineage}}@{{adapter_version}}"), (csat_share(True), "1-2 {{lineage}}@{{adapter_version}}")],
         "Share of CSAT responses that are high (4, 5) and low (1, 2)."),
        ("Answer checks failed", "timeseries", "percentunit",
         [(f"sum by (router, lineage, adapter_version, check) (increase(switchboard_answer_checks_total{{{RL}}}[$window]))\n"
           f"  / ignoring (check) group_left\n"
           f"  sum by (router, lineage, adapter_version) (increase(switchboard_interactions_total{{{RL}}}[$window]))",
           "{{check}} {{lineage}}@{{adapter_version}}")],
         "Answers that were refusals, had no relevant passage, whose model output cited a fact not in its prompt (removed) or was not grounded in its facts (the extractive answer was served)."),
        ("Answer paths", "timeseries", "percentunit",
         [(f"sum by (router, lineage, adapter_version, path) (increase(switchboard_answer_paths_total{{{RL}}}[$window]))\n"
           f"  / ignoring (path) group_left\n"
           f"  sum by (router, lineage, adapter_version) (increase(switchboard_interactions_total{{{RL}}}[$window]))",
           "{{path}} {{lineage}}@{{adapter_version}}")],
         "generative: the model's answer passed the grounding check; extractive: the best evidence sentences quoted; refusal: no evidence cleared the threshold."),
        ("Feedback rejected", "timeseries", "short",
         [("sum by (reason) (increase(switchboard_feedback_rejected_total[$__rate_interval]))", "{{reason}}")],
         "Malformed, badly signed, expired or replayed feedback calls."),
    ]),
    ("Rollouts and shadow", [
        ("Rollout phase", "table", "short",
         [(f"max by (namespace, name, lineage, phase) (switchboard_adapter_rollout_phase{{{NS}}}) == 1", "")],
         "Current phase of every AdapterPatch."),
        ("Canary weight", "timeseries", "percent",
         [(f"max by (namespace, name, lineage) (switchboard_adapter_canary_weight{{{NS}}})", "{{namespace}}/{{name}}")],
         "Percent of the lineage's traffic served by the candidate."),
        ("Rollbacks", "timeseries", "short",
         [(f"sum by (namespace, name, lineage, reason) (increase(switchboard_adapter_rollbacks_total{{{NS}}}[$window]))",
           "{{namespace}}/{{name}} {{reason}}")],
         "GuardrailBreached: automatic; ManualRollback / ManualAbort: through the CLI or annotations."),
        ("Shadow checks per mirrored request", "timeseries", "percentunit",
         [(f"sum by (router, lineage, adapter_version, side, check) (increase(switchboard_shadow_checks_total{{{RL}}}[$window]))\n"
           f"  / ignoring (side, check) group_left\n"
           f"  sum by (router, lineage, adapter_version) (increase(switchboard_shadow_requests_total{{{RL}}}[$window]))",
           "{{side}} {{check}} {{lineage}}@{{adapter_version}}")],
         "baseline: the served answer; candidate: the shadow answer (divergent: far from the served one)."),
        ("Shadow traffic", "timeseries", "reqps",
         [(f"sum by (router, lineage, adapter_version) (rate(switchboard_shadow_requests_total{{{RL}}}[$__rate_interval]))",
           "mirrored {{lineage}}@{{adapter_version}}"),
          (f"sum by (router, reason) (rate(switchboard_shadow_skipped_total{{{R}}}[$__rate_interval]))", "skipped {{reason}}")],
         ""),
    ]),
    ("Latency", [
        ("Answer latency by stage (p50, p99)", "timeseries", "s",
         quantiles("switchboard_answer_seconds_bucket", R, "stage"), "rewrite, retrieve, ground (evidence scoring), generate and total."),
        ("Retrieval latency by stage (p50, p99)", "timeseries", "s",
         quantiles("switchboard_retrieval_stage_seconds_bucket", "", "stage"), "bm25, embed, dense, fusion, rerank, total."),
    ]),
    ("Retrieval", [
        ("Retrieval requests", "timeseries", "reqps",
         [("sum by (protocol, outcome) (rate(switchboard_retrieval_requests_total[$__rate_interval]))", "{{protocol}} {{outcome}}")], ""),
        ("Retrieval failures per request", "timeseries", "percentunit",
         [("sum by (reason) (rate(switchboard_retrieval_failures_total[$__rate_interval]))\n"
           "  / ignoring (reason) group_left\n"
           '  sum (rate(switchboard_retrieval_requests_total{outcome="ok"}[$__rate_interval]))', "{{reason}}")],
         "Queries for which no passage cleared the relevance floor."),
        ("Rerank outcomes", "timeseries", "reqps",
         [("sum by (outcome) (rate(switchboard_rerank_outcomes_total[$__rate_interval]))", "{{outcome}}")],
         "timed_out / failed: the fused order was served."),
        ("Most retrieved documents", "table", "short",
         [("topk(15, sum by (document) (increase(switchboard_document_retrievals_total[$window])))", "")], ""),
        ("Document retrievals, change week over week", "table", "percentunit",
         [("sum by (document) (increase(switchboard_document_retrievals_total[1d]))\n"
           "  / sum by (document) (increase(switchboard_document_retrievals_total[1d] offset 1w)) - 1", "")],
         "Last 24 h against the same 24 h a week before; a large drop can mean queries are rewritten past the article."),
        ("Retrieval concentration", "timeseries", "percentunit",
         [("max by (job) (switchboard_retrieval_concentration_ratio)", "{{job}}")],
         "Share of passage hits that went to the most-hit 1% of chunks."),
        ("Index generation and chunks", "table", "short",
         [("max by (job, generation) (switchboard_index_generation_info)", ""),
          ("max by (job) (switchboard_index_chunks)", "")], ""),
    ]),
    ("Experiments", [
        ("Samples per arm", "timeseries", "short",
         [(f"max by (namespace, name, arm) (switchboard_experiment_samples{{{NS}}})", "{{namespace}}/{{name}} {{arm}}")], ""),
        ("Progress to the required sample size", "bargauge", "percentunit",
         [(f'min by (namespace, name) (switchboard_experiment_samples{{{NS},arm!="holdout"}})\n'
           f"  / on (namespace, name)\n"
           f"  max by (namespace, name) (switchboard_experiment_required_samples{{{NS}}})", "{{namespace}}/{{name}}")],
         "Smallest arm's samples over the samples each variant needs for the minimum detectable effect."),
        ("Answers per arm", "timeseries", "reqps",
         [(f'sum by (router, experiment, arm) (rate(switchboard_interactions_total{{{R},experiment!=""}}[$__rate_interval]))',
           "{{experiment}} {{arm}}")], ""),
        ("Escalation rate per arm", "timeseries", "percentunit",
         [(f'sum by (router, experiment, arm) (increase(switchboard_feedback_total{{{R},experiment!="",outcome="escalated"}}[$window]))\n'
           f'  / sum by (router, experiment, arm) (increase(switchboard_interactions_total{{{R},experiment!=""}}[$window]))',
           "{{experiment}} {{arm}}")], ""),
    ]),
    ("Operator", [
        ("Reconciles", "timeseries", "ops",
         [("sum by (controller, result) (rate(switchboard_operator_reconciles_total[$__rate_interval]))", "{{controller}} {{result}}")], ""),
        ("Reconcile latency p99", "timeseries", "s",
         [("histogram_quantile(0.99, sum by (le, controller) (rate(switchboard_operator_reconcile_seconds_bucket[$__rate_interval])))",
           "{{controller}}")], ""),
        ("Reconcile errors", "timeseries", "ops",
         [("sum by (controller, reason) (rate(switchboard_operator_reconcile_errors_total[$__rate_interval]))", "{{controller}} {{reason}}")], ""),
        ("Leading replicas", "stat", "short",
         [("sum(switchboard_operator_leader)", "")], "Exactly 1 when healthy."),
        ("Index builds", "timeseries", "short",
         [(f"sum by (namespace, name, result) (increase(switchboard_knowledge_base_index_builds_total{{{NS}}}[$window]))",
           "{{namespace}}/{{name}} {{result}}")], ""),
    ]),
]


def panel(pid, title, kind, unit, targets, description, x, y, w, h):
    p = {
        "id": pid,
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {},
        "targets": [],
    }
    for i, (expr, legend) in enumerate(targets):
        t = {"refId": chr(ord("A") + i), "datasource": DS, "expr": expr, "legendFormat": legend or "__auto"}
        if kind in ("table", "stat", "bargauge"):
            t["instant"] = True
            t["range"] = False
            if kind == "table":
                t["format"] = "table"
        p["targets"].append(t)
    if kind == "timeseries":
        p["options"] = {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}}
    return p


def variable(name, label, query, all_value=".*"):
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "query": {"query": query, "refId": name},
        "definition": query,
        "refresh": 2,
        "includeAll": True,
        "allValue": all_value,
        "multi": True,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


def build():
    panels, pid, y = [], 1, 0
    for title, row in ROWS:
        panels.append({"id": pid, "type": "row", "title": title, "collapsed": False,
                       "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}, "panels": []})
        pid += 1
        y += 1
        x = 0
        for (ptitle, kind, unit, targets, description) in row:
            w = 8
            if x + w > 24:
                x, y = 0, y + 8
            panels.append(panel(pid, ptitle, kind, unit, targets, description, x, y, w, 8))
            pid += 1
            x += w
        y += 8
    return {
        "uid": "switchboard-overview",
        "title": "Switchboard",
        "description": "Traffic, routing, outcomes per variant, rollouts, latency, retrieval, experiments and the operator.",
        "tags": ["switchboard"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "links": [],
        "annotations": {"list": [{
            "name": "Rollbacks",
            "datasource": DS,
            "enable": True,
            "iconColor": "red",
            "expr": "sum by (namespace, name, reason) (changes(switchboard_adapter_rollbacks_total[$__interval])) > 0",
            "titleFormat": "Rollback {{namespace}}/{{name}}",
            "textFormat": "{{reason}}",
            "step": "60s",
        }]},
        "templating": {"list": [
            {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
             "current": {}, "hide": 0, "refresh": 1},
            variable("router", "Router", "label_values(switchboard_interactions_total, router)"),
            variable("lineage", "Lineage", 'label_values(switchboard_interactions_total{router=~"$router"}, lineage)'),
            variable("namespace", "Namespace (rollouts, experiments)",
                     "label_values(switchboard_adapter_rollout_phase, namespace)"),
            {"name": "settle", "label": "Guardrail follow-up", "type": "query", "datasource": DS,
             "query": {"query": 'label_values(switchboard_feedback_settled_total{router=~"$router"}, settle)',
                       "refId": "settle"},
             "definition": 'label_values(switchboard_feedback_settled_total{router=~"$router"}, settle)',
             "refresh": 2, "includeAll": False, "multi": False, "current": {}, "sort": 3},
            {"name": "window", "label": "Outcome window", "type": "custom", "query": "15m,1h,6h,1d,7d",
             "current": {"selected": True, "text": "1h", "value": "1h"},
             "options": [{"selected": v == "1h", "text": v, "value": v} for v in ("15m", "1h", "6h", "1d", "7d")]},
        ]},
        "panels": panels,
    }


if __name__ == "__main__":
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(build(), indent=2) + "\n")
    print(f"wrote {OUT}")
