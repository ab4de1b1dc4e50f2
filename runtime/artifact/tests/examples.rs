//! Every artifact URI in the example manifests is one the operator and the runtime can read:
//! a scheme they fetch, a well-formed OCI reference or claim path.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use switchboard_artifact::ArtifactUri;

#[test]
fn example_artifact_uris_are_usable() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(&examples).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let doc: serde_json::Value = serde::Deserialize::deserialize(doc).unwrap();
            if doc["kind"] != "AdapterPatch" {
                continue;
            }
            let uri = doc["spec"]["artifact"]["uri"].as_str().unwrap();
            match ArtifactUri::parse(uri) {
                Ok(ArtifactUri::Oci(reference)) => {
                    assert!(
                        reference.tag().is_some() || reference.digest().is_some(),
                        "{uri}"
                    );
                }
                Ok(ArtifactUri::Pvc { path, .. }) => assert!(!path.is_empty(), "{uri}"),
                Ok(_) => {}
                Err(e) => panic!("{}: {e}", path.display()),
            }
            seen.push(uri.to_owned());
        }
    }
    // adapterpatch.yaml (oci://) and scenario.yaml's two (pvc://).
    assert!(seen.iter().any(|u| u.starts_with("oci://")), "{seen:?}");
    assert!(
        seen.iter().filter(|u| u.starts_with("pvc://")).count() >= 2,
        "{seen:?}"
    );
}
