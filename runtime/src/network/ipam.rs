//! IPv4 address arithmetic and allocation: carving network subnets out of the daemon's pool and
//! container addresses out of a subnet. Pure functions; persistence lives in `state.rs`.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An IPv4 prefix such as `10.89.0.0/24`, always stored with the host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv4Net {
    addr: Ipv4Addr,
    len: u8,
}

impl Ipv4Net {
    /// Builds a prefix, clearing host bits; `None` when `len > 32`.
    pub fn new(addr: Ipv4Addr, len: u8) -> Option<Self> {
        (len <= 32).then(|| Ipv4Net {
            addr: Ipv4Addr::from(u32::from(addr) & mask(len)),
            len,
        })
    }
    /// Network address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }
    /// Prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }
    /// Number of addresses covered.
    pub fn size(&self) -> u64 {
        1u64 << (32 - self.len)
    }
    /// Whether `ip` lies inside.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.len) == u32::from(self.addr)
    }
    /// Whether the two prefixes share any address.
    pub fn overlaps(&self, other: &Ipv4Net) -> bool {
        let l = self.len.min(other.len);
        u32::from(self.addr) & mask(l) == u32::from(other.addr) & mask(l)
    }
    /// The `n`-th address (0 = network address); `None` past the end.
    pub fn nth(&self, n: u64) -> Option<Ipv4Addr> {
        (n < self.size()).then(|| Ipv4Addr::from(u32::from(self.addr) + n as u32))
    }
    /// The first usable address, which dcpp gives to the bridge as gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        self.nth(1).unwrap_or(self.addr)
    }
    /// The `i`-th sub-prefix of length `len`, if it fits.
    fn subnet(&self, len: u8, i: u64) -> Option<Ipv4Net> {
        if len < self.len || len > 32 || i >= 1u64 << (len - self.len) {
            return None;
        }
        Ipv4Net::new(
            Ipv4Addr::from(u32::from(self.addr) + (i << (32 - len)) as u32),
            len,
        )
    }
}

fn mask(len: u8) -> u32 {
    if len == 0 { 0 } else { u32::MAX << (32 - len) }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// Why a prefix string was rejected.
#[derive(Debug, thiserror::Error)]
#[error("invalid IPv4 prefix {0:?}: expected ADDRESS/LENGTH such as 10.89.0.0/16")]
pub struct ParseNetError(pub String);

impl FromStr for Ipv4Net {
    type Err = ParseNetError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseNetError(s.to_owned());
        let (a, l) = s.split_once('/').ok_or_else(err)?;
        let addr: Ipv4Addr = a.parse().map_err(|_| err())?;
        let len: u8 = l.parse().map_err(|_| err())?;
        Ipv4Net::new(addr, len).ok_or_else(err)
    }
}

impl Serialize for Ipv4Net {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ipv4Net {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Picks the first `len`-sized subnet of `pool` that overlaps none of `taken` (subnets of existing
/// networks and routes already present on the host).
pub fn pick_subnet(pool: Ipv4Net, len: u8, taken: &[Ipv4Net]) -> Option<Ipv4Net> {
    let count = 1u64 << len.checked_sub(pool.len)?;
    (0..count)
        .filter_map(|i| pool.subnet(len, i))
        .find(|s| !taken.iter().any(|t| t.overlaps(s)))
}

/// Picks the lowest free host address of `subnet`, skipping the network address, the gateway
/// and the broadcast address.
pub fn pick_address(subnet: Ipv4Net, used: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let last = subnet.size().checked_sub(1)?;
    (2..last)
        .filter_map(|n| subnet.nth(n))
        .find(|ip| !used.contains(ip))
}

/// Whether `ip` may be given to a container of `subnet` (`ipv4_address` of compose).
pub fn usable(subnet: Ipv4Net, ip: Ipv4Addr) -> bool {
    let n = u64::from(u32::from(ip).wrapping_sub(u32::from(subnet.addr())));
    subnet.contains(ip) && n >= 2 && n + 1 < subnet.size()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn parse_clears_host_bits_and_rejects_garbage() {
        assert_eq!(net("10.89.3.7/16").to_string(), "10.89.0.0/16");
        assert!("10.0.0.0".parse::<Ipv4Net>().is_err());
        assert!("10.0.0.0/33".parse::<Ipv4Net>().is_err());
        assert!("x/8".parse::<Ipv4Net>().is_err());
    }

    #[test]
    fn subnets_skip_taken_ranges() {
        let pool = net("10.89.0.0/16");
        assert_eq!(pick_subnet(pool, 24, &[]), Some(net("10.89.0.0/24")));
        let taken = [net("10.89.0.0/24"), net("10.89.1.128/25")];
        assert_eq!(pick_subnet(pool, 24, &taken), Some(net("10.89.2.0/24")));
        // A host route covering the whole pool leaves nothing.
        assert_eq!(pick_subnet(pool, 24, &[net("10.0.0.0/8")]), None);
        assert_eq!(pick_subnet(net("10.89.0.0/24"), 16, &[]), None);
    }

    #[test]
    fn addresses_skip_network_gateway_broadcast_and_used() {
        let s = net("10.89.0.0/30");
        assert_eq!(
            pick_address(s, &BTreeSet::new()),
            Some("10.89.0.2".parse().unwrap())
        );
        let used = BTreeSet::from(["10.89.0.2".parse().unwrap()]);
        assert_eq!(pick_address(s, &used), None);
        assert!(usable(net("10.89.0.0/24"), "10.89.0.254".parse().unwrap()));
        assert!(!usable(net("10.89.0.0/24"), "10.89.0.255".parse().unwrap()));
        assert!(!usable(net("10.89.0.0/24"), "10.89.0.1".parse().unwrap()));
        assert!(!usable(net("10.89.0.0/24"), "10.89.1.5".parse().unwrap()));
    }
}
