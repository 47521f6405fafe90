//! The admin's egress policy for every address a tenant can make regcred
//! contact (token endpoints, registries for login checks, redirects, Bearer
//! realms). It is enforced on the *resolved* address at connect time: the
//! HTTP client resolves names through [`Resolver`], which drops denied
//! addresses, and IP literals (which skip resolution) are checked before a
//! request is sent. So a DNS name that points at the metadata service, or a
//! redirect to it, is refused as surely as a literal `169.254.169.254`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

/// Addresses denied unless the admin says otherwise: link-local (the cloud
/// metadata services of AWS, GCP and Azure live at 169.254.169.254) and the
/// metadata addresses of AWS over IPv6 and of Alibaba Cloud.
pub const DEFAULT_DENIED: &[&str] = &["169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128", "100.100.100.200/32"];

/// A name that did not resolve (told apart from refusals and timeouts).
#[derive(Debug, Clone, thiserror::Error)]
#[error("DNS lookup of {host} failed")]
pub struct ResolveFailed {
    pub host: String,
}

/// Where tenant-named endpoints may be.
#[derive(Clone, Debug)]
pub struct EgressPolicy {
    denied: Vec<IpNet>,
    /// Host patterns (`registry.example.com`, `*.example.com`); `None` allows
    /// every host that does not resolve to a denied address.
    allowed_hosts: Option<Vec<String>>,
}

impl Default for EgressPolicy {
    fn default() -> Self {
        Self::new(DEFAULT_DENIED.iter().map(|s| s.to_string()).collect(), Vec::new()).expect("the default CIDRs parse")
    }
}

/// A refusal: the host, never more.
#[derive(Debug, Clone, thiserror::Error)]
#[error("egress to {host} is denied by the operator's egress policy")]
pub struct EgressDenied {
    pub host: String,
}

impl EgressPolicy {
    /// From the operator's flags: denied CIDRs and an optional host allowlist.
    pub fn new(denied: Vec<String>, allowed_hosts: Vec<String>) -> Result<Self, String> {
        let denied = denied
            .iter()
            .map(|c| c.trim())
            .filter(|c| !c.is_empty())
            .map(|c| {
                c.parse::<IpNet>()
                    .or_else(|_| c.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("{c:?} is not a CIDR such as 169.254.0.0/16"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let hosts: Vec<String> = allowed_hosts.iter().map(|h| h.trim().to_ascii_lowercase()).filter(|h| !h.is_empty()).collect();
        Ok(Self { denied, allowed_hosts: (!hosts.is_empty()).then_some(hosts) })
    }

    /// Is this address denied? IPv4-mapped IPv6 addresses count as IPv4.
    pub fn denies_ip(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.denied.iter().any(|n| n.contains(&ip))
    }

    /// Check a URL's host before anything is sent: the allowlist for names
    /// and literals, the deny list for IP literals (names are checked again
    /// on every resolution by [`Resolver`]).
    pub fn check_url(&self, url: &url::Url) -> Result<(), EgressDenied> {
        let denied = || EgressDenied { host: url.host_str().unwrap_or("").to_string() };
        let host = url.host().ok_or_else(denied)?;
        let name = match &host {
            url::Host::Domain(d) => d.trim_end_matches('.').to_ascii_lowercase(),
            url::Host::Ipv4(ip) => ip.to_string(),
            url::Host::Ipv6(ip) => ip.to_string(),
        };
        if let Some(allowed) = &self.allowed_hosts {
            if !allowed.iter().any(|p| host_matches(p, &name)) {
                return Err(denied());
            }
        }
        let literal = match host {
            url::Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
            url::Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
            url::Host::Domain(_) => name.parse::<IpAddr>().ok(),
        };
        match literal {
            Some(ip) if self.denies_ip(ip) => Err(denied()),
            _ => Ok(()),
        }
    }

    /// Keep the allowed addresses of a resolution; none left is a refusal.
    pub fn filter(&self, host: &str, addrs: impl IntoIterator<Item = SocketAddr>) -> Result<Vec<SocketAddr>, EgressDenied> {
        let mut seen = false;
        let kept: Vec<SocketAddr> = addrs
            .into_iter()
            .inspect(|_| seen = true)
            .filter(|a| !self.denies_ip(a.ip()))
            .collect();
        if seen && kept.is_empty() {
            return Err(EgressDenied { host: host.to_string() });
        }
        Ok(kept)
    }
}

/// `*.example.com` matches any subdomain of example.com (not example.com
/// itself); anything else matches exactly.
fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => host.len() > suffix.len() + 1 && host.ends_with(suffix) && host[..host.len() - suffix.len()].ends_with('.'),
        None => pattern == host,
    }
}

/// A DNS resolver for reqwest that applies the policy to every answer, so
/// the check holds at connect time whatever the name resolved to.
pub struct Resolver(pub Arc<EgressPolicy>);

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host.as_str(), 0)).await.map_err(|_| ResolveFailed { host: host.clone() })?;
            let kept = policy.filter(&host, addrs)?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Box::new(kept.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> url::Url {
        url::Url::parse(s).unwrap()
    }

    #[test]
    fn metadata_addresses_are_denied_by_default() {
        let p = EgressPolicy::default();
        for u in [
            "http://169.254.169.254/latest/meta-data/",
            "http://[fd00:ec2::254]/latest/",
            "http://100.100.100.200/",
            "http://[fe80::1]/",
            "http://[::ffff:169.254.169.254]/",
        ] {
            assert!(p.check_url(&url(u)).is_err(), "{u}");
        }
        for u in ["https://auth.example.com/token", "http://127.0.0.1:8080/", "http://10.0.0.1/"] {
            assert!(p.check_url(&url(u)).is_ok(), "{u}");
        }
    }

    #[test]
    fn resolved_addresses_are_filtered() {
        let p = EgressPolicy::default();
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        // a name that resolves only to the metadata service is refused
        let e = p.filter("metadata.attacker.example", [a("169.254.169.254:0")]).unwrap_err();
        assert_eq!(e.to_string(), "egress to metadata.attacker.example is denied by the operator's egress policy");
        // a mixed answer keeps only the allowed address
        assert_eq!(p.filter("mixed.example", [a("169.254.169.254:0"), a("192.0.2.7:0")]).unwrap(), vec![a("192.0.2.7:0")]);
        assert_eq!(p.filter("v6.example", [a("[fe80::1]:0")]).unwrap_err().host, "v6.example");
    }

    #[test]
    fn admin_lists() {
        let p = EgressPolicy::new(vec!["127.0.0.2/32".into(), "10.0.0.0/8".into()], vec!["*.example.com".into(), "127.0.0.1".into()]).unwrap();
        assert!(p.check_url(&url("https://registry.example.com/v2/")).is_ok());
        assert!(p.check_url(&url("https://example.com/v2/")).is_err());
        assert!(p.check_url(&url("https://evil-example.com/")).is_err());
        assert!(p.check_url(&url("http://127.0.0.1:5000/")).is_ok());
        assert!(p.check_url(&url("http://127.0.0.2:5000/")).is_err());
        // the admin's list replaces the default
        let only = EgressPolicy::new(vec!["127.0.0.2".into()], vec![]).unwrap();
        assert!(only.check_url(&url("http://127.0.0.2/")).is_err());
        assert!(only.check_url(&url("http://169.254.169.254/")).is_ok());
        assert!(EgressPolicy::new(vec!["not-a-cidr".into()], vec![]).is_err());
    }
}
