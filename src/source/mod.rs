//! Token sources: each turns a `spec.source` into a [`Minted`] credential.
//!
//! Sources know nothing of the Secret they end up in, of status or of requeues.
//! They read the Secrets they reference on demand (never cached) through
//! [`SecretReader`], always in the credential's own namespace.

mod basic;
mod ecr;
mod error;
mod http;
mod httpclient;
mod login;
mod oauth2;
mod reader;

use std::future::Future;
use std::pin::Pin;

use chrono::{DateTime, Utc};
use secrecy::SecretString;

pub use ecr::{decode_token as decode_ecr_token, EcrMinter, EcrSettings};
pub use error::SourceError;
pub use reader::{summarize_kube_error, SecretReader};

use crate::api::CredentialSource;

/// A freshly minted registry credential.
#[derive(Debug, Clone)]
pub struct Minted {
    /// One entry per registry host (a key of `.dockerconfigjson`'s `auths`).
    pub entries: Vec<RegistryAuth>,
    /// When the credential was issued (the mint's clock).
    pub issued_at: DateTime<Utc>,
    /// When it stops working; `None` for credentials without an expiry.
    pub expires_at: Option<DateTime<Utc>>,
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
        Self { entries, issued_at, expires_at }
    }

    /// The registry hosts, in order.
    pub fn registries(&self) -> Vec<String> {
        self.entries.iter().map(|e| e.registry.clone()).collect()
    }
}

pub type MintFuture<'a> = Pin<Box<dyn Future<Output = Result<Minted, SourceError>> + Send + 'a>>;

/// Something that mints registry credentials.
pub trait TokenSource: Send + Sync {
    fn mint(&self) -> MintFuture<'_>;
}

/// Everything a source may need beyond its spec.
#[derive(Clone)]
pub struct SourceContext {
    pub secrets: SecretReader,
    /// Namespace of the RegistryCredential: Secrets and ServiceAccounts are
    /// read there only; also the default AWS session name.
    pub namespace: String,
    pub now: fn() -> DateTime<Utc>,
    pub ecr: EcrMinter,
}

/// Build the source named by the spec.
pub fn from_spec(spec: &CredentialSource, cx: SourceContext) -> Result<Box<dyn TokenSource>, SourceError> {
    match (&spec.ecr, &spec.oauth2, &spec.http, &spec.basic) {
        (Some(s), None, None, None) => Ok(Box::new(ecr::EcrSource::new(s.clone(), cx)?)),
        (None, Some(s), None, None) => Ok(Box::new(oauth2::OAuth2::new(s.clone(), cx)?)),
        (None, None, Some(s), None) => Ok(Box::new(http::HttpToken::new(s.clone(), cx)?)),
        (None, None, None, Some(s)) => Ok(Box::new(basic::Basic::new(s.clone(), cx))),
        _ => Err(SourceError::InvalidSpec {
            field: "spec.source",
            problem: "exactly one of ecr, oauth2, http or basic must be set".into(),
        }),
    }
}

/// Names of the Secrets a source reads, in the credential's namespace. A
/// change to any of them triggers a new mint.
pub fn referenced_secrets(spec: &CredentialSource) -> Vec<String> {
    let mut names = Vec::new();
    if let Some(e) = &spec.ecr {
        names.extend(e.credentials_secret_ref.as_ref().map(|r| r.name.clone()));
    }
    let tls = |c: &crate::api::HttpClientSettings, names: &mut Vec<String>| {
        if let Some(t) = &c.tls {
            names.extend(t.ca_bundle_secret_ref.as_ref().map(|r| r.name.clone()));
            names.extend(t.client_certificate_secret_ref.as_ref().map(|r| r.name.clone()));
        }
    };
    if let Some(o) = &spec.oauth2 {
        names.push(o.client_secret_ref.name.clone());
        tls(&o.client, &mut names);
    }
    if let Some(h) = &spec.http {
        names.extend(h.headers.iter().filter_map(|x| x.value_from.as_ref().map(|r| r.name.clone())));
        if let Some(a) = &h.auth {
            names.extend(a.basic.as_ref().map(|r| r.name.clone()));
            names.extend(a.bearer.as_ref().map(|r| r.name.clone()));
        }
        tls(&h.client, &mut names);
    }
    if let Some(b) = &spec.basic {
        names.push(b.secret_ref.name.clone());
    }
    names.sort();
    names.dedup();
    names
}

/// Parse a Go duration from the spec (already validated at admission).
pub fn parse_duration(field: &'static str, value: &str) -> Result<chrono::Duration, SourceError> {
    let d: kube::core::Duration = value.parse().map_err(|_| SourceError::InvalidSpec {
        field,
        problem: format!("{value:?} is not a duration such as 30s, 10m or 1h"),
    })?;
    // The CRD's pattern admits no sign, so there is nothing negative to reject.
    let std: std::time::Duration = d.into();
    chrono::Duration::from_std(std).map_err(|_| SourceError::InvalidSpec {
        field,
        problem: "is too long".into(),
    })
}
