//! Builds the policy engine's typed input (owned by `coffer-policies`) from a decoded request and
//! the agent's sandbox state. The policy sees facts, not the raw protobuf or OCI JSON.

use coffer_policies as pol;
use oci_spec::runtime::{LinuxNamespaceType, Process, Spec};

use crate::pod_network::PodNetwork;
use crate::request::{AgentRequest, OutputKind, ProcessRef, RootfsSource};

fn exec_id(p: &ProcessRef) -> Option<String> {
    p.exec.as_ref().map(ToString::to_string)
}

fn serde_name<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn capability_names<T: serde::Serialize>(
    set: Option<&std::collections::HashSet<T>>,
) -> Vec<String> {
    let mut names: Vec<String> = set
        .map(|s| s.iter().map(serde_name).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// The policy view of an OCI process.
pub fn process(p: &Process) -> pol::Process {
    let caps = p.capabilities().as_ref();
    pol::Process {
        args: p.args().clone().unwrap_or_default(),
        env: p.env().clone().unwrap_or_default(),
        cwd: p.cwd().display().to_string(),
        user: pol::User {
            uid: p.user().uid(),
            gid: p.user().gid(),
        },
        terminal: p.terminal().unwrap_or(false),
        capabilities: pol::Capabilities {
            bounding: capability_names(caps.and_then(|c| c.bounding().as_ref())),
            effective: capability_names(caps.and_then(|c| c.effective().as_ref())),
            permitted: capability_names(caps.and_then(|c| c.permitted().as_ref())),
            inheritable: capability_names(caps.and_then(|c| c.inheritable().as_ref())),
            ambient: capability_names(caps.and_then(|c| c.ambient().as_ref())),
        },
        no_new_privileges: p.no_new_privileges().unwrap_or(false),
    }
}

fn namespace_type(t: LinuxNamespaceType) -> pol::NamespaceType {
    match t {
        LinuxNamespaceType::Mount => pol::NamespaceType::Mount,
        LinuxNamespaceType::Cgroup => pol::NamespaceType::Cgroup,
        LinuxNamespaceType::Uts => pol::NamespaceType::Uts,
        LinuxNamespaceType::Ipc => pol::NamespaceType::Ipc,
        LinuxNamespaceType::User => pol::NamespaceType::User,
        LinuxNamespaceType::Pid => pol::NamespaceType::Pid,
        LinuxNamespaceType::Network => pol::NamespaceType::Network,
        LinuxNamespaceType::Time => pol::NamespaceType::Time,
    }
}

/// Whether any OCI hook list is non-empty.
fn hooks_present(spec: &Spec) -> bool {
    spec.hooks()
        .as_ref()
        .and_then(|h| serde_json::to_value(h).ok())
        .and_then(|v| {
            v.as_object().map(|o| {
                o.values()
                    .any(|list| list.as_array().is_some_and(|a| !a.is_empty()))
            })
        })
        .unwrap_or(false)
}

fn create_container(id: &str, spec: &Spec, rootfs: &RootfsSource) -> pol::CreateContainer {
    let linux = spec.linux().as_ref();
    pol::CreateContainer {
        container_id: id.to_owned(),
        rootfs: match rootfs {
            RootfsSource::Uploaded => pol::Rootfs {
                source: pol::RootfsSource::Uploaded,
                image: None,
            },
            RootfsSource::Image(reference) => pol::Rootfs {
                source: pol::RootfsSource::Image,
                image: Some(reference.clone()),
            },
        },
        process: spec
            .process()
            .as_ref()
            .map(process)
            .unwrap_or_else(|| process(&Process::default())),
        namespaces: linux
            .and_then(|l| l.namespaces().as_ref())
            .map(|ns| {
                ns.iter()
                    .map(|n| pol::Namespace {
                        kind: namespace_type(n.typ()),
                        path: n.path().as_ref().map(|p| p.display().to_string()),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        mounts: spec
            .mounts()
            .as_ref()
            .map(|ms| {
                ms.iter()
                    .map(|m| pol::Mount {
                        destination: m.destination().display().to_string(),
                        source: m
                            .source()
                            .as_ref()
                            .map(|s| s.display().to_string())
                            .unwrap_or_default(),
                        kind: m.typ().clone().unwrap_or_default(),
                        options: m.options().clone().unwrap_or_default(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        devices: linux
            .and_then(|l| l.devices().as_ref())
            .map(|ds| {
                ds.iter()
                    .map(|d| pol::Device {
                        path: d.path().display().to_string(),
                        kind: serde_name(&d.typ()),
                        major: d.major(),
                        minor: d.minor(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        device_cgroup: linux
            .and_then(|l| l.resources().as_ref())
            .and_then(|r| r.devices().as_ref())
            .map(|rules| {
                rules
                    .iter()
                    .map(|r| pol::DeviceRule {
                        allow: r.allow(),
                        kind: r
                            .typ()
                            .map_or_else(|| "a".to_owned(), |t| t.as_str().to_owned()),
                        major: r.major(),
                        minor: r.minor(),
                        access: r.access().clone().unwrap_or_else(|| "rwm".to_owned()),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        hooks_present: hooks_present(spec),
        sysctls: linux
            .and_then(|l| l.sysctl().as_ref())
            .map(|s| s.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default(),
        masked_paths: linux
            .and_then(|l| l.masked_paths().clone())
            .unwrap_or_default(),
        readonly_paths: linux
            .and_then(|l| l.readonly_paths().clone())
            .unwrap_or_default(),
    }
}

/// The policy view of a validated pod network: every value in its canonical text form.
pub fn pod_network(n: &PodNetwork) -> pol::PodNetwork {
    pol::PodNetwork {
        interfaces: n
            .interfaces
            .iter()
            .map(|nic| pol::NetworkInterface {
                name: nic.name.to_string(),
                mac: nic.mac.to_string(),
                mtu: nic.mtu,
                addresses: nic.addresses.iter().map(ToString::to_string).collect(),
            })
            .collect(),
        routes: n
            .routes
            .iter()
            .map(|r| pol::NetworkRoute {
                destination: r.destination.to_string(),
                gateway: r.gateway.map(|g| g.to_string()),
                device: r.device.to_string(),
                source: r.source.map(|s| s.to_string()),
                metric: r.metric,
            })
            .collect(),
        dns: pol::DnsConfig {
            servers: n.dns.servers.iter().map(ToString::to_string).collect(),
            searches: n.dns.searches.iter().map(ToString::to_string).collect(),
            options: n.dns.options.clone(),
        },
        hosts: n
            .hosts
            .iter()
            .map(|h| pol::HostEntry {
                ip: h.ip.to_string(),
                names: h.names.iter().map(ToString::to_string).collect(),
            })
            .collect(),
    }
}

/// The policy view of `request`.
pub fn request(request: &AgentRequest) -> pol::Request {
    use pol::Request as R;
    match request {
        AgentRequest::CreateSandbox {
            sandbox_id,
            hostname,
            tunnels,
            published,
            network,
        } => R::CreateSandbox {
            sandbox_id: sandbox_id.to_string(),
            hostname: hostname.clone(),
            registry_tunnels: tunnels
                .iter()
                .map(|t| format!("{}->{}", t.listen, t.host_port))
                .collect(),
            published_ports: published
                .iter()
                .map(|p| format!("{}->{}", p.vsock_port, p.target()))
                .collect(),
            network: network.as_ref().map(pod_network),
        },
        AgentRequest::DestroySandbox { .. } => R::DestroySandbox,
        AgentRequest::UploadRootfs { container, .. } => R::UploadRootfs {
            container_id: container.to_string(),
        },
        AgentRequest::PullImage {
            container,
            reference,
        } => R::PullImage {
            container_id: container.to_string(),
            image: reference.clone(),
        },
        AgentRequest::CreateContainer {
            container,
            spec,
            rootfs,
        } => R::CreateContainer(Box::new(create_container(container.as_str(), spec, rootfs))),
        AgentRequest::StartContainer { container } => R::StartContainer {
            container_id: container.to_string(),
        },
        AgentRequest::RemoveContainer { container, force } => R::RemoveContainer {
            container_id: container.to_string(),
            force: *force,
        },
        AgentRequest::StatsContainer { container } => R::StatsContainer {
            container_id: container.to_string(),
        },
        AgentRequest::ExecProcess { process: p, spec } => R::ExecProcess {
            container_id: p.container.to_string(),
            exec_id: exec_id(p).unwrap_or_default(),
            process: Box::new(process(spec)),
        },
        AgentRequest::WaitProcess { process: p } => R::WaitProcess {
            container_id: p.container.to_string(),
            exec_id: exec_id(p),
        },
        AgentRequest::SignalProcess {
            process: p,
            signal,
            all,
        } => R::SignalProcess {
            container_id: p.container.to_string(),
            exec_id: exec_id(p),
            signal: signal.as_str().to_owned(),
            all: *all,
        },
        AgentRequest::WriteStdin { process: p, .. } => R::WriteStdin {
            container_id: p.container.to_string(),
            exec_id: exec_id(p),
        },
        AgentRequest::CloseStdin { process: p } => R::CloseStdin {
            container_id: p.container.to_string(),
            exec_id: exec_id(p),
        },
        AgentRequest::ReadOutput {
            process: p,
            kind: OutputKind::Stdout,
        } => R::ReadStdout {
            container_id: p.container.to_string(),
            exec_id: exec_id(p),
        },
        AgentRequest::ReadOutput {
            process: p,
            kind: OutputKind::Stderr,
        } => R::ReadStderr {
            container_id: p.container.to_string(),
            exec_id: exec_id(p),
        },
        AgentRequest::TtyWinResize { process: p, .. } => R::TtyWinResize {
            container_id: p.container.to_string(),
            exec_id: exec_id(p),
        },
        AgentRequest::GetGuestDetails => R::GetGuestDetails,
        AgentRequest::GetOomEvent => R::GetOomEvent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coffer_agent_protocol::v1 as pb;

    /// The policy sees the validated network in canonical form, whatever spelling the host used,
    /// so a pin in the policy data compares against one text per value.
    #[test]
    fn the_policy_sees_the_network_in_canonical_form() {
        let network = PodNetwork::decode(pb::PodNetwork {
            interfaces: vec![pb::NetworkInterface {
                name: "eth0".into(),
                mac: "02:42:AC:11:00:05".into(),
                mtu: 1450,
                addresses: vec!["192.0.2.5/24".into(), "2001:DB8:0:0:0:0:0:5/64".into()],
            }],
            routes: vec![
                pb::NetworkRoute {
                    destination: "0.0.0.0/0".into(),
                    gateway: "192.0.2.1".into(),
                    device: "eth0".into(),
                    source: String::new(),
                    metric: 0,
                },
                pb::NetworkRoute {
                    destination: "2001:db8:1::/48".into(),
                    gateway: String::new(),
                    device: "eth0".into(),
                    source: "2001:db8::5".into(),
                    metric: 7,
                },
            ],
            dns: Some(pb::DnsConfig {
                servers: vec!["FD00:10:96:0::A".into()],
                searches: vec!["Cluster.Local".into()],
                options: vec!["ndots:5".into()],
            }),
            hosts: vec![pb::HostEntry {
                ip: "::FFFF:192.0.2.9".into(),
                names: vec!["db".into()],
            }],
        })
        .unwrap();
        let request = AgentRequest::CreateSandbox {
            sandbox_id: crate::request::Id::parse("sandbox_id", "sb").unwrap(),
            hostname: None,
            tunnels: vec![],
            published: vec![],
            network: Some(network),
        };
        let pol::Request::CreateSandbox {
            network: Some(seen),
            ..
        } = super::request(&request)
        else {
            panic!("not a CreateSandbox with a network");
        };
        assert_eq!(
            serde_json::to_value(&seen).unwrap(),
            serde_json::json!({
                "interfaces": [{
                    "name": "eth0",
                    "mac": "02:42:ac:11:00:05",
                    "mtu": 1450,
                    "addresses": ["192.0.2.5/24", "2001:db8::5/64"]
                }],
                "routes": [
                    {"destination": "0.0.0.0/0", "gateway": "192.0.2.1", "device": "eth0",
                     "source": null, "metric": 0},
                    {"destination": "2001:db8:1::/48", "gateway": null, "device": "eth0",
                     "source": "2001:db8::5", "metric": 7}
                ],
                "dns": {"servers": ["fd00:10:96::a"], "searches": ["cluster.local"], "options": ["ndots:5"]},
                "hosts": [{"ip": "::ffff:192.0.2.9", "names": ["db"]}]
            })
        );
    }
}
