//! Writes the CRD YAML (crds/yaml/, charts/switchboard/crds/) and docs/api-reference.md from the
//! types.
//!
//! `crdgen` writes the files under the repository root; `crdgen --check` only compares and exits
//! non-zero when a file is out of date; `crdgen --print` writes all CRDs to stdout as one
//! multi-document YAML (for `kubectl apply -f -`).

use std::{path::PathBuf, process::ExitCode};

fn main() -> ExitCode {
    let mode = std::env::args().nth(1);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let files = match switchboard_crds::generated_files() {
        Ok(files) => files,
        Err(err) => {
            eprintln!("crdgen: cannot serialise the CRDs: {err}");
            return ExitCode::FAILURE;
        }
    };
    match mode.as_deref() {
        None => {
            for file in &files {
                let path = root.join(&file.path);
                let write = path
                    .parent()
                    .map_or(Ok(()), std::fs::create_dir_all)
                    .and_then(|()| std::fs::write(&path, &file.content));
                if let Err(err) = write {
                    eprintln!("crdgen: cannot write {}: {err}", path.display());
                    return ExitCode::FAILURE;
                }
                println!("wrote {}", file.path);
            }
            ExitCode::SUCCESS
        }
        Some("--check") => {
            let stale: Vec<_> = files
                .iter()
                .filter(|f| {
                    std::fs::read_to_string(root.join(&f.path)).ok().as_deref() != Some(&f.content)
                })
                .collect();
            for file in &stale {
                eprintln!("crdgen: {} is out of date", file.path);
            }
            if stale.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Some("--print") => {
            for file in files.iter().filter(|f| f.path.starts_with("crds/yaml/")) {
                println!("---\n{}", file.content.trim_end());
            }
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("usage: crdgen [--check | --print] (unknown argument {other:?})");
            ExitCode::FAILURE
        }
    }
}
