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
use coffer_tests::kbs::{ALLOW_SAMPLE_POLICY, Broker};
use coffer_tests::registry::Registry;
use coffer_tests::{Suite, assert_nothing_left, busybox_rootfs, case, coffer, guest_image};

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
        let mut entries = BTreeMap::new();
        entries.insert(
            Entry::Registries,
            format!("[[registry]]\nhost = \"{}\"\ninsecure = true\n", self.host),
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
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/vectors/ocicrypt"
    ))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A one-layer busybox image made by umoci, as an OCI layout.
fn busybox_layout(work: &Path) -> anyhow::Result<PathBuf> {
    coffer_tests::require_tool("umoci");
    let layout = work.join("busybox-layout");
    let bundle = work.join("busybox-bundle");
    let umoci = |args: &[&str]| -> anyhow::Result<()> {
        let out = Command::new("umoci").args(args).output()?;
        ensure!(
            out.status.success(),
            "umoci {args:?}: {}",
            text(&out.stderr)
        );
        Ok(())
    };
    let l = layout.display().to_string();
    let b = bundle.display().to_string();
    umoci(&["init", "--layout", &l])?;
    umoci(&["new", "--image", &format!("{l}:v1")])?;
    umoci(&["unpack", "--rootless", "--image", &format!("{l}:v1"), &b])?;
    busybox_rootfs(&bundle.join("rootfs"));
    std::fs::write(bundle.join("rootfs/pulled.txt"), "pulled in the guest\n")?;
    umoci(&["repack", "--image", &format!("{l}:v1"), &b])?;
    Ok(layout)
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
            ensure!(
                out.status.code() == Some(0) && text(&out.stdout) == "pulled in the guest\n",
                "exit {:?}, stdout {:?}, stderr {}",
                out.status.code(),
                text(&out.stdout),
                text(&out.stderr)
            );
            ctx.assert_clean()
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
            let out = Command::new(coffer())
                .args(["image", "encrypt", "--tag", "v1", "--layout"])
                .arg(&layout)
                .arg("--out")
                .arg(&encrypted)
                .arg("--kek")
                .arg(format!("kbs:///default/key/1={}", kek_file.display()))
                .output()?;
            ensure!(out.status.success(), "encrypt: {}", text(&out.stderr));
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

            let initdata = ctx.initdata(
                "with-broker",
                &[
                    (Entry::KbsUrl, broker.url.as_str()),
                    (Entry::KbsEvidence, "sample"),
                ],
            )?;
            let out = ctx.run_with(
                &reference,
                &initdata,
                &[&ctx.host, &broker_addr],
                &["/bin/cat", "/pulled.txt"],
            )?;
            ensure!(
                out.status.code() == Some(0) && text(&out.stdout) == "pulled in the guest\n",
                "exit {:?}, stdout {:?}, stderr {}",
                out.status.code(),
                text(&out.stdout),
                text(&out.stderr)
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
            let broker_addr = broker.url.trim_start_matches("http://").to_owned();
            let sealed = "sealed.kbs:///default/secret/db";
            let pod = ctx.work.join("sealed-pod.yaml");
            std::fs::write(
                &pod,
                format!(
                    r#"apiVersion: v1
kind: Pod
metadata:
  name: sealed
  annotations:
    coffer.dev/allow-logs: "true"
spec:
  containers:
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
            )?;
            let initdata = ctx.work.join("sealed-initdata.toml");
            let out = Command::new(coffer())
                .args(["policy", "gen"])
                .arg(&pod)
                .args(["--insecure-registry", &ctx.host, "--kbs-url", &broker.url])
                .args(["--kbs-evidence", "sample", "-o"])
                .arg(&initdata)
                .output()?;
            ensure!(out.status.success(), "policy gen: {}", text(&out.stderr));
            let tunnels = [ctx.host.as_str(), broker_addr.as_str()];
            let env = format!("DB={sealed}");
            let run = |script: &str| {
                let mut c = Command::new(coffer());
                c.args(["sandbox", "run", "--image", &pinned, "--image-dir"])
                    .arg(&ctx.image_dir)
                    .arg("--state-dir")
                    .arg(&ctx.state)
                    .arg("--initdata")
                    .arg(&initdata)
                    .args(["-e", &env]);
                for t in tunnels {
                    c.args(["--registry", t]);
                }
                c.args(["--", "/bin/sh", "-c", script])
                    .stdin(Stdio::null())
                    .output()
            };
            let app = run("echo app:$DB")?;
            ensure!(
                app.status.code() == Some(0) && text(&app.stdout) == format!("app:{SECRET}\n"),
                "app: exit {:?}, stdout {:?}, stderr {}",
                app.status.code(),
                text(&app.stdout),
                text(&app.stderr)
            );
            // The secret never reaches the host side: not in coffer's output besides the
            // container's own stdout, not in the sandbox state.
            ensure!(
                !text(&app.stderr).contains(SECRET),
                "secret in coffer's stderr"
            );
            ctx.assert_clean()?;
            let other = run("echo other:$DB")?;
            let stderr = text(&other.stderr);
            ensure!(
                other.status.code() == Some(125)
                    && stderr.contains("names secret kbs:///default/secret/db"),
                "other: exit {:?}, stdout {:?}, stderr {stderr}",
                other.status.code(),
                text(&other.stdout)
            );
            ensure!(
                !text(&other.stdout).contains(SECRET),
                "secret leaked to other"
            );
            ctx.assert_clean()
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
            let initdata = ctx.initdata(
                "strict",
                &[
                    (Entry::KbsUrl, strict.url.as_str()),
                    (Entry::KbsEvidence, "sample"),
                ],
            )?;
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
            let initdata = ctx.initdata(
                "unreachable",
                &[
                    (Entry::KbsUrl, url.as_str()),
                    (Entry::KbsEvidence, "sample"),
                ],
            )?;
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

/// The sealed secret the broker holds.
const SECRET: &str = "s3cret-db-password-only-the-guest-reads";
