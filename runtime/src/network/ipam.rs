//! IPv4 prefixes, address pools and the allocation rules, shared with the leader's
//! cluster-wide allocator: they live in [`dcpp_spec::ipam`] so that both follow one set.
//! Persistence lives in `state.rs`.

pub use dcpp_spec::ipam::{
    AddressPool, AddressRange, DEFAULT_POOLS, DEFAULT_SUBNET_LEN, IpamError, IpamSpec, Ipv4Net,
    ParseNetError, choose_subnet, default_pools, parse_pools, pools_string,
};
