//! `coffer policy eval` end to end: the real `coffer` binary decides requests against the shipped
//! confidential policy, from policy + data files and from an initdata document, exactly as the
//! agent would (AGT-CC, AGT-EX, POL-01).
// Test harness code: a failed expectation is a test failure.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, ExitCode, Output};

use anyhow::{Context, ensure};
use coffer_initdata::{Algorithm, Entry, Initdata};
use coffer_tests::{Suite, case, coffer};
use serde_json::json;

const IMAGE: &str =
    "registry.example/app@sha256:1111111111111111111111111111111111111111111111111111111111111111";

fn data() -> serde_json::Value {
    json!({"containers": [{
        "name": "app",
        "image": IMAGE,
        "args": ["/app/server"],
        "env": ["PATH=/bin"],
        "user": {"uid": 1000, "gid": 1000},
        "exec": [["/app/health"]]
    }]})
}

fn process(args: &[&str]) -> serde_json::Value {
    json!({
        "args": args,
        "env": ["PATH=/bin"],
        "cwd": "/",
        "user": {"uid": 1000, "gid": 1000},
        "terminal": false,
        "capabilities": {"bounding": [], "effective": [], "permitted": [], "inheritable": [], "ambient": []},
        "no_new_privileges": true
    })
}

fn create(image: &str) -> serde_json::Value {
    let ns: Vec<_> = ["pid", "mount", "network"]
        .iter()
        .map(|t| json!({"type": t, "path": null}))
        .collect();
    json!({
        "container_id": "c1",
        "rootfs": {"source": "image", "image": image},
        "process": process(&["/app/server"]),
        "namespaces": ns,
        "mounts": [],
        "devices": [],
        "hooks_present": false,
        "sysctls": {},
        "masked_paths": ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
            "/proc/sched_debug", "/proc/scsi", "/proc/timer_list", "/proc/timer_stats", "/sys/firmware"],
        "readonly_paths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
    })
}

fn write(dir: &Path, name: &str, value: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, value).unwrap();
    path
}

fn eval(args: &[&str]) -> anyhow::Result<Output> {
    Command::new(coffer())
        .args(["policy", "eval"])
        .args(args)
        .output()
        .context("running coffer")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const POD: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: demo
  annotations:
    coffer.dev/allow-logs: "true"
spec:
  enableServiceLinks: false
  initContainers:
  - name: init
    image: HOST/peers/hello:v1
    command: ["/bin/sh", "-c", "echo init"]
  containers:
  - name: app
    image: HOST/peers/hello:v1
    command: ["/app/server"]
    args: ["--port", "8080"]
    env:
    - name: MODE
      value: prod
    - name: POD_IP
      valueFrom:
        fieldRef:
          fieldPath: status.podIP
    workingDir: /app
    securityContext:
      runAsUser: 1000
      runAsGroup: 1000
      allowPrivilegeEscalation: false
      capabilities:
        add: ["NET_ADMIN"]
    readinessProbe:
      exec:
        command: ["/app/health", "--ready"]
  - name: side
    image: HOST/peers/hello:v1
"#;

/// A small genpolicy-shaped policy: container tracking in `data.pstate`, exec matched argument by
/// argument against `policy_data.commands`.
const KATA_RULES: &str = r#"package agent_policy

import future.keywords.in
import future.keywords.if

default CreateContainerRequest := {"allowed": false, "ops": []}
default ExecProcessRequest := false

CreateContainerRequest := {"allowed": true, "ops": [op]} if {
    print("args", input.OCI.Process.Args)
    input.OCI.Process.Args == ["/app/server"]
    not input.container_id in object.get(data.pstate, "containers", [])
    op := {"op": "add", "path": "/containers", "value": [input.container_id]}
}

ExecProcessRequest if {
    input.container_id in data.pstate.containers
    input.process.Args in policy_data.commands
}
"#;

/// The CreateContainer containerd would send for one of POD's containers.
fn pod_request(
    image: &str,
    args: &[&str],
    env: &[&str],
    cwd: &str,
    user: (u32, u32),
    caps: &[&str],
) -> serde_json::Value {
    let mut request = create(image);
    request["process"]["args"] = json!(args);
    request["process"]["env"] = json!(env);
    request["process"]["cwd"] = json!(cwd);
    request["process"]["user"] = json!({"uid": user.0, "gid": user.1});
    request["process"]["capabilities"]["bounding"] = json!(caps);
    request
}

fn main() -> ExitCode {
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path();
    let policy = write(
        dir,
        "confidential.rego",
        coffer_policies::CONFIDENTIAL_POLICY,
    );
    let data_file = write(dir, "data.json", &data().to_string());
    let good = write(dir, "good.json", &create(IMAGE).to_string());
    let other = write(
        dir,
        "other.json",
        &create(&IMAGE.replace("1111", "2222")).to_string(),
    );
    let p = |path: &Path| path.display().to_string();
    let mut suite = Suite::new("policy_cli");

    case!(
        suite,
        "admits_listed_container_with_record",
        (|| {
            let out = eval(&[
                "--policy",
                &p(&policy),
                "--data",
                &p(&data_file),
                "--request",
                "CreateContainer",
                "--input",
                &p(&good),
            ])?;
            ensure!(out.status.code() == Some(0), "{out:?}");
            ensure!(
                stdout(&out) == "allow\nrecord entry=app\n",
                "{}",
                stdout(&out)
            );
            Ok(())
        })()
    );

    case!(
        suite,
        "denies_other_digest_with_reason",
        (|| {
            let out = eval(&[
                "--policy",
                &p(&policy),
                "--data",
                &p(&data_file),
                "--request",
                "CreateContainer",
                "--input",
                &p(&other),
            ])?;
            ensure!(out.status.code() == Some(1), "{out:?}");
            ensure!(
                stdout(&out).starts_with(
                    "deny: CreateContainer c1: image registry.example/app@sha256:2222"
                ),
                "{}",
                stdout(&out)
            );
            ensure!(
                stdout(&out).contains("is not listed in the policy data"),
                "{}",
                stdout(&out)
            );
            Ok(())
        })()
    );

    case!(
        suite,
        "exec_uses_state_record_from_initdata",
        (|| {
            let entries = std::collections::BTreeMap::from([
                (
                    Entry::Policy,
                    coffer_policies::CONFIDENTIAL_POLICY.to_owned(),
                ),
                (Entry::PolicyData, data().to_string()),
            ]);
            let init = Initdata::build(Algorithm::Sha384, &entries)?;
            let init_file = dir.join("initdata.toml");
            std::fs::write(&init_file, init.raw())?;
            let state = write(
                dir,
                "state.json",
                &json!({"containers": [
                    {"id": "c1", "image_digest": null, "started": true, "record": {"entry": "app"}}
                ]})
                .to_string(),
            );
            let exec = |args: &[&str], name: &str| {
                write(
                    dir,
                    name,
                    &json!({"container_id": "c1", "exec_id": "e1", "process": process(args)})
                        .to_string(),
                )
            };
            let allowed = exec(&["/app/health"], "exec-ok.json");
            let out = eval(&[
                "--initdata",
                &p(&init_file),
                "--request",
                "ExecProcess",
                "--input",
                &p(&allowed),
                "--state",
                &p(&state),
            ])?;
            ensure!(out.status.code() == Some(0), "{out:?}");
            let split = exec(&["/app/health", ";", "sh"], "exec-bad.json");
            let out = eval(&[
                "--initdata",
                &p(&init_file),
                "--request",
                "ExecProcess",
                "--input",
                &p(&split),
                "--state",
                &p(&state),
            ])?;
            ensure!(out.status.code() == Some(1), "{out:?}");
            ensure!(
                stdout(&out).contains("is not listed for policy entry app"),
                "{}",
                stdout(&out)
            );
            Ok(())
        })()
    );

    case!(
        suite,
        "malformed_input_is_an_error_not_a_decision",
        (|| {
            let bad = write(dir, "bad.json", &json!({"container_id": 7}).to_string());
            let out = eval(&[
                "--policy",
                &p(&policy),
                "--request",
                "StartContainer",
                "--input",
                &p(&bad),
            ])?;
            ensure!(out.status.code() == Some(125), "{out:?}");
            let err = String::from_utf8_lossy(&out.stderr);
            ensure!(
                err.contains("is not a valid StartContainer request of input schema version 1"),
                "{err}"
            );
            let bad_data = write(
                dir,
                "bad-data.json",
                &json!({"containers": [{"name": "a", "image": "x:1", "args": []}]}).to_string(),
            );
            let out = eval(&[
                "--policy",
                &p(&policy),
                "--data",
                &p(&bad_data),
                "--request",
                "GetGuestDetails",
                "--input",
                &p(&write(dir, "empty.json", "{}")),
            ])?;
            ensure!(out.status.code() == Some(125), "{out:?}");
            let err = String::from_utf8_lossy(&out.stderr);
            ensure!(
                err.contains("containers[0].image must be a reference pinned by digest"),
                "{err}"
            );
            Ok(())
        })()
    );

    case!(
        suite,
        "gen_admits_exactly_the_pod",
        (|| {
            let registry = coffer_tests::registry::Registry::start()?;
            let layout = coffer_tests::vectors_dir().join("ocicrypt/src");
            let digest = registry.push(&layout, "peers/hello:v1")?;
            let host = format!("127.0.0.1:{}", registry.port);
            let pod = write(dir, "pod.yaml", &POD.replace("HOST", &host));
            let init_file = dir.join("pod-initdata.toml");
            let out = Command::new(coffer())
                .args([
                    "policy",
                    "gen",
                    &p(&pod),
                    "--insecure-registry",
                    &host,
                    "--kbs-url",
                    "https://kbs.example:8080",
                    "-o",
                    &p(&init_file),
                ])
                .output()?;
            ensure!(
                out.status.success(),
                "policy gen: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let init = Initdata::parse(std::fs::read(&init_file)?)?;
            ensure!(
                init.get(Entry::KbsUrl) == Some("https://kbs.example:8080"),
                "kbs url"
            );
            ensure!(
                init.get(Entry::Registries)
                    .is_some_and(|r| r.contains(&host)),
                "registry config"
            );
            let pinned = format!("{host}/peers/hello@{digest}");
            let data: serde_json::Value =
                serde_json::from_str(init.get(Entry::PolicyData).context("policy data")?)?;
            let names: Vec<_> = data["containers"]
                .as_array()
                .context("containers")?
                .iter()
                .map(|c| c["name"].clone())
                .collect();
            ensure!(
                names == [json!("init"), json!("app"), json!("side")],
                "{names:?}"
            );
            ensure!(
                data["containers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|c| c["image"] == json!(pinned)),
                "{data}"
            );

            // The generated policy and its data load in the agent's engine.
            coffer_policies::Engine::new(
                init.get(Entry::Policy).context("policy")?,
                init.get(Entry::PolicyData),
                coffer_policies::Limits::default(),
            )?;

            let decide = |name: &str, request: serde_json::Value| -> anyhow::Result<Output> {
                let input = write(dir, name, &request.to_string());
                eval(&[
                    "--initdata",
                    &p(&init_file),
                    "--request",
                    "CreateContainer",
                    "--input",
                    &p(&input),
                ])
            };
            let app_env = ["FOO=bar", "MODE=prod", "POD_IP=10.0.0.7", "HOSTNAME=demo"];
            let app = |image: &str, args: &[&str], caps: &[&str]| {
                pod_request(image, args, &app_env, "/app", (1000, 1000), caps)
            };
            let argv = ["/app/server", "--port", "8080"];
            let out = decide(
                "pod-app.json",
                app(&pinned, &argv, &["CAP_NET_ADMIN", "CAP_CHOWN"]),
            )?;
            ensure!(
                out.status.code() == Some(0)
                    && stdout(&out) == "allow\nrecord entry=app\nrecord network=set-up\n",
                "app: {}",
                stdout(&out)
            );
            // The side container runs the image's own command and environment, and the default
            // PATH and HOME the runtime adds (`sandbox run`; containerd's PATH for the shim),
            // which this image's config does not set.
            let mut side_env = vec!["FOO=bar"];
            side_env.extend(coffer_runtime::spec::DEFAULT_ENV);
            for (name, env) in [
                ("image env", &side_env[..1]),
                ("runtime env", &side_env[..]),
            ] {
                let side = pod_request(&pinned, &["/app/hello.txt"], env, "/", (0, 0), &[]);
                let out = decide("pod-side.json", side)?;
                ensure!(
                    out.status.code() == Some(0) && stdout(&out).contains("record entry=side"),
                    "side with the {name}: {}",
                    stdout(&out)
                );
            }

            // A modified pod is refused: another digest, an extra capability, a changed command.
            let other = format!("{host}/peers/hello@sha256:{}", "9".repeat(64));
            for (name, request, reason) in [
                (
                    "other digest",
                    app(&other, &argv, &[]),
                    "is not listed in the policy data",
                ),
                (
                    "extra capability",
                    app(&pinned, &argv, &["CAP_SYS_ADMIN"]),
                    "capability CAP_SYS_ADMIN (bounding set) is not allowed",
                ),
                (
                    "changed command",
                    app(&pinned, &["/app/server", "--port", "9090"], &[]),
                    "args [\"/app/server\", \"--port\", \"9090\"] differ",
                ),
            ] {
                let out = decide("pod-bad.json", request)?;
                ensure!(out.status.code() == Some(1), "{name}: {}", stdout(&out));
                ensure!(stdout(&out).contains(reason), "{name}: {}", stdout(&out));
            }
            Ok(())
        })()
    );

    case!(
        suite,
        "gen_refuses_what_it_cannot_pin",
        (|| {
            let privileged = write(
                dir,
                "privileged.yaml",
                "kind: Pod\nspec:\n  containers:\n  - name: a\n    image: 127.0.0.1:1/x:1\n    securityContext:\n      privileged: true\n",
            );
            let host_net = write(
                dir,
                "hostnet.yaml",
                "kind: Pod\nspec:\n  hostNetwork: true\n  containers:\n  - name: a\n    image: 127.0.0.1:1/x:1\n",
            );
            for (file, reason) in [
                (&privileged, "privileged containers cannot be admitted"),
                (&host_net, "pod sets hostNetwork"),
            ] {
                let out = Command::new(coffer())
                    .args([
                        "policy",
                        "gen",
                        &p(file),
                        "--insecure-registry",
                        "127.0.0.1:1",
                    ])
                    .output()?;
                ensure!(out.status.code() == Some(125), "{out:?}");
                let err = String::from_utf8_lossy(&out.stderr);
                ensure!(err.contains(reason), "{err}");
            }
            Ok(())
        })()
    );

    case!(
        suite,
        "gen_refuses_a_misspelt_field_with_its_path",
        (|| {
            // `comand:` would otherwise be ignored and the image's CMD pinned in its place; like
            // `kubectl --validate=strict`, the field is named with its path, before any registry
            // is asked.
            let typo = write(
                dir,
                "typo.yaml",
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: t\nspec:\n  containers:\n  - name: a\n    image: 127.0.0.1:1/x:1\n    imagePullPolicy: Always\n  - name: b\n    image: 127.0.0.1:1/x:1\n    comand: [\"/bin/server\"]\n",
            );
            let out = Command::new(coffer())
                .args([
                    "policy",
                    "gen",
                    &p(&typo),
                    "--insecure-registry",
                    "127.0.0.1:1",
                ])
                .output()?;
            ensure!(out.status.code() == Some(125), "{out:?}");
            let err = String::from_utf8_lossy(&out.stderr);
            ensure!(
                err.trim_end()
                    == format!(
                        "coffer: {}: document 1 is not a valid Pod: unknown field spec.containers[1].comand (did you mean command?)",
                        p(&typo)
                    ),
                "{err}"
            );
            Ok(())
        })()
    );

    case!(
        suite,
        // The guest agent refuses an environment entry without `=` at run time (REG-04); gen
        // refuses an image whose config has one, naming the image and the entry, and writes
        // nothing.
        "reg07_gen_refuses_an_image_env_entry_without_equals",
        (|| {
            let registry = coffer_tests::registry::Registry::start()?;
            let host = format!("127.0.0.1:{}", registry.port);
            let layout = dir.join("badenv-layout");
            let copy = coffer_tests::layout::LayoutCopy::new(
                &coffer_tests::vectors_dir().join("ocicrypt/src"),
                &layout,
            )?;
            let mut manifest = copy.manifest()?;
            let mut config = copy.json(
                manifest["config"]["digest"]
                    .as_str()
                    .context("config digest")?,
            )?;
            config["config"]["Env"] = json!(["FOO=bar", "NO_EQUALS\u{1b}[2J"]);
            let config = serde_json::to_vec(&config)?;
            manifest["config"]["digest"] = copy.put(&config)?.into();
            manifest["config"]["size"] = config.len().into();
            copy.set_manifest(&manifest)?;
            registry.push(&layout, "peers/badenv:v1")?;

            let pod = write(
                dir,
                "badenv.yaml",
                &format!(
                    "kind: Pod\nmetadata:\n  name: b\nspec:\n  containers:\n  - name: a\n    image: {host}/peers/badenv:v1\n    command: [\"/app/server\"]\n"
                ),
            );
            let init_file = dir.join("badenv-initdata.toml");
            let out = Command::new(coffer())
                .args([
                    "policy",
                    "gen",
                    &p(&pod),
                    "--insecure-registry",
                    &host,
                    "-o",
                    &p(&init_file),
                ])
                .output()?;
            let err = String::from_utf8_lossy(&out.stderr);
            ensure!(!out.status.success(), "policy gen admitted it: {err}");
            ensure!(
                err.contains(&format!("the config of image {host}/peers/badenv:v1"))
                    && err.contains("its Env entry \"NO_EQUALS\\u{1b}[2J\" has no '='"),
                "{err}"
            );
            ensure!(!init_file.exists(), "initdata was written");
            Ok(())
        })()
    );

    case!(
        suite,
        "kata_mode_decides_genpolicy_shaped_policy",
        (|| {
            let rules = write(dir, "rules.rego", KATA_RULES);
            let kata_data = write(
                dir,
                "policy_data.json",
                &json!({"commands": [["/app/health", "--ready"]]}).to_string(),
            );
            let create = write(
                dir,
                "kata-create.json",
                &json!({"container_id": "c1", "OCI": {"Process": {"Args": ["/app/server"]}}})
                    .to_string(),
            );
            let kata = |request: &str, input: &Path, extra: &[&str]| {
                let mut args = vec![
                    "--kata",
                    "--policy",
                    rules.to_str().unwrap(),
                    "--data",
                    kata_data.to_str().unwrap(),
                    "--request",
                    request,
                    "--input",
                    input.to_str().unwrap(),
                ];
                args.extend_from_slice(extra);
                eval(&args)
            };
            // Both name forms; the allowed create prints its state ops and the new state.
            for request in ["CreateContainer", "CreateContainerRequest"] {
                let out = kata(request, &create, &[])?;
                ensure!(out.status.code() == Some(0), "{out:?}");
                ensure!(
                    stdout(&out)
                        == "allow: data.agent_policy.CreateContainerRequest is true\n\
                            op {\"op\":\"add\",\"path\":\"/containers\",\"value\":[\"c1\"]}\n\
                            state {\"containers\":[\"c1\"]}\n",
                    "{}",
                    stdout(&out)
                );
            }
            // Exec is decided on the state a previous decision left (passed back with --state).
            let exec = |name: &str, args: &[&str]| {
                write(
                    dir,
                    name,
                    &json!({"container_id": "c1", "exec_id": "e1", "process": {"Args": args}})
                        .to_string(),
                )
            };
            let ready = exec("kata-exec.json", &["/app/health", "--ready"]);
            let out = kata("ExecProcess", &ready, &[])?;
            ensure!(out.status.code() == Some(1), "{out:?}");
            ensure!(
                stdout(&out)
                    == "deny: data.agent_policy.ExecProcessRequest is false; \
                        Kata policies give no reason beyond the rule\n",
                "{}",
                stdout(&out)
            );
            let state = write(dir, "pstate.json", r#"{"containers": ["c1"]}"#);
            let out = kata("ExecProcess", &ready, &["--state", state.to_str().unwrap()])?;
            ensure!(
                out.status.code() == Some(0)
                    && stdout(&out) == "allow: data.agent_policy.ExecProcessRequest is true\n",
                "{out:?}"
            );
            let split = exec("kata-exec-split.json", &["/app/health --ready"]);
            let out = kata("ExecProcess", &split, &["--state", state.to_str().unwrap()])?;
            ensure!(out.status.code() == Some(1), "{out:?}");
            // No rule and no default for the request: undefined, denied.
            let out = kata("ReadStdout", &ready, &[])?;
            ensure!(
                stdout(&out).starts_with(
                    "deny: policy result undefined: the policy has no rule \
                     data.agent_policy.ReadStreamRequest"
                ),
                "{}",
                stdout(&out)
            );
            // --prints shows the policy's print output.
            let out = kata("CreateContainer", &create, &["--prints"])?;
            ensure!(
                String::from_utf8_lossy(&out.stderr).contains("print: rules.rego:"),
                "{out:?}"
            );
            // Bad requests and a policy letting failures through are errors, not decisions.
            let out = kata("Frobnicate", &create, &[])?;
            ensure!(out.status.code() == Some(125), "{out:?}");
            ensure!(
                String::from_utf8_lossy(&out.stderr).contains("is not a Kata agent request"),
                "{out:?}"
            );
            let failing = write(
                dir,
                "failing.rego",
                &format!("{KATA_RULES}\nAllowRequestsFailingPolicy := true\n"),
            );
            let out = eval(&[
                "--kata",
                "--policy",
                &p(&failing),
                "--data",
                &p(&kata_data),
                "--request",
                "CreateContainer",
                "--input",
                &p(&create),
            ])?;
            ensure!(out.status.code() == Some(125), "{out:?}");
            ensure!(
                String::from_utf8_lossy(&out.stderr)
                    .contains("policy sets AllowRequestsFailingPolicy"),
                "{out:?}"
            );
            Ok(())
        })()
    );

    suite.finish()
}
