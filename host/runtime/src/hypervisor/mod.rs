//! The hypervisor abstraction: a backend launches a VM from a [`VmSpec`] and hands back a [`Vm`]
//! the sandbox owns. QEMU ([`qemu`]) is the backend today; TEE launch configuration plugs in here.

pub mod probe_cache;
pub mod qemu;
pub mod qmp;

use std::future::Future;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use crate::network::MacAddr;
use crate::tee::{ConfidentialSpec, TeeError, TeeKind};

/// What to boot.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// Sandbox id (for logs and process names).
    pub id: String,
    /// Private working directory for sockets and logs; must exist.
    pub dir: PathBuf,
    /// Uncompressed kernel (PVH-bootable vmlinux).
    pub kernel: PathBuf,
    /// Initramfs with the agent as /init.
    pub initrd: PathBuf,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Extra kernel command-line parameters.
    pub kernel_params: Vec<String>,
    /// Block devices to attach (virtio-blk), in order.
    pub disks: Vec<DiskSpec>,
    /// Network interfaces to attach (virtio-net on taps), in order; none: the VM has no NIC.
    pub nics: Vec<NicSpec>,
    /// Launch in a TEE; `None` is a plain VM.
    pub confidential: Option<ConfidentialSpec>,
}

/// A raw disk image attached to the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    /// The image file (raw format).
    pub path: PathBuf,
    /// The virtio serial the guest identifies it by (at most 20 bytes, `[A-Za-z0-9_-]`).
    pub serial: String,
    /// Attach read-only: the guest cannot write it.
    pub read_only: bool,
}

/// A virtio-net NIC backed by a tap device.
#[derive(Debug, Clone)]
pub struct NicSpec {
    /// The tap's queue. The VMM gets a copy at launch; the tap lives as long as any copy.
    pub tap: Arc<OwnedFd>,
    /// The guest NIC's MAC.
    pub mac: MacAddr,
    /// The MTU the device offers the guest (VIRTIO_NET_F_MTU), 68..=65535.
    pub mtu: u32,
}

/// Hypervisor failures.
#[derive(Debug, Error)]
pub enum HypervisorError {
    /// A helper or VMM binary could not be started.
    #[error("starting {binary}: {source}")]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The VMM or its vsock backend exited during launch.
    #[error("{what} exited during launch ({status}); log: {log}")]
    EarlyExit {
        /// Which process.
        what: &'static str,
        /// Its exit status.
        status: String,
        /// Where its output is.
        log: PathBuf,
    },
    /// A launch step did not finish in time.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// The monitor (QMP) failed.
    #[error("monitor: {0}")]
    Monitor(#[source] std::io::Error),
    /// Local file handling failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was done.
        op: &'static str,
        /// Path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The accelerator configuration cannot work on this host.
    #[error("accelerator: {0}")]
    Accel(String),
    /// The confidential launch cannot happen on this host or with these settings.
    #[error(transparent)]
    Tee(#[from] TeeError),
}

/// How a VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmExit {
    /// Human-readable status of the VMM process, e.g. `killed by signal 9`.
    pub status: String,
    /// Whether the VMM exited on request (graceful shutdown) rather than on its own.
    pub requested: bool,
}

/// A backend that launches VMs.
pub trait Hypervisor: Send + Sync {
    /// The VM handle type.
    type Vm: Vm;
    /// Checks that this host can launch `tee` guests (hardware, KVM, VMM); never starts anything.
    fn check_tee(&self, tee: TeeKind) -> Result<(), HypervisorError>;
    /// Launches a VM; returns once the VMM runs (not when the guest is ready).
    fn launch(
        &self,
        spec: &VmSpec,
    ) -> impl Future<Output = Result<Self::Vm, HypervisorError>> + Send;
}

/// A running VM.
/// How long the host's steps of a launch took, as the backend measured them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LaunchTimes {
    /// The accelerator probe (zero when its verdict was cached or none was needed).
    pub accel_probe: Duration,
    /// The vsock backend: started until its socket exists.
    pub backend: Duration,
    /// The VMM: started until its monitor and console are connected.
    pub vmm: Duration,
}

pub trait Vm: Send + 'static {
    /// The hybrid-vsock unix socket leading to guest vsock ports.
    fn vsock_socket(&self) -> &Path;
    /// The guest console log.
    fn console_log(&self) -> &Path;
    /// Whether the guest runs under software emulation (TCG) rather than hardware virtualization.
    fn emulated(&self) -> bool;
    /// Resolves when the VMM process has exited (cancel-safe).
    fn wait_exit(&mut self) -> impl Future<Output = VmExit> + Send;
    /// The VMM's view of the guest run state (e.g. `running`).
    fn status(&mut self) -> impl Future<Output = Result<String, HypervisorError>> + Send;
    /// Stops the VM (gracefully, then forcibly) and every helper process; idempotent.
    fn shutdown(&mut self) -> impl Future<Output = VmExit> + Send;
    /// How long the launch's host steps took (zero where a backend does not measure them).
    fn launch_times(&self) -> LaunchTimes {
        LaunchTimes::default()
    }
}
