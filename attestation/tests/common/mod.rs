//! Where the workspace's test vectors live: `tests/vectors/` in this repository (provenance and
//! expected results in its README). Shared by the integration tests and the bench.

use std::path::PathBuf;

/// `tests/vectors/` of the repository (`snp/`, `tdx/`, `kbs/`, `ocicrypt/`, `signatures/`).
pub fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/vectors")
}
