//! Pulls from a real registry (Debian's docker-registry) holding images made by real tools in
//! the test (umoci, skopeo), compared file by file with `umoci unpack` of the same image.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use coffer_image::decrypt::DecryptError;
use coffer_image::{
    BlobStore, Decryptor, PrivateKey, ProgressEvent, PullError, PullOptions, RegistriesConfig, pull,
};
use common::{
    TestRegistry, VECTORS, assert_same_tree, copy_tree, edit_layout, get_blob, put_blob,
    skopeo_copy, umoci_image, umoci_unpack,
};

const SRC_MANIFEST: &str =
    "sha256:4d4ff208a9c28dd70701e7ef0380563735c9ad8a7cdb5c2ec6832e8131234312";

struct Env {
    registry: TestRegistry,
    work: tempfile::TempDir,
    store: Arc<BlobStore>,
}

impl Env {
    fn new() -> Self {
        let registry = TestRegistry::start();
        let work = tempfile::tempdir().unwrap();
        let store = BlobStore::open(&work.path().join("store")).unwrap();
        Self {
            registry,
            work,
            store,
        }
    }

    fn options(&self) -> PullOptions {
        let mut registries = RegistriesConfig::default();
        registries.add_insecure(&self.registry.host()).unwrap();
        PullOptions::new(Arc::clone(&self.store)).with_registries(registries)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }

    fn reference(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.registry.host())
    }

    fn push_layout(&self, layout: &Path, tag: &str, repo_tag: &str, extra: &[&str]) {
        skopeo_copy(
            &format!("oci:{}:{tag}", layout.display()),
            &format!("docker://{}", self.reference(repo_tag)),
            extra,
        );
    }

    /// A writable copy of a vector layout.
    fn vector_layout(&self, name: &str) -> PathBuf {
        let dest = self.path(&format!("vector-{name}"));
        copy_tree(Path::new(&format!("{VECTORS}/{name}")), &dest);
        dest
    }

    /// Encrypts `src` (a skopeo location) for the RSA vector key and pushes it as `repo:good`,
    /// then as `repo:tampered` with layer 0's ciphertext changed by `tamper` (the manifest
    /// re-hashed, so only the HMAC can tell).
    fn push_encrypted_and_tampered(
        &self,
        src: &str,
        repo: &str,
        tamper: impl FnOnce(&mut Vec<u8>),
    ) {
        let enc = self.path(&format!("{}-enc", repo.replace('/', "-")));
        skopeo_copy(
            src,
            &format!("oci:{}:latest", enc.display()),
            &[
                "--encryption-key",
                &format!("jwe:{VECTORS}/keys/rsa-pub.pem"),
            ],
        );
        self.push_layout(&enc, "latest", &format!("{repo}:good"), &[]);
        edit_layout(&enc, |layout, manifest, _| {
            let digest = manifest["layers"][0]["digest"].as_str().unwrap().to_owned();
            let mut blob = get_blob(layout, &digest);
            tamper(&mut blob);
            let (digest, size) = put_blob(layout, &blob);
            manifest["layers"][0]["digest"] = digest.into();
            manifest["layers"][0]["size"] = size.into();
        });
        self.push_layout(&enc, "latest", &format!("{repo}:tampered"), &[]);
    }

    /// Asserts a failed pull left no destination and nothing unverified in the store.
    fn assert_clean_failure(&self, dest: &Path) {
        assert!(!dest.exists(), "failed pull left {}", dest.display());
        let parent = dest.parent().unwrap();
        for entry in std::fs::read_dir(parent).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            assert!(
                !name.contains(".partial-"),
                "staging directory {name} left behind"
            );
        }
        assert_eq!(
            std::fs::read_dir(self.work.path().join("store/tmp"))
                .unwrap()
                .count(),
            0
        );
    }
}

fn key(name: &str) -> PrivateKey {
    PrivateKey::from_file(Path::new(&format!("{VECTORS}/keys/{name}"))).unwrap()
}

fn assert_mac_mismatch(err: &PullError) {
    assert!(
        matches!(
            err,
            PullError::Decrypt {
                source: DecryptError::MacMismatch,
                ..
            }
        ),
        "{err:?}"
    );
}

fn nonce() -> String {
    format!("{}-{:?}", std::process::id(), std::time::SystemTime::now())
}

#[tokio::test]
async fn plain_vector_image_by_tag_and_by_digest_matches_umoci() {
    let env = Env::new();
    let layout = env.vector_layout("src");
    env.push_layout(&layout, "latest", "peers/hello:v1", &[]);
    let reference_root = umoci_unpack(&layout, "latest", &env.path("umoci-bundle"));

    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&events);
    let mut options = env.options();
    options.progress = Some(Arc::new(move |e| sink.lock().unwrap().push(e)));
    let by_tag = pull(
        &env.reference("peers/hello:v1"),
        &env.path("by-tag"),
        &options,
    )
    .await
    .unwrap();
    assert_eq!(by_tag.manifest_digest.to_string(), SRC_MANIFEST);
    assert_eq!(by_tag.layers.len(), 1);
    assert!(by_tag.layers[0].fetched);
    assert_same_tree(&env.path("by-tag"), &reference_root);
    let events = events.lock().unwrap().clone();
    assert!(matches!(
        events.first(),
        Some(ProgressEvent::Manifest { layers: 1, .. })
    ));
    assert!(events.contains(&ProgressEvent::Downloaded {
        index: 0,
        fetched: true
    }));
    assert!(events.contains(&ProgressEvent::Applied { index: 0 }));
    assert!(
        events.iter().any(
            |e| matches!(e, ProgressEvent::Downloading { bytes, total, .. } if bytes == total)
        )
    );
    assert_eq!(events.last(), Some(&ProgressEvent::Done));

    let pinned = pull(
        &env.reference(&format!("peers/hello@{SRC_MANIFEST}")),
        &env.path("by-digest"),
        &env.options(),
    )
    .await
    .unwrap();
    assert!(
        !pinned.layers[0].fetched,
        "the store should have served the layer"
    );
    assert_same_tree(&env.path("by-digest"), &reference_root);

    // A digest that is not the image's: refused, nothing left.
    let wrong = format!("peers/hello@sha256:{}", "0".repeat(64));
    let err = pull(&env.reference(&wrong), &env.path("wrong"), &env.options())
        .await
        .unwrap_err();
    assert!(matches!(err, PullError::Registry(_)), "{err:?}");
    env.assert_clean_failure(&env.path("wrong"));
}

fn three_layers(layout: &Path, tag: &str, nonce: &str) {
    let l1 = |root: &Path| {
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/a"), b"a\n").unwrap();
        std::fs::write(root.join("etc/b"), b"b\n").unwrap();
        std::fs::create_dir_all(root.join("opt/tool/lib")).unwrap();
        std::fs::write(root.join("opt/tool/lib/x.so"), vec![7u8; 20_000]).unwrap();
        std::fs::write(root.join("nonce"), nonce).unwrap();
        std::os::unix::fs::symlink("etc/b", root.join("b-link")).unwrap();
    };
    let l2 = |root: &Path| {
        std::fs::remove_file(root.join("etc/a")).unwrap();
        std::fs::write(root.join("etc/b"), b"b changed\n").unwrap();
        std::fs::remove_dir_all(root.join("opt/tool")).unwrap();
        std::fs::create_dir_all(root.join("opt/tool")).unwrap();
        std::fs::write(root.join("opt/tool/new"), b"new\n").unwrap();
    };
    let l3 = |root: &Path| {
        let mut f = std::fs::File::create(root.join("etc/c")).unwrap();
        f.write_all(b"c\n").unwrap();
        std::fs::remove_file(root.join("b-link")).unwrap();
    };
    umoci_image(layout, tag, &[&l1, &l2, &l3]);
}

#[tokio::test]
async fn multi_layer_whiteouts_gzip_and_zstd_match_umoci() {
    let env = Env::new();
    let layout = env.path("layout");
    three_layers(&layout, "v1", &nonce());
    let reference_root = umoci_unpack(&layout, "v1", &env.path("umoci-bundle"));
    assert!(!reference_root.join("etc/a").exists());

    env.push_layout(&layout, "v1", "app/multi:gzip", &[]);
    // zstd: skopeo 1.9 recompresses only uncompressed sources, so go through a decompressed
    // dir: copy; and it reuses blobs it already pushed to a registry (its blob-info cache), so
    // the zstd image goes to a second registry.
    let zstd_registry = TestRegistry::start();
    let plain_dir = env.path("plain-dir");
    skopeo_copy(
        &format!("oci:{}:v1", layout.display()),
        &format!("dir:{}", plain_dir.display()),
        &["--dest-decompress"],
    );
    let zstd_ref = format!("{}/app/multi:zstd", zstd_registry.host());
    skopeo_copy(
        &format!("dir:{}", plain_dir.display()),
        &format!("docker://{zstd_ref}"),
        &["--dest-compress-format", "zstd"],
    );
    let mut zstd_options = env.options();
    zstd_options
        .registries
        .add_insecure(&zstd_registry.host())
        .unwrap();

    let gz = pull(
        &env.reference("app/multi:gzip"),
        &env.path("gz"),
        &env.options(),
    )
    .await
    .unwrap();
    assert_eq!(gz.layers.len(), 3);
    assert!(gz.layers.iter().all(|l| l.media_type.ends_with("tar+gzip")));
    assert!(gz.layers[1].stats.whiteouts >= 1);
    assert_same_tree(&env.path("gz"), &reference_root);

    let zst = pull(&zstd_ref, &env.path("zst"), &zstd_options)
        .await
        .unwrap();
    assert!(
        zst.layers
            .iter()
            .all(|l| l.media_type.ends_with("tar+zstd")),
        "{:?}",
        zst.layers
    );
    assert_eq!(
        zst.layers.iter().map(|l| &l.diff_id).collect::<Vec<_>>(),
        gz.layers.iter().map(|l| &l.diff_id).collect::<Vec<_>>()
    );
    assert_same_tree(&env.path("zst"), &reference_root);
}

#[tokio::test]
async fn skopeo_jwe_encrypted_images_decrypt_to_the_plain_root() {
    let env = Env::new();
    let layout = env.path("layout");
    three_layers(&layout, "v1", &nonce());
    env.push_layout(&layout, "v1", "enc/app:plain", &[]);
    let rsa_pub = format!("jwe:{VECTORS}/keys/rsa-pub.pem");
    let ec_pub = format!("jwe:{VECTORS}/keys/ec-pub.pem");
    env.push_layout(
        &layout,
        "v1",
        "enc/app:multi",
        &["--encryption-key", &rsa_pub, "--encryption-key", &ec_pub],
    );
    env.push_layout(&layout, "v1", "enc/app:ec", &["--encryption-key", &ec_pub]);
    // The ready-made vectors, pushed as they are.
    env.push_layout(
        &env.vector_layout("enc-rsa"),
        "latest",
        "enc/vector:rsa",
        &[],
    );
    env.push_layout(&env.vector_layout("src"), "latest", "enc/vector:plain", &[]);

    pull(
        &env.reference("enc/app:plain"),
        &env.path("plain"),
        &env.options(),
    )
    .await
    .unwrap();
    let cases = [
        ("enc/app:multi", "rsa-priv.pem", "plain"),
        ("enc/app:multi", "ec-priv.pem", "plain"),
        ("enc/app:ec", "ec-priv.pem", "plain"),
    ];
    for (i, (reference, key_file, plain)) in cases.iter().enumerate() {
        let mut options = env.options();
        options.decryptor = Decryptor::default().with_private_key(key(key_file));
        let dest = env.path(&format!("dec-{i}"));
        let pulled = pull(&env.reference(reference), &dest, &options)
            .await
            .unwrap();
        assert!(
            pulled
                .layers
                .iter()
                .all(|l| l.encrypted && l.media_type.ends_with("+encrypted"))
        );
        assert_same_tree(&dest, &env.path(plain));
    }
    pull(
        &env.reference("enc/vector:plain"),
        &env.path("vplain"),
        &env.options(),
    )
    .await
    .unwrap();
    let mut options = env.options();
    options.decryptor = Decryptor::default().with_private_key(key("rsa-priv.pem"));
    pull(
        &env.reference("enc/vector:rsa"),
        &env.path("vdec"),
        &options,
    )
    .await
    .unwrap();
    assert_same_tree(&env.path("vdec"), &env.path("vplain"));

    // Wrong key: refused before any layer is downloaded.
    let fresh = Env::new();
    fresh.push_layout(&layout, "v1", "enc/app:ec", &["--encryption-key", &ec_pub]);
    let mut options = fresh.options();
    options.decryptor = Decryptor::default()
        .with_private_key(key("pkcs7-key.pem"))
        .with_private_key(key("rsa-priv.pem"));
    let dest = fresh.path("wrong-key");
    let err = pull(&fresh.reference("enc/app:ec"), &dest, &options)
        .await
        .unwrap_err();
    match &err {
        PullError::LayerKey {
            source: DecryptError::NoMatchingKey,
            ..
        } => {
            assert!(
                std::error::Error::source(&err)
                    .unwrap()
                    .to_string()
                    .contains("no matching private key")
            );
        }
        other => panic!("expected no matching private key, got {other:?}"),
    }
    fresh.assert_clean_failure(&dest);
    assert_eq!(fresh.store.fetches(), 0);
    // No key at all.
    let err = pull(&fresh.reference("enc/app:ec"), &dest, &fresh.options())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            PullError::LayerKey {
                source: DecryptError::NoMatchingKey,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn tampered_blob_wrong_diff_id_and_tampered_ciphertext_are_refused() {
    let env = Env::new();

    // Tampered blob in the registry: digest mismatch, nothing stored, a later good pull works.
    let layout = env.vector_layout("src");
    env.push_layout(&layout, "latest", "bad/blob:v1", &[]);
    let layer = "sha256:d4e77de63d8cce3d4f2bb34bca3f21b5e919a2c7a40700b6671aee759bbd5f98";
    let data_path = env.registry.blob_data(layer);
    let original = std::fs::read(&data_path).unwrap();
    let mut tampered = original.clone();
    let mid = tampered.len() / 2;
    tampered[mid] ^= 0xff;
    std::fs::write(&data_path, &tampered).unwrap();
    let dest = env.path("tampered");
    let err = pull(&env.reference("bad/blob:v1"), &dest, &env.options())
        .await
        .unwrap_err();
    assert!(matches!(err, PullError::Registry(_)), "{err:?}");
    env.assert_clean_failure(&dest);
    assert!(
        !env.work
            .path()
            .join("store/blobs/sha256")
            .join(&layer[7..])
            .exists()
    );
    std::fs::write(&data_path, &original).unwrap();
    pull(
        &env.reference("bad/blob:v1"),
        &env.path("retry"),
        &env.options(),
    )
    .await
    .unwrap();

    // Config diff_id that the layer does not have.
    let layout = env.vector_layout("src");
    std::fs::rename(&layout, env.path("diffid-layout")).unwrap();
    let layout = env.path("diffid-layout");
    edit_layout(&layout, |_, _, config| {
        config["rootfs"]["diff_ids"][0] = format!("sha256:{}", "ab".repeat(32)).into();
    });
    env.push_layout(&layout, "latest", "bad/diffid:v1", &[]);
    let dest = env.path("diffid");
    let err = pull(&env.reference("bad/diffid:v1"), &dest, &env.options())
        .await
        .unwrap_err();
    assert!(matches!(err, PullError::DiffId { index: 0, .. }), "{err:?}");
    env.assert_clean_failure(&dest);

    // Ciphertext changed after encryption (manifest re-hashed, so only the HMAC can tell).
    env.push_encrypted_and_tampered(&format!("oci:{VECTORS}/src:latest"), "bad/mac", |blob| {
        let last = blob.len() - 1;
        blob[last] ^= 1;
    });
    let mut options = env.options();
    options.decryptor = Decryptor::default().with_private_key(key("rsa-priv.pem"));
    let dest = env.path("mac");
    let err = pull(&env.reference("bad/mac:tampered"), &dest, &options)
        .await
        .unwrap_err();
    assert_mac_mismatch(&err);
    env.assert_clean_failure(&dest);

    pull(
        &env.reference("bad/mac:good"),
        &env.path("mac-good"),
        &options,
    )
    .await
    .unwrap();
}

/// A layer far larger than the queues between the pipeline's stages, its ciphertext changed
/// from 1 MiB on: the decompressor gives up long before the end and hangs up, yet the decrypt
/// stage reads the blob to its end and the HMAC verdict is the one reported. The untouched
/// image pulls to umoci's root.
#[tokio::test]
async fn tampered_ciphertext_of_a_large_layer_reports_the_hmac() {
    let env = Env::new();
    let layout = env.path("big");
    let big = |root: &Path| {
        // 8 MiB of xorshift output: incompressible, so the blob is as large.
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        let data: Vec<u8> = (0..1 << 20)
            .flat_map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()
            })
            .collect();
        std::fs::write(root.join("big.bin"), data).unwrap();
    };
    umoci_image(&layout, "latest", &[&big]);
    env.push_encrypted_and_tampered(
        &format!("oci:{}:latest", layout.display()),
        "big/enc",
        |blob| {
            assert!(blob.len() > 8 << 20, "layer blob is {} bytes", blob.len());
            for byte in &mut blob[1 << 20..] {
                *byte ^= 0x5a;
            }
        },
    );
    let mut options = env.options();
    options.decryptor = Decryptor::default().with_private_key(key("rsa-priv.pem"));
    let dest = env.path("tampered");
    let err = pull(&env.reference("big/enc:tampered"), &dest, &options)
        .await
        .unwrap_err();
    assert_mac_mismatch(&err);
    env.assert_clean_failure(&dest);

    let good = env.path("good");
    pull(&env.reference("big/enc:good"), &good, &options)
        .await
        .unwrap();
    assert_same_tree(
        &good,
        &umoci_unpack(&layout, "latest", &env.path("umoci-bundle")),
    );
}

/// A layer re-encrypted by someone holding its key: other content under the same key and
/// nonce, with the HMAC made to match, and the wrapped private options left as they were (so
/// the plaintext digest they name is no longer the decrypted blob's). The MAC verifies; the
/// pull does not check that plaintext digest and refuses the layer on its diff_id, leaving
/// nothing. The standalone decrypting reader, which has no diff_id, still refuses it on the
/// plaintext digest.
#[tokio::test]
async fn reencrypted_layer_with_a_valid_mac_fails_the_diff_id() {
    use aes::cipher::{KeyIvInit, StreamCipher};
    use base64::Engine as _;
    use coffer_image::decrypt::ANNOTATION_PUBOPTS;
    use hmac::Mac;
    use std::collections::BTreeMap;
    use std::io::Read;

    let b64 = base64::engine::general_purpose::STANDARD;
    let env = Env::new();
    let layout = env.vector_layout("enc-rsa");
    let decryptor = Decryptor::default().with_private_key(key("rsa-priv.pem"));
    let mut annotations = BTreeMap::new();
    edit_layout(&layout, |_, manifest, _| {
        annotations = serde_json::from_value(manifest["layers"][0]["annotations"].clone()).unwrap();
    });
    let private: serde_json::Value =
        serde_json::from_slice(&decryptor.private_options(&annotations).await.unwrap()).unwrap();
    let symkey = b64.decode(private["symkey"].as_str().unwrap()).unwrap();
    let nonce = b64
        .decode(private["cipheroptions"]["nonce"].as_str().unwrap())
        .unwrap();

    // Other content: a gzip layer holding one file.
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    let data = b"not the layer the config names\n";
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut header, "substituted", &data[..])
        .unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar.into_inner().unwrap()).unwrap();
    let mut ciphertext = gz.finish().unwrap();
    ctr::Ctr128BE::<aes::Aes256>::new(symkey.as_slice().into(), nonce.as_slice().into())
        .apply_keystream(&mut ciphertext);
    let mut mac = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(&symkey).unwrap();
    mac.update(&ciphertext);
    let pubopts = serde_json::json!({
        "cipher": "AES_256_CTR_HMAC_SHA256",
        "hmac": b64.encode(mac.finalize().into_bytes()),
        "cipheroptions": {},
    });
    annotations.insert(
        ANNOTATION_PUBOPTS.to_owned(),
        b64.encode(pubopts.to_string()),
    );
    edit_layout(&layout, |layout, manifest, _| {
        let (digest, size) = put_blob(layout, &ciphertext);
        manifest["layers"][0]["digest"] = digest.into();
        manifest["layers"][0]["size"] = size.into();
        manifest["layers"][0]["annotations"] = serde_json::to_value(&annotations).unwrap();
    });
    env.push_layout(&layout, "latest", "reenc/app:v1", &[]);

    let mut options = env.options();
    options.decryptor = decryptor.clone();
    let dest = env.path("reenc");
    let err = pull(&env.reference("reenc/app:v1"), &dest, &options)
        .await
        .unwrap_err();
    assert!(matches!(err, PullError::DiffId { index: 0, .. }), "{err:?}");
    env.assert_clean_failure(&dest);

    let mut reader = decryptor
        .layer_key(&annotations)
        .await
        .unwrap()
        .decrypting_reader(&ciphertext[..]);
    let err = reader.read_to_end(&mut Vec::new()).unwrap_err();
    let inner = err.get_ref().and_then(|e| e.downcast_ref::<DecryptError>());
    assert!(
        matches!(inner, Some(DecryptError::PlaintextDigest { .. })),
        "{err:?}"
    );
}

/// IMG-13 through the whole pipeline: gzip and zstd layers expanding far beyond their size.
#[tokio::test]
async fn img13_decompression_bombs_are_aborted() {
    let env = Env::new();
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(32 << 20);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, "zeros", std::io::repeat(0).take_exact(32 << 20))
        .unwrap();
    let tar = tar.into_inner().unwrap();
    let diff_id = format!(
        "sha256:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&tar))
    );
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&tar).unwrap();
    let gz = gz.finish().unwrap();
    let zst = zstd::encode_all(&tar[..], 19).unwrap();
    for (name, blob, media_type) in [
        ("gzip", gz, "application/vnd.oci.image.layer.v1.tar+gzip"),
        ("zstd", zst, "application/vnd.oci.image.layer.v1.tar+zstd"),
    ] {
        let layout = env.vector_layout("src");
        let moved = env.path(&format!("bomb-{name}"));
        std::fs::rename(&layout, &moved).unwrap();
        edit_layout(&moved, |layout, manifest, config| {
            let (digest, size) = put_blob(layout, &blob);
            manifest["layers"][0] =
                serde_json::json!({"mediaType": media_type, "digest": digest, "size": size});
            config["rootfs"]["diff_ids"][0] = diff_id.clone().into();
        });
        env.push_layout(&moved, "latest", &format!("bomb/{name}:v1"), &[]);
        let mut options = env.options();
        options.limits.max_ratio = 100;
        options.limits.ratio_floor_bytes = 1 << 20;
        let dest = env.path(&format!("bomb-{name}-root"));
        let err = pull(&env.reference(&format!("bomb/{name}:v1")), &dest, &options)
            .await
            .unwrap_err();
        assert!(
            matches!(err, PullError::Bomb { index: 0, .. }),
            "{name}: {err:?}"
        );
        env.assert_clean_failure(&dest);
        // Within a generous ratio the same layer is fine.
        let mut options = env.options();
        options.limits.max_ratio = 100_000;
        pull(
            &env.reference(&format!("bomb/{name}:v1")),
            &env.path(&format!("ok-{name}")),
            &options,
        )
        .await
        .unwrap();
        assert_eq!(
            std::fs::metadata(env.path(&format!("ok-{name}/zeros")))
                .unwrap()
                .len(),
            32 << 20
        );
    }
}

trait TakeExact: std::io::Read + Sized {
    fn take_exact(self, n: u64) -> std::io::Take<Self> {
        self.take(n)
    }
}
impl<R: std::io::Read> TakeExact for R {}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_pulls_download_each_layer_once_and_agree() {
    let env = Env::new();
    let layout = env.path("layout");
    three_layers(&layout, "a", &nonce());
    // Image b = image a + one more layer (shares a's three layers).
    let bundle = env.path("bundle-b");
    umoci_unpack(&layout, "a", &bundle);
    std::fs::write(bundle.join("rootfs/extra"), b"only in b").unwrap();
    common::run(
        "umoci",
        "umoci",
        &[
            "repack",
            "--image",
            &format!("{}:b", layout.display()),
            bundle.to_str().unwrap(),
        ],
    );
    env.push_layout(&layout, "a", "conc/app:a", &[]);
    env.push_layout(&layout, "b", "conc/app:b", &[]);

    // 8 pulls of the same image.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (reference, dest, options) = (
            env.reference("conc/app:a"),
            env.path(&format!("a{i}")),
            env.options(),
        );
        tasks.push(tokio::spawn(async move {
            pull(&reference, &dest, &options).await
        }));
    }
    let mut layers_a = Vec::new();
    for task in tasks {
        layers_a = task.await.unwrap().unwrap().layers;
    }
    assert_eq!(env.store.fetches(), 3);
    for i in 1..8 {
        assert_same_tree(&env.path("a0"), &env.path(&format!("a{i}")));
    }

    // 8 pulls mixing both images, on the same store: only b's extra layer is new.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let tag = if i % 2 == 0 { "a" } else { "b" };
        let (reference, dest, options) = (
            env.reference(&format!("conc/app:{tag}")),
            env.path(&format!("m{tag}{i}")),
            env.options(),
        );
        tasks.push(tokio::spawn(async move {
            pull(&reference, &dest, &options).await
        }));
    }
    let mut layers_b = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        let pulled = task.await.unwrap().unwrap();
        if i % 2 == 1 {
            layers_b = pulled.layers;
        }
    }
    assert_eq!(env.store.fetches(), 4);
    assert_eq!(layers_b.len(), 4);
    for layer in layers_a.iter().chain(&layers_b) {
        assert_eq!(
            env.registry.blob_gets(&layer.digest.to_string()),
            1,
            "{} fetched more than once",
            layer.digest
        );
    }
    for i in (2..8).step_by(2) {
        assert_same_tree(&env.path("ma0"), &env.path(&format!("ma{i}")));
        assert_same_tree(&env.path("mb1"), &env.path(&format!("mb{}", i + 1)));
    }
    assert_same_tree(&env.path("ma0"), &env.path("a0"));
    assert_eq!(std::fs::read(env.path("mb1/extra")).unwrap(), b"only in b");
}

#[tokio::test]
async fn plain_http_is_used_only_for_registries_listed_insecure() {
    let env = Env::new();
    env.push_layout(&env.vector_layout("src"), "latest", "peers/hello:v1", &[]);
    let dest = env.path("https-only");
    let options = PullOptions::new(Arc::clone(&env.store));
    let err = pull(&env.reference("peers/hello:v1"), &dest, &options)
        .await
        .unwrap_err();
    assert!(matches!(err, PullError::Registry(_)), "{err:?}");
    env.assert_clean_failure(&dest);
    assert_eq!(env.store.fetches(), 0);

    // A mirror listed for a registry that does not exist serves the image.
    let registries = RegistriesConfig::from_toml(&format!(
        "[[registry]]\nhost = \"registry.invalid\"\nmirrors = [{{ host = \"{}\", insecure = true }}]\n",
        env.registry.host()
    ))
    .unwrap();
    registries.validate().unwrap();
    let options = PullOptions::new(Arc::clone(&env.store)).with_registries(registries);
    let pulled = pull(
        "registry.invalid/peers/hello:v1",
        &env.path("mirrored"),
        &options,
    )
    .await
    .unwrap();
    assert_eq!(pulled.manifest_digest.to_string(), SRC_MANIFEST);
}

/// Forwards TCP to `upstream`, cutting each connection after `limit` response bytes.
async fn cutting_proxy(upstream: String, limit: usize) -> (String, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut cr, &mut sw).await;
                });
                let mut sent = 0usize;
                let mut buf = vec![0u8; 16 * 1024];
                while sent < limit {
                    let Ok(n) = sr.read(&mut buf).await else {
                        break;
                    };
                    if n == 0 {
                        break;
                    }
                    let n = n.min(limit - sent);
                    if cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    sent += n;
                }
                up.abort();
                // Dropping both halves resets the connection mid-response.
            });
        }
    });
    (addr, task)
}

/// IMG-15: a download cut mid-stream fails the pull, leaves no partial blob in the store and
/// no root; the next pull downloads the layer again and succeeds.
#[tokio::test]
async fn img15_a_download_cut_mid_stream_is_not_reused() {
    let env = Env::new();
    let layout = env.path("layout");
    let noise = |root: &Path| {
        let mut data = Vec::with_capacity(400_000);
        let mut block = <sha2::Sha256 as sha2::Digest>::digest(b"seed").to_vec();
        while data.len() < 400_000 {
            block = <sha2::Sha256 as sha2::Digest>::digest(&block).to_vec();
            data.extend_from_slice(&block);
        }
        std::fs::write(root.join("noise.bin"), data).unwrap();
    };
    umoci_image(&layout, "v1", &[&noise]);
    env.push_layout(&layout, "v1", "cut/app:v1", &[]);

    let (proxy, task) = cutting_proxy(env.registry.host(), 64 * 1024).await;
    let mut registries = RegistriesConfig::default();
    registries.add_insecure(&proxy).unwrap();
    let options = PullOptions::new(Arc::clone(&env.store)).with_registries(registries);
    let dest = env.path("cut");
    let err = pull(&format!("{proxy}/cut/app:v1"), &dest, &options)
        .await
        .unwrap_err();
    task.abort();
    assert!(matches!(err, PullError::Registry(_)), "{err:?}");
    assert_eq!(
        env.store.fetches(),
        1,
        "the cut should hit the layer download"
    );
    env.assert_clean_failure(&dest);
    assert_eq!(
        std::fs::read_dir(env.work.path().join("store/blobs/sha256"))
            .unwrap()
            .count(),
        0
    );

    let fetches = env.store.fetches();
    let pulled = pull(
        &env.reference("cut/app:v1"),
        &env.path("whole"),
        &env.options(),
    )
    .await
    .unwrap();
    assert!(pulled.layers[0].fetched);
    assert_eq!(env.store.fetches(), fetches + 1);
    assert_eq!(
        std::fs::metadata(env.path("whole/noise.bin"))
            .unwrap()
            .len() as usize,
        400_000usize.div_ceil(32) * 32
    );
}

/// REG-02 through a real registry: layers and manifests whose declared type lies are refused
/// with a typed error, nothing is left, and a layer whose manifest was refused is never fetched.
#[tokio::test]
async fn reg02_mislabelled_layers_and_manifests_are_refused() {
    let env = Env::new();
    const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    const ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    let src = env.vector_layout("src");
    let (gz_digest, gz) = {
        let manifest: serde_json::Value =
            serde_json::from_slice(&get_blob(&src, SRC_MANIFEST)).unwrap();
        let digest = manifest["layers"][0]["digest"].as_str().unwrap().to_owned();
        let blob = get_blob(&src, &digest);
        (digest, blob)
    };
    let mut tar = Vec::new();
    std::io::copy(&mut flate2::read::GzDecoder::new(&gz[..]), &mut tar).unwrap();
    let zst = zstd::encode_all(&tar[..], 3).unwrap();
    // A layer no other case uses, to see it is never fetched.
    let mut fast = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    fast.write_all(&tar).unwrap();
    let unseen = fast.finish().unwrap();
    let unseen_digest = format!(
        "sha256:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&unseen))
    );
    assert_ne!(unseen_digest, gz_digest);

    // Each case: the layer's bytes and the media type its manifest declares, or a config edit.
    type Edit = Box<dyn FnOnce(&Path, &mut serde_json::Value, &mut serde_json::Value)>;
    let layer = |blob: Vec<u8>, media_type: &'static str| -> Edit {
        Box::new(move |layout, manifest, _| {
            let (digest, size) = put_blob(layout, &blob);
            manifest["layers"][0] =
                serde_json::json!({"mediaType": media_type, "digest": digest, "size": size});
        })
    };
    type Case = (&'static str, Edit, fn(&PullError) -> bool);
    let cases: Vec<Case> = vec![
        ("zstd-as-gzip", layer(zst.clone(), GZIP), |e| {
            matches!(e, PullError::Decompress { index: 0, .. })
        }),
        ("gzip-as-zstd", layer(gz.clone(), ZSTD), |e| {
            matches!(e, PullError::Decompress { index: 0, .. })
        }),
        (
            // Declared encrypted, with no key annotation: no key, no plaintext guess.
            "plain-as-encrypted",
            layer(
                gz.clone(),
                "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
            ),
            |e| matches!(e, PullError::LayerKey { index: 0, .. }),
        ),
        (
            "unknown-layer-type",
            layer(unseen, "application/vnd.example.layer.v1.tar+lz4"),
            |e| {
                matches!(
                    e,
                    PullError::Manifest(coffer_image::manifest::ManifestError::MediaType(_))
                )
            },
        ),
        (
            "arm64-config",
            Box::new(|_, _, config| config["architecture"] = "arm64".into()),
            |e| {
                matches!(
                    e,
                    PullError::Manifest(coffer_image::manifest::ManifestError::Platform { .. })
                )
            },
        ),
    ];
    let mut options = env.options();
    options.decryptor = Decryptor::default().with_private_key(key("rsa-priv.pem"));
    for (name, edit, expected) in cases {
        let layout = env.path(&format!("reg02-{name}"));
        copy_tree(&src, &layout);
        edit_layout(&layout, edit);
        env.push_layout(&layout, "latest", &format!("reg02/{name}:v1"), &[]);
        let dest = env.path(&format!("reg02-{name}-root"));
        let err = pull(&env.reference(&format!("reg02/{name}:v1")), &dest, &options)
            .await
            .unwrap_err();
        assert!(expected(&err), "{name}: {err:?}");
        env.assert_clean_failure(&dest);
    }
    // The manifest naming an unknown layer type was refused before its layer was fetched.
    assert_eq!(env.registry.blob_gets(&unseen_digest), 0);

    // An index whose only image is linux/arm64: nothing past the index is fetched.
    let layout = env.path("reg02-index");
    copy_tree(&src, &layout);
    let index_path = layout.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let mut entry = index["manifests"][0].clone();
    entry["platform"] = serde_json::json!({"os": "linux", "architecture": "arm64"});
    entry.as_object_mut().unwrap().remove("annotations");
    let image_index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [entry],
    });
    let (digest, size) = put_blob(&layout, &serde_json::to_vec(&image_index).unwrap());
    index["manifests"][0]["mediaType"] = "application/vnd.oci.image.index.v1+json".into();
    index["manifests"][0]["digest"] = digest.into();
    index["manifests"][0]["size"] = size.into();
    std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
    env.push_layout(&layout, "latest", "reg02/arm-only:v1", &["--all"]);
    let dest = env.path("reg02-index-root");
    let layer_gets = env.registry.blob_gets(&gz_digest);
    let err = pull(&env.reference("reg02/arm-only:v1"), &dest, &options)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            PullError::Manifest(coffer_image::manifest::ManifestError::NoPlatform)
        ),
        "{err:?}"
    );
    env.assert_clean_failure(&dest);
    assert_eq!(env.registry.blob_gets(&gz_digest), layer_gets);
}
