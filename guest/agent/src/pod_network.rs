//! The pod's network as `CreateSandbox` describes it (`PodNetwork` in `agent.proto`): decoded
//! here, once, into typed values the policy sees and [`crate::network_setup`] applies.
//!
//! The host found this description in the pod's CNI network namespace and attached one virtio-net
//! NIC per interface, with the interface's MAC. It is untrusted like every request field: each
//! bound of the `.proto` comments is checked here, and so is everything the guest kernel or the
//! resolver would otherwise interpret loosely (addresses that are not unicast, route prefixes
//! with host bits, names that are not names). Every refusal is an
//! [`AgentError::InvalidArgument`] naming the field path (`network.interfaces[1].mtu`) and
//! quoting at most a short, escaped prefix of what the host sent.

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;

use coffer_agent_protocol::v1 as pb;

use crate::error::AgentError;

/// Most interfaces (NICs) one pod may have.
pub const MAX_INTERFACES: usize = 8;
/// Most addresses on one interface.
pub const MAX_ADDRESSES: usize = 16;
/// Most routes.
pub const MAX_ROUTES: usize = 64;
/// Most DNS servers (the resolver reads no more).
pub const MAX_DNS_SERVERS: usize = 3;
/// Most search domains: Kubernetes' limit (`MaxDNSSearchPaths`, since its expanded DNS
/// configuration); glibc 2.26 and later read them all.
pub const MAX_SEARCHES: usize = 32;
/// Most characters of all search domains together (Kubernetes' `MaxDNSSearchListChars`).
pub const MAX_SEARCH_CHARS: usize = 2048;
/// Most resolver options.
pub const MAX_DNS_OPTIONS: usize = 16;
/// Longest resolver option.
pub const MAX_DNS_OPTION_LEN: usize = 64;
/// Most extra `/etc/hosts` entries.
pub const MAX_HOSTS: usize = 64;
/// Most names of one `/etc/hosts` entry.
pub const MAX_HOST_NAMES: usize = 8;
/// Longest DNS name (search domain or host name).
pub const MAX_DNS_NAME_LEN: usize = 253;
/// Longest interface name (the kernel's `IFNAMSIZ` less its NUL).
pub const MAX_IFNAME_LEN: usize = 15;
/// Smallest MTU (IPv4's minimum).
pub const MIN_MTU: u32 = 68;
/// Largest MTU.
pub const MAX_MTU: u32 = 65535;
/// Smallest MTU of an interface with an IPv6 address.
pub const MIN_IPV6_MTU: u32 = 1280;
/// How much of a host-sent string an error message quotes.
const QUOTED_CHARS: usize = 64;

/// `what` quoted for an error message: at most [`QUOTED_CHARS`] characters, escaped.
pub(crate) fn quote(what: &str) -> String {
    match what.char_indices().nth(QUOTED_CHARS) {
        Some((end, _)) => format!("{:?}…", &what[..end]),
        None => format!("{what:?}"),
    }
}

fn invalid(path: impl fmt::Display, why: impl fmt::Display) -> AgentError {
    AgentError::InvalidArgument(format!("{path}: {why}"))
}

fn at_most(path: &str, count: usize, max: usize) -> Result<(), AgentError> {
    if count > max {
        return Err(invalid(path, format!("{count} entries; at most {max}")));
    }
    Ok(())
}

/// A MAC address: unicast, not all zeros.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mac([u8; 6]);

impl Mac {
    /// Parses `aa:bb:cc:dd:ee:ff` (hex digits of either case).
    fn parse(path: &str, raw: &str) -> Result<Self, AgentError> {
        let malformed = || {
            invalid(
                path,
                format!("{} is not a MAC address aa:bb:cc:dd:ee:ff", quote(raw)),
            )
        };
        let bytes = raw.as_bytes();
        // ASCII first: the octets are sliced by byte offset below.
        if bytes.len() != 17 || !raw.is_ascii() {
            return Err(malformed());
        }
        let mut mac = [0u8; 6];
        for (i, octet) in mac.iter_mut().enumerate() {
            let pair = &raw[i * 3..i * 3 + 2];
            if !pair.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(malformed());
            }
            *octet = u8::from_str_radix(pair, 16).map_err(|_| malformed())?;
            if i < 5 && bytes[i * 3 + 2] != b':' {
                return Err(malformed());
            }
        }
        if mac == [0; 6] {
            return Err(invalid(path, "the all-zero MAC address is not a NIC's"));
        }
        if mac[0] & 1 != 0 {
            return Err(invalid(
                path,
                format!("{} is a multicast MAC address", Mac(mac)),
            ));
        }
        Ok(Self(mac))
    }

    /// The six octets.
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// An interface name: 1 to 15 characters of `[A-Za-z0-9_.-]`, not `lo`, `.`, `..`, and not the
/// `all`/`default` the kernel's sysctl tree uses beside the interfaces' own directories.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct IfName(String);

impl IfName {
    fn parse(path: &str, raw: &str) -> Result<Self, AgentError> {
        let ok = !raw.is_empty()
            && raw.len() <= MAX_IFNAME_LEN
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !ok {
            return Err(invalid(
                path,
                format!(
                    "{} is not 1 to {MAX_IFNAME_LEN} characters of [A-Za-z0-9_.-]",
                    quote(raw)
                ),
            ));
        }
        if matches!(raw, "lo" | "." | ".." | "all" | "default") {
            return Err(invalid(path, format!("{raw:?} is reserved")));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// An address with a prefix length (`10.1.0.5/24`, `fd00::/64`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpPrefix {
    addr: IpAddr,
    len: u8,
}

impl IpPrefix {
    /// Parses `ADDRESS/LENGTH`, the length in decimal without sign or leading zeros.
    fn parse(path: &str, raw: &str) -> Result<Self, AgentError> {
        let malformed = || {
            invalid(
                path,
                format!("{} is not an address/prefix-length", quote(raw)),
            )
        };
        let (addr, len) = raw.split_once('/').ok_or_else(malformed)?;
        let addr: IpAddr = addr.parse().map_err(|_| malformed())?;
        let digits_ok = !len.is_empty()
            && len.len() <= 3
            && len.bytes().all(|b| b.is_ascii_digit())
            && (len == "0" || !len.starts_with('0'));
        let len: u8 = if digits_ok {
            len.parse().map_err(|_| malformed())?
        } else {
            return Err(malformed());
        };
        let max = Self::max_len(addr);
        if len > max {
            return Err(invalid(
                path,
                format!("prefix length {len} is longer than {max}"),
            ));
        }
        Ok(Self { addr, len })
    }

    fn max_len(addr: IpAddr) -> u8 {
        match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        }
    }

    /// The address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// Whether the address has no bits set beyond the prefix (it names a network).
    fn is_network(&self) -> bool {
        match self.addr {
            IpAddr::V4(a) => {
                let bits = u32::from(a);
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                bits & !mask == 0
            }
            IpAddr::V6(a) => {
                let bits = u128::from(a);
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                bits & !mask == 0
            }
        }
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl fmt::Debug for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A DNS name (search domain or host name): at most 253 characters in labels of 1 to 63
/// characters of `[A-Za-z0-9-]`, none starting or ending with `-`. Kept lowercase (DNS names
/// compare case-insensitively), so each name has one spelling for the policy to compare.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct DnsName(String);

impl DnsName {
    fn parse(path: &str, raw: &str) -> Result<Self, AgentError> {
        let label_ok = |l: &str| {
            (1..=63).contains(&l.len())
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if raw.is_empty() || raw.len() > MAX_DNS_NAME_LEN || !raw.split('.').all(label_ok) {
            return Err(invalid(
                path,
                format!(
                    "{} is not a DNS name (at most {MAX_DNS_NAME_LEN} characters, labels of 1 to 63 characters of [A-Za-z0-9-] not starting or ending with '-')",
                    quote(raw)
                ),
            ));
        }
        Ok(Self(raw.to_ascii_lowercase()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DnsName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DnsName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// One NIC the host attached, found in the guest by its MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// Its name in the guest.
    pub name: IfName,
    /// The NIC's MAC address.
    pub mac: Mac,
    /// MTU.
    pub mtu: u32,
    /// Addresses, with their prefix length.
    pub addresses: Vec<IpPrefix>,
}

impl Interface {
    /// Whether any address is IPv6.
    pub fn has_ipv6(&self) -> bool {
        self.addresses.iter().any(|a| a.addr.is_ipv6())
    }
}

/// A route of the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Destination network (no host bits).
    pub destination: IpPrefix,
    /// Next hop, of the destination's family; `None` for an on-link (scope link) route.
    pub gateway: Option<IpAddr>,
    /// The interface, one of [`PodNetwork::interfaces`].
    pub device: IfName,
    /// Preferred source address, one of the interfaces' addresses.
    pub source: Option<IpAddr>,
    /// Priority; 0 for the kernel's default.
    pub metric: u32,
}

/// The resolver configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dns {
    /// Name servers.
    pub servers: Vec<IpAddr>,
    /// Search domains.
    pub searches: Vec<DnsName>,
    /// `options` words, each of `[A-Za-z0-9_.:-]`.
    pub options: Vec<String>,
}

/// An extra `/etc/hosts` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEntry {
    /// The address.
    pub ip: IpAddr,
    /// Its names, 1 to [`MAX_HOST_NAMES`].
    pub names: Vec<DnsName>,
}

/// The pod's network, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodNetwork {
    /// The NICs.
    pub interfaces: Vec<Interface>,
    /// Routes beyond each address's own on-link prefix.
    pub routes: Vec<Route>,
    /// The resolver configuration.
    pub dns: Dns,
    /// Extra `/etc/hosts` entries.
    pub hosts: Vec<HostEntry>,
}

/// Why an interface address is not one a NIC may carry, if it is not.
fn unusable_interface_address(addr: IpAddr) -> Option<&'static str> {
    match addr {
        IpAddr::V4(a) if a.is_loopback() => Some("a loopback address"),
        IpAddr::V4(a) if a.is_multicast() => Some("a multicast address"),
        IpAddr::V4(a) if a.is_link_local() => Some("a link-local address"),
        IpAddr::V4(a) if a.is_unspecified() => Some("the unspecified address"),
        IpAddr::V4(a) if a.is_broadcast() => Some("the broadcast address"),
        IpAddr::V6(a) if a.is_loopback() => Some("a loopback address"),
        IpAddr::V6(a) if a.is_multicast() => Some("a multicast address"),
        IpAddr::V6(a) if a.is_unicast_link_local() => Some("a link-local address"),
        IpAddr::V6(a) if a.is_unspecified() => Some("the unspecified address"),
        IpAddr::V6(a) if a.to_ipv4_mapped().is_some() => Some("an IPv4-mapped address"),
        _ => None,
    }
}

fn parse_ip(path: &str, raw: &str) -> Result<IpAddr, AgentError> {
    raw.parse()
        .map_err(|_| invalid(path, format!("{} is not an IP address", quote(raw))))
}

fn family(addr: IpAddr) -> &'static str {
    if addr.is_ipv4() { "IPv4" } else { "IPv6" }
}

impl PodNetwork {
    /// Validates the protobuf description.
    pub fn decode(raw: pb::PodNetwork) -> Result<Self, AgentError> {
        let interfaces = decode_interfaces(&raw.interfaces)?;
        let routes = decode_routes(&raw.routes, &interfaces)?;
        let dns = decode_dns(&raw.dns.unwrap_or_default())?;
        let hosts = decode_hosts(&raw.hosts)?;
        Ok(Self {
            interfaces,
            routes,
            dns,
            hosts,
        })
    }

    /// Whether any interface has an IPv6 address.
    pub fn has_ipv6(&self) -> bool {
        self.interfaces.iter().any(Interface::has_ipv6)
    }

    /// Every interface address, in interface order.
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.interfaces
            .iter()
            .flat_map(|i| i.addresses.iter().map(IpPrefix::addr))
    }
}

fn decode_interfaces(raw: &[pb::NetworkInterface]) -> Result<Vec<Interface>, AgentError> {
    at_most("network.interfaces", raw.len(), MAX_INTERFACES)?;
    let mut interfaces: Vec<Interface> = Vec::with_capacity(raw.len());
    let mut seen_addresses = HashSet::new();
    for (i, nic) in raw.iter().enumerate() {
        let path = |field: &str| format!("network.interfaces[{i}].{field}");
        let name = IfName::parse(&path("name"), &nic.name)?;
        if interfaces.iter().any(|seen| seen.name == name) {
            return Err(invalid(
                path("name"),
                format!("{name} names an earlier interface too"),
            ));
        }
        let mac = Mac::parse(&path("mac"), &nic.mac)?;
        if interfaces.iter().any(|seen| seen.mac == mac) {
            return Err(invalid(
                path("mac"),
                format!("{mac} is an earlier interface's MAC too"),
            ));
        }
        at_most(&path("addresses"), nic.addresses.len(), MAX_ADDRESSES)?;
        let mut addresses = Vec::with_capacity(nic.addresses.len());
        for (j, raw_address) in nic.addresses.iter().enumerate() {
            let path = format!("network.interfaces[{i}].addresses[{j}]");
            let address = IpPrefix::parse(&path, raw_address)?;
            if let Some(kind) = unusable_interface_address(address.addr) {
                return Err(invalid(path, format!("{} is {kind}", address.addr)));
            }
            if address.len == 0 {
                return Err(invalid(
                    path,
                    "a prefix length of 0 makes every address on-link",
                ));
            }
            if !seen_addresses.insert(address.addr) {
                return Err(invalid(path, format!("{} is listed twice", address.addr)));
            }
            addresses.push(address);
        }
        let interface = Interface {
            name,
            mac,
            mtu: nic.mtu,
            addresses,
        };
        if !(MIN_MTU..=MAX_MTU).contains(&nic.mtu) {
            return Err(invalid(
                path("mtu"),
                format!("{} is outside {MIN_MTU}..={MAX_MTU}", nic.mtu),
            ));
        }
        if interface.has_ipv6() && nic.mtu < MIN_IPV6_MTU {
            return Err(invalid(
                path("mtu"),
                format!(
                    "{} is below {MIN_IPV6_MTU}, the least an interface with an IPv6 address needs",
                    nic.mtu
                ),
            ));
        }
        interfaces.push(interface);
    }
    Ok(interfaces)
}

fn decode_routes(
    raw: &[pb::NetworkRoute],
    interfaces: &[Interface],
) -> Result<Vec<Route>, AgentError> {
    at_most("network.routes", raw.len(), MAX_ROUTES)?;
    let mut routes: Vec<Route> = Vec::with_capacity(raw.len());
    for (i, r) in raw.iter().enumerate() {
        let path = |field: &str| format!("network.routes[{i}].{field}");
        let destination = IpPrefix::parse(&path("destination"), &r.destination)?;
        if !destination.is_network() {
            return Err(invalid(
                path("destination"),
                format!("{destination} has bits set beyond its prefix length"),
            ));
        }
        if destination.addr.is_loopback() {
            return Err(invalid(
                path("destination"),
                format!("{destination} is a loopback destination"),
            ));
        }
        let gateway = if r.gateway.is_empty() {
            None
        } else {
            let gateway = parse_ip(&path("gateway"), &r.gateway)?;
            if gateway.is_ipv4() != destination.addr.is_ipv4() {
                return Err(invalid(
                    path("gateway"),
                    format!(
                        "{gateway} is {}, the destination {destination} {}",
                        family(gateway),
                        family(destination.addr)
                    ),
                ));
            }
            if gateway.is_loopback() || gateway.is_multicast() || gateway.is_unspecified() {
                return Err(invalid(
                    path("gateway"),
                    format!("{gateway} cannot be a next hop"),
                ));
            }
            Some(gateway)
        };
        let device = IfName::parse(&path("device"), &r.device)?;
        if !interfaces.iter().any(|nic| nic.name == device) {
            return Err(invalid(
                path("device"),
                format!("{device} is not one of network.interfaces"),
            ));
        }
        let source = if r.source.is_empty() {
            None
        } else {
            let source = parse_ip(&path("source"), &r.source)?;
            if source.is_ipv4() != destination.addr.is_ipv4() {
                return Err(invalid(
                    path("source"),
                    format!(
                        "{source} is {}, the destination {destination} {}",
                        family(source),
                        family(destination.addr)
                    ),
                ));
            }
            let local = interfaces
                .iter()
                .flat_map(|nic| &nic.addresses)
                .any(|a| a.addr == source);
            if !local {
                return Err(invalid(
                    path("source"),
                    format!("{source} is not one of the interfaces' addresses"),
                ));
            }
            Some(source)
        };
        if routes
            .iter()
            .any(|seen| seen.destination == destination && seen.metric == r.metric)
        {
            return Err(invalid(
                path("destination"),
                format!(
                    "{destination} with metric {} is an earlier route's too",
                    r.metric
                ),
            ));
        }
        routes.push(Route {
            destination,
            gateway,
            device,
            source,
            metric: r.metric,
        });
    }
    Ok(routes)
}

fn decode_dns(raw: &pb::DnsConfig) -> Result<Dns, AgentError> {
    at_most("network.dns.servers", raw.servers.len(), MAX_DNS_SERVERS)?;
    let mut servers = Vec::with_capacity(raw.servers.len());
    for (i, s) in raw.servers.iter().enumerate() {
        let path = format!("network.dns.servers[{i}]");
        let server = parse_ip(&path, s)?;
        if server.is_loopback() || server.is_multicast() || server.is_unspecified() {
            return Err(invalid(
                path,
                format!("{server} cannot be a pod's name server"),
            ));
        }
        servers.push(server);
    }
    at_most("network.dns.searches", raw.searches.len(), MAX_SEARCHES)?;
    let mut searches = Vec::with_capacity(raw.searches.len());
    for (i, s) in raw.searches.iter().enumerate() {
        searches.push(DnsName::parse(&format!("network.dns.searches[{i}]"), s)?);
    }
    let total: usize = searches.iter().map(|s| s.0.len()).sum();
    if total > MAX_SEARCH_CHARS {
        return Err(invalid(
            "network.dns.searches",
            format!("{total} characters together; at most {MAX_SEARCH_CHARS}"),
        ));
    }
    at_most("network.dns.options", raw.options.len(), MAX_DNS_OPTIONS)?;
    let mut options = Vec::with_capacity(raw.options.len());
    for (i, o) in raw.options.iter().enumerate() {
        let ok = !o.is_empty()
            && o.len() <= MAX_DNS_OPTION_LEN
            && o.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
        if !ok {
            return Err(invalid(
                format!("network.dns.options[{i}]"),
                format!(
                    "{} is not 1 to {MAX_DNS_OPTION_LEN} characters of [A-Za-z0-9_.:-]",
                    quote(o)
                ),
            ));
        }
        options.push(o.clone());
    }
    Ok(Dns {
        servers,
        searches,
        options,
    })
}

fn decode_hosts(raw: &[pb::HostEntry]) -> Result<Vec<HostEntry>, AgentError> {
    at_most("network.hosts", raw.len(), MAX_HOSTS)?;
    let mut hosts = Vec::with_capacity(raw.len());
    for (i, h) in raw.iter().enumerate() {
        let ip = parse_ip(&format!("network.hosts[{i}].ip"), &h.ip)?;
        let path = format!("network.hosts[{i}].names");
        if h.names.is_empty() {
            return Err(invalid(path, "an entry needs at least one name"));
        }
        at_most(&path, h.names.len(), MAX_HOST_NAMES)?;
        let names = h
            .names
            .iter()
            .enumerate()
            .map(|(j, n)| DnsName::parse(&format!("network.hosts[{i}].names[{j}]"), n))
            .collect::<Result<Vec<_>, _>>()?;
        hosts.push(HostEntry { ip, names });
    }
    Ok(hosts)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The network of a dual-stack pod with a second NIC, as the host would describe it.
    pub(crate) fn full() -> pb::PodNetwork {
        pb::PodNetwork {
            interfaces: vec![
                pb::NetworkInterface {
                    name: "eth0".into(),
                    mac: "02:42:AC:11:00:05".into(),
                    mtu: 1450,
                    addresses: vec!["192.0.2.5/24".into(), "2001:db8::5/64".into()],
                },
                pb::NetworkInterface {
                    name: "net1".into(),
                    mac: "02:42:ac:11:00:06".into(),
                    mtu: 1200,
                    addresses: vec!["198.51.100.7/32".into()],
                },
            ],
            routes: vec![
                pb::NetworkRoute {
                    destination: "0.0.0.0/0".into(),
                    gateway: "192.0.2.1".into(),
                    device: "eth0".into(),
                    source: String::new(),
                    metric: 0,
                },
                pb::NetworkRoute {
                    destination: "::/0".into(),
                    gateway: "fe80::1".into(),
                    device: "eth0".into(),
                    source: "2001:db8::5".into(),
                    metric: 1024,
                },
                pb::NetworkRoute {
                    destination: "203.0.113.0/24".into(),
                    gateway: String::new(),
                    device: "net1".into(),
                    source: "198.51.100.7".into(),
                    metric: 10,
                },
            ],
            dns: Some(pb::DnsConfig {
                servers: vec!["10.96.0.10".into(), "2001:db8::53".into()],
                searches: vec![
                    "default.svc.cluster.local".into(),
                    "svc.cluster.local".into(),
                    "cluster.local".into(),
                ],
                options: vec!["ndots:5".into(), "edns0".into()],
            }),
            hosts: vec![pb::HostEntry {
                ip: "192.0.2.99".into(),
                names: vec!["db.internal".into(), "db".into()],
            }],
        }
    }

    fn refused(edit: impl FnOnce(&mut pb::PodNetwork), expected: &str) {
        let mut raw = full();
        edit(&mut raw);
        match PodNetwork::decode(raw) {
            Err(AgentError::InvalidArgument(message)) => assert!(
                message.contains(expected),
                "{message:?} does not contain {expected:?}"
            ),
            other => panic!("expected a refusal containing {expected:?}, got {other:?}"),
        }
    }

    #[test]
    fn a_full_description_decodes_into_typed_values() {
        let network = PodNetwork::decode(full()).unwrap();
        assert_eq!(network.interfaces.len(), 2);
        let eth0 = &network.interfaces[0];
        assert_eq!(eth0.name.as_str(), "eth0");
        assert_eq!(eth0.mac.to_string(), "02:42:ac:11:00:05");
        assert_eq!(eth0.mac.octets(), [0x02, 0x42, 0xac, 0x11, 0, 5]);
        assert_eq!(eth0.mtu, 1450);
        assert_eq!(
            eth0.addresses
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["192.0.2.5/24", "2001:db8::5/64"]
        );
        assert!(eth0.has_ipv6());
        assert!(!network.interfaces[1].has_ipv6());
        assert!(network.has_ipv6());
        let default = &network.routes[0];
        assert_eq!(default.destination.to_string(), "0.0.0.0/0");
        assert_eq!(default.gateway, Some("192.0.2.1".parse().unwrap()));
        assert_eq!(default.source, None);
        assert_eq!(network.routes[1].metric, 1024);
        assert_eq!(network.routes[2].gateway, None);
        assert_eq!(
            network.routes[2].source,
            Some("198.51.100.7".parse().unwrap())
        );
        assert_eq!(network.dns.servers.len(), 2);
        assert_eq!(network.dns.searches[2].as_str(), "cluster.local");
        assert_eq!(network.dns.options, ["ndots:5", "edns0"]);
        assert_eq!(network.hosts[0].names[1].as_str(), "db");
        assert_eq!(network.addresses().count(), 3);
        // Nothing at all is a valid (empty) description too.
        assert_eq!(
            PodNetwork::decode(pb::PodNetwork::default()).unwrap(),
            PodNetwork::default()
        );
    }

    #[test]
    fn counts_are_bounded() {
        let nic = |i: usize| pb::NetworkInterface {
            name: format!("eth{i}"),
            mac: format!("02:00:00:00:00:{i:02x}"),
            mtu: 1500,
            addresses: vec![],
        };
        refused(
            |n| n.interfaces = (0..=MAX_INTERFACES).map(nic).collect(),
            "network.interfaces: 9 entries; at most 8",
        );
        refused(
            |n| {
                n.interfaces[1].addresses = (0..=MAX_ADDRESSES)
                    .map(|i| format!("198.51.100.{}/32", i + 1))
                    .collect()
            },
            "network.interfaces[1].addresses: 17 entries; at most 16",
        );
        refused(
            |n| n.routes = vec![n.routes[0].clone(); MAX_ROUTES + 1],
            "network.routes: 65 entries; at most 64",
        );
        refused(
            |n| n.dns.as_mut().unwrap().servers = vec!["192.0.2.53".into(); MAX_DNS_SERVERS + 1],
            "network.dns.servers: 4 entries; at most 3",
        );
        refused(
            |n| n.dns.as_mut().unwrap().searches = vec!["a.b".into(); MAX_SEARCHES + 1],
            "network.dns.searches: 33 entries; at most 32",
        );
        refused(
            |n| n.dns.as_mut().unwrap().searches = vec!["a".repeat(63); 33],
            "network.dns.searches: 33 entries; at most 32",
        );
        refused(
            |n| {
                n.dns.as_mut().unwrap().searches = (0..32)
                    .map(|i| format!("{}.{i:02}", "a".repeat(63)))
                    .collect()
            },
            "network.dns.searches: 2112 characters together; at most 2048",
        );
        refused(
            |n| n.dns.as_mut().unwrap().options = vec!["rotate".into(); MAX_DNS_OPTIONS + 1],
            "network.dns.options: 17 entries; at most 16",
        );
        refused(
            |n| n.hosts = vec![n.hosts[0].clone(); MAX_HOSTS + 1],
            "network.hosts: 65 entries; at most 64",
        );
        refused(
            |n| n.hosts[0].names = vec!["h".into(); MAX_HOST_NAMES + 1],
            "network.hosts[0].names: 9 entries; at most 8",
        );
        refused(
            |n| n.hosts[0].names.clear(),
            "network.hosts[0].names: an entry needs at least one name",
        );
    }

    #[test]
    fn interface_names_are_kernel_names() {
        for bad in ["", "eth0 ", "eth/0", "a-very-long-name", "é", "eth0\n"] {
            refused(
                |n| n.interfaces[0].name = bad.into(),
                &format!("network.interfaces[0].name: {bad:?} is not 1 to 15 characters"),
            );
        }
        for reserved in ["lo", ".", "..", "all", "default"] {
            refused(
                |n| n.interfaces[0].name = reserved.into(),
                &format!("network.interfaces[0].name: {reserved:?} is reserved"),
            );
        }
        refused(
            |n| n.interfaces[1].name = "eth0".into(),
            "network.interfaces[1].name: eth0 names an earlier interface too",
        );
        for good in ["eth0", "eth5", "veth_a.b-c", "abcdefghijklmno"] {
            let mut raw = full();
            raw.interfaces[0].name = good.into();
            for r in &mut raw.routes {
                if r.device == "eth0" {
                    r.device = good.into();
                }
            }
            PodNetwork::decode(raw).unwrap();
        }
    }

    #[test]
    fn macs_are_unicast_and_distinct() {
        for (bad, why) in [
            ("02:42:ac:11:00", "is not a MAC address"),
            ("02-42-ac-11-00-05", "is not a MAC address"),
            ("02:42:ac:11:00:0g", "is not a MAC address"),
            ("02:42:ac:11:00:+5", "is not a MAC address"),
            ("0242ac110005xxxxx", "is not a MAC address"),
            ("00:00:00:00:00:00", "the all-zero MAC address"),
            (
                "01:00:5e:00:00:01",
                "01:00:5e:00:00:01 is a multicast MAC address",
            ),
            ("ff:ff:ff:ff:ff:ff", "is a multicast MAC address"),
        ] {
            refused(
                |n| n.interfaces[0].mac = bad.into(),
                "network.interfaces[0].mac: ",
            );
            refused(|n| n.interfaces[0].mac = bad.into(), why);
        }
        refused(
            |n| n.interfaces[1].mac = "02:42:ac:11:00:05".into(),
            "network.interfaces[1].mac: 02:42:ac:11:00:05 is an earlier interface's MAC too",
        );
    }

    /// Found by the `agent_request` fuzz target: 17 bytes with a multi-byte character where an
    /// octet's two digits are sliced panicked the agent (`end byte index 2 is not a char
    /// boundary`) instead of refusing the request.
    #[test]
    fn non_ascii_macs_are_refused_not_a_panic() {
        for bad in ["0\u{3be}00:00:00:00:01", "02:42:ac:11:0\u{3be}:5"] {
            assert_eq!(bad.len(), 17);
            refused(
                |n| n.interfaces[0].mac = bad.into(),
                "network.interfaces[0].mac: ",
            );
            refused(|n| n.interfaces[0].mac = bad.into(), "is not a MAC address");
        }
    }

    #[test]
    fn mtus_are_bounded() {
        refused(
            |n| n.interfaces[1].mtu = 70000,
            "network.interfaces[1].mtu: 70000 is outside 68..=65535",
        );
        refused(
            |n| n.interfaces[1].mtu = 67,
            "network.interfaces[1].mtu: 67 is outside 68..=65535",
        );
        refused(
            |n| n.interfaces[0].mtu = 1279,
            "network.interfaces[0].mtu: 1279 is below 1280",
        );
        let mut raw = full();
        raw.interfaces[1].mtu = 68;
        PodNetwork::decode(raw).unwrap();
    }

    #[test]
    fn interface_addresses_are_usable_unicast() {
        for (bad, why) in [
            ("192.0.2.5", "is not an address/prefix-length"),
            ("192.0.2.5/", "is not an address/prefix-length"),
            ("192.0.2.5/+24", "is not an address/prefix-length"),
            ("192.0.2.5/024", "is not an address/prefix-length"),
            ("192.0.2.05/24", "is not an address/prefix-length"),
            ("fe80::1%eth0/64", "is not an address/prefix-length"),
            ("192.0.2.5/33", "prefix length 33 is longer than 32"),
            ("2001:db8::1/129", "prefix length 129 is longer than 128"),
            ("192.0.2.5/0", "a prefix length of 0"),
            ("127.0.0.2/8", "127.0.0.2 is a loopback address"),
            ("::1/128", "::1 is a loopback address"),
            ("224.0.0.1/4", "is a multicast address"),
            ("ff02::1/64", "is a multicast address"),
            ("169.254.1.1/16", "is a link-local address"),
            ("fe80::5/64", "is a link-local address"),
            ("0.0.0.0/8", "is the unspecified address"),
            ("::/64", "is the unspecified address"),
            ("255.255.255.255/32", "is the broadcast address"),
            ("::ffff:192.0.2.5/120", "is an IPv4-mapped address"),
        ] {
            refused(
                |n| n.interfaces[1].addresses = vec![bad.into()],
                "network.interfaces[1].addresses[0]: ",
            );
            refused(|n| n.interfaces[1].addresses = vec![bad.into()], why);
        }
        refused(
            |n| n.interfaces[1].addresses = vec!["192.0.2.5/32".into()],
            "network.interfaces[1].addresses[0]: 192.0.2.5 is listed twice",
        );
        // Host bits are normal in an interface address.
        let mut raw = full();
        raw.interfaces[1].addresses = vec!["198.51.100.7/24".into()];
        PodNetwork::decode(raw).unwrap();
    }

    #[test]
    fn routes_are_well_formed_and_name_an_interface() {
        refused(
            |n| n.routes[2].destination = "203.0.113.1/24".into(),
            "network.routes[2].destination: 203.0.113.1/24 has bits set beyond its prefix length",
        );
        refused(
            |n| n.routes[1].destination = "2001:db8::1/64".into(),
            "network.routes[1].destination: 2001:db8::1/64 has bits set",
        );
        refused(
            |n| n.routes[2].destination = "127.0.0.0/8".into(),
            "network.routes[2].destination: 127.0.0.0/8 is a loopback destination",
        );
        refused(
            |n| n.routes[0].destination = "default".into(),
            "network.routes[0].destination: \"default\" is not an address/prefix-length",
        );
        refused(
            |n| n.routes[0].gateway = "2001:db8::1".into(),
            "network.routes[0].gateway: 2001:db8::1 is IPv6, the destination 0.0.0.0/0 IPv4",
        );
        refused(
            |n| n.routes[0].gateway = "gateway".into(),
            "network.routes[0].gateway: \"gateway\" is not an IP address",
        );
        refused(
            |n| n.routes[0].gateway = "0.0.0.0".into(),
            "network.routes[0].gateway: 0.0.0.0 cannot be a next hop",
        );
        refused(
            |n| n.routes[0].device = "eth9".into(),
            "network.routes[0].device: eth9 is not one of network.interfaces",
        );
        refused(
            |n| n.routes[0].device = String::new(),
            "network.routes[0].device: \"\" is not 1 to 15",
        );
        refused(
            |n| n.routes[2].source = "192.0.2.77".into(),
            "network.routes[2].source: 192.0.2.77 is not one of the interfaces' addresses",
        );
        refused(
            |n| n.routes[2].source = "2001:db8::5".into(),
            "network.routes[2].source: 2001:db8::5 is IPv6, the destination 203.0.113.0/24 IPv4",
        );
        refused(
            |n| {
                let again = n.routes[0].clone();
                n.routes.push(again);
            },
            "network.routes[3].destination: 0.0.0.0/0 with metric 0 is an earlier route's too",
        );
        // The same destination at another metric is a backup route, which is fine; so is an
        // IPv4 link-local gateway (Calico's 169.254.1.1).
        let mut raw = full();
        let mut backup = raw.routes[0].clone();
        backup.metric = 100;
        backup.gateway = "169.254.1.1".into();
        raw.routes.push(backup);
        PodNetwork::decode(raw).unwrap();
    }

    #[test]
    fn dns_is_safe_to_write_into_resolv_conf() {
        refused(
            |n| n.dns.as_mut().unwrap().servers[0] = "127.0.0.53".into(),
            "network.dns.servers[0]: 127.0.0.53 cannot be a pod's name server",
        );
        refused(
            |n| n.dns.as_mut().unwrap().servers[0] = "ff02::fb".into(),
            "cannot be a pod's name server",
        );
        refused(
            |n| n.dns.as_mut().unwrap().servers[0] = "::".into(),
            "cannot be a pod's name server",
        );
        refused(
            |n| n.dns.as_mut().unwrap().servers[1] = "10.96.0.10\nnameserver 6.6.6.6".into(),
            "network.dns.servers[1]: \"10.96.0.10\\nnameserver 6.6.6.6\" is not an IP address",
        );
        for bad in [
            "cluster.local\noptions debug",
            "cluster..local",
            ".cluster.local",
            "-cluster.local",
            "cluster-.local",
            "under_score.local",
            "cluster.local.",
        ] {
            refused(
                |n| n.dns.as_mut().unwrap().searches[1] = bad.into(),
                &format!("network.dns.searches[1]: {bad:?} is not a DNS name"),
            );
        }
        refused(
            |n| n.dns.as_mut().unwrap().searches[0] = format!("{}.local", "a".repeat(64)),
            "is not a DNS name",
        );
        for bad in [
            "",
            "ndots:5 debug",
            "a\nnameserver 1.1.1.1",
            &"x".repeat(65),
            "opt=1",
        ] {
            refused(
                |n| n.dns.as_mut().unwrap().options[1] = bad.into(),
                "network.dns.options[1]: ",
            );
        }
        // A long host string is quoted shortened and escaped.
        let long = format!("{}\u{7}", "y".repeat(100));
        let mut raw = full();
        raw.dns.as_mut().unwrap().options[0] = long;
        let Err(AgentError::InvalidArgument(message)) = PodNetwork::decode(raw) else {
            panic!("a long option was accepted");
        };
        assert!(
            message.contains(&format!("\"{}\"…", "y".repeat(64))),
            "{message}"
        );
        assert!(!message.contains(&"y".repeat(65)), "{message}");
    }

    #[test]
    fn host_entries_are_addresses_and_names() {
        refused(
            |n| n.hosts[0].ip = "db".into(),
            "network.hosts[0].ip: \"db\" is not an IP address",
        );
        refused(
            |n| n.hosts[0].names[1] = "db host".into(),
            "network.hosts[0].names[1]: \"db host\" is not a DNS name",
        );
        refused(
            |n| n.hosts[0].names[0] = "a".repeat(254),
            "network.hosts[0].names[0]: ",
        );
    }
}
