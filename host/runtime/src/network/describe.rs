//! From what a namespace's netlink dumps say to what the guest is told: the CNI interfaces (name,
//! MAC, MTU, global addresses) and the routes the kernel did not add by itself. Pure functions of
//! the dumped messages, so every rule is unit-tested without a namespace.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use coffer_agent_protocol::v1 as pb;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkLayerType, LinkMessage};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteType,
};

use super::{MacAddr, NetworkError, TAP_SUFFIX};

/// Most interfaces the agent accepts.
pub const MAX_INTERFACES: usize = 8;
/// Most addresses per interface the agent accepts.
pub const MAX_ADDRESSES: usize = 16;
/// Most routes the agent accepts.
pub const MAX_ROUTES: usize = 64;

/// A CNI interface as found in the namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundInterface {
    /// Its index in the namespace.
    pub index: u32,
    /// Its name (the guest's interface gets the same).
    pub name: String,
    /// Its MAC (the guest's NIC gets the same).
    pub mac: MacAddr,
    /// Its MTU.
    pub mtu: u32,
    /// Global addresses with their prefix length, `10.1.0.5/24`.
    pub addresses: Vec<String>,
}

/// The namespace's network as the guest will have it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The CNI interfaces, in index order.
    pub interfaces: Vec<FoundInterface>,
    /// The routes beyond the kernel's own.
    pub routes: Vec<pb::NetworkRoute>,
}

impl Found {
    /// The description sent in `CreateSandbox` (no DNS or hosts: those are the pod's settings,
    /// not the namespace's).
    pub fn pod_network(&self) -> pb::PodNetwork {
        pb::PodNetwork {
            interfaces: self
                .interfaces
                .iter()
                .map(|i| pb::NetworkInterface {
                    name: i.name.clone(),
                    mac: i.mac.to_string(),
                    mtu: i.mtu,
                    addresses: i.addresses.clone(),
                })
                .collect(),
            routes: self.routes.clone(),
            dns: None,
            hosts: Vec::new(),
        }
    }
}

/// A link's name.
pub(super) fn link_name(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(name) => Some(name.as_str()),
        _ => None,
    })
}

fn unsupported(interface: &str, reason: impl Into<String>) -> NetworkError {
    NetworkError::Unsupported {
        interface: interface.to_owned(),
        reason: reason.into(),
    }
}

/// The global address of `msg` as `ip/len`, or `None` for one the guest does not get
/// (link/host scope, IPv6 link-local, other families).
fn global_address(msg: &AddressMessage) -> Option<String> {
    if msg.header.scope != AddressScope::Universe {
        return None;
    }
    // IPv4: IFA_LOCAL is the interface's own address (IFA_ADDRESS the peer's on point-to-point
    // links); IPv6 has IFA_ADDRESS only.
    let local = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let address = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(ip) => Some(*ip),
        _ => None,
    });
    let ip = match msg.header.family {
        AddressFamily::Inet => local.or(address)?,
        AddressFamily::Inet6 => address.or(local)?,
        _ => return None,
    };
    if let IpAddr::V6(v6) = ip
        && is_link_local_v6(&v6)
    {
        return None;
    }
    Some(format!("{ip}/{}", msg.header.prefix_len))
}

fn is_link_local_v6(ip: &Ipv6Addr) -> bool {
    ip.segments()[0] & 0xffc0 == 0xfe80
}

fn is_multicast_v6(ip: &Ipv6Addr) -> bool {
    ip.segments()[0] & 0xff00 == 0xff00
}

/// The CNI interfaces of a namespace: every link but loopback and our own taps, except links
/// that are down and hold no global address (the fallback tunnel devices a namespace gets when
/// their modules are loaded, `sit0`, `tunl0`, …). Each must be an Ethernet link with a MAC and an
/// MTU the guest can take; anything else is refused rather than left out.
pub fn interfaces(
    links: &[LinkMessage],
    addresses: &[AddressMessage],
) -> Result<Vec<FoundInterface>, NetworkError> {
    let mut found = Vec::new();
    let mut links: Vec<&LinkMessage> = links.iter().collect();
    links.sort_by_key(|l| l.header.index);
    for link in links {
        let index = link.header.index;
        let name = link_name(link).unwrap_or_default();
        if link.header.flags.contains(LinkFlags::Loopback)
            || link.header.link_layer_type == LinkLayerType::Loopback
            || name.ends_with(TAP_SUFFIX)
        {
            continue;
        }
        let globals: Vec<String> = addresses
            .iter()
            .filter(|a| a.header.index == index)
            .filter_map(global_address)
            .collect();
        if !link.header.flags.contains(LinkFlags::Up) && globals.is_empty() {
            tracing::debug!(
                interface = name,
                "skipping a link that is down and unaddressed"
            );
            continue;
        }
        if name.is_empty() {
            return Err(unsupported(&format!("#{index}"), "the link has no name"));
        }
        if link.header.link_layer_type != LinkLayerType::Ether {
            return Err(unsupported(
                name,
                format!(
                    "not an Ethernet link ({:?}): a NIC can only carry Ethernet",
                    link.header.link_layer_type
                ),
            ));
        }
        let mac = link
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Address(bytes) => Some(bytes.as_slice()),
                _ => None,
            })
            .ok_or_else(|| unsupported(name, "the link has no MAC address"))?;
        let mac = MacAddr::from_slice(mac)
            .filter(MacAddr::is_unicast)
            .ok_or_else(|| unsupported(name, format!("MAC {mac:02x?} is not a unicast MAC")))?;
        let mtu = link
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Mtu(mtu) => Some(*mtu),
                _ => None,
            })
            .ok_or_else(|| unsupported(name, "the link has no MTU"))?;
        if !(68..=65535).contains(&mtu) {
            return Err(unsupported(
                name,
                format!("MTU {mtu} is outside 68..=65535"),
            ));
        }
        if globals.len() > MAX_ADDRESSES {
            return Err(unsupported(
                name,
                format!("{} addresses, at most {MAX_ADDRESSES}", globals.len()),
            ));
        }
        found.push(FoundInterface {
            index,
            name: name.to_owned(),
            mac,
            mtu,
            addresses: globals,
        });
    }
    if found.is_empty() {
        return Err(unsupported(
            "",
            "the namespace has no interface but loopback",
        ));
    }
    if found.len() > MAX_INTERFACES {
        return Err(unsupported(
            "",
            format!("{} interfaces, at most {MAX_INTERFACES}", found.len()),
        ));
    }
    Ok(found)
}

fn route_ip(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn route_table(msg: &RouteMessage) -> u32 {
    msg.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(msg.header.table))
}

/// The routes of the main table the guest must be given: unicast ones the kernel did not add by
/// itself (its per-address prefix routes, `proto kernel`, and IPv6 link-local and multicast).
/// Each must leave through one of `interfaces`; a route Coffer cannot express is refused.
pub fn routes(
    routes: &[RouteMessage],
    interfaces: &[FoundInterface],
) -> Result<Vec<pb::NetworkRoute>, NetworkError> {
    let mut found = Vec::new();
    for msg in routes {
        let family = msg.header.address_family;
        if !matches!(family, AddressFamily::Inet | AddressFamily::Inet6)
            || route_table(msg) != u32::from(RouteHeader::RT_TABLE_MAIN)
            || msg.header.kind != RouteType::Unicast
            || msg.header.protocol == RouteProtocol::Kernel
        {
            continue;
        }
        let destination = msg
            .attributes
            .iter()
            .find_map(|a| match a {
                RouteAttribute::Destination(d) => route_ip(d),
                _ => None,
            })
            .unwrap_or(if family == AddressFamily::Inet {
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            } else {
                IpAddr::V6(Ipv6Addr::UNSPECIFIED)
            });
        if let IpAddr::V6(v6) = destination
            && (is_link_local_v6(&v6) || is_multicast_v6(&v6))
        {
            continue;
        }
        let destination = format!("{destination}/{}", msg.header.destination_prefix_length);
        let mut gateway = None;
        let mut device = None;
        let mut source = None;
        let mut metric = 0;
        for attribute in &msg.attributes {
            match attribute {
                RouteAttribute::Gateway(g) => gateway = route_ip(g),
                RouteAttribute::Oif(index) => device = Some(*index),
                RouteAttribute::PrefSource(s) => source = route_ip(s),
                RouteAttribute::Priority(p) => metric = *p,
                RouteAttribute::MultiPath(_) => {
                    return Err(unsupported(
                        "",
                        format!("route {destination} has several next hops"),
                    ));
                }
                RouteAttribute::Via(_) => {
                    return Err(unsupported(
                        "",
                        format!("route {destination} has a next hop of another family"),
                    ));
                }
                _ => {}
            }
        }
        if msg.header.source_prefix_length != 0 {
            return Err(unsupported(
                "",
                format!("route {destination} is source-specific"),
            ));
        }
        let device = device
            .ok_or_else(|| unsupported("", format!("route {destination} names no device")))?;
        let Some(interface) = interfaces.iter().find(|i| i.index == device) else {
            return Err(unsupported(
                "",
                format!("route {destination} leaves through link #{device}, which is not attached"),
            ));
        };
        found.push(pb::NetworkRoute {
            destination,
            gateway: gateway.map(|g| g.to_string()).unwrap_or_default(),
            device: interface.name.clone(),
            source: source.map(|s| s.to_string()).unwrap_or_default(),
            metric,
        });
    }
    if found.len() > MAX_ROUTES {
        return Err(unsupported(
            "",
            format!("{} routes, at most {MAX_ROUTES}", found.len()),
        ));
    }
    Ok(found)
}

/// The whole description from the three dumps.
pub fn describe(
    links: &[LinkMessage],
    addresses: &[AddressMessage],
    route_msgs: &[RouteMessage],
) -> Result<Found, NetworkError> {
    let interfaces = interfaces(links, addresses)?;
    let routes = routes(route_msgs, &interfaces)?;
    Ok(Found { interfaces, routes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_route::route::RouteScope;

    const MAC: [u8; 6] = [0x0a, 0x58, 0xc6, 0x12, 0x00, 0x02];

    fn link(index: u32, name: &str, kind: LinkLayerType, flags: LinkFlags) -> LinkMessage {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.link_layer_type = kind;
        msg.header.flags = flags;
        msg.attributes = vec![
            LinkAttribute::IfName(name.into()),
            LinkAttribute::Mtu(1400),
            LinkAttribute::Address(if kind == LinkLayerType::Ether {
                MAC.to_vec()
            } else {
                vec![0; 4]
            }),
        ];
        msg
    }

    fn lo() -> LinkMessage {
        let mut msg = link(
            1,
            "lo",
            LinkLayerType::Loopback,
            LinkFlags::Up | LinkFlags::Loopback,
        );
        msg.attributes[2] = LinkAttribute::Address(vec![0; 6]);
        msg
    }

    fn eth0() -> LinkMessage {
        link(
            2,
            "eth0",
            LinkLayerType::Ether,
            LinkFlags::Up | LinkFlags::Broadcast,
        )
    }

    fn addr(index: u32, ip: &str, len: u8, scope: AddressScope) -> AddressMessage {
        let ip: IpAddr = ip.parse().expect("ip");
        let mut msg = AddressMessage::default();
        msg.header.index = index;
        msg.header.prefix_len = len;
        msg.header.scope = scope;
        msg.header.family = match ip {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        msg.attributes = vec![AddressAttribute::Address(ip)];
        if ip.is_ipv4() {
            msg.attributes.push(AddressAttribute::Local(ip));
        }
        msg
    }

    fn route_addr(ip: IpAddr) -> RouteAddress {
        match ip {
            IpAddr::V4(v4) => RouteAddress::Inet(v4),
            IpAddr::V6(v6) => RouteAddress::Inet6(v6),
        }
    }

    /// A route like the kernel dumps it: `dest` `None` for a default route.
    fn route(
        dest: Option<(&str, u8)>,
        gateway: Option<&str>,
        oif: u32,
        protocol: RouteProtocol,
        table: u8,
        kind: RouteType,
    ) -> RouteMessage {
        let v6 = dest
            .map(|(d, _)| d.contains(':'))
            .or(gateway.map(|g| g.contains(':')))
            .unwrap_or(false);
        let mut msg = RouteMessage::default();
        msg.header.address_family = if v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        msg.header.table = table;
        msg.header.protocol = protocol;
        msg.header.kind = kind;
        msg.header.scope = if gateway.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        msg.attributes.push(RouteAttribute::Table(u32::from(table)));
        if let Some((d, len)) = dest {
            msg.header.destination_prefix_length = len;
            msg.attributes.push(RouteAttribute::Destination(route_addr(
                d.parse().expect("ip"),
            )));
        }
        if let Some(g) = gateway {
            msg.attributes
                .push(RouteAttribute::Gateway(route_addr(g.parse().expect("ip"))));
        }
        msg.attributes.push(RouteAttribute::Oif(oif));
        msg
    }

    const MAIN: u8 = RouteHeader::RT_TABLE_MAIN;
    const LOCAL: u8 = 255;

    /// What a CNI-configured pod namespace dumps: loopback, eth0 with IPv4 and IPv6 addresses
    /// (global and link-local), the kernel's own routes in main and local, a default route each
    /// and one extra route with a source and metric.
    fn pod_dumps() -> (Vec<LinkMessage>, Vec<AddressMessage>, Vec<RouteMessage>) {
        let links = vec![eth0(), lo()];
        let addresses = vec![
            addr(1, "127.0.0.1", 8, AddressScope::Host),
            addr(1, "::1", 128, AddressScope::Host),
            addr(2, "198.18.0.2", 24, AddressScope::Universe),
            addr(2, "2001:2::2", 64, AddressScope::Universe),
            addr(2, "fe80::858:c6ff:fe12:2", 64, AddressScope::Link),
        ];
        let mut extra = route(
            Some(("198.19.0.0", 16)),
            Some("198.18.0.1"),
            2,
            RouteProtocol::Boot,
            MAIN,
            RouteType::Unicast,
        );
        extra.attributes.push(RouteAttribute::PrefSource(route_addr(
            "198.18.0.2".parse().expect("ip"),
        )));
        extra.attributes.push(RouteAttribute::Priority(100));
        let mut v6_default = route(
            None,
            Some("2001:2::1"),
            2,
            RouteProtocol::Boot,
            MAIN,
            RouteType::Unicast,
        );
        v6_default.attributes.push(RouteAttribute::Priority(1024));
        let routes = vec![
            route(
                None,
                Some("198.18.0.1"),
                2,
                RouteProtocol::Boot,
                MAIN,
                RouteType::Unicast,
            ),
            route(
                Some(("198.18.0.0", 24)),
                None,
                2,
                RouteProtocol::Kernel,
                MAIN,
                RouteType::Unicast,
            ),
            route(
                Some(("198.18.0.2", 32)),
                None,
                2,
                RouteProtocol::Kernel,
                LOCAL,
                RouteType::Local,
            ),
            route(
                Some(("198.18.0.255", 32)),
                None,
                2,
                RouteProtocol::Kernel,
                LOCAL,
                RouteType::Broadcast,
            ),
            extra,
            route(
                Some(("2001:2::", 64)),
                None,
                2,
                RouteProtocol::Kernel,
                MAIN,
                RouteType::Unicast,
            ),
            route(
                Some(("fe80::", 64)),
                None,
                2,
                RouteProtocol::Kernel,
                MAIN,
                RouteType::Unicast,
            ),
            route(
                Some(("ff00::", 8)),
                None,
                2,
                RouteProtocol::Boot,
                MAIN,
                RouteType::Unicast,
            ),
            route(
                Some(("ff00::", 8)),
                None,
                2,
                RouteProtocol::Kernel,
                LOCAL,
                RouteType::Multicast,
            ),
            v6_default,
            // A blackhole route is not a unicast one.
            route(
                Some(("198.20.0.0", 16)),
                None,
                1,
                RouteProtocol::Boot,
                MAIN,
                RouteType::BlackHole,
            ),
        ];
        (links, addresses, routes)
    }

    #[test]
    fn a_pod_namespace_is_described_by_its_cni_interface_and_non_kernel_routes() {
        let (links, addresses, routes) = pod_dumps();
        let found = describe(&links, &addresses, &routes).expect("describe");
        assert_eq!(
            found.interfaces,
            [FoundInterface {
                index: 2,
                name: "eth0".into(),
                mac: MacAddr(MAC),
                mtu: 1400,
                addresses: vec!["198.18.0.2/24".into(), "2001:2::2/64".into()],
            }]
        );
        let route = |destination: &str, gateway: &str, source: &str, metric| pb::NetworkRoute {
            destination: destination.into(),
            gateway: gateway.into(),
            device: "eth0".into(),
            source: source.into(),
            metric,
        };
        assert_eq!(
            found.routes,
            [
                route("0.0.0.0/0", "198.18.0.1", "", 0),
                route("198.19.0.0/16", "198.18.0.1", "198.18.0.2", 100),
                route("::/0", "2001:2::1", "", 1024),
            ]
        );
        let pod = found.pod_network();
        assert_eq!(pod.interfaces[0].mac, "0a:58:c6:12:00:02");
        assert_eq!(pod.interfaces[0].name, "eth0");
        assert_eq!(pod.routes.len(), 3);
        assert!(pod.dns.is_none() && pod.hosts.is_empty());
    }

    #[test]
    fn our_taps_and_idle_tunnel_devices_are_not_cni_interfaces() {
        let (mut links, addresses, routes) = pod_dumps();
        links.push(link(3, "tap0_coffer", LinkLayerType::Ether, LinkFlags::Up));
        // A fallback tunnel device: down, no address.
        links.push(link(4, "sit0", LinkLayerType::Sit, LinkFlags::empty()));
        let found = describe(&links, &addresses, &routes).expect("describe");
        let names: Vec<&str> = found.interfaces.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["eth0"]);
    }

    #[test]
    fn interfaces_the_guest_cannot_have_are_refused_with_their_name() {
        let (_, addresses, _) = pod_dumps();
        // No MAC.
        let mut no_mac = eth0();
        no_mac
            .attributes
            .retain(|a| !matches!(a, LinkAttribute::Address(_)));
        // An up tunnel: not Ethernet.
        let tunnel = link(2, "eth0", LinkLayerType::Tunnel, LinkFlags::Up);
        // A multicast MAC.
        let mut multicast = eth0();
        multicast.attributes[2] = LinkAttribute::Address(vec![0x01, 0, 0x5e, 0, 0, 1]);
        let mut huge = eth0();
        huge.attributes[1] = LinkAttribute::Mtu(70000);
        for (links, want) in [
            (vec![lo(), no_mac], "no MAC address"),
            (vec![lo(), tunnel], "not an Ethernet link"),
            (vec![lo(), multicast], "not a unicast MAC"),
            (vec![lo(), huge], "MTU 70000"),
            (vec![lo()], "no interface but loopback"),
        ] {
            let err = interfaces(&links, &addresses).expect_err(want).to_string();
            assert!(err.contains(want), "{err}");
            if want != "no interface but loopback" {
                assert!(err.contains("eth0"), "{err}");
            }
        }
        let many: Vec<LinkMessage> = (2..=10)
            .map(|i| link(i, &format!("net{i}"), LinkLayerType::Ether, LinkFlags::Up))
            .collect();
        let err = interfaces(&many, &[]).expect_err("nine").to_string();
        assert!(err.contains("9 interfaces, at most 8"), "{err}");
    }

    #[test]
    fn routes_that_cannot_be_expressed_are_refused() {
        let (links, addresses, _) = pod_dumps();
        let found = interfaces(&links, &addresses).expect("interfaces");
        let through_lo = route(
            Some(("198.21.0.0", 16)),
            None,
            1,
            RouteProtocol::Boot,
            MAIN,
            RouteType::Unicast,
        );
        let err = routes(&[through_lo], &found).expect_err("lo").to_string();
        assert!(
            err.contains("198.21.0.0/16 leaves through link #1"),
            "{err}"
        );
        let mut multipath = route(None, None, 2, RouteProtocol::Boot, MAIN, RouteType::Unicast);
        multipath
            .attributes
            .retain(|a| !matches!(a, RouteAttribute::Oif(_)));
        multipath
            .attributes
            .push(RouteAttribute::MultiPath(Vec::new()));
        let err = routes(&[multipath], &found)
            .expect_err("multipath")
            .to_string();
        assert!(err.contains("several next hops"), "{err}");
        // Another table's routes are none of the guest's business.
        let other_table = route(
            None,
            Some("198.18.0.9"),
            1,
            RouteProtocol::Boot,
            100,
            RouteType::Unicast,
        );
        assert_eq!(routes(&[other_table], &found).expect("routes"), []);
    }
}
