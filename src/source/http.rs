//! `http`: a generic token endpoint (a Docker token server, a vendor API)
//! whose JSON response is mapped by JSON pointers.

use base64::Engine;
use chrono::{DateTime, Duration, Utc};
use secrecy::{ExposeSecret, SecretString};

use super::httpclient::{self, checked_url, endpoint_of};
use super::reader::take_key;
use super::{parse_duration, MintFuture, Minted, SourceContext, SourceError, TokenSource};
use crate::api::{HttpMethod, HttpSource, ResponseMapping};
use crate::schedule;

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
            Some(d) => parse_duration("spec.source.http.response.defaultLifetime", d)?.clamp(Duration::seconds(1), schedule::MAX_LIFETIME),
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

/// A value found at a JSON pointer. Only what regcred reads is kept: text,
/// numbers, and "something else".
#[derive(Clone, Debug, PartialEq)]
pub enum Scalar {
    Text(String),
    Int(i64),
    Float(f64),
    Other,
}

/// A number of seconds given as a JSON number or numeric string
/// (saturating: hostile values are clamped by the schedule afterwards).
pub fn as_seconds(v: &Scalar) -> Option<i64> {
    match v {
        Scalar::Int(n) => Some(*n),
        Scalar::Float(f) => Some(*f as i64),
        Scalar::Text(s) => s.trim().parse::<f64>().ok().filter(|f| f.is_finite()).map(|f| f as i64),
        Scalar::Other => None,
    }
}

/// An absolute time given as RFC 3339 text or Unix seconds.
fn as_instant(v: &Scalar) -> Option<DateTime<Utc>> {
    if let Scalar::Text(s) = v {
        if let Ok(t) = DateTime::parse_from_rfc3339(s.trim()) {
            return Some(t.with_timezone(&Utc));
        }
    }
    as_seconds(v).and_then(|s| DateTime::from_timestamp(s, 0))
}

/// The tokens of an RFC 6901 pointer (`/a/b~1c` -> `a`, `b/c`).
fn pointer_tokens(pointer: &str) -> Vec<String> {
    if pointer.is_empty() {
        return Vec::new();
    }
    pointer.split('/').skip(1).map(|t| t.replace("~1", "/").replace("~0", "~")).collect()
}

/// Read the scalar at `pointer` straight from the bytes, skipping every
/// other value without building it: memory stays proportional to the
/// nesting depth, not to the body (a generic JSON tree of a hostile body
/// costs many times its size). `Err` when the body is not JSON.
pub fn at_pointer(body: &[u8], pointer: &str) -> Result<Option<Scalar>, serde_json::Error> {
    use serde::de::DeserializeSeed;
    let path = pointer_tokens(pointer);
    let mut de = serde_json::Deserializer::from_slice(body);
    let found = Walk { path: &path }.deserialize(&mut de)?;
    de.end()?;
    Ok(found)
}

impl<'de> serde::Deserialize<'de> for Scalar {
    /// A scalar field of a typed response (containers are skipped, not built).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::DeserializeSeed;
        Ok(Walk { path: &[] }.deserialize(d)?.unwrap_or(Scalar::Other))
    }
}

struct Walk<'p> {
    path: &'p [String],
}

impl<'de> serde::de::DeserializeSeed<'de> for Walk<'_> {
    type Value = Option<Scalar>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Walk<'_> {
    type Value = Option<Scalar>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON")
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(self.path.is_empty().then(|| Scalar::Text(v.to_string())))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(self.path.is_empty().then_some(Scalar::Int(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(self.path.is_empty().then(|| i64::try_from(v).map(Scalar::Int).unwrap_or(Scalar::Float(v as f64))))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(self.path.is_empty().then_some(Scalar::Float(v)))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(self.path.is_empty().then_some(Scalar::Other))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(self.path.is_empty().then_some(Scalar::Other))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        let mut matched = false;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            // The first of duplicate keys wins.
            if !matched && self.path.first().is_some_and(|p| *p == key) {
                matched = true;
                found = map.next_value_seed(Walk { path: &self.path[1..] })?;
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(if self.path.is_empty() { Some(Scalar::Other) } else { found })
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let want = self.path.first().and_then(|p| p.parse::<usize>().ok());
        let mut found = None;
        let mut i = 0usize;
        loop {
            let more = if Some(i) == want {
                match seq.next_element_seed(Walk { path: &self.path[1..] })? {
                    Some(v) => {
                        found = v;
                        true
                    }
                    None => false,
                }
            } else {
                seq.next_element::<serde::de::IgnoredAny>()?.is_some()
            };
            if !more {
                break;
            }
            i = i.saturating_add(1);
        }
        Ok(if self.path.is_empty() { Some(Scalar::Other) } else { found })
    }
}

/// The `exp` claim of a JWT, without verifying it (the registry does that;
/// regcred only needs to know when to renew).
pub fn jwt_expiry(token: &str) -> Option<DateTime<Utc>> {
    let mut parts = token.split('.');
    let (_, payload, _) = (parts.next()?, parts.next()?, parts.next()?);
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let exp = at_pointer(&bytes, "/exp").ok()??;
    as_seconds(&exp).and_then(|s| DateTime::from_timestamp(s, 0))
}

/// Map a JSON token response:
/// - password: `passwordPointer`, else `/token`, else `/access_token`;
/// - username: `usernamePointer`, else the fixed `username`, else `token`;
/// - expiry: `expiresAtPointer` (RFC 3339 or Unix seconds), else
///   `expiresInPointer` (default `/expires_in`) seconds after `now`, else
///   the token's JWT `exp`, else `now + default_lifetime`;
/// - lifetimes are clamped to `schedule::MAX_LIFETIME`.
pub fn map_response(
    body: &[u8],
    mapping: &ResponseMapping,
    now: DateTime<Utc>,
    default_lifetime: Duration,
    endpoint: &str,
) -> Result<Mapped, SourceError> {
    let invalid = |problem: String| SourceError::InvalidResponse { endpoint: endpoint.to_string(), problem };
    let at = |ptr: &str| at_pointer(body, ptr).map_err(|_| invalid("the response is not JSON".into()));
    let text_at = |ptr: &str| -> Result<Option<String>, SourceError> {
        Ok(match at(ptr)? {
            Some(Scalar::Text(s)) if !s.is_empty() => Some(s),
            _ => None,
        })
    };

    let password = match &mapping.password_pointer {
        Some(p) => text_at(p)?.ok_or_else(|| invalid(format!("no text at {p:?}")))?,
        None => match text_at("/token")? {
            Some(t) => t,
            None => text_at("/access_token")?.ok_or_else(|| invalid("neither token nor access_token is present".into()))?,
        },
    };
    let username = match &mapping.username_pointer {
        Some(p) => text_at(p)?.ok_or_else(|| invalid(format!("no text at {p:?}")))?,
        None => mapping.username.clone().unwrap_or_else(|| DEFAULT_USERNAME.to_string()),
    };
    let expires_at = if let Some(p) = &mapping.expires_at_pointer {
        let raw = at(p)?.ok_or_else(|| invalid(format!("nothing at {p:?}")))?;
        as_instant(&raw).ok_or_else(|| invalid(format!("{p:?} is neither RFC 3339 nor Unix seconds")))?
    } else {
        let p = mapping.expires_in_pointer.as_deref().unwrap_or("/expires_in");
        match at(p)? {
            Some(raw) => {
                let s = as_seconds(&raw).filter(|s| *s > 0).ok_or_else(|| invalid(format!("{p:?} is not a positive number of seconds")))?;
                schedule::expiry_after(now, s)
            }
            None => jwt_expiry(&password).unwrap_or_else(|| schedule::add(now, default_lifetime.min(schedule::MAX_LIFETIME))),
        }
    };
    if expires_at <= now {
        return Err(invalid("the token has already expired".into()));
    }
    let expires_at = schedule::clamp_expiry(now, expires_at);
    Ok(Mapped { username, password: SecretString::from(password), expires_at })
}

impl TokenSource for HttpToken {
    fn mint(&self) -> MintFuture<'_> {
        Box::pin(async move {
            let endpoint = endpoint_of(&self.url);
            let client = httpclient::build(&self.spec.client, &self.cx.secrets, &self.cx.net).await?;
            let method = match self.spec.method.unwrap_or_default() {
                HttpMethod::Get => reqwest::Method::GET,
                HttpMethod::Post => reqwest::Method::POST,
            };
            let mut req = client.request(method, &self.url)?.header("accept", "application/json");
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
            let resp = client.send(req, &endpoint).await?;
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
    fn hostile_lifetimes_are_clamped_or_refused() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let d = ResponseMapping::default();
        let max = now + schedule::MAX_LIFETIME;
        // (body, expected expiry): absurd lifetimes are believed for a year at most
        for (body, want) in [
            (r#"{"token":"t","expires_in":1e20}"#, max),
            (r#"{"token":"t","expires_in":9e12}"#, max),
            (r#"{"token":"t","expires_in":1e12}"#, max),
            (r#"{"token":"t","expires_in":18446744073709551615}"#, max),
            (r#"{"token":"t","expires_in":"1e300"}"#, max),
            (r#"{"token":"t","expires_in":1}"#, now + Duration::seconds(1)),
            (r#"{"token":"t","expires_in":1.9}"#, now + Duration::seconds(1)),
        ] {
            assert_eq!(map_response(body.as_bytes(), &d, now, DEFAULT_LIFETIME, "e").unwrap().expires_at, want, "{body}");
        }
        let jwt_9999 = jwt(r#"{"exp":253402300799}"#);
        let body = format!(r#"{{"token":"{jwt_9999}"}}"#);
        assert_eq!(map_response(body.as_bytes(), &d, now, DEFAULT_LIFETIME, "e").unwrap().expires_at, max);
        let at = ResponseMapping { expires_at_pointer: Some("/exp".into()), ..d.clone() };
        assert_eq!(map_response(br#"{"token":"t","exp":"9999-12-31T23:59:59Z"}"#, &at, now, DEFAULT_LIFETIME, "e").unwrap().expires_at, max);
        for body in [
            r#"{"token":"t","expires_in":0.5}"#,
            r#"{"token":"t","expires_in":-1e20}"#,
            r#"{"token":"t","expires_in":"NaN"}"#,
            r#"{"token":"t","expires_in":[1]}"#,
            r#"{"token":"t","expires_in":1e400}"#,
        ] {
            assert!(map_response(body.as_bytes(), &d, now, DEFAULT_LIFETIME, "e").is_err(), "{body}");
        }
        // a huge default lifetime is clamped too
        let r = map_response(br#"{"token":"t"}"#, &d, now, Duration::MAX, "e").unwrap();
        assert_eq!(r.expires_at, max);
    }

    #[test]
    fn pointers_walk_without_a_tree() {
        let body = br#"{"a":[{"x":1},{"b/c":{"d~e":"deep"}}],"n":-3,"big":18446744073709551615,"s":"v","a2":"dup","a2":"second"}"#;
        assert_eq!(at_pointer(body, "/a/1/b~1c/d~0e").unwrap(), Some(Scalar::Text("deep".into())));
        assert_eq!(at_pointer(body, "/n").unwrap(), Some(Scalar::Int(-3)));
        assert_eq!(at_pointer(body, "/big").unwrap(), Some(Scalar::Float(18446744073709551615.0)));
        assert_eq!(at_pointer(body, "/a").unwrap(), Some(Scalar::Other));
        assert_eq!(at_pointer(body, "/a/7").unwrap(), None);
        assert_eq!(at_pointer(body, "/zz").unwrap(), None);
        assert_eq!(at_pointer(body, "/a2").unwrap(), Some(Scalar::Text("dup".into())));
        assert!(at_pointer(b"{\"a\":1} trailing", "/a").is_err());
        assert!(at_pointer(b"not json", "/a").is_err());
    }

    #[test]
    fn jwt_exp() {
        assert_eq!(jwt_expiry(&jwt(r#"{"exp":1800000000}"#)).map(|t| t.timestamp()), Some(1_800_000_000));
        assert_eq!(jwt_expiry(&jwt(r#"{"sub":"x"}"#)), None);
        assert_eq!(jwt_expiry("opaque-token"), None);
    }
}
