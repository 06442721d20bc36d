//! Sealed secrets, resolved inside the guest only after the policy admitted the container, from
//! the key broker (released to this guest's attested evidence). The host sends and sees only the
//! reference, in one of two forms:
//!
//! - an environment value `sealed.kbs:///<repo>/<type>/<tag>`, replaced by the resource's text;
//! - a mount `{"type": "sealed", "source": "kbs:///<repo>/<type>/<tag>", "destination": PATH}`
//!   (no options), replaced by a read-only bind of a file holding the resource's bytes. The file
//!   lives on a tmpfs private to the container (never on a disk), owned by the container's user,
//!   mode 0400.
//!
//! Which references a container may name is the policy's decision (the confidential policy admits
//! a reference only when the container's entry lists it under `secrets`, and a sealed mount only
//! when the entry lists that exact mount), so a container gets exactly the secrets its entry names.
//!
//! Secret values are never logged and never returned to the host.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use coffer_attestation::kbs::client::{KbsClient, Resource};
use coffer_attestation::kbs::path::ResourcePath;
use coffer_policies::{Mount, Process};

use crate::error::AgentError;

/// The prefix of a sealed environment value.
pub const SEALED_PREFIX: &str = "sealed.";
/// The scheme of a broker resource reference.
pub const KBS_SCHEME: &str = "kbs:///";
/// Largest secret accepted into an environment variable.
pub const MAX_SECRET_BYTES: usize = 64 * 1024;
/// The mount type of a sealed file.
pub const SEALED_MOUNT_TYPE: &str = "sealed";
/// Largest secret accepted into a sealed file.
pub const MAX_SECRET_FILE_BYTES: usize = 1024 * 1024;
/// Most sealed mounts one container may have.
pub const MAX_SEALED_MOUNTS: usize = 64;

/// The directory, inside a container's bundle, of the tmpfs holding its sealed files.
pub fn files_dir(bundle: &Path) -> PathBuf {
    bundle.join("secrets")
}

fn is_sealed_mount(m: &Mount) -> bool {
    m.kind == SEALED_MOUNT_TYPE
}

/// The broker resource path of a `kbs:///<repo>/<type>/<tag>` reference.
fn resource_path(reference: &str) -> Result<ResourcePath, String> {
    reference
        .strip_prefix(KBS_SCHEME)
        .ok_or_else(|| format!("not a {KBS_SCHEME}<repo>/<type>/<tag> reference"))?
        .parse()
        .map_err(|e| format!("{e}"))
}

/// Checks the form of a spec's sealed mounts, before the policy decides on the request: a
/// `kbs:///` source, an absolute destination other than `/`, no options (the agent alone decides
/// how the file is mounted), and at most [`MAX_SEALED_MOUNTS`].
pub fn validate_mounts(mounts: &[Mount]) -> Result<(), AgentError> {
    let sealed: Vec<&Mount> = mounts.iter().filter(|m| is_sealed_mount(m)).collect();
    if sealed.len() > MAX_SEALED_MOUNTS {
        return Err(AgentError::InvalidArgument(format!(
            "{} sealed mounts; at most {MAX_SEALED_MOUNTS}",
            sealed.len()
        )));
    }
    for m in sealed {
        let destination = Path::new(&m.destination);
        let invalid = |why: String| {
            AgentError::InvalidArgument(format!("sealed mount {}: {why}", destination.display()))
        };
        if !destination.is_absolute() || destination.parent().is_none() {
            return Err(invalid(
                "the destination must be an absolute file path".into(),
            ));
        }
        if m.source.is_empty() {
            return Err(invalid("no source".into()));
        }
        resource_path(&m.source).map_err(invalid)?;
        if !m.options.is_empty() {
            return Err(invalid(
                "options are not allowed (it is always mounted read-only, nosuid, nodev, noexec)"
                    .into(),
            ));
        }
    }
    Ok(())
}

/// Fetches one sealed reference's resource from the broker.
async fn fetch(
    container_id: &str,
    reference: &str,
    broker: Option<&Arc<KbsClient>>,
) -> Result<Resource, AgentError> {
    let failed = |reason: String| AgentError::Secret {
        container_id: container_id.to_owned(),
        reference: reference.to_owned(),
        reason,
    };
    let path = resource_path(reference).map_err(failed)?;
    let client = broker.ok_or_else(|| {
        failed("no key broker: initdata names none, or this guest cannot attest".into())
    })?;
    client
        .get_resource(&path)
        .await
        .map_err(|e| failed(crate::rootfs::error_chain(&e)))
}

/// The broker resource a sealed value names, if `value` is sealed.
pub fn sealed_reference(value: &str) -> Option<&str> {
    value.strip_prefix(SEALED_PREFIX)
}

/// Replaces every sealed environment value of `process` with its secret.
pub async fn resolve_env(
    container_id: &str,
    process: &mut Process,
    broker: Option<&Arc<KbsClient>>,
) -> Result<(), AgentError> {
    if !process.env.iter().any(|var| {
        var.split_once('=')
            .is_some_and(|(_, value)| sealed_reference(value).is_some())
    }) {
        return Ok(());
    }
    let env = std::mem::take(&mut process.env);
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
        let secret = fetch(container_id, reference, broker).await?;
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
    process.env = resolved;
    tracing::info!(container_id, secrets = count, "sealed secrets resolved");
    Ok(())
}

/// Replaces every sealed mount of `mounts` by a read-only bind of a file holding its secret, on a
/// tmpfs mounted at `dir` (created here, private to the container), owned by `uid`/`gid`. On
/// error the caller removes the bundle after [`release_files`].
pub async fn resolve_files(
    container_id: &str,
    mounts: &mut Vec<Mount>,
    (uid, gid): (u32, u32),
    broker: Option<&Arc<KbsClient>>,
    dir: &Path,
) -> Result<(), AgentError> {
    if !mounts.iter().any(is_sealed_mount) {
        return Ok(());
    }
    mount_tmpfs(dir)?;
    let mut resolved = Vec::with_capacity(mounts.len());
    let mut count = 0usize;
    for m in std::mem::take(mounts) {
        if !is_sealed_mount(&m) {
            resolved.push(m);
            continue;
        }
        let reference = m.source.clone();
        let secret = fetch(container_id, &reference, broker).await?;
        if secret.expose().len() > MAX_SECRET_FILE_BYTES {
            return Err(AgentError::Secret {
                container_id: container_id.to_owned(),
                reference,
                reason: format!("the secret is over {MAX_SECRET_FILE_BYTES} bytes"),
            });
        }
        let file = dir.join(count.to_string());
        write_secret_file(&file, secret.expose(), uid, gid)?;
        resolved.push(Mount {
            destination: m.destination,
            kind: "bind".into(),
            source: file.display().to_string(),
            options: ["bind", "ro", "nosuid", "nodev", "noexec"]
                .map(String::from)
                .to_vec(),
        });
        count += 1;
    }
    *mounts = resolved;
    tracing::info!(container_id, files = count, "sealed files resolved");
    Ok(())
}

/// Unmounts a container's sealed-file tmpfs, if it has one (its files go with it).
pub fn release_files(dir: &Path) {
    unmount_private_tmpfs(dir);
}

fn mount_tmpfs(dir: &Path) -> Result<(), AgentError> {
    let size = MAX_SEALED_MOUNTS * MAX_SECRET_FILE_BYTES;
    mount_private_tmpfs(dir, "coffer-secrets", &format!("mode=0700,size={size}"))
}

/// Mounts a tmpfs at `dir` (created if missing), nosuid, nodev, noexec, with tmpfs `options`:
/// the never-on-disk home of one container's secrets.
pub(crate) fn mount_private_tmpfs(
    dir: &Path,
    source: &str,
    options: &str,
) -> Result<(), AgentError> {
    use nix::mount::MsFlags;
    std::fs::create_dir_all(dir).map_err(|e| AgentError::io("create", dir, e))?;
    nix::mount::mount(
        Some(source),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(options),
    )
    .map_err(|e| AgentError::io("mount tmpfs", dir, e.into()))
}

/// Unmounts what [`mount_private_tmpfs`] mounted at `dir`; nothing mounted there is fine.
pub(crate) fn unmount_private_tmpfs(dir: &Path) {
    match nix::mount::umount2(dir, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => {}
        Err(err) => tracing::warn!(path = %dir.display(), %err, "unmounting a secrets tmpfs"),
    }
}

fn write_secret_file(path: &Path, bytes: &[u8], uid: u32, gid: u32) -> Result<(), AgentError> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(path)
        .map_err(|e| AgentError::io("create", path, e))?;
    file.write_all(bytes)
        .map_err(|e| AgentError::io("write", path, e))?;
    std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
        .map_err(|e| AgentError::io("chown", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_with_env(env: &[&str]) -> Process {
        Process {
            env: env.iter().map(|s| (*s).to_owned()).collect(),
            ..Process::default()
        }
    }

    #[tokio::test]
    async fn plain_env_is_untouched_and_sealed_needs_a_broker() {
        let mut spec = spec_with_env(&["A=b", "C=sealed-not"]);
        resolve_env("c", &mut spec, None).await.unwrap();
        assert_eq!(spec.env, ["A=b", "C=sealed-not"]);
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

    fn spec_with_mounts(mounts: &[serde_json::Value]) -> Vec<Mount> {
        crate::spec::mounts_from_json(mounts)
    }

    #[test]
    fn sealed_mounts_are_checked_before_the_policy() {
        use serde_json::json;
        let ok = json!({"destination": "/run/secrets/db", "type": "sealed", "source": "kbs:///default/secret/db"});
        validate_mounts(&spec_with_mounts(std::slice::from_ref(&ok))).unwrap();
        // Other mounts are not this module's business.
        validate_mounts(&spec_with_mounts(&[
            json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid"]}),
        ]))
        .unwrap();
        for (bad, why) in [
            (
                json!({"destination": "/run/secrets/db", "type": "sealed", "source": "/etc/shadow"}),
                "kbs:///",
            ),
            (
                json!({"destination": "/run/secrets/db", "type": "sealed", "source": "kbs:///two/parts"}),
                "sealed mount /run/secrets/db",
            ),
            (
                json!({"destination": "/run/secrets/db", "type": "sealed"}),
                "no source",
            ),
            (
                json!({"destination": "relative", "type": "sealed", "source": "kbs:///a/b/c"}),
                "absolute",
            ),
            (
                json!({"destination": "/", "type": "sealed", "source": "kbs:///a/b/c"}),
                "absolute",
            ),
            (
                json!({"destination": "/s", "type": "sealed", "source": "kbs:///a/b/c", "options": ["rw"]}),
                "options are not allowed",
            ),
        ] {
            let err = validate_mounts(&spec_with_mounts(&[bad])).unwrap_err();
            assert!(
                matches!(&err, AgentError::InvalidArgument(m) if m.contains(why)),
                "{err}"
            );
        }
        let many = vec![ok; MAX_SEALED_MOUNTS + 1];
        assert!(matches!(
            validate_mounts(&spec_with_mounts(&many)),
            Err(AgentError::InvalidArgument(_))
        ));
    }

    #[tokio::test]
    async fn sealed_files_need_a_broker_and_leave_nothing_mounted() {
        let work = tempfile::tempdir().unwrap();
        let dir = files_dir(work.path());
        // No sealed mount: nothing is mounted or created.
        let mut plain = spec_with_mounts(&[]);
        resolve_files("c", &mut plain, (0, 0), None, &dir)
            .await
            .unwrap();
        assert!(!dir.exists());
        let mut spec = spec_with_mounts(&[serde_json::json!(
            {"destination": "/run/secrets/db", "type": "sealed", "source": "kbs:///default/secret/db"}
        )]);
        let err = resolve_files("c", &mut spec, (0, 0), None, &dir)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, AgentError::Secret { reference, .. } if reference == "kbs:///default/secret/db"),
            "{err}"
        );
        assert!(err.to_string().contains("no key broker"), "{err}");
        release_files(&dir);
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(&dir.display().to_string()), "{mounts}");
        // Releasing what was never mounted is harmless.
        release_files(&dir);
    }
}
