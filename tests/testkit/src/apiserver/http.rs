//! The HTTP face of the stand-in: Kubernetes REST paths, watch streams, discovery.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use super::resources::{self, RESOURCES, ResourceType};
use super::selector::{FieldSelector, LabelSelector};
use super::store::{
    ApiError, Change, EventType, Filter, PatchKind, Propagation, Store, Subresource,
};

/// State shared by all requests.
#[derive(Debug)]
pub struct Shared {
    /// The objects.
    pub store: Mutex<Store>,
    /// Interval between watch bookmarks (when a watcher asks for them).
    pub bookmark_interval: Duration,
    /// Closed when the server shuts down, ending watch streams.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

impl Shared {
    /// Locks the store (a panicked writer leaves it usable: every write is all-or-nothing).
    pub fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn json_response(code: u16, body: &Value) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn error(e: &ApiError) -> Response {
    json_response(e.code, &e.to_status())
}

/// The target of a request, parsed from its path.
#[derive(Debug)]
struct Target {
    resource: &'static ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

enum Route {
    Resource(Target),
    Discovery(Value),
    NotFound,
}

fn parse_path(path: &str) -> Route {
    let segments: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let (group, version, mut rest) = match segments.as_slice() {
        ["version"] => {
            return Route::Discovery(json!({
                "major": "1", "minor": "33", "gitVersion": "v1.33.0-switchboard-standin",
                "platform": "linux/amd64"
            }));
        }
        ["healthz" | "readyz" | "livez"] => return Route::Discovery(json!("ok")),
        ["api"] => {
            return Route::Discovery(
                json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}),
            );
        }
        ["apis"] => return Route::Discovery(group_list()),
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Route::NotFound,
    };
    if rest.is_empty() {
        return match resource_list(group, version) {
            Some(list) => Route::Discovery(list),
            None => Route::NotFound,
        };
    }
    if rest.first() == Some(&"watch") {
        rest = &rest[1..];
    }
    let namespaced_path =
        rest.len() >= 3 && rest[0] == "namespaces" && !matches!(rest[2], "status" | "finalize");
    let (namespace, plural, name, subresource) = if namespaced_path {
        (Some(rest[1]), rest[2], rest.get(3), rest.get(4))
    } else {
        (None, rest[0], rest.get(1), rest.get(2))
    };
    let Some(resource) = resources::find(group, version, plural) else {
        return Route::NotFound;
    };
    if !resource.namespaced && namespace.is_some() {
        return Route::NotFound;
    }
    if resource.namespaced && namespace.is_none() && name.is_some() {
        return Route::NotFound;
    }
    Route::Resource(Target {
        resource,
        namespace: namespace.map(str::to_owned),
        name: name.map(|s| (*s).to_owned()),
        subresource: subresource.map(|s| (*s).to_owned()),
    })
}

fn group_list() -> Value {
    let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
    for r in RESOURCES.iter().filter(|r| !r.group.is_empty()) {
        match groups.iter_mut().find(|(g, _)| *g == r.group) {
            Some((_, versions)) if !versions.contains(&r.version) => versions.push(r.version),
            Some(_) => {}
            None => groups.push((r.group, vec![r.version])),
        }
    }
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(group, versions)| {
            let versions: Vec<Value> = versions
                .iter()
                .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
                .collect();
            json!({"name": group, "versions": versions, "preferredVersion": versions[0]})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn resource_list(group: &str, version: &str) -> Option<Value> {
    let mut list = Vec::new();
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let verbs = [
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ];
        list.push(json!({
            "name": r.plural, "singularName": r.kind.to_lowercase(), "namespaced": r.namespaced,
            "kind": r.kind, "verbs": verbs
        }));
        if r.status_subresource {
            list.push(json!({
                "name": format!("{}/status", r.plural), "singularName": "", "namespaced": r.namespaced,
                "kind": r.kind, "verbs": ["get", "patch", "update"]
            }));
        }
    }
    if list.is_empty() {
        return None;
    }
    let group_version = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": list}),
    )
}

fn filter_from(target: &Target, query: &HashMap<String, String>) -> Result<Filter, ApiError> {
    Ok(Filter {
        namespace: target.namespace.clone(),
        labels: LabelSelector::parse(query.get("labelSelector").map_or("", String::as_str))
            .map_err(ApiError::bad_request)?,
        fields: FieldSelector::parse(query.get("fieldSelector").map_or("", String::as_str))
            .map_err(ApiError::bad_request)?,
    })
}

fn flag(query: &HashMap<String, String>, name: &str) -> bool {
    query.get(name).is_some_and(|v| v == "true" || v == "1")
}

fn propagation(query: &HashMap<String, String>, body: &[u8]) -> Propagation {
    let from_body = serde_json::from_slice::<Value>(body).ok().and_then(|b| {
        b.get("propagationPolicy")
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    let policy = query.get("propagationPolicy").cloned().or(from_body);
    match policy.as_deref() {
        Some("Orphan") => Propagation::Orphan,
        _ => Propagation::Cascade,
    }
}

/// The single handler behind every path.
pub async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query: HashMap<String, String> = Query::try_from_uri(&uri).map(|q| q.0).unwrap_or_default();
    let target = match parse_path(uri.path()) {
        Route::Resource(target) => target,
        Route::Discovery(Value::String(text)) => return text.into_response(),
        Route::Discovery(value) => return json_response(200, &value),
        Route::NotFound => {
            return error(&ApiError {
                code: 404,
                reason: "NotFound",
                message: format!(
                    "the server could not find the requested resource ({})",
                    uri.path()
                ),
                details: None,
            });
        }
    };
    if method == Method::GET
        && target.name.is_none()
        && (flag(&query, "watch") || uri.path().contains("/watch/"))
    {
        return watch(shared, target, query);
    }
    match respond(&shared, &method, &target, &query, &headers, &body) {
        Ok((code, value)) => json_response(code, &value),
        Err(e) => error(&e),
    }
}

fn respond(
    shared: &Shared,
    method: &Method,
    target: &Target,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(u16, Value), ApiError> {
    let resource = target.resource;
    let namespace = target.namespace.as_deref().unwrap_or("");
    let subresource = match target.subresource.as_deref() {
        None => Subresource::Main,
        Some("status") if resource.status_subresource => Subresource::Status,
        Some(other) => {
            return Err(ApiError {
                code: 404,
                reason: "NotFound",
                message: format!("{} has no subresource {other:?}", resource.kind),
                details: None,
            });
        }
    };
    let parse_body = || -> Result<Value, ApiError> {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
    };
    let mut store = shared.store();
    match (method, target.name.as_deref()) {
        (&Method::GET, None) => {
            let filter = filter_from(target, query)?;
            let limit = query.get("limit").and_then(|l| l.parse().ok());
            let page = store.list(
                resource,
                &filter,
                limit,
                query.get("continue").map(String::as_str),
            )?;
            let mut metadata = json!({"resourceVersion": page.resource_version.to_string()});
            if let Some(token) = page.continue_token {
                metadata["continue"] = json!(token);
                metadata["remainingItemCount"] = json!(page.remaining);
            }
            Ok((
                200,
                json!({
                    "kind": format!("{}List", resource.kind),
                    "apiVersion": resource.api_version(),
                    "metadata": metadata,
                    "items": page.items,
                }),
            ))
        }
        (&Method::GET, Some(name)) => Ok((200, store.get(resource, namespace, name)?)),
        (&Method::POST, None) => {
            if resource.namespaced && target.namespace.is_none() {
                return Err(ApiError::bad_request(
                    "a namespaced object is created under /namespaces/{ns}/",
                ));
            }
            Ok((201, store.create(resource, namespace, parse_body()?)?))
        }
        (&Method::PUT, Some(name)) => Ok((
            200,
            store.replace(resource, namespace, name, parse_body()?, subresource)?,
        )),
        (&Method::PATCH, Some(name)) => {
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .split(';')
                .next()
                .unwrap_or("")
                .trim();
            let kind = match content_type {
                "application/merge-patch+json" => PatchKind::Merge,
                "application/strategic-merge-patch+json" => PatchKind::StrategicMerge,
                "application/json-patch+json" => PatchKind::Json,
                "application/apply-patch+yaml" | "application/apply-patch+json" => {
                    PatchKind::Apply {
                        force: flag(query, "force"),
                    }
                }
                other => {
                    return Err(ApiError {
                        code: 415,
                        reason: "UnsupportedMediaType",
                        message: format!(
                            "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (got {other:?})"
                        ),
                        details: None,
                    });
                }
            };
            let manager = query.get("fieldManager").map(String::as_str);
            Ok((
                200,
                store.patch(resource, namespace, name, kind, body, subresource, manager)?,
            ))
        }
        (&Method::DELETE, Some(name)) => {
            let precondition = serde_json::from_slice::<Value>(body).ok().and_then(|b| {
                b.pointer("/preconditions/resourceVersion")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            });
            let deleted = store.delete(
                resource,
                namespace,
                name,
                propagation(query, body),
                precondition.as_deref(),
            )?;
            Ok((200, deleted))
        }
        (&Method::DELETE, None) => {
            let filter = filter_from(target, query)?;
            let items = store.delete_collection(resource, &filter, propagation(query, body));
            Ok((
                200,
                json!({
                    "kind": format!("{}List", resource.kind),
                    "apiVersion": resource.api_version(),
                    "metadata": {"resourceVersion": store.resource_version().to_string()},
                    "items": items,
                }),
            ))
        }
        _ => Err(ApiError {
            code: 405,
            reason: "MethodNotAllowed",
            message: format!("{method} is not supported on {}", resource.plural),
            details: None,
        }),
    }
}

/// The watch event a change means to a watcher with this filter, if any (an object that stops
/// matching a selector is DELETED for the watcher, one that starts matching is ADDED).
fn event_for(change: &Change, resource_index: usize, filter: &Filter) -> Option<Value> {
    if change.resource != resource_index {
        return None;
    }
    let now = filter.matches(&change.namespace, &change.object);
    let before = change
        .previous
        .as_ref()
        .map(|p| filter.matches(&change.namespace, p));
    let kind = match (change.kind, now, before) {
        (EventType::Modified, true, Some(false)) => EventType::Added,
        (EventType::Modified, false, Some(true)) => EventType::Deleted,
        (_, true, _) => change.kind,
        _ => return None,
    };
    Some(json!({"type": kind.as_str(), "object": change.object}))
}

fn line(value: &Value) -> Bytes {
    let mut text = value.to_string();
    text.push('\n');
    Bytes::from(text)
}

fn bookmark(resource: &ResourceType, resource_version: u64, initial_events_end: bool) -> Value {
    let mut metadata = json!({"resourceVersion": resource_version.to_string()});
    if initial_events_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({"type": "BOOKMARK", "object": {"kind": resource.kind, "apiVersion": resource.api_version(), "metadata": metadata}})
}

fn watch(shared: Arc<Shared>, target: Target, query: HashMap<String, String>) -> Response {
    let filter = match filter_from(&target, &query) {
        Ok(filter) => filter,
        Err(e) => return error(&e),
    };
    let resource = target.resource;
    let index = RESOURCES
        .iter()
        .position(|r| r == resource)
        .unwrap_or(usize::MAX);
    let bookmarks = flag(&query, "allowWatchBookmarks");
    let send_initial = flag(&query, "sendInitialEvents");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .map_or(Duration::from_secs(1800), Duration::from_secs);
    let since: Option<u64> = query
        .get("resourceVersion")
        .and_then(|rv| rv.parse().ok())
        .filter(|rv| *rv > 0 && !send_initial);

    // Snapshot and subscription under one lock: nothing falls between them.
    let (initial, mut changes, mut last_seen) = {
        let store = shared.store();
        let changes = store.subscribe();
        let initial: Result<Vec<Value>, ApiError> = match since {
            None => {
                let mut events: Vec<Value> = store
                    .matching(resource, &filter)
                    .into_iter()
                    .map(|object| json!({"type": "ADDED", "object": object}))
                    .collect();
                if send_initial && bookmarks {
                    events.push(bookmark(resource, store.resource_version(), true));
                }
                Ok(events)
            }
            Some(rv) => store.changes_since(rv).map(|changes| {
                changes
                    .iter()
                    .filter_map(|c| event_for(c, index, &filter))
                    .collect()
            }),
        };
        (initial, changes, store.resource_version())
    };

    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let mut shutdown = shared.shutdown.clone();
    let interval = shared.bookmark_interval;
    tokio::spawn(async move {
        let initial = match initial {
            Ok(events) => events,
            Err(gone) => {
                let _ = tx
                    .send(line(&json!({"type": "ERROR", "object": gone.to_status()})))
                    .await;
                return;
            }
        };
        for event in &initial {
            if tx.send(line(event)).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut ticker = tokio::time::interval(interval);
        ticker.tick().await;
        loop {
            tokio::select! {
                change = changes.recv() => match change {
                    Ok(change) => {
                        if change.resource_version <= last_seen {
                            continue;
                        }
                        last_seen = change.resource_version;
                        if let Some(event) = event_for(&change, index, &filter)
                            && tx.send(line(&event)).await.is_err()
                        {
                            return;
                        }
                    }
                    // A watcher that fell behind is closed; it resumes from its last version.
                    Err(broadcast::error::RecvError::Lagged(_) | broadcast::error::RecvError::Closed) => return,
                },
                _ = ticker.tick(), if bookmarks => {
                    if tx.send(line(&bookmark(resource, last_seen, false))).await.is_err() {
                        return;
                    }
                }
                _ = &mut deadline => return,
                _ = shutdown.changed() => return,
                _ = tx.closed() => return,
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|bytes| (Ok::<_, std::convert::Infallible>(bytes), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
