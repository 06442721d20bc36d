//! Pod networking, host side: a Coffer pod is a member of the Kubernetes pod network the way
//! Kata's "tcfilter" model makes it one.
//!
//! CNI configures the pod's network namespace (the pause container's) as for any pod: a `veth`
//! `eth0` with addresses and routes. [`attach`] reads that configuration over netlink, creates one
//! tap per CNI interface in the same namespace and joins each pair with tc: an ingress qdisc on
//! both and a match-all filter redirecting every frame to the other's egress. The VM gets the
//! taps as virtio-net NICs carrying the CNI interfaces' MACs, and the guest agent is told (in
//! `CreateSandbox`, once) the interfaces' names, addresses and MTUs and the routes, which it
//! applies to the NICs it finds by MAC. Frames then pass between the pod network and the guest
//! without the namespace's own stack seeing them; the node side sees the MAC and addresses CNI
//! assigned, so nothing on the node (ARP entries, anti-spoofing, network policy) can tell a
//! Coffer pod from another.
//!
//! What is left on the host is the CNI interfaces' ingress qdiscs (the filters go with them) and
//! the taps, which are not persistent: they disappear when the last descriptor closes, the VMM's.
//! [`AttachedNetwork::detach`] removes the qdiscs; a namespace CNI already deleted is no error.
//! After a crash (the runtime killed), the qdiscs stay: the next [`attach`] of the namespace
//! replaces them, and [`collect_stale`] removes them given the [`NetworkRecord`] the sandbox
//! wrote.

mod describe;
mod netns;

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use coffer_agent_protocol::v1 as pb;
use serde::{Deserialize, Serialize};

pub use describe::{Found, FoundInterface, MAX_ADDRESSES, MAX_INTERFACES, MAX_ROUTES};
use netns::{Entry, NetnsId};

/// The name suffix of the taps Coffer creates (`tap0_coffer`, …); links with it are never taken
/// for CNI interfaces.
pub const TAP_SUFFIX: &str = "_coffer";

/// The tap for the `n`th CNI interface.
pub fn tap_name(n: usize) -> String {
    format!("tap{n}{TAP_SUFFIX}")
}

/// Pod network failures.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The namespace file could not be opened.
    #[error("opening network namespace {path}: {source}")]
    OpenNetns {
        /// The namespace path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The namespace could not be entered (not a network namespace, or no privilege).
    #[error("entering network namespace {path}: {source}")]
    EnterNetns {
        /// The namespace path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// No netlink socket (or no runtime to drive one) in the namespace.
    #[error("netlink socket in {path}: {source}")]
    Socket {
        /// The namespace path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The thread that works inside the namespace could not start or died.
    #[error("namespace worker thread: {0}")]
    Worker(#[source] io::Error),
    /// A netlink operation failed.
    #[error("{op} {interface}: {source}")]
    Netlink {
        /// What was done.
        op: &'static str,
        /// On which interface (`*`: on all).
        interface: String,
        /// Cause (the kernel's errno when it gave one).
        #[source]
        source: io::Error,
    },
    /// A tap could not be created.
    #[error("creating tap {name}: {source}")]
    Tap {
        /// The tap's name.
        name: String,
        /// Cause (EBUSY: a live sandbox has this namespace attached).
        #[source]
        source: io::Error,
    },
    /// The namespace holds something a guest NIC cannot carry or the guest cannot be told.
    #[error("unsupported pod network{}: {reason}", interface_context(.interface))]
    Unsupported {
        /// The interface concerned; empty when the namespace as a whole is.
        interface: String,
        /// What is wrong.
        reason: String,
    },
    /// A setting given to the runtime is not acceptable.
    #[error("invalid network setting {setting:?}: {reason}")]
    InvalidSetting {
        /// The setting as given.
        setting: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The attachment record could not be written or read.
    #[error("{op} {path}: {source}")]
    Record {
        /// What was done.
        op: &'static str,
        /// The record file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

fn interface_context(interface: &str) -> String {
    if interface.is_empty() {
        String::new()
    } else {
        format!(" (interface {interface})")
    }
}

/// An Ethernet MAC address, shown as `aa:bb:cc:dd:ee:ff`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The MAC in `bytes`, when they are exactly six.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 6]>::try_from(bytes).ok().map(Self)
    }

    /// Neither multicast (group bit) nor all zeros.
    pub fn is_unicast(&self) -> bool {
        self.0[0] & 1 == 0 && self.0 != [0; 6]
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Name servers the resolver uses (glibc's and musl's `MAXNS`); it ignores later lines, and so does
/// [`DnsConfig::from_resolv_conf`] (the guest accepts no more).
pub const MAX_NAME_SERVERS: usize = 3;

/// The pod's resolver configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsConfig {
    /// Name servers.
    pub servers: Vec<IpAddr>,
    /// Search domains.
    pub searches: Vec<String>,
    /// resolv.conf options (`ndots:5`).
    pub options: Vec<String>,
}

impl DnsConfig {
    /// The configuration a `resolv.conf` holds (as the kubelet writes one for the pod's sandbox):
    /// the first [`MAX_NAME_SERVERS`] `nameserver` lines (addresses that do not parse are skipped,
    /// as the resolver skips them),
    /// the last `search` or `domain` line, and every `options` line. Comments (`#`, `;`) and
    /// other keywords are ignored.
    pub fn from_resolv_conf(text: &str) -> Self {
        let mut dns = Self::default();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    if let Some(ip) = words.next().and_then(|w| w.parse().ok())
                        && dns.servers.len() < MAX_NAME_SERVERS
                    {
                        dns.servers.push(ip);
                    }
                }
                Some("search" | "domain") => {
                    dns.searches = words
                        .take_while(|w| !w.starts_with(['#', ';']))
                        .map(str::to_owned)
                        .collect();
                }
                Some("options") => dns.options.extend(
                    words
                        .take_while(|w| !w.starts_with(['#', ';']))
                        .map(str::to_owned),
                ),
                _ => {}
            }
        }
        dns
    }

    fn to_pb(&self) -> pb::DnsConfig {
        pb::DnsConfig {
            servers: self.servers.iter().map(IpAddr::to_string).collect(),
            searches: self.searches.clone(),
            options: self.options.clone(),
        }
    }
}

/// An extra `/etc/hosts` entry of the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEntry {
    /// The address.
    pub ip: IpAddr,
    /// Its names.
    pub names: Vec<String>,
}

impl FromStr for HostEntry {
    type Err = NetworkError;

    /// `NAME:IP` (`docker run --add-host` form; an IPv6 address may follow the first colon).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |reason| NetworkError::InvalidSetting {
            setting: s.to_owned(),
            reason,
        };
        let (name, ip) = s.split_once(':').ok_or(invalid("expected NAME:IP"))?;
        if name.is_empty() {
            return Err(invalid("the name is empty"));
        }
        let ip = ip
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| invalid("not an IP address after the name"))?;
        Ok(Self {
            ip,
            names: vec![name.to_owned()],
        })
    }
}

/// The pod network a sandbox attaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// The pod's network namespace, configured by CNI: the pause container's
    /// `linux.namespaces[type=network].path`, e.g. `/var/run/netns/cni-…`.
    pub netns: PathBuf,
    /// The pod's resolver configuration.
    pub dns: DnsConfig,
    /// Extra `/etc/hosts` entries.
    pub hosts: Vec<HostEntry>,
}

impl NetworkConfig {
    /// A configuration for `netns` with no resolver and no extra hosts.
    pub fn new(netns: impl Into<PathBuf>) -> Self {
        Self {
            netns: netns.into(),
            dns: DnsConfig::default(),
            hosts: Vec::new(),
        }
    }

    /// What the guest is told: the attached network's description with this configuration's
    /// resolver and hosts entries.
    pub fn pod_network(&self, attached: &AttachedNetwork) -> pb::PodNetwork {
        pb::PodNetwork {
            dns: Some(self.dns.to_pb()),
            hosts: self
                .hosts
                .iter()
                .map(|h| pb::HostEntry {
                    ip: h.ip.to_string(),
                    names: h.names.clone(),
                })
                .collect(),
            ..attached.description()
        }
    }
}

/// What a sandbox attached, kept in its directory so a garbage collector can clean after a crash
/// (see [`collect_stale`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkRecord {
    /// The namespace.
    pub netns: PathBuf,
    /// The CNI interfaces that got an ingress qdisc.
    pub interfaces: Vec<String>,
}

impl NetworkRecord {
    /// The record's file name in a sandbox directory.
    pub const FILE: &'static str = "network.json";

    /// Writes the record into `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), NetworkError> {
        let path = dir.join(Self::FILE);
        let json = serde_json::to_vec_pretty(self).map_err(|e| NetworkError::Record {
            op: "encode",
            path: path.clone(),
            source: e.into(),
        })?;
        std::fs::write(&path, json).map_err(|source| NetworkError::Record {
            op: "write",
            path,
            source,
        })
    }

    /// The record in `dir`, `None` when there is none.
    pub fn read(dir: &Path) -> Result<Option<Self>, NetworkError> {
        let path = dir.join(Self::FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(NetworkError::Record {
                    op: "read",
                    path,
                    source,
                });
            }
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| NetworkError::Record {
                op: "decode",
                path,
                source: e.into(),
            })
    }
}

/// A CNI interface joined to its tap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedInterface {
    /// The CNI interface (and the guest's interface) name.
    pub name: String,
    /// Its tap.
    pub tap: String,
    /// The CNI interface's MAC, which the guest NIC takes.
    pub mac: MacAddr,
    /// The CNI interface's MTU, which the tap and the guest NIC take.
    pub mtu: u32,
}

/// A namespace's network joined to taps, until [`detach`](Self::detach)ed (or, best effort,
/// dropped).
#[derive(Debug)]
pub struct AttachedNetwork {
    netns: PathBuf,
    id: NetnsId,
    interfaces: Vec<AttachedInterface>,
    taps: Vec<OwnedFd>,
    found: Found,
    attached: bool,
}

/// Attaches the network of the namespace at `netns`: reads its CNI interfaces, addresses and
/// routes, creates a tap per interface, and redirects each pair both ways. An ingress qdisc left
/// on a CNI interface by an attachment that was never detached (a crash) is replaced. Fails, and
/// leaves nothing, on a namespace a guest cannot be given (see [`NetworkError::Unsupported`]), or
/// when a live sandbox has it attached (its taps are busy).
pub async fn attach(netns: &Path) -> Result<AttachedNetwork, NetworkError> {
    let (id, (found, taps)) = netns::run(netns, Entry::Required, attach_here)
        .await?
        .ok_or_else(|| NetworkError::OpenNetns {
            path: netns.to_path_buf(),
            source: io::ErrorKind::NotFound.into(),
        })?;
    let interfaces = found
        .interfaces
        .iter()
        .enumerate()
        .map(|(n, i)| AttachedInterface {
            name: i.name.clone(),
            tap: tap_name(n),
            mac: i.mac,
            mtu: i.mtu,
        })
        .collect();
    tracing::info!(netns = %netns.display(), interfaces = ?found.interfaces, routes = found.routes.len(), "pod network attached");
    Ok(AttachedNetwork {
        netns: netns.to_path_buf(),
        id,
        interfaces,
        taps,
        found,
        attached: true,
    })
}

/// The attach work inside the namespace.
async fn attach_here(handle: rtnetlink::Handle) -> Result<(Found, Vec<OwnedFd>), NetworkError> {
    let links = netns::links(&handle).await?;
    let addresses = netns::addresses(&handle).await?;
    let routes = netns::routes(&handle).await?;
    let found = describe::describe(&links, &addresses, &routes)?;
    let mut taps = Vec::new();
    let mut pairs = Vec::new();
    for (n, interface) in found.interfaces.iter().enumerate() {
        let name = tap_name(n);
        let fd = crate::sys::open_tap(&name).map_err(|source| NetworkError::Tap {
            name: name.clone(),
            source,
        })?;
        let index = netns::link_index(&handle, &name)
            .await?
            .ok_or_else(|| NetworkError::Tap {
                name: name.clone(),
                source: io::Error::other("created but not found"),
            })?;
        netns::configure_tap(&handle, index, &name, interface.mtu).await?;
        taps.push(fd);
        pairs.push(((interface.index, interface.name.as_str()), (index, name)));
    }
    for ((cni, cni_name), (tap, tap_name)) in &pairs {
        let joined = async {
            netns::remove_ingress(&handle, *cni, cni_name).await?;
            netns::add_ingress(&handle, *cni, cni_name).await?;
            netns::add_ingress(&handle, *tap, tap_name).await?;
            netns::redirect(&handle, (*cni, cni_name), (*tap, tap_name)).await?;
            netns::redirect(&handle, (*tap, tap_name), (*cni, cni_name)).await
        }
        .await;
        if let Err(err) = joined {
            // The taps go with their descriptors; the qdiscs added so far are removed.
            for ((cni, cni_name), _) in &pairs {
                if let Err(cleanup) = netns::remove_ingress(&handle, *cni, cni_name).await {
                    tracing::warn!(%cleanup, "undoing a failed attach");
                }
            }
            return Err(err);
        }
    }
    Ok((found, taps))
}

/// Removes the ingress qdisc (with its filters) of every interface in `interfaces` that exists.
async fn remove_qdiscs(
    handle: rtnetlink::Handle,
    interfaces: Vec<String>,
) -> Result<(), NetworkError> {
    let mut first_error = None;
    for name in &interfaces {
        let removed = async {
            match netns::link_index(&handle, name).await? {
                Some(index) => netns::remove_ingress(&handle, index, name).await,
                None => Ok(()),
            }
        }
        .await;
        if let Err(err) = removed {
            tracing::warn!(interface = %name, %err, "removing the ingress qdisc");
            first_error.get_or_insert(err);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// What [`collect_stale`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaleNetwork {
    /// The ingress qdiscs (and filters) of the recorded interfaces are gone.
    Removed,
    /// A live sandbox has the namespace attached again (one of our taps is there; a tap lives
    /// only while a VMM or an attaching runtime holds it): its attachment replaced what the
    /// crash left, and its detach removes it. Nothing was touched.
    InUse,
    /// The namespace is gone (CNI deleted it), or its path names another one now.
    Gone,
}

/// Removes what an attachment that was never detached left on `interfaces` of the namespace at
/// `netns` (their ingress qdiscs and filters): for a garbage collector reading a crashed
/// sandbox's [`NetworkRecord`], once the crashed sandbox's VMM is gone. A namespace or interface
/// that is gone is no error; a namespace a live sandbox has attached again is left alone.
pub async fn collect_stale(
    netns: &Path,
    interfaces: &[String],
) -> Result<StaleNetwork, NetworkError> {
    let interfaces = interfaces.to_vec();
    let outcome = netns::run(netns, Entry::IfStillThere(None), move |handle| {
        collect_here(handle, interfaces)
    })
    .await?;
    Ok(outcome.map_or(StaleNetwork::Gone, |(_, outcome)| outcome))
}

/// The work of [`collect_stale`] inside the namespace.
async fn collect_here(
    handle: rtnetlink::Handle,
    interfaces: Vec<String>,
) -> Result<StaleNetwork, NetworkError> {
    let links = netns::links(&handle).await?;
    if links
        .iter()
        .filter_map(describe::link_name)
        .any(|name| name.ends_with(TAP_SUFFIX))
    {
        return Ok(StaleNetwork::InUse);
    }
    remove_qdiscs(handle, interfaces).await?;
    Ok(StaleNetwork::Removed)
}

impl AttachedNetwork {
    /// The namespace.
    pub fn netns(&self) -> &Path {
        &self.netns
    }

    /// The CNI interfaces and their taps, in NIC order.
    pub fn interfaces(&self) -> &[AttachedInterface] {
        &self.interfaces
    }

    /// What was found in the namespace.
    pub fn found(&self) -> &Found {
        &self.found
    }

    /// The description of the interfaces (the CNI interfaces' names, MACs, MTUs and addresses)
    /// and routes for `CreateSandbox`; without resolver or hosts entries (see
    /// [`NetworkConfig::pod_network`]).
    pub fn description(&self) -> pb::PodNetwork {
        self.found.pod_network()
    }

    /// The taps' descriptors, in [`interfaces`](Self::interfaces) order, for the VMM; empty after
    /// the first call. Once the VMM has its copies, close these: a tap lives as long as a
    /// descriptor of it.
    pub fn take_taps(&mut self) -> Vec<OwnedFd> {
        std::mem::take(&mut self.taps)
    }

    /// What a garbage collector needs to clean up after a crash.
    pub fn record(&self) -> NetworkRecord {
        NetworkRecord {
            netns: self.netns.clone(),
            interfaces: self.interfaces.iter().map(|i| i.name.clone()).collect(),
        }
    }

    /// Undoes the attachment: closes the taps' descriptors still held and removes the CNI
    /// interfaces' ingress qdiscs. A namespace that is gone (CNI deleted it first) or that its
    /// path no longer names is no error.
    pub async fn detach(mut self) -> Result<(), NetworkError> {
        self.attached = false;
        drop(self.take_taps());
        let names = self.record().interfaces;
        let removed = netns::run(
            &self.netns,
            Entry::IfStillThere(Some(self.id)),
            move |handle| remove_qdiscs(handle, names),
        )
        .await?;
        if removed.is_none() {
            tracing::debug!(netns = %self.netns.display(), "network namespace already gone");
        }
        tracing::info!(netns = %self.netns.display(), "pod network detached");
        Ok(())
    }

    /// [`detach`](Self::detach) for a caller that cannot await (a `Drop` on a cancelled start):
    /// the same work on a thread of its own, waited for.
    pub fn detach_blocking(mut self) -> Result<(), NetworkError> {
        self.attached = false;
        drop(self.take_taps());
        let names = self.record().interfaces;
        netns::run_blocking(
            self.netns.clone(),
            Entry::IfStillThere(Some(self.id)),
            move |handle| remove_qdiscs(handle, names),
        )?;
        tracing::info!(netns = %self.netns.display(), "pod network detached");
        Ok(())
    }
}

impl Drop for AttachedNetwork {
    fn drop(&mut self) {
        if !self.attached {
            return;
        }
        drop(self.take_taps());
        let names = self.record().interfaces;
        tracing::warn!(netns = %self.netns.display(), "pod network dropped without detach; removing its qdiscs in the background");
        netns::run_detached(
            self.netns.clone(),
            Entry::IfStillThere(Some(self.id)),
            move |handle| remove_qdiscs(handle, names),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_as_the_kubelet_writes_it() {
        let dns = DnsConfig::from_resolv_conf(
            "# generated\nsearch old.example\nsearch default.svc.cluster.local svc.cluster.local cluster.local\n\
             nameserver 10.96.0.10\nnameserver fd00::a ; v6\nnameserver not-an-ip\n\
             options ndots:5\noptions edns0 # trailing\nsortlist 1.2.3.4\n",
        );
        assert_eq!(
            dns,
            DnsConfig {
                servers: vec![
                    "10.96.0.10".parse().expect("ip"),
                    "fd00::a".parse().expect("ip")
                ],
                searches: vec![
                    "default.svc.cluster.local".into(),
                    "svc.cluster.local".into(),
                    "cluster.local".into()
                ],
                options: vec!["ndots:5".into(), "edns0".into()],
            }
        );
        // Only the first three name servers count, as in the resolver.
        let dns = DnsConfig::from_resolv_conf(
            "nameserver 192.0.2.1\nnameserver 192.0.2.2\nnameserver 192.0.2.3\nnameserver 192.0.2.4\n",
        );
        assert_eq!(dns.servers.len(), MAX_NAME_SERVERS);
        assert_eq!(dns.servers[2], "192.0.2.3".parse::<IpAddr>().expect("ip"));
    }

    #[test]
    fn host_entries_are_name_colon_ip() {
        let v4: HostEntry = "db:198.18.0.9".parse().expect("v4");
        assert_eq!(v4.names, ["db"]);
        assert_eq!(v4.ip, "198.18.0.9".parse::<IpAddr>().expect("ip"));
        let v6: HostEntry = "db6:2001:2::9".parse().expect("v6");
        assert_eq!(v6.ip, "2001:2::9".parse::<IpAddr>().expect("ip"));
        let bracketed: HostEntry = "db6:[2001:2::9]".parse().expect("bracketed");
        assert_eq!(bracketed.ip, v6.ip);
        for bad in ["db", ":198.18.0.9", "db:nope"] {
            let err = bad.parse::<HostEntry>().expect_err(bad).to_string();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn macs_show_as_colon_separated_hex() {
        let mac = MacAddr([0x0a, 0x58, 0xc6, 0x12, 0, 0xff]);
        assert_eq!(mac.to_string(), "0a:58:c6:12:00:ff");
        assert!(mac.is_unicast());
        assert!(!MacAddr([1, 0, 0x5e, 0, 0, 1]).is_unicast());
        assert!(!MacAddr([0; 6]).is_unicast());
        assert_eq!(MacAddr::from_slice(&[1, 2, 3]), None);
    }

    #[test]
    fn the_record_round_trips_and_refuses_unknown_fields() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(NetworkRecord::read(dir.path()).expect("read"), None);
        let record = NetworkRecord {
            netns: "/var/run/netns/cni-1".into(),
            interfaces: vec!["eth0".into()],
        };
        record.write(dir.path()).expect("write");
        assert_eq!(NetworkRecord::read(dir.path()).expect("read"), Some(record));
        std::fs::write(
            dir.path().join(NetworkRecord::FILE),
            r#"{"netns":"/x","interfaces":[],"extra":1}"#,
        )
        .expect("write");
        let err = NetworkRecord::read(dir.path())
            .expect_err("unknown field")
            .to_string();
        assert!(err.contains("network.json"), "{err}");
    }

    #[test]
    fn the_guest_gets_the_pod_settings_with_the_namespace_description() {
        let found = Found {
            interfaces: vec![FoundInterface {
                index: 2,
                name: "eth0".into(),
                mac: MacAddr([2, 0, 0, 0, 0, 1]),
                mtu: 1450,
                addresses: vec!["198.18.0.2/24".into()],
            }],
            routes: vec![pb::NetworkRoute {
                destination: "0.0.0.0/0".into(),
                gateway: "198.18.0.1".into(),
                device: "eth0".into(),
                source: String::new(),
                metric: 0,
            }],
        };
        let attached = AttachedNetwork {
            netns: "/nonexistent/netns".into(),
            id: NetnsId::for_tests(),
            interfaces: Vec::new(),
            taps: Vec::new(),
            found,
            attached: false,
        };
        let config = NetworkConfig {
            dns: DnsConfig {
                servers: vec!["198.18.0.53".parse().expect("ip")],
                searches: vec!["svc.cluster.local".into()],
                options: vec!["ndots:5".into()],
            },
            hosts: vec!["db:198.18.0.9".parse().expect("host")],
            ..NetworkConfig::new("/nonexistent/netns")
        };
        let pod = config.pod_network(&attached);
        assert_eq!(pod.interfaces, attached.description().interfaces);
        assert_eq!(pod.routes, attached.description().routes);
        assert_eq!(
            pod.dns,
            Some(pb::DnsConfig {
                servers: vec!["198.18.0.53".into()],
                searches: vec!["svc.cluster.local".into()],
                options: vec!["ndots:5".into()],
            })
        );
        assert_eq!(
            pod.hosts,
            [pb::HostEntry {
                ip: "198.18.0.9".into(),
                names: vec!["db".into()],
            }]
        );
    }
}
