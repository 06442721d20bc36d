//! containers-policy.json admission against a real registry holding the cosign signature vector
//! (pushed by skopeo under its `sha256-<digest>.sig` tag). A refused image downloads nothing past
//! the manifest.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use std::path::Path;
use std::sync::Arc;

use coffer_image::{
    BlobStore, Policy, PolicyError, PullError, PullOptions, RegistriesConfig, pull,
};
use common::{TestRegistry, VECTORS, put_blob, skopeo_copy};

const SIGS: &str = vectors_dir!("signatures/cosign-style");
const DIGEST_HEX: &str = "4d4ff208a9c28dd70701e7ef0380563735c9ad8a7cdb5c2ec6832e8131234312";
const CONFIG: &str = "sha256:4719207419e448d0224d72513750e87c0b391572d2024e76506bc36e39bf8bc0";
const LAYER: &str = "sha256:d4e77de63d8cce3d4f2bb34bca3f21b5e919a2c7a40700b6671aee759bbd5f98";

/// An OCI layout holding the cosign signature artifact exactly as the vector has it.
fn signature_layout(dir: &Path) {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    for entry in std::fs::read_dir(SIGS).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("blob-sha256-") {
            put_blob(dir, &std::fs::read(&path).unwrap());
        }
    }
    let manifest = std::fs::read(format!("{SIGS}/sig-manifest.json")).unwrap();
    let (digest, size) = put_blob(dir, &manifest);
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": size,
        "annotations": {"org.opencontainers.image.ref.name": "sig"}}]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

fn policy(json: &str) -> Arc<Policy> {
    Arc::new(Policy::from_json(json, Path::new(SIGS)).unwrap())
}

fn sigstore(host: &str, key: &str, identity: &str) -> Arc<Policy> {
    policy(&format!(
        r#"{{"default":[{{"type":"reject"}}],"transports":{{"docker":{{"{host}/peers/hello":[
            {{"type":"sigstoreSigned","keyPath":"{key}","signedIdentity":{identity}}}]}}}}}}"#
    ))
}

#[tokio::test]
async fn cosign_policy_admits_only_correctly_signed_images() {
    let registry = TestRegistry::start();
    let host = registry.host();
    let work = tempfile::tempdir().unwrap();
    skopeo_copy(
        &format!("oci:{VECTORS}/src:latest"),
        &format!("docker://{host}/peers/hello:signed"),
        &[],
    );
    skopeo_copy(
        &format!("oci:{VECTORS}/src:latest"),
        &format!("docker://{host}/unsigned/hello:v1"),
        &[],
    );
    let sig = work.path().join("sig-layout");
    signature_layout(&sig);
    skopeo_copy(
        &format!("oci:{}:sig", sig.display()),
        &format!("docker://{host}/peers/hello:sha256-{DIGEST_HEX}.sig"),
        &["--preserve-digests"],
    );
    let store = BlobStore::open(&work.path().join("store")).unwrap();
    let mut registries = RegistriesConfig::default();
    registries.add_insecure(&host).unwrap();
    let options = |policy: Arc<Policy>| {
        let mut o = PullOptions::new(Arc::clone(&store)).with_registries(registries.clone());
        o.policy = Some(policy);
        o
    };
    // The vector was signed for 127.0.0.1:5000; the test registry has another port.
    let signed_repo =
        r#"{"type":"exactRepository","dockerRepository":"127.0.0.1:5000/peers/hello"}"#;

    let refusals: Vec<(&str, String, Arc<Policy>)> = vec![
        (
            "signature by another key",
            format!("{host}/peers/hello:signed"),
            sigstore(&host, "other.pub", signed_repo),
        ),
        (
            "signature for another reference",
            format!("{host}/peers/hello:signed"),
            sigstore(
                &host,
                "cosign.pub",
                r#"{"type":"exactRepository","dockerRepository":"127.0.0.1:5000/peers/other"}"#,
            ),
        ),
        (
            "default identity: signed name is not this registry's",
            format!("{host}/peers/hello:signed"),
            sigstore(&host, "cosign.pub", r#"{"type":"matchRepoDigestOrExact"}"#),
        ),
        (
            "unsigned image under a signature policy",
            format!("{host}/unsigned/hello:v1"),
            policy(&format!(
                r#"{{"default":[{{"type":"reject"}}],"transports":{{"docker":{{"{host}":[
                    {{"type":"sigstoreSigned","keyPath":"cosign.pub"}}]}}}}}}"#
            )),
        ),
        (
            "default reject",
            format!("{host}/peers/hello:signed"),
            policy(r#"{"default":[{"type":"reject"}]}"#),
        ),
    ];
    for (i, (what, reference, policy)) in refusals.into_iter().enumerate() {
        let dest = work.path().join(format!("refused-{i}"));
        let err = pull(&reference, &dest, &options(policy)).await.unwrap_err();
        assert!(
            matches!(err, PullError::Policy(PolicyError::Rejected { .. })),
            "{what}: {err:?}"
        );
        assert!(!dest.exists(), "{what}");
    }
    // Keyless sigstore is not implemented: refused, never skipped.
    let keyless = policy(r#"{"default":[{"type":"sigstoreSigned","fulcio":{}}]}"#);
    let err = pull(
        &format!("{host}/peers/hello:signed"),
        &work.path().join("keyless"),
        &options(keyless),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, PullError::Policy(PolicyError::Unsupported(_))),
        "{err:?}"
    );
    // Nothing past the manifest was downloaded for any refused image.
    assert_eq!(store.fetches(), 0);
    assert_eq!(registry.blob_gets(CONFIG), 0);
    assert_eq!(registry.blob_gets(LAYER), 0);

    let (probes, blobs) = (registry.api_root_gets(), registry.blob_requests());
    let pulled = pull(
        &format!("{host}/peers/hello:signed"),
        &work.path().join("admitted"),
        &options(sigstore(&host, "cosign.pub", signed_repo)),
    )
    .await
    .unwrap();
    assert_eq!(
        pulled.manifest_digest.to_string(),
        format!("sha256:{DIGEST_HEX}")
    );
    // No request probes `/v2/` first: a registry without auth answers each one directly (REG-07:
    // credentials are sought only on a 401).
    let blobs = registry.blob_requests() - blobs;
    assert!(blobs >= 3, "config, layer and signature: {blobs}");
    assert_eq!(registry.api_root_gets() - probes, 0, "{}", registry.log());
    let anything = policy(r#"{"default":[{"type":"insecureAcceptAnything"}]}"#);
    pull(
        &format!("{host}/unsigned/hello:v1"),
        &work.path().join("anything"),
        &options(anything),
    )
    .await
    .unwrap();
}

const GPG: &str = vectors_dir!("signatures/skopeo-gpg");

fn signed_by(host: &str, repo: &str, keyring: &Path, identity: &str) -> Arc<Policy> {
    policy(&format!(
        r#"{{"default":[{{"type":"reject"}}],"transports":{{"docker":{{"{host}/{repo}":[
            {{"type":"signedBy","keyType":"GPGKeys","keyPath":{keyring:?},"signedIdentity":{identity}}}]}}}}}}"#
    ))
}

/// A throw-away GnuPG home with one signing key; the agent is stopped on drop.
struct GpgHome {
    dir: tempfile::TempDir,
    fingerprint: String,
}

impl GpgHome {
    fn new() -> Self {
        common::require_tool("gpg", "gnupg");
        let dir = tempfile::tempdir().unwrap();
        let gpg = |args: &[&str]| {
            let out = std::process::Command::new("gpg")
                .env("GNUPGHOME", dir.path())
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "gpg {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        gpg(&[
            "--batch",
            "--passphrase",
            "",
            "--quick-gen-key",
            "Coffer Test <test@coffer.invalid>",
            "rsa2048",
            "sign",
            "never",
        ]);
        let listing = gpg(&["--list-keys", "--with-colons"]);
        let fingerprint = listing
            .lines()
            .find(|l| l.starts_with("fpr:"))
            .unwrap()
            .split(':')
            .nth(9)
            .unwrap()
            .to_owned();
        let exported = std::process::Command::new("gpg")
            .env("GNUPGHOME", dir.path())
            .args(["--export", &fingerprint])
            .output()
            .unwrap();
        std::fs::write(dir.path().join("pubkey.gpg"), exported.stdout).unwrap();
        Self { dir, fingerprint }
    }

    fn keyring(&self) -> std::path::PathBuf {
        self.dir.path().join("pubkey.gpg")
    }
}

impl Drop for GpgHome {
    fn drop(&mut self) {
        let _ = std::process::Command::new("gpgconf")
            .env("GNUPGHOME", self.dir.path())
            .args(["--kill", "gpg-agent"])
            .output();
    }
}

#[tokio::test]
async fn gpg_simple_signing_from_lookaside_storage() {
    let registry = TestRegistry::start();
    let host = registry.host();
    let work = tempfile::tempdir().unwrap();
    let store = BlobStore::open(&work.path().join("store")).unwrap();

    // skopeo --sign-by with a fresh key, signatures written to a lookaside directory.
    let gpg = GpgHome::new();
    let staging = work.path().join("lookaside");
    let registries_d = work.path().join("registries.d");
    std::fs::create_dir_all(&registries_d).unwrap();
    std::fs::write(
        registries_d.join("default.yaml"),
        format!(
            "default-docker:\n  lookaside-staging: file://{}\n",
            staging.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new("skopeo")
        .env("GNUPGHOME", gpg.dir.path())
        .args([
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            "--registries.d",
            registries_d.to_str().unwrap(),
            "--sign-by",
            &gpg.fingerprint,
        ])
        .arg(format!("oci:{VECTORS}/src:latest"))
        .arg(format!("docker://{host}/signed/app:v1"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo --sign-by: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    skopeo_copy(
        &format!("oci:{VECTORS}/src:latest"),
        &format!("docker://{host}/unsigned/app:v1"),
        &[],
    );
    // The vector's signature (made for 127.0.0.1:5000/peers/hello:signed) for the same image.
    skopeo_copy(
        &format!("oci:{VECTORS}/src:latest"),
        &format!("docker://{host}/peers/hello:signed"),
        &[],
    );

    let registries = |lookaside: &Path| {
        RegistriesConfig::from_toml(&format!(
            "[[registry]]\nhost = \"{host}\"\ninsecure = true\nlookaside = \"file://{}\"\n",
            lookaside.display()
        ))
        .unwrap()
    };
    let options = |lookaside: &Path, policy: Arc<Policy>| {
        let mut o = PullOptions::new(Arc::clone(&store)).with_registries(registries(lookaside));
        o.policy = Some(policy);
        o
    };
    let default_identity = r#"{"type":"matchRepoDigestOrExact"}"#;
    let vector_identity =
        r#"{"type":"exactReference","dockerReference":"127.0.0.1:5000/peers/hello:signed"}"#;
    let vector_lookaside = Path::new(GPG).join("lookaside");
    let vector_keyring = Path::new(GPG).join("pubkey.gpg");

    let refusals: Vec<(&str, String, &Path, Arc<Policy>)> = vec![
        (
            "signature by another key",
            format!("{host}/signed/app:v1"),
            &staging,
            signed_by(&host, "signed/app", &vector_keyring, default_identity),
        ),
        (
            "signature for another reference",
            format!("{host}/peers/hello:signed"),
            &vector_lookaside,
            signed_by(&host, "peers/hello", &vector_keyring, default_identity),
        ),
        (
            "signature for another reference (explicit)",
            format!("{host}/peers/hello:signed"),
            &vector_lookaside,
            signed_by(
                &host,
                "peers/hello",
                &vector_keyring,
                r#"{"type":"exactReference","dockerReference":"127.0.0.1:5000/peers/hello:other"}"#,
            ),
        ),
        (
            "unsigned image under signedBy",
            format!("{host}/unsigned/app:v1"),
            &staging,
            signed_by(&host, "unsigned/app", &gpg.keyring(), default_identity),
        ),
        (
            "vector signature, wrong keyring",
            format!("{host}/peers/hello:signed"),
            &vector_lookaside,
            signed_by(&host, "peers/hello", &gpg.keyring(), vector_identity),
        ),
    ];
    for (i, (what, reference, lookaside, policy)) in refusals.into_iter().enumerate() {
        let dest = work.path().join(format!("refused-{i}"));
        let err = pull(&reference, &dest, &options(lookaside, policy))
            .await
            .unwrap_err();
        assert!(
            matches!(err, PullError::Policy(PolicyError::Rejected { .. })),
            "{what}: {err:?}"
        );
        assert!(!dest.exists(), "{what}");
    }
    assert_eq!(store.fetches(), 0, "a refused image was downloaded");

    pull(
        &format!("{host}/signed/app:v1"),
        &work.path().join("skopeo-signed"),
        &options(
            &staging,
            signed_by(&host, "signed/app", &gpg.keyring(), default_identity),
        ),
    )
    .await
    .unwrap();
    pull(
        &format!("{host}/peers/hello:signed"),
        &work.path().join("vector-signed"),
        &options(
            &vector_lookaside,
            signed_by(&host, "peers/hello", &vector_keyring, vector_identity),
        ),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_required_policy_that_is_missing_refuses_before_any_request() {
    let work = tempfile::tempdir().unwrap();
    let store = BlobStore::open(&work.path().join("store")).unwrap();
    let mut options = PullOptions::new(store);
    options.require_policy = true;
    // Port 9 (discard): nothing is contacted, the refusal comes first.
    let err = pull(
        "127.0.0.1:9/any/image:v1",
        &work.path().join("root"),
        &options,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, PullError::Policy(PolicyError::Missing)),
        "{err:?}"
    );
    assert!(!work.path().join("root").exists());
}
