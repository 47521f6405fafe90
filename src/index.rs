//! Which credentials read which Secret: (namespace, Secret name) → the
//! credentials that name it. Kept up to date from the credential watches,
//! so a Secret event costs a lookup, not a scan of every credential.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

/// A credential: (its namespace, "" when cluster-scoped; its name).
pub type CredentialKey = (String, String);

#[derive(Default)]
pub struct ReferenceIndex {
    inner: Mutex<IndexState>,
}

#[derive(Default)]
struct IndexState {
    /// Credential → (namespace of its Secrets, their names).
    by_credential: HashMap<CredentialKey, (String, Vec<String>)>,
    by_secret: HashMap<(String, String), BTreeSet<CredentialKey>>,
}

impl ReferenceIndex {
    /// The credential reads `secrets` in namespace `refs_namespace`.
    pub fn set(&self, credential: CredentialKey, refs_namespace: &str, secrets: Vec<String>) {
        let mut st = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        st.remove(&credential);
        for s in &secrets {
            st.by_secret.entry((refs_namespace.to_string(), s.clone())).or_default().insert(credential.clone());
        }
        st.by_credential.insert(credential, (refs_namespace.to_string(), secrets));
    }

    pub fn remove(&self, credential: &CredentialKey) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).remove(credential);
    }

    /// Forget the credentials of one kind (a relist of that kind's watch
    /// sets them again): cluster-scoped ones (namespace "") or namespaced.
    pub fn clear_kind(&self, cluster: bool) {
        let mut st = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let gone: Vec<CredentialKey> = st.by_credential.keys().filter(|k| k.0.is_empty() == cluster).cloned().collect();
        for k in &gone {
            st.remove(k);
        }
    }

    /// Credentials that read this Secret.
    pub fn lookup(&self, namespace: &str, secret: &str) -> Vec<CredentialKey> {
        let st = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        st.by_secret.get(&(namespace.to_string(), secret.to_string())).map(|s| s.iter().cloned().collect()).unwrap_or_default()
    }
}

impl IndexState {
    fn remove(&mut self, credential: &CredentialKey) {
        let Some((ns, old)) = self.by_credential.remove(credential) else { return };
        for s in old {
            let key = (ns.clone(), s);
            if let Some(set) = self.by_secret.get_mut(&key) {
                set.remove(credential);
                if set.is_empty() {
                    self.by_secret.remove(&key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(ns: &str, name: &str) -> CredentialKey {
        (ns.to_string(), name.to_string())
    }

    #[test]
    fn index_maps_secrets_to_credentials() {
        let idx = ReferenceIndex::default();
        idx.set(k("a", "one"), "a", vec!["robot".into()]);
        idx.set(k("a", "two"), "a", vec!["robot".into()]);
        idx.set(k("b", "one"), "b", vec!["robot".into()]);
        assert_eq!(idx.lookup("a", "robot"), vec![k("a", "one"), k("a", "two")]);
        idx.set(k("a", "two"), "a", vec!["other".into()]);
        assert_eq!(idx.lookup("a", "robot"), vec![k("a", "one")]);
        assert_eq!(idx.lookup("a", "other"), vec![k("a", "two")]);
        idx.remove(&k("a", "one"));
        assert!(idx.lookup("a", "robot").is_empty());
        assert_eq!(idx.lookup("b", "robot"), vec![k("b", "one")]);
    }

    #[test]
    fn a_cluster_credential_reads_another_namespace() {
        let idx = ReferenceIndex::default();
        idx.set(k("", "fleet"), "regcred-system", vec!["oauth".into()]);
        assert_eq!(idx.lookup("regcred-system", "oauth"), vec![k("", "fleet")]);
        assert!(idx.lookup("", "oauth").is_empty());
        idx.set(k("", "fleet"), "other", vec!["oauth".into()]);
        assert!(idx.lookup("regcred-system", "oauth").is_empty(), "a moved sourceNamespace leaves nothing behind");
        idx.set(k("a", "one"), "other", vec!["oauth".into()]);
        idx.clear_kind(false);
        assert_eq!(idx.lookup("other", "oauth"), vec![k("", "fleet")], "a relist of namespaced credentials keeps cluster ones");
        idx.clear_kind(true);
        assert!(idx.lookup("other", "oauth").is_empty());
    }
}
