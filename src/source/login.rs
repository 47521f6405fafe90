//! A registry login check, as `docker login` does it: `GET /v2/`, then
//! answer the challenge (Basic directly, or Bearer through the token
//! server named in `WWW-Authenticate`) with the username and password.

use secrecy::ExposeSecret;
use url::Url;

use super::httpclient::{self, endpoint_of};
use super::{RegistryAuth, SourceError};

/// Base URL of a registry key: `host[:port]`, or a URL such as
/// `https://index.docker.io/v1/` (Docker Hub's key, served by `registry-1.docker.io`).
pub fn registry_base(key: &str, allow_http: bool) -> Result<Url, SourceError> {
    let with_scheme = if key.starts_with("https://") || key.starts_with("http://") {
        key.to_string()
    } else {
        format!("{}://{key}", if allow_http { "http" } else { "https" })
    };
    let mut url = Url::parse(&with_scheme).map_err(|_| SourceError::InvalidSpec {
        field: "spec.source.basic.registries",
        problem: format!("{key:?} is not a registry host"),
    })?;
    if matches!(url.host_str(), Some("index.docker.io" | "docker.io")) {
        let _ = url.set_host(Some("registry-1.docker.io"));
    }
    if url.scheme() == "http" && !allow_http {
        let _ = url.set_scheme("https");
    }
    url.set_path("/v2/");
    url.set_query(None);
    Ok(url)
}

/// The parameters of a `WWW-Authenticate` challenge: scheme and key/value pairs.
pub fn parse_challenge(header: &str) -> Option<(String, Vec<(String, String)>)> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = Vec::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let after = after.trim_start();
        let (value, tail) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"')?;
            (q[..end].to_string(), &q[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        params.push((key.trim().to_ascii_lowercase(), value));
        rest = tail.trim_start().trim_start_matches(',').trim_start();
    }
    Some((scheme.to_ascii_lowercase(), params))
}

/// Check that `auth` logs in to its registry. `Ok(())` when the registry
/// accepts it (or asks for no authentication at all).
pub async fn check(client: &httpclient::Client, auth: &RegistryAuth, allow_http: bool) -> Result<(), SourceError> {
    let base = registry_base(&auth.registry, allow_http)?;
    let endpoint = endpoint_of(&base);
    let first = client.send_head(client.get(&base)?, &endpoint).await?;
    match first.status().as_u16() {
        200..=299 => return Ok(()),
        401 => {}
        s => return Err(SourceError::HttpStatus { endpoint, status: s, code: None }),
    }
    let challenge = first
        .headers()
        .get("www-authenticate")
        .and_then(|h| h.to_str().ok())
        .and_then(parse_challenge)
        .ok_or_else(|| SourceError::InvalidResponse { endpoint: endpoint.clone(), problem: "401 without a usable WWW-Authenticate challenge".into() })?;
    let password = auth.password.expose_secret();
    let (url, endpoint) = match challenge.0.as_str() {
        "basic" => (base.clone(), endpoint),
        "bearer" => {
            let get = |k: &str| challenge.1.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
            let realm = get("realm").ok_or_else(|| SourceError::InvalidResponse { endpoint: endpoint.clone(), problem: "Bearer challenge without realm".into() })?;
            let mut url = Url::parse(&realm).map_err(|_| SourceError::InvalidResponse { endpoint: endpoint.clone(), problem: "Bearer realm is not a URL".into() })?;
            if url.scheme() == "http" && !allow_http {
                return Err(SourceError::InvalidResponse { endpoint, problem: "the token server is not on https".into() });
            }
            if let Some(service) = get("service") {
                url.query_pairs_mut().append_pair("service", &service);
            }
            let ep = endpoint_of(&url);
            (url, ep)
        }
        _ => return Err(SourceError::InvalidResponse { endpoint, problem: "unsupported authentication scheme".into() }),
    };
    let req = client.get(&url)?.basic_auth(&auth.username, Some(password));
    let resp = client.send(req, &endpoint).await?;
    if (200..300).contains(&resp.status) {
        Ok(())
    } else {
        Err(httpclient::status_error(&endpoint, &resp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bases() {
        let b = |k: &str, h: bool| registry_base(k, h).unwrap().to_string();
        assert_eq!(b("registry.example.com", false), "https://registry.example.com/v2/");
        assert_eq!(b("127.0.0.1:5000", true), "http://127.0.0.1:5000/v2/");
        assert_eq!(b("https://index.docker.io/v1/", false), "https://registry-1.docker.io/v2/");
        assert_eq!(b("http://r.example/", false), "https://r.example/v2/");
    }

    #[test]
    fn challenges() {
        let (s, p) = parse_challenge(r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a:pull""#).unwrap();
        assert_eq!(s, "bearer");
        assert_eq!(p[0], ("realm".to_string(), "https://auth.example/token".to_string()));
        assert_eq!(p[1], ("service".to_string(), "registry.example".to_string()));
        assert_eq!(p[2].0, "scope");
        let (s, p) = parse_challenge(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!((s.as_str(), p[0].1.as_str()), ("basic", "Registry Realm"));
        assert_eq!(parse_challenge("Basic").unwrap().1.len(), 0);
    }
}
