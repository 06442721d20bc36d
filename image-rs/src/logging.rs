//! What a process that pulls images may log. DEBUG and TRACE events are logged only from Coffer's
//! own crates, whatever level the operator asks for (`COFFER_LOG`): what dependencies print at
//! those levels is not reviewed, and one prints a secret there — oci-client logs a registry's
//! token response, the bearer token itself, at DEBUG. In the guest the log is the console, which
//! the host reads.

use tracing::{Level, Metadata};

/// Whether an event or span with `metadata` may be logged: INFO and above from anywhere, DEBUG
/// and TRACE only from a `coffer*` target.
pub fn may_log(metadata: &Metadata<'_>) -> bool {
    *metadata.level() <= Level::INFO || metadata.target().starts_with("coffer")
}
