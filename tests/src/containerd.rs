//! A real containerd (Debian's 1.6 package, `tests/setup-containerd.sh`) for the shim suite, run
//! with a private root, state, sockets and config under a test directory, and `ctr` against it.
//! `containerd-shim-coffer-v2` is found through containerd's `PATH`, which leads with this build's
//! binary directory. Also builds the suite's OCI image archive (busybox) with `umoci`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

use crate::{bin_dir, busybox_rootfs, require_tool};

/// The containerd namespace the suites use.
pub const NAMESPACE: &str = "coffer-test";

/// A containerd daemon of the test.
#[derive(Debug)]
pub struct Containerd {
    dir: PathBuf,
    namespace: String,
    env: Vec<(String, OsString)>,
    /// The network namespace containerd runs in (and with it CNI, its shims and their VMs).
    netns: Option<PathBuf>,
    child: Option<Child>,
}

impl Containerd {
    /// Starts containerd with its files under `dir`; `env` is added to its environment (and so
    /// to its shims').
    pub fn start(dir: &Path, env: Vec<(String, OsString)>) -> anyhow::Result<Self> {
        // The CRI plugin wants CNI and a pause image; the shim suite drives containerd with ctr.
        Self::start_with(
            dir,
            env,
            "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n",
            "",
            None,
        )
    }

    /// Starts containerd as [`Containerd::start`] does, with its CRI plugin configured by `cri`
    /// (TOML tables under `[plugins."io.containerd.grpc.v1.cri"]`, appended to the config), inside
    /// network namespace `netns` (the test's "node": CNI builds the pods' bridge there, and the
    /// pods' traffic never reaches the machine's own interfaces).
    pub fn start_with_cri(
        dir: &Path,
        env: Vec<(String, OsString)>,
        cri: &str,
        netns: &crate::netns::NetNs,
    ) -> anyhow::Result<Self> {
        Self::start_with(dir, env, "", cri, Some(netns.path()))
    }

    /// The config gets `keys` among its top-level keys and `tables` at its end.
    fn start_with(
        dir: &Path,
        env: Vec<(String, OsString)>,
        keys: &str,
        tables: &str,
        netns: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        require_tool("containerd");
        require_tool("ctr");
        std::fs::create_dir_all(dir)?;
        let config = format!(
            "version = 2\n\
             root = \"{root}\"\n\
             state = \"{state}\"\n\
             {keys}\
             [grpc]\n  address = \"{sock}\"\n\
             [ttrpc]\n  address = \"{sock}.ttrpc\"\n\
             [debug]\n  level = \"debug\"\n\
             {tables}",
            root = dir.join("root").display(),
            state = dir.join("state").display(),
            sock = dir.join("containerd.sock").display(),
        );
        std::fs::write(dir.join("config.toml"), config)?;
        let mut containerd = Self {
            dir: dir.to_path_buf(),
            namespace: NAMESPACE.to_owned(),
            env,
            netns,
            child: None,
        };
        containerd.spawn()?;
        Ok(containerd)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let mut path = OsString::from(bin_dir());
        if let Some(rest) = std::env::var_os("PATH") {
            path.push(":");
            path.push(rest);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())?;
        // nsenter joins the network namespace only and then executes containerd (no fork), so the
        // child is containerd itself.
        let mut command = match &self.netns {
            Some(netns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", netns.display()))
                    .arg("--")
                    .arg("containerd");
                c
            }
            None => Command::new("containerd"),
        };
        let child = command
            .arg("--config")
            .arg(self.dir.join("config.toml"))
            .env("PATH", path)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting containerd")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self
                .ctr(&["version"])
                .output()
                .is_ok_and(|o| o.status.success())
            {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                bail!(
                    "containerd exited ({status}); log: {}",
                    self.log().display()
                );
            }
            ensure!(
                Instant::now() < deadline,
                "containerd did not answer within 30 s; log: {}",
                self.log().display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// containerd's log (its own lines and, through it, the shims').
    pub fn log(&self) -> PathBuf {
        self.dir.join("containerd.log")
    }

    /// containerd's gRPC socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// Makes `ctr` and [`Containerd::bundles`] work in `namespace` instead of [`NAMESPACE`].
    pub fn set_namespace(&mut self, namespace: &str) {
        namespace.clone_into(&mut self.namespace);
    }

    /// Bundle directories of live tasks (`state/io.containerd.runtime.v2.task/<ns>/<id>`).
    pub fn bundles(&self) -> Vec<PathBuf> {
        std::fs::read_dir(
            self.dir
                .join("state/io.containerd.runtime.v2.task")
                .join(&self.namespace),
        )
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
    }

    /// `ctr` against this containerd, in [`NAMESPACE`] (or the one set).
    pub fn ctr(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(self.socket())
            .args(["--namespace", &self.namespace])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    /// Runs `ctr args` (at most `timeout`) and returns its output, whatever its status.
    pub fn ctr_output(&self, args: &[&str], timeout: Duration) -> anyhow::Result<Output> {
        let child = self
            .ctr(args)
            .spawn()
            .with_context(|| format!("ctr {args:?}"))?;
        wait_output(child, timeout).with_context(|| format!("ctr {args:?}"))
    }

    /// Runs `ctr args`, which must succeed; returns its stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.ctr_output(args, Duration::from_secs(120))?;
        ensure!(
            out.status.success(),
            "ctr {args:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Stops containerd (SIGTERM, then SIGKILL after 10 s). Shims keep running, as in production.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Stops and starts containerd again with the same files.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits for `child` (at most `timeout`, then kills it) and collects its output.
pub fn wait_output(mut child: Child, timeout: Duration) -> anyhow::Result<Output> {
    use std::io::Read;
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(s) = stdout.as_mut() {
            let _ = s.read_to_end(&mut buf);
        }
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(s) = stderr.as_mut() {
            let _ = s.read_to_end(&mut buf);
        }
        buf
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    })
}

/// Builds an OCI image archive (`ctr images import` format) holding the busybox rootfs of
/// [`busybox_rootfs`], with `umoci`, in `dir`; returns the tar's path. Its one tag is `latest`.
pub fn busybox_oci_archive(dir: &Path) -> anyhow::Result<PathBuf> {
    oci_archive(
        dir,
        "busybox-oci.tar",
        busybox_rootfs,
        &["--config.cmd", "/bin/sh"],
    )
}

/// Builds an OCI image archive `name` in `dir` with `umoci`: one layer holding what `fill` puts
/// into the rootfs directory it is given, and the image config `umoci config` makes of
/// `config_args`. The layout stays in `dir/layout`; the archive's one tag is `latest`.
pub fn oci_archive(
    dir: &Path,
    name: &str,
    fill: impl FnOnce(&Path),
    config_args: &[&str],
) -> anyhow::Result<PathBuf> {
    require_tool("umoci");
    let layout = dir.join("layout");
    let bundle = dir.join("bundle");
    let image = format!("{}:latest", layout.display());
    let run = |args: &[&str]| -> anyhow::Result<()> {
        let out = Command::new(args[0]).args(&args[1..]).output()?;
        ensure!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    };
    let layout_s = layout.display().to_string();
    let bundle_s = bundle.display().to_string();
    run(&["umoci", "init", "--layout", &layout_s])?;
    run(&["umoci", "new", "--image", &image])?;
    run(&["umoci", "unpack", "--image", &image, &bundle_s])?;
    fill(&bundle.join("rootfs"));
    run(&["umoci", "repack", "--image", &image, &bundle_s])?;
    let mut config = vec!["umoci", "config", "--image", &image];
    config.extend_from_slice(config_args);
    run(&config)?;
    let tar = dir.join(name);
    run(&[
        "tar",
        "-C",
        &layout_s,
        "-cf",
        &tar.display().to_string(),
        ".",
    ])?;
    Ok(tar)
}
