//! The QEMU backend. The argv is a pure function of typed configuration ([`argv`]), so it is
//! unit-tested without booting anything. A launch starts `vhost-device-vsock` (the hybrid-vsock
//! backend), then QEMU with a `vhost-user-vsock` device, a QMP socket and the serial console on a
//! socket the runtime copies into `console.log` up to a size limit (a guest flooding its console must
//! not fill the host's disk).
//! Both processes get their own process group (a terminal's Ctrl-C reaches only the runtime, which
//! then tears down in order), are killed if their handle is dropped, and die with the process
//! that launched them, however it ends (a parent-death signal, see `crate::sys`); so does the
//! accelerator probe's QEMU.

use std::os::fd::{AsFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};

use super::probe_cache::{self, ProbeKey};
use super::qmp::Qmp;
use super::{Hypervisor, HypervisorError, LaunchTimes, Vm, VmExit, VmSpec};
use crate::sys::ChildSetup;
use crate::tee::TeeKind;
use crate::tee::detect::{self, QemuInfo};

/// Machine type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Machine {
    /// `microvm`: virtio-mmio only, ~0.3 s faster to boot under TCG, but Debian's 6.1.0-57 kernel
    /// dies with a divide error early in start_kernel on most microvm boots (ACPI on), and
    /// without ACPI the vsock device gets no interrupts. Kept for kernels that boot it.
    Microvm,
    /// `q35`: PCI; the default, and what confidential launches use.
    #[default]
    Q35,
}

/// Accelerator choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AccelMode {
    /// KVM if a probe boot under KVM succeeds on this host, else TCG.
    #[default]
    Auto,
    /// Software emulation.
    Tcg,
    /// Hardware virtualization; fails if unavailable.
    Kvm,
}

/// A resolved accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// TCG.
    Tcg,
    /// KVM.
    Kvm,
}

impl Accel {
    /// `kvm` or `tcg`, as QEMU and the probe cache spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tcg => "tcg",
            Self::Kvm => "kvm",
        }
    }
}

/// How long the KVM probe boot may take to reach the agent's init marker.
const KVM_PROBE_SECS: u64 = 15;

/// Warns that this host has a usable `/dev/kvm` but the guest runs under TCG (much slower),
/// because the probe boot under KVM failed (now, or when `cache` was written).
fn tcg_despite_kvm(cache: Option<&Path>, cached: bool) {
    tracing::warn!("{}", tcg_despite_kvm_message(cache, cached));
}

fn tcg_despite_kvm_message(cache: Option<&Path>, cached: bool) -> String {
    let when = if cached { "an earlier" } else { "this" };
    let again = match cache {
        Some(cache) => format!("delete {} to probe again", cache.display()),
        None => "it probes on every launch (qemu.probe_cache unset)".to_owned(),
    };
    format!(
        "/dev/kvm exists but the guest could not boot under KVM in {when} probe (one boot, up to \
         {KVM_PROBE_SECS} s): running under TCG, much slower; {again}, or set qemu.accel = \"kvm\" \
         to fail instead"
    )
}

/// QEMU backend configuration. Defaults suit this project's test hosts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QemuConfig {
    /// QEMU binary (default `qemu-system-x86_64` from `PATH`).
    pub binary: PathBuf,
    /// vhost-user vsock backend binary (default `vhost-device-vsock` from `PATH`).
    pub vhost_vsock_binary: PathBuf,
    /// Machine type (default q35).
    pub machine: Machine,
    /// Accelerator (default auto).
    pub accel: AccelMode,
    /// Where the KVM probe's verdicts are cached, per host kernel, `/dev/kvm`, QEMU binary and
    /// guest kernel ([`probe_cache`]); none: probe on every launch. The runtime's configuration
    /// defaults it to the host-wide [`probe_cache::DEFAULT_PATH`].
    pub probe_cache: Option<PathBuf>,
    /// How long a launch step (backend socket, QMP) may take.
    pub launch_timeout_secs: u64,
    /// Most bytes of guest console output kept in `console.log`; the rest is discarded.
    pub console_log_limit_bytes: u64,
}

impl Default for QemuConfig {
    fn default() -> Self {
        Self {
            binary: "qemu-system-x86_64".into(),
            vhost_vsock_binary: "vhost-device-vsock".into(),
            machine: Machine::Q35,
            accel: AccelMode::Auto,
            probe_cache: None,
            launch_timeout_secs: 10,
            console_log_limit_bytes: 1 << 20,
        }
    }
}

/// Files of one VM inside its working directory.
#[derive(Debug, Clone)]
pub struct VmPaths {
    /// vhost-user socket between QEMU and the vsock backend.
    pub vhost_socket: PathBuf,
    /// Hybrid-vsock socket the host connects to.
    pub vsock_socket: PathBuf,
    /// QMP socket.
    pub qmp_socket: PathBuf,
    /// Guest console as QEMU serves it.
    pub console_socket: PathBuf,
    /// Guest console as kept (bounded).
    pub console_log: PathBuf,
    /// QEMU's own stderr.
    pub qemu_log: PathBuf,
    /// vhost-device-vsock's output.
    pub vhost_log: PathBuf,
}

impl VmPaths {
    /// The paths under `dir`.
    pub fn new(dir: &Path) -> Self {
        Self {
            vhost_socket: dir.join("vhost.sock"),
            vsock_socket: dir.join("vm.vsock"),
            qmp_socket: dir.join("qmp.sock"),
            console_socket: dir.join("console.sock"),
            console_log: dir.join("console.log"),
            qemu_log: dir.join("qemu.log"),
            vhost_log: dir.join("vhost.log"),
        }
    }
}

/// The guest CID given to every VM (each VM has its own backend, so CIDs never collide).
pub const GUEST_CID: u32 = 3;

/// The kernel command line a VM of `machine` boots with (in a TEE it is measured, so `coffer
/// measure` computes it with this function too).
pub fn kernel_cmdline(machine: Machine, tsc_khz: Option<u64>, extra: &[String]) -> String {
    let mut params = vec![
        "console=ttyS0".to_owned(),
        "quiet".into(),
        "panic=-1".into(),
        "rdinit=/init".into(),
        "cryptomgr.notests".into(),
    ];
    if machine == Machine::Microvm {
        // Without these the kernel hangs calibrating the TSC on microvm.
        if let Some(khz) = tsc_khz {
            params.push(format!("tsc_early_khz={khz}"));
        }
        params.push("tsc=reliable".into());
    }
    params.extend(extra.iter().cloned());
    params.join(" ")
}

/// QEMU's argv (without the binary) for `spec`. `tap_fds` are the descriptor numbers QEMU finds
/// the taps of `spec.nics` at, in the same order (see [`crate::sys::ChildSetup`]).
pub fn argv(
    spec: &VmSpec,
    machine: Machine,
    accel: Accel,
    paths: &VmPaths,
    tsc_khz: Option<u64>,
    tap_fds: &[RawFd],
) -> Vec<String> {
    let mem = format!("{}M", spec.memory_mib);
    // A confidential guest boots OVMF on q35 under KVM; nothing else can launch it.
    let (machine, accel) = match &spec.confidential {
        Some(_) => (Machine::Q35, Accel::Kvm),
        None => (machine, accel),
    };
    let mut machine_arg = match machine {
        Machine::Microvm => "microvm,memory-backend=mem,rtc=on".to_owned(),
        Machine::Q35 => "q35,memory-backend=mem".to_owned(),
    };
    let (accel_arg, mut cpu) = match accel {
        Accel::Tcg => ("tcg", "max"),
        Accel::Kvm => ("kvm", "host"),
    };
    // Under SEV-SNP/TDX the guest only lets virtio devices reach memory it shared (bounce
    // buffers), so PCI devices must offer VIRTIO_F_ACCESS_PLATFORM.
    let pci_extra = if spec.confidential.is_some() {
        ",iommu_platform=on,disable-legacy=on"
    } else {
        ""
    };
    if let Some(tee) = &spec.confidential {
        machine_arg.push(',');
        machine_arg.push_str(&tee.machine_properties());
        cpu = tee.cpu_model();
    }
    let vsock_device = match machine {
        Machine::Microvm => "vhost-user-vsock-device,chardev=vsock".to_owned(),
        Machine::Q35 => format!("vhost-user-vsock-pci,chardev=vsock{pci_extra}"),
    };
    let mut args: Vec<String> = vec![
        "-name".into(),
        format!("coffer-{}", spec.id),
        "-machine".into(),
        machine_arg,
        "-accel".into(),
        accel_arg.into(),
        "-cpu".into(),
        cpu.into(),
        "-smp".into(),
        spec.vcpus.to_string(),
        "-m".into(),
        mem.clone(),
        // vhost-user needs guest memory shared with the backend: without share=on vsock fails
        // silently.
        "-object".into(),
        format!("memory-backend-memfd,id=mem,size={mem},share=on"),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-display".into(),
        "none".into(),
        "-no-reboot".into(),
        "-chardev".into(),
        format!(
            "socket,id=console,path={},server=on,wait=off",
            paths.console_socket.display()
        ),
        "-serial".into(),
        "chardev:console".into(),
        "-kernel".into(),
        spec.kernel.display().to_string(),
        "-initrd".into(),
        spec.initrd.display().to_string(),
        "-append".into(),
        kernel_cmdline(machine, tsc_khz, &spec.kernel_params),
        "-chardev".into(),
        format!("socket,id=vsock,path={}", paths.vhost_socket.display()),
        "-device".into(),
        vsock_device,
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", paths.qmp_socket.display()),
    ];
    let disk_device = match machine {
        Machine::Microvm => "virtio-blk-device",
        Machine::Q35 => "virtio-blk-pci",
    };
    for (i, disk) in spec.disks.iter().enumerate() {
        // QEMU's option syntax doubles commas inside values.
        let path = disk.path.display().to_string().replace(',', ",,");
        let read_only = if disk.read_only { "on" } else { "off" };
        args.extend([
            "-drive".into(),
            format!("file={path},if=none,id=disk{i},format=raw,readonly={read_only}"),
            "-device".into(),
            format!(
                "{disk_device},drive=disk{i},serial={}{}",
                disk.serial,
                if machine == Machine::Q35 {
                    pci_extra
                } else {
                    ""
                }
            ),
        ]);
    }
    // QEMU serves the queues itself (vhost off: no dependency on /dev/vhost-net, whose module
    // not every host loads); no option ROM: nothing boots from the network.
    let net_device = match machine {
        Machine::Microvm => "virtio-net-device",
        Machine::Q35 => "virtio-net-pci",
    };
    for (i, (nic, fd)) in spec.nics.iter().zip(tap_fds).enumerate() {
        let pci = match machine {
            Machine::Microvm => String::new(),
            Machine::Q35 => format!(",romfile={pci_extra}"),
        };
        args.extend([
            "-netdev".into(),
            format!("tap,id=net{i},fd={fd},vhost=off"),
            "-device".into(),
            format!(
                "{net_device},netdev=net{i},mac={},host_mtu={}{pci}",
                nic.mac, nic.mtu
            ),
        ]);
    }
    if machine == Machine::Q35 {
        args.extend(["-vga".into(), "none".into()]);
    }
    if let Some(tee) = &spec.confidential {
        args.extend([
            "-bios".into(),
            tee.firmware().display().to_string(),
            "-object".into(),
            tee.object_arg(),
        ]);
    }
    args
}

/// The host TSC frequency in kHz, from `/proc/cpuinfo` (`cpu MHz`).
pub fn host_tsc_khz() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        if k.trim() != "cpu MHz" {
            return None;
        }
        let mhz: f64 = v.trim().parse().ok()?;
        Some((mhz * 1000.0).round() as u64)
    })
}

/// The QEMU backend.
#[derive(Debug, Clone)]
pub struct Qemu {
    config: QemuConfig,
    /// The binary's version and object types, asked once (the host checks of a confidential
    /// launch run before `launch` and again inside it).
    info: std::sync::OnceLock<Result<QemuInfo, String>>,
}

impl Qemu {
    /// A backend with `config`.
    pub fn new(config: QemuConfig) -> Self {
        Self {
            config,
            info: std::sync::OnceLock::new(),
        }
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.config.launch_timeout_secs.max(1))
    }

    /// Resolves [`AccelMode`] for `spec`: KVM is used only when a probe boot under KVM reaches the
    /// agent's init marker. The result is cached in `probe_cache` when configured.
    pub async fn resolve_accel(&self, spec: &VmSpec) -> Result<Accel, HypervisorError> {
        match self.config.accel {
            AccelMode::Tcg => return Ok(Accel::Tcg),
            AccelMode::Kvm => {
                return if kvm_openable() {
                    Ok(Accel::Kvm)
                } else {
                    Err(HypervisorError::Accel("/dev/kvm is not usable".into()))
                };
            }
            AccelMode::Auto => {}
        }
        if !kvm_openable() {
            return Ok(Accel::Tcg);
        }
        let key = ProbeKey::current(&self.config.binary, &spec.kernel);
        let cache = self.config.probe_cache.as_deref();
        match cache.and_then(|cache| probe_cache::lookup(cache, &key)) {
            Some(Accel::Kvm) => return Ok(Accel::Kvm),
            Some(Accel::Tcg) => {
                tcg_despite_kvm(cache, true);
                return Ok(Accel::Tcg);
            }
            None => {}
        }
        tracing::info!(
            "probing KVM: one boot of the guest under KVM, up to {} s, then cached",
            KVM_PROBE_SECS
        );
        let accel = if self.probe_kvm(spec).await {
            Accel::Kvm
        } else {
            tcg_despite_kvm(cache, false);
            Accel::Tcg
        };
        tracing::info!(accel = accel.name(), "accelerator probe finished");
        if let Some(cache) = cache
            && let Err(err) = probe_cache::store(cache, &key, accel)
        {
            tracing::warn!(cache = %cache.display(), %err, "the accelerator probe's verdict was not cached");
        }
        Ok(accel)
    }

    async fn probe_kvm(&self, spec: &VmSpec) -> bool {
        let Ok(dir) = tempdir_in(&spec.dir, "kvm-probe") else {
            return false;
        };
        let console = dir.join("console.log");
        let mut cmd = Command::new(&self.config.binary);
        cmd.args([
            "-machine",
            "q35",
            "-accel",
            "kvm",
            "-cpu",
            "host",
            "-smp",
            "1",
            "-m",
            "256M",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            "-vga",
            "none",
        ])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-kernel")
        .arg(&spec.kernel)
        .arg("-initrd")
        .arg(&spec.initrd)
        .arg("-append")
        .arg("console=ttyS0 quiet panic=-1 rdinit=/init")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
        // Supervised like the VM's processes: a runtime killed during the probe takes the probe
        // with it (a KVM that cannot boot the guest would otherwise keep it running for ever).
        let ok = match ChildSetup::new().spawn(cmd).await {
            Ok(mut child) => {
                let deadline = Instant::now() + Duration::from_secs(KVM_PROBE_SECS);
                let mut seen = false;
                while Instant::now() < deadline && !seen {
                    if let Ok(Some(_)) = child.try_wait() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    seen = std::fs::read_to_string(&console)
                        .map(|c| c.contains(coffer_agent_protocol::GUEST_INIT_MARKER))
                        .unwrap_or(false);
                }
                let _ = child.kill().await;
                seen
            }
            Err(_) => false,
        };
        let _ = std::fs::remove_dir_all(&dir);
        ok
    }

    async fn wait_for_socket(
        &self,
        path: &Path,
        child: &mut Child,
        what: &'static str,
        log: &Path,
    ) -> Result<(), HypervisorError> {
        let deadline = Instant::now() + self.timeout();
        while !path.exists() {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(HypervisorError::EarlyExit {
                    what,
                    status: describe(status),
                    log: log.to_path_buf(),
                });
            }
            if Instant::now() > deadline {
                return Err(HypervisorError::Timeout(what));
            }
            // The backend's and QEMU's sockets appear within milliseconds; a coarse poll would
            // add its period to every launch.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(())
    }
}

/// The last non-empty line of a (bounded) log file, printable characters only, at most 300.
fn last_line(path: &Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(4096))).ok()?;
    let mut tail = Vec::new();
    file.take(4096).read_to_end(&mut tail).ok()?;
    let text = String::from_utf8_lossy(&tail);
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?;
    Some(
        line.trim()
            .chars()
            .filter(|c| !c.is_control())
            .take(300)
            .collect(),
    )
}

fn kvm_openable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

fn tempdir_in(parent: &Path, name: &str) -> std::io::Result<PathBuf> {
    let dir = parent.join(name);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn log_file(path: &Path) -> Result<std::fs::File, HypervisorError> {
    std::fs::File::create(path).map_err(|source| HypervisorError::Io {
        op: "create",
        path: path.to_path_buf(),
        source,
    })
}

fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "unknown status".into(),
    }
}

impl Hypervisor for Qemu {
    type Vm = QemuVm;

    fn check_tee(&self, tee: TeeKind) -> Result<(), HypervisorError> {
        let qemu = self
            .info
            .get_or_init(|| QemuInfo::probe(&self.config.binary));
        Ok(detect::check(tee, Path::new("/"), qemu)?)
    }

    async fn launch(&self, spec: &VmSpec) -> Result<QemuVm, HypervisorError> {
        let probe_started = Instant::now();
        let accel = match &spec.confidential {
            Some(tee) => {
                // Before anything is started: a confidential launch on a host that cannot give
                // one fails here, it never becomes a plain VM.
                self.check_tee(tee.kind())?;
                Accel::Kvm
            }
            None => self.resolve_accel(spec).await?,
        };
        let mut times = LaunchTimes {
            accel_probe: probe_started.elapsed(),
            ..LaunchTimes::default()
        };
        let backend_started = Instant::now();
        let paths = VmPaths::new(&spec.dir);
        let mut vhost = Command::new(&self.config.vhost_vsock_binary);
        vhost
            .arg("--vm")
            .arg(format!(
                "guest-cid={GUEST_CID},socket={},uds-path={}",
                paths.vhost_socket.display(),
                paths.vsock_socket.display()
            ))
            .stdin(Stdio::null())
            .stdout(log_file(&paths.vhost_log)?)
            .stderr(log_file(&paths.vhost_log.with_extension("err"))?)
            .process_group(0)
            .kill_on_drop(true);
        let mut vhost =
            ChildSetup::new()
                .spawn(vhost)
                .await
                .map_err(|source| HypervisorError::Spawn {
                    binary: self.config.vhost_vsock_binary.clone(),
                    source,
                })?;
        self.wait_for_socket(
            &paths.vhost_socket,
            &mut vhost,
            "vhost-device-vsock",
            &paths.vhost_log,
        )
        .await?;

        times.backend = backend_started.elapsed();
        let vmm_started = Instant::now();

        // What QEMU gets between fork and exec: the taps, at numbers held until it runs.
        let mut child = ChildSetup::new();
        let mut tap_fds = Vec::with_capacity(spec.nics.len());
        for nic in &spec.nics {
            tap_fds.push(
                child
                    .inherit(nic.tap.as_fd())
                    .map_err(|source| HypervisorError::Io {
                        op: "duplicate the tap descriptor for",
                        path: self.config.binary.clone(),
                        source,
                    })?,
            );
        }
        let args = argv(
            spec,
            self.config.machine,
            accel,
            &paths,
            host_tsc_khz(),
            &tap_fds,
        );
        tracing::debug!(?args, "starting qemu");
        let mut command = Command::new(&self.config.binary);
        command
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log_file(&paths.qemu_log)?)
            .stderr(log_file(&paths.qemu_log.with_extension("err"))?)
            .process_group(0)
            .kill_on_drop(true);
        // QEMU gets its copies of the taps; ours close once it runs (or failed).
        let mut qemu = child
            .spawn(command)
            .await
            .map_err(|source| HypervisorError::Spawn {
                binary: self.config.binary.clone(),
                source,
            })?;
        let qemu_err = paths.qemu_log.with_extension("err");
        self.wait_for_socket(&paths.qmp_socket, &mut qemu, "qemu", &qemu_err)
            .await?;
        let qmp = tokio::time::timeout(self.timeout(), Qmp::connect(&paths.qmp_socket))
            .await
            .map_err(|_| HypervisorError::Timeout("QMP"))?
            .map_err(HypervisorError::Monitor)?;
        self.wait_for_socket(&paths.console_socket, &mut qemu, "qemu", &qemu_err)
            .await?;
        let console = tokio::time::timeout(
            self.timeout(),
            super::qmp::connect_listening(&paths.console_socket),
        )
        .await
        .map_err(|_| HypervisorError::Timeout("the console socket"))?
        .map_err(|source| HypervisorError::Io {
            op: "connect",
            path: paths.console_socket.clone(),
            source,
        })?;
        let log = tokio::fs::File::create(&paths.console_log)
            .await
            .map_err(|source| HypervisorError::Io {
                op: "create",
                path: paths.console_log.clone(),
                source,
            })?;
        let limit = self.config.console_log_limit_bytes;
        tokio::spawn(async move {
            if let Err(err) = copy_bounded(console, log, limit).await {
                tracing::debug!(%err, "console copy ended");
            }
        });
        times.vmm = vmm_started.elapsed();
        tracing::info!(sandbox_id = %spec.id, ?accel, pid = qemu.id(), "qemu started");
        Ok(QemuVm {
            qemu,
            vhost,
            qmp: Some(qmp),
            paths,
            exit: None,
            accel,
            times,
        })
    }
}

/// Copies `from` into `to` until EOF, keeping at most `limit` bytes; the rest is read and dropped
/// (so the guest never blocks on its console) after one truncation notice.
pub async fn copy_bounded<R, W>(mut from: R, mut to: W, limit: u64) -> std::io::Result<u64>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut kept = 0u64;
    let mut truncated = false;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        let room = usize::try_from(limit.saturating_sub(kept)).unwrap_or(usize::MAX);
        let take = n.min(room);
        if take > 0 {
            to.write_all(&buf[..take]).await?;
            to.flush().await?;
            kept += take as u64;
        }
        if take < n && !truncated {
            truncated = true;
            to.write_all(
                format!("\n[coffer: console log truncated at {limit} bytes]\n").as_bytes(),
            )
            .await?;
            to.flush().await?;
        }
    }
    Ok(kept)
}

/// A VM run by QEMU.
#[derive(Debug)]
pub struct QemuVm {
    qemu: Child,
    vhost: Child,
    qmp: Option<Qmp>,
    paths: VmPaths,
    exit: Option<VmExit>,
    accel: Accel,
    times: LaunchTimes,
}

impl QemuVm {
    async fn stop_vhost(&mut self) {
        let _ = self.vhost.start_kill();
        let _ = self.vhost.wait().await;
    }
}

impl Vm for QemuVm {
    fn vsock_socket(&self) -> &Path {
        &self.paths.vsock_socket
    }

    fn console_log(&self) -> &Path {
        &self.paths.console_log
    }

    fn emulated(&self) -> bool {
        self.accel == Accel::Tcg
    }

    fn launch_times(&self) -> LaunchTimes {
        self.times
    }

    async fn wait_exit(&mut self) -> VmExit {
        if let Some(exit) = &self.exit {
            return exit.clone();
        }
        let mut status = self
            .qemu
            .wait()
            .await
            .map(describe)
            .unwrap_or_else(|e| format!("wait failed: {e}"));
        // QEMU says why it stopped on stderr, which goes with the sandbox directory: keep its
        // last words in the status.
        if let Some(said) = last_line(&self.paths.qemu_log.with_extension("err")) {
            status = format!("{status}; qemu: {said}");
        }
        let exit = VmExit {
            status,
            requested: false,
        };
        self.stop_vhost().await;
        self.exit = Some(exit.clone());
        exit
    }

    async fn status(&mut self) -> Result<String, HypervisorError> {
        match &mut self.qmp {
            Some(qmp) => qmp.status().await.map_err(HypervisorError::Monitor),
            None => Err(HypervisorError::Monitor(std::io::Error::other(
                "monitor closed",
            ))),
        }
    }

    async fn shutdown(&mut self) -> VmExit {
        if let Some(exit) = &self.exit {
            return exit.clone();
        }
        if let Some(mut qmp) = self.qmp.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), qmp.execute("quit")).await;
        }
        let status = match tokio::time::timeout(Duration::from_secs(5), self.qemu.wait()).await {
            Ok(Ok(status)) => describe(status),
            _ => {
                let _ = self.qemu.start_kill();
                self.qemu
                    .wait()
                    .await
                    .map(describe)
                    .unwrap_or_else(|e| format!("wait failed: {e}"))
            }
        };
        self.stop_vhost().await;
        let exit = VmExit {
            status,
            requested: true,
        };
        self.exit = Some(exit.clone());
        exit
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    #[test]
    fn last_line_of_the_vmm_log_is_kept_short_and_printable() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("qemu.err");
        std::fs::write(
            &log,
            "warning: one\nqemu: terminating on signal 15 from pid 7 (x)\n\n",
        )
        .unwrap();
        assert_eq!(
            last_line(&log).as_deref(),
            Some("qemu: terminating on signal 15 from pid 7 (x)")
        );
        std::fs::write(&log, format!("{}\x1b[31m\n", "y".repeat(5000))).unwrap();
        assert_eq!(last_line(&log).unwrap(), "y".repeat(300));
        assert_eq!(last_line(&dir.path().join("absent")), None);
    }

    use super::*;
    use crate::hypervisor::{DiskSpec, NicSpec};
    use crate::network::MacAddr;
    use crate::tee::{ConfidentialSpec, SnpConfig, TdxConfig};

    fn spec() -> VmSpec {
        VmSpec {
            id: "s1".into(),
            dir: "/run/coffer/s1".into(),
            kernel: "/img/vmlinux".into(),
            initrd: "/img/initramfs".into(),
            vcpus: 2,
            memory_mib: 512,
            kernel_params: vec!["coffer.debug=0".into()],
            disks: vec![],
            nics: vec![],
            confidential: None,
        }
    }

    /// A NIC whose tap is a stand-in descriptor (the argv only names the number it is given).
    fn nic(mac: [u8; 6], mtu: u32) -> NicSpec {
        let stand_in = std::fs::File::open("/dev/null").expect("open /dev/null");
        NicSpec {
            tap: std::sync::Arc::new(stand_in.into()),
            mac: MacAddr(mac),
            mtu,
        }
    }

    fn golden(tee: ConfidentialSpec, machine: &str, cpu: &str, object: &str, firmware: &str) {
        let mut spec = spec();
        spec.kernel = "/img/vmlinuz".into();
        spec.disks.push(DiskSpec {
            path: "/run/coffer/s1/initdata.img".into(),
            serial: "coffer-initdata".into(),
            read_only: true,
        });
        spec.confidential = Some(tee);
        spec.nics
            .push(nic([0x0a, 0x58, 0xc6, 0x12, 0x00, 0x02], 1450));
        let paths = VmPaths::new(Path::new("/run/coffer/s1"));
        // The configured machine and accelerator are overridden: a TEE guest is q35 under KVM.
        let args = argv(
            &spec,
            Machine::Microvm,
            Accel::Tcg,
            &paths,
            Some(2_450_000),
            &[17],
        );
        let want: Vec<String> = [
            "-name",
            "coffer-s1",
            "-machine",
            machine,
            "-accel",
            "kvm",
            "-cpu",
            cpu,
            "-smp",
            "2",
            "-m",
            "512M",
            "-object",
            "memory-backend-memfd,id=mem,size=512M,share=on",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            "-chardev",
            "socket,id=console,path=/run/coffer/s1/console.sock,server=on,wait=off",
            "-serial",
            "chardev:console",
            "-kernel",
            "/img/vmlinuz",
            "-initrd",
            "/img/initramfs",
            "-append",
            "console=ttyS0 quiet panic=-1 rdinit=/init cryptomgr.notests coffer.debug=0",
            "-chardev",
            "socket,id=vsock,path=/run/coffer/s1/vhost.sock",
            "-device",
            "vhost-user-vsock-pci,chardev=vsock,iommu_platform=on,disable-legacy=on",
            "-qmp",
            "unix:/run/coffer/s1/qmp.sock,server=on,wait=off",
            "-drive",
            "file=/run/coffer/s1/initdata.img,if=none,id=disk0,format=raw,readonly=on",
            "-device",
            "virtio-blk-pci,drive=disk0,serial=coffer-initdata,iommu_platform=on,disable-legacy=on",
            "-netdev",
            "tap,id=net0,fd=17,vhost=off",
            "-device",
            "virtio-net-pci,netdev=net0,mac=0a:58:c6:12:00:02,host_mtu=1450,romfile=,\
             iommu_platform=on,disable-legacy=on",
            "-vga",
            "none",
            "-bios",
            firmware,
            "-object",
            object,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(args, want);
    }

    #[test]
    fn snp_golden_argv() {
        let host_data: [u8; 32] = std::array::from_fn(|i| i as u8);
        golden(
            ConfidentialSpec::Snp {
                config: SnpConfig::default(),
                cbitpos: 51,
                host_data,
            },
            "q35,memory-backend=mem,confidential-guest-support=tee0",
            "EPYC-v4",
            "sev-snp-guest,id=tee0,cbitpos=51,reduced-phys-bits=1,policy=0x30000,kernel-hashes=on,\
             host-data=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
            "/usr/share/ovmf/OVMF.amdsev.fd",
        );
        let id_block = base64::engine::general_purpose::STANDARD.encode([7u8; 96]);
        let id_auth = base64::engine::general_purpose::STANDARD.encode([9u8; 4096]);
        let config = SnpConfig {
            firmware: "/fw/OVMF.fd".into(),
            cpu_model: "EPYC-Genoa".into(),
            reduced_phys_bits: 5,
            policy: crate::tee::snp::SnpGuestPolicy {
                smt: false,
                single_socket: true,
                ..Default::default()
            },
            id_block: Some(id_block.clone()),
            id_auth: Some(id_auth.clone()),
            ..SnpConfig::default()
        };
        golden(
            ConfidentialSpec::Snp {
                config,
                cbitpos: 47,
                host_data: [0; 32],
            },
            "q35,memory-backend=mem,confidential-guest-support=tee0",
            "EPYC-Genoa",
            &format!(
                "sev-snp-guest,id=tee0,cbitpos=47,reduced-phys-bits=5,policy=0x120000,\
                 kernel-hashes=on,host-data=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=,\
                 id-block={id_block},id-auth={id_auth}"
            ),
            "/fw/OVMF.fd",
        );
    }

    /// No QEMU here has `tdx-guest` (it arrives in 10.1), so the TDX argv is checked against the
    /// syntax QEMU documents (`docs/system/i386/tdx.rst`, QAPI `TdxGuestProperties`): JSON
    /// `-object` form for the structured quote-generation socket, a split IRQ chip, `-cpu host`.
    #[test]
    fn tdx_golden_argv() {
        let mr_config_id = [0xab; 48];
        let b64 = base64::engine::general_purpose::STANDARD.encode(mr_config_id);
        golden(
            ConfidentialSpec::Tdx {
                config: TdxConfig::default(),
                mr_config_id,
            },
            "q35,memory-backend=mem,confidential-guest-support=tee0,kernel-irqchip=split",
            "host",
            &format!(
                r#"{{"attributes":268435456,"id":"tee0","mrconfigid":"{b64}","qom-type":"tdx-guest","quote-generation-socket":{{"cid":"2","port":"4050","type":"vsock"}}}}"#
            ),
            "/usr/share/ovmf/OVMF.inteltdx.fd",
        );
    }

    fn value_of<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn tcg_on_a_kvm_host_is_explained() {
        let cached = tcg_despite_kvm_message(Some(Path::new("/run/coffer/accel-probe")), true);
        assert!(
            cached.contains("in an earlier probe (one boot, up to 15 s)"),
            "{cached}"
        );
        assert!(
            cached.contains("delete /run/coffer/accel-probe to probe again"),
            "{cached}"
        );
        let fresh = tcg_despite_kvm_message(None, false);
        assert!(fresh.contains("in this probe") && fresh.contains("qemu.probe_cache unset"));
    }

    #[test]
    fn microvm_tcg_argv() {
        let paths = VmPaths::new(Path::new("/run/coffer/s1"));
        let args = argv(
            &spec(),
            Machine::Microvm,
            Accel::Tcg,
            &paths,
            Some(2_450_000),
            &[],
        );
        assert_eq!(
            value_of(&args, "-machine"),
            ["microvm,memory-backend=mem,rtc=on"]
        );
        assert_eq!(value_of(&args, "-accel"), ["tcg"]);
        assert_eq!(value_of(&args, "-cpu"), ["max"]);
        assert_eq!(value_of(&args, "-m"), ["512M"]);
        assert_eq!(
            value_of(&args, "-object"),
            ["memory-backend-memfd,id=mem,size=512M,share=on"]
        );
        assert_eq!(
            value_of(&args, "-device"),
            ["vhost-user-vsock-device,chardev=vsock"]
        );
        assert_eq!(
            value_of(&args, "-chardev"),
            [
                "socket,id=console,path=/run/coffer/s1/console.sock,server=on,wait=off",
                "socket,id=vsock,path=/run/coffer/s1/vhost.sock"
            ]
        );
        assert_eq!(value_of(&args, "-serial"), ["chardev:console"]);
        let append = value_of(&args, "-append")[0];
        assert!(
            append.contains("tsc_early_khz=2450000 tsc=reliable"),
            "{append}"
        );
        assert!(append.ends_with("coffer.debug=0"), "{append}");
        assert!(args.contains(&"-nodefaults".to_owned()));
        assert!(args.contains(&"-no-reboot".to_owned()));
    }

    #[test]
    fn q35_kvm_argv() {
        let paths = VmPaths::new(Path::new("/d"));
        let args = argv(&spec(), Machine::Q35, Accel::Kvm, &paths, None, &[]);
        // Without NICs nothing network-related is added (`-nodefaults`: no default NIC either).
        assert!(value_of(&args, "-netdev").is_empty(), "{args:?}");
        assert!(!args.iter().any(|a| a.contains("virtio-net")), "{args:?}");
        assert_eq!(value_of(&args, "-machine"), ["q35,memory-backend=mem"]);
        assert_eq!(value_of(&args, "-accel"), ["kvm"]);
        assert_eq!(value_of(&args, "-cpu"), ["host"]);
        assert_eq!(
            value_of(&args, "-device"),
            ["vhost-user-vsock-pci,chardev=vsock"]
        );
        assert!(!value_of(&args, "-append")[0].contains("tsc"));
    }

    #[test]
    fn nics_are_virtio_net_devices_on_the_tap_descriptors_given() {
        let paths = VmPaths::new(Path::new("/d"));
        let mut spec = spec();
        spec.nics = vec![
            nic([0x0a, 0x58, 0xc6, 0x12, 0x00, 0x02], 1500),
            nic([0x02, 0x42, 0xc6, 0x13, 0x00, 0x07], 9000),
        ];
        let args = argv(&spec, Machine::Q35, Accel::Kvm, &paths, None, &[5, 9]);
        assert_eq!(
            value_of(&args, "-netdev"),
            ["tap,id=net0,fd=5,vhost=off", "tap,id=net1,fd=9,vhost=off"]
        );
        assert_eq!(
            value_of(&args, "-device")[1..],
            [
                "virtio-net-pci,netdev=net0,mac=0a:58:c6:12:00:02,host_mtu=1500,romfile=",
                "virtio-net-pci,netdev=net1,mac=02:42:c6:13:00:07,host_mtu=9000,romfile="
            ]
        );
        // The NICs come after the disks and before `-vga`, as the golden TEE argv has them.
        let netdev = args.iter().position(|a| a == "-netdev").expect("-netdev");
        let vga = args.iter().position(|a| a == "-vga").expect("-vga");
        assert!(netdev < vga);

        // microvm has no PCI: virtio-mmio devices, no option ROM property.
        let args = argv(
            &spec,
            Machine::Microvm,
            Accel::Tcg,
            &paths,
            Some(2_450_000),
            &[5, 9],
        );
        assert_eq!(
            value_of(&args, "-device")[1..],
            [
                "virtio-net-device,netdev=net0,mac=0a:58:c6:12:00:02,host_mtu=1500",
                "virtio-net-device,netdev=net1,mac=02:42:c6:13:00:07,host_mtu=9000"
            ]
        );
    }

    #[tokio::test]
    async fn vmm04_console_output_is_bounded() {
        let (mut guest, host) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for _ in 0..1000 {
                guest.write_all(&[b'x'; 100]).await.unwrap();
            }
        });
        let mut log = Vec::new();
        let kept = copy_bounded(host, &mut log, 1000).await.unwrap();
        writer.await.unwrap();
        assert_eq!(kept, 1000);
        let text = String::from_utf8(log).unwrap();
        assert!(text.starts_with(&"x".repeat(1000)));
        assert!(
            text.ends_with("[coffer: console log truncated at 1000 bytes]\n"),
            "{text}"
        );
    }

    #[test]
    fn config_rejects_unknown_keys() {
        let err = serde_json::from_str::<QemuConfig>(r#"{"binary":"q","bogus":1}"#).unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
        let cfg: QemuConfig = serde_json::from_str(r#"{"machine":"q35","accel":"tcg"}"#).unwrap();
        assert_eq!((cfg.machine, cfg.accel), (Machine::Q35, AccelMode::Tcg));
    }
}
