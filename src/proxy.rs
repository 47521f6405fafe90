//! The standard proxy variables (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`,
//! `NO_PROXY` and their lower-case forms), read once and matched the way the
//! token client (reqwest) matches them, for the two kinds of connection
//! regcred makes:
//!
//! - to the API server: through the proxy unless `NO_PROXY` names the
//!   server (what a cluster-wide proxy, e.g. OpenShift's, injects);
//! - to tenant-named endpoints: through the proxy too, but the egress policy
//!   still holds. A proxy resolves the name itself, so the resolver that
//!   filters every answer never sees it: the sources resolve the name first
//!   and apply the policy before the proxy is asked ([`proxied`] tells when).

use std::sync::OnceLock;

use hyper_util::client::proxy::matcher::Matcher;

static MATCHER: OnceLock<Matcher> = OnceLock::new();

fn matcher() -> &'static Matcher {
    MATCHER.get_or_init(Matcher::from_env)
}

/// Whether a request to `url` goes through a proxy from the environment.
pub fn proxied(url: &url::Url) -> bool {
    url.as_str().parse::<http::Uri>().is_ok_and(|uri| matcher().intercept(&uri).is_some())
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn as_uri(raw: &str) -> Option<http::Uri> {
    let raw = raw.trim();
    let full = if raw.contains("://") { raw.to_string() } else { format!("http://{raw}") };
    full.parse().ok()
}

/// The proxy for the API server at `cluster_url`. `inferred` is what the
/// Kubernetes client chose: a kubeconfig's `proxy-url` is kept as the user's
/// explicit choice; otherwise the variables decide, `NO_PROXY` matched
/// against the API server (the client alone matches it against the proxy's
/// own address, and never proxies in-cluster).
pub fn api_proxy(cluster_url: &http::Uri, inferred: Option<http::Uri>) -> Option<http::Uri> {
    choose(cluster_url, inferred, &env, matcher())
}

fn choose(cluster_url: &http::Uri, inferred: Option<http::Uri>, vars: &dyn Fn(&str) -> Option<String>, matcher: &Matcher) -> Option<http::Uri> {
    let first = |names: &[&str]| names.iter().find_map(|n| vars(n).filter(|v| !v.trim().is_empty())).and_then(|v| as_uri(&v));
    if let Some(p) = &inferred {
        if Some(p) != first(&["HTTPS_PROXY", "https_proxy"]).as_ref() {
            return inferred;
        }
    }
    matcher.intercept(cluster_url)?;
    if cluster_url.scheme_str() == Some("http") {
        first(&["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"])
    } else {
        first(&["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"])
    }
}

/// The Kubernetes client of the operator and the commands: the usual
/// configuration (KUBECONFIG, ~/.kube/config, in-cluster) with the proxy
/// chosen by [`api_proxy`].
pub async fn kube_client() -> Result<kube::Client, kube::Error> {
    let mut config = kube::Config::infer().await.map_err(kube::Error::InferConfig)?;
    config.proxy_url = api_proxy(&config.cluster_url, config.proxy_url.take());
    kube::Client::try_from(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kubeconfig_proxy_is_kept_and_the_variables_are_judged_against_the_api_server() {
        let vars = |n: &str| match n {
            "HTTPS_PROXY" => Some("http://127.0.0.9:3128".to_string()),
            "HTTP_PROXY" => Some("127.0.0.9:3129".to_string()),
            _ => None,
        };
        let m = Matcher::builder()
            .https("http://127.0.0.9:3128")
            .http("http://127.0.0.9:3129")
            .no("127.0.0.1,.cluster.local,10.0.0.0/8")
            .build();
        let uri = |s: &str| s.parse::<http::Uri>().unwrap();
        let choose = |cluster: &str, inferred: Option<&str>| choose(&uri(cluster), inferred.map(uri), &vars, &m);
        // NO_PROXY names the API server: direct, whatever the client inferred.
        assert_eq!(choose("https://127.0.0.1:6443", Some("http://127.0.0.9:3128")), None);
        assert_eq!(choose("https://10.96.0.1:443", None), None);
        assert_eq!(choose("https://api.cluster.local:6443", None), None);
        // Not named: through the proxy, in-cluster too (where the client chose none).
        assert_eq!(choose("https://api.example.com:6443", None), Some(uri("http://127.0.0.9:3128")));
        assert_eq!(choose("http://api.example.com:8080", None), Some(uri("http://127.0.0.9:3129")));
        // A kubeconfig's proxy-url is the user's: kept.
        assert_eq!(choose("https://127.0.0.1:6443", Some("http://10.1.1.1:8080")), Some(uri("http://10.1.1.1:8080")));
        // No variables: nothing.
        let none = Matcher::builder().build();
        assert_eq!(super::choose(&uri("https://api.example.com"), None, &|_| None, &none), None);
    }
}
