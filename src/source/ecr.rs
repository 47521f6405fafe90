//! `ecr`: AWS ECR `GetAuthorizationToken` (and ECR Public's), with the
//! operator's identity, static keys, an assumed role, or a per-credential web
//! identity. Tokens are shared between credentials whose effective source is
//! identical, including the identity, so one namespace never receives a token
//! minted with another's secrets.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_credential_types::Credentials;
use aws_sdk_ecr::error::ProvideErrorMetadata;
use base64::Engine;
use chrono::{DateTime, Utc};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::PostParams;
use kube::{Api, Client};
use secrecy::{ExposeSecret, SecretString};

use super::reader::{summarize_kube_error, take_key};
use super::{MintFuture, Minted, RegistryAuth, SourceContext, SourceError, TokenSource};
use crate::api::EcrSource as EcrSpec;

/// Registry host of ECR Public.
pub const ECR_PUBLIC_HOST: &str = "public.ecr.aws";
const ECR_PUBLIC_REGION: &str = "us-east-1";
const DEFAULT_AUDIENCE: &str = "sts.amazonaws.com";

/// Operator-wide ECR settings.
#[derive(Clone, Debug)]
pub struct EcrSettings {
    /// Namespaces whose credentials may use the operator's own AWS identity;
    /// `*` allows all.
    pub identity_namespaces: Vec<String>,
    /// Equality-based label selector (`k=v,k2!=v,k3,!k4`) on Namespaces whose
    /// credentials may use the operator's own AWS identity.
    pub identity_namespace_selector: Option<String>,
    /// Attempts per AWS call, including the first (SDK standard retries).
    pub max_attempts: u32,
    /// Timeout of one AWS operation, retries included.
    pub operation_timeout: StdDuration,
}

impl Default for EcrSettings {
    fn default() -> Self {
        Self {
            identity_namespaces: Vec::new(),
            identity_namespace_selector: None,
            max_attempts: 3,
            operation_timeout: StdDuration::from_secs(30),
        }
    }
}

/// Shared ECR state: settings, the operator's credential chain and the token
/// cache that lets one mint serve many credentials.
#[derive(Clone)]
pub struct EcrMinter {
    inner: Arc<Inner>,
}

struct Inner {
    settings: EcrSettings,
    client: Client,
    operator_chain: tokio::sync::OnceCell<Option<SharedCredentialsProvider>>,
    shared: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Minted>>>>>,
}

impl EcrMinter {
    pub fn new(client: Client, settings: EcrSettings) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings,
                client,
                operator_chain: tokio::sync::OnceCell::new(),
                shared: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Whether credentials in `namespace` may use the operator's own identity.
    async fn identity_allowed(&self, namespace: &str) -> Result<bool, SourceError> {
        let s = &self.inner.settings;
        if s.identity_namespaces.iter().any(|n| n == "*" || n == namespace) {
            return Ok(true);
        }
        let Some(selector) = &s.identity_namespace_selector else { return Ok(false) };
        let ns = Api::<Namespace>::all(self.inner.client.clone())
            .get_metadata(namespace)
            .await
            .map_err(|e| SourceError::SecretRead { name: format!("namespace/{namespace}"), reason: summarize_kube_error(&e) })?;
        Ok(selector_matches(selector, &ns.metadata.labels.unwrap_or_default()))
    }

    /// The standard AWS chain (IRSA web identity, EKS Pod Identity,
    /// environment, instance profile), built once.
    async fn operator_credentials(&self) -> Result<SharedCredentialsProvider, SourceError> {
        self.inner
            .operator_chain
            .get_or_init(|| async { aws_config::defaults(BehaviorVersion::latest()).load().await.credentials_provider() })
            .await
            .clone()
            .ok_or_else(|| SourceError::Aws {
                operation: "LoadCredentials",
                code: "NoCredentials".into(),
                message: "the operator has no AWS identity configured".into(),
            })
    }

    /// Run `mint` at most once per key while its result is less than half
    /// through its lifetime; callers with the same key get the same token.
    async fn shared<F>(&self, key: String, now: DateTime<Utc>, mint: F) -> Result<Minted, SourceError>
    where
        F: std::future::Future<Output = Result<Minted, SourceError>>,
    {
        let slot = {
            let mut map = self.inner.shared.lock().expect("ECR cache lock");
            // Forget slots whose token has expired, so the map stays small.
            map.retain(|_, v| match v.try_lock() {
                Ok(g) => g.as_ref().and_then(|m| m.expires_at).is_none_or(|e| e > now),
                Err(_) => true,
            });
            map.entry(key).or_default().clone()
        };
        let mut cached = slot.lock().await;
        if let Some(m) = cached.as_ref() {
            if let Some(exp) = m.expires_at {
                let half = m.issued_at + (exp - m.issued_at) / 2;
                if now < half {
                    return Ok(m.clone());
                }
            }
        }
        let fresh = mint.await?;
        *cached = Some(fresh.clone());
        Ok(fresh)
    }
}

/// Does an equality-based selector match these labels?
pub fn selector_matches(selector: &str, labels: &std::collections::BTreeMap<String, String>) -> bool {
    selector.split(',').map(str::trim).filter(|t| !t.is_empty()).all(|term| {
        if let Some((k, v)) = term.split_once("!=") {
            labels.get(k.trim()).map(String::as_str) != Some(v.trim())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            labels.get(k.trim()).map(String::as_str) == Some(v.trim())
        } else if let Some(k) = term.strip_prefix('!') {
            !labels.contains_key(k.trim())
        } else {
            labels.contains_key(term)
        }
    })
}

pub struct EcrSource {
    spec: EcrSpec,
    cx: SourceContext,
}

impl EcrSource {
    pub fn new(spec: EcrSpec, cx: SourceContext) -> Result<Self, SourceError> {
        for (field, url) in [("spec.source.ecr.endpoint", &spec.endpoint), ("spec.source.ecr.stsEndpoint", &spec.sts_endpoint)] {
            if let Some(u) = url {
                if !u.starts_with("https://") && spec.allow_insecure_http != Some(true) {
                    return Err(SourceError::InvalidSpec {
                        field,
                        problem: "must use https:// (set allowInsecureHTTP: true to allow http://)".into(),
                    });
                }
            }
        }
        if spec.web_identity.is_some() && spec.role_arn.is_none() {
            return Err(SourceError::InvalidSpec { field: "spec.source.ecr.roleArn", problem: "webIdentity requires roleArn".into() });
        }
        Ok(Self { spec, cx })
    }

    fn region(&self) -> &str {
        if self.spec.public == Some(true) { ECR_PUBLIC_REGION } else { &self.spec.region }
    }

    fn session_name(&self) -> String {
        self.spec.role_session_name.clone().unwrap_or_else(|| {
            let mut s = format!("regcred-{}", self.cx.namespace);
            s.truncate(64);
            s
        })
    }

    fn retry(&self) -> (RetryConfig, TimeoutConfig) {
        let s = &self.cx.ecr.inner.settings;
        (
            RetryConfig::standard().with_max_attempts(s.max_attempts.max(1)),
            TimeoutConfig::builder().operation_timeout(s.operation_timeout).build(),
        )
    }

    fn sts(&self, creds: Option<SharedCredentialsProvider>) -> aws_sdk_sts::Client {
        let (retry, timeout) = self.retry();
        let mut b = aws_sdk_sts::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(self.region().to_string()))
            .retry_config(retry)
            .timeout_config(timeout);
        if let Some(c) = creds {
            b = b.credentials_provider(c);
        }
        if let Some(e) = &self.spec.sts_endpoint {
            b = b.endpoint_url(e);
        }
        aws_sdk_sts::Client::from_conf(b.build())
    }

    /// Identity part of the sharing key, and how to get the base credentials.
    async fn identity(&self) -> Result<(String, Identity), SourceError> {
        let ns = &self.cx.namespace;
        if let Some(w) = &self.spec.web_identity {
            return Ok((format!("web:{ns}/{}", w.service_account_name), Identity::Web(w.clone())));
        }
        if let Some(r) = &self.spec.credentials_secret_ref {
            let (rv, mut data) = self.cx.secrets.versioned_data(&r.name).await?;
            let id = take_key(&mut data, &r.name, "AWS_ACCESS_KEY_ID")?;
            let secret = take_key(&mut data, &r.name, "AWS_SECRET_ACCESS_KEY")?;
            let token = take_key(&mut data, &r.name, "AWS_SESSION_TOKEN").ok();
            let creds = Credentials::new(
                id.expose_secret(),
                secret.expose_secret(),
                token.map(|t| t.expose_secret().to_string()),
                None,
                "regcred-secret",
            );
            return Ok((format!("keys:{ns}/{}@{rv}", r.name), Identity::Static(SharedCredentialsProvider::new(creds))));
        }
        if !self.cx.ecr.identity_allowed(ns).await? {
            return Err(SourceError::IdentityNotAllowed { namespace: ns.clone() });
        }
        Ok(("operator".to_string(), Identity::Operator))
    }

    async fn credentials(&self, identity: Identity) -> Result<SharedCredentialsProvider, SourceError> {
        let base = match identity {
            Identity::Web(w) => {
                let role = self.spec.role_arn.clone().unwrap_or_default();
                let token = self.service_account_token(&w.service_account_name, w.audience.as_deref()).await?;
                let out = self
                    .sts(None)
                    .assume_role_with_web_identity()
                    .role_arn(role)
                    .role_session_name(self.session_name())
                    .web_identity_token(token.expose_secret())
                    .duration_seconds(3600)
                    .send()
                    .await
                    .map_err(|e| aws_error("AssumeRoleWithWebIdentity", e))?;
                return sts_credentials(out.credentials(), "AssumeRoleWithWebIdentity");
            }
            Identity::Static(c) => c,
            Identity::Operator => self.cx.ecr.operator_credentials().await?,
        };
        let Some(role) = &self.spec.role_arn else { return Ok(base) };
        let out = self
            .sts(Some(base))
            .assume_role()
            .role_arn(role)
            .role_session_name(self.session_name())
            .set_external_id(self.spec.external_id.clone())
            .duration_seconds(3600)
            .send()
            .await
            .map_err(|e| aws_error("AssumeRole", e))?;
        sts_credentials(out.credentials(), "AssumeRole")
    }

    async fn service_account_token(&self, sa: &str, audience: Option<&str>) -> Result<SecretString, SourceError> {
        let api: Api<ServiceAccount> = Api::namespaced(self.cx.ecr.inner.client.clone(), &self.cx.namespace);
        let req = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: Some(vec![audience.unwrap_or(DEFAULT_AUDIENCE).to_string()]),
                expiration_seconds: Some(600),
                ..Default::default()
            }),
            ..Default::default()
        };
        let out = api.create_token_request(sa, &PostParams::default(), &req).await.map_err(|e| match &e {
            kube::Error::Api(s) if s.code == 404 => SourceError::SecretNotFound {
                namespace: self.cx.namespace.clone(),
                name: format!("serviceaccount/{sa}"),
            },
            _ => SourceError::SecretRead { name: format!("serviceaccount/{sa} token"), reason: summarize_kube_error(&e) },
        })?;
        let token = out.status.and_then(|s| s.token).unwrap_or_default();
        if token.is_empty() {
            return Err(SourceError::InvalidResponse { endpoint: "TokenRequest".into(), problem: "empty token".into() });
        }
        Ok(SecretString::from(token))
    }

    async fn get_token(&self, creds: SharedCredentialsProvider) -> Result<Minted, SourceError> {
        let (retry, timeout) = self.retry();
        let issued_at = (self.cx.now)();
        if self.spec.public == Some(true) {
            let mut b = aws_sdk_ecrpublic::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .region(Region::new(ECR_PUBLIC_REGION))
                .credentials_provider(creds)
                .retry_config(retry)
                .timeout_config(timeout);
            if let Some(e) = &self.spec.endpoint {
                b = b.endpoint_url(e);
            }
            let out = aws_sdk_ecrpublic::Client::from_conf(b.build())
                .get_authorization_token()
                .send()
                .await
                .map_err(|e| aws_error("GetAuthorizationToken", e))?;
            let data = out.authorization_data().ok_or_else(|| invalid("no authorizationData"))?;
            let entry = decode_token(ECR_PUBLIC_HOST, data.authorization_token())?;
            let expires_at = data.expires_at().and_then(|t| DateTime::from_timestamp(t.secs(), 0));
            return Ok(Minted { entries: vec![entry], issued_at, expires_at });
        }
        let mut b = aws_sdk_ecr::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(self.spec.region.clone()))
            .credentials_provider(creds)
            .retry_config(retry)
            .timeout_config(timeout);
        if let Some(e) = &self.spec.endpoint {
            b = b.endpoint_url(e);
        }
        // registryIds is deprecated by AWS (a token serves every registry the
        // principal may read) but still selects which proxyEndpoints come back,
        // one entry per registry in the Secret.
        #[allow(deprecated)]
        let out = aws_sdk_ecr::Client::from_conf(b.build())
            .get_authorization_token()
            .set_registry_ids(self.spec.registry_ids.clone())
            .send()
            .await
            .map_err(|e| aws_error("GetAuthorizationToken", e))?;
        let mut entries = Vec::new();
        let mut expires_at: Option<DateTime<Utc>> = None;
        for d in out.authorization_data() {
            let host = d.proxy_endpoint().map(registry_host).ok_or_else(|| invalid("authorizationData without proxyEndpoint"))?;
            entries.push(decode_token(&host, d.authorization_token())?);
            let exp = d.expires_at().and_then(|t| DateTime::from_timestamp(t.secs(), 0));
            // Several tokens: the Secret is as fresh as its oldest one.
            expires_at = match (expires_at, exp) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        if entries.is_empty() {
            return Err(invalid("no authorizationData"));
        }
        Ok(Minted { entries, issued_at, expires_at })
    }
}

enum Identity {
    Operator,
    Static(SharedCredentialsProvider),
    Web(crate::api::WebIdentity),
}

impl TokenSource for EcrSource {
    fn mint(&self) -> MintFuture<'_> {
        Box::pin(async move {
            let (identity_key, identity) = self.identity().await?;
            let s = &self.spec;
            let key = format!(
                "{identity_key}|{}|{}|{}|{}|{:?}|{}|{}|{}",
                s.role_arn.as_deref().unwrap_or(""),
                s.external_id.as_deref().unwrap_or(""),
                self.session_name(),
                self.region(),
                s.registry_ids,
                s.public == Some(true),
                s.endpoint.as_deref().unwrap_or(""),
                s.sts_endpoint.as_deref().unwrap_or(""),
            );
            let now = (self.cx.now)();
            self.cx
                .ecr
                .shared(key, now, async move {
                    let creds = self.credentials(identity).await?;
                    self.get_token(creds).await
                })
                .await
        })
    }
}

fn invalid(problem: &str) -> SourceError {
    SourceError::InvalidResponse { endpoint: "ECR".into(), problem: problem.into() }
}

/// `https://123.dkr.ecr.eu-west-1.amazonaws.com` -> `123.dkr.ecr.eu-west-1.amazonaws.com`.
pub fn registry_host(proxy_endpoint: &str) -> String {
    let s = proxy_endpoint.trim_start_matches("https://").trim_start_matches("http://");
    s.trim_end_matches('/').to_string()
}

/// ECR tokens are base64 of `AWS:<password>`.
pub fn decode_token(registry: &str, token: Option<&str>) -> Result<RegistryAuth, SourceError> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(token.ok_or_else(|| invalid("no authorizationToken"))?)
        .map_err(|_| invalid("authorizationToken is not base64"))?;
    let text = String::from_utf8(raw).map_err(|_| invalid("authorizationToken is not text"))?;
    let (user, password) = text.split_once(':').ok_or_else(|| invalid("authorizationToken is not user:password"))?;
    if user.is_empty() || password.is_empty() {
        return Err(invalid("authorizationToken has an empty part"));
    }
    Ok(RegistryAuth {
        registry: registry.to_string(),
        username: user.to_string(),
        password: SecretString::from(password.to_string()),
    })
}

fn sts_credentials(c: Option<&aws_sdk_sts::types::Credentials>, op: &'static str) -> Result<SharedCredentialsProvider, SourceError> {
    let c = c.ok_or_else(|| SourceError::Aws { operation: op, code: "NoCredentials".into(), message: "STS returned no credentials".into() })?;
    Ok(SharedCredentialsProvider::new(Credentials::new(
        c.access_key_id(),
        c.secret_access_key(),
        Some(c.session_token().to_string()),
        None,
        "regcred-sts",
    )))
}

/// Summarise an AWS error: its code and a bounded message. AWS messages name
/// ARNs and actions, never keys; they are cut short all the same.
fn aws_error<E, R>(operation: &'static str, e: aws_sdk_ecr::error::SdkError<E, R>) -> SourceError
where
    E: ProvideErrorMetadata,
{
    use aws_sdk_ecr::error::SdkError;
    let fallback = match &e {
        SdkError::TimeoutError(_) => "Timeout",
        SdkError::DispatchFailure(_) => "ConnectionFailed",
        SdkError::ResponseError(_) => "InvalidResponse",
        SdkError::ConstructionFailure(_) => "InvalidRequest",
        _ => "Unknown",
    };
    let code = e.code().and_then(super::error::bounded_code).unwrap_or_else(|| fallback.to_string());
    let mut message: String = e.message().unwrap_or("").chars().take(200).collect();
    if message.is_empty() {
        message = "no message".into();
    }
    SourceError::Aws { operation, code, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_ecr_tokens() {
        let t = base64::engine::general_purpose::STANDARD.encode("AWS:pw-123");
        let a = decode_token("r", Some(&t)).unwrap();
        assert_eq!((a.username.as_str(), a.password.expose_secret()), ("AWS", "pw-123"));
        for bad in [None, Some("%%%"), Some("QVdT")] {
            assert_eq!(decode_token("r", bad).unwrap_err().category(), "InvalidResponse");
        }
        assert_eq!(registry_host("https://1.dkr.ecr.eu-west-1.amazonaws.com"), "1.dkr.ecr.eu-west-1.amazonaws.com");
        assert_eq!(registry_host("http://127.0.0.1:5000/"), "127.0.0.1:5000");
    }

    #[test]
    fn selectors() {
        let labels: std::collections::BTreeMap<String, String> =
            [("team".to_string(), "a".to_string()), ("ecr".to_string(), "yes".to_string())].into();
        assert!(selector_matches("team=a", &labels));
        assert!(selector_matches("team==a,ecr", &labels));
        assert!(selector_matches("team!=b,!other", &labels));
        assert!(!selector_matches("team=b", &labels));
        assert!(!selector_matches("other", &labels));
        assert!(!selector_matches("!ecr", &labels));
    }
}
