//! A launch broken into phases, from the VMM backend's start to the agent answering: what the
//! host measured (backend, VMM, announcement to first answer) and what the guest reported on its
//! own clock (`GuestDetails.boot`). The guest's numbers serve this printout only: they are
//! believed for nothing else.

use std::time::Duration;

use coffer_agent_protocol::v1 as pb;

use crate::hypervisor::LaunchTimes;

/// The phases of one launch, in the order they ran. Their durations add up to the launch's
/// total (the firmware's share is what the others leave of the guest's part).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootPhases {
    /// The accelerator probe this launch paid (zero when its verdict was cached or not needed);
    /// not part of the boot.
    pub accel_probe: Duration,
    /// `(phase, duration)`.
    pub phases: Vec<(&'static str, Duration)>,
    /// Guest steps that ran beside the phases from the listener on (announce, host connect):
    /// the agent loads initdata and its policy while the host connects. Not part of the total.
    pub concurrent: Vec<(&'static str, Duration)>,
}

impl BootPhases {
    /// Breaks a launch into phases. `launch` is the backend's account of its steps, `guest_part`
    /// the time from the VMM being up to the agent's announcement arriving, `host_connect` from
    /// the announcement to the agent's first answer, `guest` the agent's own record.
    pub fn new(
        launch: LaunchTimes,
        guest_part: Duration,
        host_connect: Duration,
        guest: Option<&pb::BootTimes>,
    ) -> Self {
        let mut phases = vec![
            ("backend start", launch.backend),
            ("QEMU start", launch.vmm),
        ];
        let mut concurrent = Vec::new();
        match guest.and_then(GuestSteps::from_report) {
            Some(steps) => {
                let in_guest = steps.announced - steps.init;
                phases.push(("firmware and kernel", guest_part.saturating_sub(in_guest)));
                phases.push(("agent init", steps.init_done - steps.init - steps.modules));
                phases.push(("modules", steps.modules));
                match steps.loaded {
                    Some(Loaded::BeforeListening { initdata, policy }) => {
                        phases.push(("initdata", initdata - steps.init_done));
                        phases.push(("policy load", policy - initdata));
                        phases.push(("server up", steps.listening - policy));
                    }
                    Some(Loaded::AfterListening { initdata, policy }) => {
                        phases.push(("server up", steps.listening - steps.init_done));
                        concurrent.push(("initdata", initdata - steps.listening));
                        concurrent.push(("policy load", policy - initdata));
                    }
                    None => phases.push(("server up", steps.listening - steps.init_done)),
                }
                phases.push(("announce", steps.announced - steps.listening));
            }
            None => phases.push(("guest (to the announcement)", guest_part)),
        }
        phases.push(("host connect", host_connect));
        Self {
            accel_probe: launch.accel_probe,
            phases,
            concurrent,
        }
    }

    /// The launch's total: every phase but the probe.
    pub fn total(&self) -> Duration {
        self.phases.iter().map(|(_, d)| *d).sum()
    }

    /// One `phase: N ms` line per phase, then the total.
    pub fn lines(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .phases
            .iter()
            .map(|(name, d)| format!("{name}: {} ms", d.as_millis()))
            .collect();
        // Below a millisecond it was the cache's answer, not a probe.
        if self.accel_probe >= Duration::from_millis(1) {
            lines.insert(
                0,
                format!(
                    "accelerator probe (once per host, before the boot): {} ms",
                    self.accel_probe.as_millis()
                ),
            );
        }
        lines.extend(self.concurrent.iter().map(|(name, d)| {
            format!(
                "{name} (beside announce and host connect): {} ms",
                d.as_millis()
            )
        }));
        lines.push(format!(
            "launch to agent ready: {} ms",
            self.total().as_millis()
        ));
        lines
    }
}

/// The guest's steps as durations, when its record is whole and in order.
struct GuestSteps {
    init: Duration,
    modules: Duration,
    init_done: Duration,
    listening: Duration,
    announced: Duration,
    /// When initdata and the policy were loaded, if the agent reports both in an order it runs.
    loaded: Option<Loaded>,
}

/// When the agent loaded initdata and its policy: before binding its listener (agents up to
/// #22) or after (it loads them while the host connects).
#[derive(Debug, Clone, Copy)]
enum Loaded {
    BeforeListening {
        initdata: Duration,
        policy: Duration,
    },
    AfterListening {
        initdata: Duration,
        policy: Duration,
    },
}

impl GuestSteps {
    fn from_report(t: &pb::BootTimes) -> Option<Self> {
        let us = Duration::from_micros;
        let ordered = [t.init_us, t.init_done_us, t.listening_us, t.announced_us];
        if ordered[0] == 0 || ordered.windows(2).any(|w| w[0] > w[1]) {
            return None;
        }
        let modules = t.modules_done_us.saturating_sub(t.modules_start_us);
        if t.init_us + modules > t.init_done_us {
            return None;
        }
        let ordered = |steps: &[u64]| steps.windows(2).all(|w| w[0] <= w[1]);
        let (initdata, policy) = (t.initdata_loaded_us, t.policy_loaded_us);
        let loaded = if initdata == 0 || policy == 0 {
            None
        } else if ordered(&[t.init_done_us, initdata, policy, t.listening_us]) {
            Some(Loaded::BeforeListening {
                initdata: us(initdata),
                policy: us(policy),
            })
        } else if ordered(&[t.listening_us, initdata, policy]) {
            Some(Loaded::AfterListening {
                initdata: us(initdata),
                policy: us(policy),
            })
        } else {
            None
        };
        Some(Self {
            init: us(t.init_us),
            modules: us(modules),
            init_done: us(t.init_done_us),
            listening: us(t.listening_us),
            announced: us(t.announced_us),
            loaded,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn phases_add_up_to_the_launch() {
        let launch = LaunchTimes {
            accel_probe: ms(0),
            backend: ms(20),
            vmm: ms(80),
        };
        let guest = pb::BootTimes {
            init_us: 1_500_000,
            root_switched_us: 1_700_000,
            modules_start_us: 1_750_000,
            modules_done_us: 1_850_000,
            init_done_us: 1_900_000,
            listening_us: 2_000_000,
            announced_us: 2_050_000,
            // An agent that does not report them: one server-up phase.
            initdata_loaded_us: 0,
            policy_loaded_us: 0,
        };
        let phases = BootPhases::new(launch, ms(2_600), ms(40), Some(&guest));
        let names: Vec<_> = phases.phases.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [
                "backend start",
                "QEMU start",
                "firmware and kernel",
                "agent init",
                "modules",
                "server up",
                "announce",
                "host connect"
            ]
        );
        let get = |name: &str| phases.phases.iter().find(|(n, _)| *n == name).unwrap().1;
        assert_eq!(get("firmware and kernel"), ms(2_050));
        assert_eq!(get("agent init"), ms(300));
        assert_eq!(get("modules"), ms(100));
        assert_eq!(get("server up"), ms(100));
        assert_eq!(get("announce"), ms(50));
        assert_eq!(phases.total(), ms(20 + 80 + 2_600 + 40));
        assert_eq!(
            phases.lines().last().unwrap(),
            "launch to agent ready: 2740 ms"
        );
    }

    #[test]
    fn initdata_and_policy_loaded_after_listening_run_beside_the_connection() {
        let launch = LaunchTimes {
            accel_probe: ms(0),
            backend: ms(5),
            vmm: ms(90),
        };
        let guest = pb::BootTimes {
            init_us: 1_500_000,
            root_switched_us: 1_510_000,
            modules_start_us: 1_520_000,
            modules_done_us: 1_600_000,
            init_done_us: 1_620_000,
            listening_us: 1_640_000,
            announced_us: 1_660_000,
            initdata_loaded_us: 1_700_000,
            policy_loaded_us: 1_850_000,
        };
        let phases = BootPhases::new(launch, ms(2_400), ms(230), Some(&guest));
        let names: Vec<_> = phases.phases.iter().map(|(n, _)| *n).collect();
        assert!(!names.contains(&"policy load"), "{names:?}");
        assert_eq!(
            phases.concurrent,
            [("initdata", ms(60)), ("policy load", ms(150))]
        );
        assert_eq!(phases.total(), ms(5 + 90 + 2_400 + 230));
        let lines = phases.lines();
        assert_eq!(
            lines[lines.len() - 2],
            "policy load (beside announce and host connect): 150 ms"
        );
        assert_eq!(lines.last().unwrap(), "launch to agent ready: 2725 ms");
    }

    #[test]
    fn initdata_and_policy_load_split_server_up_when_reported_in_order() {
        let launch = LaunchTimes {
            accel_probe: ms(0),
            backend: ms(5),
            vmm: ms(90),
        };
        let mut guest = pb::BootTimes {
            init_us: 1_500_000,
            root_switched_us: 1_510_000,
            modules_start_us: 1_520_000,
            modules_done_us: 1_600_000,
            init_done_us: 1_620_000,
            initdata_loaded_us: 1_700_000,
            policy_loaded_us: 1_900_000,
            listening_us: 1_950_000,
            announced_us: 1_960_000,
        };
        let phases = BootPhases::new(launch, ms(2_400), ms(30), Some(&guest));
        let get =
            |p: &BootPhases, name: &str| p.phases.iter().find(|(n, _)| *n == name).map(|x| x.1);
        assert_eq!(get(&phases, "initdata"), Some(ms(80)));
        assert_eq!(get(&phases, "policy load"), Some(ms(200)));
        assert_eq!(get(&phases, "server up"), Some(ms(50)));
        assert_eq!(phases.total(), ms(5 + 90 + 2_400 + 30));
        // Out of order (a clock read gone wrong): one server-up phase, the same total.
        guest.policy_loaded_us = 1_650_000;
        let phases = BootPhases::new(launch, ms(2_400), ms(30), Some(&guest));
        assert_eq!(get(&phases, "policy load"), None);
        assert_eq!(get(&phases, "server up"), Some(ms(330)));
        assert_eq!(phases.total(), ms(5 + 90 + 2_400 + 30));
    }

    #[test]
    fn a_missing_or_disordered_guest_record_is_one_phase() {
        let launch = LaunchTimes {
            accel_probe: ms(15_000),
            backend: ms(1),
            vmm: ms(2),
        };
        let disordered = pb::BootTimes {
            init_us: 5,
            init_done_us: 3,
            listening_us: 9,
            announced_us: 10,
            ..Default::default()
        };
        for guest in [None, Some(&disordered), Some(&pb::BootTimes::default())] {
            let phases = BootPhases::new(launch, ms(700), ms(3), guest);
            assert_eq!(phases.phases[2], ("guest (to the announcement)", ms(700)));
            assert_eq!(phases.total(), ms(706));
            assert!(phases.lines()[0].starts_with("accelerator probe"));
        }
    }
}
