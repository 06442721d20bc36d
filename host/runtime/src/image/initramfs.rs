//! The guest's initramfs layout (see the module documentation of [`super`] for the full listing).

use super::ImageError;
use super::cpio::Archive;
use super::modules::ModuleFile;

/// The guest path of the module load-order list the agent reads at boot.
pub const MODULES_LIST: &str = "/etc/coffer/modules";

/// The guest path of the netfilter modules' load order, which the agent reads before the first
/// container that may change the pod's network.
pub const NETFILTER_MODULES_LIST: &str = "/etc/coffer/modules-netfilter";

/// The guest path of the NIC driver's load order, which the agent reads at `CreateSandbox` when
/// the host describes a pod network.
pub const NETWORK_MODULES_LIST: &str = "/etc/coffer/modules-network";

/// The guest path of the agent, which the kernel runs as PID 1.
pub const INIT: &str = "/init";

/// Contents of `/etc/hosts`.
const HOSTS: &[u8] = b"127.0.0.1 localhost\n::1 localhost\n";

/// Directories that exist regardless of the module set, with their permissions.
const DIRS: &[(&str, u32)] = &[
    ("/dev", 0o755),
    ("/etc", 0o755),
    ("/etc/coffer", 0o755),
    ("/lib", 0o755),
    ("/lib/modules", 0o755),
    ("/newroot", 0o755),
    ("/proc", 0o755),
    ("/run", 0o755),
    ("/sys", 0o755),
    ("/tmp", 0o1777),
];

/// Lays out the initramfs for kernel `release`: the base directories, `/dev/console`, the agent as
/// `/init`, `/etc/hosts`, the modules (in load order) and `/etc/coffer/modules` listing them, the
/// netfilter modules with `/etc/coffer/modules-netfilter` listing those, and the NIC driver with
/// `/etc/coffer/modules-network`. A module two on-demand lists share is stored once and listed in
/// both.
pub(crate) fn assemble(
    release: &str,
    agent: &[u8],
    modules: &[ModuleFile],
    netfilter: &[ModuleFile],
    network: &[ModuleFile],
) -> Result<Archive, ImageError> {
    let mut archive = Archive::new();
    for (dir, perm) in DIRS {
        archive.dir(dir, *perm)?;
    }
    let modules_root = format!("/lib/modules/{release}");
    archive.dir(&modules_root, 0o755)?;
    // The console the kernel opens for PID 1's stdio before devtmpfs is mounted.
    archive.char_dev("/dev/console", 0o600, 5, 1)?;
    archive.file(INIT, 0o755, agent.to_vec())?;
    archive.file("/etc/hosts", 0o644, HOSTS.to_vec())?;
    let mut stored = std::collections::BTreeSet::new();
    for (list, modules) in [
        (MODULES_LIST, modules),
        (NETFILTER_MODULES_LIST, netfilter),
        (NETWORK_MODULES_LIST, network),
    ] {
        let mut load_order = String::new();
        for module in modules {
            let guest_path = format!("{modules_root}/{}", module.guest_relative());
            if stored.insert(guest_path.clone()) {
                archive.file(&guest_path, 0o644, module.contents()?)?;
            }
            load_order.push_str(&guest_path);
            load_order.push('\n');
        }
        archive.file(list, 0o644, load_order.into_bytes())?;
    }
    Ok(archive)
}
