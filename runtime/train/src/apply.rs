//! `--apply`: reads the AdapterPatch from the Kubernetes API and patches the new version into
//! it. The patch is a JSON merge patch of `spec.version`, `spec.artifact` and `spec.lora`
//! carrying the `resourceVersion` it was computed from, so a concurrent edit (another
//! training run, a person) is refused rather than overwritten. The operator's AdapterPatch
//! controller takes it from there: artifact check, Shadow, Canary steps, guardrails.
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use switchboard_crds::AdapterPatch;

use crate::error::{Result, TrainError};
use crate::manifest::{CurrentPatch, NextVersion};

/// Field manager of the trainer's patches.
pub const FIELD_MANAGER: &str = "switchboard-train";

fn kube_error(namespace: &str, name: &str, e: &kube::Error) -> TrainError {
    let message = match e {
        kube::Error::Api(status) if status.code == 409 => format!(
            "it changed since it was read ({}); run again to train against the current version",
            status.message
        ),
        kube::Error::Api(status) if status.code == 403 => format!(
            "forbidden ({}): the ServiceAccount needs get and patch on adapterpatches.switchboard.dev",
            status.message
        ),
        kube::Error::Api(status) => {
            format!("{} {}: {}", status.code, status.reason, status.message)
        }
        other => other.to_string(),
    };
    TrainError::Kube {
        name: format!("{namespace}/{name}"),
        message,
    }
}

/// A client from `KUBECONFIG`, `~/.kube/config` or the pod's service account.
pub async fn client() -> Result<Client> {
    Client::try_default().await.map_err(|e| TrainError::Kube {
        name: "-".to_owned(),
        message: format!("no Kubernetes client configuration: {e}"),
    })
}

/// Reads the AdapterPatch `namespace/name`.
pub async fn fetch(client: &Client, namespace: &str, name: &str) -> Result<CurrentPatch> {
    let api: Api<AdapterPatch> = Api::namespaced(client.clone(), namespace);
    let patch = api
        .get(name)
        .await
        .map_err(|e| kube_error(namespace, name, &e))?;
    let document = serde_json::to_value(&patch).map_err(|e| TrainError::Kube {
        name: format!("{namespace}/{name}"),
        message: e.to_string(),
    })?;
    CurrentPatch::from_document(document, format!("{namespace}/{name}"))
}

/// Patches `current` to `next` (see the module documentation); returns the stored object.
pub async fn apply(
    client: &Client,
    current: &CurrentPatch,
    next: &NextVersion,
) -> Result<AdapterPatch> {
    let (namespace, name) = (current.namespace(), current.name());
    let body = current.merge_patch(next)?;
    let api: Api<AdapterPatch> = Api::namespaced(client.clone(), &namespace);
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    api.patch(&name, &params, &Patch::Merge(&body))
        .await
        .map_err(|e| kube_error(&namespace, &name, &e))
}
