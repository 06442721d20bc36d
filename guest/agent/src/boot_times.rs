//! When each start-up step of the guest was reached, on the guest's own clock (`CLOCK_BOOTTIME`,
//! microseconds since its kernel started), reported in `GetGuestDetails` so the host can break a
//! launch into phases (`coffer sandbox run --timings`, the boot benchmark). Only PID 1 records
//! the steps before the server; the host believes these numbers for nothing but a printout.

use std::sync::atomic::{AtomicU64, Ordering};

use coffer_agent_protocol::v1 as pb;

/// A start-up step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `/init` started in the initramfs: the kernel's part is over.
    Init = 0,
    /// The initramfs root is mounted over `/` and the agent runs in it.
    RootSwitched,
    /// Module loading began.
    ModulesStart,
    /// Module loading ended.
    ModulesDone,
    /// Mounts and modules are done.
    InitDone,
    /// The agent's server is bound.
    Listening,
    /// The host took the start-up announcement.
    Announced,
    /// Initdata is found, read and checked (or known to be absent).
    InitdataLoaded,
    /// The policy is parsed, compiled and its data checked.
    PolicyLoaded,
}

const STEPS: usize = 9;

static TIMES: [AtomicU64; STEPS] = [const { AtomicU64::new(0) }; STEPS];

/// Microseconds since the guest's kernel started.
pub fn uptime_us() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| {
            u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000
                + u64::try_from(t.tv_nsec()).unwrap_or(0) / 1_000
        })
        .unwrap_or(0)
}

/// Records that `step` is reached now (the first time only).
pub fn mark(step: Step) {
    mark_at(step, uptime_us());
}

/// Records `step` at `us` (the first time only): the first run's `/init` start reaches the second
/// run through the root-switch marker file.
pub fn mark_at(step: Step, us: u64) {
    let _ = TIMES[step as usize].compare_exchange(0, us, Ordering::Relaxed, Ordering::Relaxed);
}

/// The steps reached so far; 0 for any not reached (or not recorded by this process).
pub fn snapshot() -> pb::BootTimes {
    let at = |step: Step| TIMES[step as usize].load(Ordering::Relaxed);
    pb::BootTimes {
        init_us: at(Step::Init),
        root_switched_us: at(Step::RootSwitched),
        modules_start_us: at(Step::ModulesStart),
        modules_done_us: at(Step::ModulesDone),
        init_done_us: at(Step::InitDone),
        listening_us: at(Step::Listening),
        announced_us: at(Step::Announced),
        initdata_loaded_us: at(Step::InitdataLoaded),
        policy_loaded_us: at(Step::PolicyLoaded),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_keeps_its_first_time() {
        mark_at(Step::Listening, 5);
        mark_at(Step::Listening, 9);
        assert_eq!(snapshot().listening_us, 5);
        assert!(uptime_us() > 0);
    }
}
