//! Where the trained adapter goes, and its digest.
//!
//! The adapter is written as a PEFT directory to a location the runtime can load from:
//! `pvc://<claim>/<path>` (written at `<pvc-root>/<claim>/<path>`, where a training Job mounts
//! the claim; the operator verifies it with a Job and the Router mounts the claim read-only),
//! `file:///abs/dir`, or a plain directory (named `file://<absolute path>` in the manifest).
//! The directory is written next to its final place under a temporary name, loaded back against
//! the base model (the check the runtime makes), and renamed into place: a failed run never
//! leaves a half-written artifact. An existing artifact is never overwritten unless asked: an
//! AdapterPatch version names its artifact for the whole rollback window.
//!
//! The digest is [`switchboard_artifact::weights_digest`], the one definition the operator and
//! the runtime verify against.
use std::path::{Path, PathBuf};

use switchboard_artifact::ArtifactUri;
use switchboard_model::llama::LlamaModel;
use switchboard_model::lora::LoraAdapter;

use crate::error::{Result, TrainError};

/// The training report's file name inside the artifact directory.
pub const REPORT_FILE: &str = "training_report.json";

/// A written adapter artifact.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Artifact {
    /// The directory on this machine.
    pub dir: PathBuf,
    /// The URI an AdapterPatch names it by.
    pub uri: String,
    /// `sha256:<hex>` of `adapter_model.safetensors`.
    pub sha256: String,
}

/// Resolves an output location to (directory here, URI for the AdapterPatch).
pub fn resolve(output: &str, pvc_root: &Path) -> Result<(PathBuf, String)> {
    let err = |message: String| TrainError::Output {
        target: output.to_owned(),
        message,
    };
    if output.contains("://") {
        match ArtifactUri::parse(output).map_err(|e| err(e.message))? {
            ArtifactUri::Pvc { claim, path } => {
                if path.is_empty() {
                    return Err(err(
                        "name a directory inside the claim (pvc://<claim>/<path>)".to_owned(),
                    ));
                }
                let dir = switchboard_artifact::pvc_path(pvc_root, &claim, &path);
                Ok((dir, format!("pvc://{claim}/{path}")))
            }
            ArtifactUri::File(dir) => Ok((dir.clone(), format!("file://{}", dir.display()))),
            other => Err(err(format!(
                "{}:// is not a place to write to: write to a directory or pvc://, publish it (e.g. `oras push`) and pass --artifact-uri",
                other.scheme()
            ))),
        }
    } else {
        let dir = std::path::absolute(output).map_err(|e| err(e.to_string()))?;
        Ok((dir.clone(), format!("file://{}", dir.display())))
    }
}

/// Refuses a `dir` that already holds files unless `overwrite`: an AdapterPatch version names
/// its artifact for the whole rollback window. Checked before training (so a taken location
/// fails at once) and again when writing.
pub fn check_free(dir: &Path, uri: &str, overwrite: bool) -> Result<()> {
    let occupied = std::fs::read_dir(dir)
        .map(|mut entries| entries.next().is_some())
        .unwrap_or(false);
    if occupied && !overwrite {
        return Err(TrainError::Output {
            target: uri.to_owned(),
            message: format!(
                "{} already holds files: an artifact is immutable once an AdapterPatch names it (write each version to its own path, e.g. .../{{version}}, or pass --overwrite)",
                dir.display()
            ),
        });
    }
    Ok(())
}

/// Writes `adapter` as a PEFT directory at `dir` (see the module documentation), checks that it
/// loads against `model`, and returns it with its digest.
pub fn write(
    adapter: &LoraAdapter,
    model: &LlamaModel,
    dir: &Path,
    uri: &str,
    overwrite: bool,
) -> Result<Artifact> {
    let err = |message: String| TrainError::Output {
        target: uri.to_owned(),
        message,
    };
    check_free(dir, uri, overwrite)?;
    let name = dir
        .file_name()
        .ok_or_else(|| err(format!("{} names no directory", dir.display())))?;
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(TrainError::io(parent))?;
    let staging = parent.join(format!(
        ".{}.partial-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(TrainError::io(&staging))?;
    }
    let result = (|| -> Result<String> {
        adapter.save_peft(&staging)?;
        // The runtime's own check: the directory loads against this base model.
        LoraAdapter::load(adapter.id(), &staging, model)?;
        switchboard_artifact::weights_digest(&staging).map_err(TrainError::io(&staging))
    })();
    let hex = match result {
        Ok(hex) => hex,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(TrainError::io(dir))?;
    }
    std::fs::rename(&staging, dir).map_err(TrainError::io(dir))?;
    Ok(Artifact {
        dir: dir.to_path_buf(),
        uri: uri.to_owned(),
        sha256: format!("sha256:{hex}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_resolve_to_a_directory_and_a_uri() {
        let root = Path::new("/var/run/switchboard/pvc");
        assert_eq!(
            resolve("pvc://adapters//pricing/./1.4.0", root).unwrap(),
            (
                PathBuf::from("/var/run/switchboard/pvc/adapters/pricing/1.4.0"),
                "pvc://adapters/pricing/1.4.0".to_owned()
            )
        );
        assert_eq!(
            resolve("file:///srv/a", root).unwrap(),
            (PathBuf::from("/srv/a"), "file:///srv/a".to_owned())
        );
        let (dir, uri) = resolve("out/a", root).unwrap();
        assert!(dir.is_absolute() && uri == format!("file://{}", dir.display()));
        for bad in [
            "pvc://adapters/../x",
            "pvc://adapters",
            "oci://r.example/a:1",
            "file://rel",
        ] {
            let e = resolve(bad, root).unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }
}
