//! The short soak: tests/soak/run.sh for 3 minutes with two chaos events
//! (kill -9 of the leader, the OAuth2 endpoint down for a third of a token's
//! lifetime), 50 credentials of every source kind, two replicas. It starts
//! its own control plane (it restarts parts of it in the long run), so it is
//! skipped with `USE_EXISTING_CLUSTER=true`.

use std::process::Command;

use super::support::repo_root;

#[test]
fn three_minutes_of_chaos_leave_no_expired_moment() {
    if std::env::var("USE_EXISTING_CLUSTER").as_deref() == Ok("true") {
        eprintln!("SKIPPED: USE_EXISTING_CLUSTER=true: the soak runs (and kills) a control plane of its own");
        return;
    }
    let out = Command::new(repo_root().join("tests/soak/run.sh"))
        .args(["--minutes", "3", "--chaos", "short", "--credentials", "50"])
        .env("REGCRED_BIN", env!("CARGO_BIN_EXE_regcred"))
        .output()
        .expect("running tests/soak/run.sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no report ({e}); stderr:\n{stderr}"));
    eprintln!("soak report: {report}");
    assert_eq!(report["credentials"], 50);
    assert_eq!(report["expired_moments"], 0, "{report}");
    assert_eq!(report["secrets_lost"], 0, "{report}");
    assert_eq!(report["inactive_tokens_at_first_sight"], 0, "{report}");
    // The sampler sees an expired moment at a read, or between two reads (a
    // new credential issued after the previous one's not-after): exact while
    // no two reads are a lifetime apart (30 s, the shortest), so no version
    // comes and goes unseen. A slow read on a loaded machine (a 10 s one in
    // a CI run) costs nothing; a count of samples would depend on its speed.
    assert!(report["samples"].as_u64().unwrap() >= 36, "the sampler barely ran: {report}");
    assert!(report["longest_sample_gap_s"].as_f64().unwrap() <= 20.0, "the sampler left a gap: {report}");
    let chaos = report["chaos"].as_array().unwrap();
    assert_eq!(chaos.len(), 2, "{report}");
    assert!(chaos[0]["took_s"].as_f64().is_some(), "no new leader after kill -9: {report}");
    assert!(out.status.success(), "tests/soak/run.sh failed:\n{stderr}");
}
