//! Confidential launch: SEV-SNP and TDX settings, the host checks that must pass before one is
//! attempted, and what they change in the VM's launch.
//!
//! A sandbox asked for as confidential either launches in the TEE or fails with
//! [`TeeError::Unavailable`] naming every missing piece: it never falls back to a plain VM.
//! The initdata digest goes into the hardware-measured field (SNP `HOSTDATA`, TDX `MRCONFIGID`)
//! instead of the kernel command line, so the measured command line is the same for every pod and
//! the launch digest can be computed in advance (`coffer measure`).

pub mod detect;
pub mod snp;
pub mod tdx;

use std::fmt;
use std::path::{Path, PathBuf};

use coffer_initdata::{Algorithm, Digest};
use serde::{Deserialize, Serialize};

pub use snp::SnpConfig;
pub use tdx::TdxConfig;

/// The QOM id of the confidential-guest-support object.
pub const OBJECT_ID: &str = "tee0";

/// A TEE kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TeeKind {
    /// AMD SEV-SNP.
    Snp,
    /// Intel TDX.
    Tdx,
}

impl TeeKind {
    /// The initdata digest algorithm whose output fills the hardware field exactly.
    pub fn initdata_algorithm(self) -> Algorithm {
        match self {
            Self::Snp => Algorithm::Sha256,
            Self::Tdx => Algorithm::Sha384,
        }
    }
}

impl fmt::Display for TeeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Snp => "AMD SEV-SNP",
            Self::Tdx => "Intel TDX",
        })
    }
}

impl std::str::FromStr for TeeKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "snp" => Ok(Self::Snp),
            "tdx" => Ok(Self::Tdx),
            other => Err(format!("unknown TEE {other:?} (snp or tdx)")),
        }
    }
}

/// Confidential-launch failures.
#[derive(Debug, thiserror::Error)]
pub enum TeeError {
    /// The host cannot launch this TEE; nothing was started.
    #[error(
        "{tee} is not available on this host, refusing to start a non-confidential VM in its \
         place: {}",
        reasons.join("; ")
    )]
    Unavailable {
        /// The TEE asked for.
        tee: TeeKind,
        /// Every missing piece.
        reasons: Vec<String>,
    },
    /// The `[snp]`/`[tdx]` settings are unusable.
    #[error("{tee} configuration: {reason}")]
    Config {
        /// `snp` or `tdx`.
        tee: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A confidential guest refuses to serve without initdata, so none means no launch.
    #[error("a {0} sandbox needs initdata: the guest refuses to serve without it")]
    InitdataRequired(TeeKind),
    /// The initdata digest does not fill the hardware field.
    #[error(
        "{tee} binds initdata with {need} ({field}); this initdata uses {found}: set \
         algorithm = \"{need}\""
    )]
    InitdataAlgorithm {
        /// The TEE.
        tee: TeeKind,
        /// The hardware field.
        field: &'static str,
        /// Required algorithm.
        need: Algorithm,
        /// The document's algorithm.
        found: Algorithm,
    },
}

/// A confidential launch as configured, before a pod's initdata is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TeeLaunch {
    /// SEV-SNP with these settings.
    Snp(SnpConfig),
    /// TDX with these settings.
    Tdx(TdxConfig),
}

impl TeeLaunch {
    /// The TEE.
    pub fn kind(&self) -> TeeKind {
        match self {
            Self::Snp(_) => TeeKind::Snp,
            Self::Tdx(_) => TeeKind::Tdx,
        }
    }

    /// The configured bzImage, if any.
    pub fn kernel(&self) -> Option<&Path> {
        match self {
            Self::Snp(c) => c.kernel.as_deref(),
            Self::Tdx(c) => c.kernel.as_deref(),
        }
    }

    /// Binds the launch to one pod's initdata digest: checks the settings and the algorithm and
    /// resolves host-dependent values (the SNP C-bit).
    pub fn bind(&self, digest: &Digest) -> Result<ConfidentialSpec, TeeError> {
        let kind = self.kind();
        let need = kind.initdata_algorithm();
        let mismatch = || TeeError::InitdataAlgorithm {
            tee: kind,
            field: match kind {
                TeeKind::Snp => "HOSTDATA, 32 bytes",
                TeeKind::Tdx => "MRCONFIGID, 48 bytes",
            },
            need,
            found: digest.algorithm(),
        };
        if digest.algorithm() != need {
            return Err(mismatch());
        }
        // Missing files are named here rather than in a QEMU log (VMM-01).
        let (firmware, tee) = match self {
            Self::Snp(c) => (&c.firmware, "snp"),
            Self::Tdx(c) => (&c.firmware, "tdx"),
        };
        for (what, path) in [
            ("firmware", Some(firmware.as_path())),
            ("kernel", self.kernel()),
        ] {
            if let Some(path) = path
                && !path.is_file()
            {
                return Err(TeeError::Config {
                    tee,
                    reason: format!("{what} {} is not a readable file", path.display()),
                });
            }
        }
        match self {
            Self::Snp(config) => {
                config.validate()?;
                let host_data = digest.value().try_into().map_err(|_| mismatch())?;
                Ok(ConfidentialSpec::Snp {
                    cbitpos: config.resolve_cbitpos()?,
                    config: config.clone(),
                    host_data,
                })
            }
            Self::Tdx(config) => {
                config.validate()?;
                let mr_config_id = digest.value().try_into().map_err(|_| mismatch())?;
                Ok(ConfidentialSpec::Tdx {
                    config: config.clone(),
                    mr_config_id,
                })
            }
        }
    }
}

/// Everything a confidential VM launch needs beyond a plain one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfidentialSpec {
    /// SEV-SNP.
    Snp {
        /// Settings.
        config: SnpConfig,
        /// Resolved C-bit position.
        cbitpos: u32,
        /// HOSTDATA: the initdata SHA-256.
        host_data: [u8; 32],
    },
    /// TDX.
    Tdx {
        /// Settings.
        config: TdxConfig,
        /// MRCONFIGID: the initdata SHA-384.
        mr_config_id: [u8; 48],
    },
}

impl ConfidentialSpec {
    /// The TEE.
    pub fn kind(&self) -> TeeKind {
        match self {
            Self::Snp { .. } => TeeKind::Snp,
            Self::Tdx { .. } => TeeKind::Tdx,
        }
    }

    /// Firmware loaded with `-bios`.
    pub fn firmware(&self) -> &PathBuf {
        match self {
            Self::Snp { config, .. } => &config.firmware,
            Self::Tdx { config, .. } => &config.firmware,
        }
    }

    /// Extra `-machine` properties.
    pub fn machine_properties(&self) -> String {
        match self {
            Self::Snp { .. } => format!("confidential-guest-support={OBJECT_ID}"),
            // TDX requires a split IRQ chip (the TDX module owns the local APIC).
            Self::Tdx { .. } => {
                format!("confidential-guest-support={OBJECT_ID},kernel-irqchip=split")
            }
        }
    }

    /// The `-cpu` model: pinned for SNP (the VMSA signature is measured); TDX takes `host`.
    pub fn cpu_model(&self) -> &str {
        match self {
            Self::Snp { config, .. } => &config.cpu_model,
            Self::Tdx { .. } => "host",
        }
    }

    /// The `-object` argument.
    pub fn object_arg(&self) -> String {
        match self {
            Self::Snp {
                config,
                cbitpos,
                host_data,
            } => snp::object_arg(config, *cbitpos, host_data),
            Self::Tdx {
                config,
                mr_config_id,
            } => tdx::object_arg(config, mr_config_id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// INV-4: the initdata algorithm is fixed per TEE; VMM-01: missing files are refused.
    #[test]
    fn binding_requires_the_matching_algorithm_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let firmware = dir.path().join("fw.fd");
        std::fs::write(&firmware, b"fw").unwrap();
        let snp = TeeLaunch::Snp(SnpConfig {
            cbitpos: Some(51),
            firmware: firmware.clone(),
            ..SnpConfig::default()
        });
        let err = snp.bind(&Algorithm::Sha384.digest(b"x")).unwrap_err();
        assert!(
            err.to_string().contains("set algorithm = \"sha256\""),
            "{err}"
        );
        let spec = snp.bind(&Algorithm::Sha256.digest(b"x")).unwrap();
        assert_eq!(spec.kind(), TeeKind::Snp);

        let missing = TeeLaunch::Snp(SnpConfig {
            cbitpos: Some(51),
            kernel: Some(dir.path().join("no-kernel")),
            firmware: firmware.clone(),
            ..SnpConfig::default()
        });
        let err = missing.bind(&Algorithm::Sha256.digest(b"x")).unwrap_err();
        assert!(
            err.to_string().contains("no-kernel is not a readable file"),
            "{err}"
        );

        let tdx = TeeLaunch::Tdx(TdxConfig {
            firmware,
            ..TdxConfig::default()
        });
        assert!(matches!(
            tdx.bind(&Algorithm::Sha256.digest(b"x")),
            Err(TeeError::InitdataAlgorithm {
                tee: TeeKind::Tdx,
                ..
            })
        ));
        assert!(tdx.bind(&Algorithm::Sha384.digest(b"x")).is_ok());
    }
}
