//! The README's install and Quick start commands, taken out of README.md
//! (so they cannot drift from it) and run as written against the test
//! control plane: `regcred run` as the README starts it (watching every
//! namespace, which is why this runs alone, after the other tests), then
//! the Quick start, then Helm after CRDs applied with kubectl, and
//! `helm uninstall`. Only the Quick start's three variables come from the
//! test (its own registry over https, its CA in `SSL_CERT_FILE`), and
//! `cargo install` is skipped: the suite has just built that binary.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;
use regcred::api::RegistryCredential;

use crate::support::*;

/// The text of a section: from its heading to the next heading of the same
/// or a higher level (lines in fenced blocks are not headings).
fn section(readme: &str, heading: &str) -> String {
    let level = heading.chars().take_while(|c| *c == '#').count();
    let mut lines = readme.lines().skip_while(|l| *l != heading);
    assert!(lines.next().is_some(), "README has no section {heading:?}");
    let mut fenced = false;
    let mut out = String::new();
    for l in lines {
        if l.trim_start().starts_with("```") {
            fenced = !fenced;
        }
        let hashes = l.chars().take_while(|c| *c == '#').count();
        if !fenced && hashes > 0 && hashes <= level && l[hashes..].starts_with(' ') {
            break;
        }
        out.push_str(l);
        out.push('\n');
    }
    out
}

/// The fenced blocks of one language in a section, in order.
fn blocks(section: &str, lang: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in section.lines() {
        match &mut current {
            None if line.trim_start() == format!("```{lang}") => current = Some(String::new()),
            Some(b) if line.trim_start() == "```" => {
                out.push(std::mem::take(b));
                current = None;
            }
            Some(b) => {
                b.push_str(line);
                b.push('\n');
            }
            None => {}
        }
    }
    out
}

/// Shell commands of a block, one per entry: continuation lines joined, a
/// here-document kept with its command.
fn commands(block: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut heredoc: Option<String> = None;
    let mut continued = false;
    for line in block.lines() {
        if let Some(end) = &heredoc {
            let last = out.last_mut().unwrap();
            last.push('\n');
            last.push_str(line);
            if line.trim() == end {
                heredoc = None;
            }
            continue;
        }
        if continued {
            let last = out.last_mut().unwrap();
            last.push('\n');
            last.push_str(line);
        } else if !line.trim().is_empty() {
            out.push(line.to_string());
        }
        continued = line.trim_end().ends_with('\\');
        if let Some(i) = line.find("<<") {
            heredoc = Some(line[i + 2..].trim().trim_start_matches('-').trim_matches(|c| c == '\'' || c == '"').to_string());
        }
    }
    out
}

struct Shell<'a> {
    env: Vec<(&'a str, String)>,
}

impl Shell<'_> {
    fn command(&self, script: &str) -> Command {
        let mut cmd = Command::new("bash");
        cmd.args(["-euo", "pipefail", "-c", script]).current_dir(repo_root()).env_remove("RUST_LOG");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Run a script: its stdout, or a panic with everything it said.
    fn run(&self, script: &str) -> String {
        let out = self.command(script).output().unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "README command failed ({}):\n{script}\n--- stdout\n{stdout}\n--- stderr\n{stderr}", out.status);
        stdout.into_owned()
    }
}

fn link(dir: &Path, name: &str, target: &Path) {
    std::os::unix::fs::symlink(target, dir.join(name)).unwrap_or_else(|e| panic!("linking {name}: {e}"));
}

#[tokio::test]
async fn readme_install_and_quick_start_work_as_written() {
    if std::env::var("USE_EXISTING_CLUSTER").as_deref() == Ok("true") {
        eprintln!("readme: skipped: it runs `regcred run` for every namespace and `helm install`, which a cluster of yours should not get from a test");
        return;
    }
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let from_source = blocks(&section(&readme, "### From source, on your machine"), "sh");
    let helm = blocks(&section(&readme, "### With Helm"), "sh");
    let uninstall = blocks(&section(&readme, "### Uninstalling"), "sh");
    let quick = &section(&readme, "## Quick start: a first credential");
    let quick_sh = blocks(quick, "sh");
    let seen = blocks(quick, "text");
    assert!(from_source.len() == 1 && helm.len() == 2 && uninstall.len() == 1 && quick_sh.len() == 2 && seen.len() == 1, "the README's blocks changed");

    let (client, ns) = setup("readme").await;
    let dir = TempDir::new("readme");
    // What the README assumes on the PATH: kubectl, helm, and regcred.
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let cp_bin = control_plane().bin.clone().expect("the control plane's bin directory");
    link(&bin, "kubectl", &cp_bin.join("kubectl"));
    link(&bin, "helm", &cp_bin.join("helm"));
    link(&bin, "regcred", Path::new(env!("CARGO_BIN_EXE_regcred")));
    // A kubeconfig of the user's own, whose context namespace is the test's.
    let kubeconfig = dir.join("kubeconfig");
    std::fs::copy(&control_plane().kubeconfig, &kubeconfig).unwrap();
    let certs = TestCerts::new();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let shell = Shell {
        env: vec![
            ("PATH", path),
            ("KUBECONFIG", kubeconfig.display().to_string()),
            ("HOME", dir.0.display().to_string()),
            ("SSL_CERT_FILE", certs.path("ca.crt").display().to_string()),
        ],
    };
    shell.run(&format!("kubectl config set-context --current --namespace {}", ns.name));

    // 1. From source: CRDs with kubectl, then `regcred run` (it stays).
    let mut operator = None;
    for c in commands(&from_source[0]) {
        if c.starts_with("cargo install") {
            eprintln!("readme: skipped {c:?}: the suite built this binary already");
        } else if c.starts_with("regcred run") {
            let mut cmd = shell.command(&format!("exec {c}"));
            cmd.env_remove("RUST_LOG");
            operator = Some(Proc::spawn(cmd, dir.join("operator.log")));
        } else {
            shell.run(&c);
        }
    }
    let operator = operator.expect("the README starts `regcred run`");
    wait_for(Duration::from_secs(30), "the operator's watch line", || async {
        operator.output().contains("watching RegistryCredentials in every namespace").then_some(())
    })
    .await;

    // 2. The Quick start, with the test's registry in its three variables.
    let user = "robot";
    let token = "readme-token-4c2e9b";
    let reg = Registry::htpasswd_tls(&[(user, token)], &certs).await;
    let image = reg.push_test_image("app", user, token);
    let names: Vec<&str> = quick_sh[0].lines().filter_map(|l| l.split_once('=')).map(|(k, _)| k.trim()).collect();
    assert_eq!(names, ["REGISTRY", "USERNAME", "TOKEN"], "the Quick start's variables changed");
    let vars = format!("REGISTRY={}\nUSERNAME={user}\nTOKEN='{token}'\n", reg.host);
    let out = shell.run(&format!("{vars}{}", quick_sh[1]));

    // What the README says you see: the same columns, the credential Ready
    // for that registry, EXPIRES empty for a password and RENEWS the next
    // check, an hour (refreshInterval's default) ahead.
    let expected: Vec<Vec<&str>> = seen[0].lines().map(|l| l.split_whitespace().collect()).collect();
    let got: Vec<Vec<&str>> = out.lines().skip_while(|l| !l.starts_with("NAME ")).map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(got.first(), expected.first(), "the header of `kubectl get regcred`:\n{out}");
    let row = got.iter().find(|r| r.first() == Some(&"registry-pull")).unwrap_or_else(|| panic!("no registry-pull row:\n{out}"));
    assert_eq!(expected[1][..3], ["registry-pull", "True", "registry.example.com"]);
    assert_eq!(row[..3], ["registry-pull", "True", reg.host.as_str()], "{out}");
    assert_eq!(row.len(), expected[1].len(), "EXPIRES is not empty:\n{out}");
    let renews = chrono::DateTime::parse_from_rfc3339(row[3]).unwrap_or_else(|e| panic!("RENEWS {:?}: {e}", row[3]));
    let ahead = renews.with_timezone(&chrono::Utc) - chrono::Utc::now();
    assert!(ahead > chrono::Duration::minutes(55) && ahead <= chrono::Duration::minutes(61), "RENEWS is {ahead} ahead:\n{out}");
    chrono::DateTime::parse_from_rfc3339(expected[1][3]).expect("the README's RENEWS is a time");
    let secret = Api::<Secret>::namespaced(client.clone(), &ns.name).get("registry-pull").await.unwrap();
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/dockerconfigjson"));
    assert_eq!(password_in(&secret, &reg.host), token);
    skopeo_pull(&dockerconfig(&secret), &image).expect("a pull with the Quick start's Secret");

    // 3. Helm after the CRDs were applied with kubectl: the README's second
    // Helm command (its image is never pulled: registry.invalid resolves nowhere,
    // and the sealed run has no network to ask).
    assert!(helm[1].contains("crds.install=false"), "{}", helm[1]);
    assert!(!helm[0].contains("crds.install=false"), "{}", helm[0]);
    // The first one is what Helm refuses then, as the README warns.
    let refused = shell.command(&helm[0].replace("<your registry>", "registry.invalid")).output().unwrap();
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && why.contains("cannot be imported"), "helm install over kubectl's CRDs: {why}");
    let helm_install = helm[1].replace("<your registry>", "registry.invalid");
    shell.run(&helm_install);
    let status = shell.run("helm status regcred --namespace regcred-system -o json");
    assert!(status.contains("\"deployed\""), "{status}");
    // `helm uninstall` as the README gives it leaves the CRDs, the
    // credential and its Secret.
    let uninstall_cmd = commands(&uninstall[0]).into_iter().find(|c| c.starts_with("helm uninstall")).expect("helm uninstall in the README");
    shell.run(&uninstall_cmd);
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in ["registrycredentials.regcred.dev", "clusterregistrycredentials.regcred.dev"] {
        assert!(crds.get_opt(crd).await.unwrap().is_some(), "helm uninstall removed {crd}");
    }
    let cr = Api::<RegistryCredential>::namespaced(client.clone(), &ns.name).get("registry-pull").await.unwrap();
    assert_eq!(cr.ready().map(|c| c.status.as_str()), Some("True"));
    assert!(Api::<Secret>::namespaced(client.clone(), &ns.name).get_opt("registry-pull").await.unwrap().is_some());
    shell.run("kubectl delete namespace regcred-system --wait=false");

    let logs = operator.output();
    assert!(!logs.contains(token), "the token reached the operator's log");
    assert!(!out.contains(token), "the token reached the commands' output");
    drop(operator);
}
