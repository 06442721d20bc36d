//! Changes to the pod's network from inside the guest. Protocol v1 has no network RPC: the pod's
//! network is described once by `CreateSandbox` and applied then ([`crate::network_setup`]);
//! containers share the guest's network namespace unless their spec asks for a new one, and only a
//! process holding CAP_NET_ADMIN or CAP_NET_RAW can change it afterwards (an Istio-style mesh init
//! installing redirect rules). The policy decides when such a container may run
//! (`confidential.rego`: only before the first container starts); this module finds such a
//! container and loads the netfilter modules it needs, once, before it is created.

use coffer_policies::Process;

use crate::error::AgentError;

/// The capabilities that change the pod's network.
pub const NETWORK_CAPABILITIES: [&str; 2] = ["CAP_NET_ADMIN", "CAP_NET_RAW"];

/// Whether a container's process holds CAP_NET_ADMIN or CAP_NET_RAW in any capability set.
pub fn holds_network_capabilities(process: &Process) -> bool {
    let caps = &process.capabilities;
    [
        &caps.bounding,
        &caps.effective,
        &caps.permitted,
        &caps.inheritable,
        &caps.ambient,
    ]
    .into_iter()
    .flatten()
    .any(|cap| NETWORK_CAPABILITIES.contains(&cap.as_str()))
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

    #[test]
    fn network_capabilities_in_any_set_count() {
        let with = |edit: fn(&mut coffer_policies::Capabilities, Vec<String>), caps: &[&str]| {
            let mut p = Process::default();
            edit(
                &mut p.capabilities,
                caps.iter().map(|c| (*c).to_owned()).collect(),
            );
            p
        };
        let places: [fn(&mut coffer_policies::Capabilities, Vec<String>); 5] = [
            |c, s| c.bounding = s,
            |c, s| c.effective = s,
            |c, s| c.permitted = s,
            |c, s| c.inheritable = s,
            |c, s| c.ambient = s,
        ];
        assert!(!holds_network_capabilities(&Process::default()));
        assert!(!holds_network_capabilities(&with(
            places[0],
            &["CAP_NET_BIND_SERVICE", "CAP_SYS_ADMIN"]
        )));
        for cap in NETWORK_CAPABILITIES {
            for place in places {
                assert!(holds_network_capabilities(&with(
                    place,
                    &["CAP_CHOWN", cap]
                )));
            }
        }
    }

    #[tokio::test]
    async fn loading_outside_a_guest_is_a_no_op() {
        // No module list outside a Coffer guest: nothing to load, and no error.
        let netfilter = Netfilter::default();
        netfilter.load().await.unwrap();
        netfilter.load().await.unwrap();
    }
}
