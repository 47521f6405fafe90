//! `http`: a generic token endpoint (a Docker token server, a vendor API)
//! whose JSON response is mapped by JSON pointers.

use base64::Engine;
use chrono::{DateTime, Duration, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use super::httpclient::{self, checked_url, endpoint_of};
use super::reader::take_key;
use super::{parse_duration, MintFuture, Minted, SourceContext, SourceError, TokenSource};
use crate::api::{HttpMethod, HttpSource, ResponseMapping};

/// Lifetime assumed without any expiry information (the Docker token spec's 60 s).
pub const DEFAULT_LIFETIME: Duration = Duration::seconds(60);
/// Username written when the response and spec name none.
pub const DEFAULT_USERNAME: &str = "token";

pub struct HttpToken {
    spec: HttpSource,
    url: url::Url,
    default_lifetime: Duration,
    cx: SourceContext,
}

impl HttpToken {
    pub fn new(spec: HttpSource, cx: SourceContext) -> Result<Self, SourceError> {
        let mut url = checked_url("spec.source.http.url", &spec.url, &spec.client)?;
        if !spec.query.is_empty() {
            url.query_pairs_mut().extend_pairs(spec.query.iter());
        }
        let default_lifetime = match spec.response.as_ref().and_then(|r| r.default_lifetime.as_deref()) {
            Some(d) => parse_duration("spec.source.http.response.defaultLifetime", d)?,
            None => DEFAULT_LIFETIME,
        };
        Ok(Self { spec, url, default_lifetime, cx })
    }
}

/// The credential read out of a token response.
#[derive(Debug)]
pub struct Mapped {
    pub username: String,
    pub password: SecretString,
    pub expires_at: DateTime<Utc>,
}

/// A number of seconds given as a JSON number or numeric string.
pub fn as_seconds(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s.trim().parse::<f64>().ok().map(|f| f as i64),
        _ => None,
    }
}

/// An absolute time given as RFC 3339 text or Unix seconds.
fn as_instant(v: &Value) -> Option<DateTime<Utc>> {
    if let Value::String(s) = v {
        if let Ok(t) = DateTime::parse_from_rfc3339(s.trim()) {
            return Some(t.with_timezone(&Utc));
        }
    }
    as_seconds(v).and_then(|s| DateTime::from_timestamp(s, 0))
}

/// The `exp` claim of a JWT, without verifying it (the registry does that;
/// regcred only needs to know when to renew).
pub fn jwt_expiry(token: &str) -> Option<DateTime<Utc>> {
    let mut parts = token.split('.');
    let (_, payload, _) = (parts.next()?, parts.next()?, parts.next()?);
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("exp").and_then(as_seconds).and_then(|s| DateTime::from_timestamp(s, 0))
}

/// Map a JSON token response:
/// - password: `passwordPointer`, else `/token`, else `/access_token`;
/// - username: `usernamePointer`, else the fixed `username`, else `token`;
/// - expiry: `expiresAtPointer` (RFC 3339 or Unix seconds), else
///   `expiresInPointer` (default `/expires_in`) seconds after `now`, else
///   the token's JWT `exp`, else `now + default_lifetime`.
pub fn map_response(
    body: &[u8],
    mapping: &ResponseMapping,
    now: DateTime<Utc>,
    default_lifetime: Duration,
    endpoint: &str,
) -> Result<Mapped, SourceError> {
    let invalid = |problem: String| SourceError::InvalidResponse { endpoint: endpoint.to_string(), problem };
    let v: Value = serde_json::from_slice(body).map_err(|_| invalid("the response is not JSON".into()))?;
    let text_at = |ptr: &str| v.pointer(ptr).and_then(Value::as_str).filter(|s| !s.is_empty());

    let password = match &mapping.password_pointer {
        Some(p) => text_at(p).ok_or_else(|| invalid(format!("no text at {p:?}")))?,
        None => text_at("/token")
            .or_else(|| text_at("/access_token"))
            .ok_or_else(|| invalid("neither token nor access_token is present".into()))?,
    };
    let username = match &mapping.username_pointer {
        Some(p) => text_at(p).ok_or_else(|| invalid(format!("no text at {p:?}")))?.to_string(),
        None => mapping.username.clone().unwrap_or_else(|| DEFAULT_USERNAME.to_string()),
    };
    let expires_at = if let Some(p) = &mapping.expires_at_pointer {
        let raw = v.pointer(p).ok_or_else(|| invalid(format!("nothing at {p:?}")))?;
        as_instant(raw).ok_or_else(|| invalid(format!("{p:?} is neither RFC 3339 nor Unix seconds")))?
    } else {
        let p = mapping.expires_in_pointer.as_deref().unwrap_or("/expires_in");
        match v.pointer(p) {
            Some(raw) => {
                let s = as_seconds(raw).filter(|s| *s > 0).ok_or_else(|| invalid(format!("{p:?} is not a positive number of seconds")))?;
                now + Duration::seconds(s)
            }
            None => jwt_expiry(password).unwrap_or(now + default_lifetime),
        }
    };
    if expires_at <= now {
        return Err(invalid("the token has already expired".into()));
    }
    Ok(Mapped { username, password: SecretString::from(password.to_string()), expires_at })
}

impl TokenSource for HttpToken {
    fn mint(&self) -> MintFuture<'_> {
        Box::pin(async move {
            let endpoint = endpoint_of(&self.url);
            let client = httpclient::build(&self.spec.client, &self.cx.secrets).await?;
            let mut req = match self.spec.method.unwrap_or_default() {
                HttpMethod::Get => client.get(self.url.clone()),
                HttpMethod::Post => client.post(self.url.clone()),
            }
            .header("accept", "application/json");
            for h in &self.spec.headers {
                let value = match (&h.value, &h.value_from) {
                    (Some(v), _) => SecretString::from(v.clone()),
                    (None, Some(r)) => self.cx.secrets.key(&r.name, &r.key).await?,
                    (None, None) => {
                        return Err(SourceError::InvalidSpec {
                            field: "spec.source.http.headers",
                            problem: format!("header {:?} has neither value nor valueFrom", h.name),
                        })
                    }
                };
                let mut hv = reqwest::header::HeaderValue::from_str(value.expose_secret()).map_err(|_| {
                    SourceError::InvalidSpec {
                        field: "spec.source.http.headers",
                        problem: format!("the value of header {:?} is not a valid header value", h.name),
                    }
                })?;
                hv.set_sensitive(true);
                req = req.header(h.name.as_str(), hv);
            }
            if let Some(auth) = &self.spec.auth {
                if let Some(b) = &auth.basic {
                    let mut data = self.cx.secrets.data(&b.name).await?;
                    let user = take_key(&mut data, &b.name, "username")?;
                    let pass = take_key(&mut data, &b.name, "password")?;
                    req = req.basic_auth(user.expose_secret(), Some(pass.expose_secret()));
                } else if let Some(r) = &auth.bearer {
                    let token = self.cx.secrets.key(&r.name, &r.key).await?;
                    req = req.bearer_auth(token.expose_secret());
                }
            }
            let now = (self.cx.now)();
            let resp = httpclient::send(req, &endpoint).await?;
            if !(200..300).contains(&resp.status) {
                return Err(httpclient::status_error(&endpoint, &resp));
            }
            let mapping = self.spec.response.clone().unwrap_or_default();
            let m = map_response(&resp.body, &mapping, now, self.default_lifetime, &endpoint)?;
            Ok(Minted::for_all(&self.spec.registries, &m.username, &m.password, now, Some(m.expires_at)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &str) -> String {
        let e = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.sig", e(r#"{"alg":"none"}"#), e(claims))
    }

    #[test]
    fn mapping_table() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let at = |s: i64| now + Duration::seconds(s);
        let m = |username_pointer: Option<&str>, password_pointer: Option<&str>, expires_in: Option<&str>, expires_at: Option<&str>| ResponseMapping {
            username_pointer: username_pointer.map(Into::into),
            password_pointer: password_pointer.map(Into::into),
            expires_in_pointer: expires_in.map(Into::into),
            expires_at_pointer: expires_at.map(Into::into),
            ..Default::default()
        };
        let token_jwt = jwt(r#"{"exp":1800000500}"#);
        let body_jwt = format!(r#"{{"token":"{token_jwt}"}}"#);
        // (body, mapping, want username, want password, want expiry)
        let cases: Vec<(&str, ResponseMapping, &str, &str, DateTime<Utc>)> = vec![
            // Docker token server: token + expires_in
            (r#"{"token":"t1","expires_in":300,"issued_at":"2027-01-15T08:00:00Z"}"#, m(None, None, None, None), "token", "t1", at(300)),
            // access_token only, no expiry -> default 60 s
            (r#"{"access_token":"t2"}"#, m(None, None, None, None), "token", "t2", at(60)),
            // both present: token wins
            (r#"{"token":"t3","access_token":"other"}"#, m(None, None, None, None), "token", "t3", at(60)),
            // nested pointers and a username from the response
            (r#"{"data":{"user":"robot$x","secret":"t4","ttl":"90"}}"#, m(Some("/data/user"), Some("/data/secret"), Some("/data/ttl"), None), "robot$x", "t4", at(90)),
            // expires_at as RFC 3339
            (r#"{"token":"t5","exp":"2027-06-01T08:00:00+02:00"}"#, m(None, None, None, Some("/exp")), "token", "t5", DateTime::parse_from_rfc3339("2027-06-01T06:00:00Z").unwrap().into()),
            // expires_at as epoch seconds
            (r#"{"token":"t6","exp":1800000123}"#, m(None, None, None, Some("/exp")), "token", "t6", at(123)),
            // JWT exp claim when no expires_in
            (body_jwt.as_str(), m(None, None, None, None), "token", token_jwt.as_str(), at(500)),
        ];
        for (i, (body, mapping, user, pass, exp)) in cases.into_iter().enumerate() {
            let got = map_response(body.as_bytes(), &mapping, now, DEFAULT_LIFETIME, "e").unwrap_or_else(|e| panic!("case {i}: {e}"));
            assert_eq!(got.username, user, "case {i}");
            assert_eq!(got.password.expose_secret(), pass, "case {i}");
            assert_eq!(got.expires_at, exp, "case {i}");
        }
    }

    #[test]
    fn mapping_errors_never_echo_the_body() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let d = ResponseMapping::default();
        let bad: &[(&str, ResponseMapping)] = &[
            ("secret-token-zzz", d.clone()),
            (r#"{"tok":"secret-token-zzz"}"#, d.clone()),
            (r#"{"token":"secret-token-zzz","expires_in":-5}"#, d.clone()),
            (r#"{"token":"secret-token-zzz","expires_in":"later"}"#, d.clone()),
            (r#"{"token":"secret-token-zzz","exp":1}"#, ResponseMapping { expires_at_pointer: Some("/exp".into()), ..d.clone() }),
            (r#"{"token":"secret-token-zzz"}"#, ResponseMapping { password_pointer: Some("/nope".into()), ..d.clone() }),
        ];
        for (body, mapping) in bad {
            let e = map_response(body.as_bytes(), mapping, now, DEFAULT_LIFETIME, "https://x/t").unwrap_err();
            assert_eq!(e.category(), "InvalidResponse");
            assert!(!e.to_string().contains("secret-token-zzz"), "{e}");
        }
    }

    #[test]
    fn jwt_exp() {
        assert_eq!(jwt_expiry(&jwt(r#"{"exp":1800000000}"#)).map(|t| t.timestamp()), Some(1_800_000_000));
        assert_eq!(jwt_expiry(&jwt(r#"{"sub":"x"}"#)), None);
        assert_eq!(jwt_expiry("opaque-token"), None);
    }
}
