//! The HTTP client shared by the `oauth2` and `http` sources: rustls with the
//! public roots or a CA bundle from a Secret, optional client certificate,
//! timeouts, no redirects to other hosts, and a bounded response body.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use secrecy::ExposeSecret;
use url::Url;

use super::{parse_duration, SecretReader, SourceError};
use crate::api::HttpClientSettings;

/// Largest token response read; larger ones are rejected as invalid.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// `scheme://host[:port]/path` of a URL: what error messages may show.
/// Query and fragment are dropped (they may carry secrets), as is userinfo.
pub fn endpoint_of(url: &Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.set_fragment(None);
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.to_string()
}

/// Parse and check a URL from the spec: http(s) only, http only when allowed.
pub fn checked_url(field: &'static str, raw: &str, settings: &HttpClientSettings) -> Result<Url, SourceError> {
    let url = Url::parse(raw).map_err(|e| SourceError::InvalidSpec { field, problem: format!("not a URL: {e}") })?;
    match url.scheme() {
        "https" => Ok(url),
        "http" if settings.allow_insecure_http == Some(true) => Ok(url),
        "http" => Err(SourceError::InvalidSpec {
            field,
            problem: "must use https:// (set allowInsecureHTTP: true to allow http://)".into(),
        }),
        other => Err(SourceError::InvalidSpec { field, problem: format!("unsupported scheme {other:?}") }),
    }
}

/// Build a client for one endpoint host.
pub async fn build(settings: &HttpClientSettings, secrets: &SecretReader) -> Result<reqwest::Client, SourceError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let tls = settings.tls.clone().unwrap_or_default();
    if let Some(ca) = &tls.ca_bundle_secret_ref {
        let pem = secrets.key(&ca.name, &ca.key).await?;
        let mut n = 0;
        for cert in CertificateDer::pem_slice_iter(pem.expose_secret().as_bytes()) {
            let cert = cert.map_err(|_| SourceError::Tls(format!("Secret {:?} key {:?} is not a PEM CA bundle", ca.name, ca.key)))?;
            roots
                .add(cert)
                .map_err(|e| SourceError::Tls(format!("CA bundle in Secret {:?}: {e}", ca.name)))?;
            n += 1;
        }
        if n == 0 {
            return Err(SourceError::Tls(format!("Secret {:?} key {:?} holds no PEM certificate", ca.name, ca.key)));
        }
    } else {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SourceError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    let config = match &tls.client_certificate_secret_ref {
        None => builder.with_no_client_auth(),
        Some(r) => {
            let mut data = secrets.data(&r.name).await?;
            let crt = super::reader::take_key(&mut data, &r.name, "tls.crt")?;
            let key = super::reader::take_key(&mut data, &r.name, "tls.key")?;
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(crt.expose_secret().as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|_| SourceError::Tls(format!("Secret {:?} key \"tls.crt\" is not PEM", r.name)))?;
            let key = PrivateKeyDer::from_pem_slice(key.expose_secret().as_bytes())
                .map_err(|_| SourceError::Tls(format!("Secret {:?} key \"tls.key\" is not a PEM private key", r.name)))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| SourceError::Tls(format!("client certificate in Secret {:?}: {e}", r.name)))?
        }
    };
    let timeout = match &settings.timeout {
        Some(t) => parse_duration("timeout", t)?.to_std().unwrap_or(DEFAULT_TIMEOUT),
        None => DEFAULT_TIMEOUT,
    };
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::custom(|attempt| {
            // Follow only to the same scheme, host and port, at most 5 times:
            // credentials must not travel to another host or over plain HTTP.
            let first = attempt.previous().first().cloned();
            let same = first.is_some_and(|f| {
                f.scheme() == attempt.url().scheme()
                    && f.host_str() == attempt.url().host_str()
                    && f.port_or_known_default() == attempt.url().port_or_known_default()
            });
            if same && attempt.previous().len() <= 5 {
                attempt.follow()
            } else {
                attempt.stop()
            }
        }))
        .build()
        .map_err(|e| SourceError::Tls(format!("building the HTTP client: {e}")))
}

/// A response read in full (bounded).
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Send a request and read at most [`MAX_RESPONSE_BYTES`] of its body.
pub async fn send(req: reqwest::RequestBuilder, endpoint: &str) -> Result<Response, SourceError> {
    let mut resp = req.send().await.map_err(|e| transport(endpoint, &e))?;
    let status = resp.status().as_u16();
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| transport(endpoint, &e))? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(SourceError::InvalidResponse {
                endpoint: endpoint.to_string(),
                problem: format!("response larger than {MAX_RESPONSE_BYTES} bytes"),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Response { status, body })
}

pub(super) fn transport(endpoint: &str, e: &reqwest::Error) -> SourceError {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_redirect() {
        "redirect refused"
    } else if e.is_body() || e.is_decode() {
        "reading the response failed"
    } else {
        "request failed"
    };
    SourceError::Transport { endpoint: endpoint.to_string(), kind }
}

/// Turn a non-2xx response into an error carrying only a bounded error code
/// (`error` of an OAuth2 error, or `errors[0].code` of a registry error).
pub fn status_error(endpoint: &str, r: &Response) -> SourceError {
    let code = serde_json::from_slice::<serde_json::Value>(&r.body).ok().and_then(|v| {
        v.get("error")
            .and_then(|e| e.as_str())
            .or_else(|| v.pointer("/errors/0/code").and_then(|e| e.as_str()))
            .and_then(super::error::bounded_code)
    });
    SourceError::HttpStatus { endpoint: endpoint.to_string(), status: r.status, code }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_drops_query_and_userinfo() {
        let u = Url::parse("https://user:pw@auth.example:8443/token?scope=a&secret=x#f").unwrap();
        assert_eq!(endpoint_of(&u), "https://auth.example:8443/token");
    }

    #[test]
    fn http_needs_the_opt_in() {
        let mut s = HttpClientSettings::default();
        assert!(checked_url("url", "http://127.0.0.1/t", &s).is_err());
        assert!(checked_url("url", "ftp://x/t", &s).is_err());
        assert!(checked_url("url", "https://x/t", &s).is_ok());
        s.allow_insecure_http = Some(true);
        assert!(checked_url("url", "http://127.0.0.1/t", &s).is_ok());
    }

    #[test]
    fn status_error_keeps_only_codes() {
        let r = Response { status: 400, body: br#"{"error":"invalid_client","error_description":"secret abc123 wrong"}"#.to_vec() };
        let e = status_error("https://x/t", &r).to_string();
        assert_eq!(e, "https://x/t answered HTTP 400 (invalid_client)");
        let r = Response { status: 401, body: br#"{"errors":[{"code":"UNAUTHORIZED","message":"m"}]}"#.to_vec() };
        assert_eq!(status_error("e", &r).to_string(), "e answered HTTP 401 (UNAUTHORIZED)");
        let r = Response { status: 500, body: b"<html>token=secret</html>".to_vec() };
        assert_eq!(status_error("e", &r).to_string(), "e answered HTTP 500");
    }
}
