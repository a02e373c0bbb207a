//! Kernel side of networking through rtnetlink: bridges, veth pairs, addresses, routes.
//!
//! Every operation runs on a fresh `std::thread` with its own current-thread tokio runtime:
//! the public API stays synchronous (callable from the container layer's hook and from async
//! code via `spawn_blocking`), and the thread that configures a container's side can `setns`
//! into the container's network namespace without affecting any other thread. A netlink socket
//! is bound to the namespace it was created in, so the host-side connection is opened before the
//! `setns` and the container-side one after it (rtnetlink#68).

use std::fs::File;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

use futures::TryStreamExt;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkMessage};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage,
};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute};
use rtnetlink::{
    Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, LinkVxlan, RouteMessageBuilder,
};

use super::Error;
use super::ipam::Ipv4Net;

const EEXIST: i32 = libc::EEXIST;
const ENODEV: i32 = libc::ENODEV;

fn nl_err(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Error {
    let what = what.into();
    move |e| Error::Netlink {
        what,
        msg: e.to_string(),
    }
}

fn errno_of(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

/// Runs `f` on a dedicated thread with a current-thread runtime. When `netns` is given, the
/// thread first opens `host` handle in the caller's namespace and then enters `netns` before
/// opening the second handle; `f` receives `(host, container)`.
fn run<T, F, Fut>(netns: Option<File>, f: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: FnOnce(Handle, Option<Handle>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, Error>>,
{
    std::thread::Builder::new()
        .name("dcpp-netlink".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Error::Io {
                    what: "building a netlink runtime".into(),
                    source: e,
                })?;
            rt.block_on(async move {
                let (conn, host, _) = rtnetlink::new_connection().map_err(|e| Error::Io {
                    what: "opening a netlink socket".into(),
                    source: e,
                })?;
                tokio::spawn(conn);
                let inner = match netns {
                    None => None,
                    Some(ns) => {
                        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(
                            |e| Error::Io {
                                what: "entering the container's network namespace".into(),
                                source: e.into(),
                            },
                        )?;
                        let (conn, h, _) = rtnetlink::new_connection().map_err(|e| Error::Io {
                            what: "opening a netlink socket in the container".into(),
                            source: e,
                        })?;
                        tokio::spawn(conn);
                        Some(h)
                    }
                };
                f(host, inner).await
            })
        })
        .map_err(|e| Error::Io {
            what: "spawning a netlink thread".into(),
            source: e,
        })?
        .join()
        .map_err(|_| Error::Netlink {
            what: "netlink thread".into(),
            msg: "panicked".into(),
        })?
}

/// A link as the kernel reports it.
#[derive(Debug, Clone)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
}

fn to_link(m: &LinkMessage) -> Link {
    let mut l = Link {
        index: m.header.index,
        name: String::new(),
        mac: None,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::Address(b) if b.len() == 6 => {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(b);
                l.mac = Some(mac);
            }
            _ => {}
        }
    }
    l
}

async fn links(h: &Handle) -> Result<Vec<Link>, Error> {
    let msgs: Vec<LinkMessage> = h
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(nl_err("listing links"))?;
    Ok(msgs.iter().map(to_link).collect())
}

async fn link_by_name(h: &Handle, name: &str) -> Result<Option<Link>, Error> {
    // A direct lookup, not a dump: dumps grow with the number of containers on the machine.
    let mut stream = h.link().get().match_name(name).execute();
    match stream.try_next().await {
        Ok(m) => Ok(m.as_ref().map(to_link)),
        Err(e) if errno_of(&e) == Some(ENODEV) => Ok(None),
        Err(e) => Err(nl_err(format!("looking up {name}"))(e)),
    }
}

/// All links of the caller's network namespace.
pub fn list_links() -> Result<Vec<Link>, Error> {
    run(None, |h, _| async move { links(&h).await })
}

/// The name of the interface that holds address `ip`, if any does.
pub fn iface_with_addr(ip: Ipv4Addr) -> Result<Option<String>, Error> {
    use rtnetlink::packet_route::address::AddressAttribute;
    run(None, move |h, _| async move {
        let msgs: Vec<_> = h
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(nl_err("listing addresses"))?;
        let Some(index) = msgs
            .iter()
            .find(|m| {
                m.attributes.iter().any(|a| {
                    matches!(a, AddressAttribute::Address(IpAddr::V4(a))
                        | AddressAttribute::Local(IpAddr::V4(a)) if *a == ip)
                })
            })
            .map(|m| m.header.index)
        else {
            return Ok(None);
        };
        Ok(links(&h)
            .await?
            .into_iter()
            .find(|l| l.index == index)
            .map(|l| l.name))
    })
}

/// Whether the kernel forwards IPv4 packets that enter through `ifname`.
pub fn forwarding(ifname: &str) -> Result<bool, Error> {
    let path = format!("/proc/sys/net/ipv4/conf/{ifname}/forwarding");
    std::fs::read_to_string(&path)
        .map(|v| v.trim() != "0")
        .map_err(|e| Error::Io {
            what: format!("reading {path}"),
            source: e,
        })
}

/// Turns forwarding of packets entering through `ifname` on or off.
pub fn set_forwarding(ifname: &str, on: bool) -> Result<(), Error> {
    write_sysctl(ifname, "forwarding", if on { "1" } else { "0" })
}

/// Destination prefixes of all IPv4 routes of the caller's namespace except default routes, so
/// a new subnet can avoid whatever the host already routes.
pub fn host_routes() -> Result<Vec<Ipv4Net>, Error> {
    run(None, |h, _| async move {
        let msgs: Vec<_> = h
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(nl_err("listing routes"))?;
        let mut out = Vec::new();
        for m in msgs {
            let len = m.header.destination_prefix_length;
            if len == 0 {
                continue;
            }
            for a in &m.attributes {
                if let RouteAttribute::Destination(RouteAddress::Inet(ip)) = a {
                    out.extend(Ipv4Net::new(*ip, len));
                }
            }
        }
        Ok(out)
    })
}

fn write_sysctl(ifname: &str, key: &str, value: &str) -> Result<(), Error> {
    let path = format!("/proc/sys/net/ipv4/conf/{ifname}/{key}");
    std::fs::write(&path, value).map_err(|e| Error::Io {
        what: format!("writing {path}"),
        source: e,
    })
}

/// Creates (or adopts, after a crash) bridge `name` with `gateway/prefix`, up. `forwarding`
/// lets the kernel route packets that enter through this bridge (needed for outbound traffic
/// and, with nftables' help, kept from reaching other dcpp networks). `route_localnet` lets
/// DNAT-ed connections from 127.0.0.1 leave through the bridge, which published ports on the
/// loopback address need.
pub fn ensure_bridge(
    name: &str,
    gateway: Ipv4Addr,
    prefix: u8,
    forwarding: bool,
) -> Result<(), Error> {
    let name = name.to_owned();
    run(None, move |h, _| async move {
        if let Err(e) = h.link().add(LinkBridge::new(&name).build()).execute().await
            && errno_of(&e) != Some(EEXIST)
        {
            return Err(nl_err(format!("creating bridge {name}"))(e));
        }
        let link = link_by_name(&h, &name)
            .await?
            .ok_or_else(|| Error::Netlink {
                what: format!("bridge {name}"),
                msg: "vanished after creation".into(),
            })?;
        if let Err(e) = h
            .address()
            .add(link.index, IpAddr::V4(gateway), prefix)
            .execute()
            .await
            && errno_of(&e) != Some(EEXIST)
        {
            return Err(nl_err(format!("adding {gateway}/{prefix} to {name}"))(e));
        }
        write_sysctl(&name, "route_localnet", "1")?;
        write_sysctl(&name, "forwarding", if forwarding { "1" } else { "0" })?;
        // A bridge without its own address takes the lowest one of its ports, so it would
        // change as containers come and go, and every container's ARP entry for the gateway
        // (its DNS server and route out) would go stale for seconds.
        h.link()
            .set(
                LinkUnspec::new_with_index(link.index)
                    .address(mac_of(gateway).to_vec())
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(nl_err(format!("setting {name} up")))
    })
}

/// Deletes link `name`; a missing link is not an error (deleting twice is idempotent).
pub fn delete_link(name: &str) -> Result<(), Error> {
    let name = name.to_owned();
    run(None, move |h, _| async move {
        let Some(link) = link_by_name(&h, &name).await? else {
            return Ok(());
        };
        match h.link().del(link.index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno_of(&e) == Some(ENODEV) => Ok(()),
            Err(e) => Err(nl_err(format!("deleting {name}"))(e)),
        }
    })
}

/// The MAC address of an interface holding `ip`: locally administered, unicast, unique as long
/// as the address is.
pub fn mac_of(ip: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = ip.octets();
    [0x02, 0x42, a, b, c, d]
}

/// What [`attach_veth`] needs.
#[derive(Debug, Clone)]
pub struct VethPlan {
    pub bridge: String,
    pub host_ifname: String,
    pub ip: Ipv4Addr,
    pub prefix: u8,
    /// Default route via this address, unless the network is internal or the container already
    /// has a default route through an earlier network.
    pub default_gw: Option<Ipv4Addr>,
    /// MTU of both ends (the kernel's default when unset).
    pub mtu: Option<u32>,
}

/// What came out of [`attach_veth`].
#[derive(Debug, Clone)]
pub struct VethResult {
    pub ifname: String,
    pub mac: [u8; 6],
}

/// Creates a veth pair whose host end is born plugged into the bridge and up, and whose peer is
/// born inside `netns` as the first free `ethN` (creating it there is much cheaper than moving
/// it, which waits for an RCU grace period); then gives the peer `ip/prefix`, brings it and `lo`
/// up and adds the default route.
pub fn attach_veth(netns: File, plan: VethPlan) -> Result<VethResult, Error> {
    let fd = netns.as_raw_fd();
    let ns_for_thread = netns.try_clone().map_err(|e| Error::Io {
        what: "duplicating the netns fd".into(),
        source: e,
    })?;
    let p = plan.clone();
    let res = run(Some(ns_for_thread), move |host, inner| async move {
        let inner = inner.expect("run() opens the container handle when given a netns");
        let bridge = link_by_name(&host, &p.bridge)
            .await?
            .ok_or_else(|| Error::Netlink {
                what: format!("bridge {}", p.bridge),
                msg: "does not exist".into(),
            })?;
        let existing = links(&inner).await?;
        let ifname = (0..)
            .map(|i| format!("eth{i}"))
            .find(|n| !existing.iter().any(|l| &l.name == n))
            .expect("an unused ethN exists");
        // The MAC follows the address (as docker's 02:42:…), so a replica that gets the address
        // of one just stopped is reached by its peers without waiting for their ARP entries
        // to expire.
        let mut peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(ifname.clone())
            .address(mac_of(p.ip).to_vec())
            .setns_by_fd(fd);
        let mut host_end = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(p.host_ifname.clone())
            .controller(bridge.index)
            .up();
        if let Some(mtu) = p.mtu {
            peer = peer.mtu(mtu);
            host_end = host_end.mtu(mtu);
        }
        let msg = host_end
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())))
            .build();
        host.link()
            .add(msg)
            .execute()
            .await
            .map_err(nl_err(format!(
                "creating veth {} in {}",
                p.host_ifname, p.bridge
            )))?;
        let peer = link_by_name(&inner, &ifname)
            .await?
            .ok_or_else(|| Error::Netlink {
                what: ifname.clone(),
                msg: "not found in the container after creation".into(),
            })?;
        inner
            .address()
            .add(peer.index, IpAddr::V4(p.ip), p.prefix)
            .execute()
            .await
            .map_err(nl_err(format!("adding {}/{} to {ifname}", p.ip, p.prefix)))?;
        inner
            .link()
            .set(LinkUnspec::new_with_index(peer.index).up().build())
            .execute()
            .await
            .map_err(nl_err(format!("setting {ifname} up")))?;
        if let Some(lo) = existing.iter().find(|l| l.name == "lo") {
            inner
                .link()
                .set(LinkUnspec::new_with_index(lo.index).up().build())
                .execute()
                .await
                .map_err(nl_err("setting lo up"))?;
        }
        if let Some(gw) = p.default_gw {
            let route = RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(gw)
                .output_interface(peer.index)
                .build();
            if let Err(e) = inner.route().add(route).execute().await
                && errno_of(&e) != Some(EEXIST)
            {
                return Err(nl_err(format!("adding the default route via {gw}"))(e));
            }
        }
        Ok(VethResult {
            ifname,
            mac: peer.mac.unwrap_or_default(),
        })
    });
    drop(netns);
    if res.is_err() {
        // A half-made pair must not outlive the failure; deleting the host end removes both.
        let _ = delete_link(&plan.host_ifname);
    }
    res
}

/// One forwarding-plus-neighbour entry of a VXLAN device: the container at `ip` (whose MAC
/// follows its address, see [`mac_of`]) sits behind the node at `underlay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct OverlayEntry {
    pub ip: Ipv4Addr,
    pub underlay: Ipv4Addr,
}

/// What [`ensure_vxlan`] makes.
#[derive(Debug, Clone)]
pub struct VxlanPlan {
    pub name: String,
    pub bridge: String,
    pub vni: u32,
    pub local: Ipv4Addr,
    pub port: u16,
    pub mtu: u32,
}

/// Creates (or adopts) the VXLAN device of a network and plugs it into the network's bridge:
/// no learning and no multicast group, so the kernel never floods to find a container; it
/// answers ARP itself from the neighbour entries ([`program_overlay`]) instead (`proxy`).
pub fn ensure_vxlan(plan: VxlanPlan) -> Result<(), Error> {
    run(None, move |h, _| async move {
        let bridge = link_by_name(&h, &plan.bridge)
            .await?
            .ok_or_else(|| Error::Netlink {
                what: format!("bridge {}", plan.bridge),
                msg: "does not exist".into(),
            })?;
        if link_by_name(&h, &plan.name).await?.is_none() {
            let msg = LinkVxlan::new(&plan.name, plan.vni)
                .local(plan.local)
                .port(plan.port)
                .learning(false)
                .proxy(true)
                .ttl(64)
                .mtu(plan.mtu)
                .controller(bridge.index)
                .up()
                .build();
            if let Err(e) = h.link().add(msg).execute().await
                && errno_of(&e) != Some(EEXIST)
            {
                return Err(nl_err(format!(
                    "creating VXLAN {} (vni {}, local {}, port {})",
                    plan.name, plan.vni, plan.local, plan.port
                ))(e));
            }
        }
        Ok(())
    })
}

/// Adds `add` to and removes `del` from the VXLAN device `dev`: for each container, a
/// forwarding entry (its MAC to its node) and a neighbour entry (its address to its MAC), both
/// permanent. A missing entry on removal is not an error.
pub fn program_overlay(
    dev: &str,
    add: Vec<OverlayEntry>,
    del: Vec<OverlayEntry>,
) -> Result<(), Error> {
    let dev = dev.to_owned();
    run(None, move |h, _| async move {
        let link = link_by_name(&h, &dev)
            .await?
            .ok_or_else(|| Error::Netlink {
                what: format!("VXLAN {dev}"),
                msg: "does not exist".into(),
            })?;
        for e in &del {
            let mac = mac_of(e.ip);
            let mut fdb = NeighbourMessage::default();
            fdb.header.family = AddressFamily::Bridge;
            fdb.header.ifindex = link.index;
            fdb.header.flags = NeighbourFlags::Own;
            fdb.attributes
                .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
            fdb.attributes
                .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                    e.underlay,
                )));
            let mut arp = NeighbourMessage::default();
            arp.header.family = AddressFamily::Inet;
            arp.header.ifindex = link.index;
            arp.attributes
                .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                    e.ip,
                )));
            for (what, m) in [("forwarding", fdb), ("neighbour", arp)] {
                if let Err(err) = h.neighbours().del(m).execute().await
                    && !matches!(errno_of(&err), Some(libc::ENOENT) | Some(libc::ESRCH))
                {
                    return Err(nl_err(format!(
                        "removing the {what} entry of {} on {dev}",
                        e.ip
                    ))(err));
                }
            }
        }
        for e in &add {
            let mac = mac_of(e.ip);
            h.neighbours()
                .add_bridge(link.index, &mac)
                .flags(NeighbourFlags::Own)
                .destination(IpAddr::V4(e.underlay))
                .replace()
                .execute()
                .await
                .map_err(nl_err(format!(
                    "adding the forwarding entry of {} via {} on {dev}",
                    e.ip, e.underlay
                )))?;
            h.neighbours()
                .add(link.index, IpAddr::V4(e.ip))
                .link_layer_address(&mac)
                .replace()
                .execute()
                .await
                .map_err(nl_err(format!(
                    "adding the neighbour entry of {} on {dev}",
                    e.ip
                )))?;
        }
        Ok(())
    })
}
