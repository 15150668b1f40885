//! The SSRF guard for outbound pushes.
//!
//! Anyone with a key that may register an agent or a webhook names a URL the cluster will
//! POST to from inside its network. Without a guard that is a way to reach the cluster's
//! own admin ports, cloud metadata services (169.254.169.254) and private networks. So a
//! URL must be http(s), and every address its host resolves to must be a public unicast
//! address, unless the operator's allow-list names the host or a range containing it.
//!
//! Names are judged only when a push is about to connect, by [`GuardedResolver`], against
//! the very addresses the connection will use. What a name resolves to when it is registered
//! says nothing about what it will resolve to at the push (DNS rebinding), and a receiver
//! whose name does not resolve from the cluster yet (or right now) is a receiver to retry,
//! not a bad request. So registration ([`check_url`], a 422) checks only what cannot change:
//! the URL's shape and a literal IP address; the same check runs again before every push.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::Url;

/// Why a URL may not be pushed to (now, or ever: see [`SsrfError::is_permanent`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SsrfError {
    #[error("not a valid URL: {0}")]
    Invalid(String),
    #[error("only http and https URLs are allowed, not {0}")]
    Scheme(String),
    #[error("the URL has no host")]
    NoHost,
    /// The name did not resolve at push time: DNS may answer later, so it is retried.
    #[error("cannot resolve {host}: {error}")]
    Resolve { host: String, error: String },
    #[error("{host} resolves to {addr}, a {range} address, which is not allowed")]
    Blocked {
        host: String,
        addr: IpAddr,
        range: &'static str,
    },
    #[error("invalid allow-list entry `{0}`: expected a CIDR (10.0.0.0/8), an IP or a host name")]
    AllowEntry(String),
}

impl SsrfError {
    /// Whether pushing to the URL can never succeed: everything but a failed resolution,
    /// which may succeed on the next attempt. A refused address stays refused even if the
    /// name may resolve elsewhere later: a name that pointed inside once is not trusted.
    pub fn is_permanent(&self) -> bool {
        !matches!(self, SsrfError::Resolve { .. })
    }
}

/// One allow-list entry: a range of addresses or a host name.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Allowed {
    Net { addr: IpAddr, prefix: u8 },
    Host(String),
}

/// Hosts and ranges an operator allows despite the guard (`--delivery-allow-hosts`): for
/// receivers on the same private network, or tests on 127.0.0.1.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    entries: Vec<Allowed>,
}

impl AllowList {
    /// Parses a comma-separated list of CIDRs (`10.1.0.0/16`), single IPs and host names.
    /// Blank entries are ignored, so an empty string is the empty list.
    pub fn parse(spec: &str) -> Result<Self, SsrfError> {
        let mut entries = Vec::new();
        for raw in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            entries.push(parse_entry(raw)?);
        }
        Ok(AllowList { entries })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether the host name itself is named (case-insensitive; a trailing dot is ignored).
    pub fn allows_host(&self, host: &str) -> bool {
        let host = normalize_host(host);
        self.entries
            .iter()
            .any(|e| matches!(e, Allowed::Host(h) if *h == host))
    }

    /// Whether a named range contains `addr` (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn allows_ip(&self, addr: IpAddr) -> bool {
        let addr = canonical(addr);
        self.entries.iter().any(|e| match e {
            Allowed::Net { addr: net, prefix } => in_prefix(addr, *net, *prefix),
            Allowed::Host(_) => false,
        })
    }
}

impl fmt::Display for AllowList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .entries
            .iter()
            .map(|e| match e {
                Allowed::Net { addr, prefix } => format!("{addr}/{prefix}"),
                Allowed::Host(h) => h.clone(),
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

fn parse_entry(raw: &str) -> Result<Allowed, SsrfError> {
    let bad = || SsrfError::AllowEntry(raw.to_string());
    if let Some((addr, prefix)) = raw.split_once('/') {
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(bad());
        }
        let addr = canonical(addr);
        let prefix = if addr.is_ipv4() && max == 128 {
            prefix.saturating_sub(96)
        } else {
            prefix
        };
        return Ok(Allowed::Net { addr, prefix });
    }
    let bracketless = raw.trim_start_matches('[').trim_end_matches(']');
    if let Ok(addr) = bracketless.parse::<IpAddr>() {
        let addr = canonical(addr);
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        return Ok(Allowed::Net { addr, prefix });
    }
    let host = normalize_host(raw);
    let valid = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
    if !valid {
        return Err(bad());
    }
    Ok(Allowed::Host(host))
}

fn normalize_host(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`) reach the IPv4 address: judge them as one.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

fn in_prefix(addr: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (addr, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// The forbidden range `addr` falls in, if any. Only public unicast addresses are fair game:
/// everything in the IANA special-purpose registries that is not globally reachable, and
/// every IPv6 form that carries an IPv4 address, judged by the IPv4 address it reaches.
pub fn forbidden_range(addr: IpAddr) -> Option<&'static str> {
    match canonical(addr) {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

/// The IPv4 special-purpose blocks (RFC 6890 and the IANA registry), first match wins.
const V4_RANGES: &[([u8; 4], u8, &str)] = &[
    // 0.0.0.0 is "this host" on Linux: connecting to it reaches loopback services.
    ([0, 0, 0, 0], 8, "unspecified"),
    ([127, 0, 0, 0], 8, "loopback"),
    ([10, 0, 0, 0], 8, "private"),
    ([172, 16, 0, 0], 12, "private"),
    ([192, 168, 0, 0], 16, "private"),
    ([169, 254, 0, 0], 16, "link-local"),
    ([100, 64, 0, 0], 10, "carrier-grade NAT"),
    // DS-Lite, NAT64 discovery and other protocol assignments: none is a receiver.
    ([192, 0, 0, 0], 24, "IETF protocol assignment"),
    ([192, 0, 2, 0], 24, "documentation"),
    ([198, 51, 100, 0], 24, "documentation"),
    ([203, 0, 113, 0], 24, "documentation"),
    ([198, 18, 0, 0], 15, "benchmarking"),
    // The deprecated 6to4 relay anycast (RFC 7526).
    ([192, 88, 99, 0], 24, "6to4 relay"),
    ([224, 0, 0, 0], 4, "multicast"),
    ([255, 255, 255, 255], 32, "broadcast"),
    ([240, 0, 0, 0], 4, "reserved"),
];

fn forbidden_v4(a: Ipv4Addr) -> Option<&'static str> {
    V4_RANGES
        .iter()
        .find(|(net, prefix, _)| {
            in_prefix(IpAddr::V4(a), IpAddr::V4(Ipv4Addr::from(*net)), *prefix)
        })
        .map(|(_, _, range)| *range)
}

/// The IPv4 address in bits `from..from + 32` of `a`.
fn embedded_v4(a: Ipv6Addr, from: u32) -> Ipv4Addr {
    Ipv4Addr::from((u128::from(a) >> (96 - from)) as u32)
}

fn forbidden_v6(a: Ipv6Addr) -> Option<&'static str> {
    let within = |net: [u16; 8], prefix: u8| {
        in_prefix(IpAddr::V6(a), IpAddr::V6(Ipv6Addr::from(net)), prefix)
    };
    if a.is_unspecified() {
        return Some("unspecified");
    }
    if a.is_loopback() {
        return Some("loopback");
    }
    // The NAT64 well-known prefix reaches the IPv4 address in its last 32 bits (RFC 6052):
    // that one is judged, so IPv6-only networks still reach public IPv4 receivers.
    if within([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96) {
        return forbidden_v4(embedded_v4(a, 96));
    }
    // 6to4 (RFC 3056) routes to the IPv4 address in bits 16..48.
    if within([0x2002, 0, 0, 0, 0, 0, 0, 0], 16) {
        return forbidden_v4(embedded_v4(a, 16));
    }
    // Only 2000::/3 holds global unicast; the rest is special in one way or another.
    if !within([0x2000, 0, 0, 0, 0, 0, 0, 0], 3) {
        return Some(if within([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10) {
            "link-local"
        } else if within([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10) {
            // Deprecated site-local: still routed inside some private networks.
            "private"
        } else if within([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7) {
            "private"
        } else if a.is_multicast() {
            "multicast"
        } else if within([0, 0, 0, 0, 0, 0, 0, 0], 96) {
            // ::a.b.c.d, deprecated (RFC 4291): stacks that still honour it reach a.b.c.d.
            "IPv4-compatible"
        } else if within([0, 0, 0, 0, 0xffff, 0, 0, 0], 96) {
            // ::ffff:0:a.b.c.d, SIIT (RFC 2765): translated to a.b.c.d.
            "IPv4-translated"
        } else if within([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48) {
            // Local-use NAT64 (RFC 8215): translated inside the operator's own network.
            "NAT64 local-use"
        } else if within([0x100, 0, 0, 0, 0, 0, 0, 0], 64) {
            "discard-only"
        } else {
            "reserved"
        });
    }
    const GLOBAL_SPECIAL: &[([u16; 8], u8, &str)] = &[
        // Teredo (RFC 4380) tunnels to an IPv4 address hidden in the last 32 bits.
        ([0x2001, 0, 0, 0, 0, 0, 0, 0], 32, "Teredo"),
        ([0x2001, 0x2, 0, 0, 0, 0, 0, 0], 48, "benchmarking"),
        (
            [0x2001, 0, 0, 0, 0, 0, 0, 0],
            23,
            "IETF protocol assignment",
        ),
        ([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32, "documentation"),
        ([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20, "documentation"),
    ];
    GLOBAL_SPECIAL
        .iter()
        .find(|(net, prefix, _)| within(*net, *prefix))
        .map(|(_, _, range)| *range)
}

/// Checks one address of `host` against the guard and the allow-list.
pub fn check_addr(host: &str, addr: IpAddr, allow: &AllowList) -> Result<(), SsrfError> {
    if allow.allows_host(host) || allow.allows_ip(addr) {
        return Ok(());
    }
    match forbidden_range(addr) {
        Some(range) => Err(SsrfError::Blocked {
            host: host.to_string(),
            addr: canonical(addr),
            range,
        }),
        None => Ok(()),
    }
}

/// The URL's host as a literal IP address, or `None` for a host name, once the URL is known
/// to be http(s) with a host.
fn literal_host(url: &str) -> Result<Option<IpAddr>, SsrfError> {
    let parsed = Url::parse(url).map_err(|e| SsrfError::Invalid(e.to_string()))?;
    match parsed.scheme() {
        "http" | "https" => {}
        other => return Err(SsrfError::Scheme(other.to_string())),
    }
    let host = parsed
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or(SsrfError::NoHost)?;
    // The URL parser has already normalised IP literals (`[::1]`, `0x7f.1` -> `127.0.0.1`).
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    Ok(bare.parse::<IpAddr>().ok())
}

/// Checks a callback or agent URL without resolving anything: http(s), a host, and, when
/// the host is a literal IP address, that address. Runs at registration (a refusal is the
/// caller's 422) and again right before every push, because the allow-list is configuration
/// and may differ after a restart. A host name passes here; [`GuardedResolver`] judges its
/// addresses at the push.
pub fn check_url(url: &str, allow: &AllowList) -> Result<(), SsrfError> {
    match literal_host(url)? {
        Some(addr) => check_addr(&addr.to_string(), addr, allow),
        None => Ok(()),
    }
}

/// Every resolved address must pass: a client may connect to any of them.
fn check_resolved(host: &str, addrs: &[SocketAddr], allow: &AllowList) -> Result<(), SsrfError> {
    if addrs.is_empty() {
        return Err(SsrfError::Resolve {
            host: host.to_string(),
            error: "no addresses".into(),
        });
    }
    addrs
        .iter()
        .try_for_each(|a| check_addr(host, a.ip(), allow))
}

/// reqwest's resolver for pushes: resolves with the system resolver and refuses the name if
/// any address is forbidden. The connection dials only the addresses returned here, so what
/// is checked is what is dialled, at every push: a name that changes its answer between
/// pushes (DNS rebinding) is judged by the answer it gives for this connection. A name that
/// does not resolve is [`SsrfError::Resolve`], which the engine retries with backoff.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    allow: Arc<AllowList>,
}

impl GuardedResolver {
    pub fn new(allow: Arc<AllowList>) -> Self {
        GuardedResolver { allow }
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow = self.allow.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| SsrfError::Resolve {
                    host: host.clone(),
                    error: e.to_string(),
                })?
                .collect();
            check_resolved(&host, &addrs, &allow)?;
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocked(url: &str) -> &'static str {
        match check_url(url, &AllowList::default()) {
            Err(SsrfError::Blocked { range, .. }) => range,
            other => panic!("{url}: expected a block, got {other:?}"),
        }
    }

    #[test]
    fn every_forbidden_range_is_refused() {
        let cases = [
            ("http://127.0.0.1/", "loopback"),
            ("http://127.255.0.9:8080/x", "loopback"),
            ("http://[::1]/", "loopback"),
            ("http://0.0.0.0/", "unspecified"),
            ("http://0.1.2.3/", "unspecified"),
            ("http://[::]/", "unspecified"),
            ("http://10.0.0.1/", "private"),
            ("http://10.255.255.255/", "private"),
            ("http://172.16.0.1/", "private"),
            ("http://172.31.255.254/", "private"),
            ("http://192.168.1.1/", "private"),
            ("http://[fc00::1]/", "private"),
            ("http://[fd12:3456::1]/", "private"),
            ("http://[fec0::1]/", "private"),
            ("http://169.254.169.254/latest/meta-data", "link-local"),
            ("http://[fe80::1]/", "link-local"),
            ("http://[febf::1]/", "link-local"),
            ("http://100.64.0.1/", "carrier-grade NAT"),
            ("http://100.127.255.255/", "carrier-grade NAT"),
            ("http://224.0.0.1/", "multicast"),
            ("http://239.255.255.250/", "multicast"),
            ("http://[ff02::1]/", "multicast"),
            ("http://255.255.255.255/", "broadcast"),
            ("http://240.0.0.1/", "reserved"),
            ("http://[::ffff:127.0.0.1]/", "loopback"),
            ("http://[::ffff:10.1.2.3]/", "private"),
            ("http://[64:ff9b::a9fe:a9fe]/", "link-local"),
            // IANA special-purpose IPv4 blocks.
            ("http://192.0.0.1/", "IETF protocol assignment"),
            ("http://192.0.0.170/", "IETF protocol assignment"),
            ("http://192.0.2.10/", "documentation"),
            ("http://198.51.100.7/", "documentation"),
            ("http://203.0.113.255/", "documentation"),
            ("http://198.18.0.1/", "benchmarking"),
            ("http://198.19.255.254/", "benchmarking"),
            ("http://192.88.99.1/", "6to4 relay"),
            // IPv6 forms that carry a private or loopback IPv4 address.
            ("http://[2002:7f00:1::]/", "loopback"),
            ("http://[2002:a00:1:5::1]/", "private"),
            ("http://[2002:a9fe:a9fe::1]/", "link-local"),
            ("http://[64:ff9b::7f00:1]/", "loopback"),
            ("http://[64:ff9b::10.0.0.1]/", "private"),
            ("http://[64:ff9b:1::a00:1]/", "NAT64 local-use"),
            ("http://[64:ff9b:1:ffff::808:808]/", "NAT64 local-use"),
            ("http://[::127.0.0.1]/", "IPv4-compatible"),
            ("http://[::10.0.0.1]/", "IPv4-compatible"),
            ("http://[::8.8.8.8]/", "IPv4-compatible"),
            ("http://[::ffff:0:127.0.0.1]/", "IPv4-translated"),
            ("http://[::ffff:0:a00:1]/", "IPv4-translated"),
            // IPv6 special-purpose blocks.
            ("http://[2001::1]/", "Teredo"),
            ("http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/", "Teredo"),
            ("http://[2001:2::1]/", "benchmarking"),
            ("http://[2001:10::1]/", "IETF protocol assignment"),
            ("http://[2001:db8::1]/", "documentation"),
            ("http://[3fff::1]/", "documentation"),
            ("http://[100::1]/", "discard-only"),
            ("http://[fdff:ffff::1]/", "private"),
            ("http://[5f00::1]/", "reserved"),
            ("http://[4000::1]/", "reserved"),
            // Odd IPv4 spellings are normalised by the URL parser before the check.
            ("http://0x7f.1/", "loopback"),
            ("http://2130706433/", "loopback"),
        ];
        for (url, range) in cases {
            assert_eq!(blocked(url), range, "{url}");
        }
    }

    #[test]
    fn public_addresses_and_range_edges_pass() {
        let allow = AllowList::default();
        for url in [
            "http://8.8.8.8/",
            "https://1.1.1.1:8443/hook",
            "http://172.15.255.255/",
            "http://172.32.0.0/",
            "http://100.63.255.255/",
            "http://100.128.0.0/",
            "http://169.253.255.255/",
            "http://192.169.0.1/",
            "http://11.0.0.0/",
            "http://223.255.255.255/",
            "http://[2001:4860:4860::8888]/",
            "http://[64:ff9b::808:808]/",
            "http://[2002:808:808::1]/",
            "http://[2606:4700:4700::1111]/",
            "http://[2001:200::1]/",
            "http://[3fff:1000::1]/",
            "http://192.0.1.255/",
            "http://192.0.3.0/",
            "http://198.17.255.255/",
            "http://198.20.0.0/",
            "http://198.51.99.255/",
            "http://203.0.112.255/",
            "http://192.88.98.255/",
        ] {
            assert_eq!(check_url(url, &allow), Ok(()), "{url}");
        }
    }

    #[test]
    fn only_http_and_https_with_a_host() {
        let allow = AllowList::default();
        assert_eq!(
            check_url("ftp://8.8.8.8/", &allow),
            Err(SsrfError::Scheme("ftp".into()))
        );
        assert_eq!(
            check_url("file:///etc/passwd", &allow),
            Err(SsrfError::Scheme("file".into()))
        );
        assert!(matches!(
            check_url("not a url", &allow),
            Err(SsrfError::Invalid(_))
        ));
    }

    #[test]
    fn names_are_not_resolved_at_registration() {
        // Neither a name that points inside nor one that resolves nowhere is judged here:
        // both are the resolver's to judge, at every push.
        let allow = AllowList::default();
        for url in [
            "http://localhost:9/",
            "https://integrator.example/hook",
            "https://integrator.invalid:8443/hook?x=1",
        ] {
            assert_eq!(check_url(url, &allow), Ok(()), "{url}");
        }
    }

    #[test]
    fn the_allow_list_opens_named_ranges_only() {
        let allow = AllowList::parse(" 127.0.0.1 , 10.1.0.0/16,::1, fd00::/8, receiver.internal ,")
            .unwrap();
        assert_eq!(check_url("http://127.0.0.1:3000/", &allow), Ok(()));
        assert_eq!(check_url("http://[::ffff:127.0.0.1]/", &allow), Ok(()));
        assert!(check_url("http://127.0.0.2/", &allow).is_err());
        assert_eq!(check_url("http://10.1.200.3/", &allow), Ok(()));
        assert!(check_url("http://10.2.0.1/", &allow).is_err());
        assert_eq!(check_url("http://[::1]/", &allow), Ok(()));
        assert_eq!(check_url("http://[fd00::5]/", &allow), Ok(()));
        assert!(check_url("http://[fc00::5]/", &allow).is_err());
        assert!(allow.allows_host("RECEIVER.internal"));
        assert_eq!(
            allow.to_string(),
            "127.0.0.1/32,10.1.0.0/16,::1/128,fd00::/8,receiver.internal"
        );
        for bad in ["10.0.0.0/33", "::/129", "x/8", "bad host", "a@b"] {
            assert!(AllowList::parse(bad).is_err(), "{bad}");
        }
        assert!(AllowList::parse("").unwrap().is_empty());
        // A mapped CIDR covers the IPv4 range.
        let mapped = AllowList::parse("::ffff:192.168.0.0/112").unwrap();
        assert!(mapped.allows_ip("192.168.3.4".parse().unwrap()));
    }

    /// What the resolver refused, as the push client sees it.
    async fn resolve_error(resolver: &GuardedResolver, name: &str) -> Option<SsrfError> {
        use reqwest::dns::Resolve as _;
        match resolver.resolve(name.parse().unwrap()).await {
            Ok(_) => None,
            Err(e) => Some(
                e.downcast_ref::<SsrfError>()
                    .unwrap_or_else(|| panic!("{name}: not an SSRF error: {e}"))
                    .clone(),
            ),
        }
    }

    #[tokio::test]
    async fn the_resolver_refuses_forbidden_addresses_for_good() {
        // localhost resolves through /etc/hosts, no network needed.
        let resolver = GuardedResolver::new(Arc::new(AllowList::default()));
        let refused = resolve_error(&resolver, "localhost").await.unwrap();
        assert!(
            matches!(
                refused,
                SsrfError::Blocked {
                    range: "loopback",
                    ..
                }
            ),
            "{refused:?}"
        );
        assert!(refused.is_permanent());
        let open = GuardedResolver::new(Arc::new(AllowList::parse("127.0.0.1,::1").unwrap()));
        assert_eq!(resolve_error(&open, "localhost").await, None);
        let by_name = GuardedResolver::new(Arc::new(AllowList::parse("LocalHost.").unwrap()));
        assert_eq!(resolve_error(&by_name, "localhost").await, None);
    }

    #[tokio::test]
    async fn a_name_that_does_not_resolve_is_worth_another_try() {
        // `.invalid` never resolves (RFC 6761).
        let resolver = GuardedResolver::new(Arc::new(AllowList::default()));
        let failed = resolve_error(&resolver, "integrator.invalid")
            .await
            .unwrap();
        assert!(
            matches!(&failed, SsrfError::Resolve { host, .. } if host == "integrator.invalid"),
            "{failed:?}"
        );
        assert!(!failed.is_permanent());
    }
}
