//! Egress policy for the fetches a manifest's author chooses the address of: HTTP KnowledgeBase
//! sources (fetched by the index builder) and `https://` adapter artifacts (fetched by the
//! operator, cluster-wide, and by runtimes).
//!
//! Without it, anyone who may create a KnowledgeBase or an AdapterPatch can make Switchboard's
//! pods request any address they can reach — the cloud metadata service, the API server, a
//! database's admin port — and read the answer back (an indexed source is retrievable; a status
//! code lands in status): server-side request forgery. By default the policy refuses every
//! address that is not public: loopback, private (RFC 1918, IPv6 unique-local), link-local (the
//! metadata services live there), carrier-grade NAT, unspecified, multicast, broadcast and the
//! IPv4-mapped forms of all of them. An operator of the platform allows internal ranges
//! explicitly (`--egress-allow 10.20.0.0/16`, the chart's `egress.allowCidrs`).
//!
//! The check runs on the addresses a name *resolves to*, at connection time
//! ([`GuardedResolver`], hyper's resolver), so a public name pointing at a private address is
//! refused, and so is a name whose answer changes between a check and the connection (DNS
//! rebinding); literal addresses in a URL are checked before the request ([`EgressPolicy::check_url`]).
//! The clients that use it follow no redirects.
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// An address block, `10.0.0.0/8` or `fd00::/8` (a bare address is a /32 or /128).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is inside the block (IPv4-mapped IPv6 addresses match IPv4 blocks).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let network: IpAddr = addr.parse().map_err(|_| {
            format!("`{s}` is not an address block (e.g. 10.20.0.0/16 or fd00::/8)")
        })?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{s}`: the prefix length must be 0 to {max}"))?,
        };
        Ok(Self { network, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The IPv4 address of an IPv4-mapped IPv6 address, else the address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// Why an address is not public, or `None` for a public address.
pub fn internal_kind(ip: IpAddr) -> Option<&'static str> {
    match canonical(ip) {
        IpAddr::V4(v4) => v4_kind(v4),
        IpAddr::V6(v6) => v6_kind(v6),
    }
}

fn v4_kind(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    Some(if ip.is_loopback() {
        "loopback"
    } else if ip.is_private() {
        "private"
    } else if ip.is_link_local() {
        "link-local (cloud metadata services live there)"
    } else if ip.is_unspecified() || a == 0 {
        "unspecified"
    } else if a == 100 && (64..128).contains(&b) {
        "carrier-grade NAT"
    } else if ip.is_multicast() || ip.is_broadcast() || a >= 240 {
        "multicast or reserved"
    } else {
        return None;
    })
}

fn v6_kind(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    Some(if ip.is_loopback() {
        "loopback"
    } else if ip.is_unspecified() {
        "unspecified"
    } else if first & 0xfe00 == 0xfc00 {
        "unique-local (private)"
    } else if first & 0xffc0 == 0xfe80 {
        "link-local"
    } else if ip.is_multicast() {
        "multicast"
    } else {
        return None;
    })
}

/// What may be fetched: public addresses, and the allowed blocks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    allow: Vec<Cidr>,
    allow_all: bool,
}

/// Words every refusal's message holds (how a caller that only sees a client's error text tells
/// a refusal from a network failure).
pub const REFUSED: &str = "refused by the egress policy";

/// A fetch the policy refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "egress to {host} ({ip}, a {kind} address) is refused by the egress policy; a platform operator can allow the range (operator and index builder flag --egress-allow, chart value egress.allowCidrs)"
)]
pub struct EgressRefused {
    /// The host as the URL names it.
    pub host: String,
    /// The address it resolved to.
    pub ip: IpAddr,
    /// Why the address is internal.
    pub kind: &'static str,
}

impl EgressPolicy {
    /// Public addresses only (the default).
    pub fn public_only() -> Self {
        Self::default()
    }

    /// Public addresses and `allow`.
    pub fn allowing(allow: Vec<Cidr>) -> Self {
        Self {
            allow,
            allow_all: false,
        }
    }

    /// Every address (tools run by hand on a developer's machine, against local servers).
    pub fn unrestricted() -> Self {
        Self {
            allow: Vec::new(),
            allow_all: true,
        }
    }

    /// Parses a comma-separated list of blocks (`--egress-allow`); `*` allows everything.
    pub fn parse(list: &str) -> Result<Self, String> {
        if list.trim() == "*" {
            return Ok(Self::unrestricted());
        }
        let allow = list
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(str::parse)
            .collect::<Result<Vec<Cidr>, String>>()?;
        Ok(Self::allowing(allow))
    }

    /// Whether every address is allowed (no check to make).
    pub fn is_unrestricted(&self) -> bool {
        self.allow_all
    }

    /// The allowed blocks.
    pub fn allowed(&self) -> &[Cidr] {
        &self.allow
    }

    /// Checks one address of `host`.
    pub fn check(&self, host: &str, ip: IpAddr) -> Result<(), EgressRefused> {
        if self.allow_all || self.allow.iter().any(|c| c.contains(ip)) {
            return Ok(());
        }
        match internal_kind(ip) {
            None => Ok(()),
            Some(kind) => Err(EgressRefused {
                host: host.to_owned(),
                ip,
                kind,
            }),
        }
    }

    /// Checks a URL whose host is a literal address (names are checked when resolved, by
    /// [`GuardedResolver`]).
    pub fn check_url(&self, url: &str) -> Result<(), EgressRefused> {
        let Some(host) = url_host(url) else {
            return Ok(());
        };
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        match literal.parse::<IpAddr>() {
            Ok(ip) => self.check(host, ip),
            Err(_) => Ok(()),
        }
    }
}

impl EgressPolicy {
    /// Resolves `authority` (`host`, `host:port`, `[v6]:port`: an OCI registry) and checks every
    /// address it resolves to, for clients that resolve on their own (the OCI registry client):
    /// one internal address refuses the whole name.
    pub async fn check_authority(&self, authority: &str) -> Result<(), String> {
        if self.allow_all {
            return Ok(());
        }
        let (host, port) = split_authority(authority);
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = literal.parse::<IpAddr>() {
            return self.check(host, ip).map_err(|e| e.to_string());
        }
        let addresses = tokio::net::lookup_host((literal, port))
            .await
            .map_err(|e| format!("resolving {host}: {e}"))?;
        for a in addresses {
            self.check(host, a.ip()).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// `host` and port (443 when absent) of an authority.
fn split_authority(authority: &str) -> (&str, u16) {
    if authority.starts_with('[')
        && let Some(end) = authority.find(']')
    {
        let port = authority[end + 1..]
            .strip_prefix(':')
            .and_then(|p| p.parse().ok())
            .unwrap_or(443);
        return (&authority[..=end], port);
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, p.parse().unwrap_or(443)),
        _ => (authority, 443),
    }
}

/// The host of an `http(s)://` URL (`[v6]` kept bracketed), if it has one.
fn url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host_port.starts_with('[') {
        return host_port.find(']').map(|end| &host_port[..=end]);
    }
    Some(host_port.split(':').next().unwrap_or(host_port))
}

/// A hyper resolver that resolves with the system resolver and drops the addresses the policy
/// refuses; a name left with none fails with [`EgressRefused`].
#[derive(Clone, Debug)]
pub struct GuardedResolver {
    policy: Arc<EgressPolicy>,
}

impl GuardedResolver {
    /// A resolver enforcing `policy`.
    pub fn new(policy: EgressPolicy) -> Self {
        Self {
            policy: Arc::new(policy),
        }
    }
}

type Resolving =
    Pin<Box<dyn Future<Output = Result<std::vec::IntoIter<SocketAddr>, std::io::Error>> + Send>>;

impl tower_service::Service<hyper_util::client::legacy::connect::dns::Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Resolving;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: hyper_util::client::legacy::connect::dns::Name) -> Self::Future {
        let policy = Arc::clone(&self.policy);
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let allowed: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|a| match policy.check(&host, a.ip()) {
                    Ok(()) => true,
                    Err(e) => {
                        refused.get_or_insert(e);
                        false
                    }
                })
                .collect();
            match (allowed.is_empty(), refused) {
                (true, Some(e)) => {
                    Err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, e))
                }
                (true, None) => Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{host}: no address"),
                )),
                (false, _) => Ok(allowed.into_iter()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn internal_addresses_are_refused_by_default() {
        let p = EgressPolicy::public_only();
        for (addr, kind) in [
            ("127.0.0.1", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local"),
            ("100.64.0.1", "carrier-grade NAT"),
            ("0.0.0.0", "unspecified"),
            ("255.255.255.255", "multicast"),
            ("::1", "loopback"),
            ("fd00:ec2::254", "unique-local"),
            ("fe80::1", "link-local"),
            ("::ffff:169.254.169.254", "link-local"),
            ("::ffff:10.0.0.1", "private"),
        ] {
            let e = p.check("h", ip(addr)).unwrap_err();
            assert!(e.kind.starts_with(kind), "{addr}: {}", e.kind);
            assert!(e.to_string().contains("egress.allowCidrs"), "{e}");
            assert!(e.to_string().contains(REFUSED), "{e}");
        }
        for addr in [
            "93.184.216.34",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "100.128.0.1",
        ] {
            assert!(p.check("h", ip(addr)).is_ok(), "{addr}");
        }
    }

    #[test]
    fn allowed_blocks_open_internal_ranges() {
        let p = EgressPolicy::parse("10.20.0.0/16, 127.0.0.1,fd00::/8").unwrap();
        assert!(p.check("h", ip("10.20.5.6")).is_ok());
        assert!(p.check("h", ip("::ffff:10.20.5.6")).is_ok());
        assert!(p.check("h", ip("10.21.0.1")).is_err());
        assert!(p.check("h", ip("127.0.0.1")).is_ok());
        assert!(p.check("h", ip("127.0.0.2")).is_err());
        assert!(p.check("h", ip("fd12::1")).is_ok());
        assert!(
            EgressPolicy::parse("*")
                .unwrap()
                .check("h", ip("127.0.0.1"))
                .is_ok()
        );
        assert!(
            EgressPolicy::parse("")
                .unwrap()
                .check("h", ip("10.0.0.1"))
                .is_err()
        );
        for bad in ["10.0.0.0/33", "example.com", "10.0.0/8", "::/129"] {
            assert!(EgressPolicy::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn literal_hosts_are_checked_before_the_request() {
        let p = EgressPolicy::public_only();
        for url in [
            "http://169.254.169.254/latest/meta-data/",
            "https://user:pw@10.0.0.1:8443/x",
            "http://[::1]:8080/a",
            "http://127.0.0.1",
        ] {
            assert!(p.check_url(url).is_err(), "{url}");
        }
        for url in [
            "https://kb.example.com/a",
            "https://93.184.216.34/x",
            "not a url",
        ] {
            assert!(p.check_url(url).is_ok(), "{url}");
        }
    }

    #[tokio::test]
    async fn registries_are_checked_by_every_address() {
        let p = EgressPolicy::public_only();
        for registry in ["127.0.0.1:5000", "localhost:5000", "[::1]:5000", "10.0.0.1"] {
            let e = p.check_authority(registry).await.unwrap_err();
            assert!(
                e.contains("refused by the egress policy"),
                "{registry}: {e}"
            );
        }
        assert!(p.check_authority("93.184.216.34:443").await.is_ok());
        let local = EgressPolicy::parse("127.0.0.0/8,::1").unwrap();
        assert!(local.check_authority("localhost:5000").await.is_ok());
        assert_eq!(split_authority("[::1]:5000"), ("[::1]", 5000));
        assert_eq!(split_authority("ghcr.io"), ("ghcr.io", 443));
    }

    #[tokio::test]
    async fn names_resolving_to_internal_addresses_are_refused() {
        use tower_service::Service;
        let name = "localhost".parse().unwrap();
        let err = GuardedResolver::new(EgressPolicy::public_only())
            .call(name)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
        assert!(err.to_string().contains("loopback"), "{err}");
        let allowed = GuardedResolver::new(EgressPolicy::parse("127.0.0.0/8,::1").unwrap())
            .call("localhost".parse().unwrap())
            .await
            .unwrap();
        assert!(allowed.count() >= 1);
    }
}
