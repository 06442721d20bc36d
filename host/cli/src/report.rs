//! The one line `coffer` prints when a command fails: the error chain with each cause once
//! (`coffer_log::error_line`) and a hint where a common mistake is likely.

use std::io::ErrorKind;

use coffer_attestation::kbs::client::KbsClientError;
use coffer_image::registry::{FailureCause, RegistryError};

/// `err` as one line ([`coffer_log::error_line`]) with a hint where a common mistake is likely.
pub fn one_line(err: &anyhow::Error) -> String {
    let mut line = coffer_log::error_line_with(err.as_ref(), in_words);
    if let Some(hint) = hint(err) {
        line.push_str(" (hint: ");
        line.push_str(&hint);
        line.push(')');
    }
    line
}

/// Dependencies' errors whose `Display` is a `Debug` dump, in words: rustls' certificate
/// refusals (inside the `io::Error`s the TLS stack wraps them in).
fn in_words(cause: &(dyn std::error::Error + 'static)) -> Option<String> {
    use rustls::CertificateError;
    let mut e = cause;
    while let Some(inner) = e
        .downcast_ref::<std::io::Error>()
        .and_then(std::io::Error::get_ref)
    {
        e = inner;
    }
    let rustls::Error::InvalidCertificate(refusal) = e.downcast_ref::<rustls::Error>()? else {
        return None;
    };
    let why = match refusal {
        CertificateError::UnknownIssuer => {
            "it is issued by a CA not given (pass the CA that issued it, e.g. --kbs-ca PEM)".into()
        }
        CertificateError::Other(other) => match other.0.downcast_ref::<webpki::Error>() {
            Some(webpki::Error::CaUsedAsEndEntity) => "the server presents a CA certificate as \
                its own; it must present a certificate that CA issued for it"
                .into(),
            Some(webpki::Error::EndEntityUsedAsCa) => {
                "its chain uses a server certificate as a CA".into()
            }
            Some(other) => format!("{other}"),
            None => format!("{}", other.0),
        },
        other => format!("{other}"),
    };
    Some(format!("invalid peer certificate: {why}"))
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
