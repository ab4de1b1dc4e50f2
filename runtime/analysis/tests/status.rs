//! The evidence is written into CRD status as is: camelCase JSON, constants for decisions and
//! reasons, no NaN or infinity, and a JSON schema for the CRD's OpenAPI.

use serde_json::Value;
use switchboard_analysis::{
    Counts, GuardrailEvaluation, GuardrailPolicy, Plan, evaluate_guardrail,
};

fn evaluation(baseline: (u64, u64), candidate: (u64, u64)) -> GuardrailEvaluation {
    let policy = GuardrailPolicy::new(0.05).expect("policy");
    let counts = |(e, t)| Counts::new(e, t).expect("counts");
    evaluate_guardrail(&policy, counts(baseline), counts(candidate)).expect("evaluation")
}

#[test]
fn guardrail_evaluation_serializes_for_a_status_field() {
    let json = serde_json::to_value(evaluation((1500, 10_000), (250, 1000))).expect("serialize");
    assert_eq!(json["decision"], "Breach");
    assert_eq!(json["reason"], "RiseAboveMargin");
    let evidence = &json["evidence"];
    for key in [
        "baseline",
        "candidate",
        "relativeChange",
        "alwaysValidInterval",
        "fixedHorizonInterval",
        "logEValue",
        "logEValueThreshold",
        "zStatistic",
        "mixingSd",
    ] {
        assert!(evidence.get(key).is_some(), "missing {key} in {evidence}");
    }
    assert_eq!(evidence["candidate"]["trials"], 1000);
    let mut nulls = Vec::new();
    null_keys(&json, &mut nulls);
    assert!(
        nulls.is_empty(),
        "every quantity is computable here: {nulls:?}"
    );
    let back: GuardrailEvaluation = serde_json::from_value(json).expect("round trip");
    assert_eq!(
        back.decision,
        switchboard_analysis::GuardrailDecision::Breach
    );
}

/// Property names whose schema admits null (an `Option`), across all of the schema's definitions.
fn nullable_properties(schema: &Value, out: &mut Vec<String>) {
    match schema {
        Value::Object(map) => {
            if let Some(Value::Object(properties)) = map.get("properties") {
                for (name, property) in properties {
                    let text = property.to_string();
                    if text.contains("\"null\"") {
                        out.push(name.clone());
                    }
                }
            }
            map.values().for_each(|v| nullable_properties(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| nullable_properties(v, out)),
        _ => {}
    }
}

/// Keys whose value is null; serde_json writes NaN and infinity as null.
fn null_keys(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                if v.is_null() {
                    out.push(key.clone());
                }
                null_keys(v, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| null_keys(v, out)),
        _ => {}
    }
}

#[test]
fn degenerate_counts_serialize_nulls_only_where_the_schema_allows() {
    let schema = serde_json::to_value(schemars::schema_for!(GuardrailEvaluation)).expect("schema");
    let mut nullable = Vec::new();
    nullable_properties(&schema, &mut nullable);
    assert!(
        nullable.contains(&"relativeChange".to_owned()),
        "{nullable:?}"
    );
    assert!(!nullable.contains(&"logEValueThreshold".to_owned()));
    for (baseline, candidate) in [
        ((0, 0), (0, 0)),
        ((0, 500), (0, 500)),
        ((500, 500), (0, 500)),
        ((0, 10_000), (400, 1_000)),
    ] {
        let json = serde_json::to_value(evaluation(baseline, candidate)).expect("serialize");
        let mut nulls = Vec::new();
        null_keys(&json, &mut nulls);
        for key in nulls {
            assert!(nullable.contains(&key), "{key} is null (NaN?) in {json}");
        }
    }
}

#[test]
fn schemas_are_generated_for_status_types() {
    let plan = serde_json::to_value(schemars::schema_for!(Plan)).expect("schema");
    assert!(plan.to_string().contains("unitsPerVariant"));
}
