//! Who the client is, network-wise: the address the per-IP limits (auth rate, connection caps)
//! count and the room's `network` key is made from.
//!
//! `X-Forwarded-For` is only as trustworthy as whoever appended to it. A proxy *appends* the
//! address it saw, so the entries a client wrote itself are on the left, and the rightmost
//! entry a trusted proxy did not write is the first one nobody can forge. `TRUSTED_PROXIES`
//! says which hops are trusted:
//! - unset, empty or `0`: nobody; the socket's peer address is the client (XFF ignored);
//! - a hop count `N`: the last `N` hops (the socket peer and the `N - 1` rightmost XFF entries)
//!   are our proxies; the client is the entry they appended (`N = 1`: the rightmost entry);
//! - a list of CIDRs or addresses (`10.0.0.0/8, fd00::/8, 203.0.113.7`): walking from the
//!   socket peer leftwards, every address in the list is skipped; the first one outside is
//!   the client. A peer outside the list means no proxy is involved: XFF is ignored.

use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustedProxies {
    None,
    Hops(usize),
    Cidrs(Vec<Cidr>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Cidr> {
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip.trim(), Some(p.trim().parse::<u8>().ok()?)),
            None => (s.trim(), None),
        };
        let addr = canonical(ip.parse().ok()?);
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// `::ffff:a.b.c.d` (a dual-stack listener's view of an IPv4 peer) is that IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

impl TrustedProxies {
    /// `TRUSTED_PROXIES`: empty/`0` → nobody, a number → hops, else a comma/space list of CIDRs.
    pub fn parse(value: Option<&str>) -> Result<TrustedProxies, String> {
        let v = value.map(str::trim).unwrap_or("");
        if v.is_empty() {
            return Ok(TrustedProxies::None);
        }
        if let Ok(n) = v.parse::<usize>() {
            return match n {
                0 => Ok(TrustedProxies::None),
                1..=16 => Ok(TrustedProxies::Hops(n)),
                _ => Err("TRUSTED_PROXIES: a hop count must be 0 to 16".into()),
            };
        }
        let cidrs = v
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .map(|s| {
                Cidr::parse(s).ok_or_else(|| {
                    format!("TRUSTED_PROXIES: {s:?} is not an address or CIDR (e.g. 10.0.0.0/8)")
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TrustedProxies::Cidrs(cidrs))
    }

    /// Whether the socket peer is one of our proxies (its own connections are not capped as
    /// one client's). With a hop count every peer is a proxy by definition.
    pub fn trusts_peer(&self, peer: IpAddr) -> bool {
        match self {
            TrustedProxies::None => false,
            TrustedProxies::Hops(_) => true,
            TrustedProxies::Cidrs(c) => c.iter().any(|c| c.contains(peer)),
        }
    }

    /// The client's address given the socket peer and every `X-Forwarded-For` header value
    /// (in order; several headers are one list, RFC 9110 §5.3).
    pub fn client_ip<'a>(&self, peer: IpAddr, xff: impl IntoIterator<Item = &'a str>) -> IpAddr {
        let peer = canonical(peer);
        if *self == TrustedProxies::None {
            return peer;
        }
        let entries: Vec<&str> = xff
            .into_iter()
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        // Hops, rightmost first, starting with the peer itself; `None` for an entry that is
        // not an address (the nearest trusted hop is blamed for it).
        let hops = std::iter::once(Some(peer)).chain(entries.iter().rev().map(|e| parse_entry(e)));
        let mut last_trusted = peer;
        for (i, hop) in hops.enumerate() {
            let Some(ip) = hop else {
                return last_trusted;
            };
            let trusted = match self {
                TrustedProxies::None => false,
                TrustedProxies::Hops(n) => i < *n,
                TrustedProxies::Cidrs(c) => c.iter().any(|c| c.contains(ip)),
            };
            if !trusted {
                return ip;
            }
            last_trusted = ip;
        }
        // Every hop is trusted (a request from inside): the leftmost one.
        last_trusted
    }
}

/// An `X-Forwarded-For` entry: an address, possibly `[v6]:port` or `v4:port`.
fn parse_entry(e: &str) -> Option<IpAddr> {
    if let Ok(ip) = e.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Some(rest) = e.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok().map(canonical);
    }
    let (ip, port) = e.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    ip.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// What per-IP limits count: an IPv4 address, or an IPv6 /64 (one subscriber's allocation:
/// counting single IPv6 addresses would let a client rotate past every cap).
pub fn network_of(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & (u128::MAX << 64)).into()),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn nobody_trusted_ignores_the_header() {
        let t = TrustedProxies::parse(None).unwrap();
        assert_eq!(t.client_ip(ip("9.9.9.9"), ["1.2.3.4"]), ip("9.9.9.9"));
        assert_eq!(
            TrustedProxies::parse(Some("0")).unwrap(),
            TrustedProxies::None
        );
    }

    #[test]
    fn one_hop_takes_the_rightmost_entry() {
        let t = TrustedProxies::parse(Some("1")).unwrap();
        // The client forged "6.6.6.6"; the proxy appended the real 1.2.3.4.
        assert_eq!(
            t.client_ip(ip("10.0.0.1"), ["6.6.6.6, 1.2.3.4"]),
            ip("1.2.3.4")
        );
        assert_eq!(
            t.client_ip(ip("10.0.0.1"), ["6.6.6.6", "1.2.3.4"]),
            ip("1.2.3.4")
        );
        // No header: the peer.
        assert_eq!(t.client_ip(ip("10.0.0.1"), []), ip("10.0.0.1"));
        let two = TrustedProxies::parse(Some("2")).unwrap();
        assert_eq!(
            two.client_ip(ip("10.0.0.1"), ["6.6.6.6, 1.2.3.4, 10.0.0.2"]),
            ip("1.2.3.4")
        );
    }

    #[test]
    fn cidrs_skip_trusted_hops_from_the_right() {
        let t = TrustedProxies::parse(Some("10.0.0.0/8, fd00::/8")).unwrap();
        assert_eq!(
            t.client_ip(ip("10.1.2.3"), ["6.6.6.6, 1.2.3.4, 10.9.9.9"]),
            ip("1.2.3.4")
        );
        // An untrusted peer wrote the header itself: ignored.
        assert_eq!(t.client_ip(ip("5.5.5.5"), ["10.0.0.1"]), ip("5.5.5.5"));
        // Garbage right of the last trusted hop: blamed on that hop.
        assert_eq!(
            t.client_ip(ip("10.1.2.3"), ["1.2.3.4, nonsense"]),
            ip("10.1.2.3")
        );
        assert_eq!(
            t.client_ip(ip("::ffff:10.1.2.3"), ["[2001:db8::1]:443"]),
            ip("2001:db8::1")
        );
        assert_eq!(t.client_ip(ip("10.1.2.3"), ["1.2.3.4:5678"]), ip("1.2.3.4"));
        assert!(TrustedProxies::parse(Some("10.0.0.0/33")).is_err());
        assert!(TrustedProxies::parse(Some("proxy.local")).is_err());
    }

    #[test]
    fn ipv6_networks_are_slash_64() {
        assert_eq!(
            network_of(ip("2001:db8::1")),
            network_of(ip("2001:db8::ffff:2"))
        );
        assert_ne!(
            network_of(ip("2001:db8:0:1::1")),
            network_of(ip("2001:db8::1"))
        );
        assert_eq!(network_of(ip("::ffff:1.2.3.4")), ip("1.2.3.4"));
    }
}
