//! Fair slots (src/slots.rs): a token server that hangs holds only its own
//! slots (for either kind), and due renewals are served before a burst of
//! new credentials that arrived earlier. Token servers are
//! tests/peers/hostile.py on two loopback addresses (two origins).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams};
use kube::Client;
use serde_json::{json, Value};

use crate::support::*;

fn token_body(prefix: &str, expires_in: u64) -> String {
    format!(r#"{{"token":"{prefix}-{{n}}","expires_in":{expires_in}}}"#)
}

/// An `http` source at `url` whose Secret carries the label `slots-test=group`.
fn spec(url: &str, group: &str, extra: Value) -> Value {
    let mut s = json!({
        "source": {"http": {"url": url, "allowInsecureHTTP": true, "registries": ["registry.example.com"], "timeout": "60s"}},
        "secretTemplate": {"labels": {"slots-test": group}},
    });
    s.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    s
}

/// Wait until the hanging endpoint has been asked 4 times (its origin's
/// share); on a timeout, say what the operator was doing.
async fn hanging_asked(hanging: &Hostile, operator: &Operator) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let asked = hanging.counts().await.get("hang").copied().unwrap_or(0);
        if asked >= 4 {
            return;
        }
        if Instant::now() > deadline {
            let logs = operator.logs();
            let tail: Vec<&str> = logs.lines().rev().take(80).collect::<Vec<_>>().into_iter().rev().collect();
            panic!("the hanging endpoint was asked {asked} times in 30 s; the operator's last log lines:\n{}", tail.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_hanging_token_server_cannot_starve_its_namespace() {
    let (client, ns) = setup("origin").await;
    let hanging = Hostile::start("127.0.0.1", None).await;
    let healthy = Hostile::start("127.0.0.2", None).await;
    let operator = Operator::start(&ns.name);
    for i in 0..33 {
        create_credential(&client, &ns.name, &format!("hang-{i:02}"), spec(&hanging.url("hang", "hang", &[]), "hang", json!({}))).await;
    }
    // The hanging credentials have taken what they may.
    hanging_asked(&hanging, &operator).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // A healthy credential of the same namespace, on another origin, after them.
    let url = healthy.url("healthy", "body", &[("b", &token_body("healthy", 20))]);
    let created = Instant::now();
    create_credential(&client, &ns.name, "healthy", spec(&url, "healthy", json!({"renewBeforePercentage": 50}))).await;
    wait_ready(&client, &ns.name, "healthy", "True", Some("Rotated"), Duration::from_secs(5)).await;
    eprintln!("the healthy credential was Ready {:?} after it was created", created.elapsed());

    // It stays renewed (20 s tokens, renewed at half) while the others hang.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let mut tokens = std::collections::BTreeSet::new();
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(30) {
        let s = secrets.get("healthy").await.unwrap();
        assert!(Utc::now() < annotation_time(&s, "regcred.dev/not-after"), "the healthy credential expired");
        tokens.insert(password_in(&s, "registry.example.com"));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(tokens.len() >= 3, "not renewed while the other origin hangs: {tokens:?}");
    // The hanging origin held half the namespace's 8 slots, no more: its
    // answers never come within the minute, so it was asked exactly 4 times.
    let asked = hanging.counts().await.get("hang").copied().unwrap_or(0);
    assert_eq!(asked, 4, "the hanging origin was asked {asked} times in its first minute");
}

/// One grant of the queue's record (the operator's `slot granted` lines).
#[derive(Debug)]
struct Grant {
    seq: u64,
    order: u64,
    work: String,
}

fn record(logs: &str, namespace: &str) -> Vec<Grant> {
    let mut out = Vec::new();
    for line in logs.lines().filter(|l| l.contains("slot granted")) {
        let fields: HashMap<&str, &str> = line.split_whitespace().filter_map(|w| w.split_once('=')).collect();
        if fields.get("namespace") != Some(&namespace) {
            continue;
        }
        let num = |k: &str| fields[k].parse::<u64>().unwrap_or_else(|_| panic!("{k} in {line}"));
        out.push(Grant { seq: num("seq"), order: num("order"), work: fields["work"].to_string() });
    }
    out.sort_by_key(|g| g.order);
    out
}

/// What the sampler saw of the running credentials' Secrets.
#[derive(Default)]
struct Seen {
    polls: u64,
    expired: Vec<String>,
    /// (issued-at, not-after) last seen per Secret.
    last: BTreeMap<String, (chrono::DateTime<Utc>, chrono::DateTime<Utc>)>,
    rotations: u64,
    longest_gap: Duration,
}

async fn sample(secrets: Api<Secret>, seen: Arc<Mutex<Seen>>, stop: Arc<std::sync::atomic::AtomicBool>) {
    let mut previous = Instant::now();
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let list = secrets.list(&ListParams::default().labels("slots-test=running")).await.unwrap();
        let now = Utc::now();
        {
            let mut s = seen.lock().unwrap();
            s.polls += 1;
            s.longest_gap = s.longest_gap.max(previous.elapsed());
            previous = Instant::now();
            for secret in &list.items {
                let name = secret.metadata.name.clone().unwrap();
                let (issued, not_after) = (annotation_time(secret, "regcred.dev/issued-at"), annotation_time(secret, "regcred.dev/not-after"));
                if now >= not_after {
                    s.expired.push(format!("{name} expired at {not_after}, seen at {now}"));
                }
                match s.last.get(&name).copied() {
                    // A new credential issued after the one before expired: an
                    // expired moment between two reads.
                    Some((was_issued, was_not_after)) if issued != was_issued => {
                        s.rotations += 1;
                        if issued > was_not_after {
                            s.expired.push(format!("{name}: the credential of {was_issued} expired at {was_not_after}, the next was issued at {issued}"));
                        }
                    }
                    _ => {}
                }
                s.last.insert(name, (issued, not_after));
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn count(secrets: &Api<Secret>, group: &str) -> usize {
    secrets.list_metadata(&ListParams::default().labels(&format!("slots-test={group}"))).await.map(|l| l.items.len()).unwrap_or(0)
}

async fn create_all(client: &Client, ns: &str, names: Vec<String>, spec: Value) {
    futures::stream::iter(names)
        .for_each_concurrent(32, |name| {
            let spec = spec.clone();
            async move { create_credential(client, ns, &name, spec).await }
        })
        .await;
}

#[tokio::test]
async fn due_renewals_go_before_a_burst_of_new_credentials() {
    const RUNNING: usize = 100;
    const NEW: usize = 2000;
    let (client, ns) = setup("burst").await;
    // Every token takes 100 ms: the namespace's 4 slots for this origin
    // serve 40 a second, so the burst queues for about 50 s (even when a
    // loaded machine creates it slowly), longer than the running
    // credentials' 20 s tokens live.
    let tokens = Hostile::start("127.0.0.1", None).await;
    let operator = Operator::start(&ns.name);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);

    let running = tokens.url("running", "slow", &[("ms", "100"), ("b", &token_body("running", 20))]);
    create_all(&client, &ns.name, (0..RUNNING).map(|i| format!("run-{i:03}")).collect(), spec(&running, "running", json!({"renewBeforePercentage": 50}))).await;
    wait_for(Duration::from_secs(120), "the running credentials' Secrets", || async { (count(&secrets, "running").await == RUNNING).then_some(()) }).await;

    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = tokio::spawn(sample(secrets.clone(), seen.clone(), stop.clone()));
    let started = Instant::now();
    let new = tokens.url("new", "slow", &[("ms", "100"), ("b", &token_body("new", 3600))]);
    create_all(&client, &ns.name, (0..NEW).map(|i| format!("new-{i:04}")).collect(), spec(&new, "new", json!({}))).await;
    let created = started.elapsed();
    wait_for(Duration::from_secs(600), "every new credential's Secret", || async { (count(&secrets, "new").await == NEW).then_some(()) }).await;
    let all_ready = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    sampler.await.unwrap();

    let s = seen.lock().unwrap();
    eprintln!(
        "{NEW} created in {created:?}, all written after {all_ready:?}; {} polls (longest gap {:?}), {} renewals seen",
        s.polls, s.longest_gap, s.rotations
    );
    assert!(s.expired.is_empty(), "{} expired moments of running credentials during the burst, e.g. {:?}", s.expired.len(), &s.expired[..s.expired.len().min(5)]);
    // Reads less than a lifetime apart see every expired moment (above).
    assert!(s.longest_gap < Duration::from_secs(15), "the sampler left a gap of {:?}", s.longest_gap);
    assert!(s.rotations >= RUNNING as u64, "the running credentials barely renewed during the burst: {}", s.rotations);

    // The queue's own record: one namespace, one origin, so one line of
    // work. No renewal or repair is served after a first mint or retry that
    // was queued after it, and no first mint after a later retry.
    let grants = record(&operator.logs(), &ns.name);
    let rank = |w: &str| match w {
        "renewal" | "repair" => 0,
        "first_mint" => 1,
        "retry" => 2,
        other => panic!("unknown work {other}"),
    };
    let mut latest_below: [Option<u64>; 3] = [None; 3];
    let (mut renewals, mut overtook) = (0, 0);
    for g in &grants {
        let r = rank(&g.work);
        for lower in (r + 1)..3 {
            if let Some(seq) = latest_below[lower] {
                assert!(g.seq > seq, "{g:?} was served after a {} queued later (seq {seq})", ["renewal", "first_mint", "retry"][lower]);
            }
        }
        latest_below[r] = latest_below[r].max(Some(g.seq));
        if r == 0 {
            renewals += 1;
        }
    }
    // ...and the order was tested: renewals overtook first mints queued before them.
    for g in grants.iter().filter(|g| rank(&g.work) == 0) {
        if grants.iter().any(|f| f.work == "first_mint" && f.seq < g.seq && f.order > g.order) {
            overtook += 1;
        }
    }
    eprintln!("record: {} grants, {renewals} renewals or repairs, {overtook} of them served before first mints queued earlier", grants.len());
    assert!(grants.len() >= RUNNING + NEW, "the record has {} grants", grants.len());
    assert!(overtook >= RUNNING / 4, "only {overtook} renewals overtook the burst: the queue was never contended");
}

#[tokio::test]
async fn a_hanging_token_server_cannot_starve_the_cluster_credentials() {
    use crate::fleet::{create_cluster_credential, fleet_operator, labelled_namespace, unique, wait_synced, Namespaces};
    let client = control_plane().client().await;
    install_crd(&client).await;
    let home = namespace(&client, "slots-home").await;
    let suite = format!("slots-fleet-{}", std::process::id());
    let label = format!("slots-{}", std::process::id());
    let hanging = Hostile::start("127.0.0.1", None).await;
    let healthy = Hostile::start("127.0.0.2", None).await;
    let operator = fleet_operator(&home.name, &suite, &[], &[]);
    let mut made = Namespaces(Vec::new());
    labelled_namespace(&client, "slots-target", json!({"regcred-test.dev/slots": label}), &mut made).await;
    let target = json!({"namespaceSelector": {"matchLabels": {"regcred-test.dev/slots": label}}});
    let http = |url: String| json!({"url": url, "allowInsecureHTTP": true, "registries": ["registry.example.com"], "timeout": "60s"});
    // More hanging cluster credentials than the fleet controller used to run at once (8).
    for i in 0..12 {
        let spec = json!({"source": {"http": http(hanging.url("hang", "hang", &[]))}, "target": target, "secretName": format!("hang-{i}")});
        create_cluster_credential(&client, &unique(&format!("slots-hang-{i:02}")), &suite, spec).await.unwrap();
    }
    hanging_asked(&hanging, &operator).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let name = unique("slots-healthy");
    let spec = json!({"source": {"http": http(healthy.url("healthy", "body", &[("b", &token_body("fleet", 300))]))}, "target": target, "secretName": "healthy"});
    let created = Instant::now();
    create_cluster_credential(&client, &name, &suite, spec).await.unwrap();
    wait_synced(&client, &name, 1, 0, Duration::from_secs(5)).await;
    eprintln!("the healthy cluster credential was Ready {:?} after it was created", created.elapsed());
    // Cluster credentials share one "namespace" of slots: the hanging origin got half of it.
    let asked = hanging.counts().await.get("hang").copied().unwrap_or(0);
    assert_eq!(asked, 4, "the hanging origin was asked {asked} times in its first minute");
}
