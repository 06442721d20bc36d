//! Builds the policy engine's typed input (owned by `coffer-policies`) from a decoded request and
//! the agent's sandbox state. The policy sees facts, not the raw protobuf or OCI JSON: a
//! container's or exec's spec is already the policy's type (the closed model `crate::spec`
//! decodes, the value the runtime's configuration is rendered from), the other requests are
//! spelled here.

use coffer_policies as pol;

use crate::pod_network::PodNetwork;
use crate::request::{AgentRequest, OutputKind, ProcessRef};

fn exec_id(p: &ProcessRef) -> Option<String> {
    p.exec.as_ref().map(ToString::to_string)
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
        AgentRequest::CreateContainer { spec, .. } => R::CreateContainer(spec.clone()),
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
            process: spec.clone(),
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
