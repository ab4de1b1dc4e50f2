//! The Argo CD health check of docs/gitops.md, run by a real Lua 5.1 interpreter (Argo CD embeds
//! gopher-lua, a Lua 5.1) on objects in the states a platform team sees.

use mlua::{Lua, LuaSerdeExt, Table};
use serde_json::{Value, json};
use switchboard_chart_tests::root;

/// The script as documented: the block under `resource.customizations.health.switchboard.dev_KnowledgeBase`.
fn health_script() -> String {
    let doc = std::fs::read_to_string(root().join("docs/gitops.md")).expect("docs/gitops.md");
    let start = doc
        .find("resource.customizations.health.switchboard.dev_KnowledgeBase: &health |\n")
        .expect("the health check in docs/gitops.md");
    let body = &doc[start..];
    let body = &body[body.find('\n').expect("newline") + 1..];
    let mut script = String::new();
    for line in body.lines() {
        // The block scalar ends at the first line indented less than its content (4 spaces).
        let Some(content) = line.strip_prefix("    ") else {
            if line.trim().is_empty() {
                script.push('\n');
                continue;
            }
            break;
        };
        script.push_str(content);
        script.push('\n');
    }
    assert!(script.contains("return hs"), "{script}");
    script
}

/// Runs the script as Argo CD does (the object as global `obj`) and returns (status, message).
fn health(object: &Value) -> (String, String) {
    let lua = Lua::new();
    let obj = lua.to_value(object).expect("object as Lua");
    lua.globals().set("obj", obj).expect("obj");
    // Argo CD wraps the script in a function; so do we.
    let function = lua
        .load(format!("return function()\n{}\nend", health_script()))
        .eval::<mlua::Function>()
        .expect("the script compiles");
    let hs: Table = function.call(()).expect("the script runs");
    (
        hs.get::<String>("status").expect("status"),
        hs.get::<Option<String>>("message")
            .expect("message")
            .unwrap_or_default(),
    )
}

fn object(generation: i64, status: Value) -> Value {
    json!({
        "apiVersion": "switchboard.dev/v1alpha1",
        "kind": "AdapterPatch",
        "metadata": { "name": "pricing", "namespace": "support", "generation": generation },
        "status": status,
    })
}

fn condition(kind: &str, status: &str, reason: &str, message: &str) -> Value {
    json!({ "type": kind, "status": status, "reason": reason, "message": message })
}

#[test]
fn health_follows_conditions_and_observed_generation() {
    // Just applied: no status yet.
    let fresh = json!({ "apiVersion": "switchboard.dev/v1alpha1", "kind": "Router",
                        "metadata": { "name": "acme", "generation": 1 } });
    assert_eq!(health(&fresh).0, "Progressing");

    // A canary step in progress.
    let canary = object(
        2,
        json!({ "observedGeneration": 2, "conditions": [
            condition("Ready", "True", "Reconciled", ""),
            condition("Progressing", "True", "CanaryStep", "1.3.0 at 25% (step 2)"),
            condition("Degraded", "False", "Reconciled", ""),
        ]}),
    );
    assert_eq!(
        health(&canary),
        (
            "Progressing".into(),
            "CanaryStep: 1.3.0 at 25% (step 2)".into()
        )
    );

    // Promoted.
    let promoted = object(
        2,
        json!({ "observedGeneration": 2, "conditions": [
            condition("Ready", "True", "Reconciled", "serving 1.3.0"),
            condition("Progressing", "False", "Reconciled", "no rollout in progress"),
            condition("Degraded", "False", "Reconciled", ""),
        ]}),
    );
    assert_eq!(
        health(&promoted),
        ("Healthy".into(), "Reconciled: serving 1.3.0".into())
    );

    // A new spec the operator has not seen: the old Ready says nothing about it.
    let stale = object(3, promoted["status"].clone());
    let (status, message) = health(&stale);
    assert_eq!(status, "Progressing");
    assert!(message.contains("generation 3"), "{message}");

    // A guardrail rollback: Ready (the stable version serves) but Degraded.
    let rolled_back = object(
        2,
        json!({ "observedGeneration": 2, "conditions": [
            condition("Ready", "True", "Reconciled", ""),
            condition("Progressing", "False", "Reconciled", "no rollout in progress"),
            condition("Degraded", "True", "GuardrailBreached", "serving 1.2.0; 1.3.0 is not served"),
        ]}),
    );
    assert_eq!(
        health(&rolled_back),
        (
            "Degraded".into(),
            "GuardrailBreached: serving 1.2.0; 1.3.0 is not served".into()
        )
    );

    // Not ready, not progressing: stays Progressing with Ready's reason (e.g. waiting for pods).
    let waiting = object(
        1,
        json!({ "observedGeneration": 1, "conditions": [
            condition("Ready", "False", "WaitingForChildren", "0/2 runtime pods ready"),
        ]}),
    );
    assert_eq!(
        health(&waiting),
        (
            "Progressing".into(),
            "WaitingForChildren: 0/2 runtime pods ready".into()
        )
    );
}
