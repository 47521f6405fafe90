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
    /// Audiences a web-identity token may be requested for.
    pub web_identity_audiences: Vec<String>,
    /// ECR/STS endpoint overrides tenants may use: origins
    /// (`https://host[:port]`), or `*` for any. Default: none.
    pub endpoint_overrides: Vec<String>,
    /// Role ARN patterns (`*` matches anything) the operator's own identity
    /// may assume; empty: any.
    pub role_arns: Vec<String>,
}

impl Default for EcrSettings {
    fn default() -> Self {
        Self {
            identity_namespaces: Vec::new(),
            identity_namespace_selector: None,
            max_attempts: 3,
            operation_timeout: StdDuration::from_secs(30),
            web_identity_audiences: vec![DEFAULT_AUDIENCE.to_string()],
            endpoint_overrides: Vec::new(),
            role_arns: Vec::new(),
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

    /// Run `mint` at most once per key while its result is still good for
    /// the asking credential (`usable`: its renewal instant for that
    /// credential is ahead); callers with the same key share the token. A
    /// failed mint leaves no slot behind, and the cache holds at most
    /// `MAX_SLOTS` keys (past that, mints are not shared).
    async fn shared<F>(&self, key: String, now: DateTime<Utc>, usable: impl Fn(&Minted) -> bool, mint: F) -> Result<Minted, SourceError>
    where
        F: std::future::Future<Output = Result<Minted, SourceError>>,
    {
        let slot = {
            let mut map = self.inner.shared.lock().unwrap_or_else(|p| p.into_inner());
            // Forget slots whose token has expired, so the map stays small.
            map.retain(|_, v| match v.try_lock() {
                // An empty slot may be one another task is about to fill.
                Ok(g) => g.as_ref().is_none_or(|m| m.expires_at.is_some_and(|e| e > now)),
                Err(_) => true,
            });
            if map.len() >= MAX_SLOTS && !map.contains_key(&key) {
                Arc::new(tokio::sync::Mutex::new(None))
            } else {
                map.entry(key.clone()).or_default().clone()
            }
        };
        let mut cached = slot.lock().await;
        if let Some(m) = cached.as_ref() {
            if m.expires_at.is_some_and(|e| e > now) && usable(m) {
                return Ok(m.clone());
            }
        }
        match mint.await {
            Ok(fresh) => {
                *cached = Some(fresh.clone());
                Ok(fresh)
            }
            Err(e) => {
                *cached = None;
                drop(cached);
                let mut map = self.inner.shared.lock().unwrap_or_else(|p| p.into_inner());
                if map.get(&key).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                    map.remove(&key);
                }
                Err(e)
            }
        }
    }

    /// Number of cached slots (for tests).
    pub fn cached_slots(&self) -> usize {
        self.inner.shared.lock().map(|m| m.len()).unwrap_or(0)
    }
}

/// Most ECR token slots kept at once.
const MAX_SLOTS: usize = 4096;

/// The AWS role session name of a credential: `regcred-<namespace>-<name>`,
/// cut to AWS's 64 characters with a hash of the whole, so it always tells
/// credentials apart and no tenant chooses it.
pub fn session_name(namespace: &str, name: &str) -> String {
    let full = format!("regcred-{namespace}-{name}");
    if full.len() <= 64 {
        return full;
    }
    let hash = format!("{:08x}", crate::schedule::seed(&full) as u32);
    format!("{}-{hash}", &full[..64 - 9])
}

/// `*` matches any run of characters; everything else literally.
pub fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// Is this endpoint override allowed by the admin? Origins are compared
/// whole (scheme, host and port), so `http://127.0.0.1:1` never admits
/// `http://127.0.0.1:12`.
pub fn override_allowed(allowed: &[String], endpoint: &str) -> bool {
    let origin = |u: &str| url::Url::parse(u).ok().map(|u| u.origin());
    let Some(want) = origin(endpoint) else { return false };
    allowed.iter().any(|a| a == "*" || origin(a).is_some_and(|o| o == want))
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
        // Overrides send AWS credentials (and web identity tokens) to the
        // named host: only where the admin allows.
        for u in [&spec.endpoint, &spec.sts_endpoint].into_iter().flatten() {
            let host = url::Url::parse(u).ok().and_then(|x| x.host_str().map(str::to_string)).unwrap_or_else(|| u.clone());
            let parsed = url::Url::parse(u).map_err(|_| SourceError::InvalidSpec { field: "spec.source.ecr.endpoint", problem: "not a URL".into() })?;
            if !override_allowed(&cx.ecr.inner.settings.endpoint_overrides, u) || cx.net.egress.check_url(&parsed).is_err() {
                return Err(SourceError::EgressDenied { host });
            }
        }
        Ok(Self { spec, cx })
    }

    /// A tenant's override reached through a proxy (the standard
    /// variables): the proxy connects, not the SDK's policy-bound resolver,
    /// so the name is resolved and judged here first.
    async fn overrides_through_proxy(&self) -> Result<(), SourceError> {
        for u in [&self.spec.endpoint, &self.spec.sts_endpoint].into_iter().flatten() {
            if let Ok(url) = url::Url::parse(u) {
                super::httpclient::check_if_proxied(&self.cx.net, &url).await?;
            }
        }
        Ok(())
    }

    fn region(&self) -> &str {
        if self.spec.public == Some(true) { ECR_PUBLIC_REGION } else { &self.spec.region }
    }

    fn session_name(&self) -> String {
        if self.cx.cluster_scoped {
            session_name("cluster", &self.cx.name)
        } else {
            session_name(&self.cx.namespace, &self.cx.name)
        }
    }

    fn retry(&self) -> (RetryConfig, TimeoutConfig) {
        let s = &self.cx.ecr.inner.settings;
        (
            RetryConfig::standard().with_max_attempts(s.max_attempts.max(1)),
            TimeoutConfig::builder().operation_timeout(s.operation_timeout).build(),
        )
    }

    /// The endpoint each service is asked at, for messages.
    fn sts_endpoint(&self) -> String {
        self.spec.sts_endpoint.clone().unwrap_or_else(|| format!("https://sts.{}.amazonaws.com", self.region()))
    }

    fn ecr_endpoint(&self) -> String {
        match (&self.spec.endpoint, self.spec.public == Some(true)) {
            (Some(e), _) => e.clone(),
            (None, true) => format!("https://api.ecr-public.{ECR_PUBLIC_REGION}.amazonaws.com"),
            (None, false) => format!("https://api.ecr.{}.amazonaws.com", self.spec.region),
        }
    }

    fn sts(&self, creds: Option<SharedCredentialsProvider>) -> aws_sdk_sts::Client {
        let (retry, timeout) = self.retry();
        let mut b = aws_sdk_sts::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(self.region().to_string()))
            .retry_config(retry)
            .timeout_config(timeout)
            .http_client(self.cx.net.aws_http.clone());
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
            self.web_identity_allowed(w).await?;
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
        if !self.cx.cluster_scoped && !self.cx.ecr.identity_allowed(ns).await? {
            return Err(SourceError::IdentityNotAllowed { namespace: ns.clone() });
        }
        let allowed_roles = &self.cx.ecr.inner.settings.role_arns;
        if let Some(role) = &self.spec.role_arn {
            if !allowed_roles.is_empty() && !allowed_roles.iter().any(|p| glob(p, role)) {
                return Err(SourceError::NotAllowed(format!(
                    "the operator's identity may not assume role {role}: it is not in the operator's allowed role ARNs"
                )));
            }
        }
        Ok(("operator".to_string(), Identity::Operator))
    }

    /// A web identity token is requested only for an audience the admin
    /// allows, and only for a ServiceAccount that opted in with
    /// `regcred.dev/web-identity: "true"` (only those who may edit
    /// ServiceAccounts can set it). Checked before any TokenRequest.
    async fn web_identity_allowed(&self, w: &crate::api::WebIdentity) -> Result<(), SourceError> {
        let audience = w.audience.as_deref().unwrap_or(DEFAULT_AUDIENCE);
        if !self.cx.ecr.inner.settings.web_identity_audiences.iter().any(|a| a == audience) {
            return Err(SourceError::NotAllowed(format!(
                "web identity audience {audience:?} is not allowed by the operator (--web-identity-audiences)"
            )));
        }
        let api: Api<ServiceAccount> = Api::namespaced(self.cx.ecr.inner.client.clone(), &self.cx.namespace);
        let sa = api.get_metadata_opt(&w.service_account_name).await.map_err(|e| SourceError::ServiceAccountRead {
            what: "reading",
            name: w.service_account_name.clone(),
            reason: summarize_kube_error(&e),
        })?;
        let Some(sa) = sa else {
            return Err(SourceError::ServiceAccountNotFound { namespace: self.cx.namespace.clone(), name: w.service_account_name.clone() });
        };
        let opted_in = sa.metadata.annotations.as_ref().and_then(|a| a.get(crate::api::WEB_IDENTITY_ANNOTATION)).map(String::as_str) == Some("true");
        if !opted_in {
            return Err(SourceError::NotAllowed(format!(
                "ServiceAccount {:?} has not opted in to web identity: annotate it with {}=\"true\"",
                w.service_account_name,
                crate::api::WEB_IDENTITY_ANNOTATION
            )));
        }
        Ok(())
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
                    .map_err(|e| aws_error("AssumeRoleWithWebIdentity", &self.sts_endpoint(), e))?;
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
            .map_err(|e| aws_error("AssumeRole", &self.sts_endpoint(), e))?;
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
            kube::Error::Api(s) if s.code == 404 => SourceError::ServiceAccountNotFound { namespace: self.cx.namespace.clone(), name: sa.to_string() },
            _ => SourceError::ServiceAccountRead { what: "requesting a token", name: sa.to_string(), reason: summarize_kube_error(&e) },
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
                .timeout_config(timeout)
                .http_client(self.cx.net.aws_http.clone());
            if let Some(e) = &self.spec.endpoint {
                b = b.endpoint_url(e);
            }
            let out = aws_sdk_ecrpublic::Client::from_conf(b.build())
                .get_authorization_token()
                .send()
                .await
                .map_err(|e| aws_error("GetAuthorizationToken", &self.ecr_endpoint(), e))?;
            let data = out.authorization_data().ok_or_else(|| invalid("no authorizationData"))?;
            let entry = decode_token(ECR_PUBLIC_HOST, data.authorization_token())?;
            let expires_at = data.expires_at().and_then(|t| DateTime::from_timestamp(t.secs(), 0));
            return Ok(Minted { entries: vec![entry], issued_at, expires_at, key: None });
        }
        let mut b = aws_sdk_ecr::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(self.spec.region.clone()))
            .credentials_provider(creds)
            .retry_config(retry)
            .timeout_config(timeout)
            .http_client(self.cx.net.aws_http.clone());
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
            .map_err(|e| aws_error("GetAuthorizationToken", &self.ecr_endpoint(), e))?;
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
        Ok(Minted { entries, issued_at, expires_at, key: None })
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
            self.overrides_through_proxy().await?;
            let (identity_key, identity) = self.identity().await?;
            let s = &self.spec;
            // The session name tells credentials apart in CloudTrail, so a
            // token minted under an assumed role is shared only by the one
            // credential it was minted for; without a role it is not used.
            let session = if s.role_arn.is_some() { self.session_name() } else { String::new() };
            let key = format!(
                "{identity_key}|{}|{}|{}|{}|{:?}|{}|{}|{}",
                s.role_arn.as_deref().unwrap_or(""),
                s.external_id.as_deref().unwrap_or(""),
                session,
                self.region(),
                s.registry_ids,
                s.public == Some(true),
                s.endpoint.as_deref().unwrap_or(""),
                s.sts_endpoint.as_deref().unwrap_or(""),
            );
            let now = (self.cx.now)();
            let (policy, seed) = (self.cx.policy, self.cx.seed);
            let usable = move |m: &Minted| crate::schedule::renewal(m.issued_at, m.expires_at, &policy, seed).at > now;
            self.cx
                .ecr
                .shared(key, now, usable, async move {
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
/// ARNs and actions, never keys; they are cut short all the same. A request
/// that got no answer names the endpoint and why (refused, DNS, TLS,
/// timeout), from the SDK's source error.
fn aws_error<E, R>(operation: &'static str, endpoint: &str, e: aws_sdk_ecr::error::SdkError<E, R>) -> SourceError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
{
    use aws_sdk_ecr::error::SdkError;
    // A name the egress policy refused at resolution (the SDK's client asks
    // the policy's resolver): the same refusal as everywhere else.
    if let Some(host) = super::httpclient::egress_denied_in(&e) {
        return SourceError::EgressDenied { host };
    }
    if matches!(e, SdkError::DispatchFailure(_) | SdkError::TimeoutError(_)) {
        let timeout = matches!(e, SdkError::TimeoutError(_)) || matches!(&e, SdkError::DispatchFailure(d) if d.is_timeout());
        let why = if timeout { "timed out" } else { super::httpclient::connection_kind(&e).unwrap_or("connection failed") };
        return SourceError::Aws { operation, code: "ConnectionFailed".into(), message: format!("{endpoint}: {why}") };
    }
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

    #[tokio::test]
    async fn the_token_cache_is_bounded_and_never_hands_out_a_due_token() {
        crate::install_crypto_provider();
        let client = Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap())).unwrap();
        let m = EcrMinter::new(client, EcrSettings::default());
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let secs = chrono::Duration::seconds;
        let token = |issued: DateTime<Utc>| Minted { entries: vec![], issued_at: issued, expires_at: Some(issued + secs(40)), key: None };
        // A failed mint leaves no slot behind.
        let failed = m.shared("k".into(), t0, |_| true, async { Err(SourceError::Deadline("x".into())) }).await;
        assert!(failed.is_err());
        assert_eq!(m.cached_slots(), 0);
        // A token is shared while it is good for the asker ...
        m.shared("k".into(), t0, |_| true, async { Ok(token(t0)) }).await.unwrap();
        let again = m.shared("k".into(), t0 + secs(5), |_| true, async { unreachable!("minted twice") }).await.unwrap();
        assert_eq!(again.issued_at, t0);
        // ... and never once its renewal instant for the asker has passed.
        let fresh = m.shared("k".into(), t0 + secs(5), |_| false, async { Ok(token(t0 + secs(5))) }).await.unwrap();
        assert_eq!(fresh.issued_at, t0 + secs(5));
        // Bounded: past MAX_SLOTS keys, mints still work but are not kept.
        for i in 0..MAX_SLOTS + 10 {
            m.shared(format!("key-{i}"), t0, |_| true, async { Ok(token(t0)) }).await.unwrap();
        }
        assert_eq!(m.cached_slots(), MAX_SLOTS);
    }

    #[test]
    fn session_names_are_derived_and_short() {
        assert_eq!(session_name("shop", "ecr-pull"), "regcred-shop-ecr-pull");
        let long = session_name(&"n".repeat(63), &"c".repeat(253));
        assert_eq!(long.len(), 64);
        assert!(long.starts_with("regcred-nnn"));
        assert_ne!(long, session_name(&"n".repeat(63), &format!("{}d", "c".repeat(252))));
        assert!(long.chars().all(|c| c.is_ascii_alphanumeric() || "+=,.@-_".contains(c)));
    }

    #[test]
    fn globs_and_overrides() {
        assert!(glob("arn:aws:iam::123456789012:role/*", "arn:aws:iam::123456789012:role/pull"));
        assert!(!glob("arn:aws:iam::123456789012:role/*", "arn:aws:iam::210987654321:role/pull"));
        assert!(glob("arn:aws:iam::*:role/regcred-*", "arn:aws:iam::1:role/regcred-x"));
        assert!(glob("exact", "exact") && !glob("exact", "exactly"));
        let allowed = vec!["http://127.0.0.1:4566".to_string()];
        assert!(override_allowed(&allowed, "http://127.0.0.1:4566/"));
        assert!(!override_allowed(&allowed, "http://127.0.0.1:45661"));
        assert!(!override_allowed(&allowed, "https://127.0.0.1:4566"));
        assert!(!override_allowed(&[], "https://sts.example"));
        assert!(override_allowed(&["*".into()], "https://sts.example"));
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
