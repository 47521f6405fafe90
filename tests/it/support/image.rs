//! The operator's container image, built by deploy/image/build.py from the
//! release binary.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{repo_root, run_ok};

/// The release binary (tests/run.sh builds it, as CI and the Dockerfile do).
pub fn release_binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("target"));
    let bin = target.join("release/regcred");
    assert!(bin.is_file(), "{} is missing: cargo build --release --locked --bin regcred (tests/run.sh does)", bin.display());
    bin
}

/// deploy/image/build.py: the image's digest. `epoch` is its
/// SOURCE_DATE_EPOCH (the files' times and the config's `created`).
pub fn build_image(binary: &Path, name: &str, out: &Path, archive: Option<&Path>, epoch: u64) -> String {
    let mut cmd = Command::new("python3");
    cmd.arg(repo_root().join("deploy/image/build.py")).arg("--binary").arg(binary).args(["--name", name]);
    cmd.env("SOURCE_DATE_EPOCH", epoch.to_string());
    if let Some(a) = archive {
        cmd.arg("--archive").arg(a);
    }
    cmd.arg(out);
    run_ok(cmd).trim().to_string()
}
