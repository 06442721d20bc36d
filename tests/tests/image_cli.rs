//! `coffer image encrypt|inspect|pull` end to end against a real registry: an image encrypted by
//! Coffer for a JWE recipient and a broker-held key is pushed with skopeo, inspected, and pulled
//! with either key into a root equal to the plaintext image's; without a key nothing is created.
//! `coffer image encrypt` also works registry to registry (decrypted by Coffer and by skopeo) and
//! refuses a tampered or missing source without pushing anything. Pulls of hostile layers (#21:
//! inflating to oversized PAX or long-name headers or to a decompression bomb, and a same-size
//! substitute for a pinned layer) fail with the right error and a peak RSS under
//! `coffer_image::PULL_MEMORY_BOUND`.
// Test harness code: a failed expectation is a test failure.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Output};

use anyhow::{Context, ensure};
use coffer_tests::registry::Registry;
use coffer_tests::{Suite, case, coffer};

#[path = "image_cli/hostile.rs"]
mod hostile;

fn vectors() -> PathBuf {
    coffer_tests::vectors_dir().join("ocicrypt")
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

fn tool(name: &str, args: &[&str]) -> anyhow::Result<Output> {
    let out = Command::new(name)
        .args(args)
        .output()
        .with_context(|| format!("running {name}"))?;
    ensure!(
        out.status.success(),
        "{name} {args:?}: {}",
        text(&out.stderr)
    );
    Ok(out)
}

/// A two-layer image made by umoci in the OCI layout `dir/name` (tag `v1`): a directory tree with
/// an executable and a symlink, then a layer that deletes one file (a whiteout) and adds another.
/// `marker` makes the blobs unique to this image.
fn make_layout(dir: &Path, name: &str, marker: &str) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    coffer_tests::require_tool("umoci");
    let layout = dir.join(name);
    let image = format!("{}:v1", layout.display());
    let bundle = dir.join(format!("{name}-bundle"));
    let bundle_s = bundle.display().to_string();
    tool(
        "umoci",
        &["init", "--layout", &layout.display().to_string()],
    )?;
    tool("umoci", &["new", "--image", &image])?;
    tool("umoci", &["unpack", "--image", &image, &bundle_s])?;
    let app = bundle.join("rootfs/app");
    std::fs::create_dir_all(app.join("data/nested"))?;
    std::fs::write(app.join("data/old.txt"), format!("old {marker}\n"))?;
    std::fs::write(app.join("data/nested/big.bin"), marker.repeat(50_000))?;
    std::fs::write(app.join("run.sh"), format!("#!/bin/sh\necho {marker}\n"))?;
    std::fs::set_permissions(app.join("run.sh"), std::fs::Permissions::from_mode(0o755))?;
    std::os::unix::fs::symlink("data/old.txt", app.join("link"))?;
    tool("umoci", &["repack", "--image", &image, &bundle_s])?;
    std::fs::remove_dir_all(&bundle)?;
    tool("umoci", &["unpack", "--image", &image, &bundle_s])?;
    std::fs::remove_file(app.join("data/old.txt"))?;
    std::fs::write(app.join("data/new.txt"), format!("new {marker}\n"))?;
    tool("umoci", &["repack", "--image", &image, &bundle_s])?;
    std::fs::remove_dir_all(&bundle)?;
    Ok(layout)
}

/// The digests of the layers of the only image in an OCI layout.
fn layout_layers(layout: &Path) -> anyhow::Result<Vec<String>> {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json"))?)?;
    let digest = index["manifests"][0]["digest"]
        .as_str()
        .context("index entry")?
        .trim_start_matches("sha256:")
        .to_owned();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(digest))?)?;
    manifest["layers"]
        .as_array()
        .context("layers")?
        .iter()
        .map(|l| {
            l["digest"]
                .as_str()
                .map(str::to_owned)
                .context("layer digest")
        })
        .collect()
}

fn skopeo_inspect(reference: &str) -> anyhow::Result<Output> {
    Command::new("skopeo")
        .args([
            "inspect",
            "--tls-verify=false",
            &format!("docker://{reference}"),
        ])
        .output()
        .context("running skopeo")
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
            ensure!(
                text(&out.stderr).contains("its default policy never releases to sample evidence"),
                "the refusal does not explain the default policy: {}",
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

    case!(
        suite,
        "private_registry_with_authfile_or_registry_auth_file",
        (|| {
            // An htpasswd registry: pull, inspect and policy gen read a containers-auth.json
            // (skopeo's format) from --authfile or REGISTRY_AUTH_FILE, accept skopeo's docker://
            // references, and never print the password; without credentials, or over HTTPS to a
            // plain-HTTP registry, the one error line says what to do.
            let private = Registry::start_with_auth(Some(("puller", "auth-file-pass")))?;
            private.push_as(
                &vectors().join("src"),
                "demo/authed:v1",
                Some("puller:auth-file-pass"),
            )?;
            let private_host = format!("127.0.0.1:{}", private.port);
            let reference = format!("{private_host}/demo/authed:v1");
            use base64::Engine as _;
            let auth = serde_json::json!({"auths": {private_host.clone(): {
                "auth": base64::engine::general_purpose::STANDARD.encode("puller:auth-file-pass")
            }}});
            let authfile = dir.join("auth.json");
            std::fs::write(&authfile, auth.to_string())?;
            let coffer_with = |args: &[&str], env_authfile: bool| {
                let mut c = Command::new(coffer());
                c.args(args).env_remove("REGISTRY_AUTH_FILE");
                if env_authfile {
                    c.env("REGISTRY_AUTH_FILE", &authfile);
                }
                c.output().context("running coffer")
            };
            let one_line = |out: &Output, wanted: &str| {
                let err = text(&out.stderr);
                let last: Vec<&str> = err.lines().filter(|l| l.starts_with("coffer: ")).collect();
                ensure!(
                    out.status.code() == Some(125) && last.len() == 1,
                    "expected one error line: {out:?}"
                );
                ensure!(last[0].contains(wanted), "{wanted:?} not in {err}");
                ensure!(!err.contains("auth-file-pass"), "the password was printed");
                Ok(())
            };

            // No credentials: 401, with the hint; over HTTPS: the plain-HTTP hint.
            let out = coffer_with(
                &[
                    "image",
                    "inspect",
                    &reference,
                    "--insecure-registry",
                    &private_host,
                ],
                false,
            )?;
            one_line(
                &out,
                &format!(
                    "registry answered 401 for the manifest of {reference} (hint: authentication required: give credentials for {private_host} with --authfile FILE or REGISTRY_AUTH_FILE"
                ),
            )?;
            let out = coffer_with(&["image", "inspect", &reference], true)?;
            one_line(
                &out,
                &format!(
                    "(hint: this registry speaks plain HTTP: add --insecure-registry {private_host})"
                ),
            )?;

            let plain_root = tree(&dir.join("plain-root"))?;
            let authfile_s = p(&authfile);
            for (how, flag, env) in [
                ("authfile", vec!["--authfile", authfile_s.as_str()], false),
                ("env", vec![], true),
            ] {
                let docker_ref = format!("docker://{reference}");
                let mut inspect = vec!["image", "inspect", &docker_ref];
                inspect.extend(["--insecure-registry", &private_host]);
                inspect.extend(&flag);
                let out = coffer_with(&inspect, env)?;
                ensure!(out.status.success(), "{how} inspect: {}", text(&out.stderr));
                let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
                ensure!(
                    json["cmd"] == serde_json::json!(["/app/hello.txt"]),
                    "{how}: {json}"
                );

                let dest = dir.join(format!("root-authed-{how}"));
                let dest_s = p(&dest);
                let store_s = p(&dir.join(format!("authed-{how}-store")));
                let mut pull = vec!["image", "pull", &docker_ref, "--dest", &dest_s];
                pull.extend(["--store", &store_s, "--insecure-registry", &private_host]);
                pull.extend(&flag);
                let out = coffer_with(&pull, env)?;
                ensure!(out.status.success(), "{how} pull: {}", text(&out.stderr));
                ensure!(
                    !text(&out.stderr).contains("auth-file-pass"),
                    "the password was printed"
                );
                ensure!(tree(&dest)? == plain_root, "{how}: root differs");

                // policy gen resolves the tag with the same credentials.
                let pod = dir.join(format!("authed-{how}.yaml"));
                std::fs::write(
                    &pod,
                    format!(
                        "kind: Pod\nspec:\n  containers:\n  - name: app\n    image: {reference}\n"
                    ),
                )?;
                let init = dir.join(format!("authed-{how}.toml"));
                let pod_s = p(&pod);
                let init_s = p(&init);
                let mut gen_args = vec!["policy", "gen", &pod_s, "-o", &init_s];
                gen_args.extend(["--insecure-registry", &private_host]);
                gen_args.extend(&flag);
                let out = coffer_with(&gen_args, env)?;
                ensure!(
                    out.status.success(),
                    "{how} policy gen: {}",
                    text(&out.stderr)
                );
                let initdata = std::fs::read_to_string(&init)?;
                ensure!(
                    initdata.contains(&format!("{private_host}/demo/authed@sha256:")),
                    "{how}: the tag was not pinned: {initdata}"
                );
                ensure!(
                    !initdata.contains("auth-file-pass") && !initdata.contains("puller"),
                    "credentials reached the initdata"
                );
            }
            Ok(())
        })()
    );

    case!(
        suite,
        "encrypt_registry_to_registry",
        (|| {
            // A plain two-layer image (with a whiteout) pushed by skopeo is encrypted from the
            // registry into the registry by Coffer alone; both Coffer and skopeo decrypt it into
            // the plaintext image's root.
            let layout = make_layout(dir, "multi-layout", "multi")?;
            registry.push(&layout, "demo/multi:v1")?;
            let src = format!("{host}/demo/multi:v1");
            let dst = format!("{host}/demo/multi-enc:v1");
            let out = run(&[
                "image",
                "encrypt",
                "--from",
                &src,
                "--to",
                &dst,
                "--recipient",
                &p(&keys.join("rsa-pub.pem")),
                "--kek",
                &kek,
                "--insecure-registry",
                &host,
                "--store",
                &p(&dir.join("encrypt-store")),
            ])?;
            ensure!(out.status.success(), "encrypt: {}", text(&out.stderr));
            let digest = text(&out.stdout).trim().to_owned();
            ensure!(digest.starts_with("sha256:"), "{digest}");

            let out = run(&["image", "inspect", &dst, "--insecure-registry", &host])?;
            ensure!(out.status.success(), "inspect: {}", text(&out.stderr));
            let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            ensure!(json["digest"] == digest.as_str(), "{json}");
            let layers = json["layers"].as_array().context("layers")?;
            ensure!(layers.len() == 2, "{json}");
            for layer in layers {
                ensure!(
                    layer["encrypted"] == true
                        && layer["jwe_recipients"] == true
                        && layer["broker_wrapped_key"] == true,
                    "{json}"
                );
            }

            let pull = |reference: &str, name: &str, extra: &[&str]| {
                let dest = dir.join(name);
                let dest_s = p(&dest);
                let store_s = p(&dir.join(format!("{name}-store")));
                let mut args = vec!["image", "pull", reference, "--dest", &dest_s];
                args.extend(["--store", &store_s, "--insecure-registry", &host]);
                args.extend(extra);
                anyhow::Ok((dest, run(&args)?))
            };
            let (plain, out) = pull(&src, "multi-plain", &[])?;
            ensure!(out.status.success(), "plain pull: {}", text(&out.stderr));
            let expected = tree(&plain)?;
            ensure!(
                expected.iter().any(|(n, _, _)| n == "app/data/new.txt")
                    && !expected.iter().any(|(n, _, _)| n == "app/data/old.txt")
                    && expected.iter().any(|(n, _, _)| n == "app/link"),
                "unexpected plaintext root: {expected:?}"
            );
            let rsa = p(&keys.join("rsa-priv.pem"));
            for (name, extra) in [
                ("multi-jwe", ["--decryption-key", rsa.as_str()]),
                ("multi-kek", ["--kek", kek.as_str()]),
            ] {
                let (dest, out) = pull(&dst, name, &extra)?;
                ensure!(out.status.success(), "{name} pull: {}", text(&out.stderr));
                ensure!(
                    tree(&dest)? == expected,
                    "{name}: decrypted root differs from the plaintext root"
                );
            }

            // skopeo (containers/ocicrypt) decrypts it too; umoci unpacks what it wrote.
            let skopeo_layout = dir.join("multi-skopeo");
            tool(
                "skopeo",
                &[
                    "copy",
                    "--quiet",
                    "--src-tls-verify=false",
                    "--decryption-key",
                    &rsa,
                    &format!("docker://{dst}"),
                    &format!("oci:{}:v1", p(&skopeo_layout)),
                ],
            )?;
            ensure!(
                layout_layers(&skopeo_layout)? == layout_layers(&layout)?,
                "skopeo's decrypted layers are not the plaintext layers"
            );
            let bundle = dir.join("multi-skopeo-bundle");
            tool(
                "umoci",
                &[
                    "unpack",
                    "--image",
                    &format!("{}:v1", p(&skopeo_layout)),
                    &p(&bundle),
                ],
            )?;
            ensure!(
                tree(&bundle.join("rootfs"))? == expected,
                "skopeo-decrypted root differs from the plaintext root"
            );

            // The other two directions: registry to layout (decrypted by skopeo to the plaintext
            // layers) and layout to registry (decrypted by Coffer to the plaintext root).
            let enc_layout = dir.join("multi-enc-layout");
            let rsa_pub = p(&keys.join("rsa-pub.pem"));
            let out = run(&[
                "image",
                "encrypt",
                "--from",
                &src,
                "--out",
                &p(&enc_layout),
                "--out-tag",
                "v1",
                "--recipient",
                &rsa_pub,
                "--insecure-registry",
                &host,
                "--store",
                &p(&dir.join("encrypt-store")),
            ])?;
            ensure!(
                out.status.success(),
                "encrypt to a layout: {}",
                text(&out.stderr)
            );
            let dec_layout = dir.join("multi-dec-layout");
            tool(
                "skopeo",
                &[
                    "copy",
                    "--quiet",
                    "--decryption-key",
                    &rsa,
                    &format!("oci:{}:v1", p(&enc_layout)),
                    &format!("oci:{}:v1", p(&dec_layout)),
                ],
            )?;
            ensure!(
                layout_layers(&dec_layout)? == layout_layers(&layout)?,
                "skopeo's decryption of the encrypted layout is not the plaintext layers"
            );
            let dst2 = format!("{host}/demo/multi-enc2:v1");
            let out = run(&[
                "image",
                "encrypt",
                "--layout",
                &p(&layout),
                "--tag",
                "v1",
                "--to",
                &dst2,
                "--recipient",
                &rsa_pub,
                "--insecure-registry",
                &host,
            ])?;
            ensure!(
                out.status.success(),
                "encrypt a layout to a registry: {}",
                text(&out.stderr)
            );
            let (dest, out) = pull(&dst2, "multi-jwe2", &["--decryption-key", rsa.as_str()])?;
            ensure!(out.status.success(), "pull: {}", text(&out.stderr));
            ensure!(
                tree(&dest)? == expected,
                "layout-to-registry: decrypted root differs from the plaintext root"
            );

            // Without a key the pull fails with a typed error and creates nothing.
            let (dest, out) = pull(&dst, "multi-nokey", &[])?;
            ensure!(out.status.code() == Some(125), "{out:?}");
            ensure!(
                text(&out.stderr).contains("no matching private key"),
                "{}",
                text(&out.stderr)
            );
            ensure!(!dest.exists(), "a root was created without a key");
            Ok(())
        })()
    );

    case!(
        suite,
        "encrypt_refuses_tampered_or_missing_source",
        (|| {
            let layout = make_layout(dir, "tamper-layout", "tamper")?;
            registry.push(&layout, "demo/tamper:v1")?;
            // Flip one byte of the top layer in the registry's storage (same size).
            let layers = layout_layers(&layout)?;
            let blob = registry.blob_file(layers.last().context("no layers")?);
            let mut bytes = std::fs::read(&blob).with_context(|| format!("{blob:?}"))?;
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x55;
            std::fs::write(&blob, &bytes)?;
            let encrypt = |from: &str, to_repo: &str| {
                run(&[
                    "image",
                    "encrypt",
                    "--from",
                    from,
                    "--to",
                    &format!("{host}/{to_repo}:v1"),
                    "--recipient",
                    &p(&keys.join("rsa-pub.pem")),
                    "--insecure-registry",
                    &host,
                    "--store",
                    &p(&dir.join(format!("{to_repo}-store").replace('/', "-"))),
                ])
            };
            let out = encrypt(&format!("{host}/demo/tamper:v1"), "demo/tamper-enc")?;
            ensure!(out.status.code() == Some(125), "{out:?}");
            ensure!(
                text(&out.stderr).contains("blob digest mismatch"),
                "{}",
                text(&out.stderr)
            );
            ensure!(
                !registry.has_repository("demo/tamper-enc"),
                "something was pushed for a tampered source"
            );

            let out = encrypt(&format!("{host}/demo/absent:v1"), "demo/absent-enc")?;
            ensure!(out.status.code() == Some(125), "{out:?}");
            ensure!(
                text(&out.stderr).contains("no source could serve"),
                "{}",
                text(&out.stderr)
            );
            ensure!(
                !registry.has_repository("demo/absent-enc"),
                "something was pushed for a missing source"
            );
            let out = skopeo_inspect(&format!("{host}/demo/tamper-enc:v1"))?;
            ensure!(!out.status.success(), "the destination tag exists");
            Ok(())
        })()
    );

    case!(
        suite,
        // #21: the tar reader would hold an oversized extension header whole; the decompressor
        // would inflate a bomb: the pull stays under the documented bound and names the refusal.
        "hostile_layers_pull_within_the_memory_bound",
        (|| {
            let bound = coffer_image::PULL_MEMORY_BOUND;
            for (name, bomb, expected) in [
                ("pax", hostile::Bomb::Pax, "PAX extension header of"),
                (
                    "longname",
                    hostile::Bomb::LongName,
                    "GNU long name header of",
                ),
                ("file", hostile::Bomb::File, "decompresses beyond"),
            ] {
                let blob = hostile::gzip_layer(bomb)?;
                let layout = hostile::layout(
                    &dir.join(format!("bomb-{name}")),
                    &blob,
                    &coffer_image::Digest::of(name.as_bytes()),
                )?;
                registry.push(&layout, &format!("demo/bomb-{name}:v1"))?;
                let dest = dir.join(format!("bomb-{name}-root"));
                let m = hostile::pull_measured(
                    &format!("{host}/demo/bomb-{name}:v1"),
                    &dest,
                    &store,
                    &host,
                )?;
                println!(
                    "  {name}: {} KiB gzip'd, peak RSS {} KiB (bound {} KiB)",
                    blob.len() >> 10,
                    m.max_rss_bytes >> 10,
                    bound >> 10
                );
                ensure!(!m.success, "{name}: the pull succeeded");
                ensure!(m.stderr.contains(expected), "{name}: {}", m.stderr);
                ensure!(
                    m.max_rss_bytes < bound,
                    "{name}: peak RSS {} bytes, bound {bound}",
                    m.max_rss_bytes
                );
                ensure!(!dest.exists(), "{name}: a destination was left");
            }
            Ok(())
        })()
    );

    case!(
        suite,
        // #21: a registry serves a same-size substitute for a layer pinned by digest; the
        // substitute inflates to an oversized PAX header. The pull reports the digest mismatch
        // (the download's verdict comes first) and stays under the bound.
        "pinned_layer_substitute_fails_the_digest_within_the_memory_bound",
        (|| {
            let bound = coffer_image::PULL_MEMORY_BOUND;
            let (blob, diff_id) = hostile::honest_layer(&hostile::noise(2 << 20, 21))?;
            let layout = hostile::layout(&dir.join("pinned"), &blob, &diff_id)?;
            let digest = registry.push(&layout, "demo/pinned:v1")?;
            let layer = coffer_image::Digest::of(&blob).to_string();
            let mut substitute = hostile::gzip_layer(hostile::Bomb::Pax)?;
            ensure!(
                substitute.len() <= blob.len(),
                "the substitute ({} bytes) does not fit in {} bytes",
                substitute.len(),
                blob.len()
            );
            substitute.resize(blob.len(), 0);
            std::fs::write(registry.blob_file(&layer), &substitute)?;
            let dest = dir.join("pinned-root");
            let m = hostile::pull_measured(
                &format!("{host}/demo/pinned@{digest}"),
                &dest,
                &dir.join("pinned-store"),
                &host,
            )?;
            println!(
                "  substitute: peak RSS {} KiB (bound {} KiB)",
                m.max_rss_bytes >> 10,
                bound >> 10
            );
            ensure!(!m.success, "the substitute was accepted");
            ensure!(
                m.stderr.contains("blob digest mismatch") && m.stderr.contains(&layer),
                "{}",
                m.stderr
            );
            ensure!(
                m.max_rss_bytes < bound,
                "peak RSS {} bytes, bound {bound}",
                m.max_rss_bytes
            );
            ensure!(!dest.exists(), "a destination was left");
            Ok(())
        })()
    );

    case!(
        suite,
        // #21: SIGTERM (and SIGINT) mid-pull cancel it: no staging directory, no temporary blob,
        // no destination. A SIGKILL leaves both; the next pull with the same store and
        // destination removes them (their process is gone) and succeeds.
        "interrupted_pull_leaves_nothing_and_the_next_pull_sweeps_a_crash",
        (|| {
            use nix::sys::signal::{Signal, kill};
            use nix::unistd::Pid;
            let layout = hostile::big_layout(&dir.join("big"), 192 << 20)?;
            registry.push(&layout, "demo/big:v1")?;
            let reference = format!("{host}/demo/big:v1");
            let start = |dest: &Path, store: &Path| {
                Command::new(coffer())
                    .args(["image", "pull", &reference, "--dest"])
                    .arg(dest)
                    .arg("--store")
                    .arg(store)
                    .args(["--insecure-registry", &host])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .context("starting coffer image pull")
            };
            // Waits (bounded) until the pull has both a staging directory and a temporary blob.
            let mid_pull = |dest: &Path, store: &Path| -> anyhow::Result<()> {
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
                loop {
                    let left = hostile::debris(dest, store)?;
                    let staging = left.iter().any(|p| p.parent() == Some(dir));
                    let blob = left.iter().any(|p| p.starts_with(store.join("tmp")));
                    if staging && blob {
                        return Ok(());
                    }
                    ensure!(
                        std::time::Instant::now() < deadline,
                        "the pull never got mid-way: {left:?}"
                    );
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
            };
            for signal in [Signal::SIGTERM, Signal::SIGINT] {
                let dest = dir.join(format!("big-{signal}"));
                let store = dir.join(format!("big-store-{signal}"));
                let child = start(&dest, &store)?;
                mid_pull(&dest, &store)?;
                kill(Pid::from_raw(i32::try_from(child.id())?), signal)?;
                let out = child.wait_with_output()?;
                let stderr = text(&out.stderr);
                println!("  {signal}: {}", stderr.lines().last().unwrap_or_default());
                ensure!(
                    out.status.code() == Some(130),
                    "{signal}: exit status {:?}, not 130 (interrupted)",
                    out.status.code()
                );
                ensure!(
                    stderr.contains(&format!("interrupted by {signal}")),
                    "{signal}: {stderr}"
                );
                let left = hostile::debris(&dest, &store)?;
                ensure!(left.is_empty(), "{signal}: left {left:?}");
                ensure!(!dest.exists(), "{signal}: a destination was left");
            }

            let dest = dir.join("big-killed");
            let store = dir.join("big-store-killed");
            let mut child = start(&dest, &store)?;
            mid_pull(&dest, &store)?;
            child.kill()?;
            child.wait()?;
            let crashed = hostile::debris(&dest, &store)?;
            ensure!(!crashed.is_empty(), "SIGKILL left nothing to sweep");
            let out = run(&[
                "image",
                "pull",
                &reference,
                "--dest",
                &p(&dest),
                "--store",
                &p(&store),
                "--insecure-registry",
                &host,
            ])?;
            ensure!(
                out.status.success(),
                "pull after a crash: {}",
                text(&out.stderr)
            );
            let left = hostile::debris(&dest, &store)?;
            ensure!(
                left.is_empty(),
                "the crash's debris {crashed:?} is still there: {left:?}"
            );
            println!(
                "  SIGKILL left {} paths; the next pull removed them",
                crashed.len()
            );
            Ok(())
        })()
    );

    case!(
        suite,
        // REG-07: `--stall-timeout` bounds how long a silent registry holds a pull. A registry
        // that takes the request and never answers is cut off after the window given (2 s, not
        // the default 60 s), naming the registry; nothing is left. Out-of-range values are usage
        // errors, and --help documents the flag.
        "reg07_stall_timeout_cuts_off_a_silent_registry",
        (|| {
            use std::io::Read;
            use std::time::{Duration, Instant};
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            let silent = format!("127.0.0.1:{}", listener.local_addr()?.port());
            // At most 8 connections, each held (request read, no answer) for at most 30 s.
            std::thread::spawn(move || {
                for stream in listener.incoming().take(8).flatten() {
                    std::thread::spawn(move || {
                        let mut stream = stream;
                        let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
                        let mut buf = [0u8; 4096];
                        let _ = stream.read(&mut buf);
                        std::thread::sleep(Duration::from_secs(30));
                    });
                }
            });
            let dest = dir.join("silent-dest");
            let store = dir.join("silent-store");
            let reference = format!("{silent}/demo/silent:v1");
            let pull = |stall: &str| {
                run(&[
                    "image",
                    "pull",
                    &reference,
                    "--dest",
                    &p(&dest),
                    "--store",
                    &p(&store),
                    "--insecure-registry",
                    &silent,
                    &format!("--stall-timeout={stall}"),
                ])
            };
            let started = Instant::now();
            let out = pull("2")?;
            let took = started.elapsed();
            let stderr = text(&out.stderr);
            // The error line, after the log's warnings.
            let error = stderr.lines().last().unwrap_or_default();
            println!("  cut off after {took:?}: {error}");
            ensure!(!out.status.success(), "the pull succeeded: {stderr}");
            ensure!(
                error.starts_with("coffer: pulling")
                    && error.contains("stalled")
                    && error.contains("in 2s")
                    && error.contains(&silent),
                "{stderr}"
            );
            ensure!(
                took < Duration::from_secs(20),
                "cut off only after {took:?}"
            );
            ensure!(!dest.exists(), "a destination was left");
            let left = hostile::debris(&dest, &store)?;
            ensure!(left.is_empty(), "left {left:?}");
            for bad in ["0", "3601", "-1", "1.5", "soon"] {
                let out = pull(bad)?;
                ensure!(
                    out.status.code() == Some(2),
                    "--stall-timeout {bad}: exit status {:?}: {}",
                    out.status.code(),
                    text(&out.stderr)
                );
                ensure!(
                    text(&out.stderr).contains("--stall-timeout"),
                    "--stall-timeout {bad}: {}",
                    text(&out.stderr)
                );
            }
            let help = run(&["image", "pull", "--help"])?;
            ensure!(
                text(&help.stdout).contains("--stall-timeout <SECS>"),
                "{}",
                text(&help.stdout)
            );
            Ok(())
        })()
    );

    suite.finish()
}
