//! Reproducible guest image builder.
//!
//! A Coffer VM boots two artifacts that [`build`] derives from the host's Debian kernel package
//! (`linux-image-amd64`) and the static `coffer-agent` binary:
//!
//! - `vmlinux`: the uncompressed ELF kernel, extracted from the xz payload of `/boot/vmlinuz-<release>`
//!   (an uncompressed kernel boots about three times faster under TCG than the self-decompressing
//!   bzImage).
//! - `initramfs`: an uncompressed cpio "newc" archive written by our own writer, containing
//!
//!   | path | contents |
//!   |------|----------|
//!   | `/init` (0755) | the agent, run by the kernel as PID 1 |
//!   | `/dev/console` (0600) | character device 5:1 |
//!   | `/etc/hosts` (0644) | `127.0.0.1 localhost`, `::1 localhost` |
//!   | `/etc/coffer/modules` (0644) | absolute guest paths of the modules, one per line, in load order |
//!   | `/etc/coffer/modules-netfilter` (0644) | the same for the [`NETFILTER_MODULES`] the boot list lacks, which the agent loads only for a container holding CAP_NET_ADMIN/CAP_NET_RAW |
//!   | `/etc/coffer/modules-network` (0644) | the same for the [`NETWORK_MODULES`] (the NIC driver) the boot list lacks, which the agent loads only when `CreateSandbox` describes a pod network |
//!   | `/lib/modules/<release>/…` (0644) | the requested modules and their dependencies (`.ko.xz` stored decompressed as `.ko`) |
//!   | `/dev /etc /etc/coffer /lib /lib/modules /newroot /proc /run /sys` (0755), `/tmp` (01777) | empty mount points and parents |
//!
//! Both go to `out_dir` together with `guest-image.json`, a [`GuestImage`] plus the digest of the
//! inputs that produced it.
//!
//! # Reproducibility
//!
//! The outputs are a pure function of the input bytes (bzImage, agent, module files), the kernel
//! release and the requested module names: no timestamps, owners or host inode numbers reach the
//! archive (entries are sorted by path, inodes numbered sequentially, mtimes and uid/gid are 0), and
//! the module load order is a deterministic post-order walk of `modules.dep`. The same inputs always
//! give byte-identical artifacts, and therefore the same launch measurement.
//!
//! # Caching and atomicity
//!
//! Every artifact is written to a temporary name in `out_dir`, synced and renamed into place, so a
//! reader never sees a half-written file; `guest-image.json` is written last. When it already
//! records the current inputs digest and both artifacts still hash to the recorded digests, [`build`]
//! returns it without re-extracting the kernel.

mod cpio;
mod error;
mod initramfs;
mod kernel;
mod modules;
#[cfg(test)]
mod newc_reader;
#[cfg(test)]
mod tests;

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use error::ImageError;
pub use initramfs::{INIT, MODULES_LIST, NETFILTER_MODULES_LIST, NETWORK_MODULES_LIST};
use modules::{ModuleFile, ModuleIndex};

/// The modules the agent needs at boot: virtio transports (MMIO for `microvm`, PCI for `q35`), the
/// virtio vsock transport to reach the host, and virtio-blk for the initdata disk. (overlayfs was
/// loaded too until nothing in the guest used it: at 355 KB the largest module, ~15 % of the
/// boot's module time under TCG.)
pub const DEFAULT_MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_pci",
    "vmw_vsock_virtio_transport",
    "virtio_blk",
];

/// Modules added when the kernel has them: the TEE guest drivers (`/dev/sev-guest`,
/// `/dev/tdx_guest`) the attester reads reports from. Outside their TEE the agent skips
/// `sev-guest` (its platform device exists only in an SEV-SNP guest) and `tdx-guest` declines with
/// ENODEV, which the agent tolerates; a kernel without them still gives a (sandbox-only) image.
pub const TEE_MODULES: &[&str] = &["sev-guest", "tdx-guest"];

/// Modules Debian's `iptables` (iptables-nft) needs inside the guest for an Istio-style mesh init
/// (`iptables -t nat -A OUTPUT -p tcp --dport P -j REDIRECT --to-ports Q`): nf_tables with the
/// xtables compatibility layer, the NAT chain type, and the REDIRECT target and tcp match it
/// passes through as xtables extensions; `modules.dep` adds nf_nat, nf_conntrack, nfnetlink,
/// x_tables and their dependencies. `crc32c_generic` comes first: libcrc32c (which nf_tables and
/// nf_conntrack need) asks the crypto API for crc32c when it loads and fails with ENOENT without an
/// implementation; modprobe would load one from a softdep, which `modules.dep` does not carry (and
/// `crc32c-intel` needs SSE4.2, which a TCG CPU may lack). Added when the kernel has them (a kernel with netfilter built
/// in needs no list), listed apart: the guest kernel cannot autoload modules, and loading these at
/// boot would cost every sandbox's boot what only a pod with a mesh init uses, so the agent loads
/// them before the first container holding CAP_NET_ADMIN or CAP_NET_RAW.
pub const NETFILTER_MODULES: &[&str] = &[
    "crc32c_generic",
    "nf_tables",
    "nft_compat",
    "nft_chain_nat",
    "xt_REDIRECT",
    "xt_tcpudp",
];

/// The NIC driver of a pod with a network: virtio-net (`modules.dep` adds `net_failover` and
/// `failover`, and the virtio core the boot list already has). Added when the kernel has it (a
/// kernel with it built in needs no list), listed apart and loaded by the agent at `CreateSandbox`
/// only when the host describes a network, after it set the sysctls the new interfaces inherit: a
/// pod without a network never has a NIC driver, whatever devices the host attaches.
pub const NETWORK_MODULES: &[&str] = &["virtio_net"];

/// File names of the artifacts in the output directory.
const VMLINUX: &str = "vmlinux";
const BZIMAGE: &str = "vmlinuz";
const INITRAMFS: &str = "initramfs";
const MANIFEST: &str = "guest-image.json";

/// Bumped whenever the builder's output for the same inputs changes; part of the inputs digest.
const BUILDER_VERSION: &[u8] = b"coffer-guest-image/5";

/// Where the host keeps kernels and their modules.
const BOOT_DIR: &str = "/boot";
const MODULES_ROOT: &str = "/lib/modules";

/// What goes into a guest image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestImageSpec {
    /// The compressed kernel (a bzImage), e.g. `/boot/vmlinuz-6.1.0-56-amd64`.
    pub kernel: PathBuf,
    /// The kernel's modules (with `modules.dep`), e.g. `/lib/modules/6.1.0-56-amd64`. Its name is
    /// the kernel release.
    pub modules_dir: PathBuf,
    /// The static `coffer-agent` binary; becomes `/init`.
    pub agent: PathBuf,
    /// Top-level modules to load, in order; dependencies are added automatically.
    pub modules: Vec<String>,
}

impl GuestImageSpec {
    /// Picks the newest `/boot/vmlinuz-<release>` (by version order) that has a matching
    /// `/lib/modules/<release>/modules.dep`, with [`DEFAULT_MODULES`].
    pub fn detect(agent: PathBuf) -> Result<Self, ImageError> {
        Self::detect_in(Path::new(BOOT_DIR), Path::new(MODULES_ROOT), agent)
    }

    fn detect_in(boot_dir: &Path, modules_root: &Path, agent: PathBuf) -> Result<Self, ImageError> {
        let read_error = |source| ImageError::Read {
            path: boot_dir.to_owned(),
            source,
        };
        let mut releases = Vec::new();
        for entry in fs::read_dir(boot_dir).map_err(read_error)? {
            let entry = entry.map_err(read_error)?;
            let name = entry.file_name();
            let Some(release) = name.to_str().and_then(|n| n.strip_prefix("vmlinuz-")) else {
                continue;
            };
            if !release.is_empty() && entry.path().is_file() {
                releases.push(release.to_owned());
            }
        }
        releases.sort_by(|a, b| compare_versions(b, a));
        releases
            .into_iter()
            .find(|release| modules_root.join(release).join("modules.dep").is_file())
            .map(|release| Self {
                kernel: boot_dir.join(format!("vmlinuz-{release}")),
                modules_dir: modules_root.join(&release),
                agent,
                modules: DEFAULT_MODULES.iter().map(|m| (*m).to_owned()).collect(),
            })
            .ok_or_else(|| ImageError::NoKernel {
                boot_dir: boot_dir.to_owned(),
                modules_root: modules_root.to_owned(),
            })
    }
}

/// A built guest image; also the contents of `guest-image.json` (with the inputs digest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestImage {
    /// The uncompressed ELF kernel (PVH boot: sandbox mode).
    pub vmlinux: PathBuf,
    /// The same kernel as the distribution's bzImage (OVMF boots it: confidential mode, where
    /// `coffer measure` hashes it into the launch digest).
    pub vmlinuz: PathBuf,
    /// Hex SHA-256 of `vmlinuz`.
    pub vmlinuz_sha256: String,
    /// The uncompressed cpio newc initramfs.
    pub initramfs: PathBuf,
    /// Hex SHA-256 of `vmlinux`.
    pub vmlinux_sha256: String,
    /// Hex SHA-256 of `initramfs`.
    pub initramfs_sha256: String,
    /// The kernel release (`uname -r` in the guest).
    pub kernel_release: String,
}

/// `guest-image.json`.
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    #[serde(flatten)]
    image: GuestImage,
    /// Hex SHA-256 over the builder version, release, module names and all input bytes.
    inputs_sha256: String,
    /// The module load order (guest paths), for inspection.
    modules: Vec<String>,
    /// The load order of the netfilter modules the agent loads on demand (guest paths).
    #[serde(default)]
    netfilter_modules: Vec<String>,
    /// The load order of the NIC driver the agent loads for a pod network (guest paths).
    #[serde(default)]
    network_modules: Vec<String>,
}

/// Everything read from the host for one build.
#[derive(Debug)]
struct Inputs {
    release: String,
    bzimage: Vec<u8>,
    agent: Vec<u8>,
    /// In load order.
    modules: Vec<ModuleFile>,
    /// The netfilter modules not already in `modules`, in load order.
    netfilter: Vec<ModuleFile>,
    /// The NIC driver's modules not already in `modules`, in load order.
    network: Vec<ModuleFile>,
    digest: String,
}

impl Inputs {
    fn read(spec: &GuestImageSpec) -> Result<Self, ImageError> {
        let release = spec
            .modules_dir
            .file_name()
            .and_then(|name| name.to_str())
            .ok_or_else(|| ImageError::InvalidModulesDir {
                path: spec.modules_dir.clone(),
            })?
            .to_owned();
        let bzimage = read(&spec.kernel)?;
        if let Some(kernel_release) = kernel::header_release(&bzimage).filter(|r| *r != release) {
            return Err(ImageError::ReleaseMismatch {
                kernel: spec.kernel.clone(),
                kernel_release: kernel_release.to_owned(),
                modules_dir: spec.modules_dir.clone(),
                modules_release: release,
            });
        }
        let agent = read(&spec.agent)?;
        let index = ModuleIndex::load(&spec.modules_dir)?;
        let mut wanted = spec.modules.clone();
        wanted.extend(
            TEE_MODULES
                .iter()
                .filter(|m| index.knows(m))
                .map(|m| (*m).to_owned()),
        );
        let order = index.load_order(&wanted)?;
        let modules = order
            .iter()
            .map(|relative| ModuleFile::read(&spec.modules_dir, relative))
            .collect::<Result<Vec<_>, _>>()?;
        // An on-demand list: the wanted modules the kernel has, in load order, less what the
        // boot list already loaded.
        let on_demand = |names: &[&str]| -> Result<Vec<ModuleFile>, ImageError> {
            let wanted: Vec<String> = names
                .iter()
                .filter(|m| index.knows(m))
                .map(|m| (*m).to_owned())
                .collect();
            index
                .load_order(&wanted)?
                .iter()
                .filter(|relative| !order.contains(relative))
                .map(|relative| ModuleFile::read(&spec.modules_dir, relative))
                .collect()
        };
        let netfilter = on_demand(NETFILTER_MODULES)?;
        let network = on_demand(NETWORK_MODULES)?;

        // Length-prefixed fields, so no two different input sets hash the same byte stream.
        let mut hasher = Sha256::new();
        let mut field = |bytes: &[u8]| {
            hasher.update((bytes.len() as u64).to_le_bytes());
            hasher.update(bytes);
        };
        field(BUILDER_VERSION);
        field(release.as_bytes());
        field(&(spec.modules.len() as u64).to_le_bytes());
        spec.modules.iter().for_each(|name| field(name.as_bytes()));
        field(&bzimage);
        field(&agent);
        for list in [&modules, &netfilter, &network] {
            field(&(list.len() as u64).to_le_bytes());
            for module in list {
                field(module.guest_relative().as_bytes());
                field(module.raw());
            }
        }
        let digest = hex::encode(hasher.finalize());
        Ok(Self {
            release,
            bzimage,
            agent,
            modules,
            netfilter,
            network,
            digest,
        })
    }

    fn guest_paths(&self, modules: &[ModuleFile]) -> Vec<String> {
        let root = format!("/lib/modules/{}", self.release);
        modules
            .iter()
            .map(|m| format!("{root}/{}", m.guest_relative()))
            .collect()
    }
}

/// Builds (or reuses) the guest image for `spec` in `out_dir`, which is created if missing.
pub fn build(spec: &GuestImageSpec, out_dir: &Path) -> Result<GuestImage, ImageError> {
    let inputs = Inputs::read(spec)?;
    let vmlinux_path = out_dir.join(VMLINUX);
    let vmlinuz_path = out_dir.join(BZIMAGE);
    let initramfs_path = out_dir.join(INITRAMFS);
    let manifest_path = out_dir.join(MANIFEST);
    if let Some(image) = reuse(&manifest_path, out_dir, &inputs.digest) {
        tracing::debug!(out_dir = %out_dir.display(), "guest image is up to date");
        return Ok(image);
    }
    tracing::info!(
        kernel = %spec.kernel.display(),
        release = %inputs.release,
        out_dir = %out_dir.display(),
        "building guest image"
    );
    fs::create_dir_all(out_dir).map_err(|source| ImageError::Write {
        path: out_dir.to_owned(),
        source,
    })?;

    let vmlinux = kernel::extract_vmlinux(&inputs.bzimage, &spec.kernel)?;
    let mut initramfs = Vec::new();
    let agent = strip_debug_info(&inputs.agent);
    initramfs::assemble(
        &inputs.release,
        &agent,
        &inputs.modules,
        &inputs.netfilter,
        &inputs.network,
    )?
    .write_to(&mut initramfs)
    .map_err(|source| ImageError::Write {
        path: initramfs_path.clone(),
        source,
    })?;

    let manifest = Manifest {
        image: GuestImage {
            vmlinux_sha256: sha256_hex(&vmlinux),
            vmlinuz_sha256: sha256_hex(&inputs.bzimage),
            initramfs_sha256: sha256_hex(&initramfs),
            vmlinux: vmlinux_path,
            vmlinuz: vmlinuz_path,
            initramfs: initramfs_path,
            kernel_release: inputs.release.clone(),
        },
        inputs_sha256: inputs.digest.clone(),
        modules: inputs.guest_paths(&inputs.modules),
        netfilter_modules: inputs.guest_paths(&inputs.netfilter),
        network_modules: inputs.guest_paths(&inputs.network),
    };
    let mut json = serde_json::to_vec_pretty(&manifest).map_err(|source| ImageError::Manifest {
        path: manifest_path.clone(),
        source,
    })?;
    json.push(b'\n');

    // A file whose bytes are already there is left alone: the accelerator probe's cache knows a
    // guest kernel by path, size and mtime, and a new agent must not cost another probe.
    write_if_changed(&manifest.image.vmlinux, &vmlinux)?;
    write_if_changed(&manifest.image.vmlinuz, &inputs.bzimage)?;
    write_if_changed(&manifest.image.initramfs, &initramfs)?;
    write_atomic(&manifest_path, &json)?;
    // Make the renames durable (best effort: not every filesystem supports syncing a directory).
    if let Err(error) = File::open(out_dir).and_then(|dir| dir.sync_all()) {
        tracing::debug!(%error, out_dir = %out_dir.display(), "could not sync output directory");
    }
    Ok(manifest.image)
}

/// The agent without its debug sections when binutils' `objcopy` is available (a debug build's
/// line tables double the initramfs, and every boot copies it); the agent unchanged otherwise.
/// `objcopy --strip-debug` runs on a private copy of the bytes already read and hashed, and is
/// deterministic, so the image stays a function of its inputs.
fn strip_debug_info(agent: &[u8]) -> Vec<u8> {
    let stripped = tempfile::tempdir().ok().and_then(|dir| {
        let copy = dir.path().join("agent");
        fs::write(&copy, agent).ok()?;
        let status = std::process::Command::new("objcopy")
            .arg("--strip-debug")
            .arg(&copy)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        status.success().then(|| fs::read(&copy).ok()).flatten()
    });
    stripped.unwrap_or_else(|| {
        tracing::warn!("objcopy unavailable or failed: the agent keeps its debug sections");
        agent.to_vec()
    })
}

/// Loads the image previously built into `out_dir` (no rebuild, no re-hash).
pub fn load(out_dir: &Path) -> Result<GuestImage, ImageError> {
    let path = out_dir.join(MANIFEST);
    let bytes = read(&path)?;
    let recorded: Manifest =
        serde_json::from_slice(&bytes).map_err(|source| ImageError::InvalidManifest {
            path: path.clone(),
            source,
        })?;
    Ok(GuestImage {
        vmlinux: out_dir.join(VMLINUX),
        vmlinuz: out_dir.join(BZIMAGE),
        initramfs: out_dir.join(INITRAMFS),
        ..recorded.image
    })
}

/// Returns the recorded image if the manifest matches `inputs_digest` and both artifacts still hash
/// to the recorded digests. Any mismatch or unreadable file means "rebuild".
/// Writes `bytes` to `path` (atomically) unless the file already holds exactly them.
fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let same = fs::metadata(path).is_ok_and(|m| m.len() == bytes.len() as u64)
        && sha256_file(path).is_ok_and(|h| h == sha256_hex(bytes));
    if same {
        return Ok(());
    }
    write_atomic(path, bytes)
}

fn reuse(manifest: &Path, out_dir: &Path, inputs_digest: &str) -> Option<GuestImage> {
    let bytes = fs::read(manifest).ok()?;
    let recorded: Manifest = serde_json::from_slice(&bytes).ok()?;
    if recorded.inputs_sha256 != inputs_digest {
        return None;
    }
    let image = GuestImage {
        vmlinux: out_dir.join(VMLINUX),
        vmlinuz: out_dir.join(BZIMAGE),
        initramfs: out_dir.join(INITRAMFS),
        ..recorded.image
    };
    let intact = sha256_file(&image.vmlinux).ok()? == image.vmlinux_sha256
        && sha256_file(&image.vmlinuz).ok()? == image.vmlinuz_sha256
        && sha256_file(&image.initramfs).ok()? == image.initramfs_sha256;
    intact.then_some(image)
}

fn read(path: &Path) -> Result<Vec<u8>, ImageError> {
    fs::read(path).map_err(|source| ImageError::Read {
        path: path.to_owned(),
        source,
    })
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn sha256_file(path: &Path) -> io::Result<String> {
    let mut hasher = Sha256::new();
    io::copy(&mut File::open(path)?, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

/// Writes `data` to a unique temporary file next to `path`, syncs it and renames it over `path`.
fn write_atomic(path: &Path, data: &[u8]) -> Result<(), ImageError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("artifact");
    let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
    let temp = path.with_file_name(format!(".{name}.{}.{unique}.tmp", std::process::id()));
    let result = File::create(&temp)
        .and_then(|mut file| {
            file.write_all(data)?;
            file.sync_all()
        })
        .and_then(|()| fs::rename(&temp, path));
    result.map_err(|source| {
        if let Err(error) = fs::remove_file(&temp) {
            tracing::debug!(%error, temp = %temp.display(), "could not remove temporary file");
        }
        ImageError::Write {
            path: path.to_owned(),
            source,
        }
    })
}

/// Orders kernel releases like version numbers: digit runs compare numerically (so `6.1.0-10`
/// sorts after `6.1.0-9`), other runs byte-wise; ties fall back to plain string order.
fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    fn runs(s: &str) -> impl Iterator<Item = &str> {
        s.as_bytes()
            .chunk_by(|x, y| x.is_ascii_digit() == y.is_ascii_digit())
            .filter_map(|run| std::str::from_utf8(run).ok())
    }
    let numeric = |run: &str| run.bytes().all(|b| b.is_ascii_digit());
    for (x, y) in runs(a).zip(runs(b)) {
        let order = if numeric(x) && numeric(y) {
            let (x, y) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
            x.len().cmp(&y.len()).then_with(|| x.cmp(y))
        } else {
            x.cmp(y)
        };
        if order.is_ne() {
            return order;
        }
    }
    runs(a).count().cmp(&runs(b).count()).then_with(|| a.cmp(b))
}
