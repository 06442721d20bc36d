//! The pod's workload identity, inside the guest: an X.509 SVID the key broker issues to this
//! attested guest for a key generated here (the SPIFFE ID comes from the measured initdata's
//! `workload-identity` entry, never from the host). A container asks for it with a mount
//! `{"type": "identity", "source": "spiffe", "destination": DIR}` (no options), which the policy
//! admits or not like any other mount (the confidential policy: only when the container's entry
//! lists that exact mount). The agent replaces it by a read-only bind of a tmpfs private to the
//! container holding [`CERT_FILE`] (leaf and chain), [`KEY_FILE`] (the key, mode 0400, owned by
//! the container's user) and [`BUNDLE_FILE`] (the trust bundle), and rewrites the three files in
//! every such container before the certificate expires (at two thirds of its validity), each
//! through a rename so a reader never sees a partial file.
//!
//! The key never leaves the guest and is never logged; the host sees only the mount request.

use std::collections::HashMap;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime};

use coffer_attestation::identity::guest::{BUNDLE_FILE, CERT_FILE, KEY_FILE, WorkloadIdentity};
use coffer_attestation::kbs::client::KbsClient;
use coffer_policies::Mount;
use tokio::sync::Mutex;

use crate::error::AgentError;

/// The mount type of the workload identity.
pub const IDENTITY_MOUNT_TYPE: &str = "identity";
/// The only identity kind: an X.509 SPIFFE SVID.
pub const IDENTITY_SOURCE: &str = "spiffe";
/// Largest identity file accepted (chains are a few KiB).
const MAX_FILE_BYTES: usize = 256 * 1024;
/// Shortest wait before retrying a failed renewal.
const RETRY_MIN: Duration = Duration::from_secs(5);
/// Longest wait before retrying a failed renewal.
const RETRY_MAX: Duration = Duration::from_secs(60);

/// The directory, inside a container's bundle, of the tmpfs holding its identity files.
pub fn files_dir(bundle: &Path) -> PathBuf {
    bundle.join("identity")
}

fn is_identity_mount(m: &Mount) -> bool {
    m.kind == IDENTITY_MOUNT_TYPE
}

/// Checks the form of a spec's identity mount, before the policy decides on the request: at most
/// one, source [`IDENTITY_SOURCE`], an absolute destination other than `/`, no options (the agent
/// alone decides how it is mounted).
pub fn validate_mounts(mounts: &[Mount]) -> Result<(), AgentError> {
    let mounts: Vec<&Mount> = mounts.iter().filter(|m| is_identity_mount(m)).collect();
    if mounts.len() > 1 {
        return Err(AgentError::InvalidArgument(format!(
            "{} identity mounts; at most one",
            mounts.len()
        )));
    }
    for m in mounts {
        let destination = Path::new(&m.destination);
        let invalid = |why: &str| {
            AgentError::InvalidArgument(format!("identity mount {}: {why}", destination.display()))
        };
        if !destination.is_absolute() || destination.parent().is_none() {
            return Err(invalid(
                "the destination must be an absolute directory path",
            ));
        }
        if m.source != IDENTITY_SOURCE {
            return Err(invalid("the source must be \"spiffe\""));
        }
        if !m.options.is_empty() {
            return Err(invalid(
                "options are not allowed (it is always mounted read-only, nosuid, nodev, noexec)",
            ));
        }
    }
    Ok(())
}

/// A container directory the identity files are kept in, and who owns the key there.
#[derive(Debug, Clone, Copy)]
struct Holder {
    uid: u32,
    gid: u32,
}

/// The sandbox's workload identity: obtained from the broker on the first container that asks,
/// shared by every container whose mount the policy admitted, renewed in the background.
#[derive(Debug)]
pub struct Identities {
    broker: Option<Arc<KbsClient>>,
    current: Mutex<Option<Arc<WorkloadIdentity>>>,
    /// Container identity directories, by path. Held while files are written, so a directory is
    /// never written after [`Identities::release`] returned.
    holders: StdMutex<HashMap<PathBuf, Holder>>,
    renewal: OnceLock<tokio::task::JoinHandle<()>>,
}

impl Identities {
    /// Identities issued by `broker` (`None`: initdata names no broker or the guest cannot
    /// attest, and every identity mount fails).
    pub fn new(broker: Option<Arc<KbsClient>>) -> Arc<Self> {
        Arc::new(Self {
            broker,
            current: Mutex::new(None),
            holders: StdMutex::new(HashMap::new()),
            renewal: OnceLock::new(),
        })
    }

    /// Replaces the identity mount of `mounts` (if any) by a read-only bind of a tmpfs at `dir`
    /// holding the identity files, the key owned by `uid`/`gid`. On error the caller calls
    /// [`Identities::release`] and removes the bundle.
    pub async fn resolve(
        self: &Arc<Self>,
        container_id: &str,
        mounts: &mut [Mount],
        (uid, gid): (u32, u32),
        dir: &Path,
    ) -> Result<(), AgentError> {
        let Some(at) = mounts.iter().position(is_identity_mount) else {
            return Ok(());
        };
        let failed = |reason: String| AgentError::Identity {
            container_id: container_id.to_owned(),
            reason,
        };
        // Held until the directory is registered, so a renewal cannot slip in between and leave
        // this container with the older identity.
        let mut current = self.current.lock().await;
        let identity = match current.as_ref() {
            Some(identity) if !identity.needs_renewal(SystemTime::now()) => Arc::clone(identity),
            _ => {
                let identity = Arc::new(self.obtain().await.map_err(failed)?);
                *current = Some(Arc::clone(&identity));
                identity
            }
        };
        mount_tmpfs(dir, uid, gid)?;
        let holder = Holder { uid, gid };
        {
            let mut holders = self.holders.lock().unwrap_or_else(PoisonError::into_inner);
            write_files(dir, &identity, holder)?;
            holders.insert(dir.to_path_buf(), holder);
        }
        drop(current);
        mounts[at] = Mount {
            destination: std::mem::take(&mut mounts[at].destination),
            kind: "bind".into(),
            source: dir.display().to_string(),
            options: ["rbind", "ro", "nosuid", "nodev", "noexec"]
                .map(String::from)
                .to_vec(),
        };
        tracing::info!(
            container_id,
            spiffe_id = identity.spiffe_id(),
            "workload identity mounted"
        );
        self.start_renewal();
        Ok(())
    }

    /// Forgets `dir` (no more renewals are written there) and unmounts its tmpfs, if any.
    pub fn release(&self, dir: &Path) {
        let mut holders = self.holders.lock().unwrap_or_else(PoisonError::into_inner);
        holders.remove(dir);
        crate::secrets::unmount_private_tmpfs(dir);
    }

    async fn obtain(&self) -> Result<WorkloadIdentity, String> {
        let broker = self.broker.as_ref().ok_or_else(|| {
            "no key broker: initdata names none, or this guest cannot attest".to_owned()
        })?;
        let identity = WorkloadIdentity::obtain(broker, None)
            .await
            .map_err(|e| crate::rootfs::error_chain(&e))?;
        for pem in [
            &identity.bundle().cert_chain_pem,
            &identity.bundle().ca_bundle_pem,
        ] {
            if pem.len() > MAX_FILE_BYTES {
                return Err(format!(
                    "the broker's certificate chain is over {MAX_FILE_BYTES} bytes"
                ));
            }
        }
        Ok(identity)
    }

    fn start_renewal(self: &Arc<Self>) {
        self.renewal
            .get_or_init(|| tokio::spawn(renew(Arc::downgrade(self))));
    }

    /// Obtains the next identity and writes it into every holder. `Err` keeps the old one.
    async fn renew_once(&self) -> Result<(), String> {
        let mut current = self.current.lock().await;
        let identity = Arc::new(self.obtain().await?);
        {
            let holders = self.holders.lock().unwrap_or_else(PoisonError::into_inner);
            for (dir, holder) in holders.iter() {
                if let Err(err) = write_files(dir, &identity, *holder) {
                    tracing::warn!(path = %dir.display(), %err, "writing the renewed identity");
                }
            }
        }
        tracing::info!(
            spiffe_id = identity.spiffe_id(),
            "workload identity renewed"
        );
        *current = Some(identity);
        Ok(())
    }

    async fn renew_at(&self) -> Option<SystemTime> {
        self.current.lock().await.as_ref().map(|i| i.renew_at())
    }
}

/// Renews the identity at two thirds of its validity, retrying failures with a growing pause,
/// for as long as the agent lives.
async fn renew(identities: std::sync::Weak<Identities>) {
    let mut retry = RETRY_MIN;
    loop {
        let Some(this) = identities.upgrade() else {
            return;
        };
        let Some(at) = this.renew_at().await else {
            return;
        };
        drop(this);
        let wait = at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        tokio::time::sleep(wait).await;
        let Some(this) = identities.upgrade() else {
            return;
        };
        match this.renew_once().await {
            Ok(()) => retry = RETRY_MIN,
            Err(reason) => {
                tracing::warn!(%reason, retry_secs = retry.as_secs(), "renewing the workload identity failed");
                drop(this);
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
}

fn mount_tmpfs(dir: &Path, uid: u32, gid: u32) -> Result<(), AgentError> {
    // Room for two generations of the three files during a rotation.
    let size = 8 * MAX_FILE_BYTES;
    crate::secrets::mount_private_tmpfs(
        dir,
        "coffer-identity",
        &format!("mode=0500,uid={uid},gid={gid},size={size}"),
    )
}

/// Writes the three files, key first and chain last, each renamed into place.
fn write_files(dir: &Path, identity: &WorkloadIdentity, holder: Holder) -> Result<(), AgentError> {
    let bundle = identity.bundle();
    for (name, bytes, mode) in [
        (KEY_FILE, identity.private_key_pem().as_bytes(), 0o400),
        (BUNDLE_FILE, bundle.ca_bundle_pem.as_bytes(), 0o444),
        (CERT_FILE, bundle.cert_chain_pem.as_bytes(), 0o444),
    ] {
        let path = dir.join(name);
        let tmp = dir.join(format!(".{name}.new"));
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(|e| AgentError::io("create", &tmp, e))?;
        file.write_all(bytes)
            .map_err(|e| AgentError::io("write", &tmp, e))?;
        std::os::unix::fs::fchown(&file, Some(holder.uid), Some(holder.gid))
            .map_err(|e| AgentError::io("chown", &tmp, e))?;
        drop(file);
        std::fs::rename(&tmp, &path).map_err(|e| AgentError::io("rename", &path, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec_with_mounts(mounts: &[serde_json::Value]) -> Vec<Mount> {
        crate::spec::mounts_from_json(mounts)
    }

    #[test]
    fn identity_mounts_are_checked_before_the_policy() {
        let ok = json!({"destination": "/var/run/secrets/spiffe", "type": "identity", "source": "spiffe"});
        validate_mounts(&spec_with_mounts(std::slice::from_ref(&ok))).unwrap();
        validate_mounts(&spec_with_mounts(&[
            json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        ]))
        .unwrap();
        for (bad, why) in [
            (
                json!({"destination": "/id", "type": "identity", "source": "/etc"}),
                "source must be",
            ),
            (
                json!({"destination": "/id", "type": "identity"}),
                "source must be",
            ),
            (
                json!({"destination": "id", "type": "identity", "source": "spiffe"}),
                "absolute",
            ),
            (
                json!({"destination": "/", "type": "identity", "source": "spiffe"}),
                "absolute",
            ),
            (
                json!({"destination": "/id", "type": "identity", "source": "spiffe", "options": ["rw"]}),
                "options are not allowed",
            ),
        ] {
            let err = validate_mounts(&spec_with_mounts(&[bad])).unwrap_err();
            assert!(
                matches!(&err, AgentError::InvalidArgument(m) if m.contains(why)),
                "{err}"
            );
        }
        let err = validate_mounts(&spec_with_mounts(&[ok.clone(), ok])).unwrap_err();
        assert!(err.to_string().contains("at most one"), "{err}");
    }

    #[tokio::test]
    async fn identity_needs_a_broker_and_leaves_nothing_mounted() {
        let work = tempfile::tempdir().unwrap();
        let dir = files_dir(work.path());
        let identities = Identities::new(None);
        let mut plain = spec_with_mounts(&[]);
        identities
            .resolve("c", &mut plain, (0, 0), &dir)
            .await
            .unwrap();
        assert!(!dir.exists());
        let mut spec = spec_with_mounts(&[
            json!({"destination": "/var/run/secrets/spiffe", "type": "identity", "source": "spiffe"}),
        ]);
        let err = identities
            .resolve("c", &mut spec, (0, 0), &dir)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, AgentError::Identity { container_id, reason }
                if container_id == "c" && reason.contains("no key broker")),
            "{err}"
        );
        // Nothing was mounted and the spec still asks for the identity (it was not resolved).
        assert!(!dir.exists());
        assert_eq!(spec[0].kind, IDENTITY_MOUNT_TYPE);
        identities.release(&dir);
        assert!(identities.renewal.get().is_none());
    }
}
