//! Guest pull: a container's image is pulled, verified, decrypted and unpacked inside the guest
//! (`coffer-image`), configured only from measured initdata — never from the host:
//! - `registries.toml`: mirrors, insecure (plain-HTTP) registries, extra CAs;
//! - `image-policy.json`: the signature policy (containers-policy.json); when present every pull
//!   must satisfy it;
//! - `kbs-url` (+ `kbs-ca.pem`): the key broker that releases layer keys (`kbs:///` key ids) after
//!   attestation with this guest's TEE evidence and the initdata itself.
//!
//! The host names only the image reference (checked by the policy gate first) and may offer
//! registry tunnels (`crate::tunnel`): pipes whose content the guest verifies like any network.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use coffer_attestation::attester::{self, AttesterKind};
use coffer_attestation::kbs::client::{ClientConfig, KbsClient};
use coffer_attestation::kbs::types::InitData;
use coffer_image::{
    BlobStore, BrokerKeyUnwrapper, Decryptor, Policy, PullOptions, PulledImage, RegistriesConfig,
    pull,
};
use coffer_initdata::{Entry, Initdata};

use crate::error::AgentError;
use crate::pull_report::PullReport;

/// Why guest pull could not be configured from initdata (the agent then refuses to start).
#[derive(Debug, thiserror::Error)]
pub enum ImageConfigError {
    /// `registries.toml` is invalid.
    #[error("initdata registries.toml: {0}")]
    Registries(#[source] coffer_image::ConfigError),
    /// `image-policy.json` is invalid.
    #[error("initdata image-policy.json: {0}")]
    Policy(#[source] coffer_image::PolicyError),
    /// A directory could not be created.
    #[error("image directory {path}: {source}")]
    Dir {
        /// Directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The blob store could not be opened.
    #[error("image store: {0}")]
    Store(#[source] coffer_image::store::StoreError),
    /// Initdata asks a TEE guest for development-only sample evidence.
    #[error(
        "initdata kbs-evidence = \"sample\" in a {0} guest: sample evidence is for hosts without a TEE"
    )]
    SampleInTee(&'static str),
}

/// Pulls images for containers, and holds the guest's key-broker client (shared with sealed
/// secrets).
pub struct Images {
    options: PullOptions,
    staging: PathBuf,
    broker: Option<Arc<KbsClient>>,
}

impl std::fmt::Debug for Images {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Images")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Images {
    /// Guest pull configured from `initdata` (defaults without one), with its blob store under
    /// `state_dir`. A broker client is set up only when initdata names a broker and this guest
    /// has TEE evidence to offer; without one, encrypted images fail with a typed "no key" error.
    pub fn from_initdata(
        state_dir: &Path,
        initdata: Option<&Initdata>,
        tee: Option<crate::initdata::Tee>,
    ) -> Result<Self, ImageConfigError> {
        let store_dir = state_dir.join("images").join("store");
        let staging = state_dir.join("images").join("staging");
        for dir in [&store_dir, &staging] {
            std::fs::create_dir_all(dir).map_err(|source| ImageConfigError::Dir {
                path: dir.clone(),
                source,
            })?;
        }
        let store = BlobStore::open(&store_dir).map_err(ImageConfigError::Store)?;
        let get = |entry| initdata.and_then(|i| i.get(entry));
        let registries = match get(Entry::Registries) {
            Some(text) => {
                RegistriesConfig::from_toml(text).map_err(ImageConfigError::Registries)?
            }
            None => RegistriesConfig::default(),
        };
        let mut options = PullOptions::new(store).with_registries(registries);
        if let Some(text) = get(Entry::ImagePolicy) {
            let policy = Policy::from_json(text, state_dir).map_err(ImageConfigError::Policy)?;
            options.policy = Some(Arc::new(policy));
            options.require_policy = true;
        }
        // Sample evidence only when initdata asks for it and there is no TEE; a TEE guest always
        // attests with its hardware.
        let sample = get(Entry::KbsEvidence).map(str::trim) == Some("sample");
        let attester = match (sample, tee) {
            (true, Some(tee)) => return Err(ImageConfigError::SampleInTee(tee.name())),
            (true, None) => AttesterKind::Sample,
            (false, _) => AttesterKind::Detect,
        };
        let broker = get(Entry::KbsUrl)
            .and_then(|url| broker_client(url.trim(), get(Entry::KbsCa), initdata, attester));
        if let Some(client) = &broker {
            options.decryptor = Decryptor::default()
                .with_unwrapper(Arc::new(BrokerKeyUnwrapper::new(Arc::clone(client))));
        }
        Ok(Self {
            options,
            staging,
            broker,
        })
    }

    /// The key-broker client, when initdata names a broker and the guest can attest.
    pub fn broker(&self) -> Option<Arc<KbsClient>> {
        self.broker.clone()
    }

    /// Pulls `reference` into `dest` (which must not exist), telling `report` (when given) the
    /// progress and phase timings. Nothing is left at `dest` on failure.
    pub async fn pull_into(
        &self,
        container_id: &str,
        reference: &str,
        dest: &Path,
        report: Option<&Arc<PullReport>>,
    ) -> Result<PulledImage, AgentError> {
        let mut options = self.options.clone();
        if let Some(report) = report {
            options.progress = Some(report.sink());
            if let Some(client) = &self.broker {
                options.decryptor =
                    Decryptor::default().with_unwrapper(report.timed_broker(Arc::clone(client)));
            }
        }
        // Pull into a private staging directory on the same filesystem, then move it into place.
        let staged = self.staging.join(container_id);
        let _ = std::fs::remove_dir_all(&staged);
        let pulled = match pull(reference, &staged, &options).await {
            Ok(pulled) => pulled,
            Err(err) => {
                let _ = std::fs::remove_dir_all(&staged);
                return Err(AgentError::Rootfs {
                    container_id: container_id.to_owned(),
                    reason: format!("pulling {reference}: {}", crate::rootfs::error_chain(&err)),
                });
            }
        };
        if let Err(e) = std::fs::rename(&pulled.root, dest) {
            let _ = std::fs::remove_dir_all(&staged);
            return Err(AgentError::io("rename", dest, e));
        }
        tracing::info!(
            container_id,
            reference = %pulled.reference,
            manifest = %pulled.manifest_digest,
            layers = pulled.layers.len(),
            "image pulled in the guest"
        );
        Ok(pulled)
    }
}

/// The broker client (attesting with `kind` evidence), or `None` when this guest cannot attest.
fn broker_client(
    url: &str,
    ca: Option<&str>,
    initdata: Option<&Initdata>,
    kind: AttesterKind,
) -> Option<Arc<KbsClient>> {
    if kind == AttesterKind::Sample {
        tracing::warn!("initdata selects development-only sample evidence for the key broker");
    }
    // Sample evidence stands in for the hardware field that binds the initdata digest (SNP
    // HOSTDATA, TDX MRCONFIGID), so the broker can act on the initdata (the workload identity).
    let attester = match (kind, initdata) {
        (AttesterKind::Sample, Some(init)) => Ok(Box::new(
            attester::SampleAttester::with_init_data_digest(init.digest().value().to_vec()),
        ) as Box<dyn attester::Attester>),
        _ => attester::attester_for(kind),
    };
    let attester = match attester {
        Ok(attester) => attester,
        Err(err) => {
            tracing::warn!(%err, "initdata names a key broker but this guest has no TEE evidence; encrypted images and sealed secrets will fail");
            return None;
        }
    };
    let mut config = ClientConfig::new(url.to_owned());
    config.ca_cert_pem = ca.map(|pem| pem.as_bytes().to_vec());
    config.init_data = initdata.map(|i| InitData {
        format: "toml".into(),
        body: String::from_utf8_lossy(i.raw()).into_owned(),
    });
    match KbsClient::new(config, Arc::from(attester)) {
        Ok(client) => Some(Arc::new(client)),
        Err(err) => {
            tracing::warn!(%err, "key broker client not usable; encrypted images and sealed secrets will fail");
            None
        }
    }
}
