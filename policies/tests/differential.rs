//! Differential testing of the policy engine (POL-04): the shipped policies decide a corpus of
//! inputs on regorus (our engine, [`Engine`]) and on rego-cpp (Microsoft's independent Rego
//! implementation, through its Python binding `regopy`, which tests/setup.sh installs in the
//! venv `$COFFER_VENV`, default /opt/coffer/venv), and the decisions must agree: allow or deny,
//! the reason, and the record.
//!
//! OPA itself cannot be installed on these machines (its releases come from GitHub and the Go
//! module proxy); rego-cpp passes OPA's conformance suite for the language features our policies
//! use. What rego-cpp 1.5 cannot take as is, `differential.py` says and handles openly:
//! - `some k, v in coll` in a set or array comprehension does not parse ("Invalid collection");
//!   each such iteration is rewritten to `some k; v := coll[k]` (the same bindings) and the test
//!   asserts how many rewrites each policy needed, so a new construct is noticed;
//! - its result text leaves quotes and control characters unescaped and cuts a string at a NUL,
//!   so the decision's strings come back base64-encoded by rego-cpp itself;
//! - `sort` of a set returns a set (OPA's returns an array: `sort(s)[0]` was undefined, so every
//!   admitted CreateContainer was undefined on rego-cpp); each `sort(X)` is rewritten to
//!   `sort([v | some v in X])`;
//! - its `sprintf` quotes some strings (`%s` of a `concat` result, `%v` of a policy string
//!   literal) and escapes the quotes inside arrays and objects (`[\"a\"]`), where OPA and regorus
//!   print them plain, so reasons are compared with every `"` and `\` removed;
//! - it cuts input strings at a NUL: a case with a NUL in its input is compared with regorus's
//!   decision of the same input cut at each NUL.
//!
//! Where regorus departs from rego-cpp and, by our reading of OPA's `sprintf` and membership
//! builtins (OPA was not run), from OPA too, the case is listed in [`KNOWN`] with the reason,
//! compared on `allow` only, and must still differ in its reason (so the list cannot go stale).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test-only file: panics are failures

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use coffer_policies::{
    CONFIDENTIAL_POLICY, ContainerState, CreateContainer, Decision, Engine, Limits,
    MAX_REASON_BYTES, NamespaceType, PolicyInput, Process, Request, SANDBOX_POLICY, SandboxState,
};
use common::confidential::{IMAGE, SIDECAR};
use common::mount;
use serde_json::{Value, json};

/// How many constructs differential.py rewrites for rego-cpp per policy: `some k, v in coll` in
/// comprehensions, and `sort` calls.
const EXPECTED_REWRITES: [(&str, u64, u64); 2] = [("sandbox", 0, 1), ("confidential", 19, 7)];

/// Cases where regorus's reason departs from rego-cpp's (and, by our reading, OPA's); both deny.
const KNOWN: [(&str, &str); 3] = [
    (
        "sandbox: JSON huge version",
        "regorus prints the number 1e300 in full with %v; rego-cpp prints 1e+300 (as OPA should: Go's %v of a float64)",
    ),
    (
        "confidential: JSON huge version",
        "regorus prints the number 1e300 in full with %v; rego-cpp prints 1e+300",
    ),
    (
        "confidential: JSON CreateContainer with fields of the wrong type",
        "regorus (strict builtin errors) fails `some x in p.env` on a string: a denial as a policy error; rego-cpp finds no members (as OPA's membership should) and denies on the user instead",
    ),
];

struct Case {
    name: String,
    policy: &'static str,
    input: Value,
    ours: Decision,
    /// For an input with a NUL: regorus's decision of the input cut at each NUL, what rego-cpp
    /// sees.
    ours_cut: Option<Decision>,
}

struct Corpus {
    sandbox: Engine,
    confidential: Engine,
    cases: Vec<Case>,
}

impl Corpus {
    fn typed(&mut self, policy: &'static str, name: impl Into<String>, input: PolicyInput) {
        let ours = self.engine(policy).decide(&input);
        self.cases.push(Case {
            name: name.into(),
            policy,
            input: serde_json::to_value(&input).unwrap(),
            ours,
            ours_cut: None,
        });
    }

    fn raw(&mut self, policy: &'static str, name: impl Into<String>, input: Value) {
        let ours = self.engine(policy).decide_json(&input.to_string());
        let ours_cut = has_nul(&input).then(|| {
            self.engine(policy)
                .decide_json(&cut_at_nul(&input).to_string())
        });
        self.cases.push(Case {
            name: name.into(),
            policy,
            input,
            ours,
            ours_cut,
        });
    }

    fn engine(&self, policy: &str) -> &Engine {
        match policy {
            "sandbox" => &self.sandbox,
            _ => &self.confidential,
        }
    }
}

/// Edits of a CreateContainer's process a hostile host could make (the deny tables' cases and
/// more), each applied to both policies' well-formed request.
type Edit<T> = (&'static str, Box<dyn Fn(&mut T)>);

fn process_edits() -> Vec<Edit<Process>> {
    vec![
        ("as is", Box::new(|_| {})),
        ("root user", Box::new(|p| p.user.uid = 0)),
        ("root group", Box::new(|p| p.user.gid = 0)),
        ("other args", Box::new(|p| p.args = vec!["/bin/sh".into()])),
        ("no args", Box::new(|p| p.args.clear())),
        (
            "env with newline",
            Box::new(|p| p.env.push("MODE=prod\nLD_PRELOAD=/x".into())),
        ),
        (
            "env without =",
            Box::new(|p| p.env.push("LD_PRELOAD".into())),
        ),
        (
            "env duplicate",
            Box::new(|p| p.env.push("MODE=debug".into())),
        ),
        (
            "env LD_PRELOAD",
            Box::new(|p| p.env.push("LD_PRELOAD=/tmp/x.so".into())),
        ),
        (
            "env unicode",
            Box::new(|p| p.env.push("MODE=pr\u{f8}d\u{202e}".into())),
        ),
        ("cwd", Box::new(|p| p.cwd = "/".into())),
        ("terminal", Box::new(|p| p.terminal = true)),
        (
            "CAP_SYS_ADMIN effective",
            Box::new(|p| p.capabilities.effective.push("CAP_SYS_ADMIN".into())),
        ),
        (
            "CAP_NET_RAW ambient",
            Box::new(|p| p.capabilities.ambient.push("CAP_NET_RAW".into())),
        ),
        (
            "no_new_privileges off",
            Box::new(|p| p.no_new_privileges = false),
        ),
        ("oom exempt", Box::new(|p| p.oom_score_adj = Some(-1000))),
        (
            "apparmor",
            Box::new(|p| p.apparmor_profile = Some("unconfined".into())),
        ),
        (
            "selinux",
            Box::new(|p| p.selinux_label = Some("system_u:system_r:spc_t:s0".into())),
        ),
        (
            "rlimit nofile up",
            Box::new(|p| p.rlimits.push(rlimit("RLIMIT_NOFILE", 1 << 30, 1 << 30))),
        ),
        (
            "rlimit core",
            Box::new(|p| p.rlimits.push(rlimit("RLIMIT_CORE", 0, 0))),
        ),
        (
            "extra gid 0",
            Box::new(|p| p.user.additional_gids = vec![0]),
        ),
        ("umask", Box::new(|p| p.user.umask = Some(0))),
    ]
}

fn rlimit(kind: &str, soft: u64, hard: u64) -> coffer_policies::Rlimit {
    coffer_policies::Rlimit {
        kind: kind.into(),
        soft,
        hard,
    }
}

/// Edits of a CreateContainer outside its process.
fn container_edits() -> Vec<Edit<CreateContainer>> {
    vec![
        ("hooks", Box::new(|c| c.hooks_present = true)),
        (
            "host netns",
            Box::new(|c| c.namespaces[1].path = Some("/proc/1/ns/net".into())),
        ),
        (
            "no pid ns",
            Box::new(|c| c.namespaces.retain(|n| n.kind != NamespaceType::Pid)),
        ),
        (
            "bind /",
            Box::new(|c| c.mounts.push(mount("/host", "/", "bind", &["rbind", "rw"]))),
        ),
        (
            "bind as tmpfs",
            Box::new(|c| {
                c.mounts
                    .push(mount("/dev/shm", "/dev/sev-guest", "tmpfs", &["bind"]))
            }),
        ),
        (
            "sysfs rw after ro",
            Box::new(|c| c.mounts[5].options.push("rw".into())),
        ),
        ("no masked paths", Box::new(|c| c.masked_paths.clear())),
        ("no readonly paths", Box::new(|c| c.readonly_paths.clear())),
        (
            "all devices",
            Box::new(|c| {
                c.device_cgroup
                    .push(common::device_rule(true, "a", None, None))
            }),
        ),
        (
            "sysctl",
            Box::new(|c| {
                c.sysctls
                    .insert("kernel.core_pattern".into(), "|/tmp/x".into());
            }),
        ),
        (
            "uploaded rootfs",
            Box::new(|c| {
                c.rootfs.source = coffer_policies::RootfsSource::Uploaded;
                c.rootfs.image = None;
            }),
        ),
        (
            "sidecar image",
            Box::new(|c| c.rootfs.image = Some(SIDECAR.into())),
        ),
        (
            "unpinned image",
            Box::new(|c| c.rootfs.image = Some("registry.example/app:latest".into())),
        ),
        ("other id", Box::new(|c| c.container_id = "c9".into())),
        (
            "id with newline",
            Box::new(|c| c.container_id = "c1\nc2".into()),
        ),
    ]
}

fn states() -> Vec<(&'static str, SandboxState)> {
    vec![
        ("empty", common::sandbox(vec![])),
        ("c1 pulled", common::state()),
        ("c1 app, c2 unrecorded", common::confidential::state()),
        (
            "c1 created, not started",
            common::sandbox(vec![ContainerState {
                id: "c1".into(),
                image_digest: None,
                started: false,
                record: BTreeMap::from([("entry".to_owned(), "app".to_owned())]),
            }]),
        ),
    ]
}

fn corpus() -> Corpus {
    let mut corpus = Corpus {
        sandbox: Engine::new(SANDBOX_POLICY, None, Limits::default()).unwrap(),
        confidential: Engine::new(
            CONFIDENTIAL_POLICY,
            Some(&common::confidential::data().to_string()),
            Limits::default(),
        )
        .unwrap(),
        cases: Vec::new(),
    };
    for policy in ["sandbox", "confidential"] {
        // Every RPC in every state.
        for (state_name, state) in states() {
            for request in common::one_of_each() {
                let name = format!("{policy}: {} in state {state_name}", request.name());
                corpus.typed(policy, name, PolicyInput::new(request, state.clone()));
            }
        }
        // CreateContainer, each edit of its process and of the rest, on the request each policy
        // admits.
        let base = match policy {
            "sandbox" => common::create_container(),
            _ => common::confidential::app(),
        };
        let state = match policy {
            "sandbox" => common::state(),
            _ => common::confidential::state(),
        };
        for (edit_name, edit) in process_edits() {
            let mut c = base.clone();
            edit(&mut c.process);
            let name = format!("{policy}: CreateContainer, {edit_name}");
            let request = Request::CreateContainer(Box::new(c));
            corpus.typed(policy, name, PolicyInput::new(request, state.clone()));
            // The same process through ExecProcess into c1 (admitted as `app`).
            let mut p = common::confidential::app_process();
            p.args = vec!["/app/health".into(), "--ready".into()];
            edit(&mut p);
            let request = Request::ExecProcess {
                container_id: "c1".into(),
                exec_id: "e1".into(),
                process: Box::new(p),
            };
            let name = format!("{policy}: ExecProcess, {edit_name}");
            corpus.typed(policy, name, PolicyInput::new(request, state.clone()));
        }
        for (edit_name, edit) in container_edits() {
            let mut c = base.clone();
            edit(&mut c);
            let name = format!("{policy}: CreateContainer, {edit_name}");
            let request = Request::CreateContainer(Box::new(c));
            corpus.typed(policy, name, PolicyInput::new(request, state.clone()));
        }
        // Images to pull.
        for image in [
            IMAGE,
            SIDECAR,
            "registry.example/app:latest",
            "",
            "registry.example/app@sha256:1111",
        ] {
            let request = Request::PullImage {
                container_id: "c3".into(),
                image: image.into(),
            };
            corpus.typed(
                policy,
                format!("{policy}: PullImage {image:?}"),
                PolicyInput::new(request, state.clone()),
            );
        }
        hostile_json(&mut corpus, policy);
    }
    corpus
}

/// Inputs outside the typed schema, given as JSON (as `coffer policy eval` may).
fn hostile_json(corpus: &mut Corpus, policy: &'static str) {
    let empty = json!({"containers": [], "ever_started": []});
    let cases = [
        ("empty object", json!({})),
        ("null", Value::Null),
        ("array", json!([1, 2])),
        (
            "version 2",
            json!({"version": 2, "request": {"kind": "GetGuestDetails"}, "state": empty}),
        ),
        (
            "version as string",
            json!({"version": "1", "request": {"kind": "GetGuestDetails"}, "state": empty}),
        ),
        (
            "unknown kind",
            json!({"version": 1, "request": {"kind": "CopyFile", "path": "/etc/shadow"}, "state": empty}),
        ),
        (
            "kind as number",
            json!({"version": 1, "request": {"kind": 7}, "state": empty}),
        ),
        (
            "kind with NUL",
            json!({"version": 1, "request": {"kind": "GetGuestDetails\u{0}x"}, "state": empty}),
        ),
        (
            "no state",
            json!({"version": 1, "request": {"kind": "GetGuestDetails"}}),
        ),
        (
            "huge version",
            json!({"version": 1e300, "request": {"kind": "GetGuestDetails"}, "state": empty}),
        ),
        (
            "negative zero version",
            json!({"version": -0.0, "request": {"kind": "GetGuestDetails"}, "state": empty}),
        ),
        (
            "version 1.0",
            json!({"version": 1.0, "request": {"kind": "GetGuestDetails"}, "state": empty}),
        ),
        (
            "stream on a container the state lists twice",
            json!({"version": 1, "request": {"kind": "ReadStdout", "container_id": "c1", "exec_id": null},
                   "state": {"containers": [
                       {"id": "c1", "image_digest": null, "started": true, "record": {"entry": "app"}},
                       {"id": "c1", "image_digest": null, "started": true, "record": {"entry": "side"}}],
                     "ever_started": ["c1"]}}),
        ),
        ("CreateContainer with fields of the wrong type", {
            let mut c = serde_json::to_value(PolicyInput::new(
                Request::CreateContainer(Box::new(common::confidential::app())),
                common::confidential::state(),
            ))
            .unwrap();
            c["request"]["process"]["user"]["uid"] = json!("0");
            c["request"]["process"]["env"] = json!("PATH=/bin");
            c["request"]["mounts"] = json!({"destination": "/host"});
            c
        }),
        ("CreateContainer with a NUL in an env value", {
            let mut p = common::confidential::app_process();
            p.env[1] = "MODE=prod\u{0}LD_PRELOAD=/x".into();
            let mut c = common::confidential::app();
            c.process = p;
            serde_json::to_value(PolicyInput::new(
                Request::CreateContainer(Box::new(c)),
                common::confidential::state(),
            ))
            .unwrap()
        }),
    ];
    for (name, input) in cases {
        corpus.raw(policy, format!("{policy}: JSON {name}"), input);
    }
}

/// The Python of the venv tests/setup.sh makes, with regopy in it. A missing venv or module
/// fails the test (it is part of the README test command); it never skips.
fn python() -> PathBuf {
    let venv = std::env::var_os("COFFER_VENV").unwrap_or_else(|| "/opt/coffer/venv".into());
    let python = PathBuf::from(venv).join("bin/python3");
    let probe = Command::new(&python).args(["-c", "import regopy"]).output();
    match probe {
        Ok(out) if out.status.success() => python,
        Ok(out) => panic!(
            "{} has no regopy ({}): run tests/setup.sh",
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!("{} cannot run ({e}): run tests/setup.sh", python.display()),
    }
}

/// The reason regorus's engine reports for a policy reason `theirs` (cut at MAX_REASON_BYTES).
fn as_reported(theirs: &str) -> String {
    if theirs.len() <= MAX_REASON_BYTES {
        return theirs.to_owned();
    }
    let mut end = MAX_REASON_BYTES;
    while !theirs.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &theirs[..end])
}

/// Where the two engines differ on one case, if they do. `allow_only`: compare `allow` only.
fn difference(ours: &Decision, theirs: &Value, allow_only: bool) -> Option<String> {
    if let Some(error) = theirs.get("error") {
        // An evaluation error is a denial on our side too.
        return (ours.allowed || !ours.reason.starts_with("policy "))
            .then(|| format!("rego-cpp failed ({error}); regorus decided {ours:?}"));
    }
    if theirs.get("undefined").is_some() {
        return (ours.allowed || !ours.reason.starts_with("policy result undefined"))
            .then(|| format!("rego-cpp: decision undefined; regorus decided {ours:?}"));
    }
    let value = &theirs["value"];
    if value["allow"].as_bool() != Some(ours.allowed) {
        return Some(format!(
            "rego-cpp allow {}; regorus decided {ours:?}",
            value["allow"]
        ));
    }
    if allow_only {
        return None;
    }
    let reason = as_reported(value["reason"].as_str().unwrap_or_default());
    let record: BTreeMap<String, String> = serde_json::from_value(value["record"].clone()).unwrap();
    (unquoted(&reason) != unquoted(&ours.reason) || record != ours.record).then(|| {
        format!(
            "rego-cpp reason {reason:?} record {record:?}; regorus reason {:?} record {:?}",
            ours.reason, ours.record
        )
    })
}

/// A reason without its `"` and `\\` (see the module docs: rego-cpp's sprintf quoting).
fn unquoted(reason: &str) -> String {
    reason
        .chars()
        .filter(|c| !matches!(c, '"' | '\\'))
        .collect()
}

/// `value` with every string cut at its first NUL, as rego-cpp reads it.
fn cut_at_nul(value: &Value) -> Value {
    let cut = |s: &str| s.split('\0').next().unwrap_or_default().to_owned();
    match value {
        Value::String(s) => Value::String(cut(s)),
        Value::Array(items) => Value::Array(items.iter().map(cut_at_nul).collect()),
        Value::Object(members) => Value::Object(
            members
                .iter()
                .map(|(k, v)| (cut(k), cut_at_nul(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn has_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(members) => members.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

#[test]
fn pol04_regorus_and_rego_cpp_decide_the_corpus_alike() {
    let python = python();
    let corpus = corpus();
    let dir = std::env::temp_dir().join(format!("coffer-pol04-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let corpus_path = dir.join("corpus.json");
    let results_path = dir.join("results.json");
    let document = json!({
        "policies": {
            "sandbox": {"source": SANDBOX_POLICY, "data": null},
            "confidential": {"source": CONFIDENTIAL_POLICY, "data": common::confidential::data()},
        },
        "cases": corpus.cases.iter().map(|c| json!({"policy": c.policy, "input": c.input})).collect::<Vec<_>>(),
    });
    std::fs::write(&corpus_path, document.to_string()).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/differential.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg(&corpus_path)
        .arg(&results_path)
        .output()
        .unwrap();
    let results: Value = std::fs::read(&results_path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_else(|| {
            panic!(
                "differential.py wrote no results ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        });
    std::fs::remove_dir_all(&dir).unwrap();

    for (policy, iterations, sorts) in EXPECTED_REWRITES {
        let rewrites = &results["rewrites"][policy];
        assert_eq!(
            (
                rewrites["some_key_value"].as_u64(),
                rewrites["sort"].as_u64()
            ),
            (Some(iterations), Some(sorts)),
            "rewrites for rego-cpp in {policy}.rego"
        );
    }
    let results = results["results"].as_array().unwrap();
    assert_eq!(results.len(), corpus.cases.len());
    let mut differences = Vec::new();
    let mut cut = Vec::new();
    for (case, theirs) in corpus.cases.iter().zip(results) {
        let known = KNOWN.iter().any(|(name, _)| *name == case.name);
        let ours = match &case.ours_cut {
            Some(ours_cut) => {
                cut.push(case.name.as_str());
                ours_cut
            }
            None => &case.ours,
        };
        if let Some(d) = difference(ours, theirs, known) {
            differences.push(format!("{}: {d}", case.name));
        }
        if known {
            assert!(
                difference(ours, theirs, false).is_some(),
                "{} is listed as a known difference but the engines now agree",
                case.name
            );
        }
    }
    assert_eq!(
        KNOWN
            .iter()
            .filter(|(name, _)| corpus.cases.iter().any(|c| c.name == *name))
            .count(),
        KNOWN.len(),
        "every known difference names a case of the corpus"
    );
    let allowed = corpus.cases.iter().filter(|c| c.ours.allowed).count();
    println!(
        "POL-04: {} cases ({allowed} allowed, {} denied) on regorus and rego-cpp; compared with regorus on the input cut at NUL: {cut:?}; known differences, allow compared: {:?}",
        corpus.cases.len(),
        corpus.cases.len() - allowed,
        KNOWN.iter().map(|(name, _)| *name).collect::<Vec<_>>()
    );
    assert!(
        allowed >= 20,
        "the corpus admits too little to compare allows: {allowed}"
    );
    assert!(
        differences.is_empty(),
        "{} of {} cases decided differently:\n{}",
        differences.len(),
        corpus.cases.len(),
        differences.join("\n")
    );
}
