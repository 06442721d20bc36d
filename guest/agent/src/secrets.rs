//! Sealed secrets: an environment value `sealed.kbs:///<repo>/<type>/<tag>` is replaced, inside
//! the guest and only after the policy admitted the container, by that resource from the key
//! broker (released to this guest's attested evidence). The host sends and sees only the
//! reference. Which references a container may name is the policy's decision (the confidential
//! policy admits a reference only when the container's entry lists it under `secrets`), so a
//! container gets exactly the secrets its entry names.
//!
//! Secret values are never logged and never returned to the host.

use std::sync::Arc;

use coffer_attestation::kbs::client::KbsClient;
use coffer_attestation::kbs::path::ResourcePath;
use oci_spec::runtime::Spec;

use crate::error::AgentError;

/// The prefix of a sealed environment value.
pub const SEALED_PREFIX: &str = "sealed.";
/// The scheme of a broker resource reference.
pub const KBS_SCHEME: &str = "kbs:///";
/// Largest secret accepted into an environment variable.
pub const MAX_SECRET_BYTES: usize = 64 * 1024;

/// The broker resource a sealed value names, if `value` is sealed.
pub fn sealed_reference(value: &str) -> Option<&str> {
    value.strip_prefix(SEALED_PREFIX)
}

/// Replaces every sealed environment value of `spec`'s process with its secret.
pub async fn resolve_env(
    container_id: &str,
    spec: &mut Spec,
    broker: Option<&Arc<KbsClient>>,
) -> Result<(), AgentError> {
    let Some(process) = spec.process_mut() else {
        return Ok(());
    };
    let Some(env) = process.env().clone() else {
        return Ok(());
    };
    let failed = |reference: &str, reason: String| AgentError::Secret {
        container_id: container_id.to_owned(),
        reference: reference.to_owned(),
        reason,
    };
    let mut resolved = Vec::with_capacity(env.len());
    let mut count = 0;
    for var in env {
        let Some((name, value)) = var.split_once('=') else {
            resolved.push(var);
            continue;
        };
        let Some(reference) = sealed_reference(value) else {
            resolved.push(var);
            continue;
        };
        let path: ResourcePath = reference
            .strip_prefix(KBS_SCHEME)
            .ok_or_else(|| {
                failed(
                    reference,
                    format!("not a {KBS_SCHEME}<repo>/<type>/<tag> reference"),
                )
            })?
            .parse()
            .map_err(|e| failed(reference, format!("{e}")))?;
        let client = broker.ok_or_else(|| {
            failed(
                reference,
                "no key broker: initdata names none, or this guest cannot attest".into(),
            )
        })?;
        let secret = client
            .get_resource(&path)
            .await
            .map_err(|e| failed(reference, crate::rootfs::error_chain(&e)))?;
        let text = std::str::from_utf8(secret.expose())
            .map_err(|_| failed(reference, "the secret is not UTF-8 text".into()))?;
        if text.len() > MAX_SECRET_BYTES || text.contains('\0') {
            return Err(failed(
                reference,
                format!(
                    "the secret is not an environment value (NUL or over {MAX_SECRET_BYTES} bytes)"
                ),
            ));
        }
        resolved.push(format!("{name}={text}"));
        count += 1;
    }
    if count > 0 {
        process.set_env(Some(resolved));
        tracing::info!(container_id, secrets = count, "sealed secrets resolved");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_with_env(env: &[&str]) -> Spec {
        let mut spec = Spec::default();
        let mut process = oci_spec::runtime::Process::default();
        process.set_env(Some(env.iter().map(|s| (*s).to_owned()).collect()));
        spec.set_process(Some(process));
        spec
    }

    #[tokio::test]
    async fn plain_env_is_untouched_and_sealed_needs_a_broker() {
        let mut spec = spec_with_env(&["A=b", "C=sealed-not"]);
        resolve_env("c", &mut spec, None).await.unwrap();
        assert_eq!(
            spec.process().as_ref().unwrap().env().as_ref().unwrap(),
            &["A=b", "C=sealed-not"]
        );
        let mut sealed = spec_with_env(&["A=b", "PW=sealed.kbs:///default/secret/pw"]);
        let err = resolve_env("c", &mut sealed, None).await.unwrap_err();
        assert!(err.to_string().contains("no key broker"), "{err}");
        for bad in ["sealed.http://x/a/b/c", "sealed.kbs:///only/two"] {
            let mut spec = spec_with_env(&[&format!("X={bad}")]);
            assert!(matches!(
                resolve_env("c", &mut spec, None).await,
                Err(AgentError::Secret { .. })
            ));
        }
    }
}
