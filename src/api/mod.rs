//! The `RegistryCredential` API (group `regcred.dev`, version `v1alpha1`).
//!
//! Doc comments on the types below are user documentation: they become the
//! CRD's field descriptions and are what `kubectl explain` shows.

mod cluster;
mod source;

pub use cluster::*;
pub use source::*;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// API group of the RegistryCredential resource.
pub const GROUP: &str = "regcred.dev";
/// Field manager for every server-side apply regcred makes.
pub const FIELD_MANAGER: &str = "regcred";
/// Label on every Secret regcred writes; the operator watches Secrets by it.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "regcred";
/// Label naming the RegistryCredential a Secret belongs to.
pub const CREDENTIAL_LABEL: &str = "regcred.dev/credential";
/// Annotations regcred keeps on the Secrets it writes.
pub const NOT_AFTER_ANNOTATION: &str = "regcred.dev/not-after";
pub const ISSUED_AT_ANNOTATION: &str = "regcred.dev/issued-at";
pub const RENEWAL_ANNOTATION: &str = "regcred.dev/renewal-time";
/// Fingerprint (not the content) of the spec generation and referenced Secret
/// versions that produced the current Secret data.
pub const INPUTS_ANNOTATION: &str = "regcred.dev/inputs";
/// Digest of the data regcred wrote, to notice edits by others.
pub const DATA_DIGEST_ANNOTATION: &str = "regcred.dev/data-digest";
/// On a ServiceAccount: the `imagePullSecrets` entries regcred added, as
/// comma-separated `secret=credential-uid` (the credential that owns the
/// entry), so exactly those are removed later and by their owner only. An
/// entry written before owners were recorded is a bare Secret name.
pub const SA_ENTRIES_ANNOTATION: &str = "regcred.dev/image-pull-secrets";
/// Finalizer that removes regcred's ServiceAccount entries before a
/// credential goes (garbage collection cannot edit a list).
pub const FINALIZER: &str = "regcred.dev/cleanup";
/// Label on Secrets written for a ClusterRegistryCredential: its UID.
pub const CLUSTER_CREDENTIAL_LABEL: &str = "regcred.dev/cluster-credential-uid";
/// On a credential: ask for a new credential now (any new value, by
/// convention an RFC 3339 time; `regcred renew` sets it). Honoured once:
/// status records the value served.
pub const RENEW_ANNOTATION: &str = "regcred.dev/renew-requested-at";
/// On a Secret written by a `rotate` source: the vendor's id of the key it
/// holds (not the key).
pub const KEY_ANNOTATION: &str = "regcred.dev/key-id";
/// A ServiceAccount's opt-in to `ecr.webIdentity`: `"true"`.
pub const WEB_IDENTITY_ANNOTATION: &str = "regcred.dev/web-identity";

/// DNS-1123 subdomain: what Kubernetes accepts as a Secret name.
pub const DNS1123_SUBDOMAIN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// Go `time.ParseDuration` syntax, positive values only (e.g. `90s`, `1h30m`).
pub const GO_DURATION: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$";
/// A username the kubelet can use: it splits `auth` at the first `:`, so a
/// username may hold neither a colon nor control characters.
pub const USERNAME: &str = r"^[^:[:cntrl:]]+$";
// Every duration in the spec has an upper bound, checked at admission with
// CEL; the runtime clamps again, so an object stored before a bound existed
// cannot overflow anything either.

/// What to mint, where to write it and when to renew it.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "regcred.dev",
    version = "v1alpha1",
    kind = "RegistryCredential",
    plural = "registrycredentials",
    singular = "registrycredential",
    shortname = "regcred",
    category = "all",
    namespaced,
    doc = "A RegistryCredential keeps one kubernetes.io/dockerconfigjson Secret filled with a fresh registry credential. The credential is minted from exactly one source (AWS ECR, an OAuth2 token endpoint, a generic HTTP token endpoint, static credentials in a Secret, or a key regcred creates and rotates at Docker Hub, Harbor or GitLab) and renewed before it expires. Name the Secret in a Pod's imagePullSecrets to pull with it.",
    status = "RegistryCredentialStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Registry","type":"string","jsonPath":".status.registries[0]"}"#,
    printcolumn = r#"{"name":"Expires","type":"string","jsonPath":".status.notAfter"}"#,
    printcolumn = r#"{"name":"Renews","type":"string","jsonPath":".status.renewalTime"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Secret","type":"string","priority":1,"jsonPath":".status.secretName"}"#,
    printcolumn = r#"{"name":"Key","type":"string","priority":1,"jsonPath":".status.key.name"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = kube::core::Rule::new(
    "!(has(self.renewBefore) && has(self.renewBeforePercentage))"
).message("renewBefore and renewBeforePercentage are mutually exclusive: set at most one"))]
#[serde(rename_all = "camelCase")]
pub struct RegistryCredentialSpec {
    /// Name of the `kubernetes.io/dockerconfigjson` Secret to write, in this
    /// namespace. Defaults to the RegistryCredential's own name. regcred never
    /// touches an existing Secret of that name that it does not own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), pattern(DNS1123_SUBDOMAIN))]
    pub secret_name: Option<String>,

    /// Where the credential comes from. Set exactly one of `ecr`, `oauth2`,
    /// `http`, `basic` or `rotate`.
    pub source: CredentialSource,

    #[serde(flatten)]
    pub renewal: Renewal,

    /// Extra labels and annotations for the written Secret. regcred's own
    /// labels and annotations (under `regcred.dev/` and
    /// `app.kubernetes.io/managed-by`) always win.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_template: Option<SecretTemplate>,

    /// ServiceAccounts of this namespace that get the Secret in their
    /// `imagePullSecrets`, so Pods need no change. Off when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_accounts: Option<ServiceAccountSelection>,

    /// What kind of Secret to write. Default: a
    /// `kubernetes.io/dockerconfigjson` pull Secret. A Secret's type cannot
    /// change: to switch formats, use a new `secretName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<SecretOutput>,

    /// After writing a new credential, restart this namespace's Pods that are
    /// stuck in `ErrImagePull`/`ImagePullBackOff` and pull with the Secret
    /// (named in their `imagePullSecrets` or listed by their ServiceAccount),
    /// instead of leaving them to the kubelet's back-off (up to 5 minutes).
    /// Pods with a controller (ReplicaSet, StatefulSet, Job...) are evicted
    /// through the Eviction API, so PodDisruptionBudgets hold; bare Pods are
    /// never deleted, they get an Event. At most once per Pod per rotation.
    /// Takes effect only when the operator runs with `--restart-stuck-pods`
    /// (chart value `restartStuckPods.enabled`). Default: false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_stuck_pods: Option<bool>,
}

/// The shape of the written Secret.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(validation = kube::core::Rule::new("self.format == 'argocd' || (!has(self.argocdSecretType) && !has(self.argocdName))")
    .message("argocdSecretType and argocdName apply to format argocd only"))]
#[serde(rename_all = "camelCase")]
pub struct SecretOutput {
    /// `dockerconfigjson` (default): for `imagePullSecrets`. `argocd`: an Argo
    /// CD repository Secret for an OCI Helm registry (keys `type: helm`,
    /// `url`, `enableOCI: "true"`, `username`, `password`, `name`; label
    /// `argocd.argoproj.io/secret-type`). `basic-auth`: a
    /// `kubernetes.io/basic-auth` Secret (`username`, `password`). `argocd`
    /// and `basic-auth` hold one registry.
    #[serde(default)]
    pub format: OutputFormat,
    /// For `argocd`: `repository` (default) or `repo-creds` (credentials for
    /// every repository under the URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argocd_secret_type: Option<ArgoSecretType>,
    /// For `argocd`: the repository's display name. Defaults to the registry host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub argocd_name: Option<String>,
}

/// Secret formats.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
pub enum OutputFormat {
    #[default]
    #[serde(rename = "dockerconfigjson")]
    DockerConfigJson,
    #[serde(rename = "argocd")]
    ArgoCd,
    #[serde(rename = "basic-auth")]
    BasicAuth,
}

/// Argo CD's Secret kinds for repository credentials.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
pub enum ArgoSecretType {
    #[default]
    #[serde(rename = "repository")]
    Repository,
    #[serde(rename = "repo-creds")]
    RepoCreds,
}

/// When to renew: shared by both credential kinds.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Renewal {
    /// Renew this long before the credential expires, as a Go duration
    /// (e.g. `1h`, `30m`, `90s`). Mutually exclusive with
    /// `renewBeforePercentage`. When neither is set, the credential is renewed
    /// once two thirds of its lifetime have passed. regcred always renews at
    /// least a safety margin before expiry, even if this asks for later. At
    /// most `8760h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), pattern(GO_DURATION))]
    #[x_kube(validation = kube::core::Rule::new("duration(self) <= duration('8760h')").message("renewBefore must be at most 8760h"))]
    pub renew_before: Option<String>,

    /// Renew when this percentage of the credential's lifetime remains
    /// (1–99). `33` renews after two thirds of the lifetime. Mutually
    /// exclusive with `renewBefore`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 99))]
    pub renew_before_percentage: Option<i32>,
}

/// Which ServiceAccounts get the Secret in `imagePullSecrets`: by name, by
/// label selector (both: either matches), or all.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(validation = kube::core::Rule::new("!(has(self.all) && self.all) || (!has(self.names) && !has(self.selector))")
    .message("all: true excludes names and selector"))]
#[x_kube(validation = kube::core::Rule::new("(has(self.all) && self.all) || has(self.names) || has(self.selector)")
    .message("set names, selector or all"))]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountSelection {
    /// ServiceAccount names, e.g. `[default]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253), pattern(DNS1123_SUBDOMAIN)))]
    pub names: Vec<String>,
    /// ServiceAccounts whose labels match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// Every ServiceAccount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all: Option<bool>,
}

/// A Kubernetes label selector (`matchLabels` and `matchExpressions`).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    /// Labels that must all be present with these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    pub match_labels: BTreeMap<String, String>,
    /// Requirements that must all hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

/// One requirement of a label selector.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[x_kube(validation = kube::core::Rule::new("(self.operator == 'In' || self.operator == 'NotIn') == (has(self.values) && size(self.values) > 0)")
    .message("In and NotIn need values; Exists and DoesNotExist take none"))]
#[serde(rename_all = "camelCase")]
pub struct LabelSelectorRequirement {
    /// The label key.
    #[schemars(length(min = 1, max = 317))]
    pub key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
    #[schemars(pattern(r"^(In|NotIn|Exists|DoesNotExist)$"))]
    pub operator: String,
    /// Values for `In` and `NotIn`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 63)))]
    pub values: Vec<String>,
}

impl LabelSelector {
    /// Does this selector match these labels? (An empty selector matches everything.)
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| {
                let got = labels.get(&r.key);
                match r.operator.as_str() {
                    "In" => got.is_some_and(|v| r.values.contains(v)),
                    "NotIn" => got.is_none_or(|v| !r.values.contains(v)),
                    "Exists" => got.is_some(),
                    "DoesNotExist" => got.is_none(),
                    _ => false,
                }
            })
    }
}

impl ServiceAccountSelection {
    /// Is this ServiceAccount selected?
    pub fn selects(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        self.all == Some(true) || self.names.iter().any(|n| n == name) || self.selector.as_ref().is_some_and(|s| s.matches(labels))
    }
}

/// Extra metadata for the written Secret.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretTemplate {
    /// Labels added to the Secret: at most 32, with Kubernetes label syntax
    /// (keys `[prefix/]name`, values of at most 63 characters).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32, "additionalProperties" = {"type": "string", "maxLength": 63}))]
    #[x_kube(validation = kube::core::Rule::new(
        "self.all(k, size(k) <= 317 && k.matches('^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$'))"
    ).message("label keys must be qualified names such as example.com/team"))]
    #[x_kube(validation = kube::core::Rule::new(
        "self.all(k, self[k].matches('^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$'))"
    ).message("label values must be at most 63 characters of letters, digits, '-', '_' or '.', starting and ending with a letter or digit"))]
    pub labels: BTreeMap<String, String>,
    /// Annotations added to the Secret: at most 32, keys with Kubernetes
    /// annotation syntax, values of at most 4096 characters.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32, "additionalProperties" = {"type": "string", "maxLength": 4096}))]
    #[x_kube(validation = kube::core::Rule::new(
        "self.all(k, size(k) <= 317 && k.matches('^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$'))"
    ).message("annotation keys must be qualified names such as example.com/owner"))]
    pub annotations: BTreeMap<String, String>,
}

/// Observed state of a RegistryCredential, written by regcred.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegistryCredentialStatus {
    /// Current conditions. `Ready` is `True` while the Secret holds a valid
    /// credential that regcred keeps renewing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Name of the Secret regcred writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// Registry hosts the Secret holds credentials for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub registries: Vec<String>,
    /// When the credential in the Secret expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<DateTime<Utc>>,
    /// When regcred will mint the next credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_time: Option<DateTime<Utc>>,
    /// When the Secret was last written with a new credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotation_time: Option<DateTime<Utc>>,
    /// Consecutive failed attempts since the last success; reset on success.
    #[serde(default)]
    pub failed_attempts: i32,
    /// When the last attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_time: Option<DateTime<Utc>>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Fingerprint of the spec generation and the versions of the referenced
    /// Secrets at the last attempt; a change means "mint again now".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_inputs: Option<String>,
    /// Pods restarted (evicted) after the last rotation, when
    /// `restartStuckPods` is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarted_pods: Option<i32>,
    /// The last `regcred.dev/renew-requested-at` value a mint was made for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_request_served: Option<String>,
    /// For `rotate` sources: the key at the registry that the Secret holds,
    /// the one being created, and replaced keys waiting for revocation.
    /// Identities only, never a key's secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<KeyStatus>,
}

/// Keys a `rotate` source created at the registry.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyStatus {
    /// The vendor's id of the key in the Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Its name at the vendor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// When it expires at the vendor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// The name of a key being created: recorded before the vendor is
    /// asked, so a key whose creation was interrupted is found and revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<String>,
    /// Replaced keys, revoked once their grace has passed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retiring: Vec<RetiringKey>,
}

/// A replaced key still inside its grace period.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetiringKey {
    /// The vendor's id of the key.
    pub id: String,
    /// Its name at the vendor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// When regcred revokes it.
    pub revoke_at: DateTime<Utc>,
}

/// A status condition, as in `metav1.Condition`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Condition type, e.g. `Ready`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// A CamelCase reason, e.g. `Rotated` or `MintFailed`.
    pub reason: String,
    /// A human-readable message.
    #[serde(default)]
    pub message: String,
    /// When the condition last changed status.
    pub last_transition_time: DateTime<Utc>,
    /// The `metadata.generation` the condition was set for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Condition type regcred maintains.
pub const READY: &str = "Ready";

/// A renew request not served yet: the annotation's value, when it differs
/// from the one status says was served.
pub fn pending_renew_request(meta: &kube::api::ObjectMeta, status: Option<&RegistryCredentialStatus>) -> Option<String> {
    let asked = meta.annotations.as_ref()?.get(RENEW_ANNOTATION)?;
    (status.and_then(|s| s.renew_request_served.as_ref()) != Some(asked)).then(|| asked.clone())
}

impl RegistryCredential {
    /// The Secret this credential writes: `spec.secretName`, else its own name.
    pub fn secret_name(&self) -> String {
        self.spec
            .secret_name
            .clone()
            .unwrap_or_else(|| self.metadata.name.clone().unwrap_or_default())
    }

    /// The Ready condition, if any.
    pub fn ready(&self) -> Option<&Condition> {
        self.status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == READY))
    }
}

impl RegistryCredentialStatus {
    /// Set a condition, keeping `lastTransitionTime` when the status is unchanged.
    pub fn set_condition(&mut self, mut cond: Condition) {
        if let Some(old) = self.conditions.iter_mut().find(|c| c.type_ == cond.type_) {
            if old.status == cond.status {
                cond.last_transition_time = old.last_transition_time;
            }
            *old = cond;
        } else {
            self.conditions.push(cond);
        }
    }
}
