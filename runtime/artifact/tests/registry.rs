//! `oci://` artifacts against a real registry (the CNCF distribution registry on loopback,
//! `hack/setup.sh tools`): both ORAS layouts pushed and pulled back byte for byte, basic auth,
//! and manifests that are not PEFT artifacts refused with the reference named.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use switchboard_artifact::oci::{Layout, OciClient, OciError, Reference, RegistryAuth};
use switchboard_artifact::{CONFIG_FILE, WEIGHTS_FILE, weights_digest};
use switchboard_testkit::registry::{Registry, TEST_PASSWORD, TEST_USER};

fn peft_dir(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(CONFIG_FILE), br#"{"peft_type": "LORA", "r": 4}"#).unwrap();
    // Big enough that a truncated or mixed-up blob would show.
    let weights: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
    std::fs::write(dir.join(WEIGHTS_FILE), weights).unwrap();
}

fn reference(registry: &Registry, path: &str) -> Reference {
    format!("{}/{path}", registry.host()).parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_layouts_round_trip_through_a_registry() {
    let tmp = tempfile::tempdir().unwrap();
    let registry = Registry::start(&tmp.path().join("registry")).unwrap();
    let src = tmp.path().join("pricing-1.3.0");
    peft_dir(&src);
    let client = OciClient::default();
    for (tag, layout) in [("files", Layout::Files), ("targz", Layout::TarGz)] {
        let r = reference(&registry, &format!("adapters/pricing:{tag}"));
        client
            .push_peft(&r, &RegistryAuth::Anonymous, &src, layout)
            .await
            .unwrap();
        let dest = tmp.path().join(format!("pulled-{tag}"));
        std::fs::create_dir_all(&dest).unwrap();
        let pulled = client
            .pull_peft(&r, &RegistryAuth::Anonymous, &dest)
            .await
            .unwrap();
        assert_eq!(pulled.layout, layout);
        assert!(pulled.manifest_digest.starts_with("sha256:"));
        for file in [CONFIG_FILE, WEIGHTS_FILE] {
            assert_eq!(
                std::fs::read(dest.join(file)).unwrap(),
                std::fs::read(src.join(file)).unwrap(),
                "{tag}: {file}"
            );
        }
        // Only the two files: no layer archive left behind.
        assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 2, "{tag}");
        // The artifact's digest is the weights', whatever the layout.
        assert_eq!(
            weights_digest(&dest).unwrap(),
            weights_digest(&src).unwrap()
        );

        // Pulling by the manifest digest works as by tag.
        let by_digest: Reference = format!(
            "{}/adapters/pricing@{}",
            registry.host(),
            pulled.manifest_digest
        )
        .parse()
        .unwrap();
        let dest = tmp.path().join(format!("by-digest-{tag}"));
        std::fs::create_dir_all(&dest).unwrap();
        client
            .pull_peft(&by_digest, &RegistryAuth::Anonymous, &dest)
            .await
            .unwrap();
        assert!(dest.join(WEIGHTS_FILE).is_file());
    }

    // An unknown tag: the registry's refusal names the reference.
    let missing = reference(&registry, "adapters/pricing:9.9.9");
    let dest = tmp.path().join("missing");
    std::fs::create_dir_all(&dest).unwrap();
    let err = client
        .pull_peft(&missing, &RegistryAuth::Anonymous, &dest)
        .await
        .unwrap_err();
    assert!(matches!(err, OciError::Registry { .. }), "{err}");
    assert!(err.to_string().contains(&missing.whole()), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_registries_need_the_credentials() {
    let tmp = tempfile::tempdir().unwrap();
    let registry = Registry::start_with_basic_auth(&tmp.path().join("registry")).unwrap();
    let src = tmp.path().join("adapter");
    peft_dir(&src);
    let client = OciClient::default();
    let r = reference(&registry, "private/billing:2.0.0");
    let basic = RegistryAuth::Basic(TEST_USER.into(), TEST_PASSWORD.into());
    let anonymous_push = client
        .push_peft(&r, &RegistryAuth::Anonymous, &src, Layout::Files)
        .await;
    assert!(anonymous_push.is_err(), "an anonymous push is refused");
    client
        .push_peft(&r, &basic, &src, Layout::Files)
        .await
        .unwrap();

    let dest = tmp.path().join("anonymous");
    std::fs::create_dir_all(&dest).unwrap();
    let err = client
        .pull_peft(&r, &RegistryAuth::Anonymous, &dest)
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&r.whole()), "{err}");
    let wrong = RegistryAuth::Basic(TEST_USER.into(), "wrong".into());
    assert!(client.pull_peft(&r, &wrong, &dest).await.is_err());

    let dest = tmp.path().join("authorised");
    std::fs::create_dir_all(&dest).unwrap();
    client.pull_peft(&r, &basic, &dest).await.unwrap();
    assert_eq!(
        weights_digest(&dest).unwrap(),
        weights_digest(&src).unwrap()
    );
}
