//! Loading initdata before the API is served (catalogue INI-01, INI-02, INV-1).
//!
//! The host attaches the document as a read-only virtio-blk disk with serial
//! [`device::SERIAL`] and puts its expected digest on the kernel command line
//! (`coffer.initdata=<alg>:<hex>`). The agent, before it listens:
//!
//! 1. finds the disk (exactly one disk may carry the initdata magic),
//! 2. decodes and parses it ([`coffer_initdata`]),
//! 3. checks its digest against every binding it has — the command-line digest, and in a TEE the
//!    hardware field (SEV-SNP HOSTDATA / TDX MRCONFIGID),
//! 4. and only then takes its policy.
//!
//! Any failure — an expected disk that is absent, a read error, a malformed image or document, a
//! digest mismatch — is returned as an error and the agent never serves. There is no fallback to
//! a default policy once initdata is expected.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use coffer_attestation::attester::{self, TsmReport};
use coffer_attestation::{snp, tdx};
use coffer_initdata::{Binding, Digest, Initdata, InitdataError, device};
use thiserror::Error;

/// The kernel command-line parameter carrying the expected digest.
pub const CMDLINE_PARAM: &str = "coffer.initdata";

/// How long to wait for the disk to appear after the drivers are loaded.
const DEVICE_WAIT: Duration = Duration::from_secs(3);
/// How often the scan looks again while it waits for the disk.
const DEVICE_POLL: Duration = Duration::from_millis(2);

/// Why initdata could not be accepted.
#[derive(Debug, Error)]
pub enum LoadError {
    /// The expected digest on the command line is malformed.
    #[error("{CMDLINE_PARAM} on the kernel command line: {0}")]
    Cmdline(#[source] InitdataError),
    /// Initdata is required but no disk carries it.
    #[error("initdata is required ({why}) but no initdata disk is attached")]
    Absent {
        /// What requires it.
        why: &'static str,
    },
    /// More than one disk carries initdata.
    #[error("more than one disk carries initdata: {0:?}")]
    Ambiguous(Vec<PathBuf>),
    /// Reading or decoding the disk failed.
    #[error("initdata disk {path}: {source}")]
    Device {
        /// The disk.
        path: PathBuf,
        /// Cause.
        #[source]
        source: InitdataError,
    },
    /// The document is invalid or does not match a binding.
    #[error("initdata rejected: {0}")]
    Rejected(#[source] InitdataError),
    /// The hardware field binding initdata could not be read (INV-1: never "unbound").
    #[error("reading the {tee} attestation report for the initdata binding: {reason}")]
    Hardware {
        /// The TEE.
        tee: &'static str,
        /// What failed.
        reason: String,
    },
}

/// Where the initdata disk is and what binds it.
#[derive(Debug, Clone, Default)]
pub struct Source {
    /// An explicit device or image file; `None` scans `/sys/block` for the serial.
    pub path: Option<PathBuf>,
    /// The expected digest (from the command line or `--initdata-digest`).
    pub expected: Option<Digest>,
}

impl Source {
    /// The expected digest from a kernel command line, if present.
    pub fn from_cmdline(cmdline: &str) -> Result<Self, LoadError> {
        let prefix = format!("{CMDLINE_PARAM}=");
        let mut expected = None;
        for param in cmdline.split_ascii_whitespace() {
            if let Some(value) = param.strip_prefix(&prefix) {
                expected = Some(value.parse().map_err(LoadError::Cmdline)?);
            }
        }
        Ok(Self {
            path: None,
            expected,
        })
    }
}

/// A TEE the guest detected itself (never taken from the host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tee {
    /// AMD SEV-SNP.
    Snp,
    /// Intel TDX.
    Tdx,
}

impl Tee {
    /// Detects the TEE from the CPU flags the kernel reports and the guest devices.
    pub fn detect() -> Option<Self> {
        let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let has_flag = |name: &str| {
            flags
                .lines()
                .filter(|l| l.starts_with("flags"))
                .any(|l| l.split_ascii_whitespace().any(|f| f == name))
        };
        if has_flag("tdx_guest") || Path::new(attester::TDX_GUEST_DEVICE).exists() {
            Some(Self::Tdx)
        } else if has_flag("sev_snp") || Path::new(attester::SEV_GUEST_DEVICE).exists() {
            Some(Self::Snp)
        } else {
            None
        }
    }

    /// Human-readable name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Snp => "AMD SEV-SNP",
            Self::Tdx => "Intel TDX",
        }
    }
}

/// Loads, checks and returns initdata, or `None` when none is attached and none is required.
pub fn load(source: &Source, tee: Option<Tee>) -> Result<Option<Initdata>, LoadError> {
    let required = match (tee, &source.expected) {
        (Some(_), _) => Some("the guest runs in a TEE"),
        (None, Some(_)) => Some("the kernel command line names its digest"),
        (None, None) => None,
    };
    let path = match &source.path {
        Some(path) => Some(path.clone()),
        None => find_device(required.is_some())?,
    };
    let Some(path) = path else {
        return match required {
            Some(why) => Err(LoadError::Absent { why }),
            None => Ok(None),
        };
    };
    let raw = std::fs::File::open(&path)
        .map_err(InitdataError::Io)
        .and_then(device::decode)
        .map_err(|source| LoadError::Device {
            path: path.clone(),
            source,
        })?;
    let initdata = Initdata::parse(raw).map_err(LoadError::Rejected)?;
    if let Some(expected) = &source.expected {
        initdata
            .verify(&Binding::Launch(expected.clone()))
            .map_err(LoadError::Rejected)?;
    }
    if let Some(tee) = tee {
        let binding = hardware_binding(tee)?;
        initdata.verify(&binding).map_err(LoadError::Rejected)?;
    }
    tracing::info!(
        digest = %initdata.digest(),
        bound = source.expected.is_some(),
        entries = ?initdata.entries().keys().collect::<Vec<_>>(),
        "initdata accepted"
    );
    Ok(Some(initdata))
}

/// Where configfs is mounted and where configfs-tsm takes report requests.
const CONFIGFS: &str = "/sys/kernel/config";

/// Reads the field the hardware measured at launch from a fresh report: SEV-SNP `HOSTDATA` or
/// TDX `MRCONFIGID`. The report comes from the firmware through the guest kernel (configfs-tsm),
/// not from the host, so its fields are taken as they are; the broker verifies its signature.
pub fn hardware_binding(tee: Tee) -> Result<Binding, LoadError> {
    let failed = |reason: String| LoadError::Hardware {
        tee: tee.name(),
        reason,
    };
    if !Path::new(coffer_attestation::attester::TSM_REPORT_ROOT).is_dir()
        && let Err(e) = crate::init::mount_configfs(Path::new(CONFIGFS))
    {
        // Kernels before 6.7 have no configfs-tsm; SNP falls back to the sev-guest ioctl below.
        tracing::debug!(error = %e, "configfs not mounted");
    }
    let mut nonce = [0u8; 64];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
    let tsm = TsmReport::new(coffer_attestation::attester::TSM_REPORT_ROOT);
    let report = match tee {
        Tee::Snp => attester::snp_report(&tsm, Path::new(attester::SEV_GUEST_DEVICE), &nonce),
        Tee::Tdx => tsm.request("tdx_guest", &nonce),
    }
    .map_err(|e| failed(e.to_string()))?;
    binding_from_report(tee, &report.outblob).map_err(failed)
}

/// The binding field of a report (SNP) or quote (TDX).
pub fn binding_from_report(tee: Tee, report: &[u8]) -> Result<Binding, String> {
    match tee {
        Tee::Snp => {
            let report = snp::Report::parse(report).map_err(|e| e.to_string())?;
            Ok(Binding::SnpHostData(report.host_data))
        }
        Tee::Tdx => {
            let quote = tdx::TdQuote::parse(report).map_err(|e| e.to_string())?;
            Ok(Binding::TdxMrConfigId(quote.report.mr_config_id))
        }
    }
}

/// Finds the one block device with the initdata serial; waits briefly when it is required.
fn find_device(required: bool) -> Result<Option<PathBuf>, LoadError> {
    let deadline = Instant::now()
        + if required {
            DEVICE_WAIT
        } else {
            Duration::ZERO
        };
    loop {
        let found = scan_block_devices(Path::new("/sys/block"), Path::new("/dev"));
        match found.len() {
            // The disk appears while virtio_blk probes it, just after the module loads: a
            // short poll finds it as soon as it is there.
            0 if Instant::now() < deadline => std::thread::sleep(DEVICE_POLL),
            0 => return Ok(None),
            1 => return Ok(found.into_iter().next()),
            _ => return Err(LoadError::Ambiguous(found)),
        }
    }
}

/// Block devices whose virtio serial is [`device::SERIAL`] or whose first bytes are the magic.
fn scan_block_devices(sys_block: &Path, dev: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(sys_block) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name();
            let node = dev.join(&name);
            let serial = std::fs::read_to_string(entry.path().join("serial")).unwrap_or_default();
            let by_serial = serial.trim() == device::SERIAL;
            let by_magic = || {
                let mut head = [0u8; 16];
                std::fs::File::open(&node)
                    .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
                    .is_ok_and(|()| device::has_magic(&head))
            };
            (by_serial || by_magic()).then_some(node)
        })
        .collect();
    found.sort();
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use coffer_initdata::Algorithm;

    const DOC: &str =
        "version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n\"kbs-url\" = \"http://kbs\"\n";

    fn image(dir: &Path, bytes: &[u8]) -> PathBuf {
        let path = dir.join("initdata.img");
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn cmdline_digest_is_parsed() {
        let digest = Algorithm::Sha256.digest(b"x");
        let source =
            Source::from_cmdline(&format!("console=ttyS0 coffer.initdata={digest} quiet")).unwrap();
        assert_eq!(source.expected, Some(digest));
        assert!(Source::from_cmdline("quiet").unwrap().expected.is_none());
        assert!(matches!(
            Source::from_cmdline("coffer.initdata=sha256:zz").unwrap_err(),
            LoadError::Cmdline(_)
        ));
    }

    #[test]
    fn bound_document_is_accepted_and_mismatch_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = image(dir.path(), &device::encode(DOC.as_bytes()));
        let good = Source {
            path: Some(path.clone()),
            expected: Some(Algorithm::Sha256.digest(DOC.as_bytes())),
        };
        let init = load(&good, None).unwrap().unwrap();
        assert_eq!(init.raw(), DOC.as_bytes());
        // INI-02: the disk differs from what the launch measured.
        let bad = Source {
            path: Some(path),
            expected: Some(Algorithm::Sha256.digest(b"another document")),
        };
        assert!(matches!(
            load(&bad, None).unwrap_err(),
            LoadError::Rejected(InitdataError::DigestMismatch { .. })
        ));
    }

    fn vector(name: &str) -> Vec<u8> {
        // The repository's test vectors (tests/vectors/README.md).
        std::fs::read(format!(
            "{}/../../tests/vectors/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    /// INI-02: the binding is read from the real report layouts, and must equal the digest exactly.
    #[test]
    fn hardware_field_binds_the_document() {
        let init = Initdata::parse(DOC.as_bytes().to_vec()).unwrap();
        let mut report = vector("snp/trustee-test-report.bin");
        // The vector's HOSTDATA is not our digest: refused.
        let binding = binding_from_report(Tee::Snp, &report).unwrap();
        assert!(matches!(
            init.verify(&binding).unwrap_err(),
            InitdataError::DigestMismatch { .. }
        ));
        // The same report with HOSTDATA (offset 0xC0) set to the digest: accepted.
        report[0xC0..0xE0].copy_from_slice(init.digest().value());
        init.verify(&binding_from_report(Tee::Snp, &report).unwrap())
            .unwrap();
        // A TD quote's MRCONFIGID is 48 bytes: a sha256 document cannot bind to it.
        let quote = vector("tdx/dcap-qvl-tdx_quote");
        let binding = binding_from_report(Tee::Tdx, &quote).unwrap();
        assert!(matches!(
            init.verify(&binding).unwrap_err(),
            InitdataError::AlgorithmForField { .. }
        ));
        assert!(binding_from_report(Tee::Snp, &quote).is_err());
        assert!(binding_from_report(Tee::Tdx, &[0u8; 100]).is_err());
    }

    /// INI-01: required-but-absent and unreadable disks refuse.
    #[test]
    fn absent_and_unreadable_cases_refuse() {
        let dir = tempfile::tempdir().unwrap();
        let missing = Source {
            path: Some(dir.path().join("absent")),
            expected: None,
        };
        assert!(matches!(
            load(&missing, None).unwrap_err(),
            LoadError::Device {
                source: InitdataError::Io(_),
                ..
            }
        ));
    }

    #[test]
    fn scan_finds_by_serial_or_magic_and_flags_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path().join("sys");
        let dev = dir.path().join("dev");
        std::fs::create_dir_all(&dev).unwrap();
        for (name, serial, contents) in [
            ("vda", "coffer-initdata", device::encode(DOC.as_bytes())),
            ("vdb", "other", vec![0u8; 512]),
        ] {
            std::fs::create_dir_all(sys.join(name)).unwrap();
            std::fs::write(sys.join(name).join("serial"), format!("{serial}\n")).unwrap();
            std::fs::write(dev.join(name), contents).unwrap();
        }
        assert_eq!(scan_block_devices(&sys, &dev), vec![dev.join("vda")]);
        // A second disk carrying the magic under another serial makes it ambiguous.
        std::fs::write(dev.join("vdb"), device::encode(b"x")).unwrap();
        assert_eq!(scan_block_devices(&sys, &dev).len(), 2);
    }
}
