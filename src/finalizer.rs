//! regcred's finalizer on a credential: present while it has something to
//! clean up that garbage collection does not (ServiceAccount entries, a
//! token to revoke), removed when that is done.

use kube::api::{Api, Patch, PatchParams};
use kube::Resource;

use crate::api::FINALIZER;

pub fn has_finalizer<K: Resource>(obj: &K) -> bool {
    obj.meta().finalizers.iter().flatten().any(|f| f == FINALIZER)
}

/// Add or remove regcred's finalizer, conditional on the resourceVersion
/// read (a merge patch carrying it is a precondition), keeping others'.
pub async fn set_finalizer<K>(api: &Api<K>, obj: &K, present: bool) -> Result<(), kube::Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    if has_finalizer(obj) == present {
        return Ok(());
    }
    let mut list: Vec<String> = obj.meta().finalizers.clone().unwrap_or_default();
    if present {
        list.push(FINALIZER.into());
    } else {
        list.retain(|f| f != FINALIZER);
    }
    let patch = serde_json::json!({"metadata": {"finalizers": list, "resourceVersion": obj.meta().resource_version}});
    let name = obj.meta().name.clone().unwrap_or_default();
    api.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await?;
    Ok(())
}
