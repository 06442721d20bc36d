//! Coffer attestation: verification of confidential-computing evidence.
//!
//! Today this crate verifies **AMD SEV-SNP** evidence ([`snp`]): report parsing, the AMD
//! certificate chain to embedded roots, the report signature, TCB/chip binding and the
//! relying party's policy. The KBS client, the broker and TDX come later (issue #3).
#![forbid(unsafe_code)]

pub mod snp;
