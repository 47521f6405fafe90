//! `rotate`: keys created, listed and revoked at a registry vendor's own API
//! (Docker Hub access tokens, Harbor project robots, GitLab project or group
//! access tokens), with an admin credential from a Secret. One client per
//! vendor behind three calls; the key's lifecycle (pending, swap, grace,
//! sweep) is `crate::keys`'s, the same for every vendor.
//!
//! Every answer is hostile input: bodies are size-capped by the shared
//! client, ids and names are checked before they reach status or a URL, a
//! key without an expiry is refused (and revoked by the caller), listing
//! stops after a bounded number of pages.

use base64::Engine;
use chrono::{DateTime, Duration, NaiveDate, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

use super::http::Scalar;
use super::httpclient::{self, checked_url, endpoint_of, Client};
use super::reader::take_key;
use super::{parse_duration, KeyRef, MintFuture, Minted, SourceContext, SourceError, TokenSource};
use crate::api::{DockerHubKeys, DockerHubScope, GitLabKeys, GitLabScope, HarborAction, HarborKeys, HttpClientSettings, RotateSource};

/// Docker Hub's registry key in `.dockerconfigjson`.
pub const DOCKER_HUB_REGISTRY: &str = "https://index.docker.io/v1/";
/// Every key regcred creates is named with this prefix, then the
/// credential's UID prefix and the creation time.
pub const KEY_PREFIX: &str = "regcred-";
/// Default lifetime of a key.
pub const DEFAULT_LIFETIME: Duration = Duration::days(30);
/// Bounds on a key's lifetime (the CRD's too).
pub const MIN_LIFETIME: Duration = Duration::hours(24);
pub const MAX_LIFETIME: Duration = Duration::days(365);
/// Default and longest grace of a replaced key.
pub const DEFAULT_GRACE: Duration = Duration::minutes(10);
pub const MAX_GRACE: Duration = Duration::hours(24);
/// Listing stops after this many pages of 100 keys.
const MAX_PAGES: u32 = 10;
/// The longest key secret accepted.
const MAX_SECRET_CHARS: usize = 4096;

/// The key names of one credential start with this: `regcred-` and the
/// first 12 hex digits of its UID.
pub fn key_prefix(uid: &str) -> String {
    let hex: String = uid.chars().filter(char::is_ascii_hexdigit).take(12).collect::<String>().to_ascii_lowercase();
    format!("{KEY_PREFIX}{hex}-")
}

/// The name of a new key of this credential, created at `now`.
pub fn key_name(uid: &str, now: DateTime<Utc>) -> String {
    format!("{}{}", key_prefix(uid), now.timestamp())
}

/// The key's lifetime from the spec (bounded), and the grace of a
/// replaced key.
pub fn lifetime(spec: &RotateSource) -> Result<Duration, SourceError> {
    Ok(match spec.lifetime.as_deref() {
        Some(d) => parse_duration("spec.source.rotate.lifetime", d)?.clamp(MIN_LIFETIME, MAX_LIFETIME),
        None => DEFAULT_LIFETIME,
    })
}

pub fn grace(spec: &RotateSource) -> Duration {
    spec.grace
        .as_deref()
        .and_then(|d| parse_duration("spec.source.rotate.grace", d).ok())
        .unwrap_or(DEFAULT_GRACE)
        .clamp(Duration::zero(), MAX_GRACE)
}

/// Which vendor, for messages and metric labels.
pub fn vendor_name(spec: &RotateSource) -> &'static str {
    if spec.docker_hub.is_some() {
        "Docker Hub"
    } else if spec.harbor.is_some() {
        "Harbor"
    } else {
        "GitLab"
    }
}

/// The registries the key is written for.
pub fn registries(spec: &RotateSource) -> Vec<String> {
    if spec.registries.is_empty() && spec.docker_hub.is_some() {
        vec![DOCKER_HUB_REGISTRY.to_string()]
    } else {
        spec.registries.clone()
    }
}

/// The vendor's API base URL.
pub fn api_url(spec: &RotateSource) -> Result<Url, SourceError> {
    let raw = match (&spec.url, &spec.docker_hub, &spec.gitlab) {
        (Some(u), _, _) => u.clone(),
        (None, Some(_), _) => "https://hub.docker.com".into(),
        (None, _, Some(_)) => "https://gitlab.com".into(),
        (None, _, _) => return Err(SourceError::InvalidSpec { field: "spec.source.rotate.url", problem: "is required for harbor".into() }),
    };
    checked_url("spec.source.rotate.url", &raw, &client_settings(spec))
}

fn client_settings(spec: &RotateSource) -> HttpClientSettings {
    HttpClientSettings { allow_insecure_http: spec.allow_insecure_http, tls: spec.tls.clone(), timeout: None, verify: None }
}

/// A key just created: its identity, the pull username and secret, expiry.
pub struct Created {
    pub key: KeyRef,
    pub username: String,
    pub secret: SecretString,
    pub expires_at: DateTime<Utc>,
}

enum Admin {
    /// Docker Hub: the account (the pull username too) and its password.
    DockerHub { username: String, password: SecretString },
    Harbor { username: String, password: SecretString },
    GitLab { token: SecretString },
}

/// A vendor's API, signed in as the admin.
pub struct Vendor {
    spec: RotateSource,
    base: Url,
    client: Client,
    admin: Admin,
    /// Docker Hub's bearer, signed in for once per `Vendor`.
    bearer: tokio::sync::OnceCell<SecretString>,
}

impl Vendor {
    pub async fn connect(spec: &RotateSource, cx: &SourceContext) -> Result<Self, SourceError> {
        let base = api_url(spec)?;
        let client = httpclient::build(&client_settings(spec), &cx.secrets, &cx.net).await?;
        let r = &spec.admin_secret_ref;
        let mut data = cx.secrets.data(&r.name).await?;
        let admin = if spec.gitlab.is_some() {
            Admin::GitLab { token: take_key(&mut data, &r.name, "token")? }
        } else {
            let username = take_key(&mut data, &r.name, "username")?.expose_secret().to_string();
            let password = take_key(&mut data, &r.name, "password")?;
            if spec.docker_hub.is_some() {
                Admin::DockerHub { username, password }
            } else {
                Admin::Harbor { username, password }
            }
        };
        Ok(Self { spec: spec.clone(), base, client, admin, bearer: tokio::sync::OnceCell::new() })
    }

    fn url(&self, path: &str) -> Url {
        let mut u = self.base.clone();
        let joined = format!("{}{path}", u.path().trim_end_matches('/'));
        u.set_path(&joined);
        u
    }

    /// A request signed as the admin (Docker Hub: with a bearer from
    /// `/v2/auth/token`, asked for on the first request).
    async fn request(&self, method: reqwest::Method, url: &Url) -> Result<reqwest::RequestBuilder, SourceError> {
        let req = self.client.request(method, url)?.header("accept", "application/json");
        let (name, value) = match &self.admin {
            Admin::Harbor { username, password } => {
                let b = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{}", password.expose_secret()));
                ("authorization", format!("Basic {b}"))
            }
            Admin::GitLab { token } => ("private-token", token.expose_secret().to_string()),
            Admin::DockerHub { username, password } => {
                let bearer = self.bearer.get_or_try_init(|| self.hub_bearer(username, password)).await?;
                ("authorization", format!("Bearer {}", bearer.expose_secret()))
            }
        };
        let mut v = reqwest::header::HeaderValue::from_str(&value)
            .map_err(|_| SourceError::InvalidSpec { field: "spec.source.rotate.adminSecretRef", problem: "the admin credential cannot be sent in a header".into() })?;
        v.set_sensitive(true);
        Ok(req.header(name, v))
    }

    async fn hub_bearer(&self, username: &str, password: &SecretString) -> Result<SecretString, SourceError> {
        #[derive(Deserialize)]
        struct Bearer {
            access_token: Option<Scalar>,
        }
        let url = self.url("/v2/auth/token");
        let body = serde_json::json!({"identifier": username, "secret": password.expose_secret()});
        let req = self.client.request(reqwest::Method::POST, &url)?.header("content-type", "application/json").body(body.to_string());
        let resp = self.send(req, &url).await?;
        match serde_json::from_slice::<Bearer>(&resp.body).ok().and_then(|b| b.access_token) {
            Some(Scalar::Text(t)) if !t.is_empty() && t.len() <= 16 * 1024 => Ok(SecretString::from(t)),
            _ => Err(invalid(&url, "no access_token in the sign-in answer")),
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder, url: &Url) -> Result<httpclient::Response, SourceError> {
        let endpoint = endpoint_of(url);
        let resp = self.client.send(req, &endpoint).await?;
        if (200..300).contains(&resp.status) {
            Ok(resp)
        } else {
            Err(httpclient::status_error(&endpoint, &resp))
        }
    }

    /// Create a key named `name` living `lifetime` from `now`.
    pub async fn create(&self, name: &str, now: DateTime<Utc>) -> Result<Created, SourceError> {
        let lifetime = lifetime(&self.spec)?;
        match (&self.spec.docker_hub, &self.spec.harbor, &self.spec.gitlab, &self.admin) {
            (Some(hub), _, _, Admin::DockerHub { username, .. }) => self.create_hub(hub, username, name, now + lifetime).await,
            (None, Some(h), _, Admin::Harbor { .. }) => self.create_harbor(h, name, whole_days(lifetime)).await,
            (None, None, Some(g), Admin::GitLab { .. }) => self.create_gitlab(g, name, gitlab_expiry(now, lifetime)).await,
            _ => Err(SourceError::InvalidSpec { field: "spec.source.rotate", problem: "set exactly one of dockerHub, harbor or gitlab".into() }),
        }
    }

    async fn create_hub(&self, hub: &DockerHubKeys, username: &str, name: &str, expires: DateTime<Utc>) -> Result<Created, SourceError> {
        let scopes: Vec<&str> = if hub.scopes.is_empty() { vec!["repo:read"] } else { hub.scopes.iter().map(hub_scope).collect() };
        let body = serde_json::json!({"token_label": name, "scopes": scopes, "expires_at": expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)});
        let url = self.url("/v2/access-tokens");
        let created: HubToken = self.post(&url, body).await?;
        let key = KeyRef { id: id_of(&url, created.uuid)?, name: name.to_string() };
        let expires_at = match created.expires_at {
            Some(Scalar::Text(t)) => DateTime::parse_from_rfc3339(&t).map(|t| t.with_timezone(&Utc)).map_err(|_| invalid(&url, "expires_at is not an RFC 3339 time"))?,
            _ => return Err(invalid(&url, "the token has no expiry")),
        };
        // The pull username is the account's.
        Ok(Created { key, username: username.to_string(), secret: secret_of(&url, created.token)?, expires_at })
    }

    async fn create_harbor(&self, h: &HarborKeys, name: &str, days: i64) -> Result<Created, SourceError> {
        let actions: Vec<&str> = if h.actions.is_empty() { vec!["pull"] } else { h.actions.iter().map(harbor_action).collect() };
        let access: Vec<_> = actions.iter().map(|a| serde_json::json!({"resource": "repository", "action": a})).collect();
        let body = serde_json::json!({
            "name": name, "description": "pull key created by regcred", "duration": days, "level": "project", "disable": false,
            "permissions": [{"kind": "project", "namespace": h.project, "access": access}],
        });
        let url = self.url("/api/v2.0/robots");
        let created: HarborRobot = self.post(&url, body).await?;
        let key = KeyRef { id: id_of(&url, created.id)?, name: name.to_string() };
        let expires_at = match created.expires_at.as_ref().and_then(as_int) {
            Some(s) if s > 0 => DateTime::from_timestamp(s, 0).ok_or_else(|| invalid(&url, "expires_at is out of range"))?,
            _ => return Err(invalid(&url, "the robot has no expiry")),
        };
        // The pull username is the robot's full name, `robot$<project>+<name>`.
        Ok(Created { key, username: text_of(&url, created.name, "name")?, secret: secret_of(&url, created.secret)?, expires_at })
    }

    async fn create_gitlab(&self, g: &GitLabKeys, name: &str, date: NaiveDate) -> Result<Created, SourceError> {
        let scopes: Vec<&str> = if g.scopes.is_empty() { vec!["read_registry"] } else { g.scopes.iter().map(gitlab_scope).collect() };
        let body = serde_json::json!({"name": name, "scopes": scopes, "expires_at": date.to_string(), "access_level": g.access_level.unwrap_or(20)});
        let url = self.gitlab_tokens()?;
        let created: GitLabToken = self.post(&url, body).await?;
        let key = KeyRef { id: id_of(&url, created.id)?, name: name.to_string() };
        let expires_at = match created.expires_at {
            Some(Scalar::Text(t)) => NaiveDate::parse_from_str(&t, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|t| t.and_utc())
                .ok_or_else(|| invalid(&url, "expires_at is not a date"))?,
            _ => return Err(invalid(&url, "the token has no expiry")),
        };
        // GitLab ignores the username of a token login; the key's name
        // tells it apart in the registry's logs.
        Ok(Created { key, username: name.to_string(), secret: secret_of(&url, created.token)?, expires_at })
    }

    async fn post<T: serde::de::DeserializeOwned>(&self, url: &Url, body: serde_json::Value) -> Result<T, SourceError> {
        let req = self.request(reqwest::Method::POST, url).await?.header("content-type", "application/json").body(body.to_string());
        let resp = self.send(req, url).await?;
        serde_json::from_slice(&resp.body).map_err(|_| invalid(url, "the answer is not the JSON object expected"))
    }

    fn gitlab_tokens(&self) -> Result<Url, SourceError> {
        let g = self.spec.gitlab.as_ref().ok_or_else(|| SourceError::InvalidSpec { field: "spec.source.rotate.gitlab", problem: "is not set".into() })?;
        let (kind, id) = match (&g.project, &g.group) {
            (Some(p), _) => ("projects", p),
            (None, Some(g)) => ("groups", g),
            (None, None) => return Err(SourceError::InvalidSpec { field: "spec.source.rotate.gitlab", problem: "set project or group".into() }),
        };
        // A path is one URL-encoded segment (`group%2Fproject`).
        let encoded: String = url::form_urlencoded::byte_serialize(id.as_bytes()).collect();
        let mut u = self.url(&format!("/api/v4/{kind}/"));
        let path = format!("{}{encoded}/access_tokens", u.path());
        u.set_path(&path);
        Ok(u)
    }

    /// The keys whose name starts with `prefix` (at most `MAX_PAGES` pages).
    pub async fn list(&self, prefix: &str) -> Result<Vec<KeyRef>, SourceError> {
        let mut out = Vec::new();
        let (url, name_of): (Url, fn(&Listed) -> Option<String>) = if self.spec.docker_hub.is_some() {
            (self.url("/v2/access-tokens"), |l| l.token_label.clone())
        } else if let Some(h) = &self.spec.harbor {
            let mut u = self.url("/api/v2.0/robots");
            let project_id = self.harbor_project_id(&h.project).await?;
            u.query_pairs_mut().append_pair("q", &format!("Level=project,ProjectID={project_id}"));
            // Robots are listed by their full name, `robot$<project>+<name>`.
            (u, |l| l.name.as_ref().map(|n| n.rsplit_once('+').map(|(_, n)| n).unwrap_or(n).to_string()))
        } else {
            let mut u = self.gitlab_tokens()?;
            u.query_pairs_mut().append_pair("state", "active");
            (u, |l| l.name.clone())
        };
        for page in 1..=MAX_PAGES {
            let mut u = url.clone();
            u.query_pairs_mut().append_pair("page", &page.to_string()).append_pair(if self.spec.gitlab.is_some() { "per_page" } else { "page_size" }, "100");
            let resp = self.send(self.request(reqwest::Method::GET, &u).await?, &u).await?;
            let items: Vec<Listed> = if self.spec.docker_hub.is_some() {
                serde_json::from_slice::<HubPage>(&resp.body).map(|p| p.results).map_err(|_| invalid(&u, "not a page of tokens"))?
            } else {
                serde_json::from_slice(&resp.body).map_err(|_| invalid(&u, "not a list of keys"))?
            };
            let n = items.len();
            for item in items {
                let Some(name) = name_of(&item).filter(|n| n.starts_with(prefix)) else { continue };
                let id = item.uuid.or(item.id).and_then(|v| checked_id(&v));
                if let Some(id) = id {
                    out.push(KeyRef { id, name });
                }
            }
            if n < 100 {
                break;
            }
        }
        Ok(out)
    }

    async fn harbor_project_id(&self, project: &str) -> Result<i64, SourceError> {
        #[derive(Deserialize)]
        struct Project {
            project_id: Option<Scalar>,
        }
        let encoded: String = url::form_urlencoded::byte_serialize(project.as_bytes()).collect();
        let mut u = self.url("/api/v2.0/projects/");
        let path = format!("{}{encoded}", u.path());
        u.set_path(&path);
        let req = self.request(reqwest::Method::GET, &u).await?.header("x-is-resource-name", "true");
        let resp = self.send(req, &u).await?;
        serde_json::from_slice::<Project>(&resp.body)
            .ok()
            .and_then(|p| p.project_id.as_ref().and_then(as_int))
            .ok_or_else(|| invalid(&u, "no project_id"))
    }

    /// Revoke a key. One that is gone already (404) counts as revoked.
    pub async fn revoke(&self, id: &str) -> Result<(), SourceError> {
        let id = checked_id(&Scalar::Text(id.to_string())).ok_or_else(|| SourceError::InvalidSpec { field: "status.key", problem: "a key id of unexpected form".into() })?;
        let url = if self.spec.docker_hub.is_some() {
            self.url(&format!("/v2/access-tokens/{id}"))
        } else if self.spec.harbor.is_some() {
            self.url(&format!("/api/v2.0/robots/{id}"))
        } else {
            let mut u = self.gitlab_tokens()?;
            let path = format!("{}/{id}", u.path());
            u.set_path(&path);
            u
        };
        let endpoint = endpoint_of(&url);
        let resp = self.client.send(self.request(reqwest::Method::DELETE, &url).await?, &endpoint).await?;
        match resp.status {
            200..=299 | 404 => Ok(()),
            _ => Err(httpclient::status_error(&endpoint, &resp)),
        }
    }
}

fn hub_scope(s: &DockerHubScope) -> &'static str {
    match s {
        DockerHubScope::PublicRead => "repo:public_read",
        DockerHubScope::Read => "repo:read",
        DockerHubScope::Write => "repo:write",
    }
}

fn harbor_action(a: &HarborAction) -> &'static str {
    match a {
        HarborAction::Pull => "pull",
        HarborAction::Push => "push",
    }
}

fn gitlab_scope(s: &GitLabScope) -> &'static str {
    match s {
        GitLabScope::ReadRegistry => "read_registry",
        GitLabScope::WriteRegistry => "write_registry",
    }
}

/// A lifetime in whole days, rounded up (Harbor's `duration`).
pub fn whole_days(lifetime: Duration) -> i64 {
    let days = lifetime.num_days();
    if lifetime > Duration::days(days) {
        days.saturating_add(1)
    } else {
        days.max(1)
    }
}

/// GitLab's `expires_at`: a date; the token stops working at its first
/// midnight (UTC). The first date at least `lifetime` away, at most 365
/// days ahead (GitLab's limit).
pub fn gitlab_expiry(now: DateTime<Utc>, lifetime: Duration) -> NaiveDate {
    let today = now.date_naive();
    let wanted = today + Duration::days(whole_days(now - today.and_hms_opt(0, 0, 0).map(|t| t.and_utc()).unwrap_or(now) + lifetime));
    wanted.min(today + Duration::days(365))
}

fn as_int(v: &Scalar) -> Option<i64> {
    match v {
        Scalar::Int(n) => Some(*n),
        Scalar::Text(t) => t.parse().ok(),
        _ => None,
    }
}

/// An id as it may go into a URL and status: digits, letters and `-`.
fn checked_id(v: &Scalar) -> Option<String> {
    let s = match v {
        Scalar::Int(n) => n.to_string(),
        Scalar::Text(t) => t.clone(),
        _ => return None,
    };
    (!s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')).then_some(s)
}

fn id_of(url: &Url, v: Option<Scalar>) -> Result<String, SourceError> {
    v.as_ref().and_then(checked_id).ok_or_else(|| invalid(url, "the new key has no usable id"))
}

fn text_of(url: &Url, v: Option<Scalar>, what: &str) -> Result<String, SourceError> {
    match v {
        Some(Scalar::Text(t)) if !t.is_empty() && t.len() <= 255 => Ok(t),
        _ => Err(invalid(url, &format!("the new key has no usable {what}"))),
    }
}

fn secret_of(url: &Url, v: Option<Scalar>) -> Result<SecretString, SourceError> {
    match v {
        Some(Scalar::Text(t)) if !t.is_empty() && t.chars().count() <= MAX_SECRET_CHARS && !t.chars().any(char::is_control) => Ok(SecretString::from(t)),
        _ => Err(invalid(url, "the new key's secret is missing, too long or not text")),
    }
}

fn invalid(url: &Url, problem: &str) -> SourceError {
    SourceError::InvalidResponse { endpoint: endpoint_of(url), problem: problem.to_string() }
}

// Typed answers: scalars only (containers are skipped, never built).
#[derive(Deserialize)]
struct HubToken {
    uuid: Option<Scalar>,
    token: Option<Scalar>,
    expires_at: Option<Scalar>,
}

#[derive(Deserialize)]
struct HarborRobot {
    id: Option<Scalar>,
    name: Option<Scalar>,
    secret: Option<Scalar>,
    expires_at: Option<Scalar>,
}

#[derive(Deserialize)]
struct GitLabToken {
    id: Option<Scalar>,
    token: Option<Scalar>,
    expires_at: Option<Scalar>,
}

#[derive(Deserialize)]
struct HubPage {
    #[serde(default)]
    results: Vec<Listed>,
}

#[derive(Deserialize)]
struct Listed {
    uuid: Option<Scalar>,
    id: Option<Scalar>,
    #[serde(default, deserialize_with = "text")]
    name: Option<String>,
    #[serde(default, deserialize_with = "text")]
    token_label: Option<String>,
}

fn text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Scalar::deserialize(d)? {
        Scalar::Text(t) if t.len() <= 255 => Some(t),
        _ => None,
    })
}

/// The `rotate` source: each mint creates a key named as the attempt
/// recorded it (`SourceContext::key_name`).
pub struct Rotate {
    spec: RotateSource,
    cx: SourceContext,
}

impl Rotate {
    pub fn new(spec: RotateSource, cx: SourceContext) -> Result<Self, SourceError> {
        if cx.cluster_scoped || cx.key_name.is_none() {
            // A key needs its lifecycle: the status of one RegistryCredential.
            let problem = "keys are created by the operator for a RegistryCredential only, which records each one in its status (not by a ClusterRegistryCredential or `regcred mint`)";
            return Err(SourceError::InvalidSpec { field: "spec.source.rotate", problem: problem.into() });
        }
        if registries(&spec).is_empty() {
            return Err(SourceError::InvalidSpec { field: "spec.source.rotate.registries", problem: "name at least one registry".into() });
        }
        Ok(Self { spec, cx })
    }
}

impl TokenSource for Rotate {
    fn mint(&self) -> MintFuture<'_> {
        Box::pin(async move {
            let name = self.cx.key_name.clone().unwrap_or_default();
            let vendor = Vendor::connect(&self.spec, &self.cx).await?;
            let issued_at = (self.cx.now)();
            let c = vendor.create(&name, issued_at).await?;
            let mut minted = Minted::for_all(&registries(&self.spec), &c.username, &c.secret, issued_at, Some(c.expires_at));
            minted.key = Some(c.key);
            Ok(minted)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_carry_the_credential() {
        let uid = "6F1c2a9e-77b0-4d2e-9a8b-0123456789ab";
        assert_eq!(key_prefix(uid), "regcred-6f1c2a9e77b0-");
        let t = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        assert_eq!(key_name(uid, t), "regcred-6f1c2a9e77b0-1800000000");
    }

    #[test]
    fn days_round_up() {
        assert_eq!(whole_days(Duration::hours(24)), 1);
        assert_eq!(whole_days(Duration::hours(25)), 2);
        assert_eq!(whole_days(Duration::days(365)), 365);
        assert_eq!(whole_days(Duration::seconds(1)), 1);
    }

    #[test]
    fn gitlab_dates_cover_the_lifetime() {
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        // 17:00 plus 24 h is 17:00 the next day: the token must live until
        // the midnight after it.
        let d = gitlab_expiry(at("2026-12-03T17:00:00Z"), Duration::hours(24));
        assert_eq!(d.to_string(), "2026-12-05");
        let d = gitlab_expiry(at("2026-12-03T00:00:00Z"), Duration::hours(24));
        assert_eq!(d.to_string(), "2026-12-04");
        // never past GitLab's 365 days
        let d = gitlab_expiry(at("2026-12-03T17:00:00Z"), Duration::days(365));
        assert_eq!(d.to_string(), "2027-12-03");
    }

    #[test]
    fn ids_are_checked_before_they_reach_a_url() {
        assert_eq!(checked_id(&Scalar::Int(17)).as_deref(), Some("17"));
        assert_eq!(checked_id(&Scalar::Text("b30bbf97-506c-4ecd".into())).as_deref(), Some("b30bbf97-506c-4ecd"));
        for bad in ["../admin", "1/2", "", "a b", "1?x=2"] {
            assert_eq!(checked_id(&Scalar::Text(bad.into())), None, "{bad}");
        }
        assert_eq!(checked_id(&Scalar::Text("x".repeat(65))), None);
        assert_eq!(checked_id(&Scalar::Other), None);
    }

    #[test]
    fn secrets_are_bounded_text() {
        let u = Url::parse("https://h/x").unwrap();
        assert!(secret_of(&u, Some(Scalar::Text("dckr_pat_1".into()))).is_ok());
        for bad in [None, Some(Scalar::Int(1)), Some(Scalar::Text(String::new())), Some(Scalar::Text("a\nb".into())), Some(Scalar::Text("x".repeat(4097)))] {
            let e = secret_of(&u, bad).err().unwrap();
            assert_eq!(e.category(), "InvalidResponse");
        }
    }
}
