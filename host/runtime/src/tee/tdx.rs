//! Intel TDX launch configuration: the typed settings of the runtime TOML's `[tdx]` table and the
//! QEMU arguments they become.
//!
//! The `tdx-guest` object is written in QEMU's JSON `-object` form because
//! `quote-generation-socket` is a structured `SocketAddress`, which the dotted key=value syntax
//! cannot express. Property names follow QEMU's QAPI `TdxGuestProperties` (QEMU ≥ 10.1).

use std::path::PathBuf;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::TeeError;

/// TD attribute bit 0: off-TD debug (the host can read TD state).
pub const ATTR_DEBUG: u64 = 1;
/// TD attribute bit 28: EPT violations on pending pages are not converted to #VE (Linux TD guests
/// need it set).
pub const ATTR_SEPT_VE_DISABLE: u64 = 1 << 28;

/// Where the host's Quote Generation Service listens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum QgsAddress {
    /// A vsock address (the QGS default is CID 2, port 4050).
    Vsock {
        /// Context id.
        cid: u32,
        /// Port.
        port: u32,
    },
    /// A unix socket path.
    Unix {
        /// Path.
        path: PathBuf,
    },
}

/// `[tdx]`: how TDX guests are launched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TdxConfig {
    /// TDVF (OVMF built with TDX support), loaded with `-bios`.
    /// Default `/usr/share/ovmf/OVMF.inteltdx.fd`.
    pub firmware: PathBuf,
    /// The guest kernel as a bzImage; default: `vmlinuz` next to the guest image.
    pub kernel: Option<PathBuf>,
    /// The Quote Generation Service; without it the guest cannot obtain quotes, so attestation
    /// fails. Default vsock CID 2 port 4050.
    pub quote_generation_socket: Option<QgsAddress>,
    /// TD attribute SEPT_VE_DISABLE. Default on.
    pub sept_ve_disable: bool,
    /// TD attribute DEBUG. Default off; the broker's verifier refuses debug TDs too.
    pub debug: bool,
    /// Base64 MROWNER (48 bytes), if any.
    pub mrowner: Option<String>,
    /// Base64 MROWNERCONFIG (48 bytes), if any.
    pub mrownerconfig: Option<String>,
}

impl Default for TdxConfig {
    fn default() -> Self {
        Self {
            firmware: "/usr/share/ovmf/OVMF.inteltdx.fd".into(),
            kernel: None,
            quote_generation_socket: Some(QgsAddress::Vsock { cid: 2, port: 4050 }),
            sept_ve_disable: true,
            debug: false,
            mrowner: None,
            mrownerconfig: None,
        }
    }
}

impl TdxConfig {
    /// Checks what can be checked without the host.
    pub fn validate(&self) -> Result<(), TeeError> {
        for (name, value) in [
            ("mrowner", &self.mrowner),
            ("mrownerconfig", &self.mrownerconfig),
        ] {
            if let Some(value) = value {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(value)
                    .map_err(|e| TeeError::Config {
                        tee: "tdx",
                        reason: format!("{name} is not base64: {e}"),
                    })?;
                if bytes.len() != 48 {
                    return Err(TeeError::Config {
                        tee: "tdx",
                        reason: format!("{name} decodes to {} bytes, not 48", bytes.len()),
                    });
                }
            }
        }
        Ok(())
    }

    /// The TD attributes value.
    pub fn attributes(&self) -> u64 {
        let mut attrs = 0;
        if self.sept_ve_disable {
            attrs |= ATTR_SEPT_VE_DISABLE;
        }
        if self.debug {
            attrs |= ATTR_DEBUG;
        }
        attrs
    }
}

/// The `tdx-guest` object (JSON form) for a launch whose MRCONFIGID is `mr_config_id`.
pub fn object_arg(config: &TdxConfig, mr_config_id: &[u8; 48]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    // A BTreeMap, not serde_json's Map: its key order depends on a cargo feature another crate
    // may switch on, and the argv must not change with the build.
    let mut map: std::collections::BTreeMap<&str, serde_json::Value> = Default::default();
    map.insert("qom-type", "tdx-guest".into());
    map.insert("id", super::OBJECT_ID.into());
    map.insert("attributes", config.attributes().into());
    map.insert("mrconfigid", b64.encode(mr_config_id).into());
    if let Some(owner) = &config.mrowner {
        map.insert("mrowner", owner.clone().into());
    }
    if let Some(owner_config) = &config.mrownerconfig {
        map.insert("mrownerconfig", owner_config.clone().into());
    }
    if let Some(qgs) = &config.quote_generation_socket {
        // QAPI SocketAddress: vsock cid/port are strings. Keys in sorted order (see above).
        let address = match qgs {
            QgsAddress::Vsock { cid, port } => {
                json!({"cid": cid.to_string(), "port": port.to_string(), "type": "vsock"})
            }
            QgsAddress::Unix { path } => {
                json!({"path": path.display().to_string(), "type": "unix"})
            }
        };
        map.insert("quote-generation-socket", address);
    }
    serde_json::to_string(&map).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_and_owner_fields() {
        let config = TdxConfig::default();
        assert_eq!(config.attributes(), 0x1000_0000);
        assert!(config.validate().is_ok());
        let bad = TdxConfig {
            mrowner: Some("AAAA".into()),
            ..TdxConfig::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("mrowner decodes to 3 bytes")
        );
    }

    #[test]
    fn qgs_config_parses_both_forms() {
        let vsock: TdxConfig =
            toml::from_str("quote_generation_socket = { type = \"vsock\", cid = 2, port = 4050 }")
                .unwrap();
        assert_eq!(
            vsock.quote_generation_socket,
            Some(QgsAddress::Vsock { cid: 2, port: 4050 })
        );
        let unix: TdxConfig = toml::from_str(
            "quote_generation_socket = { type = \"unix\", path = \"/run/qgs.sock\" }",
        )
        .unwrap();
        assert!(matches!(
            unix.quote_generation_socket,
            Some(QgsAddress::Unix { .. })
        ));
        assert!(toml::from_str::<TdxConfig>("bogus = 1").is_err());
    }
}
