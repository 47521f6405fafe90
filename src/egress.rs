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
/// metadata services of AWS, GCP and Azure live at 169.254.169.254), the
/// metadata addresses of AWS over IPv6 (IMDS and EKS Pod Identity's agent),
/// of GCP over IPv6 and of Alibaba Cloud, and Azure's wire server.
pub const DEFAULT_DENIED: &str =
    "169.254.0.0/16,fe80::/10,fd00:ec2::254/128,fd00:ec2::23/128,fd20:ce::254/128,100.100.100.200/32,168.63.129.16/32";

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
        Self::new(DEFAULT_DENIED.split(',').map(str::to_string).collect(), Vec::new()).expect("the default CIDRs parse")
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

    /// Is this address denied? An IPv6 address that carries an IPv4 one
    /// (IPv4-mapped or -compatible, NAT64, 6to4) is also judged by the IPv4
    /// address it leads to, so `64:ff9b::a9fe:a9fe` is metadata as surely as
    /// `169.254.169.254`.
    pub fn denies_ip(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        let denied = |ip: IpAddr| self.denied.iter().any(|n| n.contains(&ip));
        if denied(ip) {
            return true;
        }
        match ip {
            IpAddr::V6(v6) => embedded_ipv4(v6).into_iter().any(|v4| denied(IpAddr::V4(v4))),
            IpAddr::V4(_) => false,
        }
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

/// The IPv4 addresses an IPv6 address leads to: IPv4-compatible
/// (`::a.b.c.d`), NAT64 with the well-known prefix `64:ff9b::/96` and the
/// local-use prefix `64:ff9b:1::/48` (RFC 6052/8215; a network may use any of
/// the prefix lengths /48, /56, /64 or /96 inside it, so every reading
/// counts), and 6to4 (`2002:AABB:CCDD::/48`, RFC 3056).
fn embedded_ipv4(ip: std::net::Ipv6Addr) -> Vec<std::net::Ipv4Addr> {
    let o = ip.octets();
    let s = ip.segments();
    // RFC 6052 §2.2: the IPv4 address follows the prefix, skipping octet 8.
    let after = |prefix_octets: usize| {
        let v: Vec<u8> = (prefix_octets..16).filter(|&i| i != 8).take(4).map(|i| o[i]).collect();
        std::net::Ipv4Addr::new(v[0], v[1], v[2], v[3])
    };
    let mut out = Vec::new();
    if s[..6] == [0; 6] && s[6] != 0 {
        out.push(after(12));
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        out.push(after(12));
    }
    if s[..3] == [0x64, 0xff9b, 1] {
        out.extend([6, 7, 8, 12].map(after));
    }
    if s[0] == 0x2002 {
        out.push(std::net::Ipv4Addr::new(o[2], o[3], o[4], o[5]));
    }
    out
}

/// `*.example.com` matches any subdomain of example.com (not example.com
/// itself); anything else matches exactly.
fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => host.len() > suffix.len() + 1 && host.ends_with(suffix) && host[..host.len() - suffix.len()].ends_with('.'),
        None => pattern == host,
    }
}

/// Why a name may not be reached: every address it has is denied, or it
/// does not resolve.
#[derive(Debug)]
pub enum Refusal {
    Denied(EgressDenied),
    Resolve(ResolveFailed),
}

impl Refusal {
    /// As the error an HTTP client's resolver reports (the inner error, so
    /// callers find it in the chain by type).
    pub fn boxed(self) -> Box<dyn std::error::Error + Send + Sync> {
        match self {
            Refusal::Denied(d) => Box::new(d),
            Refusal::Resolve(r) => Box::new(r),
        }
    }
}

impl EgressPolicy {
    /// Resolve `host` and keep its allowed addresses: what every connection
    /// to a name goes through (reqwest's and the AWS SDK's resolvers, and
    /// the check before a request is handed to a proxy).
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, Refusal> {
        let addrs = tokio::net::lookup_host((host, port)).await.map_err(|_| Refusal::Resolve(ResolveFailed { host: host.to_string() }))?;
        self.filter(host, addrs).map_err(Refusal::Denied)
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
            let kept = policy.resolve(&host, 0).await.map_err(Refusal::boxed)?;
            Ok(Box::new(kept.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The same resolver for the AWS SDK: its HTTP client (built by
/// [`aws_http_client`]) asks this for every name, so an STS or ECR endpoint
/// override by name cannot lead to a denied address either.
#[derive(Clone, Debug)]
pub struct AwsResolver(pub Arc<EgressPolicy>);

impl aws_smithy_runtime_api::client::dns::ResolveDns for AwsResolver {
    fn resolve_dns<'a>(&'a self, name: &'a str) -> aws_smithy_runtime_api::client::dns::DnsFuture<'a> {
        use aws_smithy_runtime_api::client::dns::{DnsFuture, ResolveDnsError};
        DnsFuture::new(async move {
            let kept = self.0.resolve(name, 0).await.map_err(|r| ResolveDnsError::new(r.boxed()))?;
            Ok(kept.into_iter().map(|a| a.ip()).collect())
        })
    }
}

/// The AWS SDK's HTTP client bound to the policy: the SDK's default client
/// (rustls with aws-lc, the SDK's trust store, timeouts and the standard
/// proxy variables) with the policy's resolver. One per policy, shared by
/// every STS and ECR client so connections are pooled. Through a proxy the
/// proxy resolves the target: the ECR source checks a tenant's override
/// first, as the token client does (`httpclient::check_if_proxied`).
pub fn aws_http_client(policy: Arc<EgressPolicy>) -> aws_smithy_runtime_api::client::http::SharedHttpClient {
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    use aws_smithy_http_client::{proxy::ProxyConfig, Builder, ConnectorBuilder};
    Builder::new().build_with_connector_fn(move |settings, components| {
        let mut b = ConnectorBuilder::default().tls_provider(Provider::Rustls(CryptoMode::AwsLc));
        b.set_connector_settings(settings.cloned());
        if let Some(c) = components {
            b.set_sleep_impl(c.sleep_impl());
        }
        b.set_proxy_config(Some(ProxyConfig::from_env()));
        b.build_with_resolver(AwsResolver(policy.clone()))
    })
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
    fn cloud_metadata_over_ipv6_and_azure_are_denied_by_default() {
        let p = EgressPolicy::default();
        for ip in ["168.63.129.16", "fd00:ec2::23", "fd20:ce::254", "fd00:ec2::254", "100.100.100.200"] {
            assert!(p.denies_ip(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["168.63.129.17", "fd00:ec2::24", "fd20:ce::253", "2001:db8::1"] {
            assert!(!p.denies_ip(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn the_chart_denies_what_the_flag_denies_by_default() {
        let values = include_str!("../charts/regcred/values.yaml");
        let deny = values.split("denyCIDRs:").nth(1).expect("egress.denyCIDRs in values.yaml");
        let listed: Vec<&str> = deny.lines().skip(1).map_while(|l| l.trim().strip_prefix("- ")).collect();
        assert_eq!(listed.join(","), DEFAULT_DENIED);
    }

    #[test]
    fn ipv6_forms_of_a_denied_ipv4_address_are_denied() {
        let p = EgressPolicy::default();
        // 169.254.169.254 is a9fe:a9fe; 168.63.129.16 is a83f:8110.
        for ip in [
            "64:ff9b::a9fe:a9fe",          // NAT64, well-known prefix
            "64:ff9b::169.254.169.254",
            "64:ff9b:1:a9fe:a9:fe00::",    // local-use prefix, /48 layout
            "64:ff9b:1:a9:fe:a9fe::",      // /56
            "64:ff9b:1:0:a9:fea9:fe00:0",  // /64
            "64:ff9b:1::a9fe:a9fe",        // /96
            "64:ff9b::a83f:8110",          // Azure's wire server through NAT64
            "2002:a9fe:a9fe::1",           // 6to4
            "2002:a83f:8110:1::",
            "::169.254.169.254",           // IPv4-compatible
            "::ffff:168.63.129.16",        // IPv4-mapped
        ] {
            assert!(p.denies_ip(ip.parse().unwrap()), "{ip}");
        }
        // The same forms of an allowed address stay allowed.
        for ip in ["64:ff9b::c000:207", "2002:c000:207::1", "64:ff9b:1::c000:207", "::1", "::"] {
            assert!(!p.denies_ip(ip.parse().unwrap()), "{ip}");
        }
        // And by URL and by resolution alike.
        assert!(p.check_url(&url("http://[64:ff9b::a9fe:a9fe]/latest/")).is_err());
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(p.filter("nat64.example", [a("[64:ff9b::a9fe:a9fe]:80")]).is_err());
        // An admin's own deny list is judged the same way.
        let own = EgressPolicy::new(vec!["10.0.0.0/8".into()], vec![]).unwrap();
        assert!(own.denies_ip("64:ff9b::a00:1".parse().unwrap()));
        assert!(own.denies_ip("2002:a00:1::".parse().unwrap()));
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
