//! The life of the keys a `rotate` source creates at a registry, written so
//! a crash at any step loses no key and leaks none:
//!
//! 1. before the vendor is asked, status records the new key's name
//!    (`pending`; never its secret);
//! 2. the shared attempt creates it, verifies it at the registry, writes it
//!    to the Secret in place (same UID; the Secret's annotation names the
//!    key's id), and revokes it at once if it cannot be used;
//! 3. status names the new key; the key it replaced retires and is revoked
//!    once its grace has passed (the time is in status, so a restart keeps
//!    it);
//! 4. a sweep lists the vendor's keys with this credential's name prefix and
//!    revokes every one that neither the Secret nor a retiring entry holds:
//!    on the first pass of each process (a crash between create and swap)
//!    and whenever a pending mark is left.
//!
//! What status says is brought in line with the Secret first: a crash after
//! the write and before the status write leaves a Secret whose key status
//! does not know; the key status named retires then.

use chrono::{DateTime, Duration, Utc};
use crate::events::Type as EventType;
use tracing::{info, warn};

use crate::api::{CredentialSource, KeyStatus, RetiringKey};
use crate::attempt::{self, Minter};
use crate::context::Context;
use crate::metrics::RevocationLabels;
use crate::report::Subject;
use crate::status::reason::REVOCATION_FAILED;
use crate::source::rotate::{self, Vendor};
use crate::source::{KeyRef, SourceError};

/// Event reasons (failures: `status::reason::REVOCATION_FAILED`).
pub const KEY_CREATED: &str = "KeyCreated";
pub const KEY_REVOKED: &str = "KeyRevoked";
/// At most this many replaced keys wait for their grace; past it the
/// oldest is revoked at once (rotations faster than the grace).
const MAX_RETIRING: usize = 8;
/// At most this many keys are revoked by one sweep; the rest wait for the
/// next pass (a vendor listing thousands of keys with the prefix cannot
/// hold a reconcile for long).
const MAX_SWEPT_PER_PASS: usize = 16;
/// A failed revocation is tried again after this long.
const RETRY: Duration = Duration::minutes(1);
/// The longest one call to the vendor may take here.
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Before a mint: the name of the key it will create, recorded as pending.
pub fn pending(prev: Option<&KeyStatus>, uid: &str, now: DateTime<Utc>) -> (String, KeyStatus) {
    let name = rotate::key_name(uid, now);
    let mut st = prev.cloned().unwrap_or_default();
    st.pending = Some(name.clone());
    (name, st)
}

/// After a rotation: `key` is in the Secret; the key it replaced (`replaced`:
/// its id, as the Secret named it before the write, else as status did)
/// retires with `grace`. The pending mark is cleared.
pub fn rotated(prev: Option<&KeyStatus>, key: &KeyRef, expires_at: Option<DateTime<Utc>>, replaced: Option<String>, grace: Duration, now: DateTime<Utc>) -> KeyStatus {
    let prev = prev.cloned().unwrap_or_default();
    let mut st = KeyStatus { id: Some(key.id.clone()), name: Some(key.name.clone()), expires_at, pending: None, retiring: prev.retiring };
    if let Some(old) = replaced.or(prev.id.clone()).filter(|old| *old != key.id) {
        // Status knows the name only of the key it named.
        let name = if prev.id.as_ref() == Some(&old) { prev.name } else { None };
        retire(&mut st, RetiringKey { id: old, name, revoke_at: crate::schedule::add(now, grace) }, now);
    }
    st
}

/// After a rotation that wrote a key (both the status and the Event):
/// the key status, and when the key it replaced is due for revocation.
pub async fn after_rotation(ctx: &Context, s: &Subject, source: &CredentialSource, prev: Option<&KeyStatus>, minted: &crate::source::Minted, replaced: Option<String>, now: DateTime<Utc>) -> Option<(KeyStatus, Option<DateTime<Utc>>)> {
    let (spec, key) = (source.rotate.as_ref()?, minted.key.as_ref()?);
    let st = rotated(prev, key, minted.expires_at, replaced, rotate::grace(spec), now);
    let until = minted.expires_at.map(|t| format!(", valid until {}", t.to_rfc3339())).unwrap_or_default();
    s.event(ctx, EventType::Normal, KEY_CREATED, format!("Created key {} at {}{until}", key.name, rotate::vendor_name(spec))).await;
    let next = next_revocation(Some(&st));
    Some((st, next))
}

fn retire(st: &mut KeyStatus, key: RetiringKey, now: DateTime<Utc>) {
    if st.retiring.iter().any(|r| r.id == key.id) {
        return;
    }
    st.retiring.push(key);
    st.retiring.sort_by_key(|r| r.revoke_at);
    let over = st.retiring.len().saturating_sub(MAX_RETIRING);
    for r in st.retiring.iter_mut().take(over) {
        r.revoke_at = r.revoke_at.min(now);
    }
}

/// Status in line with the Secret: when the Secret holds a key status does
/// not name (the process stopped between the write and the status write),
/// that key is current and the one status named retires.
pub fn in_line(prev: Option<&KeyStatus>, secret_key: Option<&str>, grace: Duration, now: DateTime<Utc>) -> Option<KeyStatus> {
    let Some(k) = secret_key else { return prev.cloned() };
    let st = prev.cloned().unwrap_or_default();
    if st.id.as_deref() == Some(k) {
        return Some(st);
    }
    let name = st.pending.clone();
    let mut next = KeyStatus { id: Some(k.to_string()), name, expires_at: None, pending: st.pending.clone(), retiring: st.retiring.clone() };
    if let Some(old) = st.id {
        retire(&mut next, RetiringKey { id: old, name: st.name, revoke_at: crate::schedule::add(now, grace) }, now);
    }
    Some(next)
}

/// The keys listed at the vendor that nothing holds: not the Secret's, not
/// retiring.
pub fn orphans(listed: Vec<KeyRef>, st: Option<&KeyStatus>, secret_key: Option<&str>) -> Vec<KeyRef> {
    let keep = |id: &str| secret_key == Some(id) || st.is_some_and(|s| s.id.as_deref() == Some(id) || s.retiring.iter().any(|r| r.id == id));
    listed.into_iter().filter(|k| !keep(&k.id)).collect()
}

/// What the tending of keys found.
pub struct Tended {
    pub status: Option<KeyStatus>,
    /// When the next replaced key is due for revocation.
    pub next: Option<DateTime<Utc>>,
}

/// Each pass of a credential with a `rotate` source, before it decides:
/// status in line with the Secret, the sweep when due, replaced keys past
/// their grace revoked. Failures are reported (Event, log, metric) and
/// retried; they never stop the reconcile.
pub async fn tend(ctx: &Context, s: &Subject, who: &Minter<'_>, source: &CredentialSource, uid: &str, prev: Option<&KeyStatus>, secret_key: Option<&str>) -> Tended {
    let Some(spec) = &source.rotate else { return Tended { status: prev.cloned(), next: None } };
    let now = (ctx.now)();
    let mut st = in_line(prev, secret_key, rotate::grace(spec), now);
    let sweep = !ctx.swept.contains(uid) || st.as_ref().is_some_and(|k| k.pending.is_some());
    let due = st.as_ref().is_some_and(|k| k.retiring.iter().any(|r| r.revoke_at <= now));
    if !(sweep || due) {
        return Tended { next: next_revocation(st.as_ref()), status: st };
    }
    let vendor = match connect(ctx, who, source).await {
        Ok(v) => v,
        Err(e) => {
            warn!(namespace = %s.labels.namespace, name = %s.labels.name, error = %e, "reaching the registry's API to tend keys failed");
            return Tended { next: Some(crate::schedule::add(now, RETRY)), status: st };
        }
    };
    let mut partial = false;
    if sweep {
        let found = tokio::time::timeout(CALL_TIMEOUT, vendor.list(&rotate::key_prefix(uid))).await;
        match found {
            Ok(Ok(listed)) => {
                let found = orphans(listed, st.as_ref(), secret_key);
                partial = found.len() > MAX_SWEPT_PER_PASS;
                let mut all = !partial;
                for key in found.into_iter().take(MAX_SWEPT_PER_PASS) {
                    let why = format!("Revoked key {} at {}: no Secret uses it (left by an interrupted rotation)", key.name, rotate::vendor_name(spec));
                    all &= revoke(ctx, s, &vendor, &key.id, why).await;
                }
                if all {
                    ctx.swept.done(uid);
                    if let Some(k) = st.as_mut() {
                        k.pending = None;
                    }
                }
            }
            Ok(Err(e)) => warn!(namespace = %s.labels.namespace, name = %s.labels.name, error = %e, "listing keys at the registry failed; the sweep is tried again"),
            Err(_) => warn!(namespace = %s.labels.namespace, name = %s.labels.name, "listing keys at the registry timed out; the sweep is tried again"),
        }
    }
    if let Some(k) = st.as_mut() {
        let mut kept = Vec::new();
        for r in std::mem::take(&mut k.retiring) {
            // Never the key the Secret holds, whatever status says.
            if secret_key == Some(r.id.as_str()) || k.id.as_deref() == Some(r.id.as_str()) {
                continue;
            }
            if r.revoke_at > now {
                kept.push(r);
                continue;
            }
            let label = r.name.clone().unwrap_or_else(|| r.id.clone());
            let why = format!("Revoked replaced key {label} at {} after its grace", rotate::vendor_name(spec));
            if !revoke(ctx, s, &vendor, &r.id, why).await {
                kept.push(RetiringKey { revoke_at: crate::schedule::add(now, RETRY), ..r });
            }
        }
        k.retiring = kept;
    }
    // A sweep cut at its cap goes on at once; a failed one after a while.
    let again = if partial { Duration::seconds(1) } else { RETRY };
    let unswept = (sweep && !ctx.swept.contains(uid)).then(|| crate::schedule::add(now, again));
    let next = match (next_revocation(st.as_ref()), unswept) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    Tended { status: st, next }
}

fn next_revocation(st: Option<&KeyStatus>) -> Option<DateTime<Utc>> {
    st?.retiring.iter().map(|r| r.revoke_at).min()
}

async fn connect(ctx: &Context, who: &Minter<'_>, source: &CredentialSource) -> Result<Vendor, SourceError> {
    let spec = source.rotate.as_ref().ok_or_else(|| SourceError::InvalidSpec { field: "spec.source.rotate", problem: "is not set".into() })?;
    let cx = attempt::source_context_for(ctx, who, source)?;
    tokio::time::timeout(CALL_TIMEOUT, Vendor::connect(spec, &cx))
        .await
        .map_err(|_| SourceError::Deadline("the registry's API did not answer within 15s".into()))?
}

/// Revoke one key; reported by Event and metric. `true` when it is gone.
async fn revoke(ctx: &Context, s: &Subject, vendor: &Vendor, id: &str, why: String) -> bool {
    let l = &s.labels;
    let result = tokio::time::timeout(CALL_TIMEOUT, vendor.revoke(id)).await.unwrap_or_else(|_| Err(SourceError::Deadline("the registry's API did not answer within 15s".into())));
    let (ok, label) = match result {
        Ok(()) => {
            info!(namespace = %l.namespace, name = %l.name, key = %id, "{why}");
            s.event(ctx, EventType::Normal, KEY_REVOKED, why).await;
            (true, "revoked")
        }
        Err(e) => {
            warn!(namespace = %l.namespace, name = %l.name, key = %id, error = %e, "revoking a key failed");
            s.event(ctx, EventType::Warning, REVOCATION_FAILED, format!("Revoking key {id} failed: {e}; retrying")).await;
            (false, "failed")
        }
    };
    ctx.metrics.revocations.get_or_create(&RevocationLabels { namespace: l.namespace.clone(), name: l.name.clone(), result: label.into() }).inc();
    ok
}

/// On deletion: revoke every key of this credential at the vendor (listed
/// by its name prefix, plus what status names), once; deletion is not held
/// up by a failure (the keys expire).
pub async fn on_delete(ctx: &Context, s: &Subject, who: &Minter<'_>, source: &CredentialSource, uid: &str, st: Option<&KeyStatus>) {
    let Some(spec) = &source.rotate else { return };
    let vendor = match connect(ctx, who, source).await {
        Ok(v) => v,
        Err(e) => {
            warn!(namespace = %s.labels.namespace, name = %s.labels.name, error = %e, "revoking keys on deletion failed");
            return;
        }
    };
    let mut ids: Vec<String> = st.into_iter().flat_map(|k| k.id.iter().cloned().chain(k.retiring.iter().map(|r| r.id.clone()))).collect();
    if let Ok(Ok(listed)) = tokio::time::timeout(CALL_TIMEOUT, vendor.list(&rotate::key_prefix(uid))).await {
        ids.extend(listed.into_iter().map(|k| k.id));
    }
    ids.sort();
    ids.dedup();
    for id in ids {
        revoke(ctx, s, &vendor, &id, format!("Revoked key {id} at {}: the credential was deleted", rotate::vendor_name(spec))).await;
    }
    ctx.swept.forget(uid);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::test_instant as t;

    fn key(id: &str) -> KeyRef {
        KeyRef { id: id.into(), name: format!("regcred-x-{id}") }
    }

    #[test]
    fn a_rotation_retires_the_replaced_key_after_its_grace() {
        let (name, pend) = pending(None, "abc", t(0));
        assert_eq!(pend.pending.as_deref(), Some(name.as_str()));
        let first = rotated(Some(&pend), &key("1"), Some(t(1000)), None, Duration::seconds(60), t(0));
        assert_eq!((first.id.as_deref(), first.pending.as_deref(), first.retiring.len()), (Some("1"), None, 0));
        let second = rotated(Some(&first), &key("2"), Some(t(2000)), Some("1".into()), Duration::seconds(60), t(100));
        assert_eq!(second.id.as_deref(), Some("2"));
        assert_eq!(second.retiring, vec![RetiringKey { id: "1".into(), name: Some("regcred-x-1".into()), revoke_at: t(160) }]);
        assert_eq!(next_revocation(Some(&second)), Some(t(160)));
    }

    #[test]
    fn status_follows_the_secret_after_a_crash_between_write_and_status() {
        let st = KeyStatus { id: Some("1".into()), name: Some("k1".into()), pending: Some("k2".into()), ..Default::default() };
        let fixed = in_line(Some(&st), Some("2"), Duration::seconds(30), t(50)).unwrap();
        assert_eq!((fixed.id.as_deref(), fixed.name.as_deref()), (Some("2"), Some("k2")));
        assert_eq!(fixed.retiring, vec![RetiringKey { id: "1".into(), name: Some("k1".into()), revoke_at: t(80) }]);
        // in line already: unchanged
        assert_eq!(in_line(Some(&st), Some("1"), Duration::seconds(30), t(50)), Some(st.clone()));
        assert_eq!(in_line(Some(&st), None, Duration::seconds(30), t(50)), Some(st));
    }

    #[test]
    fn the_sweep_keeps_what_the_secret_and_the_grace_hold() {
        let st = KeyStatus { id: Some("2".into()), retiring: vec![RetiringKey { id: "1".into(), name: None, revoke_at: t(9) }], ..Default::default() };
        let listed = vec![key("1"), key("2"), key("3"), key("4")];
        let gone: Vec<String> = orphans(listed.clone(), Some(&st), Some("2")).into_iter().map(|k| k.id).collect();
        assert_eq!(gone, vec!["3", "4"]);
        // the Secret's key is kept even when status does not know it yet
        let gone: Vec<String> = orphans(listed, None, Some("4")).into_iter().map(|k| k.id).collect();
        assert_eq!(gone, vec!["1", "2", "3"]);
    }

    #[test]
    fn retiring_keys_are_capped() {
        let mut st = KeyStatus::default();
        for i in 0..(MAX_RETIRING + 3) {
            st = rotated(Some(&st), &key(&i.to_string()), None, None, Duration::hours(1), t(i as i64));
        }
        // 11 replaced keys: the 3 oldest are due at once, 8 wait.
        let now = t((MAX_RETIRING + 2) as i64);
        assert_eq!(st.retiring.len(), MAX_RETIRING + 2);
        assert_eq!(st.retiring.iter().filter(|r| r.revoke_at > now).count(), MAX_RETIRING);
    }
}
