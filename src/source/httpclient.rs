//! The HTTP client shared by the `oauth2` and `http` sources and the
//! registry login check: rustls with the public roots or a CA bundle from a
//! Secret, optional client certificate, timeouts, the admin's egress policy
//! (checked on IP literals before sending and on every DNS answer at connect
//! time), no redirects to other hosts, and a small bounded response body.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use secrecy::ExposeSecret;
use url::Url;

use super::{parse_duration, NetPolicy, SecretReader, SourceError};
use crate::api::HttpClientSettings;
use crate::egress;

/// Default of `--max-response-bytes`: token responses are small, and a
/// larger cap would let a few hostile endpoints exhaust the operator's memory.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 64 * 1024;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest request timeout (the CRD allows at most 60 s too).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);

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
    if !url.username().is_empty() || url.password().is_some() {
        // Checked at admission too; never sent as Basic auth.
        return Err(SourceError::InvalidSpec { field, problem: "must not contain user:password@ (use a Secret)".into() });
    }
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

/// An HTTP client bound to the egress policy and the response cap.
pub struct Client {
    http: reqwest::Client,
    net: NetPolicy,
}

/// Trust anchors from a PEM bundle (`what` names it in errors).
pub fn roots_from_pem(pem: &[u8], what: &str) -> Result<rustls::RootCertStore, SourceError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|_| SourceError::Tls(format!("{what} is not a PEM CA bundle")))?;
        roots.add(cert).map_err(|e| SourceError::Tls(format!("{what}: {e}")))?;
    }
    if roots.is_empty() {
        return Err(SourceError::Tls(format!("{what} holds no PEM certificate")));
    }
    Ok(roots)
}

/// CA certificates trusted besides the public roots, from the file named by
/// `SSL_CERT_FILE`: parsed once, by [`trust_ssl_cert_file`].
static EXTRA_ROOTS: std::sync::OnceLock<rustls::RootCertStore> = std::sync::OnceLock::new();

/// Trust the CA certificates of the PEM file `SSL_CERT_FILE` names, when it
/// is set, besides the public roots, for every client built without a CA
/// bundle of its own (the convention of OpenSSL, Go and curl: an admin's
/// private CA for every endpoint). Returns how many were added; an
/// unreadable or empty file is an error, so a typo does not go unnoticed.
pub fn trust_ssl_cert_file() -> Result<usize, SourceError> {
    let Some(path) = std::env::var_os("SSL_CERT_FILE").filter(|p| !p.is_empty()) else { return Ok(0) };
    let what = format!("SSL_CERT_FILE {}", std::path::Path::new(&path).display());
    let pem = std::fs::read(&path).map_err(|e| SourceError::Tls(format!("{what}: {e}")))?;
    let roots = roots_from_pem(&pem, &what)?;
    let n = roots.len();
    let _ = EXTRA_ROOTS.set(roots);
    Ok(n)
}

/// The public roots, and those of `SSL_CERT_FILE`.
fn default_roots() -> rustls::RootCertStore {
    let mut roots: rustls::RootCertStore = webpki_roots::TLS_SERVER_ROOTS.iter().cloned().collect();
    if let Some(extra) = EXTRA_ROOTS.get() {
        roots.roots.extend(extra.roots.iter().cloned());
    }
    roots
}

/// A client trusting `roots` (the public roots when `None`), without a
/// client certificate: what `regcred check` uses.
pub fn build_with_roots(roots: Option<rustls::RootCertStore>, timeout: Duration, net: &NetPolicy) -> Result<Client, SourceError> {
    let roots = roots.unwrap_or_else(default_roots);
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| SourceError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    finish(config, timeout, net)
}

/// Build a client for one endpoint.
pub async fn build(settings: &HttpClientSettings, secrets: &SecretReader, net: &NetPolicy) -> Result<Client, SourceError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = settings.tls.clone().unwrap_or_default();
    let roots = match &tls.ca_bundle_secret_ref {
        Some(ca) => {
            let pem = secrets.key(&ca.name, &ca.key).await?;
            roots_from_pem(pem.expose_secret().as_bytes(), &format!("Secret {:?} key {:?}", ca.name, ca.key))?
        }
        None => default_roots(),
    };
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
        Some(t) => parse_duration("timeout", t)?.to_std().unwrap_or(DEFAULT_TIMEOUT).clamp(Duration::from_millis(1), MAX_TIMEOUT),
        None => DEFAULT_TIMEOUT,
    };
    finish(config, timeout, net)
}

fn finish(config: rustls::ClientConfig, timeout: Duration, net: &NetPolicy) -> Result<Client, SourceError> {
    let policy = net.egress.clone();
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .timeout(timeout)
        .connect_timeout(timeout)
        .dns_resolver(Arc::new(egress::Resolver(net.egress.clone())))
        .redirect(reqwest::redirect::Policy::custom(move |attempt| {
            // Follow only to the same scheme, host and port, at most 5 times:
            // credentials must not travel to another host or over plain HTTP.
            if let Err(denied) = policy.check_url(attempt.url()) {
                return attempt.error(denied);
            }
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
        .map_err(|e| SourceError::Tls(format!("building the HTTP client: {e}")))?;
    Ok(Client { http, net: net.clone() })
}

impl Client {
    /// Start a request, refused before anything is sent when the egress
    /// policy denies the URL's host.
    pub fn request(&self, method: reqwest::Method, url: &Url) -> Result<reqwest::RequestBuilder, SourceError> {
        self.net.egress.check_url(url).map_err(|d| SourceError::EgressDenied { host: d.host })?;
        Ok(self.http.request(method, url.clone()))
    }

    pub fn get(&self, url: &Url) -> Result<reqwest::RequestBuilder, SourceError> {
        self.request(reqwest::Method::GET, url)
    }

    /// Send and read at most the response cap of the body.
    pub async fn send(&self, req: reqwest::RequestBuilder, endpoint: &str) -> Result<Response, SourceError> {
        let resp = self.send_head(req, endpoint).await?;
        read_capped(resp, endpoint, self.net.max_response_bytes).await
    }

    /// Send and return the response head; the body is not read (through a
    /// proxy, only after [`check_if_proxied`]).
    pub async fn send_head(&self, req: reqwest::RequestBuilder, endpoint: &str) -> Result<reqwest::Response, SourceError> {
        let req = req.build().map_err(|e| transport(endpoint, &e))?;
        check_if_proxied(&self.net, req.url()).await?;
        self.http.execute(req).await.map_err(|e| transport(endpoint, &e))
    }
}

/// A request to `url` through a proxy (the standard variables) goes out
/// only when the policy allows the name's addresses: the proxy connects, so
/// the resolver that filters direct connections is never asked.
pub(super) async fn check_if_proxied(net: &NetPolicy, url: &Url) -> Result<(), SourceError> {
    if !crate::proxy::proxied(url) {
        return Ok(());
    }
    let Some(url::Host::Domain(host)) = url.host() else { return Ok(()) };
    let unresolved = || SourceError::Transport { endpoint: endpoint_of(url), kind: "DNS lookup failed" };
    match net.egress.resolve(host, url.port_or_known_default().unwrap_or(443)).await {
        Ok(kept) if kept.is_empty() => Err(unresolved()),
        Ok(_) => Ok(()),
        Err(egress::Refusal::Denied(d)) => Err(SourceError::EgressDenied { host: d.host }),
        Err(egress::Refusal::Resolve(_)) => Err(unresolved()),
    }
}

/// A response read in full (bounded).
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Read a body, refusing it once it passes `max` bytes (a never-ending
/// body is cut there too; the request timeout bounds a slow one).
async fn read_capped(mut resp: reqwest::Response, endpoint: &str, max: usize) -> Result<Response, SourceError> {
    let status = resp.status().as_u16();
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(too_large(endpoint, max));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| transport(endpoint, &e))? {
        if body.len() + chunk.len() > max {
            return Err(too_large(endpoint, max));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Response { status, body })
}

fn too_large(endpoint: &str, max: usize) -> SourceError {
    SourceError::InvalidResponse { endpoint: endpoint.to_string(), problem: format!("response larger than {max} bytes") }
}

/// What went wrong on the way, in words that tell the failures apart.
pub(super) fn transport(endpoint: &str, e: &reqwest::Error) -> SourceError {
    if let Some(host) = egress_denied_in(e) {
        return SourceError::EgressDenied { host };
    }
    let kind = if e.is_timeout() {
        "timed out"
    } else if let Some(kind) = connection_kind(e) {
        kind
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

/// The host of an egress refusal somewhere in an error chain (of reqwest's
/// errors or another client's, such as the AWS SDK's).
pub(super) fn egress_denied_in(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    visit(e, |err| err.downcast_ref::<egress::EgressDenied>().map(|d| d.host.clone()))
}

/// Why a connection failed, when the error chain tells: TLS, DNS, refused
/// or timed out (for errors of other clients too, such as the AWS SDK's).
pub(super) fn connection_kind(e: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let io_kind = |k: std::io::ErrorKind| move |err: &(dyn std::error::Error + 'static)| err.downcast_ref::<std::io::Error>().filter(|io| io.kind() == k).map(|_| ());
    if let Some(kind) = visit(e, tls_kind) {
        Some(kind)
    } else if visit(e, |err| err.downcast_ref::<egress::ResolveFailed>().map(|_| ())).is_some() {
        Some("DNS lookup failed")
    } else if visit(e, io_kind(std::io::ErrorKind::ConnectionRefused)).is_some() {
        Some("connection refused")
    } else if visit(e, io_kind(std::io::ErrorKind::TimedOut)).is_some() {
        Some("timed out")
    } else if visit(e, |err| err.to_string().contains("dns error").then_some(())).is_some() {
        Some("DNS lookup failed")
    } else {
        None
    }
}

/// Call `f` on every error in the chain, including the errors wrapped inside
/// `io::Error`s, which nest (`source()` skips them: an `io::Error` reports its
/// inner error's source, not the inner error).
fn visit<T>(e: &(dyn std::error::Error + 'static), f: impl Fn(&(dyn std::error::Error + 'static)) -> Option<T>) -> Option<T> {
    fn walk<T>(e: &(dyn std::error::Error + 'static), f: &dyn Fn(&(dyn std::error::Error + 'static)) -> Option<T>, depth: u8) -> Option<T> {
        if depth > 32 {
            return None;
        }
        if let Some(v) = f(e) {
            return Some(v);
        }
        if let Some(inner) = e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            let inner: &(dyn std::error::Error + 'static) = inner;
            if let Some(v) = walk(inner, f, depth + 1) {
                return Some(v);
            }
        }
        e.source().and_then(|s| walk(s, f, depth + 1))
    }
    walk(e, &f, 0)
}

fn tls_kind(err: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    let e = err.downcast_ref::<E>()?;
    Some(match e {
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => "TLS: the server's certificate has expired",
        E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            "TLS: the server's certificate is not valid for this host name"
        }
        E::InvalidCertificate(C::UnknownIssuer) => "TLS: the server's certificate is not signed by a trusted CA",
        E::InvalidCertificate(_) => "TLS: the server's certificate is invalid",
        E::AlertReceived(A::CertificateRequired | A::BadCertificate | A::UnknownCA | A::HandshakeFailure) => {
            "TLS: the server refused the handshake (client certificate missing or not accepted)"
        }
        _ => "TLS handshake failed",
    })
}

/// Error codes an endpoint may put in status: RFC 6749 §5.2 and RFC 6750
/// §3.1 (OAuth2), and the Docker registry API's codes. Anything else may be a
/// reflected secret and is reported as unrecognised.
const KNOWN_CODES: &[&str] = &[
    "invalid_request", "invalid_client", "invalid_grant", "unauthorized_client", "unsupported_grant_type",
    "invalid_scope", "invalid_token", "insufficient_scope", "temporarily_unavailable", "server_error",
    "access_denied", "UNAUTHORIZED", "DENIED", "UNSUPPORTED", "TOOMANYREQUESTS", "NAME_UNKNOWN",
    "NAME_INVALID", "MANIFEST_UNKNOWN", "BLOB_UNKNOWN",
];

#[derive(serde::Deserialize)]
struct ErrorBody {
    #[serde(default)]
    error: Option<serde_json::Value>,
    #[serde(default)]
    errors: Option<Vec<RegistryErrorCode>>,
}

#[derive(serde::Deserialize)]
struct RegistryErrorCode {
    #[serde(default)]
    code: Option<serde_json::Value>,
}

/// Turn a non-2xx response into an error carrying only a registered error
/// code (`error` of an OAuth2 error, or `errors[0].code` of a registry error).
pub fn status_error(endpoint: &str, r: &Response) -> SourceError {
    let parsed = serde_json::from_slice::<ErrorBody>(&r.body).ok();
    let raw = parsed.and_then(|b| {
        b.error.or_else(|| b.errors.and_then(|e| e.into_iter().next()).and_then(|c| c.code))
    });
    let code = raw.map(|v| match v.as_str() {
        Some(c) if KNOWN_CODES.contains(&c) => c.to_string(),
        _ => "unrecognised error code".to_string(),
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
    fn userinfo_is_refused() {
        let s = HttpClientSettings::default();
        let e = checked_url("url", "https://user:pw@auth.example/t", &s).unwrap_err();
        assert!(!e.to_string().contains("pw"), "{e}");
    }

    #[test]
    fn reflected_secrets_are_not_codes() {
        // The client secret in `error` (a hostile or broken server): never echoed.
        let r = Response { status: 400, body: br#"{"error":"s3cr3t_client_value"}"#.to_vec() };
        assert_eq!(status_error("e", &r).to_string(), "e answered HTTP 400 (unrecognised error code)");
        let r = Response { status: 400, body: br#"{"error":{"nested":"s3cr3t"}}"#.to_vec() };
        assert_eq!(status_error("e", &r).to_string(), "e answered HTTP 400 (unrecognised error code)");
        let r = Response { status: 401, body: br#"{"errors":[{"code":"s3cr3t"}]}"#.to_vec() };
        assert_eq!(status_error("e", &r).to_string(), "e answered HTTP 401 (unrecognised error code)");
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

