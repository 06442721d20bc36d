//! The guest side: a P-256 key generated in guest memory, a CSR for it, the broker's certificate,
//! and when to renew.
//!
//! ```text
//! let id = WorkloadIdentity::obtain(&kbs_client, None).await?;   // attests if needed
//! id.write_files(tmpfs_dir)?;                                   // svid.pem, svid_key.pem, svid_bundle.pem
//! sleep_until(id.renew_at()); // then obtain again (a new key each time) and write_files again
//! ```
//!
//! The private key never leaves this value except through [`WorkloadIdentity::private_key_pem`]
//! and [`WorkloadIdentity::write_files`]; it is zeroized on drop and redacted from `Debug`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use zeroize::Zeroizing;

use crate::kbs::client::{IdentityBundle, KbsClient, KbsClientError};

/// File names [`WorkloadIdentity::write_files`] uses (those of the SPIFFE helper convention).
pub const CERT_FILE: &str = "svid.pem";
/// The private key (PKCS#8 PEM, mode 0600).
pub const KEY_FILE: &str = "svid_key.pem";
/// The trust bundle (the broker's CA).
pub const BUNDLE_FILE: &str = "svid_bundle.pem";

/// Guest-side identity failures.
#[derive(Debug, thiserror::Error)]
pub enum GuestIdentityError {
    /// Generating the key or the CSR failed.
    #[error("cannot make the key or csr: {reason}")]
    Csr {
        /// The generator's message.
        reason: String,
    },
    /// The broker exchange failed or was refused.
    #[error("identity request failed")]
    Kbs(#[source] KbsClientError),
    /// Writing an identity file failed.
    #[error("cannot write {path}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// A workload identity: the guest-generated key and the broker-issued certificate chain.
pub struct WorkloadIdentity {
    key_pem: Zeroizing<String>,
    bundle: IdentityBundle,
}

impl std::fmt::Debug for WorkloadIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadIdentity")
            .field("spiffe_id", &self.bundle.spiffe_id)
            .field("not_after", &self.bundle.not_after)
            .field("key", &"[REDACTED]")
            .finish()
    }
}

/// A fresh P-256 key (PKCS#8 PEM) and a DER CSR for it. The CSR names nothing: the broker
/// decides the identity from the attested initdata.
pub fn new_key_and_csr() -> Result<(Zeroizing<String>, Vec<u8>), GuestIdentityError> {
    let csr_err = |e: rcgen::Error| GuestIdentityError::Csr {
        reason: e.to_string(),
    };
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(csr_err)?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key).map_err(csr_err)?;
    Ok((Zeroizing::new(key.serialize_pem()), csr.der().to_vec()))
}

impl WorkloadIdentity {
    /// Generates a key, asks the broker for a certificate (`lifetime`, or the broker's default)
    /// and returns both.
    pub async fn obtain(
        client: &KbsClient,
        lifetime: Option<Duration>,
    ) -> Result<Self, GuestIdentityError> {
        let (key_pem, csr) = new_key_and_csr()?;
        let bundle = client
            .request_identity_for(&csr, lifetime)
            .await
            .map_err(GuestIdentityError::Kbs)?;
        Ok(Self { key_pem, bundle })
    }

    /// The SPIFFE ID.
    pub fn spiffe_id(&self) -> &str {
        &self.bundle.spiffe_id
    }

    /// The certificate chain and trust bundle.
    pub fn bundle(&self) -> &IdentityBundle {
        &self.bundle
    }

    /// The private key, PKCS#8 PEM.
    pub fn private_key_pem(&self) -> &str {
        &self.key_pem
    }

    /// When the certificate expires.
    pub fn not_after(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.bundle.not_after)
    }

    /// When to obtain the next identity: two thirds into the certificate's validity.
    pub fn renew_at(&self) -> SystemTime {
        let (from, to) = (self.bundle.not_before, self.bundle.not_after);
        UNIX_EPOCH + Duration::from_secs(from + to.saturating_sub(from) * 2 / 3)
    }

    /// Whether `now` is at or past [`Self::renew_at`].
    pub fn needs_renewal(&self, now: SystemTime) -> bool {
        now >= self.renew_at()
    }

    /// Writes [`CERT_FILE`] (chain), [`KEY_FILE`] (mode 0600) and [`BUNDLE_FILE`] into `dir`,
    /// each through a temporary file renamed into place, so a reader sees the old or the new
    /// file, never a partial one. The key is written first and the chain last, so a reader that
    /// loads the chain then the key after a rotation may briefly see a new key with an old
    /// chain: readers should reload on a certificate change and retry a key mismatch.
    pub fn write_files(&self, dir: &Path) -> Result<(), GuestIdentityError> {
        write_atomic(&dir.join(KEY_FILE), self.key_pem.as_bytes(), 0o600)?;
        write_atomic(
            &dir.join(BUNDLE_FILE),
            self.bundle.ca_bundle_pem.as_bytes(),
            0o644,
        )?;
        write_atomic(
            &dir.join(CERT_FILE),
            self.bundle.cert_chain_pem.as_bytes(),
            0o644,
        )
    }
}

fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), GuestIdentityError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| GuestIdentityError::Io { path, source }
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&tmp)(e)),
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(&tmp))?;
    file.write_all(bytes).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(not_before: u64, not_after: u64) -> WorkloadIdentity {
        WorkloadIdentity {
            key_pem: Zeroizing::new("-----BEGIN PRIVATE KEY-----\nsecret\n".into()),
            bundle: IdentityBundle {
                cert_chain_pem: "chain".into(),
                ca_bundle_pem: "ca".into(),
                spiffe_id: "spiffe://coffer.test/ns/a/sa/b".into(),
                not_before,
                not_after,
            },
        }
    }

    #[test]
    fn renewal_at_two_thirds_and_debug_redacts_key() {
        let id = identity(1000, 4000);
        assert_eq!(id.renew_at(), UNIX_EPOCH + Duration::from_secs(3000));
        assert!(!id.needs_renewal(UNIX_EPOCH + Duration::from_secs(2999)));
        assert!(id.needs_renewal(UNIX_EPOCH + Duration::from_secs(3000)));
        assert!(!format!("{id:?}").contains("secret"));
    }

    #[test]
    fn files_written_with_key_mode_0600() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let id = identity(1, 2);
        id.write_files(dir.path()).unwrap();
        id.write_files(dir.path()).unwrap();
        let mode = |f: &str| {
            std::fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(KEY_FILE), 0o600);
        assert_eq!(mode(CERT_FILE), 0o644);
        assert_eq!(
            std::fs::read_to_string(dir.path().join(CERT_FILE)).unwrap(),
            "chain"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
    }

    #[test]
    fn csr_is_for_the_key() {
        use x509_cert::der::{Decode as _, Encode as _};
        let (key_pem, csr) = new_key_and_csr().unwrap();
        let key = rcgen::KeyPair::from_pem(&key_pem).unwrap();
        let req = x509_cert::request::CertReq::from_der(&csr).unwrap();
        assert_eq!(req.info.public_key.to_der().unwrap(), key.public_key_der());
        assert!(req.info.subject.0.is_empty());
    }
}
