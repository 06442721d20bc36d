//! ocicrypt decryption against the skopeo-made vectors in tests/vectors/ocicrypt.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
#[path = "common/vectors.rs"]
mod vectors;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use coffer_image::decrypt::{ANNOTATION_JWE, ANNOTATION_PROVIDER, ANNOTATION_PUBOPTS};
use coffer_image::manifest::{ImageConfig, ManifestDoc};
use coffer_image::{DecryptError, Decryptor, Digest, LocalKek, PrivateKey};
use zeroize::Zeroizing;

const VECTORS: &str = vectors_dir!("ocicrypt");

struct Layout {
    dir: String,
    manifest: coffer_image::manifest::ImageManifest,
}

fn layout(name: &str) -> Layout {
    let dir = format!("{VECTORS}/{name}");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("{dir}/index.json")).unwrap()).unwrap();
    let digest = Digest::parse(index["manifests"][0]["digest"].as_str().unwrap()).unwrap();
    let bytes = std::fs::read(format!("{dir}/blobs/sha256/{}", digest.hex())).unwrap();
    assert_eq!(Digest::of(&bytes), digest);
    let ManifestDoc::Image(manifest) = ManifestDoc::parse(&bytes).unwrap() else {
        panic!("index in layout")
    };
    Layout { dir, manifest }
}

fn blob(layout: &Layout, digest: &Digest) -> Vec<u8> {
    std::fs::read(format!("{}/blobs/sha256/{}", layout.dir, digest.hex())).unwrap()
}

fn src_diff_ids() -> Vec<Digest> {
    let src = layout("src");
    let config = blob(&src, &src.manifest.config.digest);
    ImageConfig::parse(&config, src.manifest.layers.len())
        .unwrap()
        .rootfs
        .diff_ids
}

fn key(name: &str) -> PrivateKey {
    PrivateKey::from_file(Path::new(&format!("{VECTORS}/keys/{name}"))).unwrap()
}

/// Decrypts every layer of `layout` with `decryptor` and returns the diff_ids.
async fn decrypted_diff_ids(
    layout: &Layout,
    decryptor: &Decryptor,
) -> Result<Vec<Digest>, DecryptError> {
    let mut out = Vec::new();
    for layer in &layout.manifest.layers {
        let key = decryptor.layer_key(&layer.annotations).await?;
        let ciphertext = blob(layout, &layer.digest);
        let plain = key.decrypting_reader(&ciphertext[..]);
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(plain)
            .read_to_end(&mut tar)
            .unwrap();
        out.push(Digest::of(&tar));
    }
    Ok(out)
}

#[tokio::test]
async fn rsa_oaep_sha1_jwe_layers_decrypt_to_the_plain_layers() {
    let enc = layout("enc-rsa");
    assert!(enc.manifest.layers[0].media_type.ends_with("+encrypted"));
    let decryptor = Decryptor::default().with_private_key(key("rsa-priv.pem"));
    assert_eq!(
        decrypted_diff_ids(&enc, &decryptor).await.unwrap(),
        src_diff_ids()
    );
}

#[tokio::test]
async fn ecdh_es_a256kw_jwe_layers_decrypt_to_the_plain_layers() {
    let enc = layout("enc-ec");
    let decryptor = Decryptor::default().with_private_key(key("ec-priv.pem"));
    assert_eq!(
        decrypted_diff_ids(&enc, &decryptor).await.unwrap(),
        src_diff_ids()
    );
}

#[tokio::test]
async fn the_other_key_fails_with_no_matching_private_key() {
    for (layout_name, wrong) in [
        ("enc-rsa", "ec-priv.pem"),
        ("enc-ec", "rsa-priv.pem"),
        ("enc-rsa", "pkcs7-key.pem"),
    ] {
        let enc = layout(layout_name);
        let decryptor = Decryptor::default().with_private_key(key(wrong));
        let err = decrypted_diff_ids(&enc, &decryptor).await.unwrap_err();
        assert!(
            matches!(err, DecryptError::NoMatchingKey),
            "{layout_name}/{wrong}: {err:?}"
        );
        assert_eq!(err.to_string(), "no matching private key");
    }
}

#[tokio::test]
async fn several_keys_pick_the_matching_one() {
    let decryptor = Decryptor::default()
        .with_private_key(key("pkcs7-key.pem"))
        .with_private_key(key("ec-priv.pem"))
        .with_private_key(key("rsa-priv.pem"));
    for name in ["enc-rsa", "enc-ec"] {
        assert_eq!(
            decrypted_diff_ids(&layout(name), &decryptor).await.unwrap(),
            src_diff_ids()
        );
    }
}

#[tokio::test]
async fn tampered_ciphertext_fails_the_hmac_at_end_of_stream() {
    let enc = layout("enc-rsa");
    let layer = &enc.manifest.layers[0];
    let decryptor = Decryptor::default().with_private_key(key("rsa-priv.pem"));
    let mut ciphertext = blob(&enc, &layer.digest);
    let last = ciphertext.len() - 1;
    ciphertext[last] ^= 1;
    let key = decryptor.layer_key(&layer.annotations).await.unwrap();
    let mut reader = key.decrypting_reader(&ciphertext[..]);
    let err = std::io::copy(&mut reader, &mut std::io::sink()).unwrap_err();
    let inner = err.get_ref().and_then(|e| e.downcast_ref::<DecryptError>());
    assert!(matches!(inner, Some(DecryptError::MacMismatch)), "{err:?}");
}

#[tokio::test]
async fn provider_annotation_unwraps_through_a_local_kek() {
    // Re-wrap the vector's layer key for a broker-held KEK, as `coffer image encrypt` would.
    let enc = layout("enc-rsa");
    let rsa = Decryptor::default().with_private_key(key("rsa-priv.pem"));
    let kid = "kbs:///default/key/1";
    let kek = LocalKek::default()
        .with_key_file(
            kid,
            Path::new(&format!("{VECTORS}/keys/kek-default-key-1.bin")),
        )
        .unwrap();
    let mut rewrapped = enc.manifest.clone();
    for layer in &mut rewrapped.layers {
        let opts = rsa.private_options(&layer.annotations).await.unwrap();
        let wrapped = kek.wrap(kid, &opts, [7u8; 12]).unwrap();
        let annotation =
            base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(&wrapped).unwrap());
        let mut annotations = BTreeMap::new();
        annotations.insert(ANNOTATION_PROVIDER.to_owned(), annotation);
        annotations.insert(
            ANNOTATION_PUBOPTS.to_owned(),
            layer.annotations[ANNOTATION_PUBOPTS].clone(),
        );
        assert!(!annotations.contains_key(ANNOTATION_JWE));
        layer.annotations = annotations;
    }
    let rewrapped = Layout {
        dir: enc.dir.clone(),
        manifest: rewrapped,
    };
    let broker = Decryptor::default().with_unwrapper(Arc::new(kek));
    assert_eq!(
        decrypted_diff_ids(&rewrapped, &broker).await.unwrap(),
        src_diff_ids()
    );

    // A different KEK under the same kid fails authentication; an unknown kid finds no key.
    let wrong = LocalKek::default().with_key(kid, Zeroizing::new([9u8; 32]));
    let err = decrypted_diff_ids(
        &rewrapped,
        &Decryptor::default().with_unwrapper(Arc::new(wrong)),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, DecryptError::Unwrap(_)), "{err:?}");
    let other = LocalKek::default().with_key("kbs:///default/key/2", Zeroizing::new([1u8; 32]));
    let err = decrypted_diff_ids(
        &rewrapped,
        &Decryptor::default().with_unwrapper(Arc::new(other)),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, DecryptError::NoMatchingKey), "{err:?}");
}

#[test]
fn keys_are_never_printed() {
    let debug = format!("{:?}", key("rsa-priv.pem"));
    assert!(debug.contains("redacted"), "{debug}");
    let kek = LocalKek::default().with_key("kid", Zeroizing::new([0x41; 32]));
    assert!(!format!("{kek:?}").contains("65"));
}
