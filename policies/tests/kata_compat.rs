//! Kata compatibility mode (issue #5 scope 4): genpolicy-shaped policies (package `agent_policy`,
//! `policy_data`, Kata's request JSON, stateful `{"allowed", "ops"}` results) decided as Kata's
//! agent decides them. The policies here are written for these tests in genpolicy's shape; Kata's
//! own test data (`src/tools/genpolicy/tests/policy/testdata`) could not be fetched on this machine
//! and is not included.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test-only file: panics are failures

use coffer_policies::{KataEngine, Limits, NO_REASON, PolicyError, kata_request};
use serde_json::{Value, json};

/// genpolicy's layout: v0 syntax with future keywords, `default` per request, a `policy_data`
/// document, state helpers writing JSON Patch ops against `data.pstate`.
const RULES: &str = r#"package agent_policy

import future.keywords.in
import future.keywords.every
import future.keywords.if

import input

default AllowRequestsFailingPolicy := false

default CreateContainerRequest := {"ops": [], "allowed": false}
default ExecProcessRequest := false
default ReadStreamRequest := false
default StartContainerRequest := true
default WaitProcessRequest := true
default SetPolicyRequest := false

S_NAME_KEY := "io.kubernetes.cri.sandbox-name"

CreateContainerRequest := {"ops": ops, "allowed": true} if {
    i_oci := input.OCI
    some p_container in policy_data.containers
    p_oci := p_container.OCI

    p_oci.Process.Args == i_oci.Process.Args
    allow_mounts(p_oci, i_oci)
    allow_storages(p_container.storages, input.storages)

    not container_known(input.container_id)
    sandbox_name := i_oci.Annotations[S_NAME_KEY]
    state_allows("sandbox_name", sandbox_name)

    ops := array.concat(
        concat_op_if_not_null([], state_op("sandbox_name", sandbox_name)),
        [container_op(input.container_id)],
    )
}

allow_mounts(p_oci, i_oci) if {
    every i_mount in i_oci.Mounts {
        some p_mount in p_oci.Mounts
        p_mount.destination == i_mount.destination
        p_mount.type_ == i_mount.type_
        p_mount.options == i_mount.options
        regex.match(p_mount.source, i_mount.source)
    }
}

allow_storages(p_storages, i_storages) if {
    every i_storage in i_storages {
        some p_storage in p_storages
        p_storage.driver == i_storage.driver
        p_storage.fstype == i_storage.fstype
        regex.match(p_storage.mount_point, i_storage.mount_point)
    }
}

container_known(id) if {
    some known in data.pstate.containers
    known == id
}

container_op(id) := {"op": "add", "path": "/containers/-", "value": id} if {
    data.pstate.containers
}
container_op(id) := {"op": "add", "path": "/containers", "value": [id]} if {
    not data.pstate.containers
}

state_allows(key, value) if {
    data.pstate[key] == value
}
state_allows(key, value) if {
    not data.pstate[key]
}

state_op(key, value) := {"op": "add", "path": concat("/", ["", key]), "value": value} if {
    not data.pstate[key]
}
state_op(key, value) := {} if {
    data.pstate[key] == value
}

concat_op_if_not_null(ops, op) := ops if {
    op == {}
}
concat_op_if_not_null(ops, op) := array.concat(ops, [op]) if {
    op != {}
}

ExecProcessRequest if {
    container_known(input.container_id)
    some command in policy_data.request_defaults.ExecProcessRequest.commands
    command == input.process.Args
}

ReadStreamRequest if {
    policy_data.request_defaults.ReadStreamRequest == true
}
"#;

fn policy_data(read_stream: bool) -> Value {
    json!({
        "containers": [{
            "OCI": {
                "Process": {"Args": ["/pause"]},
                "Mounts": [
                    {"destination": "/dev/shm", "source": "^/run/kata-containers/sandbox/shm$",
                     "type_": "bind", "options": ["rbind"]},
                ],
            },
            "storages": [
                {"driver": "image_guest_pull", "fstype": "overlay",
                 "mount_point": "^/run/kata-containers/[a-z0-9]+/rootfs$"},
            ],
        }, {
            "OCI": {
                "Process": {"Args": ["/app/server", "--port", "8080"]},
                "Mounts": [
                    {"destination": "/etc/hosts",
                     "source": "^/run/kata-containers/shared/containers/[a-z0-9]+-hosts$",
                     "type_": "bind", "options": ["rbind", "rprivate", "ro"]},
                ],
            },
            "storages": [
                {"driver": "image_guest_pull", "fstype": "overlay",
                 "mount_point": "^/run/kata-containers/[a-z0-9]+/rootfs$"},
            ],
        }],
        "request_defaults": {
            "ExecProcessRequest": {"commands": [["/app/health", "--ready"]]},
            "ReadStreamRequest": read_stream,
        },
    })
}

/// `RULES` with `policy_data` embedded, the way genpolicy writes it.
fn embedded(read_stream: bool) -> String {
    format!(
        "{RULES}\npolicy_data := {}\n",
        serde_json::to_string_pretty(&policy_data(read_stream)).unwrap()
    )
}

fn engine() -> KataEngine {
    KataEngine::new(&embedded(false), None, Limits::default()).unwrap()
}

/// A CreateContainerRequest as Kata's agent serializes it (abridged to the fields these rules
/// read plus the ones every request carries).
fn create(id: &str, sandbox: &str, args: &[&str]) -> Value {
    json!({
        "container_id": id,
        "exec_id": id,
        "string_user": null,
        "devices": [],
        "storages": [{
            "driver": "image_guest_pull", "driver_options": [], "source": "",
            "fstype": "overlay", "options": [], "mount_point": format!("/run/kata-containers/{id}/rootfs"),
            "fs_group": null
        }],
        "OCI": {
            "Version": "1.1.0",
            "Process": {
                "Terminal": false, "ConsoleSize": null,
                "User": {"UID": 65535, "GID": 65535, "AdditionalGids": [], "Username": ""},
                "Args": args, "Env": ["PATH=/bin"], "Cwd": "/",
                "Capabilities": null, "Rlimits": [], "NoNewPrivileges": true,
                "ApparmorProfile": "", "OOMScoreAdj": 0, "SelinuxLabel": ""
            },
            "Root": {"Path": "/run/kata-containers/shared/containers/x/rootfs", "Readonly": false},
            "Hostname": "",
            "Mounts": [],
            "Hooks": null,
            "Annotations": {"io.kubernetes.cri.sandbox-name": sandbox},
            "Linux": null,
            "Solaris": null,
            "Windows": null
        },
        "sandbox_pidns": false,
        "shared_mounts": []
    })
}

fn app(id: &str, sandbox: &str) -> Value {
    let mut request = create(id, sandbox, &["/app/server", "--port", "8080"]);
    request["OCI"]["Mounts"] = json!([{
        "destination": "/etc/hosts",
        "source": format!("/run/kata-containers/shared/containers/{id}-hosts"),
        "type_": "bind", "options": ["rbind", "rprivate", "ro"]
    }]);
    request
}

fn exec(id: &str, args: &[&str]) -> Value {
    json!({
        "container_id": id,
        "exec_id": "e1",
        "string_user": null,
        "process": {
            "Terminal": false, "ConsoleSize": null,
            "User": {"UID": 0, "GID": 0, "AdditionalGids": [], "Username": ""},
            "Args": args, "Env": [], "Cwd": "/", "Capabilities": null, "Rlimits": [],
            "NoNewPrivileges": false, "ApparmorProfile": "", "OOMScoreAdj": 0, "SelinuxLabel": ""
        }
    })
}

fn read_stream(id: &str) -> Value {
    json!({"container_id": id, "exec_id": "", "len": 1024})
}

fn decide(engine: &mut KataEngine, request: &str, input: &Value) -> coffer_policies::KataDecision {
    engine.decide(request, &input.to_string())
}

#[test]
fn request_names_rpc_and_message_forms() {
    for (name, message) in [
        ("CreateContainer", "CreateContainerRequest"),
        ("CreateContainerRequest", "CreateContainerRequest"),
        ("ReadStdout", "ReadStreamRequest"),
        ("ReadStream", "ReadStreamRequest"),
        ("WriteStdin", "WriteStreamRequest"),
        ("GetGuestDetails", "GuestDetailsRequest"),
        ("GuestDetailsRequest", "GuestDetailsRequest"),
    ] {
        assert_eq!(kata_request(name), Some(message), "{name}");
    }
    for name in [
        "",
        "policy_data",
        "AllowRequestsFailingPolicy",
        "Create",
        "data.x",
    ] {
        assert_eq!(kata_request(name), None, "{name}");
    }
}

/// A genpolicy-shaped module loads (v0 with future keywords, `import input`), and the sandbox's
/// containers are admitted; the first create records the sandbox name and the container, the
/// second only the container (its name matched).
#[test]
fn admits_listed_containers_and_records_state() {
    let mut engine = engine();
    let pause = decide(
        &mut engine,
        "CreateContainer",
        &create("p1", "pod-a", &["/pause"]),
    );
    assert!(pause.allowed, "{}", pause.reason);
    assert_eq!(pause.rule, "data.agent_policy.CreateContainerRequest");
    assert_eq!(
        pause.ops,
        [
            json!({"op": "add", "path": "/sandbox_name", "value": "pod-a"}),
            json!({"op": "add", "path": "/containers", "value": ["p1"]}),
        ]
    );
    let app = decide(&mut engine, "CreateContainerRequest", &app("c2", "pod-a"));
    assert!(app.allowed, "{}", app.reason);
    assert_eq!(
        app.ops,
        [json!({"op": "add", "path": "/containers/-", "value": "c2"})]
    );
    assert_eq!(
        engine.state(),
        &json!({"sandbox_name": "pod-a", "containers": ["p1", "c2"]})
    );
}

/// AGT-CC: argv, mounts and storages not in the policy data are denied by the default rule, and
/// the reason names the rule only (Kata policies carry none); nothing is recorded.
#[test]
fn agt_cc_unlisted_container_table() {
    let mut host_mount = app("c2", "pod-a");
    host_mount["OCI"]["Mounts"].as_array_mut().unwrap().push(
        json!({"destination": "/host", "source": "/", "type_": "bind", "options": ["rbind"]}),
    );
    let mut mount_source = app("c2", "pod-a");
    mount_source["OCI"]["Mounts"][0]["source"] =
        json!("/run/kata-containers/shared/containers/../../../etc-hosts");
    let mut storage = app("c2", "pod-a");
    storage["storages"][0]["driver"] = json!("blk");
    let mut storage_path = app("c2", "pod-a");
    storage_path["storages"][0]["mount_point"] = json!("/run/kata-containers/c2/rootfs/../../x");
    let cases = [
        ("other argv", create("c2", "pod-a", &["/bin/sh"])),
        (
            "argv split differently",
            create("c2", "pod-a", &["/app/server", "--port 8080"]),
        ),
        ("host bind mount", host_mount),
        ("mount source outside the pattern", mount_source),
        ("storage driver", storage),
        ("storage mount point", storage_path),
    ];
    for (name, request) in cases {
        let mut engine = engine();
        let decision = decide(&mut engine, "CreateContainer", &request);
        assert!(!decision.allowed, "{name} allowed");
        assert_eq!(
            decision.reason,
            format!("data.agent_policy.CreateContainerRequest is false; {NO_REASON}"),
            "{name}"
        );
        assert!(decision.ops.is_empty(), "{name}");
        assert_eq!(engine.state(), &json!({}), "{name}");
    }
}

/// AGT-CC (container id reused) and AGT-ORD: state persists between decisions — a second
/// sandbox name or a reused id is refused, and the denials leave the state as it was.
#[test]
fn agt_ord_state_persists_between_decisions() {
    let mut engine = engine();
    assert!(
        decide(
            &mut engine,
            "CreateContainer",
            &create("p1", "pod-a", &["/pause"])
        )
        .allowed
    );
    let before = engine.state().clone();
    let other_sandbox = decide(&mut engine, "CreateContainer", &app("c2", "pod-b"));
    assert!(!other_sandbox.allowed);
    let reused = decide(
        &mut engine,
        "CreateContainer",
        &create("p1", "pod-a", &["/pause"]),
    );
    assert!(!reused.allowed);
    assert_eq!(engine.state(), &before);
}

/// AGT-EX: exec is matched argument by argument against the listed commands, and only into a
/// container the state knows; POL-03: a restarted engine has lost that state and denies.
#[test]
fn agt_ex_exec_argv_and_state() {
    let mut engine = engine();
    let ready = exec("c2", &["/app/health", "--ready"]);
    assert!(
        !decide(&mut engine, "ExecProcess", &ready).allowed,
        "exec before create"
    );
    assert!(decide(&mut engine, "CreateContainer", &app("c2", "pod-a")).allowed);
    let allowed = decide(&mut engine, "ExecProcessRequest", &ready);
    assert!(allowed.allowed, "{}", allowed.reason);
    assert!(allowed.ops.is_empty());
    for args in [
        &["/app/health --ready"][..],
        &["/app/health", "--ready", ";", "sh"],
        &["/app/health", "--ready "],
        &["/app/health"],
        &["sh", "-c", "/app/health --ready"],
    ] {
        let decision = decide(&mut engine, "ExecProcess", &exec("c2", args));
        assert!(!decision.allowed, "{args:?} allowed");
        assert_eq!(
            decision.reason,
            format!("data.agent_policy.ExecProcessRequest is false; {NO_REASON}")
        );
    }
    assert!(
        !decide(
            &mut engine,
            "ExecProcess",
            &exec("p9", &["/app/health", "--ready"])
        )
        .allowed,
        "exec into a container that was never created"
    );
    let mut restarted = self::engine();
    assert!(
        !decide(&mut restarted, "ExecProcess", &ready).allowed,
        "POL-03"
    );
}

/// AGT-ST: ReadStreamRequest follows its default (false) unless the policy data allows it; the
/// data may come as a separate JSON document instead of being embedded, with the same verdicts.
#[test]
fn agt_st_read_stream_default_and_separate_data() {
    let mut with_embedded = engine();
    let denied = decide(&mut with_embedded, "ReadStdout", &read_stream("c2"));
    assert!(!denied.allowed);
    assert_eq!(denied.rule, "data.agent_policy.ReadStreamRequest");

    let data = policy_data(true).to_string();
    let mut separate = KataEngine::new(RULES, Some(&data), Limits::default()).unwrap();
    assert!(decide(&mut separate, "ReadStderr", &read_stream("c2")).allowed);
    assert!(
        decide(
            &mut separate,
            "CreateContainer",
            &create("p1", "pod-a", &["/pause"])
        )
        .allowed
    );
    assert!(
        !decide(
            &mut separate,
            "CreateContainer",
            &create("p2", "pod-a", &["/bin/sh"])
        )
        .allowed
    );
    assert!(
        decide(&mut separate, "ReadStdout", &read_stream("p1")).allowed,
        "the separate data survives state updates"
    );

    let err = KataEngine::new(&embedded(false), Some(&data), Limits::default()).unwrap_err();
    assert!(
        err.to_string()
            .contains("embeds policy_data and a separate data document was given"),
        "{err}"
    );
    let err = KataEngine::new(RULES, Some("[1]"), Limits::default()).unwrap_err();
    assert!(err.to_string().contains("must be a JSON object"), "{err}");
}

/// Kata's stateful result: ops are applied only when `allowed` is true, all at once; a patch that
/// does not apply denies the request and changes nothing.
#[test]
fn ops_apply_only_on_allow_and_atomically() {
    let policy = r#"package agent_policy

import future.keywords.if

default CreateContainerRequest := {"allowed": false, "ops": [{"op": "add", "path": "/denied", "value": true}]}

CreateContainerRequest := {"allowed": true, "ops": [
    {"op": "add", "path": "/first", "value": input.container_id},
    {"op": "remove", "path": "/missing"},
]} if input.container_id == "broken"

CreateContainerRequest := {"allowed": true, "ops": [{"op": "add", "path": "/ok", "value": 1}]} if input.container_id == "ok"

ExecProcessRequest := {"allowed": true} if data.pstate.ok == 1
"#;
    let mut engine = KataEngine::new(policy, None, Limits::default()).unwrap();
    let denied = decide(
        &mut engine,
        "CreateContainer",
        &json!({"container_id": "other"}),
    );
    assert!(!denied.allowed);
    assert_eq!(
        denied.reason,
        format!("data.agent_policy.CreateContainerRequest is false; {NO_REASON}")
    );
    assert!(denied.ops.is_empty());
    assert_eq!(
        engine.state(),
        &json!({}),
        "ops of a denial are not applied"
    );

    let broken = decide(
        &mut engine,
        "CreateContainer",
        &json!({"container_id": "broken"}),
    );
    assert!(!broken.allowed);
    assert_eq!(
        broken.reason,
        "policy state update failed: op 1: \"/missing\" does not exist"
    );
    assert_eq!(
        engine.state(),
        &json!({}),
        "no op of a failing patch is applied"
    );

    assert!(
        decide(&mut engine, "ExecProcess", &json!({}))
            .reason
            .starts_with("policy result undefined"),
    );
    let ok = decide(
        &mut engine,
        "CreateContainer",
        &json!({"container_id": "ok"}),
    );
    assert!(ok.allowed, "{}", ok.reason);
    assert_eq!(engine.state(), &json!({"ok": 1}));
    assert!(
        decide(&mut engine, "ExecProcess", &json!({})).allowed,
        "state visible to the next decision"
    );
}

/// INV-5 / AGT-00: everything but `true` or `{"allowed": true, …}` denies, with a reason naming
/// the cause.
#[test]
fn inv5_result_shapes_table() {
    let cases = [
        (
            "",
            "policy result undefined: the policy has no rule data.agent_policy.GuestDetailsRequest",
        ),
        (
            "GuestDetailsRequest := true if input.never",
            "policy result undefined",
        ),
        (
            "GuestDetailsRequest := 1",
            "is a number, expected a boolean or an object",
        ),
        (
            "GuestDetailsRequest := \"true\"",
            "is a string, expected a boolean or an object",
        ),
        (
            "GuestDetailsRequest := [true]",
            "is an array, expected a boolean or an object",
        ),
        (
            "GuestDetailsRequest := {\"ops\": []}",
            "has no field \"allowed\"",
        ),
        (
            "GuestDetailsRequest := {\"allowed\": \"true\"}",
            ".allowed is a string, expected a boolean",
        ),
        (
            "GuestDetailsRequest := {\"allowed\": true, \"ops\": {}}",
            ".ops is an object, expected an array",
        ),
        (
            "GuestDetailsRequest := {\"allowed\": true, \"ops\": [{\"op\": \"add\"}]}",
            "policy state update failed: op 0 is malformed",
        ),
        (
            "GuestDetailsRequest := {\"allowed\": true, \"ops\": [{\"op\": \"replace\", \"path\": \"\", \"value\": 1}]}",
            "policy state update failed: pstate must be a JSON object",
        ),
        (
            "GuestDetailsRequest := true if input.a\nGuestDetailsRequest := false if input.b",
            "policy error: ",
        ),
    ];
    for (rules, expected) in cases {
        let policy = format!("package agent_policy\n\nimport future.keywords.if\n\n{rules}\n");
        let mut engine = KataEngine::new(&policy, None, Limits::default()).unwrap();
        let decision = engine.decide("GetGuestDetails", r#"{"a": true, "b": true}"#);
        assert!(!decision.allowed, "{rules} allowed");
        assert!(
            decision.reason.contains(expected),
            "{rules}: {}",
            decision.reason
        );
        assert_eq!(engine.state(), &json!({}), "{rules}");
    }
    let mut engine = engine();
    let unknown = engine.decide("NoSuchThing", "{}");
    assert_eq!(unknown.reason, "unknown Kata request \"NoSuchThing\"");
    assert!(
        engine
            .decide("StartContainer", "[]")
            .reason
            .contains("not a JSON object")
    );
    assert!(
        engine
            .decide("StartContainer", "{")
            .reason
            .starts_with("policy error: input not decodable")
    );
    assert!(
        engine.decide("StartContainer", "{}").allowed,
        "default StartContainerRequest := true"
    );
    assert!(
        !engine.decide("SetPolicy", "{}").allowed,
        "default SetPolicyRequest := false"
    );
}

/// Kata's `AllowRequestsFailingPolicy` would turn every denial into an allow: a policy that sets
/// it, in its rules or its data, does not load. `false` (genpolicy's default) loads.
#[test]
fn allow_requests_failing_policy_is_refused() {
    let base = "package agent_policy\n\nimport future.keywords.if\n\ndefault CreateContainerRequest := false\n";
    let refused = [
        format!("{base}AllowRequestsFailingPolicy := true\n"),
        format!("{base}default AllowRequestsFailingPolicy := true\n"),
        format!("{base}AllowRequestsFailingPolicy := \"yes\"\n"),
        format!(
            "{base}policy_data := {{\"request_defaults\": {{\"AllowRequestsFailingPolicy\": true}}}}\n"
        ),
    ];
    for policy in &refused {
        let err = KataEngine::new(policy, None, Limits::default()).unwrap_err();
        assert!(
            matches!(err, PolicyError::FailingRequestsAllowed { .. }),
            "{policy}: {err}"
        );
        assert!(
            err.to_string().contains("AllowRequestsFailingPolicy"),
            "{err}"
        );
    }
    let data = r#"{"settings": [{"AllowRequestsFailingPolicy": 1}]}"#;
    let err = KataEngine::new(base, Some(data), Limits::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "policy sets AllowRequestsFailingPolicy (policy_data.settings[0].AllowRequestsFailingPolicy is set); Coffer does not let requests a policy denies through: remove the setting"
    );
    let unset = format!("{base}default AllowRequestsFailingPolicy := false\n");
    let mut engine = KataEngine::new(&unset, None, Limits::default()).unwrap();
    assert!(!engine.decide("CreateContainer", "{}").allowed);
}

/// Rego syntaxes Kata policies come in: v0 without keywords, v0 with `import rego.v1`, and v1 —
/// which must not be read as v0, where `contains`, `if` and `in` are plain names and this module
/// parses as something that admits every container id.
#[test]
fn rego_v0_and_v1_modules_load() {
    let v0 = "package agent_policy\n\nCreateContainerRequest { input.container_id == \"a\" }\n";
    let v0_opt_in = "package agent_policy\n\nimport rego.v1\n\nCreateContainerRequest if input.container_id == \"a\"\n";
    let v1 = "package agent_policy\n\nallowed_ids contains \"a\"\n\nCreateContainerRequest if input.container_id in allowed_ids\n";
    for policy in [v0, v0_opt_in, v1] {
        let mut engine = KataEngine::new(policy, None, Limits::default()).unwrap();
        assert!(
            engine
                .decide("CreateContainer", r#"{"container_id": "a"}"#)
                .allowed,
            "{policy}"
        );
        let other = engine.decide("CreateContainer", r#"{"container_id": "b"}"#);
        assert!(
            other.reason.starts_with("policy result undefined"),
            "{policy}: {}",
            other.reason
        );
    }
}

#[test]
fn load_errors_table() {
    let cases = [
        (
            "package agent_policy\nCreateContainerRequest := ",
            "policy does not parse: as Rego v1",
        ),
        (
            "package coffer.policy\ndecision := true",
            "expected data.agent_policy",
        ),
        (
            "package agent_policy\nimport future.keywords.if\nf(x) := y if { y := f(x) }\nCreateContainerRequest if f(1)",
            "policy function recursion",
        ),
    ];
    for (policy, expected) in cases {
        let err = KataEngine::new(policy, None, Limits::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{policy}: {err}");
    }
    let limits = Limits {
        max_policy_bytes: 16,
        ..Limits::default()
    };
    let err = KataEngine::new(RULES, None, limits).unwrap_err();
    assert!(matches!(err, PolicyError::PolicyTooLarge { .. }), "{err}");
}

/// POL-01 under Kata's engine settings (strict builtin errors off, as Kata's agent runs them):
/// a builtin given the wrong type is undefined, so a positive check on it denies — but a negated
/// one holds and allows. This is Kata's verdict and what Kata policies are written for; it is why
/// Coffer's own mode keeps strict errors on.
#[test]
fn pol01_type_confusion_under_negation_follows_kata() {
    let policy = r#"package agent_policy

import future.keywords.if

default ExecProcessRequest := false
default CreateContainerRequest := false

ExecProcessRequest if not startswith(input.process.Args[0], "/bin/evil")
CreateContainerRequest if startswith(input.OCI.Process.Args[0], "/app/")
"#;
    let mut engine = KataEngine::new(policy, None, Limits::default()).unwrap();
    let number = r#"{"process": {"Args": [5]}, "OCI": {"Process": {"Args": [5]}}}"#;
    assert!(
        engine.decide("ExecProcess", number).allowed,
        "negated check on a number holds"
    );
    assert!(
        !engine.decide("CreateContainer", number).allowed,
        "positive check on a number fails"
    );
    assert!(
        !engine
            .decide("ExecProcess", r#"{"process": {"Args": ["/bin/evil"]}}"#)
            .allowed
    );
}

/// POL-02: the evaluation time limit and the input size cap hold in Kata mode too.
#[test]
fn pol02_limits_deny() {
    let policy = r#"package agent_policy

import future.keywords.if
import future.keywords.in

default CreateContainerRequest := false

CreateContainerRequest if {
    count([x | some x in numbers.range(1, 200000); some y in numbers.range(1, 200000); x == y]) == 0
}
"#;
    let limits = Limits {
        max_eval_time: std::time::Duration::from_millis(50),
        max_input_bytes: 64,
        ..Limits::default()
    };
    let mut engine = KataEngine::new(policy, None, limits).unwrap();
    let started = std::time::Instant::now();
    let decision = engine.decide("CreateContainer", "{}");
    assert!(!decision.allowed);
    assert!(
        decision.reason.starts_with("policy limit exceeded"),
        "{}",
        decision.reason
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    let big = format!(r#"{{"container_id": "{}"}}"#, "x".repeat(64));
    let decision = engine.decide("CreateContainer", &big);
    assert!(
        decision.reason.ends_with("over the limit of 64"),
        "{}",
        decision.reason
    );
}

/// Kata policies debug through `print`; the engine keeps each decision's lines (bounded) and
/// starts the next decision without them.
#[test]
fn prints_are_per_decision() {
    let policy = "package agent_policy\n\nimport future.keywords.if\n\nCreateContainerRequest if {\n    print(\"id\", input.container_id)\n    input.container_id == \"a\"\n}\n";
    let mut engine = KataEngine::new(policy, None, Limits::default()).unwrap();
    let first = engine.decide("CreateContainer", r#"{"container_id": "a"}"#);
    assert_eq!(first.prints.len(), 1);
    assert!(first.prints[0].ends_with("id a"), "{:?}", first.prints);
    let second = engine.decide("CreateContainer", r#"{"container_id": "b"}"#);
    assert_eq!(second.prints.len(), 1, "{:?}", second.prints);
    assert!(second.prints[0].ends_with("id b"), "{:?}", second.prints);
}

#[test]
fn initial_state_can_be_given() {
    let engine = engine()
        .with_state(json!({"sandbox_name": "pod-a", "containers": ["c2"]}))
        .unwrap();
    let mut engine = engine;
    assert!(
        decide(
            &mut engine,
            "ExecProcess",
            &exec("c2", &["/app/health", "--ready"])
        )
        .allowed
    );
    assert!(!decide(&mut engine, "CreateContainer", &app("c3", "pod-b")).allowed);
    let err = self::engine().with_state(json!([])).unwrap_err();
    assert!(
        err.to_string().contains("pstate must be a JSON object"),
        "{err}"
    );
    let limits = Limits {
        max_data_bytes: 8,
        ..Limits::default()
    };
    let tiny = KataEngine::new("package agent_policy\n", None, limits).unwrap();
    let err = tiny.with_state(json!({"key": "long value"})).unwrap_err();
    assert!(err.to_string().contains("over the limit of 8"), "{err}");
}
