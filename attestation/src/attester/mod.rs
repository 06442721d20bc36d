//! Attesters: produce TEE evidence binding a 48-byte report_data (see [`crate::kbs::binding`]).
//!
//! One small trait, [`Attester`], and one factory, [`attester_for`]. [`detect`] looks for a TEE
//! and returns [`AttesterError::NoTee`] when none is present; it never falls back to the
//! development-only [`SampleAttester`], which exists only when asked for by name and says so in
//! its evidence and in the logs.
//!
//! Hardware evidence comes from Linux configfs-tsm (`/sys/kernel/config/tsm/report`, see
//! [`tsm`]). SEV-SNP guests whose kernel has no configfs-tsm (before 6.7) get their report through
//! the `/dev/sev-guest` ioctl instead ([`sev_guest`], [`snp_report`]); TDX quotes need
//! configfs-tsm.

mod sample;
pub mod sev_guest;
pub mod tsm;

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::kbs::binding::BINDING_LEN;
use crate::kbs::types::Tee;

pub use sample::SampleAttester;
pub use tsm::{TsmAttester, TsmReport};

/// Where configfs-tsm reports are requested.
pub const TSM_REPORT_ROOT: &str = "/sys/kernel/config/tsm/report";
/// The SEV-SNP guest device.
pub const SEV_GUEST_DEVICE: &str = "/dev/sev-guest";
/// The TDX guest device.
pub const TDX_GUEST_DEVICE: &str = "/dev/tdx_guest";
/// The CCEL event log exposed by ACPI on TDX guests.
pub const CCEL_PATH: &str = "/sys/firmware/acpi/tables/data/CCEL";

/// Attester failures.
#[derive(Debug, thiserror::Error)]
pub enum AttesterError {
    /// No TEE was found (detection never falls back to sample evidence).
    #[error("no tee found (looked for {sev} and {tdx})")]
    NoTee {
        /// SNP device path probed.
        sev: PathBuf,
        /// TDX device path probed.
        tdx: PathBuf,
    },
    /// configfs-tsm is not mounted or not supported.
    #[error("configfs-tsm report interface {path} is unavailable")]
    TsmUnavailable {
        /// The report root.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A configfs-tsm file operation failed.
    #[error("configfs-tsm {op} {path}")]
    TsmIo {
        /// What was done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The report came from a different provider than the TEE asked for.
    #[error("configfs-tsm provider is {found:?}, expected {expected}")]
    Provider {
        /// Expected provider name.
        expected: &'static str,
        /// What the kernel reported.
        found: String,
    },
    /// Another writer changed the report entry while we read it.
    #[error("configfs-tsm report generation changed from {before} to {after} during the read")]
    Generation {
        /// Generation after our write.
        before: String,
        /// Generation after our read.
        after: String,
    },
    /// The kernel returned an empty report.
    #[error("configfs-tsm returned an empty report")]
    EmptyReport,
    /// The `/dev/sev-guest` ioctl path failed.
    #[error(transparent)]
    SevGuest(sev_guest::SevGuestError),
    /// Forging test evidence failed (`crate::testing`, development and CI only).
    #[error("forging test evidence: {reason}")]
    Forge {
        /// What failed.
        reason: String,
    },
}

/// An SEV-SNP report carrying `user_data`: through configfs-tsm when the kernel offers it, else
/// through the `/dev/sev-guest` ioctl at `device`.
pub fn snp_report(
    tsm: &TsmReport,
    device: &Path,
    user_data: &[u8; 64],
) -> Result<tsm::TsmOutput, AttesterError> {
    match tsm.request("sev_guest", user_data) {
        Err(AttesterError::TsmUnavailable { path, source }) if device.exists() => {
            tracing::debug!(tsm = %path.display(), error = %source, "configfs-tsm unavailable, using the sev-guest ioctl");
            Ok(tsm::TsmOutput {
                provider: "sev_guest".into(),
                outblob: sev_guest::get_report(device, user_data)?,
                auxblob: None,
            })
        }
        other => other,
    }
}

/// Produces evidence for one TEE.
pub trait Attester: Send + Sync + std::fmt::Debug {
    /// The TEE named in `/auth`.
    fn tee(&self) -> Tee;

    /// The `primary_evidence` JSON, binding `report_data`.
    fn evidence(&self, report_data: &[u8; BINDING_LEN]) -> Result<Value, AttesterError>;
}

/// Which attester to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttesterKind {
    /// Detect the hardware TEE; an error if there is none.
    Detect,
    /// SEV-SNP through configfs-tsm.
    Snp,
    /// TDX through configfs-tsm.
    Tdx,
    /// Development-only sample evidence (explicit opt-in).
    Sample,
}

/// Builds the attester `kind` names (the one factory).
pub fn attester_for(kind: AttesterKind) -> Result<Box<dyn Attester>, AttesterError> {
    let tee = match kind {
        AttesterKind::Sample => return Ok(Box::new(SampleAttester::new())),
        AttesterKind::Snp => Tee::Snp,
        AttesterKind::Tdx => Tee::Tdx,
        AttesterKind::Detect => detect(Path::new(SEV_GUEST_DEVICE), Path::new(TDX_GUEST_DEVICE))?,
    };
    let ccel = (tee == Tee::Tdx).then(|| PathBuf::from(CCEL_PATH));
    Ok(Box::new(TsmAttester::new(
        tee,
        TsmReport::new(TSM_REPORT_ROOT),
        ccel,
    )))
}

/// Finds the hardware TEE by its guest device. Never returns [`Tee::Sample`].
pub fn detect(sev_device: &Path, tdx_device: &Path) -> Result<Tee, AttesterError> {
    if sev_device.exists() {
        Ok(Tee::Snp)
    } else if tdx_device.exists() {
        Ok(Tee::Tdx)
    } else {
        Err(AttesterError::NoTee {
            sev: sev_device.to_path_buf(),
            tdx: tdx_device.to_path_buf(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_without_tee_is_an_error_not_sample() {
        let dir = tempfile::tempdir().unwrap();
        let r = detect(&dir.path().join("sev-guest"), &dir.path().join("tdx_guest"));
        assert!(matches!(r, Err(AttesterError::NoTee { .. })));
    }

    #[test]
    fn factory_never_falls_back_to_sample() {
        let no_tee = !Path::new(SEV_GUEST_DEVICE).exists() && !Path::new(TDX_GUEST_DEVICE).exists();
        match attester_for(AttesterKind::Detect) {
            Err(AttesterError::NoTee { .. }) => assert!(no_tee),
            Ok(a) => assert_ne!(a.tee(), Tee::Sample),
            Err(other) => panic!("unexpected detection error: {other}"),
        }
        assert_eq!(
            attester_for(AttesterKind::Sample).unwrap().tee(),
            Tee::Sample
        );
    }

    #[test]
    fn detection_finds_devices() {
        let dir = tempfile::tempdir().unwrap();
        let sev = dir.path().join("sev-guest");
        let tdx = dir.path().join("tdx_guest");
        std::fs::write(&tdx, b"").unwrap();
        assert_eq!(detect(&sev, &tdx).unwrap(), Tee::Tdx);
        std::fs::write(&sev, b"").unwrap();
        assert_eq!(detect(&sev, &tdx).unwrap(), Tee::Snp);
    }
}
