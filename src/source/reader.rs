//! Reads the Secrets a source references, on demand, in one namespace only.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use secrecy::SecretString;

use super::SourceError;

/// Reads Secrets of one namespace. Data is read when minting and dropped
/// after; nothing is cached.
#[derive(Clone)]
pub struct SecretReader {
    api: Api<Secret>,
    namespace: String,
    /// For `regcred mint --secrets-dir`: Secrets read from `DIR/NAME/KEY`
    /// files instead of the cluster.
    dir: Option<std::path::PathBuf>,
}

impl SecretReader {
    pub fn new(client: Client, namespace: &str) -> Self {
        Self { api: Api::namespaced(client, namespace), namespace: namespace.to_string(), dir: None }
    }

    /// Read Secrets from files: `DIR/NAME/KEY` holds the value of key KEY of
    /// Secret NAME (the layout of a mounted Secret volume per Secret).
    pub fn from_dir(mut self, dir: std::path::PathBuf) -> Self {
        self.dir = Some(dir);
        self
    }

    fn read_dir(&self, dir: &std::path::Path, name: &str) -> Result<(String, BTreeMap<String, Vec<u8>>), SourceError> {
        // A Secret's name is a DNS-1123 subdomain (the CRD says so, and
        // `mint` checks the manifest against it): never a path out of DIR.
        if !crate::validate::is_dns1123_subdomain(name) {
            return Err(SourceError::InvalidSpec { field: "the name of a referenced Secret", problem: "must be a DNS-1123 subdomain".into() });
        }
        let path = dir.join(name);
        let entries = std::fs::read_dir(&path).map_err(|_| SourceError::SecretNotFound { namespace: path.display().to_string(), name: name.to_string() })?;
        let mut data = BTreeMap::new();
        for e in entries.flatten() {
            if e.path().is_file() {
                let bytes = std::fs::read(e.path()).map_err(|e| SourceError::SecretRead { name: name.to_string(), reason: e.kind().to_string() })?;
                data.insert(e.file_name().to_string_lossy().into_owned(), bytes);
            }
        }
        Ok(("file".into(), data))
    }

    /// All data of a Secret, as raw bytes.
    pub async fn data(&self, name: &str) -> Result<BTreeMap<String, Vec<u8>>, SourceError> {
        Ok(self.versioned_data(name).await?.1)
    }

    /// A Secret's resourceVersion and data.
    pub async fn versioned_data(&self, name: &str) -> Result<(String, BTreeMap<String, Vec<u8>>), SourceError> {
        if let Some(dir) = &self.dir {
            return self.read_dir(dir, name);
        }
        let secret = self.api.get_opt(name).await.map_err(|e| SourceError::SecretRead {
            name: name.to_string(),
            reason: summarize_kube_error(&e),
        })?;
        let secret = secret.ok_or_else(|| SourceError::SecretNotFound {
            namespace: self.namespace.clone(),
            name: name.to_string(),
        })?;
        let rv = secret.metadata.resource_version.unwrap_or_default();
        Ok((rv, secret.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect()))
    }

    /// One key of a Secret as text, trimmed of a trailing newline (as left by
    /// `kubectl create secret --from-file`). Missing or empty is an error.
    pub async fn key(&self, name: &str, key: &str) -> Result<SecretString, SourceError> {
        let mut data = self.data(name).await?;
        take_key(&mut data, name, key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn secrets_from_files_stay_in_the_directory() {
        let base = std::env::temp_dir().join(format!("regcred-reader-{}", std::process::id()));
        let dir = base.join("secrets");
        std::fs::create_dir_all(dir.join("robot")).unwrap();
        std::fs::create_dir_all(base.join("outside")).unwrap();
        std::fs::write(dir.join("robot/password"), "inside-pw").unwrap();
        std::fs::write(base.join("outside/password"), "outside-pw").unwrap();
        let client = Client::try_from(kube::Config::new("http://127.0.0.1:1".parse().unwrap())).unwrap();
        let r = SecretReader::new(client, "ns").from_dir(dir.clone());
        assert_eq!(secrecy::ExposeSecret::expose_secret(&r.key("robot", "password").await.unwrap()), "inside-pw");
        for name in ["../outside", "..", "/etc", "robot/../../outside"] {
            let e = r.data(name).await.unwrap_err();
            assert_eq!(e.category(), "InvalidSpec", "{name}: {e}");
            assert!(!e.to_string().contains("outside-pw"));
        }
        let _ = std::fs::remove_dir_all(&base);
    }
}

/// Take one key out of Secret data as text.
pub fn take_key(data: &mut BTreeMap<String, Vec<u8>>, name: &str, key: &str) -> Result<SecretString, SourceError> {
    let missing = || SourceError::SecretKeyMissing { name: name.to_string(), key: key.to_string() };
    let raw = data.remove(key).ok_or_else(missing)?;
    let text = String::from_utf8(raw).map_err(|_| missing())?;
    let trimmed = text.trim_end_matches(['\r', '\n']);
    if trimmed.is_empty() {
        return Err(missing());
    }
    Ok(SecretString::from(trimmed.to_string()))
}

/// The status code and reason of an API error, without its body.
pub fn summarize_kube_error(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("API server answered {} {}", s.code, s.reason),
        _ => "the API server could not be reached".to_string(),
    }
}
