//! The names and fixed places every controller shares: labels, child object names, the
//! runtime pod's mount points and ports, the field manager. One definition each, so that a
//! KnowledgeBase's claim, a Router's Service and the Job that verifies an artifact agree.

use std::collections::BTreeMap;

/// The field manager of every write.
pub const FIELD_MANAGER: &str = "switchboard-operator";

/// The in-cluster address of a Router's runtime admin API: the `<router>-runtime-admin`
/// Service's admin port (`{service}` is the runtime Service's name, `<router>-runtime`).
pub const DEFAULT_RUNTIME_URL: &str = "http://{service}-admin.{namespace}.svc:8081";

/// `app.kubernetes.io/name` of every runtime pod.
pub const APP_NAME: &str = "switchboard-runtime";
/// Label naming the Router of a child.
pub const ROUTER_LABEL: &str = "switchboard.dev/router";
/// Directory the ConfigMap is mounted at (the whole directory, so updates reach the pod).
pub const CONFIG_DIR: &str = "/etc/switchboard";
/// Index generations (`<dir>/<kb name>/`).
pub const DATA_DIR: &str = "/var/lib/switchboard/index";
/// Adapter artifact cache.
pub const ARTIFACTS_DIR: &str = "/var/lib/switchboard/artifacts";
/// Writable per-pod state (an `emptyDir`): the SQLite outcome store when the Router names no
/// PostgreSQL.
pub const STATE_DIR: &str = "/var/lib/switchboard/state";
/// The runtime's environment variable holding the outcome store URL (read from the Router's
/// `spec.outcomeStore.postgres` Secret key, so the password never appears in the pod spec).
pub const OUTCOME_STORE_ENV: &str = "SWITCHBOARD_OUTCOME_STORE";
/// Directory of the interaction-token key Secret.
pub const TOKEN_DIR: &str = "/var/run/switchboard/token";
/// Key of the token Secret.
pub const TOKEN_KEY: &str = "key";
/// Key of the token Secret holding the admin API's bearer token (the operator reads it to call
/// the admin API).
pub const ADMIN_TOKEN_KEY: &str = "admin-token";
/// Key of the token Secret holding the key units are pseudonymised with before storage.
pub const UNIT_KEY_KEY: &str = "unit-key";
/// Directory of the `spec.access.clientTokens` Secret (the runtime's `--client-token-file` is
/// `<dir>/<key>`).
pub const CLIENT_TOKENS_DIR: &str = "/var/run/switchboard/client-tokens";
/// Directory of the Secrets the RuntimeConfig names (`<dir>/<secret name>/<key>`): the large
/// model endpoint's API key. The runtime's `--secrets`.
pub const SECRETS_DIR: &str = "/var/run/switchboard/secrets";
/// Where the claims of `pvc://<claim>/<path>` adapter artifacts and rerank models are mounted
/// (`<dir>/<claim>`, read-only). The runtime's `--pvc-root`; the AdapterPatch verification Job
/// mounts a claim at the same place.
pub const PVC_DIR: &str = switchboard_artifact::PVC_ROOT;
/// gRPC port.
pub const GRPC_PORT: i32 = 50051;
/// HTTP port (JSON API, /metrics, /healthz, /readyz).
pub const HTTP_PORT: i32 = 8080;
/// Admin API port (config, coverage gaps, hits, CUPED sums, switch-back): not on the Router's
/// Service; the admin Service and the NetworkPolicy let the operator alone reach it.
pub const ADMIN_PORT: i32 = 8081;
/// Annotation on the ConfigMap: the revision it holds.
pub const REVISION_ANNOTATION: &str = "switchboard.dev/config-revision";

/// Name of a Router's ConfigMap, Deployment and Service.
pub fn runtime_name(router: &str) -> String {
    format!("{router}-runtime")
}

/// Name of the Service in front of a Router's admin port.
pub fn admin_service_name(router: &str) -> String {
    format!("{router}-runtime-admin")
}

/// Name of a Router's interaction-token Secret.
pub fn token_secret_name(router: &str) -> String {
    format!("{router}-runtime-token")
}

/// Name of a KnowledgeBase's index PersistentVolumeClaim.
pub fn index_claim_name(kb: &str) -> String {
    format!("{kb}-index")
}

/// Labels selecting a Router's runtime pods (stable: the Deployment selector is immutable).
pub fn selector_labels(router: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), APP_NAME.to_owned()),
        ("app.kubernetes.io/instance".to_owned(), router.to_owned()),
    ])
}

/// Labels of every child of a Router.
pub fn labels(router: &str) -> BTreeMap<String, String> {
    let mut l = selector_labels(router);
    l.insert(ROUTER_LABEL.to_owned(), router.to_owned());
    l.insert(
        "app.kubernetes.io/managed-by".to_owned(),
        FIELD_MANAGER.to_owned(),
    );
    l.insert(
        "app.kubernetes.io/component".to_owned(),
        "runtime".to_owned(),
    );
    l
}

/// `key=value,...` form of the pod selector (for the scale subresource).
pub fn selector_string(router: &str) -> String {
    selector_labels(router)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}
