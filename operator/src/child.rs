//! The metadata of every object a controller creates for its parent: name and namespace, the
//! controller owner reference (garbage collection, `Owns` watches), labels, and the parent
//! generation it was built from (`switchboard.dev/parent-generation`).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use switchboard_crds::annotations;

/// The metadata of `parent`'s child `name` in `namespace`, with `labels` and `extra`
/// annotations beside the parent generation.
pub fn child_meta<K: Resource<DynamicType = ()>>(
    parent: &K,
    name: String,
    namespace: &str,
    labels: BTreeMap<String, String>,
    extra: BTreeMap<String, String>,
) -> ObjectMeta {
    let mut ann = BTreeMap::from([(
        annotations::PARENT_GENERATION.to_owned(),
        parent.meta().generation.unwrap_or_default().to_string(),
    )]);
    ann.extend(extra);
    ObjectMeta {
        name: Some(name),
        namespace: Some(namespace.to_owned()),
        labels: Some(labels),
        annotations: Some(ann),
        owner_references: Some(parent.controller_owner_ref(&()).into_iter().collect()),
        ..ObjectMeta::default()
    }
}
