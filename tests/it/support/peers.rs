//! Real third-party peers on 127.0.0.1: Debian's docker-registry with
//! htpasswd or token authentication, distribution's Docker token server,
//! an OAuth2 server (oidc-provider), and skopeo as the registry client.

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::oauth2::OAuth2Server;
use super::repo_root;

/// Paths printed by tests/peers/install.sh.
pub struct Peers(HashMap<String, PathBuf>);

static PEERS: OnceLock<Peers> = OnceLock::new();

pub fn peers() -> &'static Peers {
    PEERS.get_or_init(|| {
        let out = Command::new(repo_root().join("tests/peers/install.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("running tests/peers/install.sh");
        assert!(out.status.success(), "tests/peers/install.sh failed");
        let map = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), PathBuf::from(v)))
            .collect();
        Peers(map)
    })
}

impl Peers {
    pub fn path(&self, name: &str) -> &Path {
        self.0.get(name).unwrap_or_else(|| panic!("peer {name} not installed"))
    }
}

/// A port nothing listens on, never the same twice in this process (tests
/// run in parallel and bind their servers a moment later).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

pub(crate) static NEXT_DIR: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl TempDir {
    pub fn new(prefix: &str) -> Self {
        let n = NEXT_DIR.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("regcred-{prefix}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
    pub fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed on drop, its output in a log file.
pub struct Proc {
    child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(mut cmd: Command, log: PathBuf) -> Self {
        let f = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        Self { child, log }
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL, then wait: a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait.
    pub fn stop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn wait_port(port: u16) {
    for _ in 0..150 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("nothing listens on 127.0.0.1:{port}");
}

fn htpasswd_file(path: &Path, users: &[(&str, &str)]) {
    let mut out = String::new();
    for (u, p) in users {
        let o = Command::new(peers().path("HTPASSWD")).args(["-Bbn", u, p]).output().unwrap();
        assert!(o.status.success());
        out.push_str(String::from_utf8_lossy(&o.stdout).trim());
        out.push('\n');
    }
    std::fs::write(path, out).unwrap();
}

/// An EC key and a self-signed certificate for signing registry tokens.
fn signing_cert(key: &Path, crt: &Path) {
    let ok = Command::new("openssl")
        .args(["ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out"])
        .arg(key)
        .status()
        .unwrap()
        .success()
        && Command::new("openssl")
            .args(["req", "-x509", "-new", "-days", "2", "-subj", "/CN=regcred-test-token", "-key"])
            .arg(key)
            .arg("-out")
            .arg(crt)
            .status()
            .unwrap()
            .success();
    assert!(ok, "openssl failed");
}

/// A running docker-registry.
pub struct Registry {
    pub host: String,
    pub token_server: Option<String>,
    /// A directory holding the test CA as `ca.crt`, for skopeo's
    /// `--*-cert-dir`, when the registry serves https.
    pub cert_dir: Option<PathBuf>,
    dir: TempDir,
    _procs: Vec<Proc>,
}

impl Registry {
    /// A registry with htpasswd (Basic) authentication.
    pub async fn htpasswd(users: &[(&str, &str)]) -> Self {
        Self::htpasswd_with(users, None).await
    }

    /// The same, serving https with the test CA's server certificate.
    pub async fn htpasswd_tls(users: &[(&str, &str)], certs: &TestCerts) -> Self {
        Self::htpasswd_with(users, Some(certs)).await
    }

    async fn htpasswd_with(users: &[(&str, &str)], certs: Option<&TestCerts>) -> Self {
        let dir = TempDir::new("registry");
        htpasswd_file(&dir.join("htpasswd"), users);
        let auth = format!("htpasswd: {{realm: regcred-test, path: {}}}", dir.join("htpasswd").display());
        Self::start(dir, auth, Vec::new(), None, certs).await
    }

    /// A registry with token authentication, backed by distribution's Docker
    /// token server that authenticates users from an htpasswd file.
    pub async fn token_auth(users: &[(&str, &str)]) -> Self {
        Self::token_auth_with(users, None).await
    }

    /// The same with the registry and the token server serving https.
    pub async fn token_auth_tls(users: &[(&str, &str)], certs: &TestCerts) -> Self {
        Self::token_auth_with(users, Some(certs)).await
    }

    async fn token_auth_with(users: &[(&str, &str)], certs: Option<&TestCerts>) -> Self {
        let dir = TempDir::new("registry");
        htpasswd_file(&dir.join("htpasswd"), users);
        let key = dir.join("ts.key");
        let crt = dir.join("ts.crt");
        signing_cert(&key, &crt);
        let ts_port = free_port();
        let scheme = if certs.is_some() { "https" } else { "http" };
        let realm = format!("{scheme}://127.0.0.1:{ts_port}/token/");
        let mut ts = Command::new(peers().path("TOKEN_SERVER"));
        ts.args(["-addr", &format!("127.0.0.1:{ts_port}"), "-issuer", "regcred-test-issuer", "-realm", &realm])
            .arg("-key")
            .arg(&key)
            .arg("-passwd")
            .arg(dir.join("htpasswd"));
        if let Some(c) = certs {
            ts.arg("-tlscert").arg(c.path("server.crt")).arg("-tlskey").arg(c.path("server.key"));
        }
        let ts = Proc::spawn(ts, dir.join("token-server.log"));
        wait_port(ts_port).await;
        let auth = format!(
            "token: {{realm: \"{realm}\", service: regcred-test-registry, issuer: regcred-test-issuer, rootcertbundle: {}}}",
            crt.display()
        );
        Self::start(dir, auth, vec![ts], Some(realm), certs).await
    }

    /// A registry with token authentication whose realm is tests/peers/realm.py:
    /// it grants pulls to OAuth2 access tokens `oauth2` calls active and to
    /// the short-lived passwords it mints at `<realm origin>/credential` for
    /// `robot` (lifetime `ttl` seconds), and pushes to `pusher`.
    pub async fn realm(oauth2: Option<&OAuth2Server>, robot: (&str, &str), ttl: u64, pusher: (&str, &str)) -> Self {
        let env = [("ROBOT_USER", robot.0.to_string()), ("ROBOT_PASSWORD", robot.1.to_string()), ("CREDENTIAL_TTL", ttl.to_string())];
        Self::realm_peer("REALM", oauth2, &env, pusher).await
    }

    /// A registry whose realm is tests/peers/vendors.py, the Docker Hub,
    /// Harbor and GitLab key APIs: it grants pulls to exactly the keys live
    /// there (see that file for the admin credentials in `env`), and pushes
    /// to `pusher`. The vendors' API is at [`Registry::realm_origin`].
    pub async fn vendors(env: &[(&str, String)], pusher: (&str, &str)) -> Self {
        Self::realm_peer("VENDORS", None, env, pusher).await
    }

    /// The same, with the vendors' APIs served over https too (the test
    /// CA's server certificate): returns that origin.
    pub async fn vendors_tls(env: &[(&str, String)], pusher: (&str, &str), certs: &TestCerts) -> (Self, String) {
        let port = free_port();
        let mut env = env.to_vec();
        env.push(("TLS_PORT", port.to_string()));
        env.push(("TLS_CERT", certs.path("server.crt").display().to_string()));
        env.push(("TLS_KEY", certs.path("server.key").display().to_string()));
        let reg = Self::realm_peer("VENDORS", None, &env, pusher).await;
        wait_port(port).await;
        (reg, format!("https://127.0.0.1:{port}"))
    }

    /// `http://host:port` of the realm peer.
    pub fn realm_origin(&self) -> String {
        self.token_server.as_deref().expect("a token-auth registry").trim_end_matches("/token").to_string()
    }

    async fn realm_peer(script: &str, oauth2: Option<&OAuth2Server>, env: &[(&str, String)], pusher: (&str, &str)) -> Self {
        let dir = TempDir::new("registry");
        let (key, crt) = (dir.join("realm.key"), dir.join("realm.crt"));
        signing_cert(&key, &crt);
        let port = free_port();
        let realm = format!("http://127.0.0.1:{port}/token");
        let mut cmd = Command::new(peers().path("MOTO_PYTHON"));
        cmd.arg(peers().path(script))
            .env("PYTHONPATH", peers().path("REALM").parent().unwrap())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("PORT", port.to_string())
            .env("KEY", &key)
            .env("CERT", &crt)
            .env("ISSUER", "regcred-test-issuer")
            .env("SERVICE", "regcred-test-registry")
            .env("PUSH_USER", pusher.0)
            .env("PUSH_PASSWORD", pusher.1);
        if let Some(o) = oauth2 {
            cmd.env("INTROSPECT_URL", format!("{}/token/introspection", o.base()))
                .env("CLIENT_ID", "regcred-basic")
                .env("CLIENT_SECRET", &o.secret);
        }
        let proc = Proc::spawn(cmd, dir.join("realm.log"));
        wait_port(port).await;
        let auth = format!(
            "token: {{realm: \"{realm}\", service: regcred-test-registry, issuer: regcred-test-issuer, rootcertbundle: {}}}",
            crt.display()
        );
        Self::start(dir, auth, vec![proc], Some(realm), None).await
    }

    /// The realm's `/credential` endpoint (see [`Registry::realm`]).
    pub fn credential_url(&self) -> String {
        let realm = self.token_server.as_deref().expect("a token-auth registry");
        format!("{}/credential", realm.trim_end_matches("/token"))
    }

    async fn start(dir: TempDir, auth: String, mut procs: Vec<Proc>, token_server: Option<String>, certs: Option<&TestCerts>) -> Self {
        let port = free_port();
        let tls = certs
            .map(|c| format!(", tls: {{certificate: {}, key: {}}}", c.path("server.crt").display(), c.path("server.key").display()))
            .unwrap_or_default();
        let config = format!(
            "version: 0.1\nlog: {{level: warn}}\nstorage: {{filesystem: {{rootdirectory: {}}}}}\nhttp: {{addr: \"127.0.0.1:{port}\", secret: regcred-test{tls}}}\nauth:\n  {auth}\n",
            dir.join("data").display()
        );
        let cert_dir = certs.map(|c| {
            let d = dir.join("ca");
            std::fs::create_dir_all(&d).unwrap();
            std::fs::copy(c.path("ca.crt"), d.join("ca.crt")).unwrap();
            d
        });
        std::fs::write(dir.join("config.yml"), config).unwrap();
        let mut cmd = Command::new(peers().path("REGISTRY"));
        cmd.arg("serve").arg(dir.join("config.yml"));
        procs.push(Proc::spawn(cmd, dir.join("registry.log")));
        wait_port(port).await;
        Self { host: format!("127.0.0.1:{port}"), token_server, cert_dir, dir, _procs: procs }
    }

    /// Push a tiny OCI image (one empty layer) as `repo:1` with skopeo.
    pub fn push_test_image(&self, repo: &str, user: &str, password: &str) -> String {
        let layout = self.dir.join(&format!("oci-{}", repo.replace('/', "-")));
        write_oci_layout(&layout);
        self.push_layout(&layout, repo, user, password)
    }

    /// Push an image a Pod can run as `repo:1`: a static busybox whose
    /// entrypoint prints `started` and sleeps (tests/node/mkoci.py).
    pub fn push_app_image(&self, repo: &str, user: &str, password: &str) -> String {
        let layout = self.dir.join(&format!("app-{}", repo.replace('/', "-")));
        let out = Command::new("python3")
            .arg(peers().path("MKOCI"))
            .arg(&layout)
            .arg("1")
            .arg(peers().path("BUSYBOX"))
            .args(["--", "/bin/busybox", "sh", "-c", "echo started; exec sleep 3600"])
            .output()
            .unwrap();
        assert!(out.status.success(), "mkoci.py failed: {}", String::from_utf8_lossy(&out.stderr));
        self.push_layout(&layout, repo, user, password)
    }

    fn push_layout(&self, layout: &Path, repo: &str, user: &str, password: &str) -> String {
        self.push_oci(layout, "1", &format!("{repo}:1"), user, password)
    }

    /// Push the image tagged `tag` in the OCI layout `layout` as `repo_tag`
    /// (`name:tag`); the reference Pods pull it by.
    pub fn push_oci(&self, layout: &Path, tag: &str, repo_tag: &str, user: &str, password: &str) -> String {
        let dest = format!("docker://{}/{repo_tag}", self.host);
        let mut cmd = Command::new(peers().path("SKOPEO"));
        match &self.cert_dir {
            Some(d) => cmd.arg("copy").arg("--dest-cert-dir").arg(d),
            None => cmd.args(["copy", "--dest-tls-verify=false"]),
        };
        let out = cmd
            .args(["--dest-creds", &format!("{user}:{password}")])
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(&dest)
            .output()
            .unwrap();
        assert!(out.status.success(), "push failed: {}", String::from_utf8_lossy(&out.stderr));
        format!("{}/{repo_tag}", self.host)
    }
}

pub(crate) fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

/// An OCI image layout with one empty tar layer.
fn write_oci_layout(dir: &Path) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |b: &[u8]| {
        let d = sha256_hex(b);
        std::fs::write(blobs.join(&d), b).unwrap();
        (format!("sha256:{d}"), b.len())
    };
    let layer = vec![0u8; 1024]; // an empty tar archive
    let (layer_digest, layer_size) = put(&layer);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "config": {}
    }))
    .unwrap();
    let (config_digest, config_size) = put(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size}]
    }))
    .unwrap();
    let (manifest_digest, manifest_size) = put(&manifest);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": manifest_size,
            "annotations": {"org.opencontainers.image.ref.name": "1"}
        }]
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

/// Pull `image` (host/repo:tag) with skopeo, authenticating with a
/// `.dockerconfigjson` exactly as written in the Secret. Err carries skopeo's stderr.
pub fn skopeo_pull(dockerconfigjson: &[u8], image: &str) -> Result<(), String> {
    skopeo_pull_with(dockerconfigjson, image, None)
}

/// Pull `image` with a username and password (not a dockerconfigjson).
pub fn skopeo_pull_creds(username: &str, password: &str, image: &str) -> Result<(), String> {
    let dir = TempDir::new("pull");
    let mut cmd = Command::new(peers().path("SKOPEO"));
    cmd.args(["copy", "--src-tls-verify=false", "--src-creds", &format!("{username}:{password}")]);
    skopeo_copy_out(cmd, image, &dir)
}

/// Finish a `skopeo copy` from `image` into a scratch directory.
fn skopeo_copy_out(mut cmd: Command, image: &str, dir: &TempDir) -> Result<(), String> {
    let out = cmd.arg(format!("docker://{image}")).arg(format!("dir:{}", dir.join("image").display())).output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Pull over https, trusting the CA in `cert_dir` (and verifying the chain).
pub fn skopeo_pull_tls(dockerconfigjson: &[u8], image: &str, cert_dir: &Path) -> Result<(), String> {
    skopeo_pull_with(dockerconfigjson, image, Some(cert_dir))
}

fn skopeo_pull_with(dockerconfigjson: &[u8], image: &str, cert_dir: Option<&Path>) -> Result<(), String> {
    let dir = TempDir::new("pull");
    let authfile = dir.join("auth.json");
    std::fs::File::create(&authfile).unwrap().write_all(dockerconfigjson).unwrap();
    let mut cmd = Command::new(peers().path("SKOPEO"));
    match cert_dir {
        Some(d) => cmd.arg("copy").arg("--src-cert-dir").arg(d),
        None => cmd.args(["copy", "--src-tls-verify=false"]),
    };
    cmd.arg("--authfile").arg(&authfile);
    skopeo_copy_out(cmd, image, &dir)
}

/// moto's server for ECR and STS behind tests/peers/moto_ecr.py (current
/// short expiries, proxyEndpoints pointed at local registries, call counts,
/// fault injection).
pub struct MotoEcr {
    pub port: u16,
    _dir: TempDir,
    _proc: Proc,
}

impl MotoEcr {
    pub async fn start(ttl_seconds: u64, proxy_endpoints: &[(&str, String)]) -> Self {
        let dir = TempDir::new("moto");
        let port = free_port();
        let proxy: serde_json::Map<String, serde_json::Value> =
            proxy_endpoints.iter().map(|(id, url)| (id.to_string(), url.clone().into())).collect();
        let mut cmd = Command::new(peers().path("MOTO_PYTHON"));
        cmd.arg(peers().path("MOTO_ECR"))
            .arg(port.to_string())
            .env("TOKEN_TTL", ttl_seconds.to_string())
            .env("PROXY_ENDPOINTS", serde_json::Value::Object(proxy).to_string());
        let proc = Proc::spawn(cmd, dir.join("moto.log"));
        wait_port(port).await;
        Self { port, _dir: dir, _proc: proc }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Calls per operation so far.
    pub async fn calls(&self, operation: &str) -> u64 {
        regcred::install_crypto_provider();
        let body = reqwest::get(format!("{}/_stats", self.endpoint())).await.unwrap().bytes().await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        v[operation].as_u64().unwrap_or(0)
    }

    /// Make every call of `operation` fail with this AWS error code (None clears).
    pub async fn fault(&self, operation: &str, code: Option<&str>) {
        regcred::install_crypto_provider();
        let body = match code {
            Some(c) => serde_json::json!({"operation": operation, "code": c, "status": 400}).to_string(),
            None => String::new(),
        };
        let r = reqwest::Client::new().post(format!("{}/_fault", self.endpoint())).body(body).send().await.unwrap();
        assert!(r.status().is_success());
    }
}

/// A registry that accepts what moto's ECR mints for `account`: user `AWS`,
/// password `<account>-auth-token`. Holds one test image, `app:1`.
pub async fn ecr_registry(account: &str) -> (Registry, String) {
    let password = format!("{account}-auth-token");
    let reg = Registry::htpasswd(&[("AWS", &password)]).await;
    let image = reg.push_test_image("app", "AWS", &password);
    (reg, image)
}

/// TLS material made by tests/peers/mkcerts.py: a test CA, server
/// certificates (good, wrong host, expired) and a client certificate.
pub struct TestCerts {
    pub dir: TempDir,
}

impl TestCerts {
    pub fn new() -> Self {
        let dir = TempDir::new("certs");
        let out = Command::new(peers().path("MOTO_PYTHON")).arg(peers().path("MKCERTS")).arg(&dir.0).output().unwrap();
        assert!(out.status.success(), "mkcerts.py failed: {}", String::from_utf8_lossy(&out.stderr));
        Self { dir }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    pub fn pem(&self, file: &str) -> String {
        std::fs::read_to_string(self.path(file)).unwrap()
    }
}

/// tests/peers/hostile.py: a token endpoint (and registry) that answers
/// what real servers never would. Requests are counted per case.
pub struct Hostile {
    pub base: String,
    _dir: TempDir,
    _proc: Proc,
}

impl Hostile {
    /// Plain HTTP on `host` (a loopback address).
    pub async fn start(host: &str, realm: Option<&str>) -> Self {
        Self::spawn(host, "http", &[], realm).await
    }

    /// HTTPS with `cert` (a name from [`TestCerts`]), optionally requiring
    /// a client certificate signed by the test CA.
    pub async fn start_tls(certs: &TestCerts, cert: &str, require_client_cert: bool) -> Self {
        let crt = certs.path(&format!("{cert}.crt")).display().to_string();
        let key = certs.path(&format!("{cert}.key")).display().to_string();
        let ca = certs.path("ca.crt").display().to_string();
        let mut args = vec!["--cert".to_string(), crt, "--key".to_string(), key];
        if require_client_cert {
            args.extend(["--client-ca".to_string(), ca]);
        }
        Self::spawn("127.0.0.1", "https", &args, None).await
    }

    /// HTTPS with the `server` certificate (which names 127.0.0.2 and
    /// tokens.regcred.test too) on `host`.
    pub async fn start_tls_on(certs: &TestCerts, host: &str) -> Self {
        let crt = certs.path("server.crt").display().to_string();
        let key = certs.path("server.key").display().to_string();
        Self::spawn(host, "https", &["--cert".to_string(), crt, "--key".to_string(), key], None).await
    }

    async fn spawn(host: &str, scheme: &str, args: &[String], realm: Option<&str>) -> Self {
        let dir = TempDir::new("hostile");
        let port = free_port();
        let mut cmd = Command::new(peers().path("MOTO_PYTHON"));
        cmd.arg(peers().path("HOSTILE")).arg(host).arg(port.to_string()).args(args);
        if let Some(r) = realm {
            cmd.args(["--realm", r]);
        }
        let proc = Proc::spawn(cmd, dir.join("hostile.log"));
        for _ in 0..150 {
            if tokio::net::TcpStream::connect((host, port)).await.is_ok() {
                return Self { base: format!("{scheme}://{host}:{port}"), _dir: dir, _proc: proc };
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("hostile.py did not listen on {host}:{port}");
    }

    /// `base/c/<case>/<kind>` with a query.
    pub fn url(&self, case: &str, kind: &str, query: &[(&str, &str)]) -> String {
        let q: String = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(query).finish();
        if q.is_empty() {
            format!("{}/c/{case}/{kind}", self.base)
        } else {
            format!("{}/c/{case}/{kind}?{q}", self.base)
        }
    }

    /// `host:port`, as a registry key.
    pub fn host(&self) -> String {
        self.base.split("://").nth(1).unwrap().to_string()
    }

    /// Requests per case so far (plain HTTP only).
    pub async fn counts(&self) -> HashMap<String, u64> {
        regcred::install_crypto_provider();
        let body = reqwest::get(format!("{}/_stats", self.base)).await.unwrap().bytes().await.unwrap();
        serde_json::from_slice(&body).unwrap()
    }

    /// From now on, `case`'s `body` answers `body` (plain HTTP only).
    pub async fn set_body(&self, case: &str, body: &str) {
        regcred::install_crypto_provider();
        let url = format!("{}/_set?{}", self.base, url::form_urlencoded::Serializer::new(String::new()).extend_pairs([("case", case), ("b", body)]).finish());
        assert!(reqwest::Client::new().post(url).send().await.unwrap().status().is_success());
    }

    pub async fn total(&self) -> u64 {
        self.counts().await.values().sum()
    }
}
