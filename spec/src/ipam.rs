//! The IPv4 address rules every allocator of dcpp follows: the node's own (`dcpp_runtime`'s
//! network manager) and the leader's cluster-wide one (`dcpp_control::overlay`). Pure
//! functions: what a network's subnet is (compose `ipam`, or the next free block of the
//! daemon's address pools) and which address a container gets in it.
//!
//! - An address pool is `CIDR/SIZE` (docker's `default-address-pools` entry `{base, size}`):
//!   networks get blocks of `/SIZE` cut from `CIDR`, lowest first, skipping any that overlaps
//!   a network or route already there. Without `/SIZE` the block is [`DEFAULT_SUBNET_LEN`]
//!   (the pool itself when it is smaller).
//! - A network's own subnet (`ipam.config[].subnet`) must lie inside one of the pools (the
//!   pools are the address space the operator gave dcpp) and overlap no other network.
//! - Addresses come from `ip_range` (the whole subnet without it), never the network or
//!   broadcast address, the gateway or an `aux_addresses` entry.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Size of each network's block when a pool does not say: a /20 holds 4094 addresses, room for
/// a thousand replicas on one network and a start-first update of all of them, and docker's
/// second default pool (192.168.0.0/16) is cut into /20s too. A /16 each (docker's first pool)
/// would leave only 16 networks in a /12.
pub const DEFAULT_SUBNET_LEN: u8 = 20;

/// The daemon's default address pool: `10.208.0.0/12` in /20s (256 networks). It lies outside
/// docker's (172.17.0.0/12, 192.168.0.0/16) and podman's (10.88.0.0/16, 10.89.0.0/16)
/// defaults and holds the /16 older dcpp took /24s from (10.210.0.0/16), whose networks keep
/// their subnets.
pub const DEFAULT_POOLS: &str = "10.208.0.0/12/20";

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
    /// Whether `other` lies wholly inside.
    pub fn covers(&self, other: &Ipv4Net) -> bool {
        other.len >= self.len && self.contains(other.addr)
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
    /// The first usable address, the gateway unless the network says otherwise.
    pub fn gateway(&self) -> Ipv4Addr {
        self.nth(1).unwrap_or(self.addr)
    }
    /// The last address (broadcast).
    pub fn last(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !mask(self.len))
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
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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

/// Why an address could not be given or a network could not be made as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    /// A pool or subnet string does not parse or does not fit.
    #[error("{0}")]
    Invalid(String),
    /// Every block of every pool is taken.
    #[error(
        "address pool {pools} is exhausted: no free block left for network {network} (every block overlaps a network or a route already there); add a pool with --network-pool or remove unused networks"
    )]
    PoolExhausted {
        network: String,
        /// The pools, comma-separated, as `--network-pool` spells them (`CIDR/SIZE`).
        pools: String,
    },
    /// A network's own subnet lies outside the daemon's pools.
    #[error(
        "subnet {subnet} of network {network} lies outside the daemon's address pools {pools}: choose a subnet inside them or add a pool with --network-pool"
    )]
    OutsidePools {
        network: String,
        subnet: Ipv4Net,
        pools: String,
    },
    /// A network's own subnet overlaps another network's.
    #[error(
        "subnet {subnet} of network {network} overlaps subnet {other_subnet} of network {other}"
    )]
    Overlap {
        network: String,
        subnet: Ipv4Net,
        other: String,
        other_subnet: Ipv4Net,
    },
    /// No address is left in the network's range.
    #[error("no free address left in {range} of network {network}")]
    Full { network: String, range: Ipv4Net },
}

/// One `--network-pool` entry: networks get `/size` blocks of `base`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressPool {
    pub base: Ipv4Net,
    pub size: u8,
}

impl fmt::Display for AddressPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.base, self.size)
    }
}

impl FromStr for AddressPool {
    type Err = IpamError;
    /// `CIDR[/SIZE]`, e.g. `10.240.0.0/12/20`.
    fn from_str(s: &str) -> Result<Self, IpamError> {
        let bad = |why: &str| {
            IpamError::Invalid(format!(
                "invalid address pool {s:?}: {why} (expected CIDR/SIZE such as 10.240.0.0/12/20)"
            ))
        };
        let mut parts = s.trim().splitn(3, '/');
        let (a, l, size) = (parts.next(), parts.next(), parts.next());
        let (Some(a), Some(l)) = (a, l) else {
            return Err(bad("no prefix length"));
        };
        let base: Ipv4Net = format!("{a}/{l}")
            .parse()
            .map_err(|_| bad("not an IPv4 prefix"))?;
        let size = match size {
            Some(z) => z.parse::<u8>().map_err(|_| bad("SIZE is not a number"))?,
            None => DEFAULT_SUBNET_LEN.max(base.len),
        };
        if size < base.len || size > 30 {
            return Err(bad(&format!(
                "SIZE /{size} must lie between the pool's own /{} and /30",
                base.len
            )));
        }
        Ok(AddressPool { base, size })
    }
}

/// `--network-pool` values: each comma-separated entry of each value is one pool, in order.
pub fn parse_pools<S: AsRef<str>>(values: &[S]) -> Result<Vec<AddressPool>, IpamError> {
    let mut out: Vec<AddressPool> = Vec::new();
    for v in values {
        for p in v.as_ref().split(',').filter(|p| !p.trim().is_empty()) {
            out.push(p.parse()?);
        }
    }
    if out.is_empty() {
        return Err(IpamError::Invalid("no address pool given".into()));
    }
    for (i, a) in out.iter().enumerate() {
        if let Some(b) = out[..i].iter().find(|b| b.base.overlaps(&a.base)) {
            return Err(IpamError::Invalid(format!(
                "address pools {b} and {a} overlap"
            )));
        }
    }
    Ok(out)
}

/// The daemon's default pools ([`DEFAULT_POOLS`]).
pub fn default_pools() -> Vec<AddressPool> {
    parse_pools(&[DEFAULT_POOLS]).expect("valid default pools")
}

/// Pools as `--network-pool` spells them, comma-separated.
pub fn pools_string(pools: &[AddressPool]) -> String {
    pools
        .iter()
        .map(AddressPool::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// A network's own addressing, from compose `ipam.config[0]`: the loader checked that the
/// range, gateway and auxiliary addresses lie inside the subnet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamSpec {
    pub subnet: Ipv4Net,
    /// Where container addresses come from (the whole subnet without it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_range: Option<Ipv4Net>,
    /// The bridge's address (the subnet's first host without it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    /// Addresses never handed out (compose's `aux_addresses`, by host name there).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reserved: Vec<Ipv4Addr>,
}

impl IpamSpec {
    /// The gateway the network gets.
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway.unwrap_or_else(|| self.subnet.gateway())
    }

    /// Whether `ip_range`, `gateway` and `reserved` fit the subnet; the message says which not.
    pub fn check(&self) -> Result<(), IpamError> {
        let s = self.subnet;
        if s.prefix_len() > 30 {
            return Err(IpamError::Invalid(format!(
                "subnet {s} is too small (at most /30)"
            )));
        }
        if let Some(r) = self.ip_range
            && !s.covers(&r)
        {
            return Err(IpamError::Invalid(format!(
                "ip_range {r} lies outside subnet {s}"
            )));
        }
        if let Some(g) = self.gateway
            && !host_of(s, g)
        {
            return Err(IpamError::Invalid(format!(
                "gateway {g} is not a host address of subnet {s}"
            )));
        }
        if let Some(a) = self.reserved.iter().find(|a| !s.contains(**a)) {
            return Err(IpamError::Invalid(format!(
                "aux address {a} lies outside subnet {s}"
            )));
        }
        Ok(())
    }
}

/// The addressing one compose `ipam.config` entry asks for; `None` for an entry without a
/// subnet and without anything else (nothing asked). An IPv6 subnet, a range, gateway or aux
/// address that does not parse or lies outside the subnet, or settings without a subnet, are
/// errors.
pub fn spec_of(pool: &crate::IpamPool) -> Result<Option<IpamSpec>, IpamError> {
    let Some(subnet) = &pool.subnet else {
        if pool.ip_range.is_some() || pool.gateway.is_some() || !pool.aux_addresses.is_empty() {
            return Err(IpamError::Invalid(
                "ip_range, gateway and aux_addresses need a subnet".into(),
            ));
        }
        return Ok(None);
    };
    if subnet.contains(':') {
        // The loader refuses IPv6 subnets with its own message.
        return Ok(None);
    }
    // The loader reports a subnet that does not parse at the subnet's own position.
    let Ok(subnet) = subnet.parse::<Ipv4Net>() else {
        return Ok(None);
    };
    let ip_range = pool
        .ip_range
        .as_deref()
        .map(|r| {
            r.parse::<Ipv4Net>().map_err(|_| {
                IpamError::Invalid(format!("invalid ip_range {r:?}: expected an IPv4 prefix"))
            })
        })
        .transpose()?;
    let addr = |what: &str, a: &str| {
        a.parse::<Ipv4Addr>().map_err(|_| {
            IpamError::Invalid(format!("invalid {what} {a:?}: expected an IPv4 address"))
        })
    };
    let gateway = pool
        .gateway
        .as_deref()
        .map(|g| addr("gateway", g))
        .transpose()?;
    let reserved = pool
        .aux_addresses
        .values()
        .map(|a| addr("aux address", a))
        .collect::<Result<Vec<_>, _>>()?;
    let spec = IpamSpec {
        subnet,
        ip_range,
        gateway,
        reserved,
    };
    spec.check()?;
    Ok(Some(spec))
}

impl crate::Network {
    /// The network's own addressing (its first `ipam.config` entry; the loader refuses more),
    /// or `None` when it asks for none and gets a block of the daemon's pools.
    pub fn ipam_spec(&self) -> Result<Option<IpamSpec>, IpamError> {
        match self.ipam.as_ref().and_then(|i| i.config.first()) {
            Some(p) => spec_of(p),
            None => Ok(None),
        }
    }
}

/// Whether `ip` is neither the network nor the broadcast address of `subnet` and lies in it.
pub fn host_of(subnet: Ipv4Net, ip: Ipv4Addr) -> bool {
    subnet.contains(ip) && ip != subnet.addr() && ip != subnet.last()
}

/// The subnet a new network gets: its own (`ipam`), which must lie inside a pool and overlap
/// none of `taken` (name and subnet of every network already there; routes of the host as
/// unnamed entries), or the lowest free block of the first pool with one.
pub fn choose_subnet(
    network: &str,
    own: Option<&IpamSpec>,
    pools: &[AddressPool],
    taken: &[(String, Ipv4Net)],
) -> Result<Ipv4Net, IpamError> {
    if let Some(spec) = own {
        spec.check()?;
        let s = spec.subnet;
        if !pools.iter().any(|p| p.base.covers(&s)) {
            return Err(IpamError::OutsidePools {
                network: network.to_owned(),
                subnet: s,
                pools: pools_string(pools),
            });
        }
        if let Some((other, o)) = taken.iter().find(|(_, t)| t.overlaps(&s)) {
            return Err(IpamError::Overlap {
                network: network.to_owned(),
                subnet: s,
                other: if other.is_empty() {
                    "(a route of this host)".into()
                } else {
                    other.clone()
                },
                other_subnet: *o,
            });
        }
        return Ok(s);
    }
    for p in pools {
        let count = 1u64 << (p.size - p.base.len);
        if let Some(s) = (0..count)
            .filter_map(|i| p.base.subnet(p.size, i))
            .find(|s| !taken.iter().any(|(_, t)| t.overlaps(s)))
        {
            return Ok(s);
        }
    }
    Err(IpamError::PoolExhausted {
        network: network.to_owned(),
        pools: pools_string(pools),
    })
}

/// Where a network's container addresses come from and which are never given.
#[derive(Debug, Clone, Copy)]
pub struct AddressRange<'a> {
    pub subnet: Ipv4Net,
    pub ip_range: Option<Ipv4Net>,
    pub gateway: Ipv4Addr,
    pub reserved: &'a [Ipv4Addr],
}

impl AddressRange<'_> {
    /// A network without own settings: the whole subnet, gateway at its first host.
    pub fn whole(subnet: Ipv4Net) -> AddressRange<'static> {
        AddressRange {
            subnet,
            ip_range: None,
            gateway: subnet.gateway(),
            reserved: &[],
        }
    }

    /// Whether `ip` may be given to a container (also when asked for, as `ipv4_address`:
    /// inside the subnet, not the gateway or a reserved one; the range only limits picks).
    pub fn usable(&self, ip: Ipv4Addr) -> bool {
        host_of(self.subnet, ip) && ip != self.gateway && !self.reserved.contains(&ip)
    }

    /// The lowest address of the range that is usable and not in `used`.
    pub fn pick(&self, network: &str, used: &BTreeSet<Ipv4Addr>) -> Result<Ipv4Addr, IpamError> {
        let r = self.ip_range.unwrap_or(self.subnet);
        // The gateway is the first host by default: starting after it keeps the addresses
        // older dcpp gave (.2 upwards) for the same order of containers.
        (0..r.size())
            .filter_map(|n| r.nth(n))
            .find(|ip| self.usable(*ip) && !used.contains(ip))
            .ok_or_else(|| IpamError::Full {
                network: network.to_owned(),
                range: r,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }
    fn taken(list: &[(&str, &str)]) -> Vec<(String, Ipv4Net)> {
        list.iter().map(|(n, s)| (n.to_string(), net(s))).collect()
    }

    #[test]
    fn parse_clears_host_bits_and_rejects_garbage() {
        assert_eq!(net("10.89.3.7/16").to_string(), "10.89.0.0/16");
        assert!("10.0.0.0".parse::<Ipv4Net>().is_err());
        assert!("10.0.0.0/33".parse::<Ipv4Net>().is_err());
        assert!("x/8".parse::<Ipv4Net>().is_err());
        assert!(net("10.0.0.0/8").covers(&net("10.1.0.0/16")));
        assert!(!net("10.1.0.0/16").covers(&net("10.0.0.0/8")));
        assert_eq!(net("10.1.0.0/16").last(), ip("10.1.255.255"));
    }

    #[test]
    fn pools_parse_with_and_without_a_size_and_refuse_bad_ones() {
        let p = parse_pools(&["10.240.0.0/12/20,10.96.0.0/16/24", "192.168.0.0/16"]).unwrap();
        assert_eq!(
            pools_string(&p),
            "10.240.0.0/12/20,10.96.0.0/16/24,192.168.0.0/16/20"
        );
        assert_eq!(parse_pools(&["10.9.0.0/24"]).unwrap()[0].size, 24);
        assert_eq!(default_pools()[0].to_string(), DEFAULT_POOLS);
        for bad in [
            "10.0.0.0/16/8",
            "10.0.0.0/16/31",
            "10.0.0.0",
            "10.0.0.0/16/x",
            "fd00::/8",
        ] {
            let e = parse_pools(&[bad]).unwrap_err().to_string();
            assert!(e.contains(bad), "{bad}: {e}");
        }
        let e = parse_pools(&["10.0.0.0/8/24,10.1.0.0/16/24"]).unwrap_err();
        assert!(e.to_string().contains("overlap"), "{e}");
        assert!(parse_pools::<&str>(&[]).is_err());
    }

    #[test]
    fn blocks_come_from_the_pools_in_order_skipping_taken_ones() {
        let pools = parse_pools(&["10.89.0.0/23/24,10.90.0.0/16/20"]).unwrap();
        assert_eq!(
            choose_subnet("a", None, &pools, &[]),
            Ok(net("10.89.0.0/24"))
        );
        let t = taken(&[("a", "10.89.0.0/24"), ("", "10.89.1.128/25")]);
        // The first pool is full: the second's first /20.
        assert_eq!(
            choose_subnet("b", None, &pools, &t),
            Ok(net("10.90.0.0/20"))
        );
        // An old /24 inside a block makes the block taken.
        let t = taken(&[("a", "10.89.0.0/23"), ("old", "10.90.0.0/24")]);
        assert_eq!(
            choose_subnet("c", None, &pools, &t),
            Ok(net("10.90.16.0/20"))
        );
        let t = taken(&[("a", "10.89.0.0/23"), ("", "10.90.0.0/16")]);
        let e = choose_subnet("big_x", None, &pools, &t).unwrap_err();
        assert_eq!(
            e.to_string(),
            "address pool 10.89.0.0/23/24,10.90.0.0/16/20 is exhausted: no free block left for \
             network big_x (every block overlaps a network or a route already there); add a \
             pool with --network-pool or remove unused networks"
        );
    }

    #[test]
    fn an_own_subnet_must_lie_in_a_pool_and_overlap_no_network() {
        let pools = parse_pools(&["10.240.0.0/12/20"]).unwrap();
        let spec = |s: &str| IpamSpec {
            subnet: net(s),
            ip_range: None,
            gateway: None,
            reserved: vec![],
        };
        let t = taken(&[("s_a", "10.240.0.0/20")]);
        assert_eq!(
            choose_subnet("s_b", Some(&spec("10.243.0.0/22")), &pools, &t),
            Ok(net("10.243.0.0/22"))
        );
        let e = choose_subnet("s_b", Some(&spec("10.240.8.0/24")), &pools, &t).unwrap_err();
        assert_eq!(
            e.to_string(),
            "subnet 10.240.8.0/24 of network s_b overlaps subnet 10.240.0.0/20 of network s_a"
        );
        let e = choose_subnet("s_b", Some(&spec("192.168.7.0/24")), &pools, &t).unwrap_err();
        assert!(matches!(e, IpamError::OutsidePools { .. }), "{e}");
        assert!(e.to_string().contains("10.240.0.0/12/20"), "{e}");
        let e = choose_subnet(
            "s_b",
            Some(&spec("10.250.0.0/24")),
            &pools,
            &taken(&[("", "10.250.0.0/16")]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("a route of this host"), "{e}");
    }

    #[test]
    fn own_settings_are_checked_against_the_subnet() {
        let mut s = IpamSpec {
            subnet: net("10.9.0.0/24"),
            ip_range: Some(net("10.9.1.0/25")),
            gateway: None,
            reserved: vec![],
        };
        assert!(
            s.check()
                .unwrap_err()
                .to_string()
                .contains("ip_range 10.9.1.0/25")
        );
        s.ip_range = Some(net("10.9.0.128/25"));
        s.gateway = Some(ip("10.9.0.255"));
        assert!(s.check().unwrap_err().to_string().contains("gateway"));
        s.gateway = Some(ip("10.9.0.254"));
        s.reserved = vec![ip("10.9.2.1")];
        assert!(
            s.check()
                .unwrap_err()
                .to_string()
                .contains("aux address 10.9.2.1")
        );
        s.reserved = vec![ip("10.9.0.130")];
        assert_eq!(s.check(), Ok(()));
        s.subnet = net("10.9.0.0/31");
        s.ip_range = None;
        s.gateway = None;
        s.reserved = vec![];
        assert!(s.check().is_err());
    }

    #[test]
    fn addresses_come_from_the_range_and_skip_gateway_reserved_and_used() {
        let reserved = [ip("10.9.0.130")];
        let r = AddressRange {
            subnet: net("10.9.0.0/24"),
            ip_range: Some(net("10.9.0.128/30")),
            gateway: ip("10.9.0.129"),
            reserved: &reserved,
        };
        let mut used = BTreeSet::new();
        assert_eq!(r.pick("n", &used), Ok(ip("10.9.0.128")));
        used.insert(ip("10.9.0.128"));
        assert_eq!(r.pick("n", &used), Ok(ip("10.9.0.131")));
        used.insert(ip("10.9.0.131"));
        assert_eq!(
            r.pick("n", &used).unwrap_err().to_string(),
            "no free address left in 10.9.0.128/30 of network n"
        );
        // Outside the range but in the subnet: fine when asked for.
        assert!(r.usable(ip("10.9.0.5")));
        assert!(!r.usable(ip("10.9.0.129")) && !r.usable(ip("10.9.0.130")));
        assert!(!r.usable(ip("10.9.0.255")) && !r.usable(ip("10.9.0.0")));
        // Without own settings: .2 upwards, as before.
        let w = AddressRange::whole(net("10.9.0.0/30"));
        assert_eq!(w.pick("n", &BTreeSet::new()), Ok(ip("10.9.0.2")));
        assert!(w.pick("n", &BTreeSet::from([ip("10.9.0.2")])).is_err());
        // A /20 holds more than a thousand containers.
        let big = AddressRange::whole(net("10.208.0.0/20"));
        let mut used = BTreeSet::new();
        for _ in 0..1500 {
            used.insert(big.pick("n", &used).unwrap());
        }
        assert_eq!(used.len(), 1500);
    }
}
