//! Layer keys held by the key broker: the [`KeyUnwrapper`] for the
//! `org.opencontainers.image.enc.keys.provider.attestation-agent` annotation whose `kid`
//! (`kbs:///<repo>/<type>/<tag>`) names a broker resource holding the 32-byte key-encryption key.
//!
//! The key-encryption key is fetched through the KBS client — so only after the broker verified
//! this guest's evidence — used once to unwrap, and dropped (zeroized). Nothing is cached here; the
//! client caches the attestation token.

use std::fmt;
use std::sync::Arc;

use coffer_attestation::kbs::client::KbsClient;
use coffer_attestation::kbs::path::ResourcePath;
use futures::future::BoxFuture;
use zeroize::Zeroizing;

use super::{DecryptError, KeyUnwrapper, LocalKek, WrappedKey};

/// The `kid` scheme of broker-held keys.
pub const KBS_KID_PREFIX: &str = "kbs:///";

/// Unwraps layer keys with key-encryption keys released by the broker.
pub struct BrokerKeyUnwrapper {
    client: Arc<KbsClient>,
}

impl fmt::Debug for BrokerKeyUnwrapper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerKeyUnwrapper").finish_non_exhaustive()
    }
}

impl BrokerKeyUnwrapper {
    /// An unwrapper fetching keys through `client`.
    pub fn new(client: Arc<KbsClient>) -> Self {
        Self { client }
    }

    /// The broker resource a `kid` names, or `None` for other schemes.
    pub fn resource_of(kid: &str) -> Option<Result<ResourcePath, DecryptError>> {
        let path = kid.strip_prefix(KBS_KID_PREFIX)?;
        Some(
            path.parse::<ResourcePath>()
                .map_err(|e| DecryptError::Unwrapper(format!("kid {kid:?}: {e}"))),
        )
    }

    async fn unwrap(&self, key: &WrappedKey) -> Result<Zeroizing<Vec<u8>>, DecryptError> {
        let Some(path) = Self::resource_of(&key.kid) else {
            return Err(DecryptError::UnknownKid(key.kid.clone()));
        };
        let resource = self
            .client
            .get_resource(&path?)
            .await
            .map_err(DecryptError::Broker)?;
        let bytes = resource.expose();
        if bytes.len() != 32 {
            return Err(DecryptError::Unwrapper(format!(
                "broker resource for {} is {} bytes, not a 32-byte key-encryption key",
                key.kid,
                bytes.len()
            )));
        }
        let mut kek = Zeroizing::new([0u8; 32]);
        kek.copy_from_slice(bytes);
        LocalKek::default()
            .with_key(key.kid.clone(), kek)
            .unwrap_key(key)
            .await
    }
}

impl KeyUnwrapper for BrokerKeyUnwrapper {
    fn unwrap_key<'a>(
        &'a self,
        key: &'a WrappedKey,
    ) -> BoxFuture<'a, Result<Zeroizing<Vec<u8>>, DecryptError>> {
        Box::pin(self.unwrap(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kid_names_a_resource() {
        let path = BrokerKeyUnwrapper::resource_of("kbs:///default/key/1")
            .unwrap()
            .unwrap();
        assert_eq!(path.to_string(), "default/key/1");
        assert!(BrokerKeyUnwrapper::resource_of("file:///x").is_none());
        assert!(
            BrokerKeyUnwrapper::resource_of("kbs:///../key/1")
                .unwrap()
                .is_err()
        );
    }
}
