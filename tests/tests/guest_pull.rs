//! Guest pull end to end, each case on a real VM: the host names only an image reference; the
//! guest pulls it from a real registry through a vsock registry tunnel, verifies it (digests,
//! diff_ids, the initdata signature policy) and runs it. Refusals leave nothing behind.
// Test harness code: a failed expectation is a test failure.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Output, Stdio};

use anyhow::{Context, ensure};
use coffer_policies::initdata::{Algorithm, Entry, Initdata};
use coffer_tests::kbs::{ALLOW_SAMPLE_POLICY, Broker, TRUST_DOMAIN};
use coffer_tests::netns::{Forwarder, NetNs, veth_pair};
use coffer_tests::registry::Registry;
use coffer_tests::{
    Suite, assert_nothing_left, case, coffer, guest_image, identity_pod, yaml_quoted,
};

struct Ctx {
    image_dir: PathBuf,
    state: PathBuf,
    work: PathBuf,
    host: String,
}

impl Ctx {
    /// Initdata whose guest-pull configuration trusts the test registry over plain HTTP, plus
    /// `extra` entries.
    fn initdata(&self, name: &str, extra: &[(Entry, &str)]) -> anyhow::Result<PathBuf> {
        self.initdata_for(name, &self.host, extra)
    }

    /// [`Ctx::initdata`] for the registry at `host` (the test registry as the guest reaches it).
    fn initdata_for(
        &self,
        name: &str,
        host: &str,
        extra: &[(Entry, &str)],
    ) -> anyhow::Result<PathBuf> {
        let mut entries = BTreeMap::new();
        entries.insert(
            Entry::Registries,
            format!("[[registry]]\nhost = \"{host}\"\ninsecure = true\n"),
        );
        for (entry, text) in extra {
            entries.insert(*entry, (*text).to_owned());
        }
        let initdata = Initdata::build(Algorithm::Sha384, &entries)?;
        let path = self.work.join(format!("{name}.toml"));
        std::fs::write(&path, initdata.raw())?;
        Ok(path)
    }

    fn run(
        &self,
        image: &str,
        initdata: &Path,
        tunnel: bool,
        cmd: &[&str],
    ) -> anyhow::Result<Output> {
        let tunnels: &[&str] = if tunnel { &[&self.host] } else { &[] };
        self.run_with(image, initdata, tunnels, cmd)
    }

    fn run_with(
        &self,
        image: &str,
        initdata: &Path,
        tunnels: &[&str],
        cmd: &[&str],
    ) -> anyhow::Result<Output> {
        let mut c = Command::new(coffer());
        c.args(["sandbox", "run", "--image", image, "--image-dir"])
            .arg(&self.image_dir)
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--initdata")
            .arg(initdata);
        for tunnel in tunnels {
            c.args(["--registry", tunnel]);
        }
        c.arg("--")
            .args(cmd)
            .stdin(Stdio::null())
            .output()
            .context("running coffer")
    }

    /// Initdata naming the broker at `url`, attested to with sample evidence (this host has no
    /// TEE).
    fn broker_initdata(&self, name: &str, url: &str) -> anyhow::Result<PathBuf> {
        self.initdata(
            name,
            &[(Entry::KbsUrl, url), (Entry::KbsEvidence, "sample")],
        )
    }

    /// Initdata from `coffer policy gen` for the pod manifest `yaml`, naming the broker at `url`
    /// (sample evidence).
    fn policy_gen(&self, name: &str, yaml: &str, url: &str) -> anyhow::Result<PathBuf> {
        let pod = self.work.join(format!("{name}-pod.yaml"));
        std::fs::write(&pod, yaml)?;
        let initdata = self.work.join(format!("{name}-initdata.toml"));
        let out = Command::new(coffer())
            .args(["policy", "gen"])
            .arg(&pod)
            .args(["--insecure-registry", &self.host, "--kbs-url", url])
            .args(["--kbs-evidence", "sample", "-o"])
            .arg(&initdata)
            .output()?;
        ensure!(out.status.success(), "policy gen: {}", text(&out.stderr));
        Ok(initdata)
    }

    /// `sh -c script` in `image` with `initdata`, the registry and the broker at `broker_url`
    /// tunnelled, and `extra` flags for `sandbox run`.
    fn run_script(
        &self,
        image: &str,
        initdata: &Path,
        broker_url: &str,
        extra: &[&str],
        script: &str,
    ) -> anyhow::Result<Output> {
        self.script_command(image, initdata, broker_url, extra, script)
            .output()
            .context("running coffer")
    }

    /// The `coffer sandbox run` of [`Ctx::run_script`], not started.
    fn script_command(
        &self,
        image: &str,
        initdata: &Path,
        broker_url: &str,
        extra: &[&str],
        script: &str,
    ) -> Command {
        let mut c = Command::new(coffer());
        c.args(["sandbox", "run", "--image", image, "--image-dir"])
            .arg(&self.image_dir)
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--initdata")
            .arg(initdata)
            .args(extra)
            .args(["--registry", &self.host])
            .args(["--registry", broker_url.trim_start_matches("http://")])
            .args(["--", "/bin/sh", "-c", script])
            .stdin(Stdio::null());
        c
    }

    /// `app` printed exactly `want` (the secret, read inside the guest) and `other` was refused
    /// before starting, with `why`; the secret never reached the host side (coffer's own
    /// output, the sandbox state).
    fn secret_only_for_app(
        &self,
        app: Output,
        want: &str,
        other: Output,
        why: &str,
    ) -> anyhow::Result<()> {
        ensure!(
            app.status.code() == Some(0) && text(&app.stdout) == want,
            "app: exit {:?}, stdout {:?}, stderr {}",
            app.status.code(),
            text(&app.stdout),
            text(&app.stderr)
        );
        let stderr = text(&other.stderr);
        ensure!(
            other.status.code() == Some(125) && stderr.contains(why),
            "other: exit {:?}, stdout {:?}, stderr {stderr}",
            other.status.code(),
            text(&other.stdout)
        );
        for out in [&app.stderr, &other.stdout, &other.stderr] {
            ensure!(
                !text(out).contains(SECRET),
                "the secret leaked: {}",
                text(out)
            );
        }
        self.assert_clean()
    }

    /// A run that exited 0 having printed exactly `want`, and left nothing behind.
    fn printed(&self, out: Output, want: &str) -> anyhow::Result<()> {
        ensure!(
            out.status.code() == Some(0) && text(&out.stdout) == want,
            "exit {:?}, stdout {:?}, stderr {}",
            out.status.code(),
            text(&out.stdout),
            text(&out.stderr)
        );
        self.assert_clean()
    }

    fn assert_clean(&self) -> anyhow::Result<()> {
        assert_nothing_left(&self.state)
    }

    /// A run that failed before the container started (exit 125, `why` in the error) and left
    /// nothing behind.
    fn refused(&self, out: Output, why: &str) -> anyhow::Result<()> {
        let stderr = text(&out.stderr);
        ensure!(
            out.status.code() == Some(125),
            "exit {:?}: {stderr}",
            out.status.code()
        );
        ensure!(stderr.contains(why), "{stderr}");
        self.assert_clean()
    }
}

fn vectors() -> PathBuf {
    coffer_tests::vectors_dir().join("ocicrypt")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A one-layer busybox image made by umoci, as an OCI layout.
fn busybox_layout(work: &Path) -> anyhow::Result<PathBuf> {
    busybox_layout_with(
        work,
        "busybox",
        &[("pulled.txt", b"pulled in the guest\n".as_slice())],
    )
}

/// A one-layer busybox image with `files` (path in the root, content; mode 0755, so a program
/// can be one), as the OCI layout `<work>/<name>-layout` (tag v1).
fn busybox_layout_with(
    work: &Path,
    name: &str,
    files: &[(&str, &[u8])],
) -> anyhow::Result<PathBuf> {
    coffer_tests::umoci_layout(work, name, |root| {
        use std::os::unix::fs::PermissionsExt as _;
        for (path, content) in files {
            let file = root.join(path);
            std::fs::write(&file, content)?;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755))?;
        }
        Ok(())
    })
}

/// `coffer image encrypt` of the layout `layout` (tag v1) into `out`, the layer key wrapped
/// with the broker-held KEK in `kek_file` (kid `kbs:///default/key/1`).
fn encrypt_with_kek(layout: &Path, out: &Path, kek_file: &Path) -> anyhow::Result<()> {
    let run = Command::new(coffer())
        .args(["image", "encrypt", "--tag", "v1", "--layout"])
        .arg(layout)
        .arg("--out")
        .arg(out)
        .arg("--kek")
        .arg(format!("kbs:///default/key/1={}", kek_file.display()))
        .output()?;
    ensure!(run.status.success(), "encrypt: {}", text(&run.stderr));
    Ok(())
}

/// A P-256 signing key (PKCS#8 PEM, as `openssl genpkey` writes it) at `<work>/<name>.key`.
fn cosign_key(work: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let key = work.join(format!("{name}.key"));
    let out = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
        ])
        .arg(&key)
        .output()?;
    ensure!(out.status.success(), "openssl: {}", text(&out.stderr));
    Ok(key)
}

/// `coffer image sign` of `image` with `key`; returns the public key's PEM.
fn sign(image: &str, key: &Path, insecure: &str) -> anyhow::Result<String> {
    let public = key.with_extension("pub");
    let out = Command::new(coffer())
        .args([
            "image",
            "sign",
            image,
            "--insecure-registry",
            insecure,
            "--key",
        ])
        .arg(key)
        .arg("--public-key-out")
        .arg(&public)
        .output()?;
    ensure!(out.status.success(), "sign: {}", text(&out.stderr));
    Ok(std::fs::read_to_string(public)?)
}

/// A signature policy admitting `repository` only when signed by the key whose PEM is given.
fn sigstore_policy(repository: &str, public_pem: &str) -> String {
    use base64::Engine as _;
    let key = base64::engine::general_purpose::STANDARD.encode(public_pem);
    format!(
        r#"{{"default":[{{"type":"reject"}}],"transports":{{"docker":{{"{repository}":[{{"type":"sigstoreSigned","keyData":"{key}","signedIdentity":{{"type":"matchRepository"}}}}]}}}}}}"#
    )
}

/// A copy of the OCI layout `from` (tag v1) at `to` whose first encrypted layer has one
/// ciphertext byte flipped; blob digests and the manifest are rewritten to match, so only the
/// ocicrypt authentication can notice.
fn tamper_ciphertext(from: &Path, to: &Path) -> anyhow::Result<()> {
    let layout = coffer_tests::layout::LayoutCopy::new(from, to)?;
    let mut manifest = layout.manifest()?;
    let layers = manifest["layers"].as_array_mut().context("layers")?;
    let layer = layers
        .iter_mut()
        .find(|l| {
            l["mediaType"]
                .as_str()
                .is_some_and(|m| m.ends_with("+encrypted"))
        })
        .context("no encrypted layer")?;
    let mut bytes = std::fs::read(layout.blob(layer["digest"].as_str().context("digest")?))?;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    layer["digest"] = layout.put(&bytes)?.into();
    layout.set_manifest(&manifest)
}

/// The symmetric key of the layer whose descriptor carries `annotations` (from the encrypted
/// layout), unwrapped with the broker's KEK — what a leak would look like.
fn layer_symkey(layout: &Path, kek_file: &Path) -> anyhow::Result<Vec<u8>> {
    use base64::Engine as _;
    use coffer_image::{Decryptor, LocalKek};
    let read = |digest: &str| {
        std::fs::read(
            layout
                .join("blobs/sha256")
                .join(digest.trim_start_matches("sha256:")),
        )
    };
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json"))?)?;
    let manifest: serde_json::Value = serde_json::from_slice(&read(
        index["manifests"][0]["digest"].as_str().context("index")?,
    )?)?;
    let annotations: std::collections::BTreeMap<String, String> =
        serde_json::from_value(manifest["layers"][0]["annotations"].clone())?;
    let kek = LocalKek::default().with_key_file("kbs:///default/key/1", kek_file)?;
    let decryptor = Decryptor::default().with_unwrapper(std::sync::Arc::new(kek));
    let private =
        tokio::runtime::Runtime::new()?.block_on(decryptor.private_options(&annotations))?;
    let opts: serde_json::Value = serde_json::from_slice(&private)?;
    let symkey = opts["symkey"].as_str().context("symkey")?;
    Ok(base64::engine::general_purpose::STANDARD.decode(symkey)?)
}

fn main() -> ExitCode {
    let work = tempfile::tempdir().expect("tempdir");
    let mut suite = Suite::new("guest_pull");
    let image = guest_image();
    let registry = match Registry::start() {
        Ok(r) => r,
        Err(err) => {
            suite.record("registry", std::time::Instant::now(), Err(err));
            return suite.finish();
        }
    };
    let ctx = Ctx {
        image_dir: image.vmlinux.parent().unwrap().to_owned(),
        state: work.path().join("state"),
        work: work.path().to_owned(),
        host: format!("127.0.0.1:{}", registry.port),
    };
    let mut pinned = String::new();
    let mut encrypted_ref = String::new();
    let kek_file = vectors().join("keys/kek-default-key-1.bin");
    // The broker: releases to sample evidence (this host has no TEE), holds the image KEK at
    // default/key/1 and one secret.
    let broker = std::fs::read(&kek_file)
        .map_err(anyhow::Error::from)
        .and_then(|kek| Broker::start(work.path(), "kbs", Some(ALLOW_SAMPLE_POLICY), &kek))
        .and_then(|b| {
            b.put("default/secret/db", SECRET.as_bytes())?;
            Ok(b)
        });

    case!(
        suite,
        "pulls_in_the_guest_and_runs",
        (|| {
            let layout = busybox_layout(&ctx.work)?;
            let digest = registry.push(&layout, "guest/busybox:v1")?;
            pinned = format!("{}/guest/busybox@{digest}", ctx.host);
            let initdata = ctx.initdata("plain", &[])?;
            let out = ctx.run(&pinned, &initdata, true, &["/bin/cat", "/pulled.txt"])?;
            ctx.printed(
                out,
                "pulled in the guest
",
            )
        })()
    );

    case!(
        suite,
        // #22: the policy input's state.containers[].image_digest is the manifest digest the
        // guest pulled and verified: a policy that starts only that digest runs the container,
        // one expecting another digest refuses it (and its reason shows the digest it saw).
        "the_policy_sees_the_pulled_image_digest",
        (|| {
            ensure!(!pinned.is_empty(), "needs the pushed image");
            let digest = pinned.rsplit_once('@').map(|(_, d)| d).unwrap_or_default();
            let policy_for = |expected: &str| {
                format!(
                    "{}\ndenials contains msg if {{\n\tkind == \"StartContainer\"\n\tsome c in input.state.containers\n\tc.id == input.request.container_id\n\tc.image_digest != \"{expected}\"\n\tmsg := sprintf(\"StartContainer: image_digest %s\", [c.image_digest])\n}}\n",
                    coffer_policies::SANDBOX_POLICY
                )
            };
            let same = ctx.initdata("digest-same", &[(Entry::Policy, &policy_for(digest))])?;
            let out = ctx.run(&pinned, &same, true, &["/bin/cat", "/pulled.txt"])?;
            ctx.printed(out, "pulled in the guest\n")?;
            let other_digest = format!("sha256:{}", "0".repeat(64));
            let other = ctx.initdata(
                "digest-other",
                &[(Entry::Policy, &policy_for(&other_digest))],
            )?;
            let out = ctx.run(&pinned, &other, true, &["/bin/true"])?;
            ctx.refused(out, &format!("StartContainer: image_digest {digest}"))
        })()
    );

    case!(
        suite,
        // REG-05: an image the initdata signature policy does not admit is never unpacked.
        "signature_policy_refuses_unsigned_image",
        (|| {
            ensure!(!pinned.is_empty(), "needs the pushed image");
            let policy = r#"{"default":[{"type":"reject"}]}"#;
            let initdata = ctx.initdata("reject", &[(Entry::ImagePolicy, policy)])?;
            ctx.refused(ctx.run(&pinned, &initdata, true, &["/bin/true"])?, "policy")
        })()
    );

    case!(
        suite,
        // REG-01: a reference pinned to another digest is refused before anything is visible.
        "wrong_digest_is_refused",
        (|| {
            ensure!(!pinned.is_empty(), "needs the pushed image");
            let initdata = ctx.initdata("plain2", &[])?;
            let wrong = format!("{}/guest/busybox@sha256:{}", ctx.host, "0".repeat(64));
            ctx.refused(ctx.run(&wrong, &initdata, true, &["/bin/true"])?, "pulling")
        })()
    );

    case!(
        suite,
        "no_tunnel_no_network",
        (|| {
            ensure!(!pinned.is_empty(), "needs the pushed image");
            let initdata = ctx.initdata("plain3", &[])?;
            ctx.refused(
                ctx.run(&pinned, &initdata, false, &["/bin/true"])?,
                "pulling",
            )
        })()
    );

    case!(
        suite,
        "encrypted_image_key_from_the_broker",
        (|| {
            // The layer key is wrapped with a KEK only the broker holds; the guest attests (sample
            // evidence, opted into by initdata on this TEE-less host) to get it.
            let layout = ctx.work.join("busybox-layout");
            ensure!(layout.is_dir(), "needs the busybox layout");
            let encrypted = ctx.work.join("busybox-encrypted");
            encrypt_with_kek(&layout, &encrypted, &kek_file)?;
            let digest = registry.push(&encrypted, "guest/secret:v1")?;
            let reference = format!("{}/guest/secret@{digest}", ctx.host);
            encrypted_ref.clone_from(&reference);
            let broker = broker.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
            let broker_addr = broker.url.trim_start_matches("http://").to_owned();

            // Without the broker in initdata there is no key: refused, nothing runs.
            let no_broker = ctx.initdata("no-broker", &[])?;
            let out = ctx.run_with(&reference, &no_broker, &[&ctx.host], &["/bin/true"])?;
            ensure!(
                out.status.code() == Some(125),
                "exit {:?}: {}",
                out.status.code(),
                text(&out.stderr)
            );
            ctx.assert_clean()?;

            let initdata = ctx.broker_initdata("with-broker", &broker.url)?;
            let out = ctx.run_with(
                &reference,
                &initdata,
                &[&ctx.host, &broker_addr],
                &["/bin/cat", "/pulled.txt"],
            )?;
            ctx.printed(
                out,
                "pulled in the guest
",
            )
        })()
    );

    case!(
        suite,
        // #10: the same encrypted image with the pod network in place of tunnels: the VM's NIC is
        // wired into a pod namespace (a veth to a node namespace the test made), the registry and
        // the broker answer on the node's address (forwarded to them on the test's loopback), and
        // the guest reaches both over its own network: pull, attestation, key release, decrypt.
        "encrypted_image_over_the_pod_network",
        (|| {
            ensure!(!encrypted_ref.is_empty(), "needs the encrypted image");
            let broker = broker.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
            let node_ip = std::net::Ipv4Addr::new(198, 18, 3, 1);
            let node = NetNs::create("gp-node")?;
            let pod = NetNs::create("gp-pod")?;
            veth_pair(
                &node,
                "vgp0",
                node_ip,
                &pod,
                std::net::Ipv4Addr::new(198, 18, 3, 2),
            )?;
            let to_node =
                |target: std::net::SocketAddr| Forwarder::start(&node, (node_ip, 0).into(), target);
            let registry_on_node = to_node((std::net::Ipv4Addr::LOCALHOST, registry.port).into())?;
            let broker_on_node = to_node(broker.url.trim_start_matches("http://").parse()?)?;
            let host = registry_on_node.addr.to_string();
            let initdata = ctx.initdata_for(
                "pod-network",
                &host,
                &[
                    (Entry::KbsUrl, &format!("http://{}", broker_on_node.addr)),
                    (Entry::KbsEvidence, "sample"),
                ],
            )?;
            let reference = encrypted_ref.replacen(&ctx.host, &host, 1);
            let out = Command::new(coffer())
                .args(["sandbox", "run", "--image", &reference, "--image-dir"])
                .arg(&ctx.image_dir)
                .arg("--state-dir")
                .arg(&ctx.state)
                .arg("--initdata")
                .arg(&initdata)
                .arg("--netns")
                .arg(pod.path())
                .args(["--", "/bin/cat", "/pulled.txt"])
                .stdin(Stdio::null())
                .output()
                .context("running coffer")?;
            ctx.printed(out, "pulled in the guest\n")?;
            let qdiscs = pod
                .command("tc")
                .args(["qdisc", "show", "dev", "eth0"])
                .output()?;
            ensure!(
                !String::from_utf8_lossy(&qdiscs.stdout).contains("ingress"),
                "the run left its tc redirect on the pod's eth0"
            );
            Ok(())
        })()
    );

    case!(
        suite,
        // #8, REG-05: the initdata signature policy names the signer's key; an image signed by
        // another key is refused before any layer is downloaded, the same image signed by the
        // named key runs.
        "signature_by_another_key_is_refused",
        (|| {
            ensure!(!pinned.is_empty(), "needs the pushed image");
            let signer = cosign_key(&ctx.work, "signer")?;
            let other = cosign_key(&ctx.work, "other")?;
            let signer_pub = sign(&pinned, &signer, &ctx.host)?;
            let other_pub = {
                // Only its public half is used: the policy trusts "other", the image is not
                // signed by it.
                let out = Command::new("openssl")
                    .args(["pkey", "-pubout", "-in"])
                    .arg(&other)
                    .output()?;
                ensure!(out.status.success(), "openssl pkey: {}", text(&out.stderr));
                text(&out.stdout)
            };
            let repository = format!("{}/guest/busybox", ctx.host);
            let trusts_other = ctx.initdata(
                "sig-other",
                &[(
                    Entry::ImagePolicy,
                    &sigstore_policy(&repository, &other_pub),
                )],
            )?;
            ctx.refused(
                ctx.run(&pinned, &trusts_other, true, &["/bin/true"])?,
                "signature does not verify with the policy key",
            )?;
            let trusts_signer = ctx.initdata(
                "sig-signer",
                &[(
                    Entry::ImagePolicy,
                    &sigstore_policy(&repository, &signer_pub),
                )],
            )?;
            let out = ctx.run(&pinned, &trusts_signer, true, &["/bin/cat", "/pulled.txt"])?;
            ctx.printed(
                out,
                "pulled in the guest
",
            )
        })()
    );

    case!(
        suite,
        // #8, INV-6: one flipped ciphertext byte (digests rewritten to match) fails the ocicrypt
        // authentication inside the guest; nothing runs and nothing is left.
        "tampered_ciphertext_is_refused",
        (|| {
            let encrypted = ctx.work.join("busybox-encrypted");
            ensure!(encrypted.is_dir(), "needs the encrypted layout");
            let tampered = ctx.work.join("busybox-tampered");
            tamper_ciphertext(&encrypted, &tampered)?;
            let digest = registry.push(&tampered, "guest/tampered:v1")?;
            let reference = format!("{}/guest/tampered@{digest}", ctx.host);
            let broker = broker.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
            let broker_addr = broker.url.trim_start_matches("http://").to_owned();
            let initdata = ctx.broker_initdata("tampered", &broker.url)?;
            let out = ctx.run_with(
                &reference,
                &initdata,
                &[&ctx.host, &broker_addr],
                &["/bin/cat", "/pulled.txt"],
            )?;
            ensure!(
                !text(&out.stdout).contains("pulled in the guest"),
                "tampered image ran"
            );
            ctx.refused(out, "hmac mismatch")
        })()
    );

    case!(
        suite,
        // #8: the image key (the broker's KEK and the layer key it wraps) and the decrypted
        // content never reach a host-side file, log or the registry — scanned while the
        // container runs (sandbox state, console log) and after (coffer's output, broker log).
        "key_and_plaintext_never_reach_the_host",
        (|| {
            let broker = broker.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
            let broker_addr = broker.url.trim_start_matches("http://").to_owned();
            let marker = format!(
                "coffer-plaintext-marker-{:x}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .as_nanos()
            );
            let layout =
                busybox_layout_with(&ctx.work, "leak", &[("secret.txt", marker.as_bytes())])?;
            let encrypted = ctx.work.join("leak-encrypted");
            encrypt_with_kek(&layout, &encrypted, &kek_file)?;
            let digest = registry.push(&encrypted, "guest/leak:v1")?;
            let reference = format!("{}/guest/leak@{digest}", ctx.host);
            let needles = [
                coffer_tests::scan::Needle::text("plaintext marker", &marker),
                coffer_tests::scan::Needle::key("broker KEK", &std::fs::read(&kek_file)?),
                coffer_tests::scan::Needle::key("layer key", &layer_symkey(&encrypted, &kek_file)?),
            ];
            // The plaintext layer's digests must not name any blob the registry holds.
            let plain_index: serde_json::Value =
                serde_json::from_slice(&std::fs::read(layout.join("index.json"))?)?;
            let plain_manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(
                layout.join("blobs/sha256").join(
                    plain_index["manifests"][0]["digest"]
                        .as_str()
                        .context("index")?
                        .trim_start_matches("sha256:"),
                ),
            )?)?;
            let plain_layer = plain_manifest["layers"][0]["digest"]
                .as_str()
                .context("layer")?
                .to_owned();

            let initdata = ctx.broker_initdata("leak", &broker.url)?;
            let mut c = Command::new(coffer());
            c.args(["sandbox", "run", "--image", &reference, "--image-dir"])
                .arg(&ctx.image_dir)
                .arg("--state-dir")
                .arg(&ctx.state)
                .arg("--initdata")
                .arg(&initdata)
                .args([
                    "--registry",
                    &ctx.host,
                    "--registry",
                    &broker_addr,
                    "--timings",
                ])
                .args(["--", "/bin/sh", "-c", "sha256sum /secret.txt; sleep 6"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut child = c.spawn()?;
            let mut stdout = std::io::BufReader::new(child.stdout.take().context("stdout")?);
            let mut first = String::new();
            std::io::BufRead::read_line(&mut stdout, &mut first)?;
            // The container holds the plaintext (its digest proves it) while the host is scanned.
            let expected = coffer_image::Digest::of(marker.as_bytes()).hex().to_owned();
            let running = coffer_tests::scan::scan(
                &[&ctx.state, &registry.storage(), &broker.log],
                &[],
                &needles,
            );
            let files_seen = coffer_tests::scan::files(&[&ctx.state]).len();
            let mut rest = String::new();
            std::io::Read::read_to_string(&mut stdout, &mut rest)?;
            let mut stderr = Vec::new();
            std::io::Read::read_to_end(&mut child.stderr.take().context("stderr")?, &mut stderr)?;
            let status = child.wait()?;
            ensure!(
                status.code() == Some(0) && first.starts_with(&expected),
                "exit {:?}, stdout {first:?}{rest:?}, stderr {}",
                status.code(),
                text(&stderr)
            );
            ensure!(files_seen > 0, "the sandbox state was not there to scan");
            let after = coffer_tests::scan::scan(
                &[&registry.storage(), &broker.log],
                &[
                    ("coffer stderr", &stderr),
                    ("coffer stdout", format!("{first}{rest}").as_bytes()),
                ],
                &needles,
            );
            ensure!(
                running.is_empty() && after.is_empty(),
                "secrets found on the host side: {running:?} {after:?}"
            );
            let blobs = coffer_tests::scan::files(&[&registry.storage().join("blobs")]);
            ensure!(
                !blobs.iter().any(|b| b
                    .display()
                    .to_string()
                    .contains(plain_layer.trim_start_matches("sha256:"))),
                "the plaintext layer {plain_layer} is in the registry"
            );
            ctx.assert_clean()
        })()
    );

    case!(
        suite,
        "sealed_secret_only_for_its_container",
        (|| {
            // #8: a pod of two containers from one image; only "app" lists the secret. The
            // initdata's confidential policy comes from `coffer policy gen`.
            ensure!(!pinned.is_empty(), "needs the pushed image");
            let broker = broker.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
            let sealed = "sealed.kbs:///default/secret/db";
            let initdata = ctx.policy_gen(
                "sealed",
                &logs_pod(
                    "sealed",
                    &format!(
                        r#"  containers:
    - name: app
      image: {pinned}
      command: ["/bin/sh", "-c", "echo app:$DB"]
      env:
        - {{name: PATH, value: "{path}"}}
        - {{name: HOME, value: /root}}
        - {{name: DB, value: "{sealed}"}}
    - name: other
      image: {pinned}
      command: ["/bin/sh", "-c", "echo other:$DB"]
      env:
        - {{name: PATH, value: "{path}"}}
        - {{name: HOME, value: /root}}
"#,
                        path = coffer_runtime::spec::DEFAULT_ENV[0].trim_start_matches("PATH="),
                    ),
                ),
                &broker.url,
            )?;
            let env = format!("DB={sealed}");
            let run = |script: &str| {
                ctx.run_script(&pinned, &initdata, &broker.url, &["-e", &env], script)
            };
            let app = run("echo app:$DB")?;
            let other = run("echo other:$DB")?;
            ctx.secret_only_for_app(
                app,
                &format!("app:{SECRET}\n"),
                other,
                "names secret kbs:///default/secret/db",
            )
        })()
    );

    case!(
        suite,
        "sealed_file_only_for_its_container",
        (|| {
            // #8: a Secret volume of sealed references becomes a file only the guest reads, for
            // the container whose entry lists it (policy gen pins the mount and the secret).
            ensure!(!pinned.is_empty(), "needs the pushed image");
            let broker = broker.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
            let show = "cat /run/secrets/db; echo; stat -c '%a %u' /run/secrets/db; echo x > /run/secrets/db || echo read-only";
            let initdata = ctx.policy_gen(
                "sealed-files",
                &logs_pod(
                    "sealed-files",
                    &format!(
                        r#"  securityContext: {{runAsUser: 1000, runAsGroup: 1000}}
  volumes:
    - name: creds
      secret: {{secretName: db}}
  containers:
    - name: app
      image: {pinned}
      command: ["/bin/sh", "-c", "{show}"]
      env: [{{name: PATH, value: "{path}"}}, {{name: HOME, value: /root}}]
      volumeMounts: [{{name: creds, mountPath: /run/secrets}}]
    - name: other
      image: {pinned}
      command: ["/bin/sh", "-c", "{show}"]
      env: [{{name: PATH, value: "{path}"}}, {{name: HOME, value: /}}]
---
apiVersion: v1
kind: Secret
metadata: {{name: db}}
stringData: {{db: "sealed.kbs:///default/secret/db"}}
"#,
                        path = coffer_runtime::spec::DEFAULT_ENV[0].trim_start_matches("PATH="),
                    ),
                ),
                &broker.url,
            )?;
            let run = |home: &str| {
                let home = format!("HOME={home}");
                let file = "/run/secrets/db=kbs:///default/secret/db";
                ctx.run_script(
                    &pinned,
                    &initdata,
                    &broker.url,
                    &["-u", "1000:1000", "-e", &home, "--sealed-file", file],
                    show,
                )
            };
            let app = run("/root")?;
            let other = run("/")?;
            ctx.secret_only_for_app(
                app,
                &format!("{SECRET}\n400 1000\nread-only\n"),
                other,
                "mount /run/secrets/db",
            )
        })()
    );

    case!(
        suite,
        // #9: the broker issues the pod's SPIFFE identity (named by the measured initdata) to the
        // attested guest only, for a key made in the guest, and the agent gives it only to the
        // container whose entry lists the identity mount; evidence the broker refuses gets none.
        "workload_identity_only_for_its_container",
        (|| {
            ensure!(!pinned.is_empty(), "needs the pushed image");
            let broker = broker.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
            let show = "cat /run/spiffe/svid.pem; stat -c '%a %u' /run/spiffe/svid_key.pem; echo x > /run/spiffe/svid_key.pem || echo read-only";
            let yaml = identity_pod_yaml(&pinned, show);
            let run = |home: &str, initdata: &Path, url: &str| {
                let home = format!("HOME={home}");
                let flags = ["-u", "1000:1000", "-e", &home, "--identity", "/run/spiffe"];
                ctx.run_script(&pinned, initdata, url, &flags, show)
            };
            let initdata = ctx.policy_gen("identity", &yaml, &broker.url)?;
            let app = run("/root", &initdata, &broker.url)?;
            let stdout = text(&app.stdout);
            ensure!(
                app.status.code() == Some(0)
                    && stdout.ends_with("-----END CERTIFICATE-----\n400 1000\nread-only\n"),
                "app: exit {:?}, stdout {stdout:?}, stderr {}",
                app.status.code(),
                text(&app.stderr)
            );
            // The certificate names the identity the initdata measured.
            let cert = ctx.work.join("identity-svid.pem");
            std::fs::write(&cert, &stdout)?;
            let san = Command::new("openssl")
                .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
                .arg(&cert)
                .output()?;
            let want = format!("URI:spiffe://{TRUST_DOMAIN}/ns/payments/sa/api");
            ensure!(
                text(&san.stdout).contains(&want),
                "SAN {:?}, want {want}: {}",
                text(&san.stdout),
                text(&san.stderr)
            );
            let other = run("/", &initdata, &broker.url)?;
            for out in [&app.stderr, &other.stdout, &other.stderr] {
                ensure!(!text(out).contains("PRIVATE KEY"), "a key reached the host");
            }
            ctx.refused(other, "mount /run/spiffe")?;
            // The shipped broker policy issues nothing to sample evidence.
            let strict = Broker::start(&ctx.work, "strict-identity", None, b"unused")?;
            let initdata = ctx.policy_gen("identity-strict", &yaml, &strict.url)?;
            ctx.refused(run("/root", &initdata, &strict.url)?, "workload identity")
        })()
    );

    case!(
        suite,
        // #9: the agent rotates the identity before it expires. A broker issuing one-minute
        // certificates (valid from a minute back, so renewal is due 20 s after issue): the
        // container keeps the first certificate and key, waits for the files to change under it,
        // and the host checks the new certificate is for a new key, the same SPIFFE ID, from the
        // same CA, and issued later.
        "workload_identity_rotates_before_expiry",
        (|| {
            ensure!(!pinned.is_empty(), "needs the pushed image");
            let broker = Broker::start_with_identity_lifetime(
                &ctx.work,
                "rotating",
                Some(ALLOW_SAMPLE_POLICY),
                b"unused",
                60,
            )?;
            let yaml = identity_pod_yaml(&pinned, ROTATION_SCRIPT);
            let initdata = ctx.policy_gen("rotating", &yaml, &broker.url)?;
            let out = ctx.run_script(
                &pinned,
                &initdata,
                &broker.url,
                &APP_IDENTITY_FLAGS,
                ROTATION_SCRIPT,
            )?;
            let stdout = text(&out.stdout);
            ensure!(
                out.status.code() == Some(0) && stdout.ends_with("key-rotated\n"),
                "exit {:?}, stdout {stdout:?}, stderr {}",
                out.status.code(),
                text(&out.stderr)
            );
            ensure!(!stdout.contains("PRIVATE KEY"), "a key reached the host");
            let (first, second) = stdout
                .trim_end_matches("key-rotated\n")
                .split_once("===\n")
                .context("no separator in the container's output")?;
            let x509 = |name: &str, pem: &str, args: &[&str]| -> anyhow::Result<String> {
                let file = ctx.work.join(name);
                std::fs::write(&file, pem)?;
                let o = Command::new("openssl")
                    .arg("x509")
                    .args(args)
                    .arg("-in")
                    .arg(&file)
                    .output()?;
                ensure!(o.status.success(), "openssl x509: {}", text(&o.stderr));
                Ok(text(&o.stdout))
            };
            let want = format!("URI:spiffe://{TRUST_DOMAIN}/ns/payments/sa/api");
            for (name, pem) in [("rotated-1.pem", first), ("rotated-2.pem", second)] {
                let san = x509(name, pem, &["-noout", "-ext", "subjectAltName"])?;
                ensure!(san.contains(&want), "{name}: SAN {san:?}, want {want}");
                let file = ctx.work.join(name);
                let verify = Command::new("openssl")
                    .arg("verify")
                    .arg("-CAfile")
                    .arg(ctx.work.join("rotating-identity/ca.crt"))
                    .arg(&file)
                    .output()?;
                ensure!(
                    verify.status.success(),
                    "{name} does not chain to the broker's CA: {}{}",
                    text(&verify.stdout),
                    text(&verify.stderr)
                );
            }
            let key_of = |name: &str, pem: &str| x509(name, pem, &["-noout", "-pubkey"]);
            ensure!(
                key_of("rotated-1.pem", first)? != key_of("rotated-2.pem", second)?,
                "the renewed certificate is for the same key"
            );
            // `notBefore=`/`notAfter=` of a certificate, in Unix seconds.
            let date = |name: &str, pem: &str, field: &str| -> anyhow::Result<i64> {
                let out = x509(name, pem, &["-noout", "-dates", "-dateopt", "iso_8601"])?;
                let line = out
                    .lines()
                    .find_map(|l| l.strip_prefix(field))
                    .with_context(|| format!("no {field}"))?;
                let secs = Command::new("date")
                    .args(["-u", "+%s", "-d", line.trim()])
                    .output()?;
                ensure!(secs.status.success(), "date: {}", text(&secs.stderr));
                Ok(text(&secs.stdout).trim().parse()?)
            };
            let (first_from, first_to) = (
                date("rotated-1.pem", first, "notBefore=")?,
                date("rotated-1.pem", first, "notAfter=")?,
            );
            let second_from = date("rotated-2.pem", second, "notBefore=")?;
            ensure!(
                second_from > first_from,
                "the second certificate is not issued after the first"
            );
            // Both are backdated by the same minute, so the second was issued before the first
            // expired.
            ensure!(
                second_from + 60 < first_to,
                "renewed at {} s, after the first certificate expired at {first_to} s",
                second_from + 60
            );
            Ok(())
        })()
    );

    case!(
        suite,
        // #9: two sandboxes talk mTLS with broker-issued identities. The server's port is
        // published on the host (`--publish`); the client reaches it through a tunnel. Each side
        // verifies the other's chain to the broker's bundle and its SPIFFE ID, which names what
        // the pod's measured initdata says; clients with a certificate they made themselves, or
        // none, are refused; no key reaches the host side.
        "mesh_mtls_between_two_sandboxes",
        (|| {
            let broker = broker.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
            mesh_mtls(&ctx, &registry, broker)
        })()
    );

    case!(
        suite,
        // #8: each failure closes with a clear error and no container: the broker's policy
        // refuses the evidence; the broker is unreachable (bounded retries, then an error).
        "no_key_when_the_broker_refuses_or_is_unreachable",
        (|| {
            ensure!(!encrypted_ref.is_empty(), "needs the encrypted image");
            // The shipped resource policy releases nothing to sample evidence.
            let strict = Broker::start(&ctx.work, "strict", None, &std::fs::read(&kek_file)?)?;
            let strict_addr = strict.url.trim_start_matches("http://").to_owned();
            let initdata = ctx.broker_initdata("strict", &strict.url)?;
            let out = ctx.run_with(
                &encrypted_ref,
                &initdata,
                &[&ctx.host, &strict_addr],
                &["/bin/true"],
            )?;
            ctx.refused(out, "pulling")?;
            // A tunnel to a port nothing listens on.
            let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
            let url = format!("http://{closed}");
            let initdata = ctx.broker_initdata("unreachable", &url)?;
            let out = ctx.run_with(
                &encrypted_ref,
                &initdata,
                &[&ctx.host, &closed.to_string()],
                &["/bin/true"],
            )?;
            ctx.refused(out, "pulling")
        })()
    );

    case!(
        suite,
        // #8: an image whose digest the (policy gen) policy does not list is refused before any
        // pull.
        "image_not_in_the_policy_is_refused",
        (|| {
            ensure!(!encrypted_ref.is_empty(), "needs the encrypted image");
            let initdata = ctx.work.join("sealed-initdata.toml");
            ensure!(initdata.is_file(), "needs the sealed pod's initdata");
            let out = ctx.run_with(&encrypted_ref, &initdata, &[&ctx.host], &["/bin/true"])?;
            ctx.refused(out, "is not listed")
        })()
    );

    suite.finish()
}

/// A `coffer sandbox run` in the background, its stdout lines arriving on a channel; stopped
/// (SIGTERM, which tears the sandbox down) when dropped.
struct Background {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    stderr: Option<std::thread::JoinHandle<Vec<u8>>>,
}

impl Background {
    fn spawn(mut c: Command) -> anyhow::Result<Self> {
        let mut child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut stderr = child.stderr.take().context("stderr")?;
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut all = Vec::new();
            let _ = std::io::Read::read_to_end(&mut stderr, &mut all);
            all
        });
        Ok(Self {
            child,
            lines,
            stderr: Some(stderr),
        })
    }

    /// The next stdout line, within `timeout`.
    fn line(&self, timeout: std::time::Duration) -> anyhow::Result<String> {
        self.lines
            .recv_timeout(timeout)
            .with_context(|| format!("no output line within {timeout:?}"))
    }

    /// Waits (at most `timeout`) for the exit; the exit code, the remaining stdout lines, stderr.
    fn finish(
        mut self,
        timeout: std::time::Duration,
    ) -> anyhow::Result<(Option<i32>, Vec<String>, Vec<u8>)> {
        let deadline = std::time::Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            ensure!(
                std::time::Instant::now() < deadline,
                "still running after {timeout:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        };
        let lines = std::iter::from_fn(|| self.lines.recv().ok()).collect();
        let stderr = self
            .stderr
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        Ok((status.code(), lines, stderr))
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = self.child.wait();
        }
    }
}

/// The mesh case (#9 scope 4): see its comment in `main`.
/// `coffer sandbox run` flags of an identity pod's `app` container: user 1000, the workload
/// identity at `/run/spiffe`.
const APP_IDENTITY_FLAGS: [&str; 6] = [
    "-u",
    "1000:1000",
    "-e",
    "HOME=/root",
    "--identity",
    "/run/spiffe",
];

/// Keeps the container's first certificate and key, waits (up to 2 min) for the agent to rotate
/// them, prints both certificates around a `===` line, then `key-rotated` if the key file changed
/// too (the keys themselves stay in the guest). Shell builtins and busybox `cat`/`sleep` only.
const ROTATION_SCRIPT: &str = r#"cd /run/spiffe && a=$(cat svid.pem) && k=$(cat svid_key.pem) && i=0; while [ "$(cat svid.pem)" = "$a" ] && [ $i -lt 600 ]; do sleep 0.2; i=$((i+1)); done; echo "$a"; echo ===; cat svid.pem; [ "$(cat svid_key.pem)" = "$k" ] || echo key-rotated"#;

/// The pod of the workload-identity cases: [`identity_pod`] `identity` in namespace `payments`
/// (service account `api`) plus a container `other`, running the same script in the same image
/// without the identity.
fn identity_pod_yaml(image: &str, script: &str) -> String {
    let mut yaml = identity_pod("identity", "payments", "api", image, script);
    yaml.push_str(&format!(
        r#"    - name: other
      image: {image}
      command: ["/bin/sh", "-c", "{script}"]
      env: [{{name: PATH, value: "{path}"}}, {{name: HOME, value: /}}]
"#,
        script = yaml_quoted(script),
        path = coffer_runtime::spec::DEFAULT_ENV[0].trim_start_matches("PATH="),
    ));
    yaml
}

fn mesh_mtls(ctx: &Ctx, registry: &Registry, broker: &Broker) -> anyhow::Result<()> {
    use std::time::Duration;
    // Stripped: the debug build's symbols are six times the code the guest pulls.
    let stripped = ctx.work.join("coffer-mesh-probe");
    let out = Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(env!("CARGO_BIN_EXE_coffer-mesh-probe"))
        .output()?;
    ensure!(out.status.success(), "strip: {}", text(&out.stderr));
    let probe = std::fs::read(&stripped)?;
    let layout = busybox_layout_with(
        &ctx.work,
        "mesh",
        &[("bin/coffer-mesh-probe", probe.as_slice())],
    )?;
    let digest = registry.push(&layout, "guest/mesh:v1")?;
    let image = format!("{}/guest/mesh@{digest}", ctx.host);
    let server_id = format!("spiffe://{TRUST_DOMAIN}/ns/payments/sa/api");
    let client_id = format!("spiffe://{TRUST_DOMAIN}/ns/web/sa/frontend");
    let published = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let tunnel = published.to_string();

    // Two refused clients run on the host, then the sandboxed one.
    let serve = format!(
        "exec /bin/coffer-mesh-probe server --listen 0.0.0.0:8443 --svid /run/spiffe --trust-domain {TRUST_DOMAIN} --connections 3"
    );
    let connect = format!(
        "exec /bin/coffer-mesh-probe client --connect {published} --server-id {server_id} --bundle /run/spiffe/svid_bundle.pem --svid /run/spiffe"
    );
    let server_initdata = ctx.policy_gen(
        "mesh-server",
        &identity_pod("api", "payments", "api", &image, &serve),
        &broker.url,
    )?;
    let client_initdata = ctx.policy_gen(
        "mesh-client",
        &identity_pod("frontend", "web", "frontend", &image, &connect),
        &broker.url,
    )?;
    let identity = APP_IDENTITY_FLAGS;

    let publish = format!("127.0.0.1:{}:8443", published.port());
    let mut flags = identity.to_vec();
    flags.extend(["--publish", &publish]);
    let server = Background::spawn(ctx.script_command(
        &image,
        &server_initdata,
        &broker.url,
        &flags,
        &serve,
    ))?;
    let first = server.line(Duration::from_secs(300))?;
    ensure!(first == "listening on 0.0.0.0:8443", "server: {first}");

    // On the host, with the broker's CA as the bundle (public): a certificate made by the client
    // itself for the client's very name, and no certificate. Each verifies the real server, then
    // gets its refusal as an alert.
    let bundle = ctx.work.join("kbs-identity/ca.crt");
    let host_client = |extra: &[&str]| -> anyhow::Result<Output> {
        Ok(Command::new(env!("CARGO_BIN_EXE_coffer-mesh-probe"))
            .args(["client", "--connect", &tunnel])
            .args(["--server-id", &server_id, "--bundle"])
            .arg(&bundle)
            .args(extra)
            .output()?)
    };
    let forged = host_client(&["--self-signed", &client_id])?;
    let anonymous = host_client(&[])?;
    for (what, out) in [("self-signed", &forged), ("no certificate", &anonymous)] {
        let stdout = text(&out.stdout);
        ensure!(
            !out.status.success()
                && stdout.starts_with(&format!("server {server_id}\n"))
                && stdout.contains("received fatal alert")
                && !stdout.lines().any(|l| l.starts_with("reply ")),
            "{what} client: exit {:?}, stdout {stdout:?}",
            out.status.code()
        );
        let refusal = server.line(Duration::from_secs(60))?;
        ensure!(
            refusal.starts_with("refused: "),
            "server, {what} client: {refusal}"
        );
    }

    // The sandboxed client, through a tunnel to the published port.
    let mut flags = identity.to_vec();
    flags.extend(["--registry", &tunnel]);
    let client = ctx.run_script(&image, &client_initdata, &broker.url, &flags, &connect)?;
    let accepted = server.line(Duration::from_secs(300));
    let (code, rest, server_stderr) = server.finish(Duration::from_secs(120))?;
    ensure!(
        client.status.code() == Some(0)
            && text(&client.stdout) == format!("server {server_id}\nreply hello {client_id}\n"),
        "client: exit {:?}, stdout {:?}, stderr {}",
        client.status.code(),
        text(&client.stdout),
        text(&client.stderr)
    );
    // The server saw the client's broker-issued identity, bound to its (sample) attestation.
    let accepted = accepted?;
    ensure!(
        accepted == format!("accepted {client_id} tee=sample")
            && code == Some(0)
            && rest.is_empty(),
        "server: {accepted:?}, then exit {code:?}, {rest:?}, stderr {}",
        text(&server_stderr)
    );
    for out in [
        &client.stdout,
        &client.stderr,
        &server_stderr,
        &forged.stdout,
        &anonymous.stdout,
    ] {
        ensure!(!text(out).contains("PRIVATE KEY"), "a key reached the host");
    }
    ctx.assert_clean()
}

/// A pod manifest named `name` whose containers' output the host may read, with `spec` (YAML, the
/// pod spec's fields at two spaces of indentation, then any further documents).
fn logs_pod(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  annotations:\n    coffer.dev/allow-logs: \"true\"\nspec:\n{spec}"
    )
}

/// The sealed secret the broker holds.
const SECRET: &str = "s3cret-db-password-only-the-guest-reads";
