//! `oauth2`: the client-credentials grant (RFC 6749 §4.4). The access token
//! becomes the registry password.

use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::form_urlencoded;

use super::httpclient::{self, checked_url, endpoint_of};
use super::reader::take_key;
use super::{MintFuture, Minted, SourceContext, SourceError, TokenSource};
use crate::api::{ClientAuthMethod, OAuth2Source};

/// Username written next to the access token unless the spec names another.
pub const DEFAULT_USERNAME: &str = "oauth2accesstoken";

pub struct OAuth2 {
    spec: OAuth2Source,
    url: url::Url,
    cx: SourceContext,
}

impl OAuth2 {
    pub fn new(spec: OAuth2Source, cx: SourceContext) -> Result<Self, SourceError> {
        let url = checked_url("spec.source.oauth2.tokenURL", &spec.token_url, &spec.client)?;
        Ok(Self { spec, url, cx })
    }
}

// Typed: unknown fields are skipped without being built.
#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    token_type: Option<String>,
    #[serde(default)]
    expires_in: Option<super::http::Scalar>,
}

/// Read a token response. `expires_in` may be a number or a numeric string.
fn parse_token_response(body: &[u8], endpoint: &str) -> Result<(SecretString, Option<i64>), SourceError> {
    let invalid = |problem: &str| SourceError::InvalidResponse { endpoint: endpoint.to_string(), problem: problem.to_string() };
    let r: TokenResponse = serde_json::from_slice(body).map_err(|_| invalid("not a JSON token response with access_token"))?;
    if r.access_token.is_empty() {
        return Err(invalid("access_token is empty"));
    }
    if let Some(t) = &r.token_type {
        if !t.eq_ignore_ascii_case("bearer") {
            return Err(invalid("token_type is not Bearer"));
        }
    }
    let expires_in = match r.expires_in {
        None => None,
        Some(v) => Some(super::http::as_seconds(&v).ok_or_else(|| invalid("expires_in is not a number of seconds"))?),
    };
    if expires_in.is_some_and(|s| s <= 0) {
        return Err(invalid("expires_in is not positive"));
    }
    Ok((SecretString::from(r.access_token), expires_in))
}

/// The form body of a client-credentials request and, for
/// `client_secret_basic`, the Authorization header value.
fn request_body(spec: &OAuth2Source, id: &SecretString, secret: &SecretString) -> (String, Option<String>) {
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("grant_type", "client_credentials");
    if !spec.scopes.is_empty() {
        form.append_pair("scope", &spec.scopes.join(" "));
    }
    if let Some(a) = &spec.audience {
        form.append_pair("audience", a);
    }
    for (k, v) in &spec.extra_params {
        form.append_pair(k, v);
    }
    let authorization = client_auth(spec, id, secret, &mut form);
    (form.finish(), authorization)
}

/// Client authentication for a request to the server: the Authorization
/// header value for `client_secret_basic`, or the credentials added to the
/// form for `client_secret_post`.
fn client_auth(spec: &OAuth2Source, id: &SecretString, secret: &SecretString, form: &mut form_urlencoded::Serializer<String>) -> Option<String> {
    match spec.auth_method.unwrap_or_default() {
        ClientAuthMethod::ClientSecretBasic => {
            // RFC 6749 §2.3.1: form-encode id and secret before Basic.
            let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let pair = format!("{}:{}", enc(id.expose_secret()), enc(secret.expose_secret()));
            Some(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair)))
        }
        ClientAuthMethod::ClientSecretPost => {
            form.append_pair("client_id", id.expose_secret());
            form.append_pair("client_secret", secret.expose_secret());
            None
        }
    }
}

impl TokenSource for OAuth2 {
    fn mint(&self) -> MintFuture<'_> {
        Box::pin(async move {
            let endpoint = endpoint_of(&self.url);
            let r = &self.spec.client_secret_ref;
            let mut data = self.cx.secrets.data(&r.name).await?;
            let id = take_key(&mut data, &r.name, r.client_id_key.as_deref().unwrap_or("client_id"))?;
            let secret = take_key(&mut data, &r.name, r.client_secret_key.as_deref().unwrap_or("client_secret"))?;
            let client = httpclient::build(&self.spec.client, &self.cx.secrets, &self.cx.net).await?;

            let (body, authorization) = request_body(&self.spec, &id, &secret);
            let mut req = client
                .request(reqwest::Method::POST, &self.url)?
                .header("accept", "application/json")
                .header("content-type", "application/x-www-form-urlencoded");
            if let Some(a) = authorization {
                let mut v = reqwest::header::HeaderValue::from_str(&a).map_err(|_| SourceError::InvalidSpec {
                    field: "spec.source.oauth2.clientSecretRef",
                    problem: "the client id or secret cannot be sent in a header".into(),
                })?;
                v.set_sensitive(true);
                req = req.header("authorization", v);
            }
            let req = req.body(body);
            let issued_at = (self.cx.now)();
            let resp = client.send(req, &endpoint).await?;
            if !(200..300).contains(&resp.status) {
                return Err(httpclient::status_error(&endpoint, &resp));
            }
            let (token, expires_in) = parse_token_response(&resp.body, &endpoint)?;
            let username = self.spec.username.as_deref().unwrap_or(DEFAULT_USERNAME);
            let expires_at = expires_in.map(|s| crate::schedule::expiry_after(issued_at, s));
            Ok(Minted::for_all(&self.spec.registries, username, &token, issued_at, expires_at))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_responses() {
        let ok = |b: &str| parse_token_response(b.as_bytes(), "e").map(|(t, e)| (t.expose_secret().to_string(), e));
        assert_eq!(ok(r#"{"access_token":"a","token_type":"Bearer","expires_in":30}"#).unwrap(), ("a".into(), Some(30)));
        assert_eq!(ok(r#"{"access_token":"a","token_type":"bearer","expires_in":"45"}"#).unwrap(), ("a".into(), Some(45)));
        assert_eq!(ok(r#"{"access_token":"a"}"#).unwrap(), ("a".into(), None));
        assert_eq!(ok(r#"{"access_token":"a","expires_in":null}"#).unwrap(), ("a".into(), None));
        // hostile lifetimes parse without panicking (the schedule clamps them)
        assert_eq!(ok(r#"{"access_token":"a","expires_in":1e20}"#).unwrap(), ("a".into(), Some(i64::MAX)));
        assert_eq!(ok(r#"{"access_token":"a","expires_in":9e12,"extra":{"deep":[[[[1]]]]}}"#).unwrap(), ("a".into(), Some(9_000_000_000_000)));
        for bad in [
            r#"{"token":"a"}"#,
            r#"{"access_token":""}"#,
            r#"{"access_token":"a","token_type":"mac"}"#,
            r#"{"access_token":"a","expires_in":"soon"}"#,
            r#"{"access_token":"a","expires_in":0}"#,
            r#"{"access_token":"a","expires_in":-1e20}"#,
            r#"{"access_token":"a","expires_in":{"s":1}}"#,
            "not json",
        ] {
            let err = ok(bad).unwrap_err();
            assert_eq!(err.category(), "InvalidResponse", "{bad}");
            assert!(!err.to_string().contains("\"a\""), "{err}");
        }
    }
}

/// How many issuers discovery tries when the spec names none: the token
/// URL's longest path prefixes, then its origin (a hostile URL may have
/// hundreds of segments).
const MAX_ISSUER_CANDIDATES: usize = 6;

/// Issuers the token URL's server may have: its path prefixes, longest
/// first (Keycloak `…/realms/NAME`, Okta `…/oauth2/default`), then the
/// origin (Auth0).
fn issuer_candidates(token_url: &url::Url) -> Vec<url::Url> {
    let segments: Vec<&str> = token_url.path_segments().map(|s| s.filter(|x| !x.is_empty()).collect()).unwrap_or_default();
    let at = |n: usize| {
        let mut u = token_url.clone();
        u.set_query(None);
        u.set_fragment(None);
        u.set_path(&format!("/{}", segments[..n].join("/")));
        u
    };
    let longest = (1..segments.len()).rev().take(MAX_ISSUER_CANDIDATES - 1);
    longest.chain([0]).map(at).collect()
}

/// Where an issuer publishes its metadata: OpenID Connect Discovery 1.0 §4
/// (the issuer, then `/.well-known/openid-configuration`) and RFC 8414 §3
/// (`/.well-known/oauth-authorization-server` inserted before the path).
fn metadata_urls(issuer: &url::Url) -> [url::Url; 2] {
    let path = issuer.path().trim_end_matches('/').to_string();
    let mut oidc = issuer.clone();
    oidc.set_path(&format!("{path}/.well-known/openid-configuration"));
    let mut rfc8414 = issuer.clone();
    rfc8414.set_path(&format!("/.well-known/oauth-authorization-server{path}"));
    [oidc, rfc8414]
}

/// Does a document's `issuer` name this one (a trailing slash aside)?
fn same_issuer(claimed: &str, issuer: &url::Url) -> bool {
    claimed.trim_end_matches('/') == issuer.as_str().trim_end_matches('/')
}

/// The revocation endpoint: the spec's, else the issuer's metadata.
async fn revocation_endpoint(spec: &OAuth2Source, client: &httpclient::Client, token_url: &url::Url) -> Result<url::Url, SourceError> {
    let revoke = spec.revoke.as_ref();
    if let Some(u) = revoke.and_then(|r| r.revocation_url.as_deref()) {
        return checked_url("spec.source.oauth2.revoke.revocationURL", u, &spec.client);
    }
    #[derive(Deserialize)]
    struct Metadata {
        issuer: Option<String>,
        revocation_endpoint: Option<String>,
    }
    let issuers = match revoke.and_then(|r| r.issuer.as_deref()) {
        Some(i) => vec![checked_url("spec.source.oauth2.revoke.issuer", i, &spec.client)?],
        None => issuer_candidates(token_url),
    };
    for issuer in &issuers {
        for u in metadata_urls(issuer) {
            let endpoint = endpoint_of(&u);
            let Ok(resp) = client.send(client.get(&u)?, &endpoint).await else { continue };
            if !(200..300).contains(&resp.status) {
                continue;
            }
            let Ok(m) = serde_json::from_slice::<Metadata>(&resp.body) else { continue };
            // Another issuer's document (a tenant's neighbour at the same
            // origin) is not this server's.
            if !m.issuer.as_deref().is_some_and(|claimed| same_issuer(claimed, issuer)) {
                continue;
            }
            if let Some(e) = m.revocation_endpoint {
                return checked_url("revocation_endpoint", &e, &spec.client);
            }
        }
    }
    Err(SourceError::InvalidSpec {
        field: "spec.source.oauth2.revoke",
        problem: format!(
            "no metadata naming {} advertises a revocation_endpoint; set issuer or revocationURL",
            match issuers.as_slice() {
                [one] => format!("issuer {}", endpoint_of(one)),
                many => format!("any of the {} issuers the token URL suggests", many.len()),
            }
        ),
    })
}

#[cfg(test)]
mod discovery_tests {
    use super::*;

    fn u(s: &str) -> url::Url {
        url::Url::parse(s).unwrap()
    }

    #[test]
    fn issuers_follow_the_token_urls_path() {
        let got: Vec<String> = issuer_candidates(&u("https://sso.example.com/realms/team/protocol/openid-connect/token?x=1")).iter().map(|x| x.to_string()).collect();
        assert_eq!(got, [
            "https://sso.example.com/realms/team/protocol/openid-connect",
            "https://sso.example.com/realms/team/protocol",
            "https://sso.example.com/realms/team",
            "https://sso.example.com/realms",
            "https://sso.example.com/",
        ]);
        assert_eq!(issuer_candidates(&u("https://a.example/token")).len(), 1);
        // A hostile depth asks a bounded number of issuers, the origin always among them.
        let deep = format!("https://a.example/{}token", "x/".repeat(500));
        let c = issuer_candidates(&u(&deep));
        assert_eq!(c.len(), MAX_ISSUER_CANDIDATES);
        assert_eq!(c.last().unwrap().as_str(), "https://a.example/");
    }

    #[test]
    fn metadata_per_oidc_discovery_and_rfc_8414() {
        let [oidc, rfc] = metadata_urls(&u("https://sso.example.com/realms/team"));
        assert_eq!(oidc.as_str(), "https://sso.example.com/realms/team/.well-known/openid-configuration");
        assert_eq!(rfc.as_str(), "https://sso.example.com/.well-known/oauth-authorization-server/realms/team");
        let [oidc, rfc] = metadata_urls(&u("https://tenant.auth0.com/"));
        assert_eq!(oidc.as_str(), "https://tenant.auth0.com/.well-known/openid-configuration");
        assert_eq!(rfc.as_str(), "https://tenant.auth0.com/.well-known/oauth-authorization-server");
        assert!(same_issuer("https://tenant.auth0.com/", &u("https://tenant.auth0.com")));
        assert!(same_issuer("https://sso.example.com/realms/team", &u("https://sso.example.com/realms/team")));
        assert!(!same_issuer("https://sso.example.com/realms/other", &u("https://sso.example.com/realms/team")));
        assert!(!same_issuer("https://sso.example.com", &u("https://sso.example.com/realms/team")));
    }
}

/// Revoke an access token (RFC 7009), authenticating as for the token
/// request. `Ok` when the server answered 200.
pub async fn revoke(spec: &OAuth2Source, secrets: &super::SecretReader, net: &super::NetPolicy, token: &SecretString) -> Result<(), SourceError> {
    let token_url = checked_url("spec.source.oauth2.tokenURL", &spec.token_url, &spec.client)?;
    let client = httpclient::build(&spec.client, secrets, net).await?;
    let url = revocation_endpoint(spec, &client, &token_url).await?;
    let endpoint = endpoint_of(&url);
    let r = &spec.client_secret_ref;
    let mut data = secrets.data(&r.name).await?;
    let id = take_key(&mut data, &r.name, r.client_id_key.as_deref().unwrap_or("client_id"))?;
    let secret = take_key(&mut data, &r.name, r.client_secret_key.as_deref().unwrap_or("client_secret"))?;
    // Built before any await: the form serializer is not Send.
    let (body, authorization) = {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("token", token.expose_secret());
        form.append_pair("token_type_hint", "access_token");
        let authorization = client_auth(spec, &id, &secret, &mut form);
        (form.finish(), authorization)
    };
    let mut req = client.request(reqwest::Method::POST, &url)?.header("content-type", "application/x-www-form-urlencoded");
    if let Some(a) = authorization {
        let mut v = reqwest::header::HeaderValue::from_str(&a)
            .map_err(|_| SourceError::InvalidSpec { field: "spec.source.oauth2.clientSecretRef", problem: "the client id or secret cannot be sent in a header".into() })?;
        v.set_sensitive(true);
        req = req.header("authorization", v);
    }
    let resp = client.send(req.body(body), &endpoint).await?;
    if resp.status == 200 {
        Ok(())
    } else {
        Err(httpclient::status_error(&endpoint, &resp))
    }
}
