//! Guest-side OCI image pull, verification, ocicrypt decryption and safe unpacking.
//!
//! Model: everything that comes from a registry is hostile until checked.
//! [`pull`] resolves a reference (Docker defaults, mirrors, `@sha256:` pinning, index →
//! `linux/amd64`), fetches the bounded manifest and config, obtains layer keys for encrypted
//! layers (JWE recipients or a [`KeyUnwrapper`]) before any download, then downloads layers in
//! parallel into a content-addressed [`BlobStore`] (digest and size verified before a blob is
//! published; one download per blob for concurrent pulls) and applies them in order, each while
//! it downloads, into a staging root: blob digest, ocicrypt HMAC, decompression bounds, diff_id
//! and the safe [`unpack`] rules are all checked before the staging root is renamed to the
//! destination. A failed pull leaves no destination and no unverified blob.
//!
//! [`encrypt_image`] makes ocicrypt-encrypted images (JWE recipients and/or a broker-held
//! key-encryption key) from an OCI layout or a registry image into a layout or a registry.

#![forbid(unsafe_code)]

// `vectors_dir!`: the repository's test vectors, for the unit tests (the integration tests' helper).
#[cfg(test)]
#[macro_use]
#[path = "../tests/common/vectors.rs"]
mod test_vectors;

pub mod auth;
pub mod config;
mod decode;
pub mod decrypt;
pub mod digest;
pub mod encrypt_image;
pub mod gpg;
mod http;
pub mod logging;
pub mod manifest;
pub mod policy;
mod pull;
pub mod registry;
pub mod sign;
pub mod store;
mod tar_headers;
pub mod unpack;

/// Peak resident memory of a `coffer image pull` process, whatever its layers contain, not
/// counting the decompressor's window (gzip: 32 KiB; zstd: at most 128 MiB, `window_log_max(27)`).
/// It covers the process itself (runtime, TLS, HTTP client), the downloads in flight
/// (`Limits::max_parallel_downloads`), the bounded chunk queues between the decrypt, decompress
/// and unpack stages (`DECODE_QUEUE` × `DECODE_CHUNK` each), the copy buffer, and the tar headers
/// the unpacker holds ([`MAX_PAX_BYTES`], [`MAX_LONG_NAME_BYTES`], read only after their size was
/// checked). Measured by the `image_cli` suite's hostile-layer cases (peak RSS of the real CLI,
/// debug build: about 45–50 MiB; without the header limits a PAX header inflated to the layer's
/// ratio limit took the same pull past 150 MiB).
///
/// Besides the decompressor's window, one more term grows with the policy, not with the bytes of
/// a layer: the per-layer sets of created paths and their parents (whiteout and hard-link
/// bookkeeping) hold at most `2 × UnpackPolicy::max_entries` paths of at most
/// [`unpack::TRACKED_PATH_BYTES`] each (96 MiB at the default 1,000,000 entries).
pub const PULL_MEMORY_BOUND: u64 = 96 << 20;

pub use config::{ConfigError, Credential, Credentials, Limits, RegistriesConfig};
pub use decrypt::{
    BrokerKeyUnwrapper, DecryptError, Decryptor, EncryptError, EncryptedManifest, KeyUnwrapper,
    LocalKek, PrivateKey, PublicKey, Recipients, WrappedKey, encrypt_layout,
};
pub use digest::Digest;
pub use encrypt_image::{EncryptImageError, EncryptOptions, ImageLocation, encrypt_image};
pub use policy::{Policy, PolicyError};
pub use pull::{
    ProgressEvent, ProgressSink, PullError, PullOptions, PulledImage, PulledLayer, pull,
};
pub use sign::{CosignKey, SignError, SignOptions, Signed, sign_image};
pub use store::BlobStore;
pub use tar_headers::{HeaderRefusal, MAX_LONG_NAME_BYTES, MAX_PAX_BYTES};
pub use unpack::{DevicePolicy, UnpackError, UnpackPolicy};
