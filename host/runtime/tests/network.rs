//! The pod network attachment on real namespaces, without a VM. Each test builds its own topology
//! — a "pod" namespace whose `eth0` is a veth with addresses in the benchmarking ranges
//! (198.18.0.0/15, 2001:2::/48) and routes as CNI would leave them, its peer in a "node"
//! namespace holding the gateway addresses — and deletes it at the end, also on failure. The test
//! plays the guest on the tap's descriptor: it reads the frames the node sends to the pod and
//! answers ARP and UDP itself. Every loop is bounded in count and time; all traffic stays between
//! the namespaces the test made.
//!
//! Needs root (namespaces, taps, tc): without it the tests fail, saying so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use coffer_agent_protocol::v1 as pb;
use coffer_runtime::hypervisor::{Hypervisor, HypervisorError, Vm, VmExit, VmSpec};
use coffer_runtime::network::{self, MacAddr, NetworkConfig, NetworkError};
use coffer_runtime::sandbox::{Sandbox, SandboxConfig, SandboxError};
use coffer_runtime::tee::TeeKind;
use nix::poll::{PollFd, PollFlags, poll};
use nix::sched::{CloneFlags, setns};

const POD_MAC: [u8; 6] = [0x0a, 0x58, 0xc6, 0x12, 0x00, 0x02];
const POD_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// `struct virtio_net_hdr` before every frame on a tap opened with IFF_VNET_HDR.
const VNET_HDR: usize = 10;

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests create network namespaces, taps and tc filters: run them as root"
    );
}

/// Runs `ip`/`tc` and fails the test with its output when it fails.
fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether `cmd args` succeeds.
fn succeeds(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A pod namespace and a node namespace joined by a veth, deleted on drop.
struct Topology {
    pod: String,
    node: String,
}

impl Topology {
    /// `pod_mtu` on both ends of the veth; the pod gets IPv4 and IPv6 addresses, a default route
    /// each and one more route with a source and metric, as CNI would leave them.
    fn new(tag: &str) -> Self {
        require_root();
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let base = format!("coffer-nt-{}-{n}-{tag}", std::process::id());
        let topology = Self {
            pod: format!("{base}-pod"),
            node: format!("{base}-node"),
        };
        run("ip", &["netns", "add", &topology.pod]);
        run("ip", &["netns", "add", &topology.node]);
        let (pod, node) = (topology.pod.as_str(), topology.node.as_str());
        run(
            "ip",
            &[
                "link", "add", "eth0", "netns", pod, "type", "veth", "peer", "name", "veth0",
                "netns", node,
            ],
        );
        let pod_mac = MacAddr(POD_MAC).to_string();
        for args in [
            &["link", "set", "lo", "up"][..],
            &[
                "link", "set", "eth0", "address", &pod_mac, "mtu", "1400", "up",
            ],
            &["addr", "add", "198.18.0.2/24", "dev", "eth0"],
            &["-6", "addr", "add", "2001:2::2/64", "dev", "eth0", "nodad"],
            &["route", "add", "default", "via", "198.18.0.1"],
            &[
                "route",
                "add",
                "198.19.0.0/16",
                "via",
                "198.18.0.1",
                "src",
                "198.18.0.2",
                "metric",
                "100",
            ],
            &["-6", "route", "add", "default", "via", "2001:2::1"],
        ] {
            let mut all = vec!["-n", pod];
            all.extend_from_slice(args);
            run("ip", &all);
        }
        for args in [
            &["link", "set", "veth0", "mtu", "1400", "up"][..],
            &["addr", "add", "198.18.0.1/24", "dev", "veth0"],
            &["-6", "addr", "add", "2001:2::1/64", "dev", "veth0", "nodad"],
        ] {
            let mut all = vec!["-n", node];
            all.extend_from_slice(args);
            run("ip", &all);
        }
        topology
    }

    fn pod_path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.pod)
    }

    /// `tc` in the pod namespace.
    fn tc(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.pod.as_str()];
        all.extend_from_slice(args);
        run("tc", &all)
    }

    fn has_ingress_qdisc(&self, dev: &str) -> bool {
        self.tc(&["qdisc", "show", "dev", dev])
            .contains("qdisc ingress")
    }

    fn link_exists(&self, dev: &str) -> bool {
        succeeds("ip", &["-n", &self.pod, "link", "show", dev])
    }

    /// A UDP socket bound to `NODE_IP:port` in the node namespace.
    fn node_socket(&self, port: u16) -> UdpSocket {
        let path = Path::new("/run/netns").join(&self.node);
        std::thread::spawn(move || {
            // This thread enters the node namespace and ends; the socket stays in it.
            let ns = File::open(&path).expect("open node netns");
            setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).expect("enter node netns");
            let socket = UdpSocket::bind((NODE_IP, port)).expect("bind in node netns");
            socket
                .set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            socket
        })
        .join()
        .expect("node thread")
    }

    fn delete_pod(&self) {
        run("ip", &["netns", "del", &self.pod]);
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in [&self.pod, &self.node] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Waits (bounded) until `cond` holds.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Reads one frame from the tap (without its virtio-net header), or `None` after `wait`.
fn read_frame(tap: &mut File, wait: Duration) -> Option<Vec<u8>> {
    let millis = u16::try_from(wait.as_millis()).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(tap.as_fd(), PollFlags::POLLIN)];
    let ready = poll(&mut fds, millis).expect("poll tap");
    if ready == 0 {
        return None;
    }
    let mut buf = vec![0u8; 65536];
    let n = tap.read(&mut buf).expect("read tap");
    assert!(n >= VNET_HDR + 14, "short read: {n}");
    Some(buf[VNET_HDR..n].to_vec())
}

/// Writes `frame` into the tap, as the guest's NIC would send it.
fn write_frame(tap: &mut File, frame: &[u8]) {
    let mut packet = vec![0u8; VNET_HDR];
    packet.extend_from_slice(frame);
    tap.write_all(&packet).expect("write tap");
}

fn ethernet(dst: [u8; 6], src: [u8; 6], ethertype: u16) -> Vec<u8> {
    let mut frame = Vec::with_capacity(64);
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame
}

/// The ARP reply the guest sends for `POD_IP` to the asker.
fn arp_reply(asker_mac: [u8; 6], asker_ip: [u8; 4]) -> Vec<u8> {
    let mut frame = ethernet(asker_mac, POD_MAC, 0x0806);
    frame.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 2]);
    frame.extend_from_slice(&POD_MAC);
    frame.extend_from_slice(&POD_IP.octets());
    frame.extend_from_slice(&asker_mac);
    frame.extend_from_slice(&asker_ip);
    frame
}

fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A UDP datagram from `POD_IP:src_port` to `dst` (checksum 0: none, allowed over IPv4).
fn udp_frame(dst_mac: [u8; 6], dst: (Ipv4Addr, u16), src_port: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = ethernet(dst_mac, POD_MAC, 0x0800);
    let total = u16::try_from(20 + 8 + payload.len()).expect("small");
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&POD_IP.octets());
    ip.extend_from_slice(&dst.0.octets());
    let checksum = ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&checksum.to_be_bytes());
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&src_port.to_be_bytes());
    frame.extend_from_slice(&dst.1.to_be_bytes());
    frame.extend_from_slice(&(total - 20).to_be_bytes());
    frame.extend_from_slice(&[0, 0]);
    frame.extend_from_slice(payload);
    frame
}

/// What a frame read from the tap is, as far as these tests care.
#[derive(Debug)]
enum Seen {
    /// An ARP request for `POD_IP` from (MAC, IP).
    ArpForPod([u8; 6], [u8; 4]),
    /// A UDP datagram to `POD_IP`: destination port and payload.
    UdpToPod(u16, Vec<u8>),
    /// Anything else (IPv6 neighbour discovery, MLD, …).
    Other,
}

fn classify(frame: &[u8]) -> Seen {
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    let body = &frame[14..];
    match ethertype {
        0x0806 if body.len() >= 28 && body[6..8] == [0, 1] && body[24..28] == POD_IP.octets() => {
            let mut mac = [0u8; 6];
            mac.copy_from_slice(&body[8..14]);
            let mut ip = [0u8; 4];
            ip.copy_from_slice(&body[14..18]);
            Seen::ArpForPod(mac, ip)
        }
        0x0800 if body.len() >= 28 && body[9] == 17 && body[16..20] == POD_IP.octets() => {
            let ihl = usize::from(body[0] & 0x0f) * 4;
            let udp = &body[ihl..];
            let port = u16::from_be_bytes([udp[2], udp[3]]);
            let len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
            Seen::UdpToPod(port, udp[8..len.min(udp.len())].to_vec())
        }
        _ => Seen::Other,
    }
}

/// Plays the guest: the node sends a datagram to the pod, the "guest" answers the node's ARP
/// request and must receive the datagram on the tap; then it sends one to the node, which must
/// receive it. Proves both redirects carry frames.
fn exchange_through_the_tap(topology: &Topology, tap: &mut File) {
    let node = topology.node_socket(40000);
    node.send_to(b"node-to-guest", (POD_IP, 40001))
        .expect("send from node");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut node_mac = None;
    let mut received = None;
    for _ in 0..200 {
        if received.is_some() || Instant::now() > deadline {
            break;
        }
        let Some(frame) = read_frame(tap, Duration::from_millis(200)) else {
            continue;
        };
        match classify(&frame) {
            Seen::ArpForPod(mac, ip) => {
                assert_eq!(ip, NODE_IP.octets(), "the node asks");
                node_mac = Some(mac);
                write_frame(tap, &arp_reply(mac, ip));
            }
            Seen::UdpToPod(port, payload) => received = Some((port, payload)),
            Seen::Other => {}
        }
    }
    let node_mac = node_mac.expect("the node's ARP request reached the tap");
    assert_eq!(
        received,
        Some((40001, b"node-to-guest".to_vec())),
        "the node's datagram reached the tap"
    );

    write_frame(
        tap,
        &udp_frame(node_mac, (NODE_IP, 40000), 40001, b"guest-to-node"),
    );
    let mut buf = [0u8; 64];
    let (n, from) = node
        .recv_from(&mut buf)
        .expect("the guest's datagram reached the node");
    assert_eq!(&buf[..n], b"guest-to-node");
    assert_eq!(from, SocketAddr::from((POD_IP, 40001)));
}

#[tokio::test]
async fn attach_describes_the_namespace_and_redirects_both_ways_until_detached() {
    let topology = Topology::new("attach");
    let mut attached = network::attach(&topology.pod_path()).await.expect("attach");

    // What the guest is told: the CNI interface as it is, and the routes CNI added.
    let description = attached.description();
    assert_eq!(
        description.interfaces,
        [pb::NetworkInterface {
            name: "eth0".into(),
            mac: "0a:58:c6:12:00:02".into(),
            mtu: 1400,
            addresses: vec!["198.18.0.2/24".into(), "2001:2::2/64".into()],
        }]
    );
    let mut routes = description.routes.clone();
    routes.sort_by(|a, b| a.destination.cmp(&b.destination));
    let route = |destination: &str, gateway: &str, source: &str, metric| pb::NetworkRoute {
        destination: destination.into(),
        gateway: gateway.into(),
        device: "eth0".into(),
        source: source.into(),
        metric,
    };
    assert_eq!(
        routes,
        [
            route("0.0.0.0/0", "198.18.0.1", "", 0),
            route("198.19.0.0/16", "198.18.0.1", "198.18.0.2", 100),
            route("::/0", "2001:2::1", "", 1024),
        ]
    );
    assert_eq!(attached.interfaces().len(), 1);
    assert_eq!(attached.interfaces()[0].tap, "tap0_coffer");
    assert_eq!(
        attached.record(),
        network::NetworkRecord {
            netns: topology.pod_path(),
            interfaces: vec!["eth0".into()],
        }
    );

    // The tap: up, the CNI interface's MTU; the filters: both ways.
    let tap_link = run("ip", &["-n", &topology.pod, "link", "show", "tap0_coffer"]);
    assert!(tap_link.contains("mtu 1400"), "{tap_link}");
    assert!(tap_link.contains(",UP"), "{tap_link}");
    // The namespace's stack has no address on the tap to speak into the guest from.
    let tap_addrs = run(
        "ip",
        &["-n", &topology.pod, "addr", "show", "dev", "tap0_coffer"],
    );
    assert!(!tap_addrs.contains("inet"), "{tap_addrs}");
    let to_tap = topology.tc(&["filter", "show", "dev", "eth0", "ingress"]);
    assert!(
        to_tap.contains("Egress Redirect to device tap0_coffer"),
        "{to_tap}"
    );
    let to_eth0 = topology.tc(&["filter", "show", "dev", "tap0_coffer", "ingress"]);
    assert!(
        to_eth0.contains("Egress Redirect to device eth0"),
        "{to_eth0}"
    );

    let taps = attached.take_taps();
    assert_eq!(taps.len(), 1);
    assert!(
        attached.take_taps().is_empty(),
        "the taps are handed out once"
    );
    let mut tap = File::from(taps.into_iter().next().expect("one tap"));
    exchange_through_the_tap(&topology, &mut tap);

    attached.detach().await.expect("detach");
    assert!(!topology.has_ingress_qdisc("eth0"), "no qdisc left on eth0");
    let filters = topology.tc(&["filter", "show", "dev", "eth0", "ingress"]);
    assert!(filters.trim().is_empty(), "{filters}");
    // The tap lives as long as a descriptor of it: ours here (QEMU's in a sandbox).
    assert!(topology.link_exists("tap0_coffer"));
    drop(tap);
    eventually("the tap to go with its descriptor", || {
        !topology.link_exists("tap0_coffer")
    });
}

#[tokio::test]
async fn a_crashed_attachment_is_replaced_by_the_next_and_collected_by_the_gc() {
    let topology = Topology::new("crash");
    let path = topology.pod_path();

    // The runtime killed: QEMU's descriptor closed, nothing of ours ran.
    let mut crashed = network::attach(&path).await.expect("attach");
    drop(crashed.take_taps());
    std::mem::forget(crashed);
    eventually("the tap to go", || !topology.link_exists("tap0_coffer"));
    assert!(
        topology.has_ingress_qdisc("eth0"),
        "the crash leaves the qdisc"
    );

    // The next attach of the namespace replaces it, and works.
    let mut next = network::attach(&path)
        .await
        .expect("attach over a stale qdisc");
    let filters = topology.tc(&["filter", "show", "dev", "eth0", "ingress"]);
    assert_eq!(
        filters.matches("Egress Redirect to device").count(),
        1,
        "only the new filter: {filters}"
    );
    let mut tap = File::from(next.take_taps().into_iter().next().expect("tap"));
    exchange_through_the_tap(&topology, &mut tap);

    // Crash again; the garbage collector cleans with what the record says.
    drop(tap);
    let record = next.record();
    std::mem::forget(next);
    eventually("the tap to go", || !topology.link_exists("tap0_coffer"));
    assert!(topology.has_ingress_qdisc("eth0"));
    let outcome = network::collect_stale(&record.netns, &record.interfaces)
        .await
        .expect("collect");
    assert_eq!(outcome, network::StaleNetwork::Removed);
    assert!(!topology.has_ingress_qdisc("eth0"));
    // Idempotent, and a namespace that is gone is nothing to collect.
    let outcome = network::collect_stale(&record.netns, &record.interfaces)
        .await
        .expect("collect again");
    assert_eq!(outcome, network::StaleNetwork::Removed);
    let outcome = network::collect_stale(
        Path::new("/run/netns/coffer-nt-never-existed"),
        &["eth0".into()],
    )
    .await
    .expect("collect a missing namespace");
    assert_eq!(outcome, network::StaleNetwork::Gone);
}

#[tokio::test]
async fn the_gc_leaves_a_namespace_a_live_sandbox_attached_again_alone() {
    let topology = Topology::new("reattach");
    let path = topology.pod_path();
    // A crash leaves its record and qdisc...
    let mut crashed = network::attach(&path).await.expect("attach");
    drop(crashed.take_taps());
    let record = crashed.record();
    std::mem::forget(crashed);
    eventually("the tap to go", || !topology.link_exists("tap0_coffer"));
    // ...and a live sandbox attaches the namespace again before the collector runs.
    let mut live = network::attach(&path).await.expect("attach again");
    let mut tap = File::from(live.take_taps().into_iter().next().expect("tap"));
    let outcome = network::collect_stale(&record.netns, &record.interfaces)
        .await
        .expect("collect");
    assert_eq!(outcome, network::StaleNetwork::InUse);
    // The live attachment still carries frames, then detaches as usual.
    assert!(topology.has_ingress_qdisc("eth0"));
    exchange_through_the_tap(&topology, &mut tap);
    drop(tap);
    live.detach().await.expect("detach");
    assert!(!topology.has_ingress_qdisc("eth0"));
}

#[tokio::test]
async fn a_live_attachment_is_not_disturbed_by_a_second_attach() {
    let topology = Topology::new("busy");
    let mut first = network::attach(&topology.pod_path()).await.expect("attach");
    let err = network::attach(&topology.pod_path())
        .await
        .expect_err("the namespace is attached");
    assert!(
        matches!(&err, NetworkError::Tap { name, source } if name == "tap0_coffer"
            && source.raw_os_error() == Some(libc::EBUSY)),
        "{err:?}"
    );
    // The first attachment still carries frames.
    let mut tap = File::from(first.take_taps().into_iter().next().expect("tap"));
    exchange_through_the_tap(&topology, &mut tap);
    first.detach().await.expect("detach");
}

#[tokio::test]
async fn detaching_after_cni_deleted_the_namespace_is_no_error() {
    let topology = Topology::new("gone");
    let mut attached = network::attach(&topology.pod_path()).await.expect("attach");
    drop(attached.take_taps());
    topology.delete_pod();
    attached
        .detach()
        .await
        .expect("detach from a deleted namespace");
}

#[tokio::test]
async fn namespaces_a_guest_cannot_be_given_are_refused_and_left_as_they_were() {
    require_root();
    // Loopback only.
    let topology = Topology::new("refuse");
    let empty = format!("{}-empty", topology.pod);
    run("ip", &["netns", "add", &empty]);
    let result = network::attach(&Path::new("/run/netns").join(&empty)).await;
    run("ip", &["netns", "del", &empty]);
    let err = result.expect_err("loopback only").to_string();
    assert!(err.contains("no interface but loopback"), "{err}");

    // A missing namespace, and a file that is not one.
    let err = network::attach(Path::new("/run/netns/coffer-nt-never-existed"))
        .await
        .expect_err("missing");
    assert!(matches!(err, NetworkError::OpenNetns { .. }), "{err:?}");
    let not_netns = tempfile::NamedTempFile::new().expect("tempfile");
    let err = network::attach(not_netns.path())
        .await
        .expect_err("not a namespace");
    assert!(matches!(err, NetworkError::EnterNetns { .. }), "{err:?}");
    assert!(
        err.to_string().contains("entering network namespace"),
        "{err}"
    );

    // A link that is not Ethernet (a layer-3 tun device, up): nothing is created in the
    // namespace.
    run(
        "ip",
        &[
            "-n",
            &topology.pod,
            "tuntap",
            "add",
            "mode",
            "tun",
            "name",
            "tun9",
        ],
    );
    run("ip", &["-n", &topology.pod, "link", "set", "tun9", "up"]);
    let err = network::attach(&topology.pod_path())
        .await
        .expect_err("a tun device cannot be a NIC")
        .to_string();
    assert!(
        err.contains("tun9") && err.contains("not an Ethernet link"),
        "{err}"
    );
    assert!(!topology.link_exists("tap0_coffer"));
    assert!(!topology.has_ingress_qdisc("eth0"));
}

/// A VMM that never runs: it records what `Sandbox::start` handed it and fails the launch.
#[derive(Default)]
struct RecordingHypervisor {
    seen: std::sync::Mutex<Option<Launch>>,
}

/// What the launch saw.
#[derive(Debug)]
struct Launch {
    nics: Vec<(String, u32)>,
    tap_open: bool,
    record: Option<network::NetworkRecord>,
    qdisc_on_eth0: bool,
}

/// The VM type of [`RecordingHypervisor`], which is never made.
struct NeverVm;

impl Vm for NeverVm {
    fn vsock_socket(&self) -> &Path {
        Path::new("/nonexistent")
    }
    fn console_log(&self) -> &Path {
        Path::new("/nonexistent")
    }
    fn emulated(&self) -> bool {
        true
    }
    async fn wait_exit(&mut self) -> VmExit {
        std::future::pending().await
    }
    async fn status(&mut self) -> Result<String, HypervisorError> {
        Err(HypervisorError::Timeout("a VM that never ran"))
    }
    async fn shutdown(&mut self) -> VmExit {
        VmExit {
            status: "never ran".into(),
            requested: true,
        }
    }
}

impl Hypervisor for RecordingHypervisor {
    type Vm = NeverVm;

    fn check_tee(&self, _tee: TeeKind) -> Result<(), HypervisorError> {
        Ok(())
    }

    async fn launch(&self, spec: &VmSpec) -> Result<NeverVm, HypervisorError> {
        let pod = spec
            .kernel_params
            .first()
            .expect("the pod namespace's name");
        let launch = Launch {
            nics: spec
                .nics
                .iter()
                .map(|n| (n.mac.to_string(), n.mtu))
                .collect(),
            tap_open: spec
                .nics
                .iter()
                .all(|n| n.tap.as_fd().try_clone_to_owned().is_ok()),
            record: network::NetworkRecord::read(&spec.dir).expect("read the record"),
            qdisc_on_eth0: run("tc", &["-n", pod, "qdisc", "show", "dev", "eth0"])
                .contains("qdisc ingress"),
        };
        *self.seen.lock().expect("lock") = Some(launch);
        Err(HypervisorError::Timeout("the test's VMM"))
    }
}

#[tokio::test]
async fn a_sandbox_attaches_before_launch_and_detaches_when_the_launch_fails() {
    let topology = Topology::new("sandbox");
    let state = tempfile::tempdir().expect("tempdir");
    let hypervisor = RecordingHypervisor::default();
    let config = SandboxConfig {
        id: "net-1".into(),
        state_root: state.path().to_path_buf(),
        kernel: "/nonexistent/vmlinux".into(),
        initrd: "/nonexistent/initramfs".into(),
        vcpus: 1,
        memory_mib: 256,
        boot_timeout: None,
        initdata: None,
        // How the test's hypervisor learns which namespace to look at.
        kernel_params: vec![topology.pod.clone()],
        tee: None,
        registry_tunnels: Vec::new(),
        published_ports: Vec::new(),
        network: Some(NetworkConfig::new(topology.pod_path())),
        hostname: Some("web-0".into()),
    };
    let err = Sandbox::start(&hypervisor, config)
        .await
        .expect_err("the launch fails");
    assert!(matches!(err, SandboxError::Launch(_)), "{err}");
    let seen = hypervisor
        .seen
        .lock()
        .expect("lock")
        .take()
        .expect("launched");
    // At launch: the NIC with the CNI interface's MAC and MTU on an open tap, the record in the
    // sandbox directory, the redirect in place.
    assert_eq!(seen.nics, [("0a:58:c6:12:00:02".to_owned(), 1400)]);
    assert!(seen.tap_open);
    assert_eq!(
        seen.record,
        Some(network::NetworkRecord {
            netns: topology.pod_path(),
            interfaces: vec!["eth0".into()],
        })
    );
    assert!(seen.qdisc_on_eth0);
    // After the failed start: nothing left, in the namespace or the state directory.
    assert!(!topology.has_ingress_qdisc("eth0"));
    eventually("the tap to go", || !topology.link_exists("tap0_coffer"));
    assert!(!state.path().join("sandboxes/net-1").exists());
}

/// A VMM whose launch never returns: what a start interrupted during boot (Ctrl-C) is waiting on.
#[derive(Default)]
struct StuckHypervisor {
    launched: std::sync::atomic::AtomicBool,
}

impl Hypervisor for StuckHypervisor {
    type Vm = NeverVm;

    fn check_tee(&self, _tee: TeeKind) -> Result<(), HypervisorError> {
        Ok(())
    }

    async fn launch(&self, _spec: &VmSpec) -> Result<NeverVm, HypervisorError> {
        self.launched.store(true, Ordering::SeqCst);
        std::future::pending().await
    }
}

#[tokio::test]
async fn a_start_dropped_during_launch_leaves_no_directory_and_no_qdisc() {
    let topology = Topology::new("dropped");
    let state = tempfile::tempdir().expect("tempdir");
    let hypervisor = StuckHypervisor::default();
    let config = SandboxConfig {
        id: "net-2".into(),
        state_root: state.path().to_path_buf(),
        kernel: "/nonexistent/vmlinux".into(),
        initrd: "/nonexistent/initramfs".into(),
        vcpus: 1,
        memory_mib: 256,
        boot_timeout: None,
        initdata: None,
        kernel_params: Vec::new(),
        tee: None,
        registry_tunnels: Vec::new(),
        published_ports: Vec::new(),
        network: Some(NetworkConfig::new(topology.pod_path())),
        hostname: None,
    };
    let dir = state.path().join("sandboxes/net-2");
    {
        let start = Sandbox::start(&hypervisor, config);
        tokio::pin!(start);
        // Poll until the launch is under way, with the directory claimed and the network
        // attached; then drop the start as `coffer sandbox run` does on Ctrl-C.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !hypervisor.launched.load(Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "the launch never began");
            let _ = tokio::time::timeout(Duration::from_millis(20), &mut start).await;
        }
        assert!(
            dir.join("owner.json").exists(),
            "the directory has its owner"
        );
        assert!(topology.has_ingress_qdisc("eth0"));
    }
    assert!(!dir.exists(), "the dropped start left its directory");
    assert!(
        !topology.has_ingress_qdisc("eth0"),
        "the dropped start left its qdisc"
    );
    eventually("the tap to go", || !topology.link_exists("tap0_coffer"));
    let left: Vec<_> = std::fs::read_dir(state.path().join("sandboxes"))
        .expect("list")
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
