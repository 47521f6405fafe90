//! The pull Secret: rendering `.dockerconfigjson` (pure), its metadata, "is
//! this Secret ours?", and writing it without ever deleting or recreating it.

use std::collections::BTreeMap;

use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::Resource;
use secrecy::ExposeSecret;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::api::{self, RegistryCredential};
use crate::source::Minted;

pub const DOCKERCONFIGJSON_TYPE: &str = "kubernetes.io/dockerconfigjson";
pub const DOCKERCONFIGJSON_KEY: &str = ".dockerconfigjson";
/// The API server's limit on a Secret, less room for metadata.
pub const MAX_DATA_BYTES: usize = 1024 * 1024 - 64 * 1024;

/// Render `.dockerconfigjson`: one `auths` entry per registry with
/// `username`, `password` and `auth` = base64(`username:password`), the
/// fields the kubelet reads.
pub fn render(minted: &Minted) -> Vec<u8> {
    let mut auths = Map::new();
    for e in &minted.entries {
        let password = e.password.expose_secret();
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", e.username, password));
        auths.insert(
            e.registry.clone(),
            json!({"username": e.username, "password": password, "auth": auth}),
        );
    }
    serde_json::to_vec(&json!({ "auths": auths })).expect("JSON of strings always serialises")
}

/// A digest of the data regcred wrote, kept in an annotation so an edit by
/// someone else is noticed. SHA-256 of high-entropy tokens reveals nothing.
pub fn digest(data: &[u8]) -> String {
    let d = Sha256::digest(data);
    d.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// Is this `.dockerconfigjson` complete: at least one entry, each with a
/// non-empty `auth` or `username` and `password`?
pub fn is_complete(data: &[u8]) -> bool {
    let Ok(v) = serde_json::from_slice::<Value>(data) else { return false };
    let Some(auths) = v.get("auths").and_then(Value::as_object) else { return false };
    let nonempty = |e: &Value, k: &str| e.get(k).and_then(Value::as_str).is_some_and(|s| !s.is_empty());
    !auths.is_empty()
        && auths
            .values()
            .all(|e| nonempty(e, "auth") || (nonempty(e, "username") && nonempty(e, "password")))
}

/// Is `secret` controlled by this credential (a controller owner reference
/// with its UID)?
pub fn is_ours(secret: &Secret, cr: &RegistryCredential) -> bool {
    cr.meta().uid.as_deref().is_some_and(|uid| is_controlled_by(&secret.metadata, uid, "RegistryCredential"))
}

/// Does a controller owner reference of this kind and UID stand on the object?
pub fn is_controlled_by(meta: &ObjectMeta, uid: &str, kind: &str) -> bool {
    meta.owner_references.iter().flatten().any(|o| o.controller == Some(true) && o.uid == uid && o.kind == kind)
}

/// The parts of our Secret's annotations that the schedule needs.
pub struct Annotated {
    pub intact: bool,
    pub inputs: Option<String>,
    pub not_after: Option<DateTime<Utc>>,
    pub renewal_time: Option<DateTime<Utc>>,
}

/// Label Argo CD reads to find repository Secrets.
pub const ARGOCD_SECRET_TYPE_LABEL: &str = "argocd.argoproj.io/secret-type";
pub const BASIC_AUTH_TYPE: &str = "kubernetes.io/basic-auth";

/// The digest of a Secret's data: of `.dockerconfigjson` alone for pull
/// Secrets (as it always was), else of every key and value in order.
pub fn data_digest(data: &BTreeMap<String, ByteString>) -> String {
    match data.get(DOCKERCONFIGJSON_KEY) {
        Some(d) if data.len() == 1 => digest(&d.0),
        _ => {
            let mut all = Vec::new();
            for (k, v) in data {
                all.extend_from_slice(k.as_bytes());
                all.push(0);
                all.extend_from_slice(&v.0);
                all.push(0);
            }
            digest(&all)
        }
    }
}

/// Does the Secret hold a complete credential in its format?
fn complete(secret: &Secret) -> bool {
    let Some(data) = secret.data.as_ref() else { return false };
    let has = |k: &str| data.get(k).is_some_and(|v| !v.0.is_empty());
    match secret.type_.as_deref() {
        Some(DOCKERCONFIGJSON_TYPE) => data.get(DOCKERCONFIGJSON_KEY).is_some_and(|d| is_complete(&d.0)),
        Some(BASIC_AUTH_TYPE) => has("username") && has("password"),
        _ => has("url") && has("username") && has("password"),
    }
}

/// The password a Secret of ours holds (the first registry's, in any format).
pub fn password_of(secret: &Secret) -> Option<String> {
    let data = secret.data.as_ref()?;
    if let Some(p) = data.get("password") {
        return String::from_utf8(p.0.clone()).ok();
    }
    let v: Value = serde_json::from_slice(&data.get(DOCKERCONFIGJSON_KEY)?.0).ok()?;
    v.get("auths")?.as_object()?.values().next()?.get("password")?.as_str().map(String::from)
}

/// Every secret value a Secret of ours holds, for redaction: each data
/// value as text, and in a `.dockerconfigjson` each entry's password and
/// `auth` (base64 of `username:password`).
pub fn values_in(secret: &Secret) -> Vec<String> {
    let mut out = Vec::new();
    for (key, v) in secret.data.iter().flatten() {
        let Ok(text) = String::from_utf8(v.0.clone()) else { continue };
        if key == DOCKERCONFIGJSON_KEY {
            if let Ok(config) = serde_json::from_str::<Value>(&text) {
                for entry in config.get("auths").and_then(Value::as_object).into_iter().flat_map(|a| a.values()) {
                    out.extend(["password", "auth"].iter().filter_map(|k| entry.get(*k)?.as_str().map(String::from)));
                }
            }
        }
        out.push(text);
    }
    out
}

/// The vendor's id of the key a Secret of ours holds (`rotate` sources).
pub fn key_of(secret: &Secret) -> Option<String> {
    secret.metadata.annotations.as_ref()?.get(api::KEY_ANNOTATION).cloned()
}

/// Read back what regcred wrote: is the data still what we wrote, and the
/// times and inputs recorded with it.
pub fn read_annotations(secret: &Secret) -> Annotated {
    let ann = secret.metadata.annotations.clone().unwrap_or_default();
    let time = |k: &str| {
        ann.get(k)
            .and_then(|v| DateTime::parse_from_rfc3339(v).ok())
            .map(|t| t.with_timezone(&Utc))
    };
    let intact = complete(secret)
        && secret.data.as_ref().is_some_and(|d| ann.get(api::DATA_DIGEST_ANNOTATION) == Some(&data_digest(d)));
    Annotated {
        intact,
        inputs: ann.get(api::INPUTS_ANNOTATION).cloned(),
        not_after: time(api::NOT_AFTER_ANNOTATION),
        renewal_time: time(api::RENEWAL_ANNOTATION),
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Where a Secret goes and what marks it as regcred's.
pub struct Placement {
    pub namespace: String,
    pub name: String,
    /// The controller owner reference (the credential).
    pub owner: k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
    pub template: crate::api::SecretTemplate,
    /// The label naming the credential (key, value).
    pub credential_label: (&'static str, String),
    /// The Secret's format.
    pub output: crate::api::SecretOutput,
}

/// A Secret's type, data and extra labels in one format.
pub struct Rendered {
    pub type_: String,
    pub data: BTreeMap<String, ByteString>,
    pub labels: BTreeMap<String, String>,
}

/// Render `minted` in the placement's format.
pub fn render_as(output: &crate::api::SecretOutput, minted: &Minted) -> Result<Rendered, WriteError> {
    use crate::api::{ArgoSecretType, OutputFormat};
    let single = || match minted.entries.as_slice() {
        [one] => Ok(one),
        many => Err(WriteError::OneRegistry { count: many.len() }),
    };
    let b = |s: &str| ByteString(s.as_bytes().to_vec());
    Ok(match output.format {
        OutputFormat::DockerConfigJson => Rendered {
            type_: DOCKERCONFIGJSON_TYPE.into(),
            data: [(DOCKERCONFIGJSON_KEY.to_string(), ByteString(render(minted)))].into(),
            labels: BTreeMap::new(),
        },
        OutputFormat::BasicAuth => {
            let e = single()?;
            Rendered {
                type_: BASIC_AUTH_TYPE.into(),
                data: [("username".to_string(), b(&e.username)), ("password".to_string(), b(e.password.expose_secret()))].into(),
                labels: BTreeMap::new(),
            }
        }
        OutputFormat::ArgoCd => {
            let e = single()?;
            let kind = match output.argocd_secret_type.unwrap_or_default() {
                ArgoSecretType::Repository => "repository",
                ArgoSecretType::RepoCreds => "repo-creds",
            };
            let name = output.argocd_name.clone().unwrap_or_else(|| e.registry.clone());
            Rendered {
                type_: "Opaque".into(),
                data: [
                    ("type".to_string(), b("helm")),
                    ("url".to_string(), b(&e.registry)),
                    ("enableOCI".to_string(), b("true")),
                    ("username".to_string(), b(&e.username)),
                    ("password".to_string(), b(e.password.expose_secret())),
                    ("name".to_string(), b(&name)),
                ]
                .into(),
                labels: [(ARGOCD_SECRET_TYPE_LABEL.to_string(), kind.to_string())].into(),
            }
        }
    })
}

/// The Secret as regcred wants it.
pub fn desired(
    cr: &RegistryCredential,
    minted: &Minted,
    inputs: &str,
    renewal_time: DateTime<Utc>,
) -> Result<Secret, WriteError> {
    let placement = Placement {
        namespace: cr.meta().namespace.clone().unwrap_or_default(),
        name: cr.secret_name(),
        owner: cr.controller_owner_ref(&()).unwrap_or_default(),
        template: cr.spec.secret_template.clone().unwrap_or_default(),
        credential_label: (api::CREDENTIAL_LABEL, cr.meta().name.clone().unwrap_or_default()),
        output: cr.spec.output.clone().unwrap_or_default(),
    };
    desired_at(&placement, minted, inputs, renewal_time)
}

/// The Secret for a placement holding `minted`.
pub fn desired_at(p: &Placement, minted: &Minted, inputs: &str, renewal_time: DateTime<Utc>) -> Result<Secret, WriteError> {
    if minted.entries.is_empty() {
        return Err(WriteError::Empty);
    }
    let rendered = render_as(&p.output, minted)?;
    let bytes: usize = rendered.data.iter().map(|(k, v)| k.len() + v.0.len()).sum();
    if bytes > MAX_DATA_BYTES {
        return Err(WriteError::TooLarge { bytes });
    }
    let mut annotations = BTreeMap::new();
    annotations.insert(api::ISSUED_AT_ANNOTATION.into(), rfc3339(minted.issued_at));
    if let Some(na) = minted.expires_at {
        annotations.insert(api::NOT_AFTER_ANNOTATION.into(), rfc3339(na));
    }
    annotations.insert(api::RENEWAL_ANNOTATION.into(), rfc3339(renewal_time));
    annotations.insert(api::INPUTS_ANNOTATION.into(), inputs.to_string());
    annotations.insert(api::DATA_DIGEST_ANNOTATION.into(), data_digest(&rendered.data));
    if let Some(k) = &minted.key {
        annotations.insert(api::KEY_ANNOTATION.into(), k.id.clone());
    }
    Ok(placed(p, rendered, annotations))
}

/// A copy of `source` (one of our Secrets: its data and regcred's
/// annotations) for another placement.
pub fn copy_to(p: &Placement, source: &Secret) -> Option<Secret> {
    let data = source.data.clone().filter(|d| !d.is_empty())?;
    let ann = source.metadata.annotations.clone().unwrap_or_default();
    let ours: BTreeMap<String, String> = ann.into_iter().filter(|(k, _)| k.starts_with("regcred.dev/")).collect();
    let rendered = Rendered { type_: source.type_.clone().unwrap_or_else(|| DOCKERCONFIGJSON_TYPE.into()), data, labels: BTreeMap::new() };
    Some(placed(p, rendered, ours))
}

fn placed(p: &Placement, rendered: Rendered, regcred_annotations: BTreeMap<String, String>) -> Secret {
    let mut labels: BTreeMap<String, String> = p.template.labels.clone();
    labels.extend(rendered.labels);
    labels.insert(api::MANAGED_BY_LABEL.into(), api::MANAGED_BY_VALUE.into());
    labels.insert(p.credential_label.0.into(), p.credential_label.1.clone());
    let mut annotations: BTreeMap<String, String> = p.template.annotations.clone();
    annotations.extend(regcred_annotations);
    Secret {
        metadata: ObjectMeta {
            name: Some(p.name.clone()),
            namespace: Some(p.namespace.clone()),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(vec![p.owner.clone()]),
            ..Default::default()
        },
        type_: Some(rendered.type_),
        data: Some(rendered.data),
        ..Default::default()
    }
}

/// Why writing the Secret failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("a Secret of that name appeared that regcred does not own")]
    Conflict,
    #[error("the Secret changed while regcred was writing it; retrying")]
    Stale,
    #[error("the source returned no registry entry; an empty .dockerconfigjson is never written")]
    Empty,
    #[error("the rendered Secret data is {bytes} bytes, over the Secret size limit")]
    TooLarge { bytes: usize },
    #[error("spec.output: this format holds one registry; the source gave {count}")]
    OneRegistry { count: usize },
    #[error("the API server refused the Secret: {code} {reason}: {message}")]
    Rejected { code: u16, reason: String, message: String },
    #[error("writing the Secret: API server answered {code} {reason}")]
    Api { code: u16, reason: String },
    #[error("writing the Secret: the API server could not be reached")]
    Unreachable,
}

fn write_error(e: kube::Error) -> WriteError {
    match e {
        kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists" => WriteError::Conflict,
        kube::Error::Api(s) if s.code == 409 => WriteError::Stale,
        // Refusals that retrying soon will not change: admission, quota,
        // RBAC, size. The message names fields, not data.
        kube::Error::Api(s) if matches!(s.code, 400 | 403 | 413 | 422) => {
            WriteError::Rejected { code: s.code, reason: s.reason, message: s.message.chars().take(400).collect() }
        }
        kube::Error::Api(s) => WriteError::Api { code: s.code, reason: s.reason },
        _ => WriteError::Unreachable,
    }
}

/// Write the Secret. A new one is created (so a Secret someone else creates
/// at the same moment is never merged into); ours is updated in place with
/// server-side apply, conditional on the resourceVersion we read, so its UID
/// never changes and a concurrent edit is never overwritten blindly.
pub async fn write(api: &Api<Secret>, existing: Option<&Secret>, desired: Secret) -> Result<Secret, WriteError> {
    write_over(api, existing.map(|s| &s.metadata), desired).await
}

/// [`write`], given only the existing Secret's metadata.
pub async fn write_over(api: &Api<Secret>, existing: Option<&ObjectMeta>, mut desired: Secret) -> Result<Secret, WriteError> {
    let name = desired.metadata.name.clone().unwrap_or_default();
    match existing {
        None => api
            .create(&PostParams { dry_run: false, field_manager: Some(api::FIELD_MANAGER.into()) }, &desired)
            .await
            .map_err(write_error),
        Some(current) => {
            desired.metadata.resource_version = current.resource_version.clone();
            let mut body = serde_json::to_value(&desired).expect("a Secret serialises");
            body["apiVersion"] = "v1".into();
            body["kind"] = "Secret".into();
            api.patch(&name, &PatchParams::apply(api::FIELD_MANAGER).force(), &Patch::Apply(body))
                .await
                .map_err(write_error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::RegistryAuth;
    use secrecy::SecretString;

    fn minted(entries: &[(&str, &str, &str)]) -> Minted {
        Minted {
            entries: entries
                .iter()
                .map(|(r, u, p)| RegistryAuth { registry: r.to_string(), username: u.to_string(), password: SecretString::from(p.to_string()) })
                .collect(),
            issued_at: DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
            expires_at: None,
            key: None,
        }
    }

    #[test]
    fn renders_what_the_kubelet_reads() {
        // (entries, expected JSON)
        let cases: Vec<(Vec<(&str, &str, &str)>, Value)> = vec![
            (
                vec![("registry.example.com", "robot", "s3cret")],
                json!({"auths": {"registry.example.com": {"username": "robot", "password": "s3cret", "auth": "cm9ib3Q6czNjcmV0"}}}),
            ),
            (
                vec![("a.example:5000", "AWS", "pw"), ("https://index.docker.io/v1/", "u", "p:with:colons")],
                json!({"auths": {
                    "a.example:5000": {"username": "AWS", "password": "pw", "auth": "QVdTOnB3"},
                    "https://index.docker.io/v1/": {"username": "u", "password": "p:with:colons", "auth": "dTpwOndpdGg6Y29sb25z"}
                }}),
            ),
        ];
        for (entries, want) in cases {
            let data = render(&minted(&entries));
            let got: Value = serde_json::from_slice(&data).unwrap();
            assert_eq!(got, want);
            assert!(is_complete(&data));
        }
    }

    #[test]
    fn ecr_tokens_round_trip_into_auth() {
        // ECR's token is base64("AWS:<password>"): the rendered auth equals it.
        let token = base64::engine::general_purpose::STANDARD.encode("AWS:eyJwYXlsb2Fk");
        let a = crate::source::decode_ecr_token("1.dkr.ecr.eu-west-1.amazonaws.com", Some(&token)).unwrap();
        let m = Minted { entries: vec![a], issued_at: Utc::now(), expires_at: None, key: None };
        let v: Value = serde_json::from_slice(&render(&m)).unwrap();
        assert_eq!(v["auths"]["1.dkr.ecr.eu-west-1.amazonaws.com"]["auth"], json!(token));
    }

    #[test]
    fn never_renders_an_empty_secret() {
        let cr: RegistryCredential = serde_json::from_value(json!({
            "apiVersion": "regcred.dev/v1alpha1", "kind": "RegistryCredential",
            "metadata": {"name": "c", "namespace": "n", "uid": "u"},
            "spec": {"source": {"basic": {"secretRef": {"name": "s"}, "registries": ["r"]}}}
        }))
        .unwrap();
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        assert!(matches!(desired(&cr, &minted(&[]), "g1", now), Err(WriteError::Empty)));
        let s = desired(&cr, &minted(&[("r", "u", "p")]), "g1", now).unwrap();
        assert_eq!(s.type_.as_deref(), Some(DOCKERCONFIGJSON_TYPE));
        let owner = &s.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.uid.as_str(), owner.controller), ("u", Some(true)));
        assert!(read_annotations(&s).intact);
    }

    #[test]
    fn other_formats_hold_one_registry() {
        use crate::api::{OutputFormat, SecretOutput};
        let m = minted(&[("r.example:5000", "robot", "pw")]);
        let argo = render_as(&SecretOutput { format: OutputFormat::ArgoCd, ..Default::default() }, &m).unwrap();
        let keys: Vec<&str> = argo.data.keys().map(String::as_str).collect();
        assert_eq!(keys, ["enableOCI", "name", "password", "type", "url", "username"]);
        assert_eq!(argo.data["url"].0, b"r.example:5000");
        assert_eq!(argo.labels[ARGOCD_SECRET_TYPE_LABEL], "repository");
        let basic = render_as(&SecretOutput { format: OutputFormat::BasicAuth, ..Default::default() }, &m).unwrap();
        assert_eq!((basic.type_.as_str(), basic.data.len()), (BASIC_AUTH_TYPE, 2));
        let two = minted(&[("a", "u", "p"), ("b", "u", "p")]);
        assert!(matches!(render_as(&SecretOutput { format: OutputFormat::ArgoCd, ..Default::default() }, &two), Err(WriteError::OneRegistry { count: 2 })));
        // a pull Secret's digest is still the digest of .dockerconfigjson alone
        let d = render_as(&SecretOutput::default(), &m).unwrap();
        assert_eq!(data_digest(&d.data), digest(&render(&m)));
    }

    #[test]
    fn incomplete_configs() {
        for bad in [
            &b""[..],
            b"{}",
            br#"{"auths":{}}"#,
            br#"{"auths":{"r":{"username":"u"}}}"#,
            br#"{"auths":{"r":{"username":"u","password":""}}}"#,
            br#"{"auths":{"r":{"auth":""}}}"#,
        ] {
            assert!(!is_complete(bad), "{}", String::from_utf8_lossy(bad));
        }
        assert!(is_complete(br#"{"auths":{"r":{"auth":"dTpw"}}}"#));
    }
}
