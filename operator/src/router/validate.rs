//! What a Router must satisfy before its children are touched: its spec's rules, and the
//! Secrets it names (usable by the operator, holding their keys).

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use switchboard_crds::{Router, SecretKeyRef, Validate};

use crate::context::{Context, describe};
use crate::error::{Error, Result};

/// The spec's rules (the same as the CRD's CEL rules, for objects admitted before them).
pub fn spec(router: &Router) -> Result<()> {
    router.spec.validate().map_err(|source| Error::InvalidSpec {
        object: describe(router),
        source,
    })
}

/// Why a Secret key the Router names is unusable, if it is: the Secret or its key does not
/// exist. `field` names the spec field, `consequence` what happens meanwhile. A Secret its owner
/// has not labelled `switchboard.dev/usable: "true"` is an error: the Router's children are not
/// touched while it names one.
async fn secret_key_problem(
    ctx: &Context,
    router: &Router,
    namespace: &str,
    secret_ref: &SecretKeyRef,
    field: &'static str,
    consequence: &str,
) -> Result<Option<String>> {
    let name = &secret_ref.name;
    let secret = Api::<Secret>::namespaced(ctx.client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(|e| Error::secret("get", namespace, name, e))?;
    let has_key = |s: &Secret| {
        s.data
            .as_ref()
            .is_some_and(|d| d.contains_key(&secret_ref.key))
            || s.string_data
                .as_ref()
                .is_some_and(|d| d.contains_key(&secret_ref.key))
    };
    Ok(match secret {
        None => Some(format!(
            "Secret {name} ({field}) does not exist: {consequence}"
        )),
        Some(s) if !switchboard_crds::common::secret_usable(s.metadata.labels.as_ref()) => {
            return Err(Error::SecretNotUsable {
                object: describe(router),
                field,
                namespace: namespace.to_owned(),
                name: name.clone(),
            });
        }
        Some(s) if !has_key(&s) => Some(format!(
            "Secret {name} has no key {} ({field}): {consequence}",
            secret_ref.key
        )),
        Some(_) => None,
    })
}

/// Problems with the Secrets the Router names: the large model endpoint's API key (the Router
/// still serves: the Secret volume is optional and the endpoint is called without a key), the
/// outcome store's PostgreSQL URL and the client tokens (new runtime pods cannot start without
/// them; the running ones serve on).
pub async fn secret_problems(
    ctx: &Context,
    router: &Router,
    namespace: &str,
) -> Result<Vec<String>> {
    let spec = &router.spec;
    let named = [
        (
            spec.large_model
                .endpoint
                .as_ref()
                .and_then(|e| e.secret_ref.as_ref()),
            "spec.largeModel.endpoint.secretRef",
            "the large model endpoint is called without an API key until it does",
        ),
        (
            spec.outcome_store.postgres.as_ref(),
            "spec.outcomeStore.postgres",
            "new runtime pods cannot start (they would not share the feedback replay guard); \
             the running ones keep serving",
        ),
        (
            spec.access.client_tokens.as_ref(),
            "spec.access.clientTokens",
            "new runtime pods cannot start (they would serve the public API without its \
             tokens); the running ones keep serving",
        ),
    ];
    let mut problems = Vec::new();
    for (secret_ref, field, consequence) in named {
        if let Some(secret_ref) = secret_ref {
            problems.extend(
                secret_key_problem(ctx, router, namespace, secret_ref, field, consequence).await?,
            );
        }
    }
    Ok(problems)
}
