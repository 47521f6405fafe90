//! The OAuth2 server peer: oidc-provider (tests/peers/oauth2/server.mjs),
//! over http or https (optionally mutual TLS), at the root or mounted under
//! an issuer path.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::peers::{free_port, peers, sha256_hex, Proc, TempDir, NEXT_DIR};
use super::peers::TestCerts;

/// The OAuth2 server (oidc-provider) with a fixed port, so it can be stopped
/// and started again at the same address.
pub struct OAuth2Server {
    pub port: u16,
    pub secret: String,
    ttl: u64,
    dir: TempDir,
    proc: Option<Proc>,
    /// (server cert, key, CA, client CA required) when serving https.
    tls: Option<OAuth2Tls>,
    /// Mounted under this path (its issuer's), or at the root ("").
    mount: String,
}

/// How an [`OAuth2Server`] serves https.
#[derive(Clone)]
pub struct OAuth2Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    /// Demand a client certificate signed by the CA; the tests' own calls
    /// then present `client_cert`/`client_key`.
    pub client: Option<(PathBuf, PathBuf)>,
}

impl OAuth2Server {
    pub async fn start(ttl_seconds: u64) -> Self {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let secret = format!("client-secret-{}", &sha256_hex(format!("{}-{nanos}", std::process::id()).as_bytes())[..32]);
        let mut s = Self { port: free_port(), secret, ttl: ttl_seconds, dir: TempDir::new("oauth2"), proc: None, tls: None, mount: String::new() };
        s.launch().await;
        s
    }

    /// Mounted under `path` (its issuer is `http://127.0.0.1:PORT{path}`),
    /// with another tenant's discovery document at the root (see server.mjs).
    pub async fn start_mounted(ttl_seconds: u64, path: &str) -> Self {
        let mut s = Self::start_unlaunched(ttl_seconds);
        s.mount = path.to_string();
        s.launch().await;
        s
    }

    fn start_unlaunched(ttl_seconds: u64) -> Self {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let secret = format!("client-secret-{}", &sha256_hex(format!("mounted-{}-{nanos}", std::process::id()).as_bytes())[..32]);
        Self { port: free_port(), secret, ttl: ttl_seconds, dir: TempDir::new("oauth2"), proc: None, tls: None, mount: String::new() }
    }

    /// Requests that reached the other tenant's paths (mounted servers only).
    pub async fn foreign_requests(&self) -> u64 {
        let body = self.http().get(format!("http://127.0.0.1:{}/_stats", self.port)).send().await.unwrap().bytes().await.unwrap();
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()["foreign_requests"].as_u64().unwrap()
    }

    /// The same over https with certificates from [`TestCerts`]; with
    /// `mutual`, clients must present a certificate signed by the test CA.
    pub async fn start_tls(ttl_seconds: u64, certs: &TestCerts, mutual: bool) -> Self {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let secret = format!("client-secret-{}", &sha256_hex(format!("tls-{}-{nanos}", std::process::id()).as_bytes())[..32]);
        let tls = OAuth2Tls {
            cert: certs.path("server.crt"),
            key: certs.path("server.key"),
            ca: certs.path("ca.crt"),
            client: mutual.then(|| (certs.path("client.crt"), certs.path("client.key"))),
        };
        let mut s = Self { port: free_port(), secret, ttl: ttl_seconds, dir: TempDir::new("oauth2"), proc: None, tls: Some(tls), mount: String::new() };
        s.launch().await;
        s
    }

    pub fn base(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}{}", self.port, self.mount)
    }

    pub fn token_url(&self) -> String {
        format!("{}/token", self.base())
    }

    /// A client for the tests' own calls (stats, introspection).
    fn http(&self) -> reqwest::Client {
        regcred::install_crypto_provider();
        let mut b = reqwest::Client::builder();
        if let Some(t) = &self.tls {
            let ca = reqwest::Certificate::from_pem(&std::fs::read(&t.ca).unwrap()).unwrap();
            b = b.tls_built_in_root_certs(false).add_root_certificate(ca);
            if let Some((crt, key)) = &t.client {
                let mut pem = std::fs::read(crt).unwrap();
                pem.extend(std::fs::read(key).unwrap());
                b = b.identity(reqwest::Identity::from_pem(&pem).unwrap());
            }
        }
        b.build().unwrap()
    }

    /// The first start. The port was free when chosen, but any process may
    /// bind it before the server does (an ephemeral port): then the server
    /// exits, and it gets another port.
    async fn launch(&mut self) {
        for _ in 0..5 {
            if self.spawn_listening().await {
                return;
            }
            self.port = free_port();
        }
        panic!("the OAuth2 server found no free port in 5 tries");
    }

    /// Start again on the same port (after [`stop`](Self::stop)).
    pub async fn resume(&mut self) {
        assert!(self.spawn_listening().await, "the OAuth2 server could not listen on port {} again", self.port);
    }

    /// Spawn the server on `self.port` and wait until it says it listens
    /// there (its own line, not a connection that anything on the port
    /// would accept); false when it exited first.
    async fn spawn_listening(&mut self) -> bool {
        let script = peers().path("OAUTH2_SERVER");
        let mut cmd = Command::new("node");
        cmd.arg(script)
            .current_dir(script.parent().unwrap())
            .env("PORT", self.port.to_string())
            .env("TOKEN_TTL", self.ttl.to_string())
            .env("CLIENT_SECRET", &self.secret)
            .env("MOUNT_PATH", &self.mount);
        if let Some(t) = &self.tls {
            cmd.env("TLS_CERT", &t.cert).env("TLS_KEY", &t.key);
            if t.client.is_some() {
                cmd.env("TLS_CLIENT_CA", &t.ca);
            }
        }
        let n = NEXT_DIR.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = self.dir.join(&format!("oauth2-{n}.log"));
        let proc = self.proc.insert(Proc::spawn(cmd, log));
        let listening = format!("LISTENING {}", self.port);
        for _ in 0..300 {
            if proc.output().contains(&listening) {
                return true;
            }
            if !proc.is_running() {
                eprintln!("the OAuth2 server exited before listening on {}:\n{}", self.port, proc.output());
                self.proc = None;
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the OAuth2 server did not listen on {} within 15 s:\n{}", self.port, proc.output());
    }

    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop();
        }
    }

    /// (token requests, tokens issued) since this process started.
    pub async fn stats(&self) -> (u64, u64) {
        let body = self.http().get(format!("{}/_stats", self.base())).send().await.unwrap().bytes().await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        (v["token_requests"].as_u64().unwrap(), v["tokens_issued"].as_u64().unwrap())
    }

    /// Is this access token active, according to the server (RFC 7662)?
    pub async fn active(&self, token: &str) -> bool {
        let form: String = url::form_urlencoded::Serializer::new(String::new()).append_pair("token", token).finish();
        let body = self
            .http()
            .post(format!("{}/token/introspection", self.base()))
            .basic_auth("regcred-basic", Some(&self.secret))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        v["active"].as_bool().unwrap_or(false)
    }
}
