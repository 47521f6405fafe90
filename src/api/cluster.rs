//! The cluster-scoped `ClusterRegistryCredential`: one credential, minted
//! once, written to every selected namespace.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::{
    Condition, CredentialSource, LabelSelector, RegistryCredentialStatus, Renewal, SecretTemplate, ServiceAccountSelection,
    DNS1123_SUBDOMAIN,
};

/// What to mint once for the whole cluster, where to write it and when to renew it.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "regcred.dev",
    version = "v1alpha1",
    kind = "ClusterRegistryCredential",
    plural = "clusterregistrycredentials",
    singular = "clusterregistrycredential",
    shortname = "cregcred",
    doc = "A ClusterRegistryCredential mints one registry credential and writes it, as a kubernetes.io/dockerconfigjson Secret, into every namespace it selects, including namespaces created later; optionally it adds the Secret to ServiceAccounts' imagePullSecrets there. One mint serves every namespace. Created by cluster admins: ECR may use the operator's own AWS identity without the per-namespace gate.",
    status = "ClusterRegistryCredentialStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Namespaces","type":"integer","jsonPath":".status.syncedNamespaces"}"#,
    printcolumn = r#"{"name":"Expires","type":"string","jsonPath":".status.notAfter"}"#,
    printcolumn = r#"{"name":"Renews","type":"string","jsonPath":".status.renewalTime"}"#,
    printcolumn = r#"{"name":"Failed","type":"integer","priority":1,"jsonPath":".status.failedNamespaces"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = kube::core::Rule::new(
    "!(has(self.renewBefore) && has(self.renewBeforePercentage))"
).message("renewBefore and renewBeforePercentage are mutually exclusive: set at most one"))]
// Keys at a registry are created per RegistryCredential (one key per
// consumer, revocable on its own); the fleet path has no key lifecycle yet.
#[x_kube(validation = kube::core::Rule::new("!has(self.source.rotate)")
    .message("source.rotate is supported by RegistryCredential only: create one per namespace"))]
#[serde(rename_all = "camelCase")]
pub struct ClusterRegistryCredentialSpec {
    /// Where the credential comes from. Set exactly one of `ecr`, `oauth2`,
    /// `http` or `basic` (`rotate` is for RegistryCredentials). Secrets and ServiceAccounts the source names are
    /// read in `sourceNamespace`.
    pub source: CredentialSource,

    /// Namespace of the Secrets (and the web identity ServiceAccount) the
    /// source references. Defaults to the operator's own namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), pattern(DNS1123_SUBDOMAIN))]
    pub source_namespace: Option<String>,

    #[serde(flatten)]
    pub renewal: Renewal,

    /// Which namespaces get the Secret.
    pub target: ClusterTarget,

    /// ServiceAccounts in each target namespace that get the Secret in their
    /// `imagePullSecrets`. Off when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_accounts: Option<ServiceAccountSelection>,
}

/// The namespaces a ClusterRegistryCredential writes to: those matching
/// `namespaceSelector` or named in `namespaces`, less `excludeNamespaces`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(validation = kube::core::Rule::new("has(self.namespaceSelector) || (has(self.namespaces) && size(self.namespaces) > 0)")
    .message("set namespaceSelector or namespaces"))]
#[serde(rename_all = "camelCase")]
pub struct ClusterTarget {
    /// Namespaces whose labels match (an empty selector matches all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Namespaces by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000), inner(length(min = 1, max = 63), pattern(DNS1123_SUBDOMAIN)))]
    pub namespaces: Vec<String>,
    /// Namespaces never written to, even when selected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000), inner(length(min = 1, max = 63), pattern(DNS1123_SUBDOMAIN)))]
    pub exclude_namespaces: Vec<String>,
    /// Name of the Secret in each namespace. Defaults to the
    /// ClusterRegistryCredential's name. regcred never touches an existing
    /// Secret of that name that it does not own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), pattern(DNS1123_SUBDOMAIN))]
    pub secret_name: Option<String>,
    /// Extra labels and annotations for the written Secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_template: Option<SecretTemplate>,
}

/// Observed state of a ClusterRegistryCredential, written by regcred.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRegistryCredentialStatus {
    /// The credential: conditions (`Ready`, and `Degraded` while some
    /// namespaces could not be written), expiry, renewal, failures.
    #[serde(flatten)]
    pub credential: RegistryCredentialStatus,
    /// Namespaces selected.
    #[serde(default)]
    pub target_namespaces: i32,
    /// Namespaces holding the current credential.
    #[serde(default)]
    pub synced_namespaces: i32,
    /// Namespaces that could not be written.
    #[serde(default)]
    pub failed_namespaces: i32,
    /// Some of the namespaces that failed (at most 10), with the reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<NamespaceFailure>,
}

/// One namespace that could not be written.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceFailure {
    pub namespace: String,
    /// A CamelCase reason such as `SecretConflict` or `SecretRejected`.
    pub reason: String,
    pub message: String,
}

/// Condition type set while some target namespaces could not be written.
pub const DEGRADED: &str = "Degraded";

impl ClusterRegistryCredential {
    /// The Secret written in each namespace.
    pub fn secret_name(&self) -> String {
        self.spec.target.secret_name.clone().unwrap_or_else(|| self.metadata.name.clone().unwrap_or_default())
    }

    pub fn ready(&self) -> Option<&Condition> {
        self.status.as_ref().and_then(|s| s.credential.conditions.iter().find(|c| c.type_ == super::READY))
    }

    /// Is this namespace a target (labels as given, not terminating)?
    pub fn targets(&self, namespace: &str, labels: &std::collections::BTreeMap<String, String>) -> bool {
        let t = &self.spec.target;
        if t.exclude_namespaces.iter().any(|n| n == namespace) {
            return false;
        }
        t.namespaces.iter().any(|n| n == namespace) || t.namespace_selector.as_ref().is_some_and(|s| s.matches(labels))
    }
}
