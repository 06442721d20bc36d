//! Changes to the pod's network from inside the guest. Protocol v1 has no network RPC: the pod's
//! network is described once by `CreateSandbox` and applied then ([`crate::network_setup`]);
//! containers share the guest's network namespace unless their spec asks for a new one, and only a
//! process holding CAP_NET_ADMIN or CAP_NET_RAW can change it afterwards (an Istio-style mesh init
//! installing redirect rules). The policy decides when such a container may run
//! (`confidential.rego`: only before the first container starts); this module finds such a
//! container and loads the netfilter modules it needs, once, before it is created.

use oci_spec::runtime::{Capability, Spec};

use crate::error::AgentError;

/// Whether a container's process holds CAP_NET_ADMIN or CAP_NET_RAW in any capability set.
pub fn holds_network_capabilities(spec: &Spec) -> bool {
    let Some(caps) = spec
        .process()
        .as_ref()
        .and_then(|p| p.capabilities().as_ref())
    else {
        return false;
    };
    [
        caps.bounding(),
        caps.effective(),
        caps.permitted(),
        caps.inheritable(),
        caps.ambient(),
    ]
    .into_iter()
    .flatten()
    .any(|set| set.contains(&Capability::NetAdmin) || set.contains(&Capability::NetRaw))
}

/// The guest's netfilter modules (nf_tables, NAT, the xtables targets iptables-nft uses), loaded
/// on first use: the kernel cannot autoload them, and loading them at boot would cost every
/// sandbox's boot the time only a pod with a mesh init needs.
#[derive(Debug, Default)]
pub struct Netfilter {
    loaded: tokio::sync::OnceCell<()>,
}

impl Netfilter {
    /// Loads the modules unless an earlier call did; concurrent callers wait for one load.
    pub async fn load(&self) -> Result<(), AgentError> {
        self.loaded
            .get_or_try_init(|| async {
                let started = std::time::Instant::now();
                tokio::task::spawn_blocking(crate::init::load_netfilter_modules)
                    .await
                    .map_err(|e| AgentError::Internal(format!("module loader: {e}")))?
                    .map_err(AgentError::Modules)?;
                tracing::info!(
                    ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                    "netfilter modules loaded"
                );
                Ok::<(), AgentError>(())
            })
            .await
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxCapabilitiesBuilder, ProcessBuilder};
    use std::collections::HashSet;

    fn spec_with(edit: impl FnOnce(LinuxCapabilitiesBuilder) -> LinuxCapabilitiesBuilder) -> Spec {
        let caps = edit(LinuxCapabilitiesBuilder::default()).build().unwrap();
        let process = ProcessBuilder::default()
            .args(vec!["true".to_owned()])
            .capabilities(caps)
            .build()
            .unwrap();
        let mut spec = Spec::default();
        spec.set_process(Some(process));
        spec
    }

    #[test]
    fn network_capabilities_in_any_set_count() {
        let set = |caps: &[Capability]| caps.iter().copied().collect::<HashSet<_>>();
        let none = HashSet::new();
        // The default spec's set (AUDIT_WRITE, KILL, NET_BIND_SERVICE) holds neither.
        assert!(!holds_network_capabilities(&Spec::default()));
        assert!(!holds_network_capabilities(&spec_with(|b| b
            .bounding(set(&[Capability::NetBindService, Capability::SysAdmin]))
            .effective(none.clone()))));
        let cases: [fn(LinuxCapabilitiesBuilder, HashSet<Capability>) -> LinuxCapabilitiesBuilder;
            5] = [
            |b, s| b.bounding(s),
            |b, s| b.effective(s),
            |b, s| b.permitted(s),
            |b, s| b.inheritable(s),
            |b, s| b.ambient(s),
        ];
        for cap in [Capability::NetAdmin, Capability::NetRaw] {
            for place in cases {
                assert!(holds_network_capabilities(&spec_with(|b| place(
                    b,
                    set(&[Capability::Chown, cap])
                ))));
            }
        }
        let mut no_process = Spec::default();
        no_process.set_process(None);
        assert!(!holds_network_capabilities(&no_process));
    }

    #[tokio::test]
    async fn loading_outside_a_guest_is_a_no_op() {
        // No module list outside a Coffer guest: nothing to load, and no error.
        let netfilter = Netfilter::default();
        netfilter.load().await.unwrap();
        netfilter.load().await.unwrap();
    }
}
