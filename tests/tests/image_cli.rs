//! `coffer image encrypt|inspect|pull` end to end against a real registry: an image encrypted by
//! Coffer for a JWE recipient and a broker-held key is pushed with skopeo, inspected, and pulled
//! with either key into a root equal to the plaintext image's; without a key nothing is created.
// Test harness code: a failed expectation is a test failure.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Output};

use anyhow::{Context, ensure};
use coffer_tests::registry::Registry;
use coffer_tests::{Suite, case, coffer};

fn vectors() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/vectors/ocicrypt"
    ))
}

fn run(args: &[&str]) -> anyhow::Result<Output> {
    Command::new(coffer())
        .args(args)
        .output()
        .context("running coffer")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Every file below `root` with its mode and contents, for comparing trees.
fn tree(root: &Path) -> anyhow::Result<Vec<(String, u32, Vec<u8>)>> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path)?;
            let rel = path.strip_prefix(root)?.display().to_string();
            let contents = if meta.is_file() {
                std::fs::read(&path)?
            } else if meta.file_type().is_symlink() {
                std::fs::read_link(&path)?
                    .display()
                    .to_string()
                    .into_bytes()
            } else {
                Vec::new()
            };
            if meta.is_dir() {
                stack.push(path);
            }
            out.push((rel, meta.permissions().mode(), contents));
        }
    }
    out.sort();
    Ok(out)
}

fn main() -> ExitCode {
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path();
    let p = |path: &Path| path.display().to_string();
    let mut suite = Suite::new("image_cli");
    let registry = match Registry::start() {
        Ok(r) => r,
        Err(err) => {
            suite.record("registry", std::time::Instant::now(), Err(err));
            return suite.finish();
        }
    };
    let host = format!("127.0.0.1:{}", registry.port);
    let keys = vectors().join("keys");
    let kek = format!(
        "kbs:///default/key/1={}",
        p(&keys.join("kek-default-key-1.bin"))
    );
    let plain_ref = format!("{host}/demo/plain:v1");
    let enc_ref = format!("{host}/demo/secret:v1");
    let store = dir.join("store");

    case!(
        suite,
        "encrypt_and_push",
        (|| {
            let out_layout = dir.join("encrypted");
            let out = run(&[
                "image",
                "encrypt",
                "--layout",
                &p(&vectors().join("src")),
                "--out",
                &p(&out_layout),
                "--recipient",
                &p(&keys.join("rsa-pub.pem")),
                "--kek",
                &kek,
            ])?;
            ensure!(out.status.success(), "encrypt: {}", text(&out.stderr));
            ensure!(
                text(&out.stdout).starts_with("sha256:"),
                "{}",
                text(&out.stdout)
            );
            registry.push(&vectors().join("src"), "demo/plain:v1")?;
            registry.push(&out_layout, "demo/secret:v1")?;
            Ok(())
        })()
    );

    case!(
        suite,
        "inspect_shows_encryption",
        (|| {
            let out = run(&["image", "inspect", &enc_ref, "--insecure-registry", &host])?;
            ensure!(out.status.success(), "inspect: {}", text(&out.stderr));
            let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            let layer = &json["layers"][0];
            ensure!(
                layer["encrypted"] == true
                    && layer["jwe_recipients"] == true
                    && layer["broker_wrapped_key"] == true,
                "{json}"
            );
            ensure!(
                json["cmd"] == serde_json::json!(["/app/hello.txt"]),
                "{json}"
            );
            Ok(())
        })()
    );

    case!(
        suite,
        "pull_decrypts_with_either_key",
        (|| {
            let plain = dir.join("plain-root");
            let out = run(&[
                "image",
                "pull",
                &plain_ref,
                "--dest",
                &p(&plain),
                "--store",
                &p(&store),
                "--insecure-registry",
                &host,
            ])?;
            ensure!(out.status.success(), "plain pull: {}", text(&out.stderr));
            let expected = tree(&plain)?;
            ensure!(!expected.is_empty(), "empty root");
            for (name, key_args) in [
                (
                    "jwe",
                    vec!["--decryption-key".to_owned(), p(&keys.join("rsa-priv.pem"))],
                ),
                ("kek", vec!["--kek".to_owned(), kek.clone()]),
            ] {
                let dest = dir.join(format!("root-{name}"));
                let mut args = vec![
                    "image".to_owned(),
                    "pull".into(),
                    enc_ref.clone(),
                    "--dest".into(),
                    p(&dest),
                    "--store".into(),
                    p(&store),
                    "--insecure-registry".into(),
                    host.clone(),
                ];
                args.extend(key_args);
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let out = run(&args)?;
                ensure!(out.status.success(), "{name} pull: {}", text(&out.stderr));
                ensure!(
                    text(&out.stderr).contains("verified and applied"),
                    "progress lines: {}",
                    text(&out.stderr)
                );
                ensure!(
                    tree(&dest)? == expected,
                    "{name}: decrypted root differs from the plaintext root"
                );
            }
            Ok(())
        })()
    );

    case!(
        suite,
        "pull_without_key_creates_nothing",
        (|| {
            let dest = dir.join("root-nokey");
            let out = run(&[
                "image",
                "pull",
                &enc_ref,
                "--dest",
                &p(&dest),
                "--store",
                &p(&store),
                "--insecure-registry",
                &host,
            ])?;
            ensure!(out.status.code() == Some(125), "{out:?}");
            ensure!(!dest.exists(), "a root was created");
            let wrong = dir.join("root-wrongkey");
            let out = run(&[
                "image",
                "pull",
                &enc_ref,
                "--dest",
                &p(&wrong),
                "--store",
                &p(&store),
                "--insecure-registry",
                &host,
                "--decryption-key",
                &p(&keys.join("ec-priv.pem")),
            ])?;
            ensure!(out.status.code() == Some(125), "{out:?}");
            ensure!(
                text(&out.stderr).contains("no matching private key"),
                "{}",
                text(&out.stderr)
            );
            ensure!(!wrong.exists(), "a root was created");
            Ok(())
        })()
    );

    case!(
        suite,
        "broker_releases_the_key_after_attestation",
        (|| {
            // The image's layer key is wrapped by a key-encryption key that only the broker holds;
            // the pull attests (sample evidence, explicitly enabled) and the broker releases it only
            // when its policy admits that evidence.
            let kek_bytes = std::fs::read(keys.join("kek-default-key-1.bin"))?;
            let open = coffer_tests::kbs::Broker::start(
                dir,
                "open",
                Some(coffer_tests::kbs::ALLOW_SAMPLE_POLICY),
                &kek_bytes,
            )?;
            let pull_with = |broker: &coffer_tests::kbs::Broker, name: &str| {
                let dest = dir.join(name);
                let out = run(&[
                    "image",
                    "pull",
                    &enc_ref,
                    "--dest",
                    &p(&dest),
                    "--store",
                    &p(&dir.join(format!("{name}-store"))),
                    "--insecure-registry",
                    &host,
                    "--kbs-url",
                    &broker.url,
                    "--kbs-tee",
                    "sample",
                ])?;
                anyhow::Ok((dest, out))
            };
            let (dest, out) = pull_with(&open, "root-broker")?;
            ensure!(out.status.success(), "broker pull: {}", text(&out.stderr));
            let plain = dir.join("plain-root");
            ensure!(
                tree(&dest)? == tree(&plain)?,
                "decrypted root differs from the plaintext root"
            );
            // KBS-04: the shipped default policy refuses sample evidence: no key, no root.
            let strict = coffer_tests::kbs::Broker::start(dir, "strict", None, &kek_bytes)?;
            let (dest, out) = pull_with(&strict, "root-refused")?;
            ensure!(out.status.code() == Some(125), "{out:?}");
            ensure!(
                text(&out.stderr).contains("key broker"),
                "{}",
                text(&out.stderr)
            );
            ensure!(!dest.exists(), "a root was created without the key");
            Ok(())
        })()
    );

    case!(
        suite,
        "registry_credentials_come_from_the_broker",
        (|| {
            // A registry that requires a password; the guest-side pull gets the credentials only from
            // the broker, after attestation.
            let private = Registry::start_with_auth(Some(("puller", "s3cret-pass")))?;
            private.push_as(
                &vectors().join("src"),
                "demo/private:v1",
                Some("puller:s3cret-pass"),
            )?;
            let private_host = format!("127.0.0.1:{}", private.port);
            let private_ref = format!("{private_host}/demo/private:v1");
            let broker = coffer_tests::kbs::Broker::start(
                dir,
                "creds",
                Some(coffer_tests::kbs::ALLOW_SAMPLE_POLICY),
                b"unused",
            )?;
            let auth = serde_json::json!({"auths": {private_host.clone(): {"username": "puller", "password": "s3cret-pass"}}});
            broker.put("default/registry/auth", auth.to_string().as_bytes())?;
            let pull = |name: &str, extra: &[&str]| {
                let dest = dir.join(name);
                let mut args = vec![
                    "image",
                    "pull",
                    &private_ref,
                    "--insecure-registry",
                    &private_host,
                ];
                let dest_s = p(&dest);
                let store_s = p(&dir.join(format!("{name}-store")));
                args.extend(["--dest", &dest_s, "--store", &store_s]);
                args.extend(extra);
                anyhow::Ok((dest, run(&args)?))
            };
            let (dest, out) = pull("root-anonymous", &[])?;
            ensure!(
                out.status.code() == Some(125) && !dest.exists(),
                "anonymous pull: {out:?}"
            );
            let (dest, out) = pull(
                "root-creds",
                &[
                    "--kbs-url",
                    &broker.url,
                    "--kbs-tee",
                    "sample",
                    "--registry-auth-kbs",
                    "default/registry/auth",
                ],
            )?;
            ensure!(
                out.status.success(),
                "pull with broker credentials: {}",
                text(&out.stderr)
            );
            ensure!(
                tree(&dest)? == tree(&dir.join("plain-root"))?,
                "root differs from the plaintext root"
            );
            ensure!(
                !text(&out.stderr).contains("s3cret-pass"),
                "the password was printed"
            );
            Ok(())
        })()
    );

    suite.finish()
}
