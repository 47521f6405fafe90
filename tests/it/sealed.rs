//! The suite is sealed: its network namespace has only the loopback and the
//! test addresses, and from a namespace with nothing on it, dials to the
//! addresses in-cluster clients, cloud SDKs and proxies would use fail at
//! once, as does DNS of a name /etc/hosts lacks. (The killed-run half of the
//! seal is tests/seal/killed-run.sh, which tests/run.sh runs after this
//! binary: it needs the node, which this process holds until it exits.)

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::Value;

use crate::support::*;

/// Outside targets: the `kubernetes` Service address, cloud metadata, and a
/// public address.
const TARGETS: [&str; 3] = ["10.96.0.1:443", "169.254.169.254:80", "1.1.1.1:443"];

fn probe(prefix: &[&str]) -> Value {
    let script = repo_root().join("tests/seal/probe.py");
    let out = Command::new(prefix[0]).args(&prefix[1..]).arg("python3").arg(&script).args(TARGETS).output().expect("running the probe");
    assert!(out.status.success(), "probe: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("the probe prints JSON")
}

fn assert_unreachable(result: &Value, from: &str) {
    for t in TARGETS {
        let r = &result["dial"][t];
        assert_eq!(r["errno"], "ENETUNREACH", "{from}: a dial to {t} did not fail with 'Network is unreachable' within 1 s: {r}");
    }
    let dns = &result["dns"]["example.invalid"];
    assert_eq!(dns["ok"], false, "{from}: example.invalid resolved: {dns}");
    assert_ne!(dns["errno"], "TIMEOUT", "{from}: DNS of example.invalid did not fail within 1 s: {dns}");
}

#[test]
fn the_suite_runs_sealed() {
    if unsealed_by_choice() {
        eprintln!("SKIPPED: USE_EXISTING_CLUSTER=true runs the suite unsealed");
        return;
    }
    assert!(sealed(), "the tests run sealed: start them with tests/run.sh (REGCRED_SEALED is not 1)");
    let links = Command::new("ip").args(["-o", "link", "show"]).output().unwrap();
    let links: Vec<String> = String::from_utf8_lossy(&links.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1).map(|n| n.split('@').next().unwrap_or(n).to_string()))
        .collect();
    assert_eq!(links, vec!["lo".to_string()], "the suite's namespace has an interface besides the loopback");
    let addrs = Command::new("ip").args(["-o", "-4", "addr", "show", "dev", "lo"]).output().unwrap();
    let addrs: BTreeSet<String> = String::from_utf8_lossy(&addrs.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3).map(str::to_string))
        .collect();
    let want: BTreeSet<String> = ["127.0.0.1/8", "198.51.100.1/32", "169.254.169.254/32", "10.96.0.1/32"].into_iter().map(String::from).collect();
    assert_eq!(addrs, want, "the loopback holds the test addresses and nothing else");
    // From the suite itself, only its own test hosts answer: a public address is unreachable.
    let r = probe(&["env"]);
    assert_eq!(r["dial"]["1.1.1.1:443"]["errno"], "ENETUNREACH", "{r}");
    assert_ne!(r["dns"]["example.invalid"]["errno"], "TIMEOUT", "{r}");
    assert_eq!(r["dns"]["example.invalid"]["ok"], false, "{r}");
}

#[test]
fn a_fresh_namespace_reaches_nothing_outside() {
    if unsealed_by_choice() {
        eprintln!("SKIPPED: USE_EXISTING_CLUSTER=true runs the suite unsealed (and maybe not as root)");
        return;
    }
    // A namespace of the test's own, with no address at all besides a loopback.
    let r = probe(&["unshare", "--net", "--"]);
    assert_unreachable(&r, "a new network namespace");
}
