//! `encrypt_layout`: both key forms (JWE recipients and a broker-held KEK), decrypted by this
//! crate and by skopeo (a real third-party ocicrypt implementation), and pulled from a registry.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use coffer_image::decrypt::{ANNOTATION_JWE, ANNOTATION_PROVIDER};
use coffer_image::manifest::{ImageConfig, ImageManifest, ManifestDoc};
use coffer_image::{
    BlobStore, DecryptError, Decryptor, Digest, LocalKek, PrivateKey, PublicKey, PullOptions,
    Recipients, RegistriesConfig, encrypt_layout, pull,
};
use common::{TestRegistry, VECTORS, assert_same_tree, run, skopeo_copy};

const KID: &str = "kbs:///default/key/1";

fn kek() -> LocalKek {
    LocalKek::default()
        .with_key_file(
            KID,
            Path::new(&format!("{VECTORS}/keys/kek-default-key-1.bin")),
        )
        .unwrap()
}

fn manifest(layout: &Path) -> ImageManifest {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let digest = Digest::parse(index["manifests"][0]["digest"].as_str().unwrap()).unwrap();
    let bytes = std::fs::read(layout.join("blobs/sha256").join(digest.hex())).unwrap();
    match ManifestDoc::parse(&bytes).unwrap() {
        ManifestDoc::Image(m) => m,
        ManifestDoc::Index(_) => panic!("index"),
    }
}

fn blob(layout: &Path, digest: &Digest) -> Vec<u8> {
    std::fs::read(layout.join("blobs/sha256").join(digest.hex())).unwrap()
}

fn src_diff_ids() -> Vec<Digest> {
    let src = Path::new(VECTORS).join("src");
    let m = manifest(&src);
    ImageConfig::parse(&blob(&src, &m.config.digest), m.layers.len())
        .unwrap()
        .rootfs
        .diff_ids
}

async fn diff_ids(layout: &Path, decryptor: &Decryptor) -> Result<Vec<Digest>, DecryptError> {
    let mut out = Vec::new();
    for layer in manifest(layout).layers {
        let key = decryptor.layer_key(&layer.annotations).await?;
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(key.decrypting_reader(&blob(layout, &layer.digest)[..]))
            .read_to_end(&mut tar)
            .unwrap();
        out.push(Digest::of(&tar));
    }
    Ok(out)
}

fn encrypt_src(dest: &Path) -> Digest {
    let recipients = Recipients {
        public_keys: vec![
            PublicKey::from_file(Path::new(&format!("{VECTORS}/keys/rsa-pub.pem"))).unwrap(),
            PublicKey::from_file(Path::new(&format!("{VECTORS}/keys/ec-pub.pem"))).unwrap(),
        ],
        kek: Some((KID.to_owned(), kek())),
    };
    encrypt_layout(
        &Path::new(VECTORS).join("src"),
        "latest",
        dest,
        "enc",
        &recipients,
    )
    .unwrap()
}

fn private(name: &str) -> PrivateKey {
    PrivateKey::from_file(Path::new(&format!("{VECTORS}/keys/{name}"))).unwrap()
}

#[tokio::test]
async fn both_key_forms_decrypt_to_the_source_layers() {
    let work = tempfile::tempdir().unwrap();
    let enc = work.path().join("enc");
    encrypt_src(&enc);
    let m = manifest(&enc);
    assert!(m.layers.iter().all(|l| l.media_type.ends_with("+encrypted")
        && l.annotations.contains_key(ANNOTATION_JWE)
        && l.annotations.contains_key(ANNOTATION_PROVIDER)));
    for decryptor in [
        Decryptor::default().with_private_key(private("rsa-priv.pem")),
        Decryptor::default().with_private_key(private("ec-priv.pem")),
        Decryptor::default().with_unwrapper(Arc::new(kek())),
    ] {
        assert_eq!(diff_ids(&enc, &decryptor).await.unwrap(), src_diff_ids());
    }
    let err = diff_ids(
        &enc,
        &Decryptor::default().with_private_key(private("pkcs7-key.pem")),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, DecryptError::NoMatchingKey), "{err:?}");
}

#[test]
fn skopeo_decrypts_what_this_crate_encrypts() {
    let work = tempfile::tempdir().unwrap();
    let enc = work.path().join("enc");
    encrypt_src(&enc);
    let src_layer = manifest(&Path::new(VECTORS).join("src")).layers[0]
        .digest
        .clone();
    // skopeo 1.9.3 (ocicrypt) ignores SEC1 `EC PRIVATE KEY` files ("missing private key"), so
    // hand it the same EC key as PKCS#8.
    let ec_pkcs8 = work.path().join("ec-pkcs8.pem");
    run(
        "openssl",
        "openssl",
        &[
            "pkcs8",
            "-topk8",
            "-nocrypt",
            "-in",
            &format!("{VECTORS}/keys/ec-priv.pem"),
            "-out",
            ec_pkcs8.to_str().unwrap(),
        ],
    );
    let rsa_key = format!("{VECTORS}/keys/rsa-priv.pem");
    for key in [rsa_key.as_str(), ec_pkcs8.to_str().unwrap()] {
        let dec = work.path().join(format!(
            "dec-{}",
            Path::new(key).file_name().unwrap().to_string_lossy()
        ));
        run(
            "skopeo",
            "skopeo",
            &[
                "copy",
                "--quiet",
                "--decryption-key",
                key,
                &format!("oci:{}:enc", enc.display()),
                &format!("oci:{}:dec", dec.display()),
            ],
        );
        let m = manifest(&dec);
        assert!(!m.layers[0].media_type.ends_with("+encrypted"));
        assert_eq!(m.layers[0].digest, src_layer, "skopeo with {key}");
    }
    let out = std::process::Command::new("skopeo")
        .args([
            "copy",
            "--decryption-key",
            &format!("{VECTORS}/keys/pkcs7-key.pem"),
            &format!("oci:{}:enc", enc.display()),
            &format!("oci:{}:wrong", work.path().join("wrong").display()),
        ])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "skopeo decrypted with a key that is no recipient"
    );
}

#[tokio::test]
async fn broker_wrapped_image_pulls_from_a_registry() {
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let enc = work.path().join("enc");
    encrypt_src(&enc);
    let host = registry.host();
    skopeo_copy(
        &format!("oci:{}:enc", enc.display()),
        &format!("docker://{host}/kbs/app:enc"),
        &[],
    );
    skopeo_copy(
        &format!("oci:{VECTORS}/src:latest"),
        &format!("docker://{host}/kbs/app:plain"),
        &[],
    );
    let store = BlobStore::open(&work.path().join("store")).unwrap();
    let mut registries = RegistriesConfig::default();
    registries.add_insecure(&host).unwrap();
    let mut options = PullOptions::new(store).with_registries(registries);
    pull(
        &format!("{host}/kbs/app:plain"),
        &work.path().join("plain"),
        &options,
    )
    .await
    .unwrap();
    options.decryptor = Decryptor::default().with_unwrapper(Arc::new(kek()));
    let pulled = pull(
        &format!("{host}/kbs/app:enc"),
        &work.path().join("dec"),
        &options,
    )
    .await
    .unwrap();
    assert!(pulled.layers[0].encrypted);
    assert_same_tree(&work.path().join("dec"), &work.path().join("plain"));
}
