//! Object storage with Kubernetes write semantics: resource versions, generations, status
//! subresource, server-side apply, finalizers, garbage collection of owned objects, watch history.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use super::patch::{self, FieldSet};
use super::resources::{RESOURCES, ResourceType};
use super::selector::{FieldSelector, LabelSelector};

/// An API error, rendered as a `metav1.Status`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// `metav1.StatusReason`, e.g. `NotFound`.
    pub reason: &'static str,
    /// Human-readable message.
    pub message: String,
    /// `details`: name, group, kind of the object concerned.
    pub details: Option<(String, &'static str, &'static str)>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn about(mut self, resource: &ResourceType, name: &str) -> Self {
        self.details = Some((name.to_owned(), resource.group, resource.plural));
        self
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 404 NotFound for an object.
    pub fn not_found(resource: &ResourceType, name: &str) -> Self {
        let what = qualified(resource);
        Self::new(404, "NotFound", format!("{what} \"{name}\" not found")).about(resource, name)
    }

    fn conflict(resource: &ResourceType, name: &str, why: &str) -> Self {
        let what = qualified(resource);
        Self::new(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {what} \"{name}\": {why}"),
        )
        .about(resource, name)
    }

    fn invalid(resource: &ResourceType, name: &str, why: &str) -> Self {
        Self::new(
            422,
            "Invalid",
            format!("{} \"{name}\" is invalid: {why}", resource.kind),
        )
        .about(resource, name)
    }

    /// 410 Gone (`Expired`) for a watch or list from a compacted resource version.
    pub fn gone(resource_version: u64, oldest: u64) -> Self {
        Self::new(
            410,
            "Expired",
            format!("too old resource version: {resource_version} ({oldest})"),
        )
    }

    /// The `metav1.Status` body.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some((name, group, kind)) = &self.details {
            status["details"] = json!({"name": name, "group": group, "kind": kind});
        }
        status
    }
}

fn qualified(resource: &ResourceType) -> String {
    if resource.group.is_empty() {
        resource.plural.to_owned()
    } else {
        format!("{}.{}", resource.plural, resource.group)
    }
}

/// Kind of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Object created.
    Added,
    /// Object changed.
    Modified,
    /// Object removed.
    Deleted,
}

impl EventType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One change, as kept in the watch history and broadcast to watchers.
#[derive(Debug)]
pub struct Change {
    /// Resource version of the change.
    pub resource_version: u64,
    /// Index of the resource type in [`RESOURCES`].
    pub resource: usize,
    /// Namespace of the object ("" for cluster-scoped).
    pub namespace: String,
    /// What happened.
    pub kind: EventType,
    /// The object after the change (for deletions: the last state).
    pub object: Value,
    /// The object before a modification (to turn selector transitions into ADDED/DELETED).
    pub previous: Option<Value>,
}

/// Which part of an object a write addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subresource {
    /// The main endpoint: everything but `status` (for types with a status subresource).
    Main,
    /// `/status`: only `status`.
    Status,
}

impl Subresource {
    fn key(self) -> &'static str {
        match self {
            Self::Main => "",
            Self::Status => "status",
        }
    }
}

/// What a delete does to objects owned by the deleted one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    /// Delete dependents whose owners are all gone (Background and Foreground).
    Cascade,
    /// Leave dependents, without the owner reference.
    Orphan,
}

/// A patch body, by content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    /// `application/merge-patch+json`.
    Merge,
    /// `application/strategic-merge-patch+json` (applied as a merge patch).
    StrategicMerge,
    /// `application/json-patch+json`.
    Json,
    /// `application/apply-patch+yaml`: server-side apply.
    Apply {
        /// `force=true`.
        force: bool,
    },
}

type Key = (usize, String, String);

#[derive(Debug, Default)]
struct Stored {
    object: Value,
    /// Server-side apply field sets: subresource -> manager -> fields.
    managers: BTreeMap<&'static str, BTreeMap<String, FieldSet>>,
}

/// A page of a list.
#[derive(Debug)]
pub struct ListPage {
    /// Matching objects, ordered by namespace and name.
    pub items: Vec<Value>,
    /// Resource version the list reflects.
    pub resource_version: u64,
    /// Token for the next page, when `limit` cut the list.
    pub continue_token: Option<String>,
    /// Items left after this page.
    pub remaining: usize,
}

/// Filter of a list or watch.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    /// Only this namespace (`None`: all).
    pub namespace: Option<String>,
    /// `labelSelector`.
    pub labels: LabelSelector,
    /// `fieldSelector`.
    pub fields: FieldSelector,
}

impl Filter {
    /// Whether an object of the filtered resource type passes.
    pub fn matches(&self, namespace: &str, object: &Value) -> bool {
        self.namespace.as_deref().is_none_or(|ns| ns == namespace)
            && self.labels.matches(object)
            && self.fields.matches(object)
    }
}

/// All objects and the change history.
#[derive(Debug)]
pub struct Store {
    objects: BTreeMap<Key, Stored>,
    resource_version: u64,
    /// Changes with resource versions above `compacted`, oldest first.
    history: VecDeque<Arc<Change>>,
    compacted: u64,
    history_limit: usize,
    serial: u64,
    changes: broadcast::Sender<Arc<Change>>,
}

fn now() -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    time::OffsetDateTime::now_utc()
        .format(format)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}

fn resource_index(resource: &ResourceType) -> usize {
    RESOURCES
        .iter()
        .position(|r| r == resource)
        .unwrap_or(usize::MAX)
}

fn meta(object: &Value) -> &Value {
    object.get("metadata").unwrap_or(&Value::Null)
}

fn meta_mut(object: &mut Value) -> &mut Map<String, Value> {
    if !object["metadata"].is_object() {
        object["metadata"] = Value::Object(Map::new());
    }
    match &mut object["metadata"] {
        Value::Object(map) => map,
        _ => unreachable!("metadata was just made an object"),
    }
}

fn meta_str<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    meta(object).get(field).and_then(Value::as_str)
}

/// Everything that counts towards `generation`: all but metadata and status.
fn spec_part(object: &Value) -> Value {
    let mut spec = object.clone();
    if let Value::Object(map) = &mut spec {
        map.remove("metadata");
        map.remove("status");
    }
    spec
}

/// The object without the fields a no-op write may legitimately differ in.
fn comparable(object: &Value) -> Value {
    let mut object = object.clone();
    let metadata = meta_mut(&mut object);
    metadata.remove("resourceVersion");
    metadata.remove("managedFields");
    object
}

fn has_finalizers(object: &Value) -> bool {
    meta(object)
        .get("finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty())
}

/// DNS-1123 subdomain, as Kubernetes requires of most object names.
fn valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !name.is_empty()
        && name.len() <= 253
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'.')
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

impl Store {
    /// An empty store keeping at most `history_limit` changes for watch resumption.
    pub fn new(history_limit: usize) -> Self {
        let (changes, _) = broadcast::channel(4096);
        Self {
            objects: BTreeMap::new(),
            resource_version: 0,
            history: VecDeque::new(),
            compacted: 0,
            history_limit,
            serial: 0,
            changes,
        }
    }

    /// The current (global) resource version.
    pub fn resource_version(&self) -> u64 {
        self.resource_version
    }

    /// Forgets the change history: watches from any older resource version get 410 Gone.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.resource_version;
    }

    /// Subscribes to future changes.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.changes.subscribe()
    }

    /// Changes after `resource_version` still in the history, or 410 when some were forgotten.
    pub fn changes_since(&self, resource_version: u64) -> Result<Vec<Arc<Change>>, ApiError> {
        if resource_version < self.compacted {
            return Err(ApiError::gone(resource_version, self.compacted));
        }
        Ok(self
            .history
            .iter()
            .filter(|c| c.resource_version > resource_version)
            .cloned()
            .collect())
    }

    fn next_serial(&mut self) -> u64 {
        self.serial += 1;
        self.serial
    }

    fn new_uid(&mut self) -> String {
        let serial = self.next_serial();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        format!("{nanos:08x}-5b0a-4d00-8000-{serial:012x}")
    }

    fn record(&mut self, change: Change) {
        let change = Arc::new(change);
        self.history.push_back(change.clone());
        while self.history.len() > self.history_limit {
            if let Some(dropped) = self.history.pop_front() {
                self.compacted = dropped.resource_version;
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = self.changes.send(change);
    }

    /// Stores `object` under `key` with a fresh resource version and records the change.
    fn commit(
        &mut self,
        key: &Key,
        mut object: Value,
        kind: EventType,
        previous: Option<Value>,
    ) -> Value {
        self.resource_version += 1;
        meta_mut(&mut object).insert(
            "resourceVersion".into(),
            Value::String(self.resource_version.to_string()),
        );
        match kind {
            EventType::Deleted => {
                self.objects.remove(key);
            }
            _ => {
                self.objects.entry(key.clone()).or_default().object = object.clone();
            }
        }
        self.record(Change {
            resource_version: self.resource_version,
            resource: key.0,
            namespace: key.1.clone(),
            kind,
            object: object.clone(),
            previous,
        });
        object
    }

    fn key(resource: &ResourceType, namespace: &str, name: &str) -> Key {
        let namespace = if resource.namespaced { namespace } else { "" };
        (
            resource_index(resource),
            namespace.to_owned(),
            name.to_owned(),
        )
    }

    /// GET one object.
    pub fn get(
        &self,
        resource: &ResourceType,
        namespace: &str,
        name: &str,
    ) -> Result<Value, ApiError> {
        self.objects
            .get(&Self::key(resource, namespace, name))
            .map(|s| s.object.clone())
            .ok_or_else(|| ApiError::not_found(resource, name))
    }

    /// All objects of a type that pass the filter, in (namespace, name) order.
    pub fn matching(&self, resource: &ResourceType, filter: &Filter) -> Vec<Value> {
        let index = resource_index(resource);
        self.objects
            .range((index, String::new(), String::new())..)
            .take_while(|((r, _, _), _)| *r == index)
            .filter(|((_, ns, _), stored)| filter.matches(ns, &stored.object))
            .map(|(_, stored)| stored.object.clone())
            .collect()
    }

    /// LIST with `limit` / `continue`.
    pub fn list(
        &self,
        resource: &ResourceType,
        filter: &Filter,
        limit: Option<usize>,
        continue_token: Option<&str>,
    ) -> Result<ListPage, ApiError> {
        let after: Option<(String, String)> = match continue_token {
            Some(token) if !token.is_empty() => {
                Some(serde_json::from_str(token).map_err(|_| {
                    ApiError::bad_request(format!("invalid continue token {token:?}"))
                })?)
            }
            _ => None,
        };
        let mut items: Vec<Value> = self.matching(resource, filter);
        if let Some((ns, name)) = &after {
            items.retain(|o| {
                let key = (
                    meta_str(o, "namespace").unwrap_or(""),
                    meta_str(o, "name").unwrap_or(""),
                );
                key > (ns.as_str(), name.as_str())
            });
        }
        let mut continue_token = None;
        let mut remaining = 0;
        if let Some(limit) = limit.filter(|l| *l > 0 && *l < items.len()) {
            remaining = items.len() - limit;
            items.truncate(limit);
            let last = &items[limit - 1];
            continue_token = Some(
                json!([
                    meta_str(last, "namespace").unwrap_or(""),
                    meta_str(last, "name").unwrap_or("")
                ])
                .to_string(),
            );
        }
        Ok(ListPage {
            items,
            resource_version: self.resource_version,
            continue_token,
            remaining,
        })
    }

    /// Checks `apiVersion`/`kind` of a body against the URL and fills them in.
    fn check_type(
        resource: &ResourceType,
        body: &mut Value,
        required: bool,
    ) -> Result<(), ApiError> {
        let Value::Object(map) = body else {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        };
        let api_version = resource.api_version();
        for (field, expected) in [
            ("apiVersion", api_version.as_str()),
            ("kind", resource.kind),
        ] {
            match map.get(field).and_then(Value::as_str) {
                Some(given) if given != expected => {
                    return Err(ApiError::bad_request(format!(
                        "{field} {given:?} does not match the URL ({expected:?})"
                    )));
                }
                None if required => {
                    return Err(ApiError::bad_request(format!("{field} must be set")));
                }
                _ => {}
            }
            map.insert(field.into(), Value::String(expected.to_owned()));
        }
        Ok(())
    }

    fn check_namespace(
        resource: &ResourceType,
        body: &mut Value,
        namespace: &str,
    ) -> Result<(), ApiError> {
        if !resource.namespaced {
            meta_mut(body).remove("namespace");
            return Ok(());
        }
        let metadata = meta_mut(body);
        match metadata.get("namespace").and_then(Value::as_str) {
            Some(given) if !given.is_empty() && given != namespace => Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            )),
            _ => {
                metadata.insert("namespace".into(), Value::String(namespace.to_owned()));
                Ok(())
            }
        }
    }

    /// POST: creates an object.
    pub fn create(
        &mut self,
        resource: &ResourceType,
        namespace: &str,
        mut body: Value,
    ) -> Result<Value, ApiError> {
        Self::check_type(resource, &mut body, false)?;
        Self::check_namespace(resource, &mut body, namespace)?;
        let mut name = meta_str(&body, "name").unwrap_or("").to_owned();
        if name.is_empty()
            && let Some(prefix) = meta_str(&body, "generateName").map(str::to_owned)
        {
            let serial = self.next_serial();
            let alphabet = b"bcdfghjklmnpqrstvwxz2456789";
            let suffix: String = (0..5)
                .map(|i| {
                    alphabet[((serial * 7919 + i * 31) % alphabet.len() as u64) as usize] as char
                })
                .collect();
            name = format!("{prefix}{suffix}");
        }
        if name.is_empty() {
            return Err(ApiError::invalid(
                resource,
                "",
                "metadata.name: Required value: name or generateName is required",
            ));
        }
        if !valid_name(&name) {
            return Err(ApiError::invalid(
                resource,
                &name,
                "metadata.name: Invalid value: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'",
            ));
        }
        let key = Self::key(resource, namespace, &name);
        if self.objects.contains_key(&key) {
            let what = qualified(resource);
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("{what} \"{name}\" already exists"),
            )
            .about(resource, &name));
        }
        let uid = self.new_uid();
        let metadata = meta_mut(&mut body);
        metadata.insert("name".into(), Value::String(name));
        for field in [
            "resourceVersion",
            "managedFields",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            metadata.remove(field);
        }
        metadata.insert("uid".into(), Value::String(uid));
        metadata.insert("generation".into(), json!(1));
        metadata.insert("creationTimestamp".into(), Value::String(now()));
        if resource.status_subresource
            && let Value::Object(map) = &mut body
        {
            map.remove("status");
        }
        Ok(self.commit(&key, body, EventType::Added, None))
    }

    /// Turns a candidate new state of an existing object into the stored one (status subresource
    /// rules, immutable metadata, generation) and commits it unless nothing changed.
    fn update_existing(
        &mut self,
        resource: &ResourceType,
        key: &Key,
        mut candidate: Value,
        subresource: Subresource,
    ) -> Result<Value, ApiError> {
        let name = key.2.as_str();
        let old = self
            .objects
            .get(key)
            .map(|s| s.object.clone())
            .ok_or_else(|| ApiError::not_found(resource, name))?;
        let old_rv = meta_str(&old, "resourceVersion").unwrap_or("");
        if let Some(rv) = meta_str(&candidate, "resourceVersion")
            && !rv.is_empty()
            && rv != old_rv
        {
            return Err(ApiError::conflict(
                resource,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        let mut new = match subresource {
            Subresource::Status => {
                let mut new = old.clone();
                match candidate.get_mut("status").map(Value::take) {
                    Some(status) if !status.is_null() => new["status"] = status,
                    _ => {
                        if let Value::Object(map) = &mut new {
                            map.remove("status");
                        }
                    }
                }
                new
            }
            Subresource::Main => {
                if resource.status_subresource
                    && let Value::Object(map) = &mut candidate
                {
                    map.remove("status");
                    if let Some(status) = old.get("status") {
                        map.insert("status".into(), status.clone());
                    }
                }
                candidate
            }
        };
        Self::check_type(resource, &mut new, false)?;
        let metadata = meta_mut(&mut new);
        let old_meta = meta(&old);
        for field in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "generation",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            match old_meta.get(field) {
                Some(value) => metadata.insert(field.into(), value.clone()),
                None => metadata.remove(field),
            };
        }
        metadata.remove("managedFields");
        if old_meta.get("deletionTimestamp").is_some() {
            let old_finalizers = old_meta
                .get("finalizers")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let added = metadata
                .get("finalizers")
                .and_then(Value::as_array)
                .is_some_and(|f| f.iter().any(|x| !old_finalizers.contains(x)));
            if added {
                return Err(ApiError::invalid(
                    resource,
                    name,
                    "metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted",
                ));
            }
        }
        if spec_part(&new) != spec_part(&old) {
            let generation = old_meta
                .get("generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            meta_mut(&mut new).insert("generation".into(), json!(generation + 1));
        }
        if comparable(&new) == comparable(&old) {
            return Ok(old);
        }
        let deleting = meta(&new).get("deletionTimestamp").is_some();
        let committed = self.commit(key, new, EventType::Modified, Some(old));
        if deleting && !has_finalizers(&committed) {
            return Ok(self.remove(resource, key, Propagation::Cascade));
        }
        Ok(committed)
    }

    fn key_checked(
        &self,
        resource: &ResourceType,
        namespace: &str,
        name: &str,
    ) -> Result<Key, ApiError> {
        let key = Self::key(resource, namespace, name);
        if self.objects.contains_key(&key) {
            Ok(key)
        } else {
            Err(ApiError::not_found(resource, name))
        }
    }

    /// PUT (main endpoint or `/status`).
    pub fn replace(
        &mut self,
        resource: &ResourceType,
        namespace: &str,
        name: &str,
        mut body: Value,
        subresource: Subresource,
    ) -> Result<Value, ApiError> {
        Self::check_type(resource, &mut body, false)?;
        Self::check_namespace(resource, &mut body, namespace)?;
        if meta_str(&body, "name").is_some_and(|n| n != name) {
            return Err(ApiError::bad_request(
                "the name of the object does not match the name on the URL",
            ));
        }
        let key = self.key_checked(resource, namespace, name)?;
        self.update_existing(resource, &key, body, subresource)
    }

    /// PATCH (main endpoint or `/status`); server-side apply creates missing objects.
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &mut self,
        resource: &ResourceType,
        namespace: &str,
        name: &str,
        kind: PatchKind,
        body: &[u8],
        subresource: Subresource,
        field_manager: Option<&str>,
    ) -> Result<Value, ApiError> {
        if let PatchKind::Apply { force } = kind {
            let applied: Value = serde_yaml::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("invalid apply configuration: {e}")))?;
            let manager = field_manager.filter(|m| !m.is_empty()).ok_or_else(|| {
                ApiError::bad_request("fieldManager is required for apply patches")
            })?;
            return self.apply(
                resource,
                namespace,
                name,
                applied,
                subresource,
                manager,
                force,
            );
        }
        let patch: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("invalid patch body: {e}")))?;
        let key = self.key_checked(resource, namespace, name)?;
        let mut candidate = self.objects[&key].object.clone();
        // A resourceVersion is only a precondition when the patch itself sets one.
        meta_mut(&mut candidate).remove("resourceVersion");
        match kind {
            PatchKind::Merge | PatchKind::StrategicMerge => {
                patch::merge_patch(&mut candidate, &patch)
            }
            PatchKind::Json => {
                let mut with_rv = self.objects[&key].object.clone();
                patch::json_patch(&mut with_rv, &patch)
                    .map_err(|e| ApiError::new(422, "Invalid", e).about(resource, name))?;
                candidate = with_rv;
                let original_rv =
                    meta_str(&self.objects[&key].object, "resourceVersion").map(str::to_owned);
                if meta_str(&candidate, "resourceVersion").map(str::to_owned) == original_rv {
                    meta_mut(&mut candidate).remove("resourceVersion");
                }
            }
            PatchKind::Apply { .. } => unreachable!("handled above"),
        }
        if meta_str(&candidate, "name") != Some(name) {
            return Err(ApiError::bad_request("a patch cannot change metadata.name"));
        }
        self.update_existing(resource, &key, candidate, subresource)
    }

    #[allow(clippy::too_many_arguments)]
    fn apply(
        &mut self,
        resource: &ResourceType,
        namespace: &str,
        name: &str,
        mut applied: Value,
        subresource: Subresource,
        manager: &str,
        force: bool,
    ) -> Result<Value, ApiError> {
        Self::check_type(resource, &mut applied, true)?;
        Self::check_namespace(resource, &mut applied, namespace)?;
        // The name may be left out (the URL names the object), as kube-rs' controller examples do.
        if meta_str(&applied, "name").is_some_and(|n| n != name) {
            return Err(ApiError::bad_request(
                "metadata.name must match the name on the URL",
            ));
        }
        let precondition = meta_str(&applied, "resourceVersion").map(str::to_owned);
        // The applied configuration proper: the fields this manager declares.
        let mut declared = Map::new();
        if let Value::Object(map) = &applied {
            for (field, value) in map {
                let keep = match (field.as_str(), subresource) {
                    ("apiVersion" | "kind", _) => false,
                    ("status", Subresource::Status) => true,
                    (_, Subresource::Status) => false,
                    ("status", Subresource::Main) => !resource.status_subresource,
                    _ => true,
                };
                if keep {
                    declared.insert(field.clone(), value.clone());
                }
            }
        }
        if let Some(Value::Object(metadata)) = declared.get_mut("metadata") {
            metadata.retain(|k, _| {
                matches!(
                    k.as_str(),
                    "labels" | "annotations" | "ownerReferences" | "finalizers"
                )
            });
            if metadata.is_empty() {
                declared.remove("metadata");
            }
        }
        let declared = Value::Object(declared);

        let key = Self::key(resource, namespace, name);
        let exists = self.objects.contains_key(&key);
        if !exists && subresource == Subresource::Status {
            return Err(ApiError::not_found(resource, name));
        }
        let (mut live, mut managers) = match self.objects.get(&key) {
            Some(stored) => (
                stored.object.clone(),
                stored
                    .managers
                    .get(subresource.key())
                    .cloned()
                    .unwrap_or_default(),
            ),
            None => (
                json!({"apiVersion": resource.api_version(), "kind": resource.kind, "metadata": {"name": name}}),
                BTreeMap::new(),
            ),
        };
        patch::apply(&mut live, &declared, manager, force, &mut managers).map_err(|conflicts| {
            let listed: Vec<String> = conflicts
                .iter()
                .map(|c| format!("conflict with \"{}\": .{}", c.manager, c.field))
                .collect();
            let count = conflicts.len();
            ApiError::new(
                409,
                "Conflict",
                format!(
                    "Apply failed with {count} conflict{}: {}",
                    if count == 1 { "" } else { "s" },
                    listed.join("; ")
                ),
            )
            .about(resource, name)
        })?;
        let result = if exists {
            if let Some(rv) = precondition {
                meta_mut(&mut live).insert("resourceVersion".into(), Value::String(rv));
            } else {
                meta_mut(&mut live).remove("resourceVersion");
            }
            self.update_existing(resource, &key, live, subresource)?
        } else {
            self.create(resource, namespace, live)?
        };
        if let Some(stored) = self.objects.get_mut(&key) {
            stored.managers.insert(subresource.key(), managers);
        }
        Ok(result)
    }

    /// DELETE: marks objects with finalizers, removes the others and collects their dependents.
    pub fn delete(
        &mut self,
        resource: &ResourceType,
        namespace: &str,
        name: &str,
        propagation: Propagation,
        precondition_rv: Option<&str>,
    ) -> Result<Value, ApiError> {
        let key = self.key_checked(resource, namespace, name)?;
        let object = self.objects[&key].object.clone();
        if let Some(rv) = precondition_rv
            && meta_str(&object, "resourceVersion") != Some(rv)
        {
            return Err(ApiError::conflict(
                resource,
                name,
                "the resourceVersion precondition failed",
            ));
        }
        if has_finalizers(&object) {
            if meta(&object).get("deletionTimestamp").is_some() {
                return Ok(object);
            }
            let mut marked = object.clone();
            let metadata = meta_mut(&mut marked);
            metadata.insert("deletionTimestamp".into(), Value::String(now()));
            metadata.insert("deletionGracePeriodSeconds".into(), json!(0));
            return Ok(self.commit(&key, marked, EventType::Modified, Some(object)));
        }
        Ok(self.remove(resource, &key, propagation))
    }

    /// Removes an object for good and garbage-collects what it owned.
    fn remove(&mut self, _resource: &ResourceType, key: &Key, propagation: Propagation) -> Value {
        let Some(object) = self.objects.get(key).map(|s| s.object.clone()) else {
            return Value::Null;
        };
        let removed = self.commit(key, object, EventType::Deleted, None);
        let Some(uid) = meta_str(&removed, "uid").map(str::to_owned) else {
            return removed;
        };
        let dependents: Vec<(Key, Value)> = self
            .objects
            .iter()
            .filter(|(_, stored)| {
                meta(&stored.object)
                    .get("ownerReferences")
                    .and_then(Value::as_array)
                    .is_some_and(|refs| {
                        refs.iter()
                            .any(|r| r.get("uid").and_then(Value::as_str) == Some(&uid))
                    })
            })
            .map(|(k, s)| (k.clone(), s.object.clone()))
            .collect();
        for (dependent_key, dependent) in dependents {
            let Some(dependent_type) = RESOURCES.get(dependent_key.0) else {
                continue;
            };
            let remaining: Vec<Value> = meta(&dependent)["ownerReferences"]
                .as_array()
                .map(|refs| {
                    refs.iter()
                        .filter(|r| r.get("uid").and_then(Value::as_str) != Some(&uid))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            let owners_alive = remaining.iter().any(|r| {
                let owner_uid = r.get("uid").and_then(Value::as_str);
                self.objects
                    .values()
                    .any(|s| meta_str(&s.object, "uid") == owner_uid)
            });
            if propagation == Propagation::Cascade && !owners_alive {
                let (_, ns, name) = &dependent_key;
                let (ns, name) = (ns.clone(), name.clone());
                // The dependent may already be gone through another path of the cascade.
                let _ = self.delete(dependent_type, &ns, &name, Propagation::Cascade, None);
            } else {
                let mut orphan = dependent.clone();
                if remaining.is_empty() {
                    meta_mut(&mut orphan).remove("ownerReferences");
                } else {
                    meta_mut(&mut orphan).insert("ownerReferences".into(), Value::Array(remaining));
                }
                meta_mut(&mut orphan).remove("resourceVersion");
                let _ =
                    self.update_existing(dependent_type, &dependent_key, orphan, Subresource::Main);
            }
        }
        removed
    }

    /// DELETE on a collection: deletes every object the filter selects.
    pub fn delete_collection(
        &mut self,
        resource: &ResourceType,
        filter: &Filter,
        propagation: Propagation,
    ) -> Vec<Value> {
        let targets: Vec<(String, String)> = self
            .matching(resource, filter)
            .iter()
            .map(|o| {
                (
                    meta_str(o, "namespace").unwrap_or("").to_owned(),
                    meta_str(o, "name").unwrap_or("").to_owned(),
                )
            })
            .collect();
        targets
            .into_iter()
            .filter_map(|(ns, name)| self.delete(resource, &ns, &name, propagation, None).ok())
            .collect()
    }
}
