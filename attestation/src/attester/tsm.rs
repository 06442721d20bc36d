//! Linux configfs-tsm report protocol (SNP falls back to the `/dev/sev-guest` ioctl when the
//! kernel has no configfs-tsm, see [`super::snp_report`]) (`Documentation/ABI/testing/configfs-tsm`):
//! `mkdir report/<entry>`, check `provider`, write 64 bytes to `inblob`, read `generation`,
//! `outblob` (the SNP report or TDX quote), `auxblob` (SNP certificate table, if any), read
//! `generation` again (a change means another writer raced us), `rmdir` the entry.
//!
//! SNP evidence: `{"report": b64, "cert_table": b64?}`; TDX evidence:
//! `{"quote": b64, "cc_eventlog": b64?}` (base64 standard alphabet).

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rand_core::{OsRng, RngCore};
use serde_json::{Map, Value};

use super::{Attester, AttesterError};
use crate::kbs::binding::BINDING_LEN;
use crate::kbs::types::Tee;

/// Output of one configfs-tsm report request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TsmOutput {
    /// `provider` (`sev_guest`, `tdx_guest`).
    pub provider: String,
    /// `outblob`: the report or quote.
    pub outblob: Vec<u8>,
    /// `auxblob` when present and non-empty.
    pub auxblob: Option<Vec<u8>>,
}

/// A configfs-tsm report root (normally [`super::TSM_REPORT_ROOT`]).
#[derive(Debug, Clone)]
pub struct TsmReport {
    root: PathBuf,
}

impl TsmReport {
    /// Reports under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Requests a report for `inblob` from a fresh entry, expecting `provider`.
    pub fn request(
        &self,
        provider: &'static str,
        inblob: &[u8; 64],
    ) -> Result<TsmOutput, AttesterError> {
        let mut suffix = [0u8; 8];
        OsRng.fill_bytes(&mut suffix);
        let entry = self.root.join(format!(
            "coffer-{}-{}",
            std::process::id(),
            hex::encode(suffix)
        ));
        std::fs::create_dir(&entry).map_err(|source| AttesterError::TsmUnavailable {
            path: self.root.clone(),
            source,
        })?;
        let result = request_in(&entry, provider, inblob);
        if let Err(e) = std::fs::remove_dir(&entry) {
            tracing::warn!(entry = %entry.display(), error = %e, "could not remove configfs-tsm entry");
        }
        result
    }
}

/// The protocol on an existing entry directory.
fn request_in(
    entry: &Path,
    expected_provider: &'static str,
    inblob: &[u8; 64],
) -> Result<TsmOutput, AttesterError> {
    let provider = read_text(&entry.join("provider"))?;
    if provider != expected_provider {
        return Err(AttesterError::Provider {
            expected: expected_provider,
            found: provider,
        });
    }
    let inblob_path = entry.join("inblob");
    std::fs::write(&inblob_path, inblob).map_err(|source| AttesterError::TsmIo {
        op: "write",
        path: inblob_path,
        source,
    })?;
    let before = read_text(&entry.join("generation"))?;
    let outblob = read_bytes(&entry.join("outblob"))?;
    let auxblob_path = entry.join("auxblob");
    let auxblob = match std::fs::read(&auxblob_path) {
        Ok(b) if !b.is_empty() => Some(b),
        Ok(_) => None,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(AttesterError::TsmIo {
                op: "read",
                path: auxblob_path,
                source,
            });
        }
    };
    let after = read_text(&entry.join("generation"))?;
    if before != after {
        return Err(AttesterError::Generation { before, after });
    }
    if outblob.is_empty() {
        return Err(AttesterError::EmptyReport);
    }
    Ok(TsmOutput {
        provider,
        outblob,
        auxblob,
    })
}

fn read_bytes(path: &Path) -> Result<Vec<u8>, AttesterError> {
    std::fs::read(path).map_err(|source| AttesterError::TsmIo {
        op: "read",
        path: path.to_path_buf(),
        source,
    })
}

fn read_text(path: &Path) -> Result<String, AttesterError> {
    Ok(String::from_utf8_lossy(&read_bytes(path)?)
        .trim()
        .to_owned())
}

/// SNP or TDX attester over configfs-tsm.
#[derive(Debug)]
pub struct TsmAttester {
    tee: Tee,
    report: TsmReport,
    ccel: Option<PathBuf>,
}

impl TsmAttester {
    /// An attester for `tee` (SNP or TDX); `ccel` is the TDX event log path, read when present.
    pub fn new(tee: Tee, report: TsmReport, ccel: Option<PathBuf>) -> Self {
        Self { tee, report, ccel }
    }
}

impl Attester for TsmAttester {
    fn tee(&self) -> Tee {
        self.tee
    }

    fn evidence(&self, report_data: &[u8; BINDING_LEN]) -> Result<Value, AttesterError> {
        let mut inblob = [0u8; 64];
        inblob[..BINDING_LEN].copy_from_slice(report_data);
        let mut evidence = Map::new();
        match self.tee {
            Tee::Snp => {
                let out =
                    super::snp_report(&self.report, Path::new(super::SEV_GUEST_DEVICE), &inblob)?;
                evidence.insert("report".into(), Value::String(B64.encode(&out.outblob)));
                if let Some(aux) = &out.auxblob {
                    evidence.insert("cert_table".into(), Value::String(B64.encode(aux)));
                }
            }
            Tee::Tdx | Tee::Sample => {
                let out = self.report.request("tdx_guest", &inblob)?;
                evidence.insert("quote".into(), Value::String(B64.encode(&out.outblob)));
                if let Some(ccel) = &self.ccel
                    && let Ok(log) = std::fs::read(ccel)
                {
                    evidence.insert("cc_eventlog".into(), Value::String(B64.encode(log)));
                }
            }
        }
        Ok(Value::Object(evidence))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lays out one configfs-tsm entry as the kernel would after our write.
    fn fake_entry(dir: &Path, provider: &str, outblob: &[u8], auxblob: &[u8]) -> PathBuf {
        let entry = dir.join("entry");
        std::fs::create_dir(&entry).unwrap();
        std::fs::write(entry.join("provider"), format!("{provider}\n")).unwrap();
        std::fs::write(entry.join("generation"), "1\n").unwrap();
        std::fs::write(entry.join("outblob"), outblob).unwrap();
        std::fs::write(entry.join("auxblob"), auxblob).unwrap();
        entry
    }

    #[test]
    fn protocol_writes_inblob_and_reads_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let entry = fake_entry(dir.path(), "sev_guest", b"REPORT", b"CERTS");
        let inblob = [0x5au8; 64];
        let out = request_in(&entry, "sev_guest", &inblob).unwrap();
        assert_eq!(out.outblob, b"REPORT");
        assert_eq!(out.auxblob.as_deref(), Some(&b"CERTS"[..]));
        assert_eq!(
            std::fs::read(entry.join("inblob")).unwrap(),
            inblob.to_vec()
        );
    }

    #[test]
    fn wrong_provider_is_refused_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        let entry = fake_entry(dir.path(), "tdx_guest", b"Q", b"");
        let err = request_in(&entry, "sev_guest", &[0; 64]).unwrap_err();
        assert!(matches!(err, AttesterError::Provider { .. }));
        assert!(!entry.join("inblob").exists());
    }

    #[test]
    fn empty_auxblob_and_empty_report() {
        let dir = tempfile::tempdir().unwrap();
        let entry = fake_entry(dir.path(), "tdx_guest", b"", b"");
        assert!(matches!(
            request_in(&entry, "tdx_guest", &[0; 64]),
            Err(AttesterError::EmptyReport)
        ));
    }

    #[test]
    fn missing_root_is_unavailable_and_entry_is_cleaned_up() {
        let dir = tempfile::tempdir().unwrap();
        let missing = TsmReport::new(dir.path().join("absent"));
        assert!(matches!(
            missing.request("sev_guest", &[0; 64]),
            Err(AttesterError::TsmUnavailable { .. })
        ));
        // A root without kernel attributes: the entry is created, the read fails, the entry goes.
        let bare = TsmReport::new(dir.path());
        assert!(matches!(
            bare.request("sev_guest", &[0; 64]),
            Err(AttesterError::TsmIo { .. })
        ));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
