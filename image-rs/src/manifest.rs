//! The parts of OCI/Docker manifests, indexes and image configs this crate reads, validated into
//! typed values.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::digest::Digest;
use crate::unpack::quoted;

/// OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker schema 2 manifest media type.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list media type.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Media types accepted when fetching a manifest.
pub const ACCEPTED_MANIFESTS: &[&str] = &[OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];

/// Why a manifest, index or config was refused.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not valid JSON of the expected shape.
    #[error("malformed {what}")]
    Json {
        /// Which document.
        what: &'static str,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// `schemaVersion` is not 2.
    #[error("unsupported schema version {0}")]
    SchemaVersion(u32),
    /// A media type this crate does not handle.
    #[error("unsupported media type \"{}\"", quoted(.0.as_bytes()))]
    MediaType(String),
    /// The index lists no `linux/amd64` image.
    #[error("the image index has no linux/amd64 manifest")]
    NoPlatform,
    /// Too many layers.
    #[error("{count} layers exceed the limit of {limit}")]
    TooManyLayers {
        /// Layers in the manifest.
        count: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The config lists a different number of diff_ids than the manifest has layers.
    #[error("config has {diff_ids} diff_ids for {layers} layers")]
    DiffIdCount {
        /// diff_ids in the config.
        diff_ids: usize,
        /// Layers in the manifest.
        layers: usize,
    },
    /// The config is not for linux/amd64.
    #[error(
        "image is for \"{}/{}\", not linux/amd64",
        quoted(os.as_bytes()),
        quoted(architecture.as_bytes())
    )]
    Platform {
        /// The config's `os`.
        os: String,
        /// The config's `architecture`.
        architecture: String,
    },
}

/// A content descriptor.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content.
    pub media_type: String,
    /// Digest of the referenced content.
    pub digest: Digest,
    /// Size in bytes.
    pub size: u64,
    /// Annotations (ocicrypt keeps wrapped keys here).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Platform (index entries only).
    #[serde(default)]
    pub platform: Option<Platform>,
}

/// Platform of an index entry.
#[derive(Debug, Clone, Deserialize)]
pub struct Platform {
    /// Operating system.
    pub os: String,
    /// CPU architecture.
    pub architecture: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Versioned {
    schema_version: u32,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
}

/// A manifest document: an image manifest or an index.
#[derive(Debug)]
pub enum ManifestDoc {
    /// A single-platform image manifest.
    Image(ImageManifest),
    /// A multi-platform index.
    Index(Vec<Descriptor>),
}

/// An image manifest.
#[derive(Debug, Clone, Deserialize)]
pub struct ImageManifest {
    /// The config blob.
    pub config: Descriptor,
    /// The layers, bottom first.
    pub layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct IndexDoc {
    manifests: Vec<Descriptor>,
}

impl ManifestDoc {
    /// Parses a manifest or index; `media_type` is the registry's Content-Type if known.
    pub fn parse(bytes: &[u8]) -> Result<Self, ManifestError> {
        let json = |source| ManifestError::Json {
            what: "manifest",
            source,
        };
        let versioned: Versioned = serde_json::from_slice(bytes).map_err(json)?;
        if versioned.schema_version != 2 {
            return Err(ManifestError::SchemaVersion(versioned.schema_version));
        }
        let is_index = match versioned.media_type.as_deref() {
            Some(OCI_INDEX | DOCKER_LIST) => true,
            Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
            Some(other) => return Err(ManifestError::MediaType(other.to_owned())),
            None => versioned.manifests.is_some(),
        };
        if is_index {
            let index: IndexDoc = serde_json::from_slice(bytes).map_err(json)?;
            Ok(Self::Index(index.manifests))
        } else {
            Ok(Self::Image(serde_json::from_slice(bytes).map_err(json)?))
        }
    }
}

/// Picks the `linux/amd64` entry of an index.
pub fn select_linux_amd64(entries: &[Descriptor]) -> Result<&Descriptor, ManifestError> {
    entries
        .iter()
        .find(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
                && matches!(d.media_type.as_str(), OCI_MANIFEST | DOCKER_MANIFEST)
        })
        .ok_or(ManifestError::NoPlatform)
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

/// What a layer media type says about its encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerKind {
    /// Compression of the (decrypted) blob.
    pub compression: Compression,
    /// Whether the blob is ocicrypt-encrypted.
    pub encrypted: bool,
}

impl LayerKind {
    /// Classifies a layer media type.
    pub fn of(media_type: &str) -> Result<Self, ManifestError> {
        let (base, encrypted) = match media_type.strip_suffix("+encrypted") {
            Some(base) => (base, true),
            None => (media_type, false),
        };
        let compression = match base {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Compression::None,
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip" => Compression::Gzip,
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Compression::Zstd,
            _ => return Err(ManifestError::MediaType(media_type.to_owned())),
        };
        Ok(Self {
            compression,
            encrypted,
        })
    }
}

/// The parts of an image config this crate checks.
#[derive(Debug, Clone, Deserialize)]
pub struct ImageConfig {
    /// Operating system.
    pub os: String,
    /// CPU architecture.
    pub architecture: String,
    /// The layers' uncompressed digests.
    pub rootfs: RootFs,
}

/// The `rootfs` section of an image config.
#[derive(Debug, Clone, Deserialize)]
pub struct RootFs {
    /// Uncompressed layer digests, bottom first.
    pub diff_ids: Vec<Digest>,
}

impl ImageConfig {
    /// Parses a config and checks it against the manifest's layer count and the platform.
    pub fn parse(bytes: &[u8], layers: usize) -> Result<Self, ManifestError> {
        let config: Self = serde_json::from_slice(bytes).map_err(|source| ManifestError::Json {
            what: "image config",
            source,
        })?;
        if config.os != "linux" || config.architecture != "amd64" {
            return Err(ManifestError::Platform {
                os: config.os,
                architecture: config.architecture,
            });
        }
        if config.rootfs.diff_ids.len() != layers {
            return Err(ManifestError::DiffIdCount {
                diff_ids: config.rootfs.diff_ids.len(),
                layers,
            });
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = vectors_dir!("ocicrypt/src");

    #[test]
    fn parses_vector_manifest_and_config() {
        let m = std::fs::read(format!(
            "{SRC}/blobs/sha256/4d4ff208a9c28dd70701e7ef0380563735c9ad8a7cdb5c2ec6832e8131234312"
        ))
        .unwrap();
        let ManifestDoc::Image(m) = ManifestDoc::parse(&m).unwrap() else {
            panic!("expected an image manifest")
        };
        assert_eq!(m.layers.len(), 1);
        let kind = LayerKind::of(&m.layers[0].media_type).unwrap();
        assert_eq!(kind.compression, Compression::Gzip);
        assert!(!kind.encrypted);
        let c = std::fs::read(format!("{SRC}/blobs/sha256/{}", m.config.digest.hex())).unwrap();
        let config = ImageConfig::parse(&c, 1).unwrap();
        assert_eq!(config.rootfs.diff_ids.len(), 1);
        assert!(matches!(
            ImageConfig::parse(&c, 2),
            Err(ManifestError::DiffIdCount { .. })
        ));
    }

    /// REG-04: the guest's pull reads only the platform and diff IDs of a config. A config
    /// whose run fields are hostile (host-path `Volumes`, labels naming Coffer's and Kata's
    /// annotations, `User: "0:0"`, environment entries with a NUL, a newline or no `=`) parses
    /// to the same value as one without them, even where the fields have types no runtime
    /// would accept: nothing in the guest mounts, runs as or exports what they say (the
    /// process comes from the CreateContainer spec the policy judged).
    #[test]
    fn reg04_run_config_fields_are_not_read() {
        let diff_id = format!("sha256:{}", "a".repeat(64));
        let plain = serde_json::json!({
            "os": "linux",
            "architecture": "amd64",
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        });
        let mut hostile = plain.clone();
        hostile["config"] = serde_json::json!({
            "User": "0:0",
            "Env": ["LD_PRELOAD=/tmp/x.so", "MODE=prod\nLD_PRELOAD=/x", "A=b\u{0}c", "NOEQUALS"],
            "Volumes": {"/etc/shadow": {}, "/host": {}, "../../../../": {}},
            "Labels": {"coffer.dev/allow-logs": "true", "io.katacontainers.config.agent.policy": "x"},
            "Entrypoint": ["/bin/sh"],
        });
        hostile["container_config"] = serde_json::json!({"Volumes": "not even an object"});
        let parse = |v: &serde_json::Value| {
            let config = ImageConfig::parse(&serde_json::to_vec(v).unwrap(), 1).unwrap();
            (config.os, config.architecture, config.rootfs.diff_ids)
        };
        assert_eq!(parse(&hostile), parse(&plain));
    }

    #[test]
    fn media_types() {
        assert!(
            LayerKind::of("application/vnd.oci.image.layer.v1.tar+zstd+encrypted")
                .unwrap()
                .encrypted
        );
        assert!(matches!(
            LayerKind::of("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"),
            Err(ManifestError::MediaType(_))
        ));
        assert!(matches!(
            ManifestDoc::parse(br#"{"schemaVersion":1}"#),
            Err(ManifestError::SchemaVersion(1))
        ));
    }

    #[test]
    fn errors_quote_a_short_escaped_prefix_of_registry_strings() {
        let hostile = "\x1b[2J".repeat(100_000);
        for err in [
            ManifestError::MediaType(hostile.clone()),
            ManifestError::Platform {
                os: hostile.clone(),
                architecture: hostile.clone(),
            },
        ] {
            let text = err.to_string();
            assert!(text.len() < 1024, "{} bytes", text.len());
            assert!(
                !text.contains('\x1b') && text.contains("\\x1b[2J"),
                "{text}"
            );
        }
    }
}
