//! The runtime configuration file, `/etc/coffer/runtime.toml`: every key documented here and in
//! `host/runtime/runtime.toml` (the reference file, all defaults spelled out), unknown keys
//! rejected, loaded once and validated before anything starts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::hypervisor::probe_cache;
use crate::hypervisor::qemu::QemuConfig;
use crate::publish::PublishedPort;
use crate::sandbox::{InitdataDisk, SandboxConfig};
use crate::tee::{SnpConfig, TdxConfig, TeeError, TeeKind, TeeLaunch};
use crate::tunnel::RegistryTunnel;

/// Where the runtime looks for its configuration.
pub const DEFAULT_PATH: &str = "/etc/coffer/runtime.toml";

/// Configuration failures.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}")]
    Read {
        /// Path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown keys.
    #[error("{path}{}: {message}", line.map(|l| format!(", line {l}")).unwrap_or_default())]
    Parse {
        /// Path.
        path: PathBuf,
        /// The line the parser stopped at.
        line: Option<usize>,
        /// The parser's complaint (one line, without the quoted source).
        message: String,
    },
    /// A value is out of range.
    #[error("{path}: {reason}")]
    Invalid {
        /// Path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The `[snp]`/`[tdx]` settings are unusable.
    #[error("{path}")]
    Tee {
        /// Path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: TeeError,
    },
}

/// `[guest]`: the VM every sandbox boots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuestConfig {
    /// The guest image directory (`coffer image build --out`): `vmlinux`, `vmlinuz`,
    /// `initramfs`. Default `/var/lib/coffer/guest`.
    pub image_dir: PathBuf,
    /// vCPUs per sandbox. Default 1.
    pub vcpus: u32,
    /// Memory per sandbox, MiB. Default 512.
    pub memory_mib: u32,
    /// How long the agent may take to answer after launch, seconds. Default (unset): 30 when the
    /// VM runs under KVM, 120 under TCG emulation, whose boot is several times slower and varies
    /// with the host's load.
    pub boot_timeout_secs: Option<u64>,
    /// Extra kernel command-line parameters. In a TEE they are measured: changing them changes
    /// the launch digest.
    pub kernel_params: Vec<String>,
    /// Pull container images inside the guest even without a TEE (in a TEE the guest always
    /// pulls; the host's snapshot is never shared). Default false: sandbox mode uploads the
    /// snapshot.
    pub guest_pull: bool,
    /// Registry endpoints (IPv4 loopback `host:port`) tunnelled into every guest, reachable there
    /// at the same address. Default none: the guest has no network.
    pub registry_tunnels: Vec<std::net::SocketAddrV4>,
    /// Guest ports published at host addresses, `IPV4:HOSTPORT:GUESTPORT`: the runtime listens on
    /// the host address and carries each connection into the guest to `127.0.0.2:GUESTPORT`
    /// (services listening on all addresses; never one bound to 127.0.0.1). Every sandbox of this
    /// configuration binds these addresses, so only one runs at a time; for `coffer sandbox run`
    /// only (the shim refuses it). Default none.
    pub published_ports: Vec<PublishedPort>,
}

impl Default for GuestConfig {
    fn default() -> Self {
        Self {
            image_dir: "/var/lib/coffer/guest".into(),
            vcpus: 1,
            memory_mib: 512,
            boot_timeout_secs: None,
            kernel_params: Vec::new(),
            guest_pull: false,
            registry_tunnels: Vec::new(),
            published_ports: Vec::new(),
        }
    }
}

/// The whole file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Sandbox state (sockets, logs). Default `/run/coffer`.
    pub state_dir: PathBuf,
    /// Launch every sandbox of this configuration in this TEE (`snp` or `tdx`): the setting of a
    /// RuntimeClass handler such as `coffer-snp`. Default none: plain VMs.
    pub tee: Option<TeeKind>,
    /// Initdata (TOML file) for pods that bring none in an annotation. Default none.
    pub initdata: Option<PathBuf>,
    /// Directory of node_exporter's textfile collector: the shim keeps each pod's boot and
    /// guest-pull timings there as `coffer-<sandbox id>.prom`. Default none: no metrics files.
    pub metrics_dir: Option<PathBuf>,
    /// The guest VM.
    pub guest: GuestConfig,
    /// The QEMU backend.
    pub qemu: QemuConfig,
    /// SEV-SNP launches.
    pub snp: SnpConfig,
    /// TDX launches.
    pub tdx: TdxConfig,
}

impl RuntimeConfig {
    /// Parses and validates `text`; `path` names the source in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut config: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            line: e
                .span()
                .and_then(|span| text.get(..span.start))
                .map(|before| before.matches('\n').count() + 1),
            message: e.message().to_owned(),
        })?;
        if config.state_dir.as_os_str().is_empty() {
            config.state_dir = "/run/coffer".into();
        }
        config.validate(path)?;
        Ok(config)
    }

    /// Reads `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Reads `path` if given; else [`DEFAULT_PATH`] if it exists; else the defaults.
    pub fn load_or_default(path: Option<&Path>) -> Result<Self, ConfigError> {
        match path {
            Some(path) => Self::load(path),
            None if Path::new(DEFAULT_PATH).exists() => Self::load(Path::new(DEFAULT_PATH)),
            None => Self::parse("", Path::new("(defaults)")),
        }
    }

    /// Checks every value; `path` names the source in errors. [`Self::parse`] calls it; call it
    /// again after changing a loaded configuration.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |reason: String| ConfigError::Invalid {
            path: path.to_owned(),
            reason,
        };
        if !(1..=255).contains(&self.guest.vcpus) {
            return Err(invalid(format!(
                "guest.vcpus {} is outside 1..=255",
                self.guest.vcpus
            )));
        }
        if self.guest.memory_mib < 128 {
            return Err(invalid(format!(
                "guest.memory_mib {} is below 128",
                self.guest.memory_mib
            )));
        }
        if self.guest.boot_timeout_secs == Some(0) {
            return Err(invalid("guest.boot_timeout_secs must be positive".into()));
        }
        if let Some(addr) = self
            .guest
            .registry_tunnels
            .iter()
            .find(|a| !a.ip().is_loopback())
        {
            return Err(invalid(format!(
                "guest.registry_tunnels: {addr} is not a loopback address"
            )));
        }
        let published = &self.guest.published_ports;
        if published.len() > crate::publish::MAX_PORTS {
            return Err(invalid(format!(
                "guest.published_ports: {} ports; at most {}",
                published.len(),
                crate::publish::MAX_PORTS
            )));
        }
        for (i, p) in published.iter().enumerate() {
            if published[..i]
                .iter()
                .any(|q| q.host == p.host || q.guest_port == p.guest_port)
            {
                return Err(invalid(format!(
                    "guest.published_ports: {p} repeats a host address or guest port"
                )));
            }
        }
        let tee = |source| ConfigError::Tee {
            path: path.to_owned(),
            source,
        };
        self.snp.validate().map_err(tee)?;
        self.tdx.validate().map_err(tee)?;
        Ok(())
    }

    /// The PVH kernel sandbox-mode VMs boot.
    pub fn kernel(&self) -> PathBuf {
        self.guest.image_dir.join("vmlinux")
    }

    /// The bzImage confidential VMs boot.
    pub fn tee_kernel(&self) -> PathBuf {
        self.guest.image_dir.join("vmlinuz")
    }

    /// The initramfs.
    pub fn initrd(&self) -> PathBuf {
        self.guest.image_dir.join("initramfs")
    }

    /// The launch settings for `kind`, with the kernel resolved.
    pub fn tee_launch(&self, kind: TeeKind) -> TeeLaunch {
        match kind {
            TeeKind::Snp => TeeLaunch::Snp(SnpConfig {
                kernel: Some(self.snp.kernel.clone().unwrap_or_else(|| self.tee_kernel())),
                ..self.snp.clone()
            }),
            TeeKind::Tdx => TeeLaunch::Tdx(TdxConfig {
                kernel: Some(self.tdx.kernel.clone().unwrap_or_else(|| self.tee_kernel())),
                ..self.tdx.clone()
            }),
        }
    }

    /// The QEMU backend's settings, with the KVM probe's verdicts cached host-wide
    /// ([`probe_cache::DEFAULT_PATH`], keyed by what decides them) unless `qemu.probe_cache`
    /// names another file: a probe that cannot boot waits out its deadline, which must be paid
    /// once per host, not once per pod, run or state directory.
    pub fn qemu_backend(&self) -> crate::hypervisor::qemu::QemuConfig {
        let mut qemu = self.qemu.clone();
        if qemu.probe_cache.is_none() {
            qemu.probe_cache = Some(probe_cache::DEFAULT_PATH.into());
        }
        qemu
    }

    /// A sandbox of this configuration: plain when `tee` is `None`.
    pub fn sandbox(
        &self,
        id: String,
        tee: Option<TeeKind>,
        initdata: Option<InitdataDisk>,
    ) -> SandboxConfig {
        let tee = tee.map(|kind| self.tee_launch(kind));
        let kernel = match &tee {
            Some(launch) => launch.kernel().map(Path::to_path_buf).unwrap_or_default(),
            None => self.kernel(),
        };
        SandboxConfig {
            id,
            state_root: self.state_dir.clone(),
            kernel,
            initrd: self.initrd(),
            vcpus: self.guest.vcpus,
            memory_mib: self.guest.memory_mib,
            boot_timeout: self.guest.boot_timeout_secs.map(Duration::from_secs),
            initdata,
            kernel_params: self.guest.kernel_params.clone(),
            tee,
            registry_tunnels: self
                .guest
                .registry_tunnels
                .iter()
                .map(|addr| RegistryTunnel::same_address(*addr))
                .collect(),
            published_ports: self.guest.published_ports.clone(),
            network: None,
            hostname: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_file_is_the_defaults() {
        let text = include_str!("../runtime.toml");
        let parsed = RuntimeConfig::parse(text, Path::new("runtime.toml")).unwrap();
        let defaults = RuntimeConfig::parse("", Path::new("x")).unwrap();
        assert_eq!(
            toml::to_string(&parsed).unwrap(),
            toml::to_string(&defaults).unwrap()
        );
        assert_eq!(defaults.state_dir, Path::new("/run/coffer"));
        assert_eq!(defaults.snp.cpu_model, "EPYC-v4");
    }

    #[test]
    fn the_kvm_probe_is_cached_host_wide_unless_configured() {
        let config = RuntimeConfig::parse("state_dir = \"/run/x\"", Path::new("x")).unwrap();
        assert_eq!(
            config.qemu_backend().probe_cache.as_deref(),
            Some(Path::new("/var/cache/coffer/accel-probe"))
        );
        let config =
            RuntimeConfig::parse("[qemu]\nprobe_cache = \"/var/cache/p\"", Path::new("x")).unwrap();
        assert_eq!(
            config.qemu_backend().probe_cache.as_deref(),
            Some(Path::new("/var/cache/p"))
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        for (text, want) in [
            ("bogus = 1", "unknown field"),
            ("[guest]\nvcpu = 2", "unknown field"),
            ("[snp.policy]\ndebugging = true", "unknown field"),
            ("[guest]\nvcpus = 0", "guest.vcpus 0"),
            ("[guest]\nmemory_mib = 64", "guest.memory_mib 64"),
            ("[snp]\ncpu_model = \"Haswell\"", "cpu_model"),
            ("[tdx]\nmrowner = \"!!\"", "mrowner is not base64"),
            ("tee = \"sev\"", "unknown variant"),
            (
                "[guest]\nregistry_tunnels = [\"10.0.0.1:5000\"]",
                "not a loopback address",
            ),
            (
                "[guest]\npublished_ports = [\"127.0.0.1:8443\"]",
                "expected IPV4:HOSTPORT:GUESTPORT",
            ),
            (
                "[guest]\npublished_ports = [\"127.0.0.1:8443:443\", \"127.0.0.1:8444:443\"]",
                "repeats a host address or guest port",
            ),
        ] {
            let err = RuntimeConfig::parse(text, Path::new("rt.toml")).unwrap_err();
            // The message and its causes, as `coffer` prints them.
            let err = std::iter::successors(Some(&err as &dyn std::error::Error), |e| e.source())
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(": ");
            assert!(err.contains(want), "{text}: {err}");
            assert!(err.contains("rt.toml"), "{err}");
        }
    }

    #[test]
    fn published_ports_reach_every_sandbox() {
        let config = RuntimeConfig::parse(
            "[guest]\npublished_ports = [\"127.0.0.1:18443:8443\"]",
            Path::new("x"),
        )
        .unwrap();
        let sandbox = config.sandbox("a".into(), None, None);
        assert_eq!(
            sandbox.published_ports,
            ["127.0.0.1:18443:8443".parse::<PublishedPort>().unwrap()]
        );
    }

    #[test]
    fn sandboxes_pick_the_kernel_for_their_mode() {
        let config = RuntimeConfig::parse(
            "[guest]\nimage_dir = \"/img\"\n[snp]\nkernel = \"/k/bz\"",
            Path::new("x"),
        )
        .unwrap();
        let plain = config.sandbox("a".into(), None, None);
        assert_eq!(plain.kernel, Path::new("/img/vmlinux"));
        assert!(plain.tee.is_none());
        let snp = config.sandbox("a".into(), Some(TeeKind::Snp), None);
        assert_eq!(snp.kernel, Path::new("/k/bz"));
        let tdx = config.sandbox("a".into(), Some(TeeKind::Tdx), None);
        assert_eq!(tdx.kernel, Path::new("/img/vmlinuz"));
        assert_eq!(tdx.tee.unwrap().kind(), TeeKind::Tdx);
    }
}
