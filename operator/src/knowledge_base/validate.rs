//! What a KnowledgeBase must satisfy before a build starts: its spec's rules, and the inputs
//! its sources read beyond the spec (ConfigMaps with their keys, claims) existing.

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, Client};
use switchboard_crds::{KnowledgeBase, Validate, knowledge_base::SourceKind};

use super::build::{SourceInputs, config_map_digest};
use crate::context::describe;
use crate::error::{Error, Result};

/// The spec's rules (the same as the CRD's CEL rules, for objects admitted before them).
pub fn spec(kb: &KnowledgeBase) -> Result<()> {
    kb.spec.validate().map_err(|source| Error::InvalidSpec {
        object: describe(kb),
        source,
    })
}

/// Reads what a build reads beyond the spec: the content digest of each ConfigMap source, and
/// checks that each claim of a volume source exists (a build pod waiting for a missing volume
/// would never finish). A missing one is [`Error::ReferenceNotFound`].
pub async fn source_inputs(
    client: &Client,
    namespace: &str,
    kb: &KnowledgeBase,
) -> Result<SourceInputs> {
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let missing = |kind: &'static str, name: String| Error::ReferenceNotFound {
        object: describe(kb),
        kind,
        name,
    };
    let mut inputs = SourceInputs::new();
    for source in &kb.spec.sources {
        match source.kind() {
            Some(SourceKind::ConfigMap(reference)) => {
                let name = &reference.name;
                let config_map = config_maps
                    .get_opt(name)
                    .await
                    .map_err(|e| Error::kube("get", format!("ConfigMap {namespace}/{name}"), e))?
                    .ok_or_else(|| missing("ConfigMap", name.clone()))?;
                let digest =
                    config_map_digest(&config_map, reference.key.as_deref()).ok_or_else(|| {
                        missing(
                            "ConfigMap key",
                            format!("{name}/{}", reference.key.as_deref().unwrap_or_default()),
                        )
                    })?;
                inputs.insert(source.name.clone(), digest);
            }
            Some(SourceKind::Volume(volume)) => {
                if let Some(claim) = &volume.claim_name
                    && !crate::context::claim_exists(client, namespace, claim).await?
                {
                    return Err(missing("PersistentVolumeClaim", claim.clone()));
                }
            }
            _ => {}
        }
    }
    Ok(inputs)
}
