//! `containerd-shim-coffer-v2` under a real containerd (Debian's 1.6), driven with `ctr`: one
//! containerd for the suite (private root, state, sockets and config in a temp dir), a busybox
//! OCI image imported from an archive, and one pod VM per container. Cases: output and exit
//! status of `ctr run --rm`, exec/ps/kill/metrics on a detached task, nothing left after delete,
//! a VM killed under a task, a containerd restart with a running pod (the pod runs on, whole), a
//! shim killed under a task (its VM dies with it) with containerd restarted after (which cleans
//! the rest).
// Test harness code: a failed expectation is a test failure.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use coffer_agent_protocol::GUEST_INIT_MARKER;
use coffer_policies::initdata::{Algorithm, Entry, Initdata};
use coffer_tests::containerd::{Containerd, busybox_oci_archive};
use coffer_tests::registry::Registry;
use coffer_tests::{
    Suite, bin, case, eventually, guest_image, leftover_sandboxes, processes_mentioning,
};

const RUNTIME: &str = "io.containerd.coffer.v2";
const IMAGE: &str = "coffer.test/busybox:latest";
/// Where containerd-shim (Rust and Go alike) put their sockets.
const SHIM_SOCKETS: &str = "/run/containerd/s";

struct Ctx {
    containerd: Containerd,
    work: PathBuf,
    state: PathBuf,
}

fn shim_sockets() -> BTreeSet<PathBuf> {
    std::fs::read_dir(SHIM_SOCKETS)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

impl Ctx {
    fn ctr_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        self.containerd.ctr_ok(args)
    }

    /// `ctr run --rm` of `cmd`; (stdout, stderr, exit code).
    fn run_rm(&self, id: &str, cmd: &[&str]) -> anyhow::Result<(String, String, i32)> {
        let mut args = vec!["run", "--runtime", RUNTIME, "--rm", IMAGE, id];
        args.extend_from_slice(cmd);
        let out = self
            .containerd
            .ctr_output(&args, Duration::from_secs(180))?;
        Ok((
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            out.status.code().context("ctr killed by a signal")?,
        ))
    }

    fn run_detached(&self, id: &str, cmd: &[&str]) -> anyhow::Result<()> {
        let mut args = vec!["run", "--runtime", RUNTIME, "-d", IMAGE, id];
        args.extend_from_slice(cmd);
        self.ctr_ok(&args)?;
        Ok(())
    }

    /// The (pid, status) `ctr task ls` shows for `id`.
    fn task(&self, id: &str) -> anyhow::Result<Option<(u32, String)>> {
        let out = self.ctr_ok(&["task", "ls"])?;
        Ok(out.lines().skip(1).find_map(|l| {
            let cols: Vec<_> = l.split_whitespace().collect();
            match cols.as_slice() {
                [task, pid, status, ..] if *task == id => {
                    Some((pid.parse().ok()?, (*status).to_owned()))
                }
                _ => None,
            }
        }))
    }

    fn wait_status(&self, id: &str, want: &str) -> anyhow::Result<u32> {
        eventually(
            Duration::from_secs(60),
            &format!("task {id} {want}"),
            || {
                Ok(self
                    .task(id)?
                    .filter(|(_, s)| s == want)
                    .map(|(pid, _)| pid))
            },
        )
    }

    fn remove(&self, id: &str) -> anyhow::Result<()> {
        if self.task(id)?.is_some() {
            self.ctr_ok(&["task", "rm", "-f", id])?;
        }
        self.ctr_ok(&["container", "rm", id])?;
        Ok(())
    }

    fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.state.join("sandboxes").join(id)
    }

    fn vm_processes(&self, id: &str) -> Vec<(u32, String)> {
        processes_mentioning(&format!("{}/", self.sandbox_dir(id).display()))
    }

    fn shim_processes(&self) -> Vec<(u32, String)> {
        processes_mentioning("containerd-shim-coffer-v2")
            .into_iter()
            .filter(|(_, cmd)| cmd.contains(&self.work.display().to_string()))
            .collect()
    }

    /// Fails listing whatever finished tasks left behind (after a grace period for teardown).
    fn assert_clean(&self, sockets_before: &BTreeSet<PathBuf>) -> anyhow::Result<()> {
        let clean = eventually(Duration::from_secs(20), "cleanup", || {
            Ok(self.leftovers(sockets_before).is_empty().then_some(()))
        });
        if clean.is_err() {
            bail!("left behind: {:#?}", self.leftovers(sockets_before));
        }
        Ok(())
    }

    /// Everything a finished task could leave behind, listed.
    fn leftovers(&self, sockets_before: &BTreeSet<PathBuf>) -> Vec<String> {
        let mut left = Vec::new();
        for dir in leftover_sandboxes(&self.state) {
            left.push(format!("sandbox directory {}", dir.display()));
        }
        for (pid, cmd) in processes_mentioning(&self.state.display().to_string()) {
            left.push(format!("VM process {pid}: {cmd}"));
        }
        for (pid, cmd) in self.shim_processes() {
            left.push(format!("shim process {pid}: {cmd}"));
        }
        for socket in shim_sockets().difference(sockets_before) {
            left.push(format!("shim socket {}", socket.display()));
        }
        for bundle in self.containerd.bundles() {
            left.push(format!("bundle {}", bundle.display()));
        }
        let work = self.work.display().to_string();
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") {
            for line in mounts.lines().filter(|l| l.contains(&work)) {
                left.push(format!("mount {line}"));
            }
        }
        left
    }
}

/// `ctr events`, read as it arrives.
struct Events {
    child: Child,
    lines: std::sync::Arc<std::sync::Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

fn events(containerd: &Containerd) -> anyhow::Result<Events> {
    use std::io::BufRead;
    let mut child = containerd
        .ctr(&["events"])
        .stdout(Stdio::piped())
        .spawn()
        .context("ctr events")?;
    let stdout = child.stdout.take().context("ctr events stdout")?;
    let lines = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = lines.clone();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let mut all = sink.lock().unwrap();
            all.push_str(&line);
            all.push('\n');
        }
    });
    Ok(Events {
        child,
        lines,
        reader: Some(reader),
    })
}

impl Events {
    /// Waits until a line matching `pred` arrived.
    fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> anyhow::Result<()> {
        eventually(timeout, what, || {
            Ok(self.lines.lock().unwrap().lines().any(&pred).then_some(()))
        })
        .with_context(|| format!("events so far:\n{}", self.lines.lock().unwrap()))
    }
}

fn stop_events(mut events: Events) -> String {
    let _ = events.child.kill();
    let _ = events.child.wait();
    if let Some(reader) = events.reader.take() {
        let _ = reader.join();
    }
    events.lines.lock().unwrap().clone()
}

fn setup(work: &Path) -> anyhow::Result<Ctx> {
    let image = guest_image();
    let image_dir = image
        .vmlinux
        .parent()
        .context("guest image directory")?
        .to_path_buf();
    // containerd finds the shim on its PATH, which leads with this build's binary directory.
    bin("containerd-shim-coffer-v2");
    let state = work.join("coffer");
    let config = work.join("runtime.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\n[guest]\nimage_dir = \"{}\"\nboot_timeout_secs = 120\n\
             [qemu]\nprobe_cache = \"{}\"\n",
            state.display(),
            image_dir.display(),
            work.join("accel-probe").display()
        ),
    )?;
    let containerd = Containerd::start(
        &work.join("containerd"),
        vec![(
            "COFFER_RUNTIME_CONFIG".into(),
            OsString::from(config.as_os_str()),
        )],
    )?;
    let archive = busybox_oci_archive(&work.join("image"))?;
    containerd.ctr_ok(&[
        "images",
        "import",
        "--base-name",
        "coffer.test/busybox",
        &archive.display().to_string(),
    ])?;
    Ok(Ctx {
        containerd,
        work: work.to_path_buf(),
        state,
    })
}

fn main() -> ExitCode {
    let work = tempfile::tempdir().expect("tempdir");
    let mut suite = Suite::new("shim");
    let started = Instant::now();
    let ctx = match setup(work.path()) {
        Ok(ctx) => {
            suite.record("setup", started, Ok(()));
            ctx
        }
        Err(err) => {
            suite.record("setup", started, Err(err));
            return suite.finish();
        }
    };
    let sockets_before = shim_sockets();

    case!(suite, "run_rm_prints_output", {
        (|| {
            let (out, err, code) = ctx.run_rm("echo", &["echo", "hi"])?;
            ensure!(code == 0, "exit {code}; stderr: {err}");
            ensure!(out == "hi\n", "stdout {out:?}; stderr: {err}");
            // The guest console reaches containerd's log, tagged with the sandbox id.
            let log = std::fs::read_to_string(ctx.containerd.log())?;
            ensure!(
                log.lines().any(|l| l.contains(" guest: ")
                    && l.contains(GUEST_INIT_MARKER)
                    && l.contains("sandbox_id=echo")),
                "no guest console line in {}",
                ctx.containerd.log().display()
            );
            Ok(())
        })()
    });

    case!(suite, "exit_codes_and_stderr_propagate", {
        (|| {
            let (out, err, code) =
                ctx.run_rm("exit3", &["sh", "-c", "echo out; echo err >&2; exit 3"])?;
            ensure!(code == 3, "exit {code}; stderr: {err}");
            ensure!(out == "out\n", "stdout {out:?}");
            ensure!(err.contains("err\n"), "stderr {err:?}");
            Ok(())
        })()
    });

    case!(suite, "terminal_run", {
        (|| {
            // ctr wants a terminal of its own: `script` gives it one, sized 30x100. ctr sends the
            // size after the start (as with runc), so the command looks a little later.
            let ctr = format!(
                "ctr --address {} --namespace {} run -t --runtime {RUNTIME} --rm {IMAGE} tty1 \
                 sh -c 'tty; sleep 2; stty size; exit 4'",
                ctx.containerd.socket().display(),
                coffer_tests::containerd::NAMESPACE
            );
            let child = std::process::Command::new("script")
                .args([
                    "-qec",
                    &format!("stty rows 30 cols 100; {ctr}"),
                    "/dev/null",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .context("script")?;
            let out = coffer_tests::containerd::wait_output(child, Duration::from_secs(180))?;
            let text = String::from_utf8_lossy(&out.stdout);
            ensure!(out.status.code() == Some(4), "exit {}: {text}", out.status);
            ensure!(
                text.contains("/dev/pts/"),
                "no terminal in the container: {text:?}"
            );
            ensure!(
                text.contains("30 100"),
                "terminal size not applied: {text:?}"
            );
            Ok(())
        })()
    });

    case!(suite, "exec_ps_metrics_kill", {
        (|| {
            let id = "detached";
            let events = events(&ctx.containerd)?;
            ctx.run_detached(id, &["sleep", "1000"])?;
            let result = (|| {
                let pid = ctx.wait_status(id, "RUNNING")?;
                let out = ctx.containerd.ctr_output(
                    &[
                        "task",
                        "exec",
                        "--exec-id",
                        "e1",
                        id,
                        "sh",
                        "-c",
                        "echo from-exec; exit 5",
                    ],
                    Duration::from_secs(60),
                )?;
                ensure!(
                    out.status.code() == Some(5),
                    "exec: {}; {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
                ensure!(out.stdout == b"from-exec\n", "exec stdout {:?}", out.stdout);
                // A running exec has its guest pid, as runc's would.
                ctx.ctr_ok(&[
                    "task",
                    "exec",
                    "--detach",
                    "--exec-id",
                    "e2",
                    id,
                    "sleep",
                    "1000",
                ])?;
                let ps = eventually(
                    Duration::from_secs(30),
                    "task ps listing init and the exec with their pids",
                    || {
                        let ps = ctx.ctr_ok(&["task", "ps", id])?;
                        let pids: Vec<&str> = ps
                            .lines()
                            .skip(1)
                            .filter_map(|l| l.split_whitespace().next())
                            .collect();
                        Ok((pids.len() == 2 && !pids.contains(&"0")).then_some(ps))
                    },
                )?;
                ensure!(
                    ps.lines()
                        .skip(1)
                        .any(|l| l.split_whitespace().next() == Some(&pid.to_string())),
                    "task ps does not list the init pid {pid}: {ps}"
                );
                let metrics = ctx.ctr_ok(&["task", "metrics", id])?;
                ensure!(metrics.contains("pids.current"), "metrics: {metrics}");
                // `sleep` is its PID namespace's init: only SIGKILL reaches it from outside.
                ctx.ctr_ok(&["task", "kill", "-s", "SIGKILL", id])?;
                ctx.wait_status(id, "STOPPED")?;
                Ok(())
            })();
            let removed = ctx.remove(id);
            let seen = (|| {
                let task = format!("\"id\":\"{id}\"");
                events.wait_for(Duration::from_secs(10), "/tasks/exit 137", |l| {
                    l.contains("/tasks/exit")
                        && l.contains(&task)
                        && l.contains("\"exit_status\":137")
                })?;
                for topic in [
                    "/tasks/create",
                    "/tasks/start",
                    "/tasks/exec-added",
                    "/tasks/exec-started",
                    "/tasks/exit",
                    "/tasks/delete",
                ] {
                    events.wait_for(Duration::from_secs(10), topic, |l| {
                        l.contains(topic) && l.contains(id)
                    })?;
                }
                Ok::<_, anyhow::Error>(())
            })();
            stop_events(events);
            result?;
            removed?;
            seen
        })()
    });

    case!(suite, "oom_kill_is_published", {
        (|| {
            let id = "hog";
            let events = events(&ctx.containerd)?;
            // Detached, so the task (and its cgroup in the guest) stays until the event is seen.
            let result = (|| {
                ctx.ctr_ok(&[
                    "run",
                    "--runtime",
                    RUNTIME,
                    "-d",
                    "--memory-limit",
                    "33554432",
                    IMAGE,
                    id,
                    "sh",
                    "-c",
                    "x=0123456789; while true; do x=$x$x; done",
                ])?;
                let container = format!("\"container_id\":\"{id}\"");
                events.wait_for(Duration::from_secs(60), "/tasks/oom", |l| {
                    l.contains("/tasks/oom") && l.contains(&container)
                })?;
                events.wait_for(Duration::from_secs(30), "/tasks/exit 137", |l| {
                    l.contains("/tasks/exit")
                        && l.contains(&container)
                        && l.contains("\"exit_status\":137")
                })
            })();
            let removed = ctx.remove(id);
            stop_events(events);
            result?;
            removed
        })()
    });

    case!(suite, "delete_leaves_nothing", {
        ctx.assert_clean(&sockets_before)
    });

    case!(suite, "runtime_config_path_option_is_used", {
        (|| {
            // A settings file naming a guest image that does not exist: the task must fail on it,
            // proving the shim read the file named by the runtime options, not the environment's.
            let config = ctx.work.join("other-runtime.toml");
            std::fs::write(
                &config,
                format!(
                    "state_dir = \"{}\"\n[guest]\nimage_dir = \"/nonexistent/coffer-image\"\n",
                    ctx.state.display()
                ),
            )?;
            let config = config.display().to_string();
            let out = ctx.containerd.ctr_output(
                &[
                    "run",
                    "--runtime",
                    RUNTIME,
                    "--runtime-config-path",
                    &config,
                    "--rm",
                    IMAGE,
                    "optpath",
                    "true",
                ],
                Duration::from_secs(60),
            )?;
            let err = String::from_utf8_lossy(&out.stderr);
            let _ = ctx.remove("optpath");
            ensure!(!out.status.success(), "ran with a missing guest image");
            ensure!(
                err.contains("/nonexistent/coffer-image"),
                "the error does not name the configured image: {err}"
            );
            ctx.assert_clean(&sockets_before)
        })()
    });

    case!(suite, "guest_pull_from_the_cri_image_annotation", {
        (|| {
            // The runtime config asks for guest pull (as a TEE handler's does): the container's
            // root comes from the image the CRI annotation names, pulled by the guest through a
            // registry tunnel — not from containerd's snapshot. The pushed image carries a marker
            // the imported one lacks.
            let registry = Registry::start()?;
            let host = format!("127.0.0.1:{}", registry.port);
            let layout = ctx.work.join("image/layout");
            let bundle = ctx.work.join("gp-bundle");
            let umoci = |args: &[&str]| -> anyhow::Result<()> {
                let out = std::process::Command::new("umoci").args(args).output()?;
                ensure!(
                    out.status.success(),
                    "umoci {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                Ok(())
            };
            let image = format!("{}:latest", layout.display());
            umoci(&["unpack", "--image", &image, &bundle.display().to_string()])?;
            std::fs::write(bundle.join("rootfs/guest-pulled"), "yes\n")?;
            umoci(&["repack", "--image", &image, &bundle.display().to_string()])?;
            let digest = registry.push(&layout, "shim/busybox:latest")?;
            let reference = format!("{host}/shim/busybox@{digest}");
            let mut entries = std::collections::BTreeMap::new();
            entries.insert(
                Entry::Registries,
                format!("[[registry]]\nhost = \"{host}\"\ninsecure = true\n"),
            );
            let initdata = Initdata::build(Algorithm::Sha256, &entries)?;
            let initdata_file = ctx.work.join("gp-initdata.toml");
            std::fs::write(&initdata_file, initdata.raw())?;
            let image_dir = guest_image()
                .vmlinux
                .parent()
                .context("image dir")?
                .to_owned();
            let config = ctx.work.join("gp-runtime.toml");
            let metrics_dir = ctx.work.join("textfile-collector");
            std::fs::create_dir_all(&metrics_dir)?;
            std::fs::write(
                &config,
                format!(
                    "state_dir = \"{}\"\ninitdata = \"{}\"\nmetrics_dir = \"{}\"\n[guest]\n\
                     image_dir = \"{}\"\nboot_timeout_secs = 120\nguest_pull = true\n\
                     registry_tunnels = [\"{host}\"]\n",
                    ctx.state.display(),
                    initdata_file.display(),
                    metrics_dir.display(),
                    image_dir.display()
                ),
            )?;
            // #7 observability: what a node exporter's textfile collector would read while the
            // pod lives (the last version of the pod's file seen).
            let watching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
            let watcher = {
                let (dir, watching) = (metrics_dir.clone(), std::sync::Arc::clone(&watching));
                std::thread::spawn(move || {
                    let mut seen = String::new();
                    while watching.load(std::sync::atomic::Ordering::SeqCst) {
                        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                            let name = entry.file_name().to_string_lossy().into_owned();
                            if name.starts_with("coffer-")
                                && name.ends_with(".prom")
                                && let Ok(text) = std::fs::read_to_string(entry.path())
                            {
                                seen = text;
                            }
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    seen
                })
            };
            let annotation = format!("io.kubernetes.cri.image-name={reference}");
            let out = ctx.containerd.ctr_output(
                &[
                    "run",
                    "--runtime",
                    RUNTIME,
                    "--runtime-config-path",
                    &config.display().to_string(),
                    "--annotation",
                    &annotation,
                    "--rm",
                    IMAGE,
                    "guestpull",
                    "cat",
                    "/guest-pulled",
                ],
                Duration::from_secs(240),
            )?;
            let _ = ctx.remove("guestpull");
            watching.store(false, std::sync::atomic::Ordering::SeqCst);
            let seen = watcher
                .join()
                .map_err(|_| anyhow::anyhow!("metrics watcher panicked"))?;
            ensure!(
                out.status.success() && String::from_utf8_lossy(&out.stdout) == "yes\n",
                "exit {:?}, stdout {:?}, stderr {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            for wanted in [
                "coffer_sandbox_boot_seconds{sandbox_id=\"guestpull\"}",
                "container_id=\"guestpull\",phase=\"download\"}",
                "container_id=\"guestpull\",phase=\"decrypt_verify_unpack\"}",
                "container_id=\"guestpull\",phase=\"total\"}",
            ] {
                ensure!(seen.contains(wanted), "metrics lack {wanted}: {seen:?}");
            }
            ensure!(
                std::fs::read_dir(&metrics_dir)?.next().is_none(),
                "the pod's metrics file outlived it"
            );
            ctx.assert_clean(&sockets_before)
        })()
    });

    case!(suite, "vm_killed_marks_task_exited", {
        (|| {
            let id = "vmkill";
            let events = events(&ctx.containerd)?;
            ctx.run_detached(id, &["sleep", "1000"])?;
            let result = (|| {
                ctx.wait_status(id, "RUNNING")?;
                let qemu: Vec<_> = ctx
                    .vm_processes(id)
                    .into_iter()
                    .filter(|(_, cmd)| cmd.contains("qemu-system"))
                    .collect();
                ensure!(qemu.len() == 1, "expected one QEMU: {qemu:?}");
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(i32::try_from(qemu[0].0)?),
                    nix::sys::signal::Signal::SIGKILL,
                )?;
                ctx.wait_status(id, "STOPPED")?;
                Ok(())
            })();
            let removed = ctx.remove(id);
            let seen = events.wait_for(Duration::from_secs(10), "/tasks/exit", |l| {
                l.contains("/tasks/exit") && l.contains(id)
            });
            stop_events(events);
            result?;
            removed?;
            seen?;
            let left = ctx.vm_processes(id);
            ensure!(left.is_empty(), "VM processes left: {left:?}");
            ensure!(!ctx.sandbox_dir(id).exists(), "sandbox directory left");
            Ok(())
        })()
    });

    case!(suite, "pod_containers_share_one_vm", {
        (|| {
            let pod = "pod1";
            let annotate = |kind: &str| {
                vec![
                    "--annotation".to_owned(),
                    format!("io.kubernetes.cri.container-type={kind}"),
                    "--annotation".to_owned(),
                    format!("io.kubernetes.cri.sandbox-id={pod}"),
                ]
            };
            let run = |id: &str, kind: &str, mode: &str, cmd: &[&str]| {
                let mut args: Vec<String> = vec![
                    "run".into(),
                    "--runtime".into(),
                    RUNTIME.into(),
                    mode.into(),
                ];
                args.extend(annotate(kind));
                args.extend([IMAGE.to_owned(), id.to_owned()]);
                args.extend(cmd.iter().map(|s| (*s).to_owned()));
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                ctx.containerd.ctr_output(&args, Duration::from_secs(180))
            };
            let result = (|| {
                // The pause container: it holds the pod VM and runs nothing in it.
                let out = run(pod, "sandbox", "-d", &["/pause"])?;
                ensure!(
                    out.status.success(),
                    "sandbox: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                ctx.wait_status(pod, "RUNNING")?;
                let out = run("member1", "container", "-d", &["sleep", "1000"])?;
                ensure!(
                    out.status.success(),
                    "member1: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                ctx.wait_status("member1", "RUNNING")?;
                let out = run("member2", "container", "--rm", &["echo", "joined"])?;
                ensure!(
                    out.status.success() && out.stdout == b"joined\n",
                    "member2: {} {:?} {}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                let qemu: Vec<_> = processes_mentioning("qemu-system")
                    .into_iter()
                    .filter(|(_, cmd)| cmd.contains(&ctx.state.display().to_string()))
                    .collect();
                ensure!(qemu.len() == 1, "one VM for the pod expected: {qemu:?}");
                ensure!(
                    qemu[0]
                        .1
                        .contains(&format!("{}/", ctx.sandbox_dir(pod).display())),
                    "the VM is not the pod's: {qemu:?}"
                );
                let shims = ctx.shim_processes();
                ensure!(shims.len() == 1, "one shim for the pod expected: {shims:?}");
                // Deleting a member leaves the pod VM running.
                ctx.remove("member1")?;
                ensure!(
                    ctx.sandbox_dir(pod).exists(),
                    "the pod VM went with a member"
                );
                ensure!(
                    ctx.task(pod)?.is_some_and(|(_, s)| s == "RUNNING"),
                    "the pod stopped"
                );
                Ok(())
            })();
            let _ = ctx.remove("member1");
            let removed = ctx.remove(pod);
            result?;
            removed?;
            ctx.assert_clean(&sockets_before)
        })()
    });

    let mut ctx = ctx;
    case!(suite, "containerd_restart_keeps_running_pods_whole", {
        (|| {
            // The shim is a process of its own, not containerd's child: a containerd restart
            // leaves the pod running — the same shim, the same VM, its state — and the
            // restarted containerd takes it up again. Never half of it.
            let id = "ctdrestart";
            ctx.run_detached(id, &["sh", "-c", "echo before >/tmp/mark; exec sleep 1000"])?;
            ctx.wait_status(id, "RUNNING")?;
            let vm = ctx.vm_processes(id);
            let shims = ctx.shim_processes();
            ensure!(!vm.is_empty(), "no VM processes found for {id}");
            ensure!(shims.len() == 1, "expected one shim: {shims:?}");
            let result = (|| {
                ctx.containerd.restart()?;
                ensure!(
                    ctx.vm_processes(id) == vm,
                    "the VM changed across the restart"
                );
                ensure!(
                    ctx.shim_processes() == shims,
                    "the shim changed across the restart"
                );
                ctx.wait_status(id, "RUNNING")?;
                let out = ctx.containerd.ctr_output(
                    &["task", "exec", "--exec-id", "after", id, "cat", "/tmp/mark"],
                    Duration::from_secs(60),
                )?;
                ensure!(
                    out.status.success() && out.stdout == b"before\n",
                    "exec after the restart: {} {:?} {}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                ensure!(ctx.sandbox_dir(id).exists(), "the pod's state is gone");
                Ok(())
            })();
            let removed = ctx.remove(id);
            result?;
            removed?;
            ctx.assert_clean(&sockets_before)
        })()
    });

    case!(suite, "killed_shim_and_containerd_restart_leave_no_vm", {
        (|| {
            let id = "shimkill";
            ctx.run_detached(id, &["sleep", "1000"])?;
            ctx.wait_status(id, "RUNNING")?;
            ensure!(
                !ctx.vm_processes(id).is_empty(),
                "no VM processes found for {id}"
            );
            let shims = ctx.shim_processes();
            ensure!(shims.len() == 1, "expected one shim: {shims:?}");
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(i32::try_from(shims[0].0)?),
                nix::sys::signal::Signal::SIGKILL,
            )?;
            // The VM dies with its shim (a parent-death signal), before containerd does
            // anything about the dead shim.
            let died = eventually(
                Duration::from_secs(10),
                "VM processes dying with the shim",
                || Ok(ctx.vm_processes(id).is_empty().then_some(())),
            );
            ctx.containerd.restart()?;
            let gone = died.and_then(|()| {
                eventually(Duration::from_secs(30), "VM processes gone", || {
                    Ok(ctx.vm_processes(id).is_empty().then_some(()))
                })
            });
            let vm_left = ctx.vm_processes(id);
            let status = ctx.task(id)?;
            let _ = ctx.remove(id);
            gone.with_context(|| format!("VM processes left: {vm_left:?}"))?;
            ensure!(
                status.as_ref().is_none_or(|(_, s)| s != "RUNNING"),
                "task still running after its shim died: {status:?}"
            );
            ensure!(!ctx.sandbox_dir(id).exists(), "sandbox directory left");
            Ok(())
        })()
    });

    case!(suite, "nothing_left_at_the_end", {
        ctx.assert_clean(&sockets_before)
    });

    let code = suite.finish();
    drop(ctx);
    code
}
