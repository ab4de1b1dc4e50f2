//! Writing a Router's children: the ConfigMap, the runtime Deployment, its two Services and its
//! NetworkPolicy (server-side apply, built by [`super::build`]), and the interaction-token key
//! Secret (created once, rotated in steps).

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::api::{apps::v1::Deployment, core::v1::Secret, networking::v1::NetworkPolicy};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, PostParams},
};
use switchboard_crds::{Router, runtime_config::RuntimeConfig};

use super::build::{ConfigVolumes, RouterChildren};
use crate::context::{Context, apply};
use crate::error::{Error, Result};
use crate::names::token_secret_name;

/// Applies the ConfigMap holding `config`, the runtime Deployment, the Services and the
/// NetworkPolicy (or deletes the NetworkPolicy the Router turned off); returns the Deployment
/// as the API server holds it.
pub async fn children(
    client: &Client,
    children: &RouterChildren<'_>,
    config: &RuntimeConfig,
) -> Result<Deployment> {
    let namespace = children.namespace;
    let config_map = children
        .config_map(config)
        .map_err(|source| Error::Serialize {
            what: "RuntimeConfig",
            source,
        })?;
    apply(client, namespace, &config_map).await?;
    let kb_name = &children.router.spec.knowledge_base_ref.name;
    let deployment = apply(
        client,
        namespace,
        &children.deployment(kb_name, &ConfigVolumes::of(config)),
    )
    .await?;
    apply(client, namespace, &children.service()).await?;
    apply(client, namespace, &children.admin_service()).await?;
    match children.network_policy() {
        Some(policy) => {
            apply(client, namespace, &policy).await?;
        }
        None => remove_network_policy(client, namespace, children.name).await?,
    }
    Ok(deployment)
}

/// Deletes the runtime pods' NetworkPolicy of a Router that turned `spec.access.networkPolicy`
/// off (absent already: nothing to do).
async fn remove_network_policy(client: &Client, namespace: &str, router: &str) -> Result<()> {
    let api: Api<NetworkPolicy> = Api::namespaced(client.clone(), namespace);
    let name = crate::names::runtime_name(router);
    match api.delete(&name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(Error::Kube {
            verb: "delete",
            object: format!("NetworkPolicy {namespace}/{name}"),
            source: Box::new(e),
        }),
    }
}

/// The interaction-token key of a Router's runtime pods: created once with 32 random bytes, then
/// rotated only on request, in the steps of [`super::token_key`] (rewriting it at once would invalidate
/// every token in flight). Returns when to look again while a rotation runs.
pub async fn token_secret(
    ctx: &Context,
    router: &Router,
    namespace: &str,
    name: &str,
) -> Result<Option<Duration>> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let secret_name = token_secret_name(name);
    let requested = router
        .annotations()
        .get(super::token_key::ROTATE_ANNOTATION)
        .map(String::as_str);
    let key_error = |e: std::io::Error| Error::Serialize {
        what: "token key",
        source: serde_json::Error::io(e),
    };
    let Some(existing) = api
        .get_opt(&secret_name)
        .await
        .map_err(|e| Error::secret("get", namespace, &secret_name, e))?
    else {
        let mut state =
            super::token_key::KeyState::new(random_hex(32).map_err(key_error)?, requested);
        state.admin_token = Some(random_hex(32).map_err(key_error)?);
        state.unit_key = Some(random_hex(32).map_err(key_error)?);
        let mut annotations = BTreeMap::new();
        state.annotate(&mut annotations);
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(secret_name.clone()),
                namespace: Some(namespace.to_owned()),
                labels: Some(crate::names::labels(name)),
                annotations: Some(annotations),
                owner_references: Some(router.controller_owner_ref(&()).into_iter().collect()),
                ..ObjectMeta::default()
            },
            data: Some(state.data()),
            type_: Some("Opaque".to_owned()),
            ..Secret::default()
        };
        return match api.create(&PostParams::default(), &secret).await {
            Ok(_) => Ok(None),
            // Another writer won the race: its key stands.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(None),
            Err(e) => Err(Error::secret("create", namespace, &secret_name, e)),
        };
    };
    let mut current = super::token_key::KeyState::read(&existing);
    // A Secret written before the admin API (or unit pseudonyms) existed gets its token (key)
    // now.
    let add_admin_token = current.admin_token.is_none() || current.unit_key.is_none();
    if current.admin_token.is_none() {
        current.admin_token = Some(random_hex(32).map_err(key_error)?);
    }
    if current.unit_key.is_none() {
        current.unit_key = Some(random_hex(32).map_err(key_error)?);
    }
    let mut fresh_key = None;
    let mut new_key = || match random_hex(32) {
        Ok(k) => k,
        Err(e) => {
            fresh_key = Some(e);
            String::new()
        }
    };
    let step = super::token_key::plan(&current, requested, ctx.now(), &mut new_key);
    if let Some(e) = fresh_key {
        return Err(key_error(e));
    }
    let (next, event) = match step.write {
        Some((next, reason, note)) => (next, Some((reason, note))),
        None if add_admin_token => (current, None),
        None => return Ok(step.requeue),
    };
    // Replaced at the version read (a concurrent writer makes this a 409: retried with backoff);
    // the chart's admission policy lets the operator update only Secrets a Router controls.
    let mut secret = existing;
    next.annotate(
        secret
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new),
    );
    secret.data = Some(next.data());
    secret.string_data = None;
    api.replace(&secret_name, &PostParams::default(), &secret)
        .await
        .map_err(|e| Error::secret("update", namespace, &secret_name, e))?;
    if let Some((reason, note)) = event {
        ctx.event(
            router,
            kube::runtime::events::EventType::Normal,
            reason,
            "RotateTokenKey",
            note,
        )
        .await;
    }
    Ok(step.requeue)
}

fn random_hex(bytes: usize) -> std::io::Result<String> {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}
