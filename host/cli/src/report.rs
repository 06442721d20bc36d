//! The one line `coffer` prints when a command fails: the error chain with each cause once
//! (`coffer_log::error_line`) and a hint where a common mistake is likely.

use std::io::ErrorKind;

use coffer_attestation::kbs::client::KbsClientError;
use coffer_image::registry::{FailureCause, RegistryError};

/// `err` as one line ([`coffer_log::error_line`]) with a hint where a common mistake is likely.
pub fn one_line(err: &anyhow::Error) -> String {
    let mut line = coffer_log::error_line(err.as_ref());
    if let Some(hint) = hint(err) {
        line.push_str(" (hint: ");
        line.push_str(&hint);
        line.push(')');
    }
    line
}

/// A hint a command attaches to its error where it knows the likely mistake (`err.context(Hint(…))`);
/// printed after the error line, not in it.
#[derive(Debug)]
pub struct Hint(pub String);

impl std::fmt::Display for Hint {
    fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        Ok(()) // an empty message: `coffer_log::error_line` leaves it out
    }
}

/// What the user most likely has to do, for the failures people commonly run into.
fn hint(err: &anyhow::Error) -> Option<String> {
    if let Some(Hint(hint)) = err.downcast_ref::<Hint>() {
        return Some(hint.clone());
    }
    for cause in err.chain() {
        let registry = cause
            .downcast_ref::<RegistryError>()
            .or_else(|| cause.downcast_ref::<Box<RegistryError>>().map(|b| &**b));
        if let Some(registry) = registry
            && let Some(found) = registry.cause()
        {
            let host = registry.host().unwrap_or("HOST");
            return Some(match found {
                FailureCause::Unauthorized => format!(
                    "authentication required: give credentials for {host} with --authfile FILE \
                     or REGISTRY_AUTH_FILE (containers-auth.json), or check the ones given"
                ),
                FailureCause::PlainHttp => {
                    format!("this registry speaks plain HTTP: add --insecure-registry {host}")
                }
            });
        }
        if let Some(KbsClientError::PolicyDenied { .. }) = cause.downcast_ref::<KbsClientError>() {
            return Some(
                "the broker's resource policy refused this evidence; its default policy never \
                 releases to sample evidence (a development broker names a policy admitting it \
                 in [policy] file)"
                    .into(),
            );
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>()
            && io.kind() == ErrorKind::PermissionDenied
            && !nix::unistd::geteuid().is_root()
        {
            return Some(
                "run as root, or point --state-dir (sandboxes) or --store (images) at a \
                 directory you may write"
                    .into(),
            );
        }
    }
    None
}
