//! Expected launch measurements of confidential guests, computed on the host from the images a
//! guest boots, so that a relying party (`coffer-kbs`) can pin them as reference values.
//!
//! - [`snp`]: the SEV-SNP launch digest (`MEASUREMENT` of the attestation report) of a guest
//!   launched from an OVMF image, optionally with a kernel, initrd and command line whose hashes
//!   the VMM places in the firmware's hashes page. Checked for equality against the
//!   `sev-snp-measure` reference tool by `tests/tests/measure_cli.rs`.
//! - [`tdx`]: MRTD of a TD launched from a TDVF image (RTMRs are not computed).
//! - [`ovmf`]: the firmware parser both use; hostile images yield typed errors.
//! - [`reference`]: the reference-values document `coffer-kbs` accepts.
//!
//! The library does no I/O: callers pass the firmware bytes and file digests.
#![forbid(unsafe_code)]

pub mod ovmf;
pub mod reference;
pub mod snp;
pub mod tdx;

use sha2::{Digest, Sha256};

/// SHA-256 of everything `reader` yields (kernel and initrd files are hashed streaming).
pub fn sha256_reader(mut reader: impl std::io::Read) -> std::io::Result<[u8; 32]> {
    let mut hasher = Sha256::new();
    std::io::copy(&mut reader, &mut hasher)?;
    Ok(hasher.finalize().into())
}
