//! Which clients may tell the gateway the scheme they were reached with: proxies in front of
//! it, listed by address range (config-network `trusted-proxies`).

use std::net::IpAddr;

/// A set of address ranges (`10.0.0.0/8`, `::1/128`, `127.0.0.1`); empty trusts nobody.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<(IpAddr, u8)>);

/// A range that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid address range {0:?}: want an IP address, optionally with /prefix-length")]
pub struct BadRange(pub String);

impl TrustedProxies {
    /// Parses a comma- or space-separated list of ranges.
    pub fn parse(list: &str) -> Result<Self, BadRange> {
        let mut ranges = Vec::new();
        for item in list
            .split([',', ' ', '\n'])
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            let bad = || BadRange(item.to_string());
            let (addr, prefix) = match item.split_once('/') {
                Some((a, p)) => (a, Some(p.parse::<u8>().map_err(|_| bad())?)),
                None => (item, None),
            };
            let addr: IpAddr = addr.parse().map_err(|_| bad())?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let prefix = prefix.unwrap_or(max);
            if prefix > max {
                return Err(bad());
            }
            ranges.push((addr, prefix));
        }
        Ok(TrustedProxies(ranges))
    }

    /// Whether `ip` (IPv4-mapped IPv6 as IPv4) is in one of the ranges.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        self.0.iter().any(|&(net, prefix)| match (net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => same_prefix(&n.octets(), &a.octets(), prefix),
            (IpAddr::V6(n), IpAddr::V6(a)) => same_prefix(&n.octets(), &a.octets(), prefix),
            _ => false,
        })
    }
}

fn same_prefix(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let (whole, bits) = (usize::from(prefix / 8), prefix % 8);
    if a[..whole] != b[..whole] {
        return false;
    }
    bits == 0 || (a[whole] ^ b[whole]) >> (8 - bits) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_match() {
        let t = TrustedProxies::parse("10.0.0.0/8, 192.168.1.7 ::1/128,fd00::/12").unwrap();
        for yes in [
            "10.1.2.3",
            "192.168.1.7",
            "::1",
            "fd0f::1",
            "::ffff:10.9.9.9",
        ] {
            assert!(t.contains(yes.parse().unwrap()), "{yes}");
        }
        for no in ["11.0.0.1", "192.168.1.8", "::2", "fd10::1", "127.0.0.1"] {
            assert!(!t.contains(no.parse().unwrap()), "{no}");
        }
        assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
        assert!(TrustedProxies::parse("nope").is_err());
        assert!(!TrustedProxies::default().contains("127.0.0.1".parse().unwrap()));
    }
}
