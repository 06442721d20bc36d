//! PID 1 duties in the guest: leave the initial root for a bind mount of it (so containers can
//! `pivot_root`), mount the kernel filesystems, load the kernel modules the image lists, and power
//! the VM off when the agent is done. All of it runs before the async runtime starts, except the
//! netfilter modules, which the agent loads on demand ([`load_netfilter_modules`]), and the NIC
//! driver, which it loads when `CreateSandbox` describes a network ([`load_network_modules`]).

use std::ffi::CString;
use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};
use thiserror::Error;

use crate::boot_times::{self, Step};

/// Where the initial root is bind-mounted before that mount is moved onto `/`.
const NEW_ROOT: &str = "/newroot";
/// The image's module load order, one absolute path per line.
const MODULE_LIST: &str = "/etc/coffer/modules";
/// The netfilter modules (iptables-nft: nf_tables, NAT, the xtables targets) in load order, loaded
/// only for a container that may change the pod's network.
const NETFILTER_MODULE_LIST: &str = "/etc/coffer/modules-netfilter";
/// The NIC driver (virtio_net and what it needs) in load order, loaded only for a sandbox whose
/// `CreateSandbox` describes a network.
const NETWORK_MODULE_LIST: &str = "/etc/coffer/modules-network";
pub use coffer_agent_protocol::{
    GUEST_INIT_MARKER as INIT_MARKER, GUEST_READY_MARKER as READY_MARKER,
};

/// A failure while bringing the guest up.
#[derive(Debug, Error)]
pub enum InitError {
    /// A mount failed.
    #[error("mount {target}: {source}")]
    Mount {
        /// Mount point.
        target: String,
        /// Cause.
        #[source]
        source: nix::Error,
    },
    /// Creating a directory failed.
    #[error("mkdir {path}: {source}")]
    Mkdir {
        /// Path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Leaving the initial root failed.
    #[error("switch root: {0}")]
    SwitchRoot(#[source] nix::Error),
    /// Loading a kernel module failed.
    #[error("load module {module}: {source}")]
    Module {
        /// Module path.
        module: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Mounts configfs at `target` (needed for configfs-tsm attestation reports in a TEE guest).
pub fn mount_configfs(target: &Path) -> Result<(), InitError> {
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    do_mount(
        "configfs",
        &target.display().to_string(),
        "configfs",
        flags,
        None,
    )
}

fn do_mount(
    source: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), InitError> {
    let _ = std::fs::create_dir_all(target);
    mount(Some(source), target, Some(fstype), flags, data).map_err(|source| InitError::Mount {
        target: target.into(),
        source,
    })
}

/// Brings the guest up as PID 1: leaves the initial root for a bind mount of it, mounts the kernel
/// filesystems and loads the image's boot modules.
pub fn boot() -> Result<(), InitError> {
    boot_times::mark(Step::Init);
    leave_initial_root()?;
    boot_times::mark(Step::RootSwitched);
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    do_mount("proc", "/proc", "proc", nosuid, None)?;
    do_mount("sysfs", "/sys", "sysfs", nosuid, None)?;
    do_mount(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    )?;
    do_mount(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    do_mount("shm", "/dev/shm", "tmpfs", nosuid, Some("mode=1777"))?;
    do_mount(
        "tmpfs",
        "/run",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    )?;
    do_mount(
        "tmpfs",
        "/tmp",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )?;
    do_mount("cgroup2", "/sys/fs/cgroup", "cgroup2", nosuid, None)?;
    boot_times::mark(Step::ModulesStart);
    load_modules()?;
    boot_times::mark(Step::ModulesDone);
    boot_times::mark(Step::InitDone);
    Ok(())
}

/// Leaves the initial root for a bind mount of itself. pivot_root(2) refuses to move the mount
/// namespace's first mount (the initramfs), and every container start pivots; a bind mount of
/// that root, moved onto `/`, is an ordinary mount with a parent, so containers can. The files
/// stay where the kernel unpacked them (a tmpfs, as the command line names no `root=`): nothing
/// is copied, no memory is doubled, and the agent keeps running without a re-exec.
fn leave_initial_root() -> Result<(), InitError> {
    let new_root = Path::new(NEW_ROOT);
    std::fs::create_dir_all(new_root).map_err(|source| InitError::Mkdir {
        path: new_root.to_path_buf(),
        source,
    })?;
    mount(
        Some("/"),
        new_root,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(InitError::SwitchRoot)?;
    nix::unistd::chdir(new_root).map_err(InitError::SwitchRoot)?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(InitError::SwitchRoot)?;
    nix::unistd::chroot(".").map_err(InitError::SwitchRoot)?;
    nix::unistd::chdir("/").map_err(InitError::SwitchRoot)?;
    // The mount point, seen through the bind mount: an empty directory.
    let _ = std::fs::remove_dir(new_root);
    Ok(())
}

/// The virtio devices the loaded transports found (`virtio_pci`, `virtio_mmio` come first in the
/// image's list), each with its device id in `device`.
const VIRTIO_DEVICES: &str = "/sys/bus/virtio/devices";

/// The virtio device id a boot-list driver serves, for drivers worth skipping when the VM has no
/// such device: the block driver serves only the initdata disk, which a VM without initdata does
/// not have (~20 ms of a TCG boot).
fn virtio_driver_device(module: &str) -> Option<u32> {
    match module {
        "virtio_blk" => Some(2),
        _ => None,
    }
}

/// Platform devices: where ACPI's virtio-mmio devices (`LNRO0005`) appear.
const PLATFORM_DEVICES: &str = "/sys/bus/platform/devices";

/// Whether the VM describes a virtio-mmio device (a `microvm`): on the kernel command line
/// (`virtio_mmio.device=`, QEMU's way without ACPI) or as an ACPI platform device. A `q35` VM's
/// virtio devices are PCI, and its boot skips the MMIO transport.
fn virtio_mmio_described(cmdline: &str, platform_devices: &Path) -> bool {
    if cmdline
        .split_whitespace()
        .any(|w| w.starts_with("virtio_mmio.device="))
    {
        return true;
    }
    std::fs::read_dir(platform_devices).is_ok_and(|entries| {
        entries
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().starts_with("LNRO0005"))
    })
}

/// The platform device a boot-list driver binds to, for drivers that only decline (ENODEV) without
/// it: the kernel registers `sev-guest` only in an SEV-SNP guest (`snp_init_platform_device`), and
/// the driver probes nothing else. Loading it anyway cost every non-SNP boot the module's load
/// and unload under TCG.
fn platform_driver_device(module: &str) -> Option<&'static str> {
    match module {
        "sev_guest" => Some("sev-guest"),
        _ => None,
    }
}

/// Whether `module` is worth loading as far as platform devices go: not a platform driver of
/// [`platform_driver_device`], or its device is listed at `platform_devices`.
fn platform_device_present(platform_devices: &Path, module: &str) -> bool {
    platform_driver_device(module).is_none_or(|device| platform_devices.join(device).exists())
}

/// Whether a virtio device with id `device` is on the bus listed at `devices`.
fn virtio_device_present(devices: &Path, device: u32) -> bool {
    let Ok(entries) = std::fs::read_dir(devices) else {
        return false;
    };
    entries.filter_map(Result::ok).any(|entry| {
        std::fs::read_to_string(entry.path().join("device"))
            .ok()
            .and_then(|id| u32::from_str_radix(id.trim().trim_start_matches("0x"), 16).ok())
            == Some(device)
    })
}

/// `name.param=value` entries of the kernel command line for module `name`, as modprobe passes them.
fn module_params(cmdline: &str, module: &str) -> String {
    let prefix = format!("{module}.");
    cmdline
        .split_whitespace()
        .filter_map(|w| w.strip_prefix(&prefix))
        .collect::<Vec<_>>()
        .join(" ")
}

fn load_modules() -> Result<(), InitError> {
    load_module_list(Path::new(MODULE_LIST))
}

/// Loads the image's netfilter modules, which the guest kernel cannot autoload (there is no
/// modprobe). Loading them at boot would cost every sandbox boot time under TCG, so the agent calls
/// this before creating the first container holding CAP_NET_ADMIN or CAP_NET_RAW. Without the
/// list (not a Coffer guest, or a kernel without them) there is nothing to load. Modules already
/// loaded are skipped, so a second call is harmless.
pub fn load_netfilter_modules() -> Result<(), InitError> {
    load_module_list(Path::new(NETFILTER_MODULE_LIST))
}

/// Loads the image's NIC driver (virtio_net and its dependencies), which the guest kernel cannot
/// autoload. Only a pod with a network needs it, so the agent calls this from `CreateSandbox`
/// (after setting the `default` sysctls the new interfaces inherit), not at boot. Without the
/// list (not a Coffer guest, or a kernel with the driver built in) there is nothing to load;
/// modules already loaded are skipped.
pub fn load_network_modules() -> Result<(), InitError> {
    load_module_list(Path::new(NETWORK_MODULE_LIST))
}

fn load_module_list(list: &Path) -> Result<(), InitError> {
    let Ok(list) = std::fs::read_to_string(list) else {
        return Ok(());
    };
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    for path in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let name = Path::new(path)
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".ko"))
            .unwrap_or(path)
            .replace('-', "_");
        if let Some(device) = virtio_driver_device(&name)
            && !virtio_device_present(Path::new(VIRTIO_DEVICES), device)
        {
            tracing::debug!(module = %name, "no virtio device for this driver; not loaded");
            continue;
        }
        if !platform_device_present(Path::new(PLATFORM_DEVICES), &name) {
            tracing::debug!(module = %name, "no platform device for this driver; not loaded");
            continue;
        }
        if name == "virtio_mmio" && !virtio_mmio_described(&cmdline, Path::new(PLATFORM_DEVICES)) {
            tracing::debug!("no virtio-mmio device described; virtio_mmio not loaded");
            continue;
        }
        let params = module_params(&cmdline, &name);
        let module_err = |source: std::io::Error| InitError::Module {
            module: path.into(),
            source,
        };
        let file = std::fs::File::open(path).map_err(module_err)?;
        let params = CString::new(params).map_err(|e| module_err(std::io::Error::other(e)))?;
        match nix::kmod::finit_module(&file, &params, nix::kmod::ModuleInitFlags::empty()) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
            // A driver for hardware this VM does not have (tdx-guest outside TDX) declines with
            // ENODEV; that is not a failure of the image.
            Err(nix::errno::Errno::ENODEV) => {
                tracing::debug!(module = %name, "no device for this module");
            }
            Err(e) => return Err(module_err(e.into())),
        }
    }
    Ok(())
}

/// Seconds since boot (CLOCK_BOOTTIME), for boot-time markers.
pub fn uptime() -> String {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| format!("{}.{:03}", t.tv_sec(), t.tv_nsec() / 1_000_000))
        .unwrap_or_else(|_| "?".into())
}

/// Syncs and powers the VM off. Never returns.
pub fn power_off() -> ! {
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    // reboot(2) only returns on failure; PID 1 must not exit, so wait for the host to kill us.
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mmio_transport_is_loaded_only_for_described_devices() {
        let platform = tempfile::tempdir().unwrap();
        assert!(!virtio_mmio_described(
            "console=ttyS0 quiet",
            platform.path()
        ));
        assert!(virtio_mmio_described(
            "console=ttyS0 virtio_mmio.device=512@0xfeb00e00:12",
            platform.path()
        ));
        std::fs::create_dir(platform.path().join("serial8250")).unwrap();
        assert!(!virtio_mmio_described("", platform.path()));
        std::fs::create_dir(platform.path().join("LNRO0005:00")).unwrap();
        assert!(virtio_mmio_described("", platform.path()));
    }

    #[test]
    fn a_virtio_driver_is_loaded_only_for_its_device() {
        let bus = tempfile::tempdir().unwrap();
        assert_eq!(virtio_driver_device("virtio_blk"), Some(2));
        assert_eq!(virtio_driver_device("vmw_vsock_virtio_transport"), None);
        assert!(!virtio_device_present(&bus.path().join("absent"), 2));
        // The vsock device (0x0013) alone: no block device.
        std::fs::create_dir(bus.path().join("virtio0")).unwrap();
        std::fs::write(bus.path().join("virtio0/device"), "0x0013\n").unwrap();
        assert!(!virtio_device_present(bus.path(), 2));
        std::fs::create_dir(bus.path().join("virtio1")).unwrap();
        std::fs::write(bus.path().join("virtio1/device"), "0x0002\n").unwrap();
        assert!(virtio_device_present(bus.path(), 2));
    }

    #[test]
    fn the_sev_guest_driver_is_loaded_only_where_the_kernel_registered_its_device() {
        let platform = tempfile::tempdir().unwrap();
        // The module file is sev-guest.ko; the loader compares names with `-` as `_`.
        assert!(!platform_device_present(platform.path(), "sev_guest"));
        assert!(platform_device_present(platform.path(), "virtio_pci"));
        std::fs::create_dir(platform.path().join("serial8250")).unwrap();
        assert!(!platform_device_present(platform.path(), "sev_guest"));
        std::fs::create_dir(platform.path().join("sev-guest")).unwrap();
        assert!(platform_device_present(platform.path(), "sev_guest"));
    }

    #[test]
    fn module_params_come_from_the_cmdline() {
        let cmdline = "console=ttyS0 virtio_mmio.device=512@0xfeb00e00:12 virtio_mmio.device=512@0xfeb00c00:11 quiet";
        assert_eq!(
            module_params(cmdline, "virtio_mmio"),
            "device=512@0xfeb00e00:12 device=512@0xfeb00c00:11"
        );
        assert_eq!(module_params(cmdline, "vsock"), "");
    }
}
