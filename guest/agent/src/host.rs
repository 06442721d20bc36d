//! The guest operations the agent core performs on the machine it runs on, behind one small trait:
//! the hostname, the pod's network (netlink), kernel modules, cgroup readings, power. The agent
//! holds a [`Host`]; [`GuestHost`] is the real one (acting only as the guest's PID 1), and tests
//! use a recording fake, so the core's request handling is unit-tested without root or a VM.
//! (Container operations go through the OCI runtime helper, `crate::oci`; mounts of sealed
//! files and identities through their own modules.)

use std::fmt;

use async_trait::async_trait;

use crate::cgroup::Stats;
use crate::error::AgentError;
use crate::pod_network::PodNetwork;

/// What the agent core asks of the guest machine.
#[async_trait]
pub trait Host: Send + Sync + fmt::Debug {
    /// Sets the guest's hostname.
    fn set_hostname(&self, name: &str) -> Result<(), AgentError>;

    /// Brings the loopback up and applies the pod's network (once: a second network is refused).
    async fn apply_network(&self, network: Option<&PodNetwork>) -> Result<(), AgentError>;

    /// Loads the netfilter modules a container that may change the pod's network needs (once).
    async fn load_netfilter(&self) -> Result<(), AgentError>;

    /// Resource usage of a container's cgroup.
    fn container_stats(&self, container_id: &str) -> Stats;

    /// A container's OOM kills so far (`None`: no such cgroup).
    fn oom_kills(&self, container_id: &str) -> Option<u64>;

    /// `"v2"` or `"v1"`.
    fn cgroup_version(&self) -> &'static str;

    /// Powers the guest off (never returns when it acts).
    fn power_off(&self);
}

/// The guest itself. The machine-wide operations (hostname, network, modules, power) act only
/// when the agent is the guest's PID 1; run elsewhere (the agent tests on a host), they do
/// nothing.
#[derive(Debug)]
pub struct GuestHost {
    is_init: bool,
    network: crate::network_setup::NetworkSetup,
    netfilter: crate::network::Netfilter,
}

impl GuestHost {
    /// The guest, `is_init` when the agent is its PID 1.
    pub fn new(is_init: bool) -> Self {
        Self {
            is_init,
            network: crate::network_setup::NetworkSetup::default(),
            netfilter: crate::network::Netfilter::default(),
        }
    }
}

#[async_trait]
impl Host for GuestHost {
    fn set_hostname(&self, name: &str) -> Result<(), AgentError> {
        if !self.is_init {
            return Ok(());
        }
        nix::unistd::sethostname(name).map_err(|e| AgentError::io("sethostname", name, e.into()))
    }

    async fn apply_network(&self, network: Option<&PodNetwork>) -> Result<(), AgentError> {
        if !self.is_init {
            return Ok(());
        }
        self.network.apply(network).await
    }

    async fn load_netfilter(&self) -> Result<(), AgentError> {
        if !self.is_init {
            return Ok(());
        }
        self.netfilter.load().await
    }

    fn container_stats(&self, container_id: &str) -> Stats {
        crate::cgroup::stats(container_id)
    }

    fn oom_kills(&self, container_id: &str) -> Option<u64> {
        crate::cgroup::oom_kills(container_id)
    }

    fn cgroup_version(&self) -> &'static str {
        crate::cgroup::version()
    }

    fn power_off(&self) {
        if self.is_init {
            crate::init::power_off();
        }
    }
}

/// A [`Host`] that records what it is asked and changes nothing, for the core's unit tests.
#[cfg(test)]
pub mod fake {
    use std::sync::{Arc, Mutex, PoisonError};

    use super::*;

    /// One operation asked of the host.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Call {
        /// [`Host::set_hostname`].
        SetHostname(String),
        /// [`Host::apply_network`], with the NIC names of the network (`None`: no network).
        ApplyNetwork(Option<Vec<String>>),
        /// [`Host::load_netfilter`].
        LoadNetfilter,
        /// [`Host::power_off`].
        PowerOff,
    }

    /// How an injected failure behaves.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum FaultKind {
        /// The call fails having done nothing.
        Before,
        /// The call does its work, then reports a failure (a helper that dies after acting).
        After,
    }

    #[derive(Debug, Default)]
    struct FaultState {
        calls: u64,
        armed: Option<(u64, FaultKind)>,
        fired: Option<&'static str>,
    }

    /// Failure injection shared by the fakes of one agent: the privileged calls are counted from
    /// [`arm`](Self::arm), and the one at the armed index fails.
    #[derive(Debug, Default)]
    pub struct Faults(Mutex<FaultState>);

    impl Faults {
        fn lock(&self) -> std::sync::MutexGuard<'_, FaultState> {
            self.0.lock().unwrap_or_else(PoisonError::into_inner)
        }

        /// Counts calls from zero again; the one at index `at` (if any) fails as `kind`.
        pub fn arm(&self, at: Option<(u64, FaultKind)>) {
            *self.lock() = FaultState {
                armed: at,
                ..FaultState::default()
            };
        }

        /// The call that failed since [`arm`](Self::arm), if the armed index was reached.
        pub fn fired(&self) -> Option<&'static str> {
            self.lock().fired
        }

        /// Counts the call `what`; `Some` when it is the one to fail.
        pub fn next(&self, what: &'static str) -> Option<FaultKind> {
            let mut state = self.lock();
            let index = state.calls;
            state.calls += 1;
            match state.armed {
                Some((at, kind)) if at == index => {
                    state.fired = Some(what);
                    Some(kind)
                }
                _ => None,
            }
        }

        /// The error an injected failure of `what` returns.
        pub fn error(what: &'static str) -> AgentError {
            AgentError::Runtime(format!("injected failure of {what}"))
        }
    }

    /// The recording host. `network_gate`, when set, holds `apply_network` until notified;
    /// `network_fails` makes it fail; `faults` fails the call it is armed for (before it acts:
    /// the host's calls are each one step).
    #[derive(Debug, Default)]
    pub struct RecordingHost {
        pub calls: Mutex<Vec<Call>>,
        pub network_gate: Option<Arc<tokio::sync::Notify>>,
        pub network_fails: bool,
        pub faults: Arc<Faults>,
    }

    impl RecordingHost {
        /// What was asked so far.
        pub fn calls(&self) -> Vec<Call> {
            self.calls
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        }

        fn check(&self, what: &'static str) -> Result<(), AgentError> {
            match self.faults.next(what) {
                Some(_) => Err(Faults::error(what)),
                None => Ok(()),
            }
        }

        fn record(&self, call: Call) {
            self.calls
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(call);
        }
    }

    #[async_trait]
    impl Host for RecordingHost {
        fn set_hostname(&self, name: &str) -> Result<(), AgentError> {
            self.check("set_hostname")?;
            self.record(Call::SetHostname(name.to_owned()));
            Ok(())
        }

        async fn apply_network(&self, network: Option<&PodNetwork>) -> Result<(), AgentError> {
            self.check("apply_network")?;
            self.record(Call::ApplyNetwork(
                network.map(|n| n.interfaces.iter().map(|i| i.name.to_string()).collect()),
            ));
            if let Some(gate) = &self.network_gate {
                gate.notified().await;
            }
            if self.network_fails {
                return Err(AgentError::FailedPrecondition(
                    "the fake network fails".into(),
                ));
            }
            Ok(())
        }

        async fn load_netfilter(&self) -> Result<(), AgentError> {
            self.check("load_netfilter")?;
            self.record(Call::LoadNetfilter);
            Ok(())
        }

        fn container_stats(&self, _: &str) -> Stats {
            Stats::default()
        }

        fn oom_kills(&self, _: &str) -> Option<u64> {
            None
        }

        fn cgroup_version(&self) -> &'static str {
            "v2"
        }

        fn power_off(&self) {
            self.record(Call::PowerOff);
        }
    }
}
