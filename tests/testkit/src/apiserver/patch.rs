//! Patches: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and server-side apply.
//!
//! Server-side apply keeps, per field manager, the set of fields it applied last time ("field set").
//! A new apply merges the applied configuration into the live object (maps by key, lists of maps by
//! their key field), removes the fields the manager applied before but no longer does (unless another
//! manager also applies them), and reports a conflict when another manager applied a different value
//! for the same field, unless forced (then the field changes owner). Fields written by plain updates
//! (PUT, merge/JSON patches) are not tracked, so they are never the subject of a conflict.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

/// Applies an RFC 7386 JSON merge patch in place.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target) = target {
        for (key, value) in patch {
            if value.is_null() {
                target.remove(key);
            } else {
                merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

fn pointer_tokens(pointer: &str) -> Result<Vec<String>, String> {
    if pointer.is_empty() {
        return Ok(Vec::new());
    }
    let rest = pointer
        .strip_prefix('/')
        .ok_or_else(|| format!("JSON pointer {pointer:?} must start with '/'"))?;
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn array_index(token: &str, len: usize, allow_end: bool) -> Result<usize, String> {
    if allow_end && token == "-" {
        return Ok(len);
    }
    let index: usize = token
        .parse()
        .map_err(|_| format!("invalid array index {token:?}"))?;
    let limit = if allow_end {
        len
    } else {
        len.saturating_sub(1)
    };
    if index > limit || (!allow_end && len == 0) {
        return Err(format!("array index {index} out of bounds"));
    }
    Ok(index)
}

/// The parent container of a pointer's target, and the last token.
fn parent_mut<'a>(root: &'a mut Value, pointer: &str) -> Result<(&'a mut Value, String), String> {
    let mut tokens = pointer_tokens(pointer)?;
    let last = tokens
        .pop()
        .ok_or_else(|| "the root cannot be the target of this operation".to_owned())?;
    let mut current = root;
    for token in tokens {
        current = match current {
            Value::Object(map) => map
                .get_mut(&token)
                .ok_or_else(|| format!("path {pointer:?} does not exist"))?,
            Value::Array(items) => {
                let index = array_index(&token, items.len(), false)?;
                &mut items[index]
            }
            _ => return Err(format!("path {pointer:?} does not exist")),
        };
    }
    Ok((current, last))
}

fn json_patch_add(root: &mut Value, path: &str, value: Value) -> Result<(), String> {
    if path.is_empty() {
        *root = value;
        return Ok(());
    }
    let (parent, last) = parent_mut(root, path)?;
    match parent {
        Value::Object(map) => {
            map.insert(last, value);
        }
        Value::Array(items) => {
            let index = array_index(&last, items.len(), true)?;
            items.insert(index, value);
        }
        _ => return Err(format!("path {path:?} does not exist")),
    }
    Ok(())
}

fn json_patch_remove(root: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, last) = parent_mut(root, path)?;
    match parent {
        Value::Object(map) => map
            .remove(&last)
            .ok_or_else(|| format!("path {path:?} does not exist")),
        Value::Array(items) => {
            let index = array_index(&last, items.len(), false)?;
            Ok(items.remove(index))
        }
        _ => Err(format!("path {path:?} does not exist")),
    }
}

/// Applies an RFC 6902 JSON patch; on error the target is left unchanged.
pub fn json_patch(target: &mut Value, patch: &Value) -> Result<(), String> {
    let operations = patch
        .as_array()
        .ok_or_else(|| "a JSON patch must be an array of operations".to_owned())?;
    let mut working = target.clone();
    for operation in operations {
        let field = |name: &str| {
            operation
                .get(name)
                .and_then(Value::as_str)
                .ok_or_else(|| format!("operation {operation} lacks {name:?}"))
        };
        let value = || {
            operation
                .get("value")
                .cloned()
                .ok_or_else(|| format!("operation {operation} lacks \"value\""))
        };
        let path = field("path")?;
        match field("op")? {
            "add" => json_patch_add(&mut working, path, value()?)?,
            "remove" => {
                json_patch_remove(&mut working, path)?;
            }
            "replace" => {
                let slot = working
                    .pointer_mut(path)
                    .ok_or_else(|| format!("path {path:?} does not exist"))?;
                *slot = value()?;
            }
            "move" => {
                let from = field("from")?;
                let moved = json_patch_remove(&mut working, from)?;
                json_patch_add(&mut working, path, moved)?;
            }
            "copy" => {
                let from = field("from")?;
                let copied = working
                    .pointer(from)
                    .cloned()
                    .ok_or_else(|| format!("path {from:?} does not exist"))?;
                json_patch_add(&mut working, path, copied)?;
            }
            "test" => {
                if working.pointer(path) != Some(&value()?) {
                    return Err(format!("test operation failed at {path:?}"));
                }
            }
            other => return Err(format!("unknown JSON patch operation {other:?}")),
        }
    }
    *target = working;
    Ok(())
}

/// Fields that identify list items in lists of maps, tried in this order (Kubernetes merge keys:
/// containers/env/volumes by `name`, conditions by `type`, owner references by `uid`, ...).
const LIST_KEYS: &[&str] = &["name", "type", "uid", "mountPath", "containerPort", "port"];

/// The key field of a list of maps, if every item is a map carrying a distinct value for it.
fn list_key(items: &[Value]) -> Option<&'static str> {
    if items.is_empty() {
        return None;
    }
    LIST_KEYS.iter().copied().find(|key| {
        let mut seen = BTreeSet::new();
        items.iter().all(|item| {
            item.get(key)
                .filter(|v| v.is_string() || v.is_number())
                .is_some_and(|v| seen.insert(v.to_string()))
        })
    })
}

/// One step of a field path: `f:<key>` into a map, `k:<field>=<json value>` into a keyed list.
type FieldPath = Vec<String>;

/// The fields one manager owns: every map key and keyed list item it applied, with their ancestors.
pub type FieldSet = BTreeSet<FieldPath>;

fn item_step(key: &str, value: &Value) -> String {
    format!("k:{key}={value}")
}

fn collect_fields(value: &Value, path: &mut FieldPath, out: &mut FieldSet) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                path.push(format!("f:{key}"));
                out.insert(path.clone());
                collect_fields(child, path, out);
                path.pop();
            }
        }
        Value::Array(items) => {
            if let Some(key) = list_key(items) {
                for item in items {
                    path.push(item_step(key, &item[key]));
                    out.insert(path.clone());
                    collect_fields(item, path, out);
                    path.pop();
                }
            }
        }
        _ => {}
    }
}

/// The field set of an applied configuration.
pub fn field_set(applied: &Value) -> FieldSet {
    let mut out = FieldSet::new();
    collect_fields(applied, &mut Vec::new(), &mut out);
    out
}

/// A keyed-list step `k:<field>=<json value>` as (field, value).
fn item_key(step: &str) -> Option<(&str, Value)> {
    let (field, key_value) = step.strip_prefix("k:")?.split_once('=')?;
    Some((field, serde_json::from_str(key_value).ok()?))
}

fn child<'a>(value: &'a Value, step: &str) -> Option<&'a Value> {
    if let Some(key) = step.strip_prefix("f:") {
        value.get(key)
    } else {
        let (field, key_value) = item_key(step)?;
        value
            .as_array()?
            .iter()
            .find(|item| item.get(field) == Some(&key_value))
    }
}

fn lookup<'a>(value: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, step| child(v, step))
}

fn remove_at(value: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut current = value;
    for step in parents {
        let next = if let Some(key) = step.strip_prefix("f:") {
            current.get_mut(key)
        } else {
            let Some((field, key_value)) = item_key(step) else {
                return;
            };
            current.as_array_mut().and_then(|items| {
                items
                    .iter_mut()
                    .find(|item| item.get(field) == Some(&key_value))
            })
        };
        match next {
            Some(next) => current = next,
            None => return,
        }
    }
    if let Some(key) = last.strip_prefix("f:") {
        if let Value::Object(map) = current {
            map.remove(key);
        }
    } else if let Some((field, key_value)) = item_key(last)
        && let Value::Array(items) = current
    {
        items.retain(|item| item.get(field) != Some(&key_value));
    }
}

/// Merges an applied configuration into the live object: maps by key, keyed lists by item key,
/// anything else (scalars, atomic lists) replaced.
fn merge_applied(live: &mut Value, applied: &Value) {
    match (live, applied) {
        (Value::Object(live), Value::Object(applied)) => {
            for (key, value) in applied {
                match live.get_mut(key) {
                    Some(existing) => merge_applied(existing, value),
                    None => {
                        live.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (Value::Array(live), Value::Array(applied)) if list_key(applied).is_some() => {
            let key = list_key(applied).unwrap_or("name");
            for item in applied {
                let position = live
                    .iter()
                    .position(|existing| existing.get(key) == item.get(key));
                match position {
                    Some(i) => merge_applied(&mut live[i], item),
                    None => live.push(item.clone()),
                }
            }
        }
        (live, applied) => *live = applied.clone(),
    }
}

/// A field two managers applied with different values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The manager that owns the field.
    pub manager: String,
    /// The field, as a dotted path.
    pub field: String,
}

fn display_path(path: &[String]) -> String {
    path.iter()
        .map(|s| s.strip_prefix("f:").unwrap_or(s))
        .collect::<Vec<_>>()
        .join(".")
}

/// Server-side apply of `applied` by `manager` onto `live`, given the field sets of every apply
/// manager of this (sub)resource. Updates `live` and `managers` or returns the conflicts.
pub fn apply(
    live: &mut Value,
    applied: &Value,
    manager: &str,
    force: bool,
    managers: &mut BTreeMap<String, FieldSet>,
) -> Result<(), Vec<Conflict>> {
    let new_fields = field_set(applied);
    let mut conflicts = Vec::new();
    for (other, fields) in managers.iter_mut() {
        if other == manager {
            continue;
        }
        let contested: Vec<FieldPath> = fields
            .intersection(&new_fields)
            .filter(|path| {
                let mine = lookup(applied, path);
                let is_leaf = mine.is_some_and(|v| {
                    !v.is_object() && v.as_array().is_none_or(|items| list_key(items).is_none())
                });
                is_leaf && lookup(live, path) != mine
            })
            .cloned()
            .collect();
        if force {
            for path in &contested {
                fields.remove(path);
            }
        } else {
            conflicts.extend(contested.iter().map(|path| Conflict {
                manager: other.clone(),
                field: display_path(path),
            }));
        }
    }
    if !conflicts.is_empty() {
        return Err(conflicts);
    }
    let old_fields = managers.remove(manager).unwrap_or_default();
    for path in old_fields.difference(&new_fields) {
        let still_owned = managers.values().any(|fields| fields.contains(path));
        if !still_owned {
            remove_at(live, path);
        }
    }
    merge_applied(live, applied);
    managers.insert(manager.to_owned(), new_fields);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_rfc7386_example() {
        let mut target = json!({"title": "Goodbye!", "author": {"givenName": "John", "familyName": "Doe"}, "tags": ["example", "sample"], "content": "This will be unchanged"});
        merge_patch(
            &mut target,
            &json!({"title": "Hello!", "phoneNumber": "+01-123-456-7890", "author": {"familyName": null}, "tags": ["example"]}),
        );
        assert_eq!(
            target,
            json!({"title": "Hello!", "author": {"givenName": "John"}, "tags": ["example"], "content": "This will be unchanged", "phoneNumber": "+01-123-456-7890"})
        );
    }

    #[test]
    fn json_patch_operations_and_atomic_failure() {
        let mut target = json!({"a": {"b": [1, 2]}, "c": "x"});
        json_patch(
            &mut target,
            &json!([
                {"op": "add", "path": "/a/b/-", "value": 3},
                {"op": "replace", "path": "/c", "value": "y"},
                {"op": "copy", "from": "/c", "path": "/d"},
                {"op": "move", "from": "/d", "path": "/a/e"},
                {"op": "remove", "path": "/a/b/0"},
                {"op": "test", "path": "/a/e", "value": "y"}
            ]),
        )
        .unwrap();
        assert_eq!(target, json!({"a": {"b": [2, 3], "e": "y"}, "c": "y"}));
        let before = target.clone();
        let failed = json_patch(
            &mut target,
            &json!([{"op": "remove", "path": "/c"}, {"op": "test", "path": "/a/e", "value": "z"}]),
        );
        assert!(failed.is_err());
        assert_eq!(target, before, "a failed patch changes nothing");
    }

    #[test]
    fn apply_removes_fields_a_manager_stops_applying() {
        let mut managers = BTreeMap::new();
        let mut live = json!({});
        apply(
            &mut live,
            &json!({"data": {"a": "1", "b": "2"}}),
            "op",
            false,
            &mut managers,
        )
        .unwrap();
        apply(
            &mut live,
            &json!({"data": {"c": "3"}}),
            "other",
            false,
            &mut managers,
        )
        .unwrap();
        apply(
            &mut live,
            &json!({"data": {"a": "1"}}),
            "op",
            false,
            &mut managers,
        )
        .unwrap();
        assert_eq!(live, json!({"data": {"a": "1", "c": "3"}}));
    }

    #[test]
    fn apply_merges_keyed_lists_and_reports_conflicts() {
        let mut managers = BTreeMap::new();
        let mut live = json!({});
        let conditions = json!({"status": {"conditions": [
            {"type": "Ready", "status": "True"}, {"type": "Degraded", "status": "False"}]}});
        apply(&mut live, &conditions, "a", false, &mut managers).unwrap();
        apply(
            &mut live,
            &json!({"status": {"conditions": [{"type": "Synced", "status": "True"}]}}),
            "b",
            false,
            &mut managers,
        )
        .unwrap();
        assert_eq!(live["status"]["conditions"].as_array().unwrap().len(), 3);
        let clash = json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}});
        let conflicts = apply(&mut live, &clash, "b", false, &mut managers).unwrap_err();
        assert_eq!(conflicts[0].manager, "a");
        assert!(conflicts[0].field.contains("status"), "{conflicts:?}");
        apply(&mut live, &clash, "b", true, &mut managers).unwrap();
        let ready = &live["status"]["conditions"][0];
        assert_eq!(ready, &json!({"type": "Ready", "status": "False"}));
        // "b" no longer applies Synced: it goes; "a" still applies Degraded: it stays.
        let types: Vec<_> = live["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["Ready", "Degraded"]);
    }
}
