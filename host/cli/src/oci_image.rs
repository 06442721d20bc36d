//! `coffer image pull|inspect|encrypt|sign`: container images through `coffer-image`, the same
//! code the guest uses to pull, verify, decrypt and unpack.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use coffer_attestation::attester::{AttesterKind, attester_for};
use coffer_attestation::kbs::client::{ClientConfig, KbsClient};
use coffer_attestation::kbs::path::ResourcePath;
use coffer_image::manifest::{ImageManifest, LayerKind, ManifestDoc, select_linux_amd64};
use coffer_image::registry::{Registry, Source, parse_reference};
use coffer_image::{
    BlobStore, BrokerKeyUnwrapper, Credentials, Decryptor, EncryptOptions, ImageLocation, LocalKek,
    Policy, PrivateKey, ProgressEvent, PublicKey, PullOptions, Recipients, RegistriesConfig,
    encrypt_image, pull,
};

/// Bound on manifests and configs fetched by `inspect` and `policy gen`.
pub const MAX_DOCUMENT_BYTES: u64 = 4 << 20;

/// Default content-addressed blob store.
const DEFAULT_STORE: &str = "/var/lib/coffer/image-store";

/// Registry settings shared by the subcommands.
#[derive(Debug, Args)]
pub struct RegistryArgs {
    /// Registry configuration (TOML: mirrors, insecure registries, CAs).
    #[arg(long = "registry-config", alias = "registries", value_name = "FILE")]
    registries: Option<PathBuf>,
    /// Reach this registry over plain HTTP (repeatable).
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    insecure: Vec<String>,
    /// Registry credentials, a containers-auth.json as skopeo and podman read it:
    /// `{"auths": {"HOST[:PORT]": {"auth": "base64(user:password)"}}}`.
    #[arg(long, env = "REGISTRY_AUTH_FILE", value_name = "FILE")]
    authfile: Option<PathBuf>,
}

impl RegistryArgs {
    /// The configuration and, when a file was given, its text.
    pub fn load(&self) -> anyhow::Result<(RegistriesConfig, Option<String>)> {
        load_registries(self.registries.as_deref(), &self.insecure)
    }

    /// The credentials of `--authfile` (or `REGISTRY_AUTH_FILE`); none without either.
    pub fn credentials(&self) -> anyhow::Result<Credentials> {
        match &self.authfile {
            Some(path) => Credentials::load(path)
                .with_context(|| format!("registry credentials {}", path.display())),
            None => Ok(Credentials::default()),
        }
    }

    /// The hosts given with `--insecure-registry`.
    pub fn insecure_hosts(&self) -> &[String] {
        &self.insecure
    }
}

/// An image reference as given on the command line: `REF` or skopeo's `docker://REF`.
pub fn image_reference(s: &str) -> Result<String, String> {
    let reference = s.strip_prefix("docker://").unwrap_or(s);
    if reference.is_empty() {
        return Err("an image reference is empty".into());
    }
    Ok(reference.to_owned())
}

/// A registry configuration file (if any) plus hosts to reach over plain HTTP; also returns the
/// file's text.
pub fn load_registries(
    file: Option<&std::path::Path>,
    insecure: &[String],
) -> anyhow::Result<(RegistriesConfig, Option<String>)> {
    let (mut config, text) = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let config = RegistriesConfig::from_toml(&text)
                .with_context(|| format!("registry config {}", path.display()))?;
            (config, Some(text))
        }
        None => (RegistriesConfig::default(), None),
    };
    for host in insecure {
        config
            .add_insecure(host)
            .with_context(|| format!("--insecure-registry {host}"))?;
    }
    Ok((config, text))
}

/// One image's manifest and config as the registry serves them, digests verified.
pub struct FetchedImage {
    /// Digest of the top-level manifest (or index) the reference names.
    pub digest: coffer_image::Digest,
    /// The linux/amd64 image manifest.
    pub manifest: ImageManifest,
    /// The image config JSON.
    pub config: Vec<u8>,
}

/// Fetches `image`'s manifest (linux/amd64 through an index) and config, trying its sources in order.
pub async fn fetch_image(registry: &Registry, image: &str) -> anyhow::Result<FetchedImage> {
    let reference = parse_reference(image)?;
    let mut last = None;
    for source in registry.sources(&reference) {
        match fetch_at(registry, &source, image).await {
            Ok(fetched) => return Ok(fetched),
            Err(err) => last = Some(err),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no registry source")))
}

async fn fetch_at(
    registry: &Registry,
    source: &Source,
    image: &str,
) -> anyhow::Result<FetchedImage> {
    let expected = image
        .split_once('@')
        .map(|(_, d)| d.parse::<coffer_image::Digest>())
        .transpose()
        .context("the reference's digest")?;
    let (bytes, digest) = registry
        .manifest(
            source,
            &source.reference,
            expected.as_ref(),
            MAX_DOCUMENT_BYTES,
        )
        .await?;
    let manifest = match ManifestDoc::parse(&bytes)? {
        ManifestDoc::Image(m) => m,
        ManifestDoc::Index(entries) => {
            let chosen = select_linux_amd64(&entries)?;
            let platform = source
                .reference
                .clone_with_digest(chosen.digest.to_string());
            let (bytes, _) = registry
                .manifest(source, &platform, Some(&chosen.digest), MAX_DOCUMENT_BYTES)
                .await?;
            match ManifestDoc::parse(&bytes)? {
                ManifestDoc::Image(m) => m,
                ManifestDoc::Index(_) => bail!("the linux/amd64 entry is itself an index"),
            }
        }
    };
    let config = registry
        .small_blob(source, &manifest.config, MAX_DOCUMENT_BYTES, "image config")
        .await?;
    Ok(FetchedImage {
        digest,
        manifest,
        config,
    })
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// Image reference, e.g. registry.example/app:1.0, …@sha256:… or docker://….
    #[arg(value_parser = image_reference)]
    reference: String,
    /// Directory to create with the image's root filesystem (must not exist).
    #[arg(long)]
    dest: PathBuf,
    /// Signature policy (containers-policy.json); without it every image is admitted.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Private key (PEM) for JWE-encrypted layers (repeatable).
    #[arg(long = "decryption-key", value_name = "FILE")]
    decryption_keys: Vec<PathBuf>,
    /// Key-encryption key for the broker-held form, as KID=FILE (32 raw bytes; repeatable).
    #[arg(long = "kek", value_name = "KID=FILE")]
    keks: Vec<String>,
    /// Fetch broker-held key-encryption keys (`kbs:///repo/type/tag` kids) from this key broker,
    /// after attesting.
    #[arg(long)]
    kbs_url: Option<String>,
    /// Evidence for the broker: tee (this machine's TEE, an error if none), snp, tdx, or
    /// development-only sample.
    #[arg(long = "kbs-evidence", alias = "kbs-tee", default_value = "tee", value_parser = ["tee", "detect", "snp", "tdx", "sample"], requires = "kbs_url")]
    kbs_tee: String,
    /// PEM CA certificate(s) for the broker's HTTPS certificate.
    #[arg(
        long = "kbs-ca",
        alias = "kbs-cert",
        value_name = "PEM",
        requires = "kbs_url"
    )]
    kbs_cert: Option<PathBuf>,
    /// Registry credentials (an `auth.json`) from this broker resource (repo/type/tag), released
    /// after attestation like the keys.
    #[arg(long, value_name = "REPO/TYPE/TAG", requires = "kbs_url")]
    registry_auth_kbs: Option<String>,
    /// Content-addressed blob store shared by pulls.
    #[arg(long, default_value = DEFAULT_STORE)]
    store: PathBuf,
    /// Cut a download off (manifest, index, config, layer or registry token) when fewer than
    /// 1 KiB of it arrive within SECS seconds, or no answer does (1 to 3600).
    #[arg(long = "stall-timeout", value_name = "SECS", default_value_t = DEFAULT_STALL_SECS, value_parser = clap::value_parser!(u64).range(1..=MAX_STALL_SECS))]
    stall_timeout: u64,
    #[command(flatten)]
    registry: RegistryArgs,
}

/// `--stall-timeout`'s default: `coffer_image::registry::Stall`'s window.
const DEFAULT_STALL_SECS: u64 = 60;

/// Longest `--stall-timeout`: an hour without 1 KiB is a registry that is not serving.
const MAX_STALL_SECS: u64 = 3600;

fn parse_kek(spec: &str) -> anyhow::Result<(String, PathBuf)> {
    let Some((kid, file)) = spec.split_once('=') else {
        bail!("--kek {spec:?}: expected KID=FILE, e.g. kbs:///default/key/1=kek.bin");
    };
    Ok((kid.to_owned(), PathBuf::from(file)))
}

/// Progress output: a bar on a terminal, one line per event otherwise.
struct Progress {
    terminal: bool,
    started: Instant,
    state: Mutex<ProgressState>,
}

#[derive(Default)]
struct ProgressState {
    layers: usize,
    total: u64,
    per_layer: Vec<u64>,
    applied: usize,
}

impl Progress {
    fn event(&self, event: ProgressEvent) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        match event {
            ProgressEvent::Manifest {
                digest,
                layers,
                total_bytes,
            } => {
                state.layers = layers;
                state.total = total_bytes;
                state.per_layer = vec![0; layers];
                eprintln!("manifest {digest}: {layers} layers, {total_bytes} bytes");
            }
            ProgressEvent::Downloading { index, bytes, .. } => {
                if let Some(slot) = state.per_layer.get_mut(index) {
                    *slot = bytes;
                }
                if self.terminal {
                    let done: u64 = state.per_layer.iter().sum();
                    eprint!("\r{}", crate::progress::bar(done, state.total));
                }
            }
            ProgressEvent::Downloaded { index, fetched } => {
                if !self.terminal {
                    let how = if fetched {
                        "downloaded"
                    } else {
                        "already stored"
                    };
                    eprintln!("layer {}/{} {how}", index + 1, state.layers);
                }
            }
            ProgressEvent::Applied { index } => {
                state.applied += 1;
                if !self.terminal {
                    eprintln!("layer {}/{} verified and applied", index + 1, state.layers);
                }
            }
            ProgressEvent::Done => {
                if self.terminal {
                    eprintln!();
                }
                eprintln!(
                    "done: {} layers in {:.2}s",
                    state.applied,
                    self.started.elapsed().as_secs_f64()
                );
            }
        }
    }
}

/// An interrupted pull, as `sandbox run` reports one: a line on stderr and exit status 130 (the
/// pull future is dropped by then, and with it the staging root and temporary blobs).
fn interrupted(reference: &str, signal: &str) -> u8 {
    eprintln!("coffer: pulling {reference}: interrupted by {signal}");
    crate::EXIT_INTERRUPTED
}

pub async fn pull_command(args: PullArgs) -> anyhow::Result<u8> {
    // SIGINT and SIGTERM cancel the pull instead of killing the process, so its guards remove
    // the staging root and temporary blobs (#21).
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("installing the SIGINT handler")?;
    let (registries, _) = args.registry.load()?;
    let mut decryptor = Decryptor::default();
    for path in &args.decryption_keys {
        let key = PrivateKey::from_file(path)
            .with_context(|| format!("decryption key {}", path.display()))?;
        decryptor = decryptor.with_private_key(key);
    }
    if !args.keks.is_empty() {
        let mut kek = LocalKek::default();
        for spec in &args.keks {
            let (kid, file) = parse_kek(spec)?;
            kek = kek
                .with_key_file(kid, &file)
                .with_context(|| format!("--kek {spec}"))?;
        }
        decryptor = decryptor.with_unwrapper(Arc::new(kek));
    }
    let mut credentials = args.registry.credentials()?;
    if let Some(url) = &args.kbs_url {
        let mut config = ClientConfig::new(url.clone());
        if let Some(path) = &args.kbs_cert {
            config.ca_cert_pem =
                Some(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?);
        }
        let kind = match args.kbs_tee.as_str() {
            "snp" => AttesterKind::Snp,
            "tdx" => AttesterKind::Tdx,
            "sample" => AttesterKind::Sample,
            _ => AttesterKind::Detect,
        };
        let attester = attester_for(kind).context("choosing the evidence source")?;
        let client =
            Arc::new(KbsClient::new(config, Arc::from(attester)).context("key broker client")?);
        if let Some(path) = &args.registry_auth_kbs {
            let resource_path: ResourcePath = path
                .parse()
                .with_context(|| format!("--registry-auth-kbs {path}"))?;
            let resource = client
                .get_resource(&resource_path)
                .await
                .with_context(|| format!("fetching registry credentials {path} from {url}"))?;
            let text = std::str::from_utf8(resource.expose())
                .with_context(|| format!("registry credentials {path} are not UTF-8"))?;
            credentials.extend(
                Credentials::from_json(text)
                    .with_context(|| format!("registry credentials {path}"))?,
            );
        }
        decryptor = decryptor.with_unwrapper(Arc::new(BrokerKeyUnwrapper::new(client)));
    }
    std::fs::create_dir_all(&args.store)
        .with_context(|| format!("creating the store {}", args.store.display()))?;
    let store = BlobStore::open(&args.store)
        .with_context(|| format!("opening the store {}", args.store.display()))?;
    let mut options = PullOptions::new(store).with_registries(registries);
    options.decryptor = decryptor;
    options.credentials = credentials;
    options.limits.stall.window = std::time::Duration::from_secs(args.stall_timeout);
    if let Some(path) = &args.policy {
        options.policy =
            Some(Arc::new(Policy::load(path).with_context(|| {
                format!("signature policy {}", path.display())
            })?));
        options.require_policy = true;
    }
    let progress = Arc::new(Progress {
        terminal: std::io::stderr().is_terminal(),
        started: Instant::now(),
        state: Mutex::new(ProgressState::default()),
    });
    let sink = Arc::clone(&progress);
    options.progress = Some(Arc::new(move |event| sink.event(event)));
    // On a signal the pull future is dropped: its downloads are aborted and the staging root
    // goes with the layer being applied (the runtime waits for that before the process exits).
    let image = tokio::select! {
        result = pull(&args.reference, &args.dest, &options) => {
            result.with_context(|| format!("pulling {}", args.reference))?
        }
        _ = sigterm.recv() => return Ok(interrupted(&args.reference, "SIGTERM")),
        _ = sigint.recv() => return Ok(interrupted(&args.reference, "SIGINT")),
    };
    println!(
        "{}@{}: {} layers → {}",
        image.reference,
        image.manifest_digest,
        image.layers.len(),
        image.root.display()
    );
    Ok(0)
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Image reference, e.g. registry.example/app:1.0, …@sha256:… or docker://….
    #[arg(value_parser = image_reference)]
    reference: String,
    #[command(flatten)]
    registry: RegistryArgs,
}

pub async fn inspect_command(args: InspectArgs) -> anyhow::Result<u8> {
    let (registries, _) = args.registry.load()?;
    let registry = Registry::new(registries, args.registry.credentials()?)?;
    let image = fetch_image(&registry, &args.reference)
        .await
        .with_context(|| format!("inspecting {}", args.reference))?;
    let config: serde_json::Value =
        serde_json::from_slice(&image.config).context("the image config is not JSON")?;
    let layers: Vec<serde_json::Value> = image
        .manifest
        .layers
        .iter()
        .map(|layer| {
            let kind = LayerKind::of(&layer.media_type).ok();
            let jwe_recipients = layer
                .annotations
                .get("org.opencontainers.image.enc.keys.jwe")
                .map(|_| true);
            serde_json::json!({
                "digest": layer.digest.to_string(),
                "size": layer.size,
                "media_type": layer.media_type,
                "encrypted": kind.map(|k| k.encrypted),
                "jwe_recipients": jwe_recipients.is_some(),
                "broker_wrapped_key": layer.annotations.contains_key(
                    "org.opencontainers.image.enc.keys.provider.attestation-agent"
                ),
            })
        })
        .collect();
    let out = serde_json::json!({
        "reference": args.reference,
        "digest": image.digest.to_string(),
        "config_digest": image.manifest.config.digest.to_string(),
        "entrypoint": config["config"]["Entrypoint"],
        "cmd": config["config"]["Cmd"],
        "env": config["config"]["Env"],
        "working_dir": config["config"]["WorkingDir"],
        "user": config["config"]["User"],
        "layers": layers,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(0)
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["layout", "from"])))]
#[command(group(clap::ArgGroup::new("destination").required(true).args(["out", "to"])))]
pub struct EncryptArgs {
    /// Source OCI layout directory.
    #[arg(long)]
    layout: Option<PathBuf>,
    /// Source image in a registry, e.g. registry.example/app:1.0 or …@sha256:….
    #[arg(long, value_name = "REF", value_parser = image_reference)]
    from: Option<String>,
    /// Tag of the image in the source layout (`org.opencontainers.image.ref.name`).
    #[arg(long, default_value = "latest", requires = "layout")]
    tag: String,
    /// Destination OCI layout directory (created).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Destination image in a registry (a tag); its manifest is pushed last.
    #[arg(long, value_name = "REF", value_parser = image_reference)]
    to: Option<String>,
    /// Tag in the destination layout (default: the source tag).
    #[arg(long, requires = "out")]
    out_tag: Option<String>,
    /// JWE recipient public key (PEM, RSA or P-256; repeatable).
    #[arg(long = "recipient", value_name = "FILE")]
    recipients: Vec<PathBuf>,
    /// Also wrap the layer keys with a broker-held key-encryption key: KID=FILE (32 raw bytes),
    /// e.g. kbs:///default/key/1=kek.bin.
    #[arg(long, value_name = "KID=FILE")]
    kek: Option<String>,
    /// Content-addressed blob store where a registry source's layers are downloaded and verified.
    #[arg(long, default_value = DEFAULT_STORE)]
    store: PathBuf,
    #[command(flatten)]
    registry: RegistryArgs,
}

pub async fn encrypt_command(args: EncryptArgs) -> anyhow::Result<u8> {
    let mut recipients = Recipients::default();
    for path in &args.recipients {
        recipients.public_keys.push(
            PublicKey::from_file(path).with_context(|| format!("recipient {}", path.display()))?,
        );
    }
    if let Some(spec) = &args.kek {
        let (kid, file) = parse_kek(spec)?;
        let kek = LocalKek::default()
            .with_key_file(kid.clone(), &file)
            .with_context(|| format!("--kek {spec}"))?;
        recipients.kek = Some((kid, kek));
    }
    if recipients.public_keys.is_empty() && recipients.kek.is_none() {
        bail!("give at least one --recipient or --kek");
    }
    let from = match (&args.layout, &args.from) {
        (Some(dir), _) => ImageLocation::Layout {
            dir: dir.clone(),
            tag: args.tag.clone(),
        },
        (None, Some(reference)) => ImageLocation::Registry(reference.clone()),
        (None, None) => bail!("give --layout or --from"),
    };
    let to = match (&args.out, &args.to) {
        (Some(dir), _) => ImageLocation::Layout {
            dir: dir.clone(),
            tag: args.out_tag.clone().unwrap_or_else(|| args.tag.clone()),
        },
        (None, Some(reference)) => ImageLocation::Registry(reference.clone()),
        (None, None) => bail!("give --out or --to"),
    };
    let (registries, _) = args.registry.load()?;
    let credentials = args.registry.credentials()?;
    let mut options = EncryptOptions::default().with_registries(registries);
    options.credentials = credentials;
    if matches!(from, ImageLocation::Registry(_)) {
        std::fs::create_dir_all(&args.store)
            .with_context(|| format!("creating the store {}", args.store.display()))?;
        options.store = Some(
            BlobStore::open(&args.store)
                .with_context(|| format!("opening the store {}", args.store.display()))?,
        );
    }
    let digest = encrypt_image(&from, &to, recipients, &options)
        .await
        .with_context(|| format!("encrypting {from} into {to}"))?;
    println!("{digest}");
    Ok(0)
}

#[derive(Debug, Args)]
pub struct SignArgs {
    /// Image to sign: a tag (resolved to its manifest digest) or …@sha256:….
    #[arg(value_parser = image_reference)]
    reference: String,
    /// ECDSA P-256 private key, unencrypted PEM (PKCS#8 or SEC1), e.g. from `openssl genpkey
    /// -algorithm EC -pkeyopt ec_paramgen_curve:P-256`.
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// Write the matching public key (PEM) here, for a `sigstoreSigned` policy.
    #[arg(long, value_name = "FILE")]
    public_key_out: Option<PathBuf>,
    #[command(flatten)]
    registry: RegistryArgs,
}

/// `coffer image sign`: a cosign key-based signature, pushed as `sha256-<hex>.sig` beside the
/// image; prints the signed reference (pinned by digest).
pub async fn sign_command(args: SignArgs) -> anyhow::Result<u8> {
    let key = coffer_image::CosignKey::from_file(&args.key)
        .with_context(|| format!("--key {}", args.key.display()))?;
    if let Some(out) = &args.public_key_out {
        std::fs::write(
            out,
            key.public_key_pem().context("encoding the public key")?,
        )
        .with_context(|| format!("writing {}", out.display()))?;
    }
    let (registries, _) = args.registry.load()?;
    let credentials = args.registry.credentials()?;
    let options = coffer_image::SignOptions {
        registries,
        credentials,
        ..Default::default()
    };
    let signed = coffer_image::sign_image(&args.reference, &key, &options)
        .await
        .with_context(|| format!("signing {}", args.reference))?;
    eprintln!(
        "coffer: signed {} ({} signature(s) in {})",
        signed.identity, signed.signatures, signed.signature_ref
    );
    println!("{}@{}", signed.identity, signed.digest);
    Ok(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn stall_timeout_default_is_the_library_default() {
        assert_eq!(
            std::time::Duration::from_secs(super::DEFAULT_STALL_SECS),
            coffer_image::registry::Stall::default().window
        );
    }
}
