//! The workspace's binaries, as `cargo build --workspace --bins` left them.
//!
//! The end-to-end tests run the real binaries of other crates, which cargo does not build for
//! this crate's tests: CI (`scripts/test.sh`) builds them before `cargo test`.

use std::path::{Path, PathBuf};

/// The workspace root (the parent of this crate).
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent directory")
        .to_path_buf()
}

/// `CARGO_TARGET_DIR` (relative to the workspace when relative), else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_dir().join(dir)
            }
        }
        _ => workspace_dir().join("target"),
    }
}

/// The built binary `name` in the `debug` profile. Panics with what to run when it is missing.
pub fn bin(name: &str) -> PathBuf {
    let path = target_dir().join("debug").join(name);
    if !path.is_file() {
        panic!(
            "{} does not exist: run `cargo build --workspace --bins` first \
             (the end-to-end tests use the workspace's real binaries)",
            path.display()
        );
    }
    path
}

/// `pedm-ca`, the CA.
pub fn pedm_ca() -> PathBuf {
    bin("pedm-ca")
}

/// `pedm-ssh`, the engineer's CLI.
pub fn pedm_ssh() -> PathBuf {
    bin("pedm-ssh")
}

/// `pedm-host-config`, the host installer.
pub fn pedm_host_config() -> PathBuf {
    bin("pedm-host-config")
}
