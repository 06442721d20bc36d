//! The `coffer` CLI end to end, each case booting its own real VM: output and exit status, stdin,
//! env/workdir/user, QEMU killed with SIGKILL, an agent that never answers in time, Ctrl-C (once
//! the container runs, and during boot), and the reproducible guest image build.
// Test harness code: a failed expectation is a test failure.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use coffer_tests::{
    Suite, assert_nothing_left, busybox_rootfs, case, coffer, guest_image, leftover_sandboxes,
    processes_mentioning,
};

struct Ctx {
    image_dir: PathBuf,
    rootfs: PathBuf,
    state: PathBuf,
}

impl Ctx {
    fn command(&self, extra: &[&str], cmd: &[&str]) -> Command {
        let mut c = Command::new(coffer());
        c.args(["sandbox", "run", "--rootfs"])
            .arg(&self.rootfs)
            .arg("--image-dir")
            .arg(&self.image_dir)
            .arg("--state-dir")
            .arg(&self.state)
            .args(extra)
            .arg("--")
            .args(cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    fn run(&self, extra: &[&str], cmd: &[&str], stdin: Option<&[u8]>) -> anyhow::Result<Output> {
        let mut c = self.command(extra, cmd);
        if stdin.is_some() {
            c.stdin(Stdio::piped());
        }
        let mut child = c.spawn().context("spawning coffer")?;
        if let Some(data) = stdin {
            let mut pipe = child.stdin.take().context("stdin")?;
            pipe.write_all(data)?;
        }
        wait_output(child, Duration::from_secs(180))
    }

    fn assert_clean(&self) -> anyhow::Result<()> {
        assert_nothing_left(&self.state)
    }
}

fn wait_output(mut child: Child, limit: Duration) -> anyhow::Result<Output> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            let mut stdout = Vec::new();
            let mut stderr = Vec::new();
            if let Some(mut s) = child.stdout.take() {
                s.read_to_end(&mut stdout)?;
            }
            if let Some(mut s) = child.stderr.take() {
                s.read_to_end(&mut stderr)?;
            }
            return Ok(Output {
                status,
                stdout,
                stderr,
            });
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("coffer did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Waits until a QEMU process for a sandbox under `state` runs; returns its pid.
fn wait_for_qemu(state: &Path, limit: Duration) -> anyhow::Result<u32> {
    let needle = state.join("sandboxes").display().to_string();
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some((pid, _)) = processes_mentioning(&needle)
            .into_iter()
            .find(|(_, cmd)| cmd.starts_with("qemu-system") || cmd.contains("/qemu-system"))
        {
            return Ok(pid);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("no QEMU process appeared")
}

/// Waits until the guest console of the (only) sandbox under `state` shows `marker`.
fn wait_for_console(state: &Path, marker: &str, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        for dir in leftover_sandboxes(state) {
            if std::fs::read_to_string(dir.join("console.log")).is_ok_and(|c| c.contains(marker)) {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("console never showed {marker:?}")
}

fn image_digests(out: &Path) -> anyhow::Result<(String, String)> {
    let o = Command::new(coffer())
        .args(["image", "build", "--json", "--agent"])
        .arg(coffer_tests::guest_agent())
        .arg("--out")
        .arg(out)
        .output()?;
    ensure!(
        o.status.success(),
        "image build failed: {}",
        text(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    Ok((
        v["vmlinux_sha256"]
            .as_str()
            .context("vmlinux digest")?
            .to_owned(),
        v["initramfs_sha256"]
            .as_str()
            .context("initramfs digest")?
            .to_owned(),
    ))
}

fn main() -> ExitCode {
    let image = guest_image();
    let work = tempfile::tempdir().expect("tempdir");
    let rootfs = work.path().join("rootfs");
    busybox_rootfs(&rootfs);
    let ctx = Ctx {
        image_dir: image.vmlinux.parent().expect("image dir").to_path_buf(),
        rootfs,
        state: work.path().join("state"),
    };
    let mut suite = Suite::new("cli");

    case!(
        suite,
        "echo_hello",
        (|| {
            let o = ctx.run(&[], &["echo", "hello"], None)?;
            ensure!(
                text(&o.stdout) == "hello\n",
                "stdout {:?}, stderr {:?}",
                text(&o.stdout),
                text(&o.stderr)
            );
            ensure!(o.status.code() == Some(0), "status {:?}", o.status);
            ctx.assert_clean()
        })()
    );

    case!(
        suite,
        "exit_status_7",
        (|| {
            let o = ctx.run(&[], &["sh", "-c", "echo to-stderr >&2; exit 7"], None)?;
            ensure!(
                o.status.code() == Some(7),
                "status {:?}: {}",
                o.status,
                text(&o.stderr)
            );
            ensure!(
                text(&o.stderr).contains("to-stderr"),
                "stderr {:?}",
                text(&o.stderr)
            );
            ctx.assert_clean()
        })()
    );

    case!(
        suite,
        "initdata_policy_applies",
        (|| {
            // The initdata policy is sandbox.rego plus a rule refusing `initdata-forbidden`: the
            // guest enforces it, and an allowed command still runs under it.
            let policy = format!(
                "{}\n{}",
                coffer_policies::SANDBOX_POLICY,
                r#"denials contains "CreateContainer: refused by the initdata policy" if {
	input.request.process.args[0] == "initdata-forbidden"
}"#
            );
            let entries = std::collections::BTreeMap::from([(
                coffer_policies::initdata::Entry::Policy,
                policy,
            )]);
            let init = coffer_policies::initdata::Initdata::build(
                coffer_policies::initdata::Algorithm::Sha384,
                &entries,
            )?;
            let file = ctx.state.with_extension("initdata.toml");
            std::fs::write(&file, init.raw())?;
            let path = file.display().to_string();
            let o = ctx.run(&["--initdata", &path], &["initdata-forbidden"], None)?;
            ensure!(o.status.code() == Some(125), "status {:?}", o.status);
            ensure!(
                text(&o.stderr).contains("refused by the initdata policy"),
                "stderr {:?}",
                text(&o.stderr)
            );
            let o = ctx.run(&["--initdata", &path], &["echo", "allowed"], None)?;
            ensure!(
                text(&o.stdout) == "allowed\n",
                "stdout {:?}",
                text(&o.stdout)
            );
            ctx.assert_clean()
        })()
    );

    case!(
        suite,
        "stdin_round_trip",
        (|| {
            let o = ctx.run(&["-i"], &["sh", "-c", "tr a-z A-Z"], Some(b"round trip\n"))?;
            ensure!(
                text(&o.stdout) == "ROUND TRIP\n",
                "stdout {:?} stderr {:?}",
                text(&o.stdout),
                text(&o.stderr)
            );
            ensure!(o.status.code() == Some(0));
            ctx.assert_clean()
        })()
    );

    case!(
        suite,
        "env_workdir_user",
        (|| {
            let o = ctx.run(
                &["-e", "FOO=bar baz", "-w", "/tmp", "-u", "65534:65534"],
                &["sh", "-c", "echo \"$FOO|$(pwd)|$(id -u):$(id -g)\""],
                None,
            )?;
            ensure!(
                text(&o.stdout) == "bar baz|/tmp|65534:65534\n",
                "stdout {:?} stderr {:?}",
                text(&o.stdout),
                text(&o.stderr)
            );
            ctx.assert_clean()
        })()
    );

    case!(
        suite,
        "qemu_killed_with_sigkill",
        (|| {
            let mut child = ctx
                .command(&[], &["sh", "-c", "echo running; exec sleep 1000"])
                .spawn()?;
            let qemu = wait_for_qemu(&ctx.state, Duration::from_secs(30))?;
            // Kill it while the container runs: once its first line reached the host.
            let stdout = child.stdout.take().context("stdout")?;
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let mut line = String::new();
                let _ =
                    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
                let _ = tx.send(line);
            });
            let line = rx.recv_timeout(Duration::from_secs(120))?;
            ensure!(line == "running\n", "container output {line:?}");
            let killed = Instant::now();
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(qemu as i32),
                nix::sys::signal::Signal::SIGKILL,
            )?;
            let o = wait_output(child, Duration::from_secs(60))?;
            let took = killed.elapsed();
            ensure!(
                took < Duration::from_secs(10),
                "CLI took {took:?} to notice"
            );
            ensure!(o.status.code() == Some(125), "status {:?}", o.status);
            let err = text(&o.stderr);
            ensure!(
                err.contains("exited unexpectedly") && err.contains("signal 9"),
                "stderr {err:?}"
            );
            ctx.assert_clean()
        })()
    );

    case!(
        suite,
        "agent_never_answers",
        (|| {
            let started = Instant::now();
            let o = ctx.run(&["--boot-timeout", "1"], &["true"], None)?;
            ensure!(
                started.elapsed() < Duration::from_secs(20),
                "took {:?}",
                started.elapsed()
            );
            ensure!(o.status.code() == Some(125), "status {:?}", o.status);
            let err = text(&o.stderr);
            ensure!(err.contains("did not answer within"), "stderr {err:?}");
            let console = err
                .split("console log: ")
                .nth(1)
                .context("no console log path in error")?
                .trim();
            ensure!(Path::new(console).exists(), "console log {console} missing");
            std::fs::remove_file(console)?;
            ctx.assert_clean()
        })()
    );

    case!(
        suite,
        "ctrl_c_tears_down",
        (|| {
            let child = ctx.command(&[], &["sleep", "1000"]).spawn()?;
            wait_for_qemu(&ctx.state, Duration::from_secs(30))?;
            wait_for_console(
                &ctx.state,
                coffer_agent_protocol::GUEST_READY_MARKER,
                Duration::from_secs(60),
            )?;
            std::thread::sleep(Duration::from_secs(2));
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGINT,
            )?;
            let o = wait_output(child, Duration::from_secs(30))?;
            ensure!(
                o.status.code() == Some(130),
                "status {:?}: {}",
                o.status,
                text(&o.stderr)
            );
            ctx.assert_clean()
        })()
    );

    case!(
        suite,
        "ctrl_c_during_boot_leaves_no_sandbox_directory",
        (|| {
            let child = ctx.command(&[], &["sleep", "1000"]).spawn()?;
            // The VM is launched, the agent not yet up: the start itself is interrupted.
            wait_for_qemu(&ctx.state, Duration::from_secs(30))?;
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGINT,
            )?;
            let o = wait_output(child, Duration::from_secs(30))?;
            ensure!(
                o.status.code() == Some(130),
                "status {:?}: {}",
                o.status,
                text(&o.stderr)
            );
            ensure!(
                text(&o.stderr).contains("interrupted during boot"),
                "not interrupted during boot: {}",
                text(&o.stderr)
            );
            ctx.assert_clean()
        })()
    );

    case!(
        suite,
        "guest_image_is_reproducible",
        (|| {
            let a = image_digests(&work.path().join("image-a"))?;
            let b = image_digests(&work.path().join("image-b"))?;
            ensure!(a == b, "digests differ: {a:?} vs {b:?}");
            ensure!(
                a.0 == image.vmlinux_sha256 && a.1 == image.initramfs_sha256,
                "differs from the test image"
            );
            Ok(())
        })()
    );

    suite.finish()
}
