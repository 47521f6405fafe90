//! The README's "run it locally" command stays true: deploy/local/up.sh
//! starts a control plane, a token endpoint and the operator, and the
//! example credential rotates twice.

use std::process::Command;

use crate::support::repo_root;

#[test]
fn run_locally_command_rotates_the_example() {
    let out = Command::new(repo_root().join("deploy/local/up.sh"))
        .arg("--check")
        .env("REGCRED_BIN", env!("CARGO_BIN_EXE_regcred"))
        .output()
        .expect("running deploy/local/up.sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "deploy/local/up.sh --check failed:\n{stderr}");
    assert_eq!(stderr.matches("minted a token valid until").count(), 3, "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("example") && stdout.contains("True"), "{stdout}");
}
