//! Applies the pod's network ([`PodNetwork`], validated by `CreateSandbox`'s decode and admitted
//! by the policy) to the guest's network namespace, once, before any container exists, over
//! rtnetlink (the `rtnetlink` crate; no `ip` subprocesses):
//!
//! 1. the loopback comes up (also without a network: the pod's containers and the tunnels'
//!    guest ends use it);
//! 2. sysctls for `all` and `default` make the kernel ignore what the host could send over the
//!    wire to reconfigure the guest: IPv6 router advertisements (`accept_ra`, `autoconf`),
//!    ICMP redirects (`accept_redirects`, `secure_redirects`), source routing
//!    (`accept_source_route`); and it sends no redirects itself (`send_redirects`: it is no
//!    router), checks that a packet's source is routed back through the interface it came in on
//!    (`rp_filter` strict), and does no IPv6 duplicate address detection (`accept_dad`: the
//!    pod's CNI already owns its addresses' uniqueness, and a host answering the probes could
//!    otherwise make an address unusable). A kernel without IPv6 is fine while no address is
//!    IPv6;
//! 3. the NIC driver (`virtio_net`, from the image's `/etc/coffer/modules-network`) loads, so
//!    the NICs appear with the `default` settings above;
//! 4. each NIC is found by its MAC (waiting up to [`LINK_WAIT`] for it to appear), renamed, given
//!    its MTU and the per-interface sysctls, its addresses, and brought up;
//! 5. the routes go into the main table (on-link ones first, so a gateway they make reachable
//!    can be used by the others).
//!
//! Nothing here is undone on failure: `CreateSandbox` then fails and the host tears the VM down.
//! [`configure`] takes no path or namespace of its own: it acts on the calling thread's network
//! namespace, which is how the tests run it in a namespace they create.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::{RouteMessage, RouteScope};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};
use thiserror::Error;

use crate::error::AgentError;
use crate::pod_network::{IfName, Interface, Mac, PodNetwork, Route};

/// How long a NIC may take to appear once its driver is loaded.
pub const LINK_WAIT: Duration = Duration::from_secs(5);
/// How often the links are listed while waiting.
const LINK_POLL: Duration = Duration::from_millis(50);
/// The root of the network sysctls of the calling thread's namespace.
const PROC_SYS_NET: &str = "/proc/sys/net";

/// IPv4 settings for `all`, `default` and each interface.
pub const IPV4_SYSCTLS: [(&str, &str); 5] = [
    ("accept_redirects", "0"),
    ("secure_redirects", "0"),
    ("send_redirects", "0"),
    ("accept_source_route", "0"),
    ("rp_filter", "1"),
];

/// IPv6 settings for `all`, `default` and each interface.
pub const IPV6_SYSCTLS: [(&str, &str); 5] = [
    ("accept_ra", "0"),
    ("autoconf", "0"),
    ("accept_redirects", "0"),
    ("accept_source_route", "0"),
    ("accept_dad", "0"),
];

/// A failure to apply the pod's network.
#[derive(Debug, Error)]
pub enum NetworkSetupError {
    /// An rtnetlink request failed.
    #[error("{op} {target}: {source}")]
    Netlink {
        /// What was being done.
        op: &'static str,
        /// To what (an interface, address or route).
        target: String,
        /// The kernel's answer.
        #[source]
        source: std::io::Error,
    },
    /// Writing a sysctl failed.
    #[error("write {}: {source}", path.display())]
    Sysctl {
        /// The `/proc/sys` file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The pod has IPv6 addresses, but the guest kernel has no IPv6.
    #[error(
        "the pod has IPv6 addresses, but the guest kernel has no IPv6 ({PROC_SYS_NET}/ipv6 is missing)"
    )]
    NoIpv6,
    /// Loading the NIC driver failed.
    #[error("loading the network driver: {0}")]
    Modules(#[source] crate::init::InitError),
    /// The task loading the NIC driver did not finish.
    #[error("the network driver loader: {0}")]
    Loader(#[source] tokio::task::JoinError),
    /// No link with an interface's MAC appeared in time.
    #[error("no network interface with MAC {mac} (for {name}) appeared within {} ms", LINK_WAIT.as_millis())]
    NoLink {
        /// The interface's name.
        name: IfName,
        /// Its MAC.
        mac: Mac,
    },
    /// More than one link has an interface's MAC.
    #[error("{count} network interfaces have MAC {mac} (for {name}); expected exactly one")]
    AmbiguousLink {
        /// The interface's name.
        name: IfName,
        /// Its MAC.
        mac: Mac,
        /// How many links have it.
        count: usize,
    },
}

/// An rtnetlink failure as an I/O error: the kernel's errno, or (for a reply the crate could not
/// use, logged here) a short text that carries no message dump.
fn netlink_error(
    op: &'static str,
    target: impl Into<String>,
) -> impl FnOnce(rtnetlink::Error) -> NetworkSetupError {
    let target = target.into();
    move |error| {
        let source = match error {
            rtnetlink::Error::NetlinkError(message) => message.to_io(),
            other => {
                tracing::warn!(op, %target, error = %other, "unexpected rtnetlink reply");
                std::io::Error::other("unexpected rtnetlink reply")
            }
        };
        NetworkSetupError::Netlink { op, target, source }
    }
}

/// Applies the pod's network at most once per guest.
#[derive(Debug, Default)]
pub struct NetworkSetup {
    applied: AtomicBool,
}

impl NetworkSetup {
    /// Brings the loopback up and applies `network`, refusing a second network: the pod's network
    /// is applied once and never changes.
    pub async fn apply(&self, network: Option<&PodNetwork>) -> Result<(), AgentError> {
        if network.is_some() && self.applied.swap(true, Ordering::SeqCst) {
            return Err(AgentError::FailedPrecondition(
                "the pod's network was applied by an earlier CreateSandbox and never changes"
                    .into(),
            ));
        }
        configure(network).await.map_err(AgentError::Network)
    }
}

/// Brings the loopback up and, with a network, applies it (see the module documentation), in
/// the calling thread's network namespace.
pub async fn configure(network: Option<&PodNetwork>) -> Result<(), NetworkSetupError> {
    let ipv6 = Path::new(PROC_SYS_NET).join("ipv6").is_dir();
    if network.is_some_and(PodNetwork::has_ipv6) && !ipv6 {
        return Err(NetworkSetupError::NoIpv6);
    }
    let (connection, handle, _) =
        rtnetlink::new_connection().map_err(|source| NetworkSetupError::Netlink {
            op: "open",
            target: "an rtnetlink socket".into(),
            source,
        })?;
    let connection = tokio::spawn(connection);
    let result = configure_with(&handle, network, ipv6).await;
    connection.abort();
    result
}

async fn configure_with(
    handle: &Handle,
    network: Option<&PodNetwork>,
    ipv6: bool,
) -> Result<(), NetworkSetupError> {
    loopback_up(handle).await?;
    let Some(network) = network else {
        return Ok(());
    };
    for scope in ["all", "default"] {
        set_sysctls(scope, ipv6, false)?;
    }
    if !network.interfaces.is_empty() {
        tokio::task::spawn_blocking(crate::init::load_network_modules)
            .await
            .map_err(NetworkSetupError::Loader)?
            .map_err(NetworkSetupError::Modules)?;
    }
    let indexes = find_links(handle, &network.interfaces).await?;
    rename_links(handle, &network.interfaces, &indexes).await?;
    for (nic, &index) in network.interfaces.iter().zip(&indexes) {
        set_up_interface(handle, nic, index, ipv6).await?;
    }
    // On-link routes first: a gateway may be reachable only through one of them.
    let mut routes: Vec<&Route> = network.routes.iter().collect();
    routes.sort_by_key(|r| r.gateway.is_some());
    for route in routes {
        let index = network
            .interfaces
            .iter()
            .position(|nic| nic.name == route.device)
            .map(|i| indexes[i])
            .ok_or_else(|| NetworkSetupError::Netlink {
                op: "add route",
                target: describe_route(route),
                source: std::io::Error::other("its device is not one of the interfaces"),
            })?;
        handle
            .route()
            .add(route_message(route, index))
            .execute()
            .await
            .map_err(netlink_error("add route", describe_route(route)))?;
    }
    tracing::info!(
        interfaces = %network
            .interfaces
            .iter()
            .map(|nic| {
                let addresses: Vec<String> = nic.addresses.iter().map(ToString::to_string).collect();
                format!("{}[{}]", nic.name, addresses.join(","))
            })
            .collect::<Vec<_>>()
            .join(" "),
        routes = network.routes.len(),
        dns_servers = %network
            .dns
            .servers
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(","),
        "pod network applied"
    );
    Ok(())
}

/// Brings `lo` up (a fresh guest has it down).
async fn loopback_up(handle: &Handle) -> Result<(), NetworkSetupError> {
    let lo = handle
        .link()
        .get()
        .match_name("lo")
        .execute()
        .try_next()
        .await
        .map_err(netlink_error("find", "lo"))?
        .ok_or_else(|| NetworkSetupError::Netlink {
            op: "find",
            target: "lo".into(),
            source: std::io::ErrorKind::NotFound.into(),
        })?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(lo.header.index).up().build())
        .execute()
        .await
        .map_err(netlink_error("bring up", "lo"))
}

fn write_sysctl(path: PathBuf, value: &str) -> Result<(), NetworkSetupError> {
    std::fs::write(&path, value).map_err(|source| NetworkSetupError::Sysctl { path, source })
}

/// Writes [`IPV4_SYSCTLS`] and (where the kernel has IPv6) [`IPV6_SYSCTLS`] for `scope` (`all`,
/// `default` or an interface name). An interface without an IPv6 address whose MTU is below
/// IPv6's minimum has no IPv6 settings (the kernel keeps IPv6 off on it): `v6_optional` skips
/// them then.
fn set_sysctls(scope: &str, ipv6: bool, v6_optional: bool) -> Result<(), NetworkSetupError> {
    let root = Path::new(PROC_SYS_NET);
    let v4 = root.join("ipv4/conf").join(scope);
    for (key, value) in IPV4_SYSCTLS {
        write_sysctl(v4.join(key), value)?;
    }
    let v6 = root.join("ipv6/conf").join(scope);
    if !ipv6 || (v6_optional && !v6.is_dir()) {
        return Ok(());
    }
    for (key, value) in IPV6_SYSCTLS {
        write_sysctl(v6.join(key), value)?;
    }
    Ok(())
}

/// One link of the namespace.
struct Link {
    index: u32,
    name: String,
    mac: Option<[u8; 6]>,
}

fn link_of(message: &LinkMessage) -> Link {
    let mut link = Link {
        index: message.header.index,
        name: String::new(),
        mac: None,
    };
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => link.name.clone_from(name),
            LinkAttribute::Address(bytes) => link.mac = <[u8; 6]>::try_from(bytes.as_slice()).ok(),
            _ => {}
        }
    }
    link
}

async fn list_links(handle: &Handle) -> Result<Vec<Link>, NetworkSetupError> {
    let messages: Vec<LinkMessage> = handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(netlink_error("list", "links"))?;
    Ok(messages.iter().map(link_of).collect())
}

/// The link index of each interface, by MAC, waiting up to [`LINK_WAIT`] for them to appear.
async fn find_links(
    handle: &Handle,
    interfaces: &[Interface],
) -> Result<Vec<u32>, NetworkSetupError> {
    let deadline = Instant::now() + LINK_WAIT;
    loop {
        let links = list_links(handle).await?;
        let mut indexes = Vec::with_capacity(interfaces.len());
        let mut missing = None;
        for nic in interfaces {
            let matching: Vec<&Link> = links
                .iter()
                .filter(|l| l.mac == Some(nic.mac.octets()))
                .collect();
            match matching.as_slice() {
                [link] => indexes.push(link.index),
                [] => {
                    missing = Some(nic);
                    break;
                }
                _ => {
                    return Err(NetworkSetupError::AmbiguousLink {
                        name: nic.name.clone(),
                        mac: nic.mac,
                        count: matching.len(),
                    });
                }
            }
        }
        match missing {
            None => return Ok(indexes),
            Some(nic) if Instant::now() >= deadline => {
                return Err(NetworkSetupError::NoLink {
                    name: nic.name.clone(),
                    mac: nic.mac,
                });
            }
            Some(_) => tokio::time::sleep(LINK_POLL).await,
        }
    }
}

async fn rename(handle: &Handle, index: u32, name: &str) -> Result<(), NetworkSetupError> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).name(name).build())
        .execute()
        .await
        .map_err(netlink_error("rename link to", name))
}

/// Gives each link its interface's name. The kernel may have given one link the name another
/// interface wants (virtio NICs are `eth0`, `eth1`, … in probe order), so the links whose name
/// differs first move to temporary names none of them has or wants.
async fn rename_links(
    handle: &Handle,
    interfaces: &[Interface],
    indexes: &[u32],
) -> Result<(), NetworkSetupError> {
    let links = list_links(handle).await?;
    let current = |index: u32| {
        links
            .iter()
            .find(|l| l.index == index)
            .map(|l| l.name.as_str())
    };
    let mut taken: HashSet<String> = links.iter().map(|l| l.name.clone()).collect();
    taken.extend(interfaces.iter().map(|nic| nic.name.to_string()));
    let mut moved = Vec::new();
    let mut serial = 0u32;
    for (nic, &index) in interfaces.iter().zip(indexes) {
        if current(index) == Some(nic.name.as_str()) {
            continue;
        }
        let temporary = loop {
            let candidate = format!("coffer{serial}");
            serial += 1;
            if taken.insert(candidate.clone()) {
                break candidate;
            }
        };
        rename(handle, index, &temporary).await?;
        moved.push((nic, index));
    }
    for (nic, index) in moved {
        rename(handle, index, nic.name.as_str()).await?;
    }
    Ok(())
}

/// MTU, sysctls, addresses, up: in that order, so no packet flows before the interface is set.
async fn set_up_interface(
    handle: &Handle,
    nic: &Interface,
    index: u32,
    ipv6: bool,
) -> Result<(), NetworkSetupError> {
    let name = nic.name.as_str();
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).mtu(nic.mtu).build())
        .execute()
        .await
        .map_err(netlink_error("set the MTU of", name))?;
    set_sysctls(name, ipv6, !nic.has_ipv6())?;
    for address in &nic.addresses {
        handle
            .address()
            .add(index, address.addr(), address.prefix_len())
            .execute()
            .await
            .map_err(netlink_error("add address", format!("{address} to {name}")))?;
    }
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(netlink_error("bring up", name))
}

fn describe_route(route: &Route) -> String {
    let mut text = route.destination.to_string();
    if let Some(gateway) = route.gateway {
        text.push_str(&format!(" via {gateway}"));
    }
    text.push_str(&format!(" dev {}", route.device));
    text
}

/// The main-table route message: no gateway is an on-link route (scope link for IPv4; IPv6
/// routes have no scope), a source the preferred source, a metric the priority.
fn route_message(route: &Route, index: u32) -> RouteMessage {
    let prefix_len = route.destination.prefix_len();
    match route.destination.addr() {
        IpAddr::V4(destination) => {
            let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(destination, prefix_len)
                .output_interface(index);
            b = match route.gateway {
                Some(IpAddr::V4(gateway)) => b.gateway(gateway),
                _ => b.scope(RouteScope::Link),
            };
            if let Some(IpAddr::V4(source)) = route.source {
                b = b.pref_source(source);
            }
            if route.metric != 0 {
                b = b.priority(route.metric);
            }
            b.build()
        }
        IpAddr::V6(destination) => {
            let mut b = RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(destination, prefix_len)
                .output_interface(index);
            if let Some(IpAddr::V6(gateway)) = route.gateway {
                b = b.gateway(gateway);
            }
            if let Some(IpAddr::V6(source)) = route.source {
                b = b.pref_source(source);
            }
            if route.metric != 0 {
                b = b.priority(route.metric);
            }
            b.build()
        }
    }
}

#[cfg(test)]
mod tests {
    //! The apply path for real, in a network namespace each test thread creates for itself: the
    //! NICs are veth pairs with chosen MACs whose peers stay in that namespace, so nothing
    //! touches the machine's own namespace and no packet leaves it (the addresses are
    //! documentation ranges).
    use super::*;
    use std::os::unix::fs::MetadataExt;

    use coffer_agent_protocol::v1 as pb;
    use rtnetlink::LinkVeth;
    use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
    use rtnetlink::packet_route::link::LinkFlags;
    use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteHeader};

    const MAC_ETH0: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
    const MAC_NET1: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];

    /// Runs `test` on a thread of its own in a new network namespace, with a current-thread
    /// runtime (so every task and blocking call stays in that namespace's thread group).
    fn in_new_netns<F, Fut>(test: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()>,
    {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the network setup tests create network namespaces and must run as root"
        );
        let outer = std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino();
        std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let inner = std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino();
            assert_ne!(inner, outer, "still in the machine's network namespace");
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(test());
        })
        .join()
        .unwrap();
    }

    async fn connect() -> (Handle, tokio::task::JoinHandle<()>) {
        let (connection, handle, _) = rtnetlink::new_connection().unwrap();
        (handle, tokio::spawn(connection))
    }

    /// A veth pair `name`/`peer` with `name`'s MAC chosen, its peer up (so `name` has a carrier
    /// once the set-up brings it up).
    async fn add_nic(handle: &Handle, name: &str, peer: &str, mac: [u8; 6]) {
        handle
            .link()
            .add(LinkVeth::new(name, peer).address(mac.to_vec()).build())
            .execute()
            .await
            .unwrap();
        let peer = link_named(handle, peer).await;
        handle
            .link()
            .set(LinkUnspec::new_with_index(peer.header.index).up().build())
            .execute()
            .await
            .unwrap();
    }

    async fn link_named(handle: &Handle, name: &str) -> LinkMessage {
        handle
            .link()
            .get()
            .match_name(name)
            .execute()
            .try_next()
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no link {name}"))
    }

    fn mtu(link: &LinkMessage) -> Option<u32> {
        link.attributes.iter().find_map(|a| match a {
            LinkAttribute::Mtu(mtu) => Some(*mtu),
            _ => None,
        })
    }

    async fn addresses(handle: &Handle, index: u32) -> Vec<String> {
        let messages: Vec<AddressMessage> = handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .unwrap();
        let mut shown: Vec<String> = messages
            .iter()
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(format!("{ip}/{}", m.header.prefix_len)),
                    _ => None,
                })
            })
            .filter(|a| !a.starts_with("fe80:"))
            .collect();
        shown.sort();
        shown
    }

    /// The main table, one `ip route`-like line per route.
    async fn routes(handle: &Handle) -> Vec<String> {
        let mut lines = Vec::new();
        let names: Vec<Link> = list_links(handle).await.unwrap();
        for query in [
            RouteMessageBuilder::<Ipv4Addr>::new().build(),
            RouteMessageBuilder::<Ipv6Addr>::new().build(),
        ] {
            let messages: Vec<RouteMessage> = handle
                .route()
                .get(query)
                .execute()
                .try_collect()
                .await
                .unwrap();
            for m in messages
                .iter()
                .filter(|m| m.header.table == RouteHeader::RT_TABLE_MAIN)
            {
                let address = |a: &RouteAddress| match a {
                    RouteAddress::Inet(ip) => ip.to_string(),
                    RouteAddress::Inet6(ip) => ip.to_string(),
                    other => format!("{other:?}"),
                };
                let mut destination =
                    if m.header.address_family == rtnetlink::packet_route::AddressFamily::Inet {
                        "0.0.0.0".to_owned()
                    } else {
                        "::".to_owned()
                    };
                let (mut via, mut dev, mut src, mut metric) =
                    (String::new(), String::new(), String::new(), String::new());
                for a in &m.attributes {
                    match a {
                        RouteAttribute::Destination(d) => destination = address(d),
                        RouteAttribute::Gateway(g) => via = format!(" via {}", address(g)),
                        RouteAttribute::Oif(index) => {
                            let name = names
                                .iter()
                                .find(|l| l.index == *index)
                                .map_or("?", |l| l.name.as_str());
                            dev = format!(" dev {name}");
                        }
                        RouteAttribute::PrefSource(s) => src = format!(" src {}", address(s)),
                        RouteAttribute::Priority(p) => metric = format!(" metric {p}"),
                        _ => {}
                    }
                }
                let line = format!("{via}{dev}{src}{metric}");
                let scope = if m.header.scope == RouteScope::Link {
                    " scope link"
                } else {
                    ""
                };
                lines.push(format!(
                    "{destination}/{}{line}{scope}",
                    m.header.destination_prefix_length
                ));
            }
        }
        lines
    }

    fn sysctl(path: &str) -> String {
        std::fs::read_to_string(Path::new(PROC_SYS_NET).join(path))
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .trim()
            .to_owned()
    }

    fn network() -> PodNetwork {
        let route = |destination: &str, gateway: &str, device: &str, source: &str, metric| {
            pb::NetworkRoute {
                destination: destination.into(),
                gateway: gateway.into(),
                device: device.into(),
                source: source.into(),
                metric,
            }
        };
        PodNetwork::decode(pb::PodNetwork {
            interfaces: vec![
                pb::NetworkInterface {
                    name: "eth0".into(),
                    mac: "02:00:00:00:00:0a".into(),
                    mtu: 1400,
                    addresses: vec!["192.0.2.5/24".into(), "2001:db8::5/64".into()],
                },
                // IPv4 only, below IPv6's minimum MTU: the kernel keeps IPv6 off on it.
                pb::NetworkInterface {
                    name: "net1".into(),
                    mac: "02:00:00:00:00:0b".into(),
                    mtu: 1200,
                    addresses: vec!["198.51.100.7/32".into()],
                },
            ],
            routes: vec![
                // Listed before the on-link route that makes its gateway reachable.
                route("10.0.0.0/8", "169.254.1.1", "net1", "", 5),
                route("0.0.0.0/0", "192.0.2.1", "eth0", "", 0),
                route("::/0", "2001:db8::1", "eth0", "", 0),
                route("203.0.113.0/24", "", "net1", "198.51.100.7", 10),
                route("169.254.1.1/32", "", "net1", "", 0),
            ],
            dns: None,
            hosts: vec![],
        })
        .unwrap()
    }

    #[test]
    fn applies_the_network_in_its_own_namespace() {
        in_new_netns(|| async {
            let (handle, connection) = connect().await;
            // The kernel named the NICs the other way round: eth0 holds net1's MAC.
            add_nic(&handle, "eth0", "peer0", MAC_NET1).await;
            add_nic(&handle, "eth1", "peer1", MAC_ETH0).await;
            assert!(
                !link_named(&handle, "lo")
                    .await
                    .header
                    .flags
                    .contains(LinkFlags::Up)
            );

            let setup = NetworkSetup::default();
            let network = network();
            setup.apply(Some(&network)).await.unwrap();

            assert!(
                link_named(&handle, "lo")
                    .await
                    .header
                    .flags
                    .contains(LinkFlags::Up)
            );
            let eth0 = link_named(&handle, "eth0").await;
            let net1 = link_named(&handle, "net1").await;
            assert_eq!(link_of(&eth0).mac, Some(MAC_ETH0));
            assert_eq!(link_of(&net1).mac, Some(MAC_NET1));
            assert_eq!((mtu(&eth0), mtu(&net1)), (Some(1400), Some(1200)));
            assert!(eth0.header.flags.contains(LinkFlags::Up));
            assert!(net1.header.flags.contains(LinkFlags::Up));
            assert!(
                list_links(&handle)
                    .await
                    .unwrap()
                    .iter()
                    .all(|l| l.name != "eth1")
            );
            assert_eq!(
                addresses(&handle, eth0.header.index).await,
                ["192.0.2.5/24", "2001:db8::5/64"]
            );
            assert_eq!(
                addresses(&handle, net1.header.index).await,
                ["198.51.100.7/32"]
            );

            let table = routes(&handle).await;
            for expected in [
                "0.0.0.0/0 via 192.0.2.1 dev eth0",
                "10.0.0.0/8 via 169.254.1.1 dev net1 metric 5",
                "169.254.1.1/32 dev net1 scope link",
                "203.0.113.0/24 dev net1 src 198.51.100.7 metric 10 scope link",
                "::/0 via 2001:db8::1 dev eth0 metric 1024",
            ] {
                assert!(
                    table.iter().any(|r| r == expected),
                    "{expected:?} not in {table:#?}"
                );
            }

            for scope in ["all", "default", "eth0", "net1"] {
                for (key, value) in IPV4_SYSCTLS {
                    assert_eq!(
                        sysctl(&format!("ipv4/conf/{scope}/{key}")),
                        value,
                        "{scope} {key}"
                    );
                }
            }
            for scope in ["all", "default", "eth0"] {
                for (key, value) in IPV6_SYSCTLS {
                    assert_eq!(
                        sysctl(&format!("ipv6/conf/{scope}/{key}")),
                        value,
                        "{scope} {key}"
                    );
                }
            }
            assert!(!Path::new(PROC_SYS_NET).join("ipv6/conf/net1").exists());

            // Applied once: a second network is refused before anything is touched, while the
            // loopback-only set-up stays harmless.
            let err = setup.apply(Some(&network)).await.unwrap_err();
            assert!(matches!(err, AgentError::FailedPrecondition(_)), "{err}");
            setup.apply(None).await.unwrap();
            assert_eq!(
                addresses(&handle, eth0.header.index).await,
                ["192.0.2.5/24", "2001:db8::5/64"]
            );
            connection.abort();
        });
    }

    #[test]
    fn a_missing_nic_fails_after_the_wait() {
        in_new_netns(|| async {
            let (handle, connection) = connect().await;
            add_nic(&handle, "eth0", "peer0", MAC_NET1).await;
            let mut network = network();
            network.interfaces.truncate(1);
            network.routes.retain(|r| r.device.as_str() == "eth0");
            let started = Instant::now();
            let err = configure(Some(&network)).await.unwrap_err();
            assert!(
                matches!(&err, NetworkSetupError::NoLink { name, mac } if name.as_str() == "eth0" && mac.octets() == MAC_ETH0),
                "{err}"
            );
            assert!(started.elapsed() >= LINK_WAIT);
            assert_eq!(
                err.to_string(),
                "no network interface with MAC 02:00:00:00:00:0a (for eth0) appeared within 5000 ms"
            );
            // The loopback came up all the same, and the other NIC was left alone.
            assert!(
                link_named(&handle, "lo")
                    .await
                    .header
                    .flags
                    .contains(LinkFlags::Up)
            );
            assert!(
                !link_named(&handle, "eth0")
                    .await
                    .header
                    .flags
                    .contains(LinkFlags::Up)
            );
            connection.abort();
        });
    }

    #[test]
    fn without_a_network_only_the_loopback_comes_up() {
        in_new_netns(|| async {
            let (handle, connection) = connect().await;
            let before = sysctl("ipv4/conf/default/rp_filter");
            configure(None).await.unwrap();
            assert!(
                link_named(&handle, "lo")
                    .await
                    .header
                    .flags
                    .contains(LinkFlags::Up)
            );
            assert_eq!(sysctl("ipv4/conf/default/rp_filter"), before);
            connection.abort();
        });
    }
}
