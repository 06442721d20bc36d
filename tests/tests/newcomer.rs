//! The CLI a newcomer trusts (issue #27), against real components (a `docker-registry` with
//! htpasswd, `coffer-kbs` processes, the shim binary, a VM): every failure is one line, says each
//! cause once, holds no Rust internals (`Some(`, `Other(`, a TOML snippet), and carries a hint
//! where the mistake is a common one; `--help` examples, `--version`, `COFFER_LOG` validated by
//! every binary, no colour codes off a terminal; and a pod `coffer policy gen` pinned, from an
//! image whose config sets neither HOME nor PATH, starts under `coffer sandbox run`.
// Test harness code: a failed expectation is a test failure.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, ExitCode, Output};

use anyhow::{Context, ensure};
use coffer_tests::kbs::Broker;
use coffer_tests::registry::Registry;
use coffer_tests::{Suite, bin, busybox_rootfs, case, coffer, guest_image, require_tool};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn run(program: &Path, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Output> {
    Command::new(program)
        .args(args)
        .env_remove("COFFER_LOG")
        .env_remove("RUST_LOG")
        .env_remove("REGISTRY_AUTH_FILE")
        .envs(env.iter().copied())
        .output()
        .with_context(|| format!("running {}", program.display()))
}

/// The failure of `out` is exactly one line on stderr starting with `prefix`, containing each of
/// `wanted`, free of Debug formatting and of any sentence said twice; returns the line.
fn one_line(out: &Output, prefix: &str, wanted: &[&str]) -> anyhow::Result<String> {
    ensure!(!out.status.success(), "it succeeded: {out:?}");
    let err = text(&out.stderr);
    // Log lines (level-prefixed, e.g. the loud INSECURE warning) are not the error report.
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| !l.contains(" WARN ") && !l.contains(" INFO "))
        .collect();
    ensure!(lines.len() == 1, "not one line: {err}");
    let line = lines[0];
    ensure!(line.starts_with(prefix), "{line}");
    for w in wanted {
        ensure!(line.contains(w), "{w:?} is not in: {line}");
    }
    for internal in ["Some(", "Other(", "Custom {", "^^^", " | "] {
        ensure!(!line.contains(internal), "{internal:?} in: {line}");
    }
    let mut seen = std::collections::BTreeSet::new();
    let parts = line.replace(['(', ')'], ": ").replace("; ", ": ");
    for sentence in parts.split(": ").map(str::trim).filter(|s| s.len() > 12) {
        ensure!(seen.insert(sentence), "said twice, {sentence:?}: {line}");
    }
    Ok(line.to_owned())
}

fn main() -> ExitCode {
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path();
    let p = |path: &Path| path.display().to_string();
    let mut suite = Suite::new("newcomer");
    let coffer = coffer();
    let rootfs = dir.join("rootfs");
    busybox_rootfs(&rootfs);
    let rootfs_s = p(&rootfs);
    let state_s = p(&dir.join("state"));
    // `sandbox run` checks the guest image before what these cases break.
    let image = guest_image();
    let image_dir = image
        .vmlinux
        .parent()
        .expect("image directory")
        .display()
        .to_string();

    // `sandbox run` with a runtime configuration that fails to load.
    let run_with_config = |config: &Path| {
        let config = p(config);
        run(
            &coffer,
            &[
                "sandbox",
                "run",
                "--config",
                &config,
                "--rootfs",
                &rootfs_s,
                "--image-dir",
            ]
            .into_iter()
            .chain([image_dir.as_str(), "--", "true"])
            .collect::<Vec<_>>(),
            &[],
        )
    };

    case!(
        suite,
        "runtime_toml_typo_is_one_line_with_its_line_number",
        (|| {
            let config = dir.join("typo.toml");
            std::fs::write(&config, "[guest]\nmemroy_mib = 512\n")?;
            let out = run_with_config(&config)?;
            one_line(
                &out,
                "coffer: ",
                &[&format!(
                    "{}, line 2: unknown field `memroy_mib`",
                    p(&config)
                )],
            )?;
            Ok(())
        })()
    );

    case!(
        suite,
        "missing_config_says_so_once",
        (|| {
            let missing = dir.join("absent.toml");
            let out = run_with_config(&missing)?;
            let line = one_line(
                &out,
                "coffer: ",
                &[&format!(
                    "reading {}: No such file or directory",
                    p(&missing)
                )],
            )?;
            ensure!(line.matches("No such file").count() == 1, "{line}");
            Ok(())
        })()
    );

    case!(
        suite,
        "permission_denied_as_non_root_hints_at_root_or_state_dir",
        (|| {
            require_tool("setpriv");
            // The binary where user nobody may run it.
            let nobody_dir = dir.join("nobody");
            std::fs::create_dir(&nobody_dir)?;
            let copy = nobody_dir.join("coffer");
            std::fs::copy(&coffer, &copy)?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
            std::fs::set_permissions(&nobody_dir, std::fs::Permissions::from_mode(0o755))?;
            let as_nobody = |args: &[&str]| {
                Command::new("setpriv")
                    .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                    .arg(&copy)
                    .args(args)
                    .env_remove("COFFER_LOG")
                    .output()
                    .context("running setpriv")
            };
            // /run/coffer (the default state directory) belongs to root.
            let out = as_nobody(&[
                "sandbox",
                "run",
                "--rootfs",
                &rootfs_s,
                "--image-dir",
                &image_dir,
                "--",
                "true",
            ])?;
            one_line(
                &out,
                "coffer: ",
                &[
                    "Permission denied",
                    "(hint: run as root, or point --state-dir",
                ],
            )?;
            let out = as_nobody(&[
                "image",
                "pull",
                "127.0.0.1:1/x:1",
                "--dest",
                "/tmp/never",
                "--store",
                "/var/lib/coffer/not-yours",
            ])?;
            one_line(&out, "coffer: ", &["Permission denied", "--store"])?;
            Ok(())
        })()
    );

    case!(
        suite,
        "tee_snp_on_a_host_without_snp_gives_its_reason_once",
        (|| {
            ensure!(
                !Path::new("/dev/sev").exists(),
                "this host has an AMD secure processor: the case needs one without"
            );
            let out = run(
                &coffer,
                &[
                    "sandbox",
                    "run",
                    "--tee",
                    "snp",
                    "--rootfs",
                    &rootfs_s,
                    "--image-dir",
                    &image_dir,
                    "--state-dir",
                    &state_s,
                    "--",
                    "true",
                ],
                &[],
            )?;
            let line = one_line(
                &out,
                "coffer: ",
                &[
                    "AMD SEV-SNP is not available on this host",
                    "/dev/sev does not exist",
                ],
            )?;
            ensure!(
                line.matches("/dev/sev does not exist").count() == 1,
                "{line}"
            );
            Ok(())
        })()
    );

    case!(
        suite,
        "policy_gen_names_kinds_and_fields_in_words",
        (|| {
            let deployment = dir.join("deployment.yaml");
            std::fs::write(&deployment, "apiVersion: apps/v1\nkind: Deployment\n")?;
            let out = run(&coffer, &["policy", "gen", &p(&deployment)], &[])?;
            one_line(
                &out,
                "coffer: ",
                &["document 1 is of kind Deployment; policy gen takes a Pod"],
            )?;
            let typo = dir.join("typo.yaml");
            std::fs::write(
                &typo,
                "kind: Pod\nspec:\n  containers:\n  - name: a\n    image: 127.0.0.1:1/x:1\n    comand: [/a]\n",
            )?;
            let out = run(&coffer, &["policy", "gen", &p(&typo)], &[])?;
            one_line(
                &out,
                "coffer: ",
                &["unknown field spec.containers[0].comand (did you mean command?)"],
            )?;
            Ok(())
        })()
    );

    case!(
        suite,
        "registry_401_and_plain_http_have_hints",
        (|| {
            let registry = Registry::start_with_auth(Some(("u", "registry-pass")))?;
            let layout = coffer_tests::vectors_dir().join("ocicrypt/src");
            registry.push_as(&layout, "demo/x:v1", Some("u:registry-pass"))?;
            let host = format!("127.0.0.1:{}", registry.port);
            let reference = format!("docker://{host}/demo/x:v1");
            let out = run(
                &coffer,
                &["image", "inspect", &reference, "--insecure-registry", &host],
                &[],
            )?;
            one_line(
                &out,
                "coffer: ",
                &[
                    "registry answered 401",
                    &format!(
                        "(hint: authentication required: give credentials for {host} with --authfile FILE or REGISTRY_AUTH_FILE"
                    ),
                ],
            )?;
            let out = run(&coffer, &["image", "inspect", &reference], &[])?;
            one_line(
                &out,
                "coffer: ",
                &[&format!(
                    "(hint: this registry speaks plain HTTP: add --insecure-registry {host})"
                )],
            )?;
            let pull_dest = p(&dir.join("never"));
            let out = run(
                &coffer,
                &[
                    "image",
                    "pull",
                    &reference,
                    "--dest",
                    &pull_dest,
                    "--store",
                    &p(&dir.join("store")),
                ],
                &[],
            )?;
            one_line(&out, "coffer: ", &["add --insecure-registry"])?;
            Ok(())
        })()
    );

    case!(
        suite,
        "broker_serving_a_ca_certificate_is_explained",
        (|| {
            require_tool("openssl");
            let ca = dir.join("ca.pem");
            let key = dir.join("ca-key.pem");
            let out = Command::new("openssl")
                .args(
                    "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2"
                        .split(' '),
                )
                .args([
                    "-subj",
                    "/CN=127.0.0.1",
                    "-addext",
                    "subjectAltName=IP:127.0.0.1",
                ])
                .args(["-addext", "basicConstraints=critical,CA:TRUE"])
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&ca)
                .output()?;
            ensure!(out.status.success(), "openssl: {}", text(&out.stderr));
            let broker = Broker::start_https(dir, "ca-as-server", &ca, &key)?;
            let out = run(
                &coffer,
                &[
                    "kbs",
                    "get-resource",
                    "--kbs-url",
                    &broker.url,
                    "--kbs-ca",
                    &p(&ca),
                    "--path",
                    "default/key/1",
                    "--kbs-evidence",
                    "sample",
                ],
                &[],
            )?;
            one_line(
                &out,
                "coffer: ",
                &["invalid peer certificate: the server presents a CA certificate as its own"],
            )?;
            let log = std::fs::read_to_string(&broker.log)?;
            ensure!(log.contains("coffer-kbs serving https"), "{log}");
            ensure!(!log.contains("Some(") && !log.contains('\x1b'), "{log}");
            Ok(())
        })()
    );

    case!(
        suite,
        "sample_evidence_under_the_default_policy_is_explained",
        (|| {
            // KBS-04: the default policy refuses sample evidence; both sides now say why.
            let broker = Broker::start(dir, "default-policy", None, b"key")?;
            let out = broker.get_resource(&[])?;
            one_line(
                &out,
                "coffer: ",
                &[
                    "kbs policy denied default/key/1",
                    "its default policy never releases to sample evidence",
                ],
            )?;
            let log = std::fs::read_to_string(&broker.log)?;
            ensure!(
                log.contains("the default resource policy never releases to sample evidence"),
                "{log}"
            );
            ensure!(
                !log.contains('\x1b'),
                "colour codes in the broker's log file: {log}"
            );
            Ok(())
        })()
    );

    case!(
        suite,
        "coffer_log_is_validated_by_every_binary",
        (|| {
            let shim = bin("containerd-shim-coffer-v2");
            let kbs = bin("coffer-kbs");
            let config = dir.join("kbs-never.toml");
            for value in ["verbose", "coffer=loud"] {
                let env = [("COFFER_LOG", value)];
                let out = run(&coffer, &["policy", "gen", "/nonexistent.yaml"], &env)?;
                one_line(&out, "coffer: ", &[&format!("COFFER_LOG={value}: ")])?;
                let out = run(&kbs, &["--config", &p(&config)], &env)?;
                one_line(&out, "coffer-kbs: ", &[&format!("COFFER_LOG={value}: ")])?;
                let out = run(
                    &shim,
                    &[
                        "-namespace",
                        "default",
                        "-address",
                        "/nonexistent.sock",
                        "-id",
                        "x",
                        "delete",
                    ],
                    &env,
                )?;
                one_line(
                    &out,
                    "containerd-shim-coffer-v2: ",
                    &[&format!("COFFER_LOG={value}: ")],
                )?;
            }
            // RUST_LOG is read when COFFER_LOG is unset, and validated the same way.
            let out = run(&kbs, &["--config", &p(&config)], &[("RUST_LOG", "loud")])?;
            one_line(&out, "coffer-kbs: ", &["RUST_LOG=loud: "])?;
            // A valid level is taken, and logs written to a file (not a terminal) have no colour.
            let out = run(
                &coffer,
                &[
                    "image",
                    "inspect",
                    "127.0.0.1:1/x:1",
                    "--insecure-registry",
                    "127.0.0.1:1",
                ],
                &[("COFFER_LOG", "info")],
            )?;
            let err = text(&out.stderr);
            ensure!(err.contains(" WARN ") && err.contains("INSECURE"), "{err}");
            ensure!(
                !err.contains('\x1b'),
                "colour codes off a terminal: {err:?}"
            );
            Ok(())
        })()
    );

    case!(
        suite,
        "help_shows_examples_and_the_binaries_name_themselves",
        (|| {
            for command in [
                "",
                "sandbox",
                "sandbox run",
                "sandbox gc",
                "image",
                "image build",
                "image pull",
                "image inspect",
                "image encrypt",
                "image sign",
                "attestation",
                "attestation verify",
                "attestation testing-ca",
                "attestation forge",
                "policy",
                "policy eval",
                "policy gen",
                "kbs",
                "kbs get-resource",
                "kbs check",
                "kbs load",
                "measure",
                "measure snp",
                "measure tdx",
                "measure guest",
            ] {
                let mut args: Vec<&str> = command.split_whitespace().collect();
                args.push("--help");
                let out = run(&coffer, &args, &[])?;
                ensure!(out.status.success(), "coffer {command} --help: {out:?}");
                let help = text(&out.stdout);
                ensure!(
                    help.contains("\nExamples:\n  coffer "),
                    "coffer {command} --help has no example: {help}"
                );
            }
            let kbs = bin("coffer-kbs");
            let out = run(&kbs, &["--version"], &[])?;
            ensure!(text(&out.stdout).starts_with("coffer-kbs "), "{out:?}");
            let out = run(&bin("kbs-load"), &["--version"], &[])?;
            ensure!(text(&out.stdout).starts_with("kbs-load "), "{out:?}");
            let out = run(&kbs, &["--help"], &[])?;
            let help = text(&out.stdout);
            for wanted in ["GET  /health", "GET  /metrics", "Examples:", "key broker"] {
                ensure!(
                    help.contains(wanted),
                    "{wanted:?} not in coffer-kbs --help: {help}"
                );
            }
            ensure!(!help.contains("coffer-attestation"), "{help}");
            let shim = bin("containerd-shim-coffer-v2");
            for flag in ["-h", "--help"] {
                let out = run(&shim, &[flag], &[])?;
                ensure!(out.status.success(), "shim {flag}: {out:?}");
                ensure!(text(&out.stdout).contains("Examples:"), "{out:?}");
            }
            Ok(())
        })()
    );

    case!(
        suite,
        "policy_gen_pod_without_home_or_path_starts_under_sandbox_run",
        (|| {
            // The image's config has no Env; `sandbox run` adds the runtime's default PATH and
            // HOME, and the policy `policy gen` wrote lists exactly those.
            let registry = Registry::start()?;
            let host = format!("127.0.0.1:{}", registry.port);
            let layout = coffer_tests::umoci_layout(dir, "no-env", |_| Ok(()))?;
            let digest = registry.push(&layout, "newcomer/no-env:v1")?;
            let tagged = format!("{host}/newcomer/no-env:v1");
            let out = run(
                &coffer,
                &["image", "inspect", &tagged, "--insecure-registry", &host],
                &[],
            )?;
            ensure!(out.status.success(), "inspect: {}", text(&out.stderr));
            let config: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            let env = config["env"].to_string();
            ensure!(
                !env.contains("PATH=") && !env.contains("HOME="),
                "the image sets them: {env}"
            );

            let script = "echo home=$HOME path=$PATH";
            let pod = dir.join("no-env-pod.yaml");
            std::fs::write(
                &pod,
                format!(
                    "apiVersion: v1\nkind: Pod\nmetadata:\n  name: no-env\n  annotations:\n    coffer.dev/allow-logs: \"true\"\nspec:\n  containers:\n  - name: app\n    image: {tagged}\n    command: [\"/bin/sh\", \"-c\", \"{script}\"]\n"
                ),
            )?;
            let initdata = dir.join("no-env-initdata.toml");
            let out = run(
                &coffer,
                &[
                    "policy",
                    "gen",
                    &p(&pod),
                    "--insecure-registry",
                    &host,
                    "-o",
                    &p(&initdata),
                ],
                &[],
            )?;
            ensure!(out.status.success(), "policy gen: {}", text(&out.stderr));
            let pinned = format!("{host}/newcomer/no-env@{digest}");
            ensure!(text(&out.stderr).contains(&pinned), "{}", text(&out.stderr));

            let state = dir.join("vm-state");
            let sandbox_run = |image: &str| {
                Command::new(&coffer)
                    .args([
                        "sandbox",
                        "run",
                        "--image",
                        image,
                        "--registry-tunnel",
                        &host,
                    ])
                    .args(["--image-dir", &image_dir, "--state-dir", &p(&state)])
                    .args(["--initdata", &p(&initdata), "--", "/bin/sh", "-c", script])
                    .env_remove("COFFER_LOG")
                    .stdin(std::process::Stdio::null())
                    .output()
            };
            let out = sandbox_run(&pinned)?;
            let want = format!(
                "home=/root path={}\n",
                coffer_runtime::spec::DEFAULT_ENV[0].trim_start_matches("PATH=")
            );
            ensure!(
                out.status.code() == Some(0) && text(&out.stdout) == want,
                "{out:?}"
            );

            // The same pod by tag is refused, pointing at the digest policy gen printed.
            let out = sandbox_run(&tagged)?;
            // The pull's progress may precede it: the error is the one line `coffer: …`.
            let err = text(&out.stderr);
            let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("coffer: ")).collect();
            ensure!(errors.len() == 1, "{err}");
            let report = Output {
                status: out.status,
                stdout: Vec::new(),
                stderr: errors[0].as_bytes().to_vec(),
            };
            one_line(
                &report,
                "coffer: ",
                &[
                    "is not pinned by digest",
                    &format!(
                        "(hint: a confidential policy admits images pinned by digest only: run with --image {host}/newcomer/no-env@sha256:…"
                    ),
                ],
            )?;
            coffer_tests::assert_nothing_left(&state)
        })()
    );

    suite.finish()
}
