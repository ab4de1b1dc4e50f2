//! Helpers shared by the runtime's integration tests (each test file includes this module).
#![allow(dead_code)] // not every test file uses every helper

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `switchboard-runtime` binary under test, run from the workspace root with the cached
/// MiniLM encoder, two threads and quiet logs.
pub fn runtime_cmd() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard-runtime"));
    cmd.current_dir(root())
        .env(
            "SWITCHBOARD_ENCODER",
            root().join(".cache/models/all-MiniLM-L6-v2"),
        )
        .env("SWITCHBOARD_THREADS", "2")
        .env("RUST_LOG", "warn");
    cmd
}
