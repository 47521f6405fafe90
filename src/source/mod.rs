//! Token sources: each turns a `spec.source` into a [`Minted`] credential.
//!
//! Sources know nothing of the Secret they end up in, of status or of requeues.
//! They read the Secrets they reference on demand (never cached) through
//! [`SecretReader`], always in the credential's own namespace.

mod basic;
mod ecr;
mod error;
mod http;
pub mod httpclient;
pub mod login;
pub mod oauth2;
mod reader;
pub mod rotate;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};

pub use ecr::{decode_token as decode_ecr_token, EcrMinter, EcrSettings};
pub use error::SourceError;
pub use reader::{summarize_kube_error, SecretReader};

use crate::api::CredentialSource;
use crate::egress::EgressPolicy;

/// A freshly minted registry credential.
#[derive(Debug, Clone)]
pub struct Minted {
    /// One entry per registry host (a key of `.dockerconfigjson`'s `auths`).
    pub entries: Vec<RegistryAuth>,
    /// When the credential was issued (the mint's clock).
    pub issued_at: DateTime<Utc>,
    /// When it stops working; `None` for credentials without an expiry.
    pub expires_at: Option<DateTime<Utc>>,
    /// The key a `rotate` source created at the registry for it.
    pub key: Option<KeyRef>,
}

/// A key at a registry vendor: its id (what revokes it) and name. Never its
/// secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRef {
    pub id: String,
    pub name: String,
}

/// The username and password for one registry host. `Debug` redacts the password.
#[derive(Debug, Clone)]
pub struct RegistryAuth {
    pub registry: String,
    pub username: String,
    pub password: SecretString,
}

impl Minted {
    /// The same username and password for several registries.
    pub fn for_all(
        registries: &[String],
        username: &str,
        password: &SecretString,
        issued_at: DateTime<Utc>,
        expires_at: Option<DateTime<Utc>>,
    ) -> Self {
        let entries = registries
            .iter()
            .map(|r| RegistryAuth { registry: r.clone(), username: username.to_string(), password: password.clone() })
            .collect();
        Self { entries, issued_at, expires_at, key: None }
    }

    /// The registry hosts, in order.
    pub fn registries(&self) -> Vec<String> {
        self.entries.iter().map(|e| e.registry.clone()).collect()
    }

    /// Check what a source handed back before it goes anywhere: usernames
    /// the kubelet can use (it splits `auth` at the first `:`), passwords
    /// without control characters, and an expiry no further away than
    /// regcred believes (see `schedule::MAX_LIFETIME`).
    pub fn checked(mut self) -> Result<Self, SourceError> {
        let invalid = |problem: String| SourceError::InvalidResponse { endpoint: "source".into(), problem };
        for e in &self.entries {
            if e.username.is_empty() || e.username.contains(':') || e.username.chars().any(char::is_control) {
                return Err(invalid(format!("the username for {} is empty or contains ':' or a control character", e.registry)));
            }
            if e.password.expose_secret().chars().any(char::is_control) {
                return Err(invalid(format!("the password for {} contains a control character", e.registry)));
            }
        }
        self.expires_at = self.expires_at.map(|t| crate::schedule::clamp_expiry(self.issued_at, t));
        Ok(self)
    }
}

pub type MintFuture<'a> = Pin<Box<dyn Future<Output = Result<Minted, SourceError>> + Send + 'a>>;

/// Something that mints registry credentials.
pub trait TokenSource: Send + Sync {
    fn mint(&self) -> MintFuture<'_>;
}

/// Where and how much a source may fetch: the admin's egress policy and the
/// response size cap.
#[derive(Clone, Debug)]
pub struct NetPolicy {
    pub egress: Arc<EgressPolicy>,
    pub max_response_bytes: usize,
    /// The AWS SDK's HTTP client, bound to `egress` (see [`NetPolicy::new`]).
    pub aws_http: aws_smithy_runtime_api::client::http::SharedHttpClient,
}

impl NetPolicy {
    pub fn new(egress: EgressPolicy, max_response_bytes: usize) -> Self {
        let egress = Arc::new(egress);
        Self { aws_http: crate::egress::aws_http_client(egress.clone()), egress, max_response_bytes }
    }
}

impl Default for NetPolicy {
    fn default() -> Self {
        Self::new(EgressPolicy::default(), httpclient::DEFAULT_MAX_RESPONSE_BYTES)
    }
}

/// Everything a source may need beyond its spec.
#[derive(Clone)]
pub struct SourceContext {
    pub secrets: SecretReader,
    /// Namespace of the RegistryCredential: Secrets and ServiceAccounts are
    /// read there only.
    pub namespace: String,
    /// Name of the RegistryCredential (with the namespace, the AWS role
    /// session name).
    pub name: String,
    /// A ClusterRegistryCredential (an admin's object): the operator's own
    /// AWS identity needs no per-namespace permission.
    pub cluster_scoped: bool,
    pub now: fn() -> DateTime<Utc>,
    pub ecr: EcrMinter,
    pub net: NetPolicy,
    /// The asking credential's renewal policy and jitter seed: a shared
    /// (cached) token is only handed out while its renewal instant for this
    /// credential is still ahead.
    pub policy: crate::schedule::Policy,
    pub seed: u64,
    /// For `rotate` sources: the name of the key to create, recorded in
    /// status before the vendor is asked.
    pub key_name: Option<String>,
}

/// Build the source named by the spec.
pub fn from_spec(spec: &CredentialSource, cx: SourceContext) -> Result<Box<dyn TokenSource>, SourceError> {
    match (&spec.ecr, &spec.oauth2, &spec.http, &spec.basic, &spec.rotate) {
        (Some(s), None, None, None, None) => Ok(Box::new(ecr::EcrSource::new(s.clone(), cx)?)),
        (None, Some(s), None, None, None) => Ok(Box::new(oauth2::OAuth2::new(s.clone(), cx)?)),
        (None, None, Some(s), None, None) => Ok(Box::new(http::HttpToken::new(s.clone(), cx)?)),
        (None, None, None, Some(s), None) => Ok(Box::new(basic::Basic::new(s.clone(), cx))),
        (None, None, None, None, Some(s)) => Ok(Box::new(rotate::Rotate::new(s.clone(), cx)?)),
        _ => Err(SourceError::InvalidSpec {
            field: "spec.source",
            problem: "exactly one of ecr, oauth2, http, basic or rotate must be set".into(),
        }),
    }
}

/// Revoke a key a `rotate` source created that will not be used (the
/// attempt failed after the vendor made it).
pub async fn discard(spec: &CredentialSource, cx: &SourceContext, key: &KeyRef) -> Result<(), SourceError> {
    let Some(r) = &spec.rotate else { return Ok(()) };
    rotate::Vendor::connect(r, cx).await?.revoke(&key.id).await
}

/// Whether the spec asks to verify a new credential at each registry before
/// it is written, and whether plain http may be used for that. (`basic`
/// verifies inside its own mint.)
pub fn verify_settings(spec: &CredentialSource) -> Option<bool> {
    if let Some(o) = &spec.oauth2 {
        return (o.client.verify == Some(true)).then_some(o.client.allow_insecure_http == Some(true));
    }
    if let Some(h) = &spec.http {
        return (h.client.verify == Some(true)).then_some(h.client.allow_insecure_http == Some(true));
    }
    if let Some(e) = &spec.ecr {
        return (e.verify == Some(true)).then_some(e.allow_insecure_http == Some(true));
    }
    if let Some(r) = &spec.rotate {
        return (r.verify != Some(false)).then_some(r.allow_insecure_http == Some(true));
    }
    None
}

/// Verify before swap: log in to each registry with the new credential. A
/// registry that refuses it (401/403) is `RegistryRejected`; other failures
/// keep their own category.
pub async fn verify_at_registries(minted: &Minted, allow_http: bool, net: &NetPolicy) -> Result<(), SourceError> {
    let client = httpclient::build_with_roots(None, std::time::Duration::from_secs(10), net)?;
    for entry in &minted.entries {
        match login::check(&client, entry, allow_http).await {
            Ok(()) => {}
            Err(SourceError::HttpStatus { status: status @ (401 | 403), .. }) => {
                return Err(SourceError::RegistryRejected { registry: entry.registry.clone(), status });
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The endpoint origin a source dials (scheme, host and port), which its
/// attempts' slots count against: the token URL, ECR's endpoint (the
/// override, else the region's), or a `rotate` vendor's API. `None` for
/// `basic` (it reads a Secret).
/// URLs that do not parse share one origin (their mints fail at once);
/// the text is never used, since the queue's record logs origins.
pub fn origin(spec: &CredentialSource) -> Option<String> {
    let of = |u: &str| match url::Url::parse(u) {
        Ok(url) => url.origin().ascii_serialization(),
        Err(_) => "invalid-url".into(),
    };
    if let Some(e) = &spec.ecr {
        return Some(match &e.endpoint {
            Some(endpoint) => of(endpoint),
            None if e.public == Some(true) => "https://api.ecr-public.us-east-1.amazonaws.com".into(),
            None => of(&format!("https://api.ecr.{}.amazonaws.com", e.region)),
        });
    }
    if let Some(o) = &spec.oauth2 {
        return Some(of(&o.token_url));
    }
    if let Some(r) = &spec.rotate {
        return Some(rotate::api_url(r).map(|u| u.origin().ascii_serialization()).unwrap_or_else(|_| "invalid-url".into()));
    }
    spec.http.as_ref().map(|h| of(&h.url))
}

/// Names of the Secrets a source reads, in the credential's namespace. A
/// change to any of them triggers a new mint.
pub fn referenced_secrets(spec: &CredentialSource) -> Vec<String> {
    let mut names = Vec::new();
    if let Some(e) = &spec.ecr {
        names.extend(e.credentials_secret_ref.as_ref().map(|r| r.name.clone()));
    }
    let tls = |t: &Option<crate::api::TlsConfig>, names: &mut Vec<String>| {
        if let Some(t) = t {
            names.extend(t.ca_bundle_secret_ref.as_ref().map(|r| r.name.clone()));
            names.extend(t.client_certificate_secret_ref.as_ref().map(|r| r.name.clone()));
        }
    };
    if let Some(o) = &spec.oauth2 {
        names.push(o.client_secret_ref.name.clone());
        tls(&o.client.tls, &mut names);
    }
    if let Some(h) = &spec.http {
        names.extend(h.headers.iter().filter_map(|x| x.value_from.as_ref().map(|r| r.name.clone())));
        if let Some(a) = &h.auth {
            names.extend(a.basic.as_ref().map(|r| r.name.clone()));
            names.extend(a.bearer.as_ref().map(|r| r.name.clone()));
        }
        tls(&h.client.tls, &mut names);
    }
    if let Some(b) = &spec.basic {
        names.push(b.secret_ref.name.clone());
        tls(&b.tls, &mut names);
    }
    if let Some(r) = &spec.rotate {
        names.push(r.admin_secret_ref.name.clone());
        tls(&r.tls, &mut names);
    }
    names.sort();
    names.dedup();
    names
}

/// The longest duration regcred parses from a spec (every field has a
/// smaller bound at admission).
const MAX_PARSED: std::time::Duration = std::time::Duration::from_secs(10 * 366 * 24 * 3600);

/// Parse a Go duration (`90s`, `1h30m`, `1.5h`) from the spec. Checked all
/// the way: a value past ten years, or one that overflows, is an error, never
/// a panic (kube's own parser panics on `6000000000000000h`).
pub fn parse_duration(field: &'static str, value: &str) -> Result<chrono::Duration, SourceError> {
    let bad = |problem: &str| SourceError::InvalidSpec { field, problem: format!("{value:?} {problem}") };
    let mut rest = value.trim();
    if rest.is_empty() || rest.len() > 64 {
        return Err(bad("is not a duration such as 30s, 10m or 1h"));
    }
    let mut total = std::time::Duration::ZERO;
    while !rest.is_empty() {
        let unit_at = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(|| bad("has a number without a unit"))?;
        let (number, tail) = rest.split_at(unit_at);
        let unit_len = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        rest = tail;
        let n: f64 = number.parse().map_err(|_| bad("is not a duration such as 30s, 10m or 1h"))?;
        let unit_secs = match unit {
            "ns" => 1e-9,
            "us" | "\u{00b5}s" | "\u{03bc}s" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad("has an unknown unit (use ns, us, ms, s, m or h)")),
        };
        let part = std::time::Duration::try_from_secs_f64(n * unit_secs).map_err(|_| bad("is too long"))?;
        total = total.checked_add(part).filter(|t| *t <= MAX_PARSED).ok_or_else(|| bad("is too long"))?;
    }
    chrono::Duration::from_std(total).map_err(|_| bad("is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_checked() {
        let d = |s: &str| parse_duration("f", s).map(|d| d.num_milliseconds());
        assert_eq!(d("90s").unwrap(), 90_000);
        assert_eq!(d("1h30m").unwrap(), 5_400_000);
        assert_eq!(d("1.5h").unwrap(), 5_400_000);
        assert_eq!(d("250ms").unwrap(), 250);
        assert_eq!(d("0s").unwrap(), 0);
        // what crashed kube's parser: errors, never panics
        for bad in ["6000000000000000h", "300000000000h", "1e400h", "99999999999999999999999999s", "", "10", "5d", "h", "1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h"] {
            assert!(d(bad).is_err(), "{bad}");
        }
        assert!(parse_duration("spec.renewBefore", "6000000000000000h").unwrap_err().to_string().starts_with("spec.renewBefore:"));
    }
}
