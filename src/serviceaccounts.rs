//! Adding the pull Secret to ServiceAccounts' `imagePullSecrets`, and taking
//! exactly that entry away again.
//!
//! The list is atomic in the Kubernetes API (no merge key): server-side apply
//! or a strategic merge patch would replace it whole. So every change is a
//! read-modify-write: GET, edit the list in place (other entries and their
//! order kept, never a duplicate), PUT with the resourceVersion read, under
//! field manager `regcred`. A conflict is retried by the next reconcile.
//!
//! Each entry regcred added is recorded in an annotation with the UID of the
//! credential that owns it (`secret=uid`). A credential removes only its own
//! entries and never takes one another credential owns: two credentials
//! naming one Secret in one namespace leave the entry with its first owner
//! and report a clash instead of fighting. An entry recorded by name only
//! (before owners were recorded) is claimed by a credential that wants it
//! and removed by none: an upgrade removes no entry. A hand-added entry of
//! the same name is never claimed or removed.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{LocalObjectReference, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::Client;

use crate::api::{ServiceAccountSelection, FIELD_MANAGER, SA_ENTRIES_ANNOTATION};

/// One entry recorded in the annotation: the Secret's name and the UID of
/// the credential that owns it (`None`: recorded before owners were).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    pub secret: String,
    pub owner: Option<String>,
}

/// The entries regcred added to this ServiceAccount's `imagePullSecrets`.
pub fn added_by_us(sa: &ServiceAccount) -> Vec<Recorded> {
    sa.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(SA_ENTRIES_ANNOTATION))
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|e| match e.split_once('=') {
                    Some((secret, owner)) => Recorded { secret: secret.to_string(), owner: Some(owner.to_string()).filter(|o| !o.is_empty()) },
                    None => Recorded { secret: e.to_string(), owner: None },
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Does the annotation record any entry for the credential `uid`? (A cheap
/// look at the raw value, for scans over every ServiceAccount.)
pub fn records_owner(sa: &ServiceAccount, uid: &str) -> bool {
    let raw = sa.metadata.annotations.as_ref().and_then(|a| a.get(SA_ENTRIES_ANNOTATION));
    !uid.is_empty() && raw.is_some_and(|v| v.contains(uid)) && added_by_us(sa).iter().any(|r| r.owner.as_deref() == Some(uid))
}

fn has_entry(sa: &ServiceAccount, secret: &str) -> bool {
    sa.image_pull_secrets.iter().flatten().any(|r| r.name == secret)
}

/// What a credential wants for one ServiceAccount.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// Selected, and its Secret holds a credential: the entry is listed.
    Entry,
    /// Selected, but its Secret could not be written this time (a failing
    /// source, a refused write): an entry it owns stays, none is added.
    /// The previous Secret is still there and still works.
    Hold,
    /// Not selected any more, or the Secret goes (namespace left the
    /// selection, credential deleted): an entry it owns is removed.
    Gone,
}

/// What to do to one ServiceAccount for one Secret of one credential.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    /// List the entry (if missing) and record it as this credential's.
    Add,
    Remove,
    None,
    /// Wanted, but the entry is recorded as another credential's (its UID):
    /// left alone and reported, never fought over.
    Clash(String),
}

/// The decision, on the ServiceAccount as read.
pub fn change_for(sa: &ServiceAccount, secret: &str, uid: &str, want: Want) -> Change {
    // `None`: not recorded (absent or added by hand); `Some(None)`: recorded
    // by name only; `Some(Some(owner))`: recorded for a credential.
    let recorded = added_by_us(sa).into_iter().find(|r| r.secret == secret).map(|r| r.owner);
    let other = recorded.clone().flatten().filter(|o| o != uid);
    match (want, other) {
        (Want::Entry | Want::Hold, Some(owner)) => Change::Clash(owner),
        (Want::Gone, _) if recorded.as_ref().and_then(|o| o.as_deref()) == Some(uid) => Change::Remove,
        (Want::Gone | Want::Hold, _) => Change::None,
        // Missing, or recorded by name only (before owners were): add or claim it.
        (Want::Entry, None) if !has_entry(sa, secret) || recorded == Some(None) => Change::Add,
        // Ours already, or added by hand (never claimed).
        (Want::Entry, None) => Change::None,
    }
}

/// Apply a change to a ServiceAccount object (pure; used on a fresh GET).
pub fn edit(sa: &mut ServiceAccount, secret: &str, uid: &str, change: &Change) {
    let mut ours = added_by_us(sa);
    match change {
        Change::Add => {
            if !has_entry(sa, secret) {
                sa.image_pull_secrets.get_or_insert_with(Vec::new).push(LocalObjectReference { name: secret.to_string() });
            }
            ours.retain(|r| r.secret != secret);
            ours.push(Recorded { secret: secret.to_string(), owner: Some(uid.to_string()) });
        }
        Change::Remove => {
            if let Some(list) = sa.image_pull_secrets.as_mut() {
                list.retain(|r| r.name != secret);
            }
            ours.retain(|r| r.secret != secret);
        }
        Change::None | Change::Clash(_) => return,
    }
    let ann = sa.metadata.annotations.get_or_insert_with(BTreeMap::new);
    if ours.is_empty() {
        ann.remove(SA_ENTRIES_ANNOTATION);
    } else {
        let list: Vec<String> = ours
            .iter()
            .map(|r| match &r.owner {
                Some(u) => format!("{}={u}", r.secret),
                None => r.secret.clone(),
            })
            .collect();
        ann.insert(SA_ENTRIES_ANNOTATION.to_string(), list.join(","));
    }
}

/// Bring one ServiceAccount in line: read it fresh, decide again on what was
/// read, edit, write it back with the resourceVersion read. A ServiceAccount
/// that is gone needs nothing. Returns what was decided.
pub async fn apply(client: &Client, namespace: &str, name: &str, secret: &str, uid: &str, want: Want) -> Result<Change, kube::Error> {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let Some(mut sa) = api.get_opt(name).await? else { return Ok(Change::None) };
    let change = change_for(&sa, secret, uid, want);
    if matches!(change, Change::None | Change::Clash(_)) {
        return Ok(change);
    }
    edit(&mut sa, secret, uid, &change);
    sa.metadata.managed_fields = None;
    let pp = PostParams { dry_run: false, field_manager: Some(FIELD_MANAGER.into()) };
    api.replace(name, &pp, &sa).await?;
    Ok(change)
}

/// What a sync of ServiceAccounts did.
#[derive(Debug, Default)]
pub struct Synced {
    pub changed: usize,
    /// `namespace/name` of ServiceAccounts whose entry another credential owns.
    pub clashes: Vec<String>,
}

impl Synced {
    /// The clash, as a condition message, if any.
    pub fn clash_message(&self, secret: &str) -> Option<String> {
        let first = self.clashes.first()?;
        let more = if self.clashes.len() > 1 { format!(" (and {} more)", self.clashes.len() - 1) } else { String::new() };
        Some(format!(
            "ServiceAccount {first}{more} lists Secret {secret} for another credential; regcred leaves that entry to it. Give one of the two credentials another secretName"
        ))
    }
}

/// Sync ServiceAccounts (as listed or cached) for `secret` of the credential
/// `uid`, each as `want` says. The first error stops nothing else.
pub async fn sync<A: std::borrow::Borrow<ServiceAccount>>(
    client: &Client,
    accounts: &[A],
    secret: &str,
    uid: &str,
    want: impl Fn(&ServiceAccount) -> Want,
) -> Result<Synced, kube::Error> {
    let mut out = Synced::default();
    let mut first_error = None;
    for sa in accounts.iter().map(std::borrow::Borrow::borrow) {
        let (Some(ns), Some(name)) = (sa.metadata.namespace.as_deref(), sa.metadata.name.as_deref()) else { continue };
        let w = want(sa);
        let change = match change_for(sa, secret, uid, w) {
            Change::None => continue,
            Change::Clash(owner) => Change::Clash(owner),
            _ => match apply(client, ns, name, secret, uid, w).await {
                Ok(c) => c,
                Err(e) => {
                    first_error = first_error.or(Some(e));
                    continue;
                }
            },
        };
        match change {
            Change::Clash(_) => out.clashes.push(format!("{ns}/{name}")),
            Change::Add | Change::Remove => out.changed += 1,
            Change::None => {}
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// Does `selection` select this ServiceAccount?
pub fn selects(selection: Option<&ServiceAccountSelection>, sa: &ServiceAccount) -> bool {
    let name = sa.metadata.name.clone().unwrap_or_default();
    let labels = sa.metadata.labels.clone().unwrap_or_default();
    selection.is_some_and(|s| s.selects(&name, &labels))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sa(entries: &[&str], ours: Option<&str>) -> ServiceAccount {
        let mut v = json!({"metadata": {"name": "default"}, "imagePullSecrets": entries.iter().map(|n| json!({"name": n})).collect::<Vec<_>>()});
        if let Some(o) = ours {
            v["metadata"]["annotations"] = json!({SA_ENTRIES_ANNOTATION: o});
        }
        serde_json::from_value(v).unwrap()
    }

    fn names(sa: &ServiceAccount) -> Vec<String> {
        sa.image_pull_secrets.iter().flatten().map(|r| r.name.clone()).collect()
    }

    fn rec(secret: &str, owner: Option<&str>) -> Recorded {
        Recorded { secret: secret.into(), owner: owner.map(String::from) }
    }

    #[test]
    fn adds_at_the_end_keeps_order_and_never_duplicates() {
        let mut a = sa(&["mine", "other"], None);
        assert_eq!(change_for(&a, "pull", "u1", Want::Entry), Change::Add);
        edit(&mut a, "pull", "u1", &Change::Add);
        assert_eq!(names(&a), ["mine", "other", "pull"]);
        assert_eq!(added_by_us(&a), [rec("pull", Some("u1"))]);
        assert_eq!(change_for(&a, "pull", "u1", Want::Entry), Change::None);
        edit(&mut a, "pull", "u1", &Change::Add);
        assert_eq!(names(&a), ["mine", "other", "pull"]);
    }

    #[test]
    fn removes_only_what_this_credential_added_and_only_when_it_is_gone() {
        let mut a = sa(&["mine", "pull", "other"], Some("pull=u1"));
        assert_eq!(change_for(&a, "pull", "u1", Want::Hold), Change::None, "a failure keeps the entry");
        assert_eq!(change_for(&a, "pull", "u1", Want::Gone), Change::Remove);
        edit(&mut a, "pull", "u1", &Change::Remove);
        assert_eq!(names(&a), ["mine", "other"]);
        assert!(!a.metadata.annotations.unwrap().contains_key(SA_ENTRIES_ANNOTATION));
        // a hand-added entry of the same name is never claimed nor removed
        let b = sa(&["pull"], None);
        for w in [Want::Entry, Want::Hold, Want::Gone] {
            assert_eq!(change_for(&b, "pull", "u1", w), Change::None);
        }
        // ours in the annotation but removed by hand: listed again while
        // wanted, only forgotten when gone
        let c = sa(&[], Some("pull=u1"));
        assert_eq!(change_for(&c, "pull", "u1", Want::Entry), Change::Add);
        assert_eq!(change_for(&c, "pull", "u1", Want::Hold), Change::None);
        assert_eq!(change_for(&c, "pull", "u1", Want::Gone), Change::Remove);
    }

    #[test]
    fn hold_adds_nothing() {
        let a = sa(&["mine"], None);
        assert_eq!(change_for(&a, "pull", "u1", Want::Hold), Change::None);
    }

    #[test]
    fn another_credentials_entry_is_never_taken_nor_removed() {
        let a = sa(&["pull", "other"], Some("pull=u2,other=u1"));
        assert_eq!(change_for(&a, "pull", "u1", Want::Gone), Change::None, "not ours to remove");
        assert_eq!(change_for(&a, "pull", "u1", Want::Entry), Change::Clash("u2".into()), "wanted: a clash, reported");
        assert_eq!(change_for(&a, "pull", "u1", Want::Hold), Change::Clash("u2".into()));
        let mut b = a.clone();
        edit(&mut b, "pull", "u1", &Change::Clash("u2".into()));
        assert_eq!(b, a, "a clash changes nothing");
        // its own entry beside it goes as before, the other's record stays
        assert_eq!(change_for(&a, "other", "u1", Want::Gone), Change::Remove);
        let mut c = a.clone();
        edit(&mut c, "other", "u1", &Change::Remove);
        assert_eq!(names(&c), ["pull"]);
        assert_eq!(added_by_us(&c), [rec("pull", Some("u2"))]);
    }

    #[test]
    fn an_entry_recorded_by_name_only_is_kept_on_upgrade_and_claimed_by_the_credential_that_wants_it() {
        let legacy = sa(&["pull", "mine"], Some("pull"));
        assert_eq!(added_by_us(&legacy), [rec("pull", None)], "today's annotation is read");
        // no credential removes it on upgrade
        assert_eq!(change_for(&legacy, "pull", "u3", Want::Gone), Change::None);
        assert_eq!(change_for(&legacy, "pull", "u3", Want::Hold), Change::None);
        let mut a = legacy.clone();
        assert_eq!(change_for(&a, "pull", "u1", Want::Entry), Change::Add);
        edit(&mut a, "pull", "u1", &Change::Add);
        assert_eq!(names(&a), ["pull", "mine"], "no duplicate, order kept");
        assert_eq!(added_by_us(&a), [rec("pull", Some("u1"))]);
        // then it is u1's: a second credential neither removes nor claims it
        assert_eq!(change_for(&a, "pull", "u2", Want::Gone), Change::None);
        assert_eq!(change_for(&a, "pull", "u2", Want::Entry), Change::Clash("u1".into()));
    }

    #[test]
    fn records_owner_looks_for_the_uid_as_an_owner() {
        assert!(records_owner(&sa(&["a"], Some("a=u1,b=u2")), "u2"));
        assert!(!records_owner(&sa(&["u2"], Some("u2")), "u2"), "a Secret named like the UID is no owner");
        assert!(!records_owner(&sa(&[], None), "u2"));
        assert!(!records_owner(&sa(&["a"], Some("a=u1")), ""));
    }

    #[test]
    fn the_annotation_survives_odd_spellings() {
        let a = sa(&["a", "b"], Some(" a=u1 ,,b=,"));
        assert_eq!(added_by_us(&a), [rec("a", Some("u1")), rec("b", None)]);
    }
}
