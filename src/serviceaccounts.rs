//! Adding the pull Secret to ServiceAccounts' `imagePullSecrets`, and taking
//! exactly that entry away again.
//!
//! The list is atomic in the Kubernetes API (no merge key): server-side apply
//! or a strategic merge patch would replace it whole. So every change is a
//! read-modify-write: GET, edit the list in place (other entries and their
//! order kept, never a duplicate), PUT with the resourceVersion read, under
//! field manager `regcred`. A conflict is retried by the next reconcile. The
//! names regcred added are kept in an annotation, so a hand-added entry of
//! the same name is never claimed or removed.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{LocalObjectReference, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::Client;

use crate::api::{ServiceAccountSelection, FIELD_MANAGER, SA_ENTRIES_ANNOTATION};

/// The names regcred added to this ServiceAccount's `imagePullSecrets`.
pub fn added_by_us(sa: &ServiceAccount) -> Vec<String> {
    sa.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(SA_ENTRIES_ANNOTATION))
        .map(|v| v.split(',').filter(|s| !s.is_empty()).map(String::from).collect())
        .unwrap_or_default()
}

fn has_entry(sa: &ServiceAccount, secret: &str) -> bool {
    sa.image_pull_secrets.iter().flatten().any(|r| r.name == secret)
}

/// What to do to one ServiceAccount for one Secret.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    Add,
    Remove,
    None,
}

/// Add when selected and missing; remove only an entry regcred added and
/// only when no longer selected; leave hand-added entries alone.
pub fn change_for(sa: &ServiceAccount, secret: &str, wanted: bool) -> Change {
    let present = has_entry(sa, secret);
    let ours = added_by_us(sa).iter().any(|s| s == secret);
    match (wanted, present, ours) {
        (true, false, _) => Change::Add,
        (false, true, true) => Change::Remove,
        // Ours in the annotation but the entry is gone (removed by hand): forget it.
        (false, false, true) => Change::Remove,
        _ => Change::None,
    }
}

/// Apply a change to a ServiceAccount object (pure; used on a fresh GET).
pub fn edit(sa: &mut ServiceAccount, secret: &str, change: &Change) {
    let mut ours = added_by_us(sa);
    match change {
        Change::Add => {
            if !has_entry(sa, secret) {
                sa.image_pull_secrets.get_or_insert_with(Vec::new).push(LocalObjectReference { name: secret.to_string() });
            }
            if !ours.iter().any(|s| s == secret) {
                ours.push(secret.to_string());
            }
        }
        Change::Remove => {
            if let Some(list) = sa.image_pull_secrets.as_mut() {
                list.retain(|r| r.name != secret);
            }
            ours.retain(|s| s != secret);
        }
        Change::None => return,
    }
    let ann = sa.metadata.annotations.get_or_insert_with(BTreeMap::new);
    if ours.is_empty() {
        ann.remove(SA_ENTRIES_ANNOTATION);
    } else {
        ann.insert(SA_ENTRIES_ANNOTATION.to_string(), ours.join(","));
    }
}

/// Bring one ServiceAccount in line: read it fresh, edit, write it back with
/// the resourceVersion read. A ServiceAccount that is gone needs nothing.
pub async fn apply(client: &Client, namespace: &str, name: &str, secret: &str, wanted: bool) -> Result<bool, kube::Error> {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let Some(mut sa) = api.get_opt(name).await? else { return Ok(false) };
    let change = change_for(&sa, secret, wanted);
    if change == Change::None {
        return Ok(false);
    }
    edit(&mut sa, secret, &change);
    sa.metadata.managed_fields = None;
    let pp = PostParams { dry_run: false, field_manager: Some(FIELD_MANAGER.into()) };
    api.replace(name, &pp, &sa).await?;
    Ok(true)
}

/// Sync every ServiceAccount of a namespace (given as listed) for `secret`:
/// selected ones get it, the others lose the entry if regcred added it.
/// Returns how many were changed; the first error stops nothing else.
pub async fn sync_namespace(
    client: &Client,
    namespace: &str,
    accounts: &[ServiceAccount],
    secret: &str,
    selection: Option<&ServiceAccountSelection>,
) -> Result<usize, kube::Error> {
    let mut changed = 0;
    let mut first_error = None;
    for sa in accounts {
        let name = sa.metadata.name.clone().unwrap_or_default();
        let labels = sa.metadata.labels.clone().unwrap_or_default();
        let wanted = selection.is_some_and(|s| s.selects(&name, &labels));
        if change_for(sa, secret, wanted) == Change::None {
            continue;
        }
        match apply(client, namespace, &name, secret, wanted).await {
            Ok(true) => changed += 1,
            Ok(false) => {}
            Err(e) => first_error = first_error.or(Some(e)),
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(changed),
    }
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

    #[test]
    fn adds_at_the_end_keeps_order_and_never_duplicates() {
        let mut a = sa(&["mine", "other"], None);
        assert_eq!(change_for(&a, "pull", true), Change::Add);
        edit(&mut a, "pull", &Change::Add);
        assert_eq!(names(&a), ["mine", "other", "pull"]);
        assert_eq!(added_by_us(&a), ["pull"]);
        assert_eq!(change_for(&a, "pull", true), Change::None);
        edit(&mut a, "pull", &Change::Add);
        assert_eq!(names(&a), ["mine", "other", "pull"]);
    }

    #[test]
    fn removes_only_what_regcred_added() {
        let mut a = sa(&["mine", "pull", "other"], Some("pull"));
        assert_eq!(change_for(&a, "pull", false), Change::Remove);
        edit(&mut a, "pull", &Change::Remove);
        assert_eq!(names(&a), ["mine", "other"]);
        assert!(!a.metadata.annotations.unwrap().contains_key(SA_ENTRIES_ANNOTATION));
        // a hand-added entry of the same name is never claimed nor removed
        let b = sa(&["pull"], None);
        assert_eq!(change_for(&b, "pull", false), Change::None);
        assert_eq!(change_for(&b, "pull", true), Change::None);
    }
}
