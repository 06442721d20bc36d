//! The JSON messages of the KBS protocol, version 0.4.0, exactly as they travel on the wire
//! (field names and shapes as in the `kbs-types` crate and the recorded Trustee exchanges in
//! `tests/vectors/kbs/`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The protocol version this crate speaks (`Request::version`).
pub const PROTOCOL_VERSION: &str = "0.4.0";
/// The session cookie set by `/auth` and presented on `/attest` and `/resource`.
pub const SESSION_COOKIE: &str = "kbs-session-id";
/// Prefix of the `type` URI in every problem JSON ([`ErrorInformation`]).
pub const ERROR_TYPE_PREFIX: &str = "https://github.com/confidential-containers/kbs/errors/";
/// JWE key-management algorithm for EC TEE keys (P-256 or P-521).
pub const ALG_ECDH_ES_A256KW: &str = "ECDH-ES+A256KW";
/// JWE key-management algorithm for RSA TEE keys.
pub const ALG_RSA_OAEP_256: &str = "RSA-OAEP-256";
/// JWE content-encryption algorithm of every resource response.
pub const ENC_A256GCM: &str = "A256GCM";

/// The TEE a client claims in `/auth`. Anything else fails to deserialize (as with Trustee).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tee {
    /// Development-only evidence with no hardware root of trust.
    Sample,
    /// AMD SEV-SNP.
    Snp,
    /// Intel TDX.
    Tdx,
}

impl Tee {
    /// The wire name (`sample`, `snp`, `tdx`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sample => "sample",
            Self::Snp => "snp",
            Self::Tdx => "tdx",
        }
    }
}

impl std::fmt::Display for Tee {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `POST /kbs/v0/auth` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Protocol version, [`PROTOCOL_VERSION`].
    pub version: String,
    /// The TEE the client will attest with.
    pub tee: Tee,
    /// Free-form; Trustee's client sends `{"supported-hash-algorithms": [...]}`, others `{}`.
    #[serde(rename = "extra-params", default)]
    pub extra_params: Value,
}

/// `/auth` reply: the nonce to bind into the evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Challenge {
    /// Base64 (standard alphabet, padded) of 32 random bytes.
    pub nonce: String,
    /// Trustee 0.4.0 sends an empty string here (not an object); kept as raw JSON.
    #[serde(rename = "extra-params", default)]
    pub extra_params: Value,
}

/// The ephemeral TEE public key as a JWK, as in `runtime-data.tee-pubkey`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kty")]
pub enum TeePubKey {
    /// RSA key (`alg` = `RSA-OAEP-256`).
    #[serde(rename = "RSA")]
    Rsa {
        /// Key-management algorithm.
        alg: String,
        /// Modulus, base64url without padding.
        n: String,
        /// Public exponent, base64url without padding.
        e: String,
    },
    /// EC key (`crv` = `P-256` or `P-521`, `alg` = `ECDH-ES+A256KW`).
    #[serde(rename = "EC")]
    Ec {
        /// Curve name.
        crv: String,
        /// Key-management algorithm.
        alg: String,
        /// X coordinate, base64url without padding.
        x: String,
        /// Y coordinate, base64url without padding.
        y: String,
    },
}

impl TeePubKey {
    /// The JWE `alg` the key asks for.
    pub fn alg(&self) -> &str {
        match self {
            Self::Rsa { alg, .. } | Self::Ec { alg, .. } => alg,
        }
    }
}

/// `runtime-data` of `/attest`: what report_data binds (see [`super::binding`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeData {
    /// The nonce from the [`Challenge`], verbatim.
    pub nonce: String,
    /// The ephemeral key resources will be encrypted to.
    #[serde(rename = "tee-pubkey")]
    pub tee_pubkey: TeePubKey,
}

/// Init-data as sent in `/attest` (`init-data`): the raw initdata document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitData {
    /// Encoding of `body`; `toml` is the only one defined.
    pub format: String,
    /// The initdata document, byte for byte as measured.
    pub body: String,
}

/// The composite evidence in `tee-evidence`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompositeEvidence {
    /// The TEE's own evidence (shape depends on the TEE).
    pub primary_evidence: Value,
    /// Evidence of additional devices; a string (Trustee sends `""`). Bound into report_data.
    pub additional_evidence: String,
}

/// `POST /kbs/v0/attest` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attestation {
    /// Initdata, `null` when none.
    #[serde(rename = "init-data")]
    pub init_data: Option<InitData>,
    /// Nonce and TEE key.
    #[serde(rename = "runtime-data")]
    pub runtime_data: RuntimeData,
    /// The evidence.
    #[serde(rename = "tee-evidence")]
    pub tee_evidence: CompositeEvidence,
}

/// `/attest` reply.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestationToken {
    /// The signed attestation token (JWT).
    pub token: String,
}

impl std::fmt::Debug for AttestationToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AttestationToken([REDACTED])")
    }
}

/// A resource reply: a JWE in flattened JSON serialization, without `aad` or unprotected headers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Response {
    /// Base64url of the protected header JSON (`alg`, `enc`, and `epk` for ECDH-ES).
    pub protected: String,
    /// Base64url of the wrapped content-encryption key.
    pub encrypted_key: String,
    /// Base64url of the 96-bit GCM IV.
    pub iv: String,
    /// Base64url of the ciphertext.
    pub ciphertext: String,
    /// Base64url of the 128-bit GCM tag.
    pub tag: String,
}

/// The protected header of a [`Response`]. Unknown members (e.g. `zip`, `crit`) are refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProtectedHeader {
    /// Key-management algorithm.
    pub alg: String,
    /// Content encryption, always [`ENC_A256GCM`].
    pub enc: String,
    /// The sender's ephemeral key (ECDH-ES only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epk: Option<EphemeralKey>,
    /// Agreement PartyUInfo (ECDH-ES), base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apu: Option<String>,
    /// Agreement PartyVInfo (ECDH-ES), base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apv: Option<String>,
    /// Key id, informational.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
}

/// `epk` of an ECDH-ES protected header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EphemeralKey {
    /// Curve.
    pub crv: String,
    /// Key type, `EC`.
    pub kty: String,
    /// X coordinate, base64url.
    pub x: String,
    /// Y coordinate, base64url.
    pub y: String,
}

/// `POST /kbs/v0/identity` body (Coffer's extension of the protocol, see [`crate::identity`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityRequest {
    /// The PKCS#10 CSR: PEM (`-----BEGIN CERTIFICATE REQUEST-----`) or base64 (standard) of DER.
    pub csr: String,
    /// Requested lifetime in seconds; the broker's default when absent. Over the broker's
    /// maximum is refused, not shortened.
    #[serde(
        rename = "lifetime-secs",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub lifetime_secs: Option<u64>,
}

/// `POST /kbs/v0/identity` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityReply {
    /// The leaf certificate, PEM.
    pub certificate: String,
    /// The issuing CA chain, PEM, leaf-most first (the last one is the trust anchor).
    #[serde(rename = "ca-chain")]
    pub ca_chain: String,
    /// The SPIFFE ID in the leaf's SAN.
    #[serde(rename = "spiffe-id")]
    pub spiffe_id: String,
    /// `notBefore`, Unix seconds.
    #[serde(rename = "not-before")]
    pub not_before: u64,
    /// `notAfter`, Unix seconds.
    #[serde(rename = "not-after")]
    pub not_after: u64,
}

/// The problem JSON sent (with HTTP 401) on every failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInformation {
    /// `https://github.com/confidential-containers/kbs/errors/<Kind>`.
    #[serde(rename = "type")]
    pub error_type: String,
    /// Human-readable detail (never internals).
    pub detail: String,
}

impl ErrorInformation {
    /// The error kind: the last path segment of `type` (`PolicyDeny`, `TokenNotFound`, ...).
    pub fn kind(&self) -> &str {
        self.error_type
            .strip_prefix(ERROR_TYPE_PREFIX)
            .unwrap_or(&self.error_type)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tee_pubkey_round_trips_both_kinds() {
        let ec: TeePubKey = serde_json::from_str(
            r#"{"kty":"EC","crv":"P-256","alg":"ECDH-ES+A256KW","x":"AA","y":"AQ"}"#,
        )
        .unwrap();
        assert!(matches!(ec, TeePubKey::Ec { .. }));
        let rsa: TeePubKey =
            serde_json::from_str(r#"{"kty":"RSA","alg":"RSA-OAEP-256","n":"AQ","e":"AQAB"}"#)
                .unwrap();
        assert_eq!(rsa.alg(), ALG_RSA_OAEP_256);
        let back = serde_json::to_value(&rsa).unwrap();
        assert_eq!(back["kty"], "RSA");
    }

    #[test]
    fn unknown_tee_is_refused() {
        let r: Result<Request, _> =
            serde_json::from_str(r#"{"version":"0.4.0","tee":"nonsense","extra-params":{}}"#);
        assert!(r.is_err());
    }

    #[test]
    fn token_debug_is_redacted() {
        let t = AttestationToken {
            token: "secret.jwt.value".into(),
        };
        assert!(!format!("{t:?}").contains("secret"));
    }
}
