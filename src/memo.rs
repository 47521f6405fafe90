//! What regcred remembers of its own writes, so a reconcile can trust the
//! watch caches instead of reading the API server.
//!
//! The rule it keeps: a reconcile never decides from a view older than
//! regcred's own last write (a stale view once caused a double mint). After
//! each status write regcred remembers the resourceVersion the API server
//! returned; a cached credential at that version or newer is safe to use; an
//! older one means the watch event of that write is still on its way, and
//! the reconcile it triggers takes over (nothing is read). After each Secret write it remembers the
//! Secret's resourceVersion and what it holds (not its data); while the
//! Secret watch has seen no other version since, the Secret is still exactly
//! what regcred wrote. Credentials first seen in a watch's initial list
//! (another replica may have written them a moment earlier) are read afresh
//! once.
//!
//! resourceVersions are compared as numbers (etcd revisions, as the API
//! server hands them out); one that does not parse means "read afresh".

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use chrono::{DateTime, Utc};

use crate::schedule::SecretState;

type Key = (String, String);

fn key(ns: &str, name: &str) -> Key {
    (ns.to_string(), name.to_string())
}

/// Compare two resourceVersions; None when either is not a number.
pub fn compare(a: &str, b: &str) -> Option<Ordering> {
    Some(a.parse::<u64>().ok()?.cmp(&b.parse::<u64>().ok()?))
}

/// The newest version of each Secret a watch has seen.
#[derive(Default)]
pub struct Versions {
    inner: Mutex<HashMap<Key, Seen>>,
    /// The watch has listed everything once (so an absence means "none").
    synced: std::sync::atomic::AtomicBool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    At(String),
    Deleted,
}

impl Versions {
    /// Record a version, keeping the newer one (a read may have been newer
    /// than an event still in flight).
    pub fn observe(&self, ns: &str, name: &str, rv: &str) {
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let k = key(ns, name);
        let newer = match m.get(&k) {
            Some(Seen::At(old)) => compare(rv, old) != Some(Ordering::Less),
            _ => true,
        };
        if newer {
            m.insert(k, Seen::At(rv.to_string()));
        }
    }

    pub fn deleted(&self, ns: &str, name: &str) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).insert(key(ns, name), Seen::Deleted);
    }

    pub fn forget(&self, ns: &str, name: &str) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).remove(&key(ns, name));
    }

    pub fn get(&self, ns: &str, name: &str) -> Option<Seen> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).get(&key(ns, name)).cloned()
    }

    pub fn contains(&self, ns: &str, name: &str) -> bool {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).contains_key(&key(ns, name))
    }

    pub fn set_synced(&self, synced: bool) {
        self.synced.store(synced, std::sync::atomic::Ordering::SeqCst);
    }

    /// Since the watch listed everything, has it never seen this Secret?
    pub fn never_seen(&self, ns: &str, name: &str) -> bool {
        self.synced.load(std::sync::atomic::Ordering::SeqCst) && !self.contains(ns, name)
    }

    pub fn clear(&self) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

}

/// What a reconcile does with the cached credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cached {
    /// Up to date with our own writes: use it.
    Use,
    /// Older than our own last write: its watch event is coming; wait for it.
    AwaitOwnWrite,
    /// Unknown (from the initial list, or versions that do not compare): read it.
    Read,
}

/// What regcred wrote, per credential.
#[derive(Default)]
pub struct Memo {
    inner: Mutex<HashMap<Key, Written>>,
    /// Credentials from a watch's initial list not yet read afresh.
    listed: Mutex<HashSet<Key>>,
}

#[derive(Default, Clone)]
struct Written {
    credential_rv: Option<String>,
    secret: Option<(String, String, SecretState)>,
}

impl Memo {
    pub fn listed(&self, ns: &str, name: &str) {
        let k = key(ns, name);
        if !self.inner.lock().unwrap_or_else(|p| p.into_inner()).contains_key(&k) {
            self.listed.lock().unwrap_or_else(|p| p.into_inner()).insert(k);
        }
    }

    /// What to do with the cached credential at `cached_rv`.
    pub fn cached(&self, ns: &str, name: &str, cached_rv: Option<&str>) -> Cached {
        let k = key(ns, name);
        let written = self.inner.lock().unwrap_or_else(|p| p.into_inner()).get(&k).and_then(|w| w.credential_rv.clone());
        match (written, cached_rv) {
            (Some(ours), Some(cached)) => match compare(cached, &ours) {
                Some(Ordering::Equal | Ordering::Greater) => Cached::Use,
                // Our own write is on its way through the watch, and its
                // event brings this credential back: nothing to read.
                Some(Ordering::Less) => Cached::AwaitOwnWrite,
                None => Cached::Read,
            },
            (Some(_), None) => Cached::Read,
            (None, _) if self.listed.lock().unwrap_or_else(|p| p.into_inner()).contains(&k) => Cached::Read,
            (None, _) => Cached::Use,
        }
    }

#[cfg(test)]
    fn cache_usable(&self, ns: &str, name: &str, cached_rv: Option<&str>) -> bool {
        self.cached(ns, name, cached_rv) == Cached::Use
    }

    /// The credential was read afresh.
    pub fn read(&self, ns: &str, name: &str) {
        self.listed.lock().unwrap_or_else(|p| p.into_inner()).remove(&key(ns, name));
    }

    /// Our status write came back at `rv`.
    pub fn status_written(&self, ns: &str, name: &str, rv: Option<String>) {
        if let Some(rv) = rv {
            self.inner.lock().unwrap_or_else(|p| p.into_inner()).entry(key(ns, name)).or_default().credential_rv = Some(rv);
        }
    }

    /// Our Secret write came back at `rv`, holding `state`.
    pub fn secret_written(&self, ns: &str, name: &str, secret: &str, rv: Option<String>, state: SecretState) {
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let w = m.entry(key(ns, name)).or_default();
        w.secret = rv.map(|rv| (secret.to_string(), rv, state));
    }

    /// What we thought of the credential's Secret was wrong: read it next time.
    pub fn forget_secret(&self, ns: &str, name: &str) {
        if let Some(w) = self.inner.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&key(ns, name)) {
            w.secret = None;
        }
    }

    /// The Secret as regcred last wrote it — its resourceVersion and state —
    /// when the watch (`seen`) has seen nothing newer since.
    pub fn secret(&self, ns: &str, name: &str, secret: &str, seen: Option<Seen>) -> Option<(String, SecretState)> {
        let m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (s, rv, state) = m.get(&key(ns, name))?.secret.clone()?;
        if s != secret {
            return None;
        }
        match seen {
            // Not seen yet: the watch lags our write.
            None => Some((rv, state)),
            Some(Seen::At(v)) => match compare(&v, &rv)? {
                Ordering::Less | Ordering::Equal => Some((rv, state)),
                Ordering::Greater => None,
            },
            Some(Seen::Deleted) => None,
        }
    }

    pub fn forget(&self, ns: &str, name: &str) {
        let k = key(ns, name);
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).remove(&k);
        self.listed.lock().unwrap_or_else(|p| p.into_inner()).remove(&k);
    }

    pub fn clear_secrets(&self) {
        for w in self.inner.lock().unwrap_or_else(|p| p.into_inner()).values_mut() {
            w.secret = None;
        }
    }
}

/// When each credential last asked its source for a credential, kept in
/// memory whatever came of it: the least interval between mints holds for
/// attempts whose outcome never reaches status (a write that lost a race to
/// a change of the Secret, a reconcile cut short). A failure status records
/// is at least as late as its attempt, so from then on the backoff paces
/// the retries (see [`crate::schedule::decide`]).
#[derive(Default)]
pub struct Attempts {
    inner: Mutex<HashMap<Key, DateTime<Utc>>>,
}

impl Attempts {
    /// A credential (namespace "" for a cluster-scoped one) asks its source now.
    pub fn started(&self, ns: &str, name: &str, at: DateTime<Utc>) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).insert(key(ns, name), at);
    }

    /// When it last asked, if this process saw it ask.
    pub fn last(&self, ns: &str, name: &str) -> Option<DateTime<Utc>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).get(&key(ns, name)).copied()
    }

    /// The credential is gone.
    pub fn forget(&self, ns: &str, name: &str) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).remove(&key(ns, name));
    }
}

/// For the brake on restarting Pods stuck pulling ([`crate::remediate`]):
/// when the Pods of each top-level owner (namespace, UID) were last
/// evicted (a bare Pod: told). Entries older than the interval are dropped
/// as new ones come, so it holds only owners restarted within the interval.
#[derive(Default)]
pub struct Restarts(Mutex<HashMap<(String, String), DateTime<Utc>>>);

impl Restarts {
    pub fn last(&self, ns: &str, owner: &str) -> Option<DateTime<Utc>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).get(&(ns.to_string(), owner.to_string())).copied()
    }

    pub fn evicted(&self, ns: &str, owner: &str, now: DateTime<Utc>, interval: chrono::Duration) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.retain(|_, t| now.signed_duration_since(*t) < interval);
        m.insert((ns.to_string(), owner.to_string()), now);
    }
}

/// Credentials (by UID) whose keys at a registry this process has swept
/// once ([`crate::keys`]): the sweep on start. Only makes regcred do less
/// (a restarted process sweeps again).
#[derive(Default)]
pub struct Swept(Mutex<HashSet<String>>);

impl Swept {
    pub fn contains(&self, uid: &str) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).contains(uid)
    }

    pub fn done(&self, uid: &str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(uid.to_string());
    }

    pub fn forget(&self, uid: &str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_remember_owners_within_the_interval_only() {
        let r = Restarts::default();
        let t0: DateTime<Utc> = "2026-12-03T12:00:00Z".parse().unwrap();
        let ten = chrono::Duration::minutes(10);
        r.evicted("ns", "deploy", t0, ten);
        assert_eq!(r.last("ns", "deploy"), Some(t0));
        assert_eq!(r.last("other", "deploy"), None, "per namespace");
        r.evicted("ns", "sts", t0 + chrono::Duration::minutes(11), ten);
        assert_eq!(r.last("ns", "deploy"), None, "dropped after the interval");
        assert!(r.last("ns", "sts").is_some());
    }
    use crate::schedule::OurSecret;

    fn ours() -> SecretState {
        SecretState::Ours(OurSecret { intact: true, inputs: Some("g1".into()), not_after: None, renewal_time: None })
    }

    #[test]
    fn a_cached_credential_older_than_our_write_is_read_afresh() {
        let m = Memo::default();
        // Created after the watch started: the cache is all there is.
        assert!(m.cache_usable("ns", "new", Some("5")));
        // From the initial list: read once, then trusted.
        m.listed("ns", "old");
        assert!(!m.cache_usable("ns", "old", Some("5")));
        m.read("ns", "old");
        assert!(m.cache_usable("ns", "old", Some("5")));
        // After our status write at 10: 9 is stale, 10 and 11 are not.
        m.status_written("ns", "new", Some("10".into()));
        assert!(!m.cache_usable("ns", "new", Some("9")));
        assert_eq!(m.cached("ns", "new", Some("9")), Cached::AwaitOwnWrite);
        assert!(m.cache_usable("ns", "new", Some("10")));
        assert!(m.cache_usable("ns", "new", Some("11")));
        // Not numbers: read afresh.
        m.status_written("ns", "new", Some("abc".into()));
        assert!(!m.cache_usable("ns", "new", Some("12")));
        assert_eq!(m.cached("ns", "new", Some("12")), Cached::Read);
    }

    #[test]
    fn our_secret_is_trusted_until_the_watch_sees_another_version() {
        let m = Memo::default();
        assert!(m.secret("ns", "c", "pull", None).is_none(), "nothing written yet");
        m.secret_written("ns", "c", "pull", Some("20".into()), ours());
        assert_eq!(m.secret("ns", "c", "pull", None).map(|s| s.0), Some("20".into()), "the watch lags our write");
        assert!(m.secret("ns", "c", "pull", Some(Seen::At("19".into()))).is_some());
        assert!(m.secret("ns", "c", "pull", Some(Seen::At("20".into()))).is_some());
        assert!(m.secret("ns", "c", "pull", Some(Seen::At("21".into()))).is_none(), "edited by someone");
        assert!(m.secret("ns", "c", "pull", Some(Seen::Deleted)).is_none(), "deleted");
        assert!(m.secret("ns", "c", "other", None).is_none(), "secretName changed");
        m.forget("ns", "c");
        assert!(m.secret("ns", "c", "pull", None).is_none());
    }

    #[test]
    fn versions_keep_the_newest() {
        let v = Versions::default();
        v.observe("ns", "s", "7");
        v.observe("ns", "s", "5");
        assert_eq!(v.get("ns", "s"), Some(Seen::At("7".into())));
        v.observe("ns", "s", "9");
        assert_eq!(v.get("ns", "s"), Some(Seen::At("9".into())));
        v.deleted("ns", "s");
        assert_eq!(v.get("ns", "s"), Some(Seen::Deleted));
        v.observe("ns", "s", "12");
        assert_eq!(v.get("ns", "s"), Some(Seen::At("12".into())), "created again");
    }

    #[test]
    fn attempts_are_remembered_per_kind_until_forgotten() {
        let a = Attempts::default();
        let t = crate::schedule::test_instant(0);
        assert_eq!(a.last("ns", "c"), None);
        a.started("ns", "c", t);
        a.started("", "c", t + chrono::Duration::seconds(5));
        assert_eq!(a.last("ns", "c"), Some(t));
        assert_eq!(a.last("", "c"), Some(t + chrono::Duration::seconds(5)), "the two kinds are apart");
        a.started("ns", "c", t + chrono::Duration::seconds(9));
        assert_eq!(a.last("ns", "c"), Some(t + chrono::Duration::seconds(9)), "the latest counts");
        a.forget("ns", "c");
        assert_eq!(a.last("ns", "c"), None);
    }
}
