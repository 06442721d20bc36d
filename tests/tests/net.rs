//! The pod network on one real VM: a "pod" network namespace with `eth0` (IPv4 and IPv6 addresses,
//! default routes) wired by a veth to a "node" namespace, both made by the suite (addresses from
//! 198.18.2.0/24, RFC 2544's benchmarking range, and 2001:db8:2::/64, the documentation prefix:
//! nothing leaves the namespaces). The runtime attaches the pod namespace's network to the VM
//! (tap, tc redirect, the CNI interface's MAC) and describes it in CreateSandbox; the guest applies
//! it once. The cases check what the guest got, that traffic flows both ways, that the guest
//! ignores the host's attempts to reconfigure it over the wire (an IPv6 router advertisement and
//! an ICMP redirect sent from the node after start: routes and addresses unchanged, though the
//! packets arrived), and that stopping the sandbox leaves nothing in the namespaces.
// Test harness code: a failed expectation is a test failure.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, ensure};
use coffer_runtime::agent_client::AgentClient;
use coffer_runtime::hypervisor::qemu::{Qemu, QemuConfig};
use coffer_runtime::network::{DnsConfig, HostEntry, NetworkConfig};
use coffer_runtime::sandbox::SandboxConfig;
use coffer_runtime::spec::{self, ProcessOptions};
use coffer_tests::netns::{NetNs, veth_pair};
use coffer_tests::{Suite, agent, busybox_rootfs, case, eventually, guest_image, vm_config};

const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);
const POD_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 2);
const NODE_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1);
const POD_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 2);
/// The node-side end of the pod's veth.
const NODE_LINK: &str = "vpod0";
/// The destination of the ICMP redirect: off-link, reached through the default route.
const REDIRECTED: Ipv4Addr = Ipv4Addr::new(198, 18, 9, 9);
/// The gateway the redirect names: on-link, but not the pod's gateway.
const REDIRECT_GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 3);
/// The prefix the router advertisement offers (and the guest must not take).
const RA_PREFIX: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 0);
const HOSTNAME: &str = "net-vm";
const HTTP_PORT: u16 = 8080;
/// The long-running container the cases exec into.
const SHELL: &str = "shell";

struct Env {
    agent: AgentClient,
    node: NetNs,
    pod: NetNs,
    /// The pod's `eth0` MAC, as CNI left it (the guest's NIC must have it).
    mac: String,
    /// Numbers the execs (an exec id is used once).
    execs: std::sync::atomic::AtomicU32,
}

impl Env {
    /// `sh -c script` in the long-running container; its stdout (exit status 0 required).
    async fn sh(&self, exec: &str, script: &str) -> anyhow::Result<String> {
        let n = self
            .execs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let exec = format!("{exec}-{n}");
        let (out, status) = agent::exec(&self.agent, SHELL, &exec, &["sh", "-c", script]).await?;
        ensure!(status == 0, "{script}: exit {status}, stdout {out:?}");
        Ok(out)
    }

    /// The guest's view of its network that the host must not be able to change.
    async fn snapshot(&self, exec: &str) -> anyhow::Result<String> {
        self.sh(
            exec,
            &format!(
                "ip -4 route; ip -6 route; ip -6 addr show scope global; ip route get {REDIRECTED}"
            ),
        )
        .await
    }
}

/// A counter of `/proc/net/snmp` (`IcmpMsg: InType5`) or `/proc/net/snmp6` (`Icmp6InType134`)
/// text, 0 when the kernel lists none yet.
fn counter(snmp: &str, group: &str, name: &str) -> u64 {
    if group.is_empty() {
        // snmp6: `name value` lines.
        return snmp
            .lines()
            .filter_map(|l| l.split_once(char::is_whitespace))
            .find(|(k, _)| *k == name)
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0);
    }
    // snmp: a header line and a value line per group.
    let lines: Vec<&str> = snmp
        .lines()
        .filter(|l| l.starts_with(&format!("{group}: ")))
        .collect();
    let [names, values] = lines[..] else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// The internet checksum of `data`.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An ICMP host redirect (type 5, code 1) from the pod's gateway: "for `REDIRECTED`, use
/// `REDIRECT_GATEWAY`", quoting an echo request the pod sent there (so the guest's kernel would
/// act on it without any socket: `icmp_err`).
fn icmp_redirect() -> Vec<u8> {
    let mut inner = vec![
        0x45, 0, 0, 28, 0, 1, 0, 0, 64, 1, 0, 0, // IPv4, 28 bytes, TTL 64, ICMP
    ];
    inner.extend(POD_IP.octets());
    inner.extend(REDIRECTED.octets());
    let header_sum = checksum(&inner);
    inner[10..12].copy_from_slice(&header_sum.to_be_bytes());
    inner.extend([8, 0, 0, 0, 0, 1, 0, 1]); // the echo request's first 8 bytes
    let mut msg = vec![5, 1, 0, 0];
    msg.extend(REDIRECT_GATEWAY.octets());
    msg.extend(inner);
    let sum = checksum(&msg);
    msg[2..4].copy_from_slice(&sum.to_be_bytes());
    msg
}

/// An IPv6 router advertisement (the kernel fills in the ICMPv6 checksum): a default router for
/// 1800 s offering `RA_PREFIX`/64 for autonomous configuration.
fn router_advertisement() -> Vec<u8> {
    let mut msg = vec![134, 0, 0, 0, 64, 0];
    msg.extend(1800u16.to_be_bytes()); // router lifetime
    msg.extend([0u8; 8]); // reachable time, retransmit timer
    msg.extend([3, 4, 64, 0xc0]); // prefix information: /64, on-link + autonomous
    msg.extend(86_400u32.to_be_bytes());
    msg.extend(14_400u32.to_be_bytes());
    msg.extend([0u8; 4]);
    msg.extend(RA_PREFIX.octets());
    msg
}

/// Sends the router advertisement and the ICMP redirect into the pod's link from the node.
fn send_from_node(node: &NetNs) -> anyhow::Result<()> {
    use nix::sys::socket::{
        AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn, SockaddrIn6, bind,
        sendto, setsockopt, socket, sockopt,
    };
    use std::os::fd::AsRawFd as _;
    let link_local = node
        .ip(&[
            "-6", "-o", "addr", "show", "dev", NODE_LINK, "scope", "link",
        ])?
        .split_whitespace()
        .skip_while(|w| *w != "inet6")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .context("no link-local address on the node's link")?
        .parse::<Ipv6Addr>()?;
    node.run(|| -> anyhow::Result<()> {
        let index = nix::net::if_::if_nametoindex(NODE_LINK)?;
        // IPv6: from the node's link-local address to all nodes, hop limit 255 as NDP requires.
        let fd = socket(
            AddressFamily::Inet6,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::IcmpV6,
        )?;
        setsockopt(&fd, sockopt::Ipv6MulticastHops, &255)?;
        bind(
            fd.as_raw_fd(),
            &SockaddrIn6::from(std::net::SocketAddrV6::new(link_local, 0, 0, index)),
        )?;
        let all_nodes =
            std::net::SocketAddrV6::new(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1), 0, 0, index);
        sendto(
            fd.as_raw_fd(),
            &router_advertisement(),
            &SockaddrIn6::from(all_nodes),
            MsgFlags::empty(),
        )?;
        // IPv4: from the pod's gateway (only the current gateway's redirect can count).
        let fd = socket(
            AddressFamily::Inet,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::Icmp,
        )?;
        bind(
            fd.as_raw_fd(),
            &SockaddrIn::from(std::net::SocketAddrV4::new(NODE_IP, 0)),
        )?;
        sendto(
            fd.as_raw_fd(),
            &icmp_redirect(),
            &SockaddrIn::from(std::net::SocketAddrV4::new(POD_IP, 0)),
            MsgFlags::empty(),
        )?;
        Ok(())
    })?
}

/// An HTTP server in the node answering one `GET` with `body` (at most 60 s), in a thread.
fn serve_once_in(
    node: &NetNs,
    body: &'static str,
) -> anyhow::Result<(SocketAddr, std::thread::JoinHandle<anyhow::Result<()>>)> {
    let listener = node.run(|| std::net::TcpListener::bind((NODE_IP, 0)))??;
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let served = std::thread::spawn(move || -> anyhow::Result<()> {
        use std::io::{Read as _, Write as _};
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut stream = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(err) => return Err(err).context("nobody connected within 60 s"),
            }
        };
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut request = [0u8; 1024];
        let _ = stream.read(&mut request)?;
        write!(
            stream,
            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        Ok(())
    });
    Ok((addr, served))
}

fn setup() -> anyhow::Result<(NetNs, NetNs, String)> {
    let node = NetNs::create("net-node")?;
    let pod = NetNs::create("net-pod")?;
    veth_pair(&node, NODE_LINK, NODE_IP, &pod, POD_IP)?;
    node.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{NODE_IP6}/64"),
        "dev",
        NODE_LINK,
        "nodad",
    ])?;
    pod.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{POD_IP6}/64"),
        "dev",
        "eth0",
        "nodad",
    ])?;
    pod.ip(&[
        "-6",
        "route",
        "add",
        "default",
        "via",
        &NODE_IP6.to_string(),
    ])?;
    let mac = pod
        .ip(&["-o", "link", "show", "eth0"])?
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .context("no MAC on the pod's eth0")?
        .to_owned();
    Ok((node, pod, mac))
}

fn main() -> ExitCode {
    let image = guest_image();
    let work = tempfile::tempdir().expect("tempdir");
    let rootfs = work.path().join("rootfs");
    busybox_rootfs(&rootfs);
    let state = work.path().join("state");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut suite = Suite::new("net");
    let Some((node, pod, mac)) = suite.setup(setup) else {
        return suite.finish();
    };
    rt.block_on(async {
        let qemu = Qemu::new(QemuConfig {
            probe_cache: Some(work.path().join("accel-probe")),
            ..QemuConfig::default()
        });
        let network = NetworkConfig {
            dns: DnsConfig {
                servers: vec!["198.18.2.53".parse().expect("address")],
                searches: vec!["net.test".into()],
                options: vec!["ndots:1".into()],
            },
            hosts: vec![HostEntry {
                ip: NODE_IP.into(),
                names: vec!["node.net.test".into()],
            }],
            ..NetworkConfig::new(pod.path())
        };
        let config = SandboxConfig {
            network: Some(network),
            hostname: Some(HOSTNAME.into()),
            ..vm_config(&image, "net-suite", &state)
        };
        let Some(sandbox) = suite.boot(&qemu, config).await else {
            return;
        };
        let env = Env { agent: sandbox.agent(), node, pod, mac, execs: 0.into() };
        let shell = ProcessOptions {
            args: vec!["sleep".into(), "100000".into()],
            pod_files: true,
            ..ProcessOptions::default()
        };
        case!(suite, "container_starts", async {
            agent::create(&env.agent, &rootfs, SHELL, &spec::container(&shell, HOSTNAME)).await?;
            agent::start(&env.agent, SHELL).await.context("StartContainer")?;
            Ok(())
        }.await);

        case!(suite, "guest_has_the_pods_addresses_routes_and_mac", async {
            let mac = env.sh("mac", "cat /sys/class/net/eth0/address").await?;
            ensure!(mac.trim() == env.mac, "the guest's eth0 has MAC {mac:?}, the pod's is {}", env.mac);
            let addrs = env.sh("addr", "ip addr show dev eth0").await?;
            for want in [format!("inet {POD_IP}/24"), format!("inet6 {POD_IP6}/64")] {
                ensure!(addrs.contains(&want), "no {want} on the guest's eth0: {addrs}");
            }
            let routes = env.sh("routes", "ip route; ip -6 route").await?;
            for want in [format!("default via {NODE_IP} dev eth0"), format!("default via {NODE_IP6} dev eth0")] {
                ensure!(routes.contains(&want), "no `{want}` in the guest: {routes}");
            }
            Ok(())
        }.await);

        case!(suite, "node_and_guest_reach_each_other", async {
            // Guest → node.
            let (addr, served) = serve_once_in(&env.node, "hello-from-the-node")?;
            let got = env.sh("fetch", &coffer_tests::netns::http_get_script(addr)).await?;
            served.join().map_err(|_| anyhow::anyhow!("server thread panicked"))??;
            ensure!(got == "hello-from-the-node", "guest → node: {got:?}");
            // Node → guest, over IPv4 and IPv6.
            env.sh("serve", &format!(
                "mkdir -p /www && echo hello-from-the-guest > /www/index.html && httpd -p {HTTP_PORT} -h /www"
            )).await?;
            for target in [SocketAddr::from((POD_IP, HTTP_PORT)), SocketAddr::from((POD_IP6, HTTP_PORT))] {
                let body = eventually(Duration::from_secs(60), &format!("node → {target}"), || {
                    Ok(env.node.run(|| coffer_tests::cluster::http_get(target))?.ok())
                })?;
                ensure!(body == "hello-from-the-guest\n", "node → {target}: {body:?}");
            }
            Ok(())
        }.await);

        case!(suite, "pod_files_are_the_pods", async {
            let resolv = env.sh("resolv", "cat /etc/resolv.conf").await?;
            for want in ["nameserver 198.18.2.53", "search net.test", "options ndots:1"] {
                ensure!(resolv.lines().any(|l| l.trim() == want), "no `{want}` in /etc/resolv.conf: {resolv}");
            }
            let hosts = env.sh("hosts", "cat /etc/hosts").await?;
            let has = |ip: String, name: &str| hosts.lines().any(|l| {
                let mut w = l.split_whitespace();
                w.next() == Some(ip.as_str()) && w.any(|n| n == name)
            });
            ensure!(has(POD_IP.to_string(), HOSTNAME) && has(NODE_IP.to_string(), "node.net.test") && has("127.0.0.1".into(), "localhost"), "/etc/hosts: {hosts}");
            let hostname = env.sh("hostname", "cat /etc/hostname; hostname").await?;
            ensure!(hostname == format!("{HOSTNAME}\n{HOSTNAME}\n"), "hostname: {hostname:?}");
            Ok(())
        }.await);

        case!(suite, "router_advertisements_and_redirects_are_ignored", async {
            // Set before the interface came up, so nothing arrived before them either.
            let sysctls = env.sh("sysctls", "cd /proc/sys/net && for f in ipv6/conf/eth0/accept_ra ipv6/conf/eth0/autoconf ipv6/conf/eth0/accept_redirects ipv4/conf/eth0/accept_redirects ipv4/conf/all/accept_redirects ipv6/conf/all/accept_ra ipv4/conf/eth0/rp_filter; do echo \"$f=$(cat $f)\"; done").await?;
            for want in ["ipv6/conf/eth0/accept_ra=0", "ipv6/conf/eth0/autoconf=0", "ipv6/conf/eth0/accept_redirects=0", "ipv4/conf/eth0/accept_redirects=0", "ipv4/conf/all/accept_redirects=0", "ipv6/conf/all/accept_ra=0", "ipv4/conf/eth0/rp_filter=1"] {
                ensure!(sysctls.lines().any(|l| l == want), "{want} expected: {sysctls}");
            }
            let before = env.snapshot("before").await?;
            ensure!(before.contains(&format!("{REDIRECTED} via {NODE_IP}")), "the redirected destination goes through the gateway first: {before}");
            let counters = || env.sh("counters", "cat /proc/net/snmp /proc/net/snmp6");
            let start = counters().await?;
            send_from_node(&env.node)?;
            // Both packets reach the guest's kernel (its per-type counters move) ...
            let arrived = tokio::time::timeout(Duration::from_secs(30), async {
                loop {
                    let now = counters().await?;
                    if counter(&now, "IcmpMsg", "InType5") > counter(&start, "IcmpMsg", "InType5")
                        && counter(&now, "", "Icmp6InType134") > counter(&start, "", "Icmp6InType134")
                    {
                        return anyhow::Ok(());
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }).await;
            if !matches!(arrived, Ok(Ok(()))) {
                let now = counters().await?;
                let icmp: Vec<&str> = now.lines().filter(|l| l.starts_with("IcmpMsg") || l.starts_with("Icmp6InType")).collect();
                anyhow::bail!("the redirect or the advertisement never reached the guest: {icmp:?}");
            }
            // ... and change nothing: no route through the advertised router or the redirect's
            // gateway, no address from the advertised prefix.
            tokio::time::sleep(Duration::from_secs(2)).await;
            let after = env.snapshot("after").await?;
            ensure!(after == before, "the guest's network changed:\nbefore:\n{before}\nafter:\n{after}");
            ensure!(!after.contains("2001:db8:77:") && !after.contains(&REDIRECT_GATEWAY.to_string()), "{after}");
            Ok(())
        }.await);

        case!(suite, "stop_leaves_nothing_in_the_namespaces", async {
            let inode = env.pod.inode()?;
            sandbox.stop().await;
            let links = env.pod.ip(&["-o", "link", "show"])?;
            ensure!(links.lines().count() == 2 && links.contains(": lo:") && links.contains(": eth0@"), "links left in the pod namespace: {links}");
            let qdiscs = env.pod.command("tc").args(["qdisc", "show", "dev", "eth0"]).output()?;
            let qdiscs = String::from_utf8_lossy(&qdiscs.stdout);
            ensure!(!qdiscs.contains("ingress"), "an ingress qdisc is left on the pod's eth0: {qdiscs}");
            let holders: Vec<_> = coffer_tests::netns::holders(inode);
            ensure!(holders.is_empty(), "processes still hold the pod namespace: {holders:?}");
            // The pod namespace's own eth0 answers again (the redirect is gone).
            let listener = env.pod.run(|| std::net::TcpListener::bind((POD_IP, 0)))??;
            let addr = listener.local_addr()?;
            env.node.run(|| std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)))?
                .context("the pod namespace does not answer after the stop")?;
            coffer_tests::assert_nothing_left(&state)
        }.await);
    });
    suite.finish()
}
