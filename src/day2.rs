//! Day-2 commands of the `regcred` binary: `renew`, `status`, `check`.
//! They talk to the cluster as kubectl does (KUBECONFIG, ~/.kube/config or
//! in-cluster), print one line a person can act on when something fails, and
//! never print a password or token.
//!
//! Exit codes: 0 success; 1 the check or request failed (a registry refused,
//! a credential not found); 2 bad usage (clap); 3 the cluster could not be
//! reached or refused the request.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, Utc};
use clap::{Args, ValueEnum};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use secrecy::SecretString;
use serde::Serialize;

use crate::api::{self, ClusterRegistryCredential, RegistryCredential};
use crate::source::{httpclient, login, NetPolicy, RegistryAuth, SourceError};

/// A failure of a day-2 command, with its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Failed(String),
    #[error("{0}")]
    Cluster(String),
    #[error("{0}")]
    Usage(String),
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Failed(_) => 1,
            Self::Usage(_) => 2,
            Self::Cluster(_) => 3,
        }
    }
}

fn cluster(what: &str) -> impl FnOnce(kube::Error) -> CliError + '_ {
    move |e| CliError::Cluster(format!("{what}: {}", crate::source::summarize_kube_error(&e)))
}

async fn client() -> Result<Client, CliError> {
    crate::proxy::kube_client().await.map_err(|_| CliError::Cluster("no Kubernetes configuration found (KUBECONFIG, ~/.kube/config or in-cluster)".into()))
}

#[derive(Args, Debug, Clone)]
pub struct RenewArgs {
    /// Credentials to renew.
    pub names: Vec<String>,
    /// Namespace (default: the kubeconfig context's).
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Every credential in the namespace.
    #[arg(long)]
    pub all: bool,
    /// Every credential in every namespace (with --all).
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// ClusterRegistryCredentials instead of RegistryCredentials.
    #[arg(long)]
    pub cluster: bool,
}

/// Ask for a new credential now: set `regcred.dev/renew-requested-at` to
/// the current time. The operator mints once for each new value (no sooner
/// than its least interval between mints) and records the value in status.
pub async fn renew(args: RenewArgs) -> Result<(), CliError> {
    if args.names.is_empty() && !args.all {
        return Err(CliError::Usage("name one or more credentials, or use --all (see regcred renew --help)".into()));
    }
    if args.all && !args.names.is_empty() {
        return Err(CliError::Usage("name credentials or use --all, not both".into()));
    }
    let client = client().await?;
    let stamp = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let patch = Patch::Merge(serde_json::json!({"metadata": {"annotations": {api::RENEW_ANNOTATION: stamp}}}));
    let pp = PatchParams::default();
    if args.cluster {
        let client_ns = args.namespace.clone().unwrap_or_else(|| client.default_namespace().to_string());
        let api_client = client.clone();
        let api: Api<ClusterRegistryCredential> = Api::all(client);
        let names = if args.all { api.list(&ListParams::default()).await.map_err(cluster("listing"))?.items.iter().map(|c| c.name_any()).collect() } else { args.names };
        for name in names {
            if let Err(e) = api.patch(&name, &pp, &patch).await {
                return Err(not_found_hint(&api_client, e, &format!("clusterregistrycredential/{name}"), &name, &client_ns, true).await);
            }
            println!("clusterregistrycredential/{name} renewal requested");
        }
        return Ok(());
    }
    let ns = args.namespace.clone().unwrap_or_else(|| client.default_namespace().to_string());
    let targets: Vec<(String, String)> = if args.all {
        let api: Api<RegistryCredential> = if args.all_namespaces { Api::all(client.clone()) } else { Api::namespaced(client.clone(), &ns) };
        api.list(&ListParams::default()).await.map_err(cluster("listing"))?.items.iter().map(|c| (c.namespace().unwrap_or_default(), c.name_any())).collect()
    } else {
        args.names.iter().map(|n| (ns.clone(), n.clone())).collect()
    };
    for (ns, name) in targets {
        let api: Api<RegistryCredential> = Api::namespaced(client.clone(), &ns);
        if let Err(e) = api.patch(&name, &pp, &patch).await {
            return Err(not_found_hint(&client, e, &format!("registrycredential/{name} in namespace {ns}"), &name, &ns, false).await);
        }
        println!("registrycredential/{name} ({ns}) renewal requested");
    }
    Ok(())
}

/// `not_found_or`, with a hint when the other kind has that name (`renew` of
/// a ClusterRegistryCredential without `--cluster`, or the other way round).
async fn not_found_hint(client: &Client, e: kube::Error, what: &str, name: &str, ns: &str, cluster_kind: bool) -> CliError {
    let err = not_found_or(e, what);
    if !matches!(err, CliError::Failed(_)) {
        return err;
    }
    let (other, hint) = if cluster_kind {
        let found = Api::<RegistryCredential>::namespaced(client.clone(), ns).get_metadata_opt(name).await.ok().flatten().is_some();
        (found, format!("a RegistryCredential {name} exists in namespace {ns}: leave out --cluster"))
    } else {
        let found = Api::<ClusterRegistryCredential>::all(client.clone()).get_metadata_opt(name).await.ok().flatten().is_some();
        (found, format!("a ClusterRegistryCredential {name} exists: add --cluster"))
    };
    if other {
        CliError::Failed(format!("{err}; {hint}"))
    } else {
        err
    }
}

fn not_found_or(e: kube::Error, what: &str) -> CliError {
    match &e {
        kube::Error::Api(s) if s.code == 404 => CliError::Failed(format!("{what} not found")),
        _ => cluster(what)(e),
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    #[default]
    Table,
    Json,
    Yaml,
}

#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    /// Namespace (default: the kubeconfig context's).
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Every namespace, and the ClusterRegistryCredentials.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// One credential, as `regcred status` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    /// Empty for a ClusterRegistryCredential.
    pub namespace: String,
    pub name: String,
    pub ready: String,
    pub reason: String,
    pub registries: Vec<String>,
    pub not_after: Option<DateTime<Utc>>,
    pub renewal_time: Option<DateTime<Utc>>,
    /// When a credential was last written; `None`: none yet.
    pub last_rotation_time: Option<DateTime<Utc>>,
    pub failed_attempts: i32,
}

impl Row {
    /// `never` for a credential that does not expire, `-` before there is one.
    fn expires_in(&self, now: DateTime<Utc>) -> String {
        match (self.not_after, self.last_rotation_time) {
            (None, Some(_)) => "never".into(),
            (t, _) => until(now, t),
        }
    }
}

fn row(namespace: String, name: String, st: Option<&api::RegistryCredentialStatus>) -> Row {
    let ready = st.and_then(|s| s.conditions.iter().find(|c| c.type_ == api::READY));
    Row {
        namespace,
        name,
        ready: ready.map(|c| c.status.clone()).unwrap_or_else(|| "Unknown".into()),
        reason: ready.map(|c| c.reason.clone()).unwrap_or_default(),
        registries: st.map(|s| s.registries.clone()).unwrap_or_default(),
        not_after: st.and_then(|s| s.not_after),
        renewal_time: st.and_then(|s| s.renewal_time),
        last_rotation_time: st.and_then(|s| s.last_rotation_time),
        failed_attempts: st.map(|s| s.failed_attempts).unwrap_or_default(),
    }
}

/// Most urgent first: no credential yet, then the soonest expiry, then
/// credentials that never expire; among equals, not Ready before Ready, then
/// by namespace and name.
pub fn sort_by_urgency(rows: &mut [Row]) {
    rows.sort_by(|a, b| {
        let key = |r: &Row| {
            let group = match (r.not_after, r.last_rotation_time) {
                (None, None) => (0, 0),
                (Some(t), _) => (1, t.timestamp()),
                (None, Some(_)) => (2, 0),
            };
            (group, r.ready == "True", r.namespace.clone(), r.name.clone())
        };
        key(a).cmp(&key(b))
    });
}

/// `3h12m`, `45s`, `-5m` (past), `-` when unknown.
pub fn until(now: DateTime<Utc>, t: Option<DateTime<Utc>>) -> String {
    let Some(t) = t else { return "-".into() };
    let secs = (t - now).num_seconds();
    let (sign, s) = if secs < 0 { ("-", -secs) } else { ("", secs) };
    let body = match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86_400, (s % 86_400) / 3600),
    };
    format!("{sign}{body}")
}

/// Render rows as a table.
pub fn table(rows: &[Row], now: DateTime<Utc>) -> String {
    let mut lines = vec![["NAMESPACE", "NAME", "READY", "REASON", "REGISTRIES", "EXPIRES IN", "RENEWS IN", "FAILED"].map(String::from).to_vec()];
    for r in rows {
        lines.push(vec![
            if r.namespace.is_empty() { "(cluster)".into() } else { r.namespace.clone() },
            r.name.clone(),
            r.ready.clone(),
            r.reason.clone(),
            if r.registries.is_empty() { "-".into() } else { r.registries.join(",") },
            r.expires_in(now),
            until(now, r.renewal_time),
            r.failed_attempts.to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..lines[0].len()).map(|i| lines.iter().map(|l| l[i].len()).max().unwrap_or(0)).collect();
    lines
        .iter()
        .map(|l| l.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect::<Vec<_>>().join("  ").trim_end().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// List credentials by urgency.
pub async fn status(args: StatusArgs) -> Result<(), CliError> {
    let client = client().await?;
    let api: Api<RegistryCredential> = if args.all_namespaces {
        Api::all(client.clone())
    } else {
        Api::namespaced(client.clone(), &args.namespace.clone().unwrap_or_else(|| client.default_namespace().to_string()))
    };
    let mut rows: Vec<Row> = api
        .list(&ListParams::default())
        .await
        .map_err(cluster("listing RegistryCredentials"))?
        .items
        .iter()
        .map(|c| row(c.namespace().unwrap_or_default(), c.name_any(), c.status.as_ref()))
        .collect();
    if args.all_namespaces {
        let cluster_api: Api<ClusterRegistryCredential> = Api::all(client);
        // A namespaced install has no cluster kind: that is not an error here.
        if let Ok(list) = cluster_api.list(&ListParams::default()).await {
            rows.extend(list.items.iter().map(|c| row(String::new(), c.name_any(), c.status.as_ref().map(|s| &s.credential))));
        }
    }
    sort_by_urgency(&mut rows);
    let unseen = rows.iter().filter(|r| r.ready == "Unknown" && r.reason.is_empty()).count();
    let out = match args.output {
        Output::Table => table(&rows, Utc::now()),
        Output::Json => serde_json::to_string_pretty(&rows).expect("rows serialise"),
        Output::Yaml => serde_yaml::to_string(&rows).expect("rows serialise"),
    };
    println!("{out}");
    if unseen > 0 {
        eprintln!(
            "regcred: {unseen} of these have no status yet: is the operator running, and does it watch their namespace? Its first log lines say what it watches."
        );
    }
    Ok(())
}

#[derive(Args, Debug, Clone)]
pub struct CheckArgs {
    /// A `kubernetes.io/dockerconfigjson` Secret (any, not only regcred's).
    pub secret: String,
    /// Namespace (default: the kubeconfig context's).
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// PEM CA bundle to trust instead of the public roots (a private registry).
    #[arg(long)]
    pub ca_file: Option<std::path::PathBuf>,
    /// Talk plain `http://` to registries given without a scheme (tests and
    /// trusted local networks only).
    #[arg(long)]
    pub insecure_http: bool,
    /// Seconds each request may take.
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
}

/// The entries of a `.dockerconfigjson`: registry, username and password
/// (from `username`/`password`, or else from `auth`).
pub fn entries(config: &[u8]) -> Result<Vec<RegistryAuth>, String> {
    #[derive(serde::Deserialize)]
    struct Config {
        #[serde(default)]
        auths: BTreeMap<String, Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        username: Option<String>,
        password: Option<String>,
        auth: Option<String>,
    }
    let c: Config = serde_json::from_slice(config).map_err(|_| "its .dockerconfigjson is not valid JSON".to_string())?;
    c.auths
        .into_iter()
        .map(|(registry, e)| {
            let (user, pass) = match (e.username, e.password) {
                (Some(u), Some(p)) if !u.is_empty() => (u, p),
                _ => {
                    let raw = e.auth.ok_or_else(|| format!("{registry}: no username/password and no auth"))?;
                    let text = base64::engine::general_purpose::STANDARD
                        .decode(raw.trim())
                        .ok()
                        .and_then(|b| String::from_utf8(b).ok())
                        .ok_or_else(|| format!("{registry}: auth is not base64 of user:password"))?;
                    let (u, p) = text.split_once(':').ok_or_else(|| format!("{registry}: auth is not user:password"))?;
                    (u.to_string(), p.to_string())
                }
            };
            Ok(RegistryAuth { registry, username: user, password: SecretString::from(pass) })
        })
        .collect()
}

/// The verdict on one registry, in words.
pub fn verdict(result: &Result<(), SourceError>) -> String {
    match result {
        Ok(()) => "OK".into(),
        Err(SourceError::HttpStatus { status, .. }) => format!("refused (HTTP {status})"),
        Err(SourceError::Transport { kind, .. }) => format!("not reachable ({kind})"),
        Err(SourceError::EgressDenied { .. }) => "not reachable (denied by the egress policy)".into(),
        Err(e) => format!("error ({})", e.category()),
    }
}

/// Log in to every registry of a pull Secret, as `docker login` does.
pub async fn check(args: CheckArgs) -> Result<(), CliError> {
    let client = client().await?;
    let ns = args.namespace.clone().unwrap_or_else(|| client.default_namespace().to_string());
    let secret = Api::<Secret>::namespaced(client, &ns)
        .get_opt(&args.secret)
        .await
        .map_err(cluster("reading the Secret"))?
        .ok_or_else(|| CliError::Failed(format!("Secret {} not found in namespace {ns}", args.secret)))?;
    let data = secret
        .data
        .as_ref()
        .and_then(|d| d.get(".dockerconfigjson"))
        .ok_or_else(|| CliError::Failed(format!("Secret {} has no .dockerconfigjson", args.secret)))?;
    let auths = entries(&data.0).map_err(|e| CliError::Failed(format!("Secret {}: {e}", args.secret)))?;
    if auths.is_empty() {
        return Err(CliError::Failed(format!("Secret {} holds no registry", args.secret)));
    }
    let roots = match &args.ca_file {
        Some(f) => {
            let pem = std::fs::read(f).map_err(|e| CliError::Failed(format!("reading {}: {e}", f.display())))?;
            Some(httpclient::roots_from_pem(&pem, &f.display().to_string()).map_err(|e| CliError::Failed(e.to_string()))?)
        }
        None => None,
    };
    let http = httpclient::build_with_roots(roots, Duration::from_secs(args.timeout.clamp(1, 60)), &NetPolicy::default())
        .map_err(|e| CliError::Failed(e.to_string()))?;
    let expires = secret.annotations().get(api::NOT_AFTER_ANNOTATION).map(|t| format!("  expires {t}")).unwrap_or_default();
    let mut failed = 0;
    for a in &auths {
        let result = login::check(&http, a, args.insecure_http).await;
        if result.is_err() {
            failed += 1;
        }
        println!("{}  {}{expires}", a.registry, verdict(&result));
    }
    if failed > 0 {
        return Err(CliError::Failed(format!("{failed} of {} registries refused or could not be reached", auths.len())));
    }
    Ok(())
}

#[derive(Args, Debug, Clone)]
pub struct MintArgs {
    /// A RegistryCredential manifest (YAML or JSON; `-` for stdin).
    #[arg(short = 'f', long = "filename")]
    pub file: std::path::PathBuf,
    /// Namespace whose Secrets the source reads (default: the manifest's,
    /// else the kubeconfig context's).
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Read the Secrets the source references from `DIR/NAME/KEY` files
    /// instead of the cluster.
    #[arg(long)]
    pub secrets_dir: Option<std::path::PathBuf>,
    /// Also write the real `.dockerconfigjson` here (mode 0600), e.g. for a
    /// manual `skopeo --authfile` test.
    #[arg(long)]
    pub output_dockerconfigjson: Option<std::path::PathBuf>,
}

/// One mint of a credential spec, locally: nothing is written to the
/// cluster. Prints what the Secret would hold with every password redacted,
/// the expiry and the renewal instant the operator would choose. Your own
/// AWS identity and any ECR/STS endpoint are allowed here (it is your
/// machine); the egress deny list of the operator's defaults still applies.
pub async fn mint(args: MintArgs) -> Result<(), CliError> {
    let text = if args.file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).map_err(|e| CliError::Failed(format!("reading stdin: {e}")))?
    } else {
        std::fs::read_to_string(&args.file).map_err(|e| CliError::Failed(format!("reading {}: {e}", args.file.display())))?
    };
    // Checked as the API server would admit it (the CRD's schema) before
    // anything is read: a Secret name, for one, can never be a path.
    let not_one = |e: &dyn std::fmt::Display| CliError::Failed(format!("{} is not a RegistryCredential: {e}", args.file.display()));
    let raw: serde_json::Value = serde_yaml::from_str(&text).map_err(|e| not_one(&e))?;
    crate::validate::manifest(&raw, false).map_err(|errs| not_one(&errs.join("; ")))?;
    let cr: RegistryCredential = serde_json::from_value(raw).map_err(|e| not_one(&e))?;
    let client = match (&args.secrets_dir, client().await) {
        (None, Ok(c)) => {
            // Secrets come from the cluster: a cluster that cannot be
            // reached is exit code 3, not a failed mint.
            c.apiserver_version().await.map_err(cluster("reaching the API server"))?;
            c
        }
        (Some(_), Ok(c)) => c,
        // Secrets from files: no cluster needed.
        (Some(_), Err(_)) => Client::try_from(kube::Config::new("http://127.0.0.1:1".parse().expect("a URI"))).map_err(|e| CliError::Failed(e.to_string()))?,
        (None, Err(e)) => return Err(e),
    };
    let ns = args.namespace.clone().or_else(|| cr.metadata.namespace.clone()).unwrap_or_else(|| client.default_namespace().to_string());
    let name = cr.metadata.name.clone().unwrap_or_else(|| "local".into());
    let mut settings = crate::context::Settings::default();
    settings.ecr.endpoint_overrides = vec!["*".into()];
    let ctx = crate::context::Context::new(
        client,
        &settings,
        std::sync::Arc::new(crate::metrics::Metrics::default()),
        std::sync::Arc::new(crate::context::Progress::new(Duration::from_secs(3600))),
    );
    let who = crate::attempt::Minter {
        refs_namespace: &ns,
        name: &name,
        cluster_scoped: true,
        seed: crate::schedule::seed(&name),
        secrets_dir: args.secrets_dir.as_deref(),
        // `rotate` sources refuse: keys are created by the operator only.
        key_name: None,
    };
    let now = crate::context::clock();
    let (minted, renewal) = crate::attempt::mint(&ctx, &who, &cr.spec.source, &cr.spec.renewal, now)
        .await
        .map_err(|e| CliError::Failed(format!("{}: {e}", e.category())))?;
    for e in &minted.entries {
        println!("registry {}  username {}  password <redacted>", e.registry, e.username);
    }
    let at = |t: Option<DateTime<Utc>>| t.map(|t| format!("{} (in {})", t.to_rfc3339(), until(now, Some(t)))).unwrap_or_else(|| "never".into());
    println!("expires  {}", at(minted.expires_at));
    println!("renews   {}", at(Some(renewal.at)));
    if !renewal.safe {
        println!("warning: this source's credentials live too short to be renewed safely");
    }
    if let Some(path) = &args.output_dockerconfigjson {
        write_private(path, &crate::secret::render(&minted)).map_err(|e| CliError::Failed(format!("writing {}: {e}", path.display())))?;
        println!("wrote {} (mode 0600)", path.display());
    }
    Ok(())
}

/// Write a file only its owner can read, created that way (no window in
/// which it is readable by others).
fn write_private(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    f.write_all(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::schedule::test_instant as t;

    #[test]
    fn urgency_order() {
        // (name, expiry, written, ready)
        let r = |name: &str, na: Option<i64>, written: bool, ready: &str| Row {
            namespace: "ns".into(),
            name: name.into(),
            ready: ready.into(),
            reason: "Rotated".into(),
            registries: vec![],
            not_after: na.map(t),
            renewal_time: None,
            last_rotation_time: written.then(|| t(-100)),
            failed_attempts: 0,
        };
        let mut rows = vec![
            r("static", None, true, "True"),
            r("later", Some(500), true, "True"),
            r("static-bad", None, true, "False"),
            r("none-yet", None, false, "False"),
            r("soon", Some(10), true, "True"),
            r("soon-bad", Some(10), true, "False"),
        ];
        sort_by_urgency(&mut rows);
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        // The one expiring in 10 s comes before the one in 500 s, and a
        // credential that never expires after both.
        assert_eq!(names, ["none-yet", "soon-bad", "soon", "later", "static-bad", "static"]);
        let table = table(&rows, t(0));
        let expires: Vec<&str> = table.lines().skip(1).map(|l| l.split_whitespace().nth(5).unwrap()).collect();
        assert_eq!(expires, ["-", "10s", "10s", "8m20s", "never", "never"]);
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(until(t(0), Some(t(45))), "45s");
        assert_eq!(until(t(0), Some(t(3 * 3600 + 12 * 60))), "3h12m");
        assert_eq!(until(t(0), Some(t(-300))), "-5m0s");
        assert_eq!(until(t(0), None), "-");
    }

    #[test]
    fn entries_from_either_form() {
        let auth = base64::engine::general_purpose::STANDARD.encode("u2:p:2");
        let cfg = format!(r#"{{"auths":{{"a.example":{{"username":"u1","password":"p1"}},"b.example":{{"auth":"{auth}"}}}}}}"#);
        let e = entries(cfg.as_bytes()).unwrap();
        assert_eq!((e[0].registry.as_str(), e[0].username.as_str()), ("a.example", "u1"));
        assert_eq!((e[1].registry.as_str(), e[1].username.as_str()), ("b.example", "u2"));
        assert!(entries(br#"{"auths":{"c":{}}}"#).is_err());
        assert!(entries(b"nope").is_err());
    }
}
