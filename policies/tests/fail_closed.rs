//! INV-5 / AGT-00 / POL-*: every way a policy can fail to produce a clean decision is a denial (or,
//! at load time, an error), never an allow.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test-only file: panics are failures

mod common;

use std::time::{Duration, Instant};

use coffer_policies::{Engine, Limits, PolicyError, Request};
use common::input;

fn guest_details() -> coffer_policies::PolicyInput {
    input(Request::GetGuestDetails)
}

fn create_sandbox(hostname: Option<&str>) -> coffer_policies::PolicyInput {
    input(Request::CreateSandbox {
        sandbox_id: "sb".into(),
        hostname: hostname.map(str::to_owned),
        registry_tunnels: Vec::new(),
        published_ports: Vec::new(),
        network: None,
    })
}

/// INV-5: each policy loads but yields no clean decision; `(policy, input, reason prefix)`.
#[test]
fn inv5_decide_fail_closed_table() {
    let cases: Vec<(&str, &str, coffer_policies::PolicyInput, &str)> = vec![
        (
            "decision undefined for this input",
            r#"package coffer.policy
decision := {"allow": true, "reason": ""} if input.request.kind == "ExecProcess""#,
            guest_details(),
            "policy result undefined: data.coffer.policy.decision has no value for this request",
        ),
        (
            "decision is a bare boolean",
            "package coffer.policy\ndecision := true",
            guest_details(),
            "policy result invalid: data.coffer.policy.decision is a boolean, expected an object",
        ),
        (
            "decision is a set",
            "package coffer.policy\ndecision contains \"allow\"",
            guest_details(),
            "policy result invalid: data.coffer.policy.decision is a set, expected an object",
        ),
        (
            "runtime type error under strict builtins (count of null)",
            r#"package coffer.policy
decision := {"allow": count(input.request.hostname) > 0, "reason": "hostname"}"#,
            create_sandbox(None),
            "policy error: ",
        ),
        (
            "runtime type error in arithmetic",
            r#"package coffer.policy
decision := {"allow": input.request.sandbox_id + 1 > 0, "reason": "x"}"#,
            create_sandbox(None),
            "policy error: ",
        ),
        (
            "conflicting outputs of a complete rule",
            r#"package coffer.policy
decision := {"allow": true, "reason": ""} if input.version == 1
decision := {"allow": false, "reason": "no"} if input.request.kind == "GetGuestDetails""#,
            guest_details(),
            "policy error: ",
        ),
        (
            "division by zero",
            r#"package coffer.policy
decision := {"allow": true, "reason": ""} if { input.request.kind == "GetGuestDetails"; 1 / 0 == 1 }"#,
            guest_details(),
            "policy error: ",
        ),
    ];
    for (name, policy, input, prefix) in cases {
        let engine = Engine::new(policy, None, Limits::default())
            .unwrap_or_else(|e| panic!("{name}: does not load: {e}"));
        let decision = engine.decide(&input);
        assert!(!decision.allowed, "{name}: allowed");
        assert!(
            decision.reason.starts_with(prefix),
            "{name}: {:?}",
            decision.reason
        );
    }
}

/// INV-5 / INI-01: a policy without the rule is refused at load; the caller must then refuse to
/// serve rather than fall back to another policy.
#[test]
fn inv5_policy_without_decision_rule_does_not_load() {
    let err = Engine::new(
        "package coffer.policy\nallow := true",
        None,
        Limits::default(),
    )
    .unwrap_err();
    assert!(matches!(err, PolicyError::NoDecisionRule), "{err}");
    assert_eq!(
        err.to_string(),
        "policy has no rule data.coffer.policy.decision"
    );
}

/// INV-9 / POL-02: the size cap is checked before parsing (the oversized source is not even valid
/// Rego, yet the error is the size, not a parse error).
#[test]
fn pol02_oversized_policy_source_is_refused_before_parsing() {
    let limit = Limits::default().max_policy_bytes;
    let source = "#".repeat(limit + 1);
    let err = Engine::new(&source, None, Limits::default()).unwrap_err();
    assert!(
        matches!(err, PolicyError::PolicyTooLarge { size, limit: l } if size == limit + 1 && l == limit),
        "{err}"
    );
    let err = Engine::new(
        "garbage{",
        None,
        Limits {
            max_policy_bytes: 4,
            ..Limits::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, PolicyError::PolicyTooLarge { .. }), "{err}");
}

/// POL-02: a huge comprehension is stopped by the evaluation time limit and denied. The workload
/// (9·10^6 iterations, few kept) is sized to take seconds in a debug build, so a missing time limit
/// fails this test instead of hanging it; the ranges are small because regorus checks the deadline
/// between iterations, not inside one builtin call.
#[test]
fn pol02_huge_comprehension_hits_time_limit_and_is_denied() {
    let policy = r#"package coffer.policy
decision := {"allow": n > 0, "reason": "counted"} if {
    n := count([i | some i in numbers.range(1, 3000); some j in numbers.range(1, 3000); i == j])
}"#;
    let limits = Limits {
        max_eval_time: Duration::from_millis(20),
        ..Limits::default()
    };
    let engine = Engine::new(policy, None, limits).unwrap();
    let started = Instant::now();
    let decision = engine.decide(&guest_details());
    let took = started.elapsed();
    assert!(
        !decision.allowed,
        "completed in {took:?}: time limit not enforced"
    );
    assert!(
        decision
            .reason
            .starts_with("policy limit exceeded: execution exceeded time limit"),
        "{}",
        decision.reason
    );
    // Generous bound for a loaded 2-core machine.
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

/// POL-02: recursion bombs. A recursive function would overflow regorus's native stack and abort
/// the process, so it is refused at load; recursive rules are caught by regorus while evaluating
/// and denied.
#[test]
fn pol02_recursion_is_refused_or_denied() {
    let function = r#"package coffer.policy
f(x) := y if { y := g(x) }
g(x) := f(x + 1)
decision := {"allow": f(1) == 1, "reason": "r"}"#;
    let err = Engine::new(function, None, Limits::default()).unwrap_err();
    assert!(matches!(err, PolicyError::Recursion { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "policy function recursion f → g → f is not allowed"
    );

    let rules = r#"package coffer.policy
a := b
b := a
decision := {"allow": a == 1, "reason": "r"}"#;
    let engine = Engine::new(rules, None, Limits::default()).unwrap();
    let decision = engine.decide(&guest_details());
    assert!(!decision.allowed);
    assert!(
        decision.reason.starts_with("policy error: ")
            && decision.reason.contains("recursion detected"),
        "{}",
        decision.reason
    );
    assert!(!decision.reason.contains('\n'));
}

/// POL-01 with the typed input: `uid` is a number, so a string builtin on it is a strict builtin
/// error and the negation cannot produce an allow.
#[test]
fn pol01_string_builtin_on_number_under_negation_is_denied() {
    let policy = r#"package coffer.policy
default decision := {"allow": false, "reason": "exec as uid 0"}
decision := {"allow": true, "reason": ""} if {
    input.request.kind == "ExecProcess"
    not startswith(input.request.process.user.uid, "0")
}"#;
    let engine = Engine::new(policy, None, Limits::default()).unwrap();
    let exec = input(Request::ExecProcess {
        container_id: "c1".into(),
        exec_id: "e1".into(),
        process: Box::new(common::process(&["id"])),
    });
    let decision = engine.decide(&exec);
    assert!(!decision.allowed);
    assert!(
        decision.reason.starts_with("policy error: "),
        "{}",
        decision.reason
    );
}

/// AGT-CC: the denial reason names the rule/field, it is not a dump of the request.
#[test]
fn agt_cc_reasons_do_not_dump_the_request() {
    let engine = Engine::new(coffer_policies::SANDBOX_POLICY, None, Limits::default()).unwrap();
    let mut c = common::create_container();
    c.hooks_present = true;
    c.process.env.push("SECRET_TOKEN=hunter2".into());
    let decision = engine.decide(&input(Request::CreateContainer(Box::new(c))));
    assert!(!decision.allowed);
    assert!(!decision.reason.contains("hunter2"), "{}", decision.reason);
    assert!(!decision.reason.contains("PATH="), "{}", decision.reason);
}

/// Every path to a member of `value`'s objects (arrays are walked, their elements kept).
fn member_paths(
    value: &serde_json::Value,
    prefix: &mut Vec<PathStep>,
    out: &mut Vec<Vec<PathStep>>,
) {
    match value {
        serde_json::Value::Object(members) => {
            for (key, member) in members {
                prefix.push(PathStep::Key(key.clone()));
                out.push(prefix.clone());
                member_paths(member, prefix, out);
                prefix.pop();
            }
        }
        serde_json::Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                prefix.push(PathStep::Index(i));
                member_paths(item, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

#[derive(Debug, Clone)]
enum PathStep {
    Key(String),
    Index(usize),
}

/// `value` with the member at `path` removed.
fn without(value: &serde_json::Value, path: &[PathStep]) -> serde_json::Value {
    let mut copy = value.clone();
    let (last, parents) = path.split_last().expect("a member path is never empty");
    let mut node = &mut copy;
    for step in parents {
        node = match step {
            PathStep::Key(k) => &mut node[k.as_str()],
            PathStep::Index(i) => &mut node[*i],
        };
    }
    // A cut that removed nothing would be the denied request itself and prove nothing.
    let removed = match (last, node.as_object_mut()) {
        (PathStep::Key(k), Some(members)) => members.remove(k).is_some(),
        _ => false,
    };
    assert!(removed, "no member at {path:?}");
    copy
}

/// INV-5 / POL-01: a denial never depends on a field being present. Hand-written input (the
/// untyped `Engine::decide_json`; the agent's typed input always carries every field) missing any
/// one member of a denied request, at any depth, is still denied by the shipped policies: a
/// denial whose message quoted the missing field used to vanish, and with it the denial (a
/// PullImage of an unlisted image without `container_id` was allowed).
#[test]
fn inv5_a_missing_field_never_turns_a_denial_into_an_allow() {
    let confidential_data = common::confidential::data().to_string();
    let engines = [
        (
            "confidential (with data)",
            Engine::new(
                coffer_policies::CONFIDENTIAL_POLICY,
                Some(&confidential_data),
                Limits::default(),
            )
            .unwrap(),
        ),
        (
            "confidential (no data)",
            Engine::new(
                coffer_policies::CONFIDENTIAL_POLICY,
                None,
                Limits::default(),
            )
            .unwrap(),
        ),
        (
            "sandbox",
            Engine::new(coffer_policies::SANDBOX_POLICY, None, Limits::default()).unwrap(),
        ),
    ];
    let mut requests = common::one_of_each();
    let mut hooked = common::create_container();
    hooked.hooks_present = true;
    requests.push(Request::CreateContainer(Box::new(hooked)));
    requests.push(Request::CreateContainer(Box::new(
        common::confidential::app(),
    )));
    requests.push(Request::ExecProcess {
        container_id: "c1".into(),
        exec_id: "e1".into(),
        process: Box::new(common::confidential::app_process()),
    });
    let states = [common::state(), common::confidential::state()];
    let (mut denied, mut checked, mut failures) = (0, 0, Vec::new());
    for (name, engine) in &engines {
        for request in &requests {
            for state in &states {
                let whole = serde_json::to_value(coffer_policies::PolicyInput::new(
                    request.clone(),
                    state.clone(),
                ))
                .unwrap();
                if engine.decide_json(&whole.to_string()).allowed {
                    continue;
                }
                denied += 1;
                let mut paths = Vec::new();
                member_paths(&whole, &mut Vec::new(), &mut paths);
                for path in paths {
                    checked += 1;
                    let cut = without(&whole, &path);
                    let decision = engine.decide_json(&cut.to_string());
                    if decision.allowed || decision.reason.is_empty() {
                        failures.push(format!(
                            "{name}: {} {} without {path:?}",
                            whole["request"]["kind"],
                            if decision.allowed {
                                "allowed"
                            } else {
                                "denied without a reason"
                            },
                        ));
                    }
                }
            }
        }
    }
    failures.dedup();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The corpus holds denials of every policy and a few hundred cut inputs at least.
    assert!(
        denied >= 20 && checked >= 500,
        "{denied} denials, {checked} cuts"
    );
}

/// INV-5: the shipped policies' member lists (`required_members`, `required_process_members`
/// and the root filesystem's) cover the input schema: every member of a request, of its process
/// or of its root filesystem that the schema requires (the typed input does not deserialize
/// without it) is named in a denial when absent. The lists may ask more than the schema (members
/// it lets be absent but the agent always sends, such as a `null` exec id), never less. The
/// kinds `confidential.rego` decides by kind alone are not checked there.
#[test]
fn inv5_the_member_guard_covers_the_input_schema() {
    let confidential_data = common::confidential::data().to_string();
    let confidential = Engine::new(
        coffer_policies::CONFIDENTIAL_POLICY,
        Some(&confidential_data),
        Limits::default(),
    )
    .unwrap();
    let sandbox = Engine::new(coffer_policies::SANDBOX_POLICY, None, Limits::default()).unwrap();
    let by_kind_alone = [
        "DestroySandbox",
        "RemoveContainer",
        "StatsContainer",
        "WaitProcess",
        "SignalProcess",
        "TtyWinResize",
        "GetGuestDetails",
        "GetOOMEvent",
    ];
    let mut requests = common::one_of_each();
    requests.push(Request::CreateContainer(Box::new(
        common::confidential::app(),
    )));
    let (mut required, mut failures) = (0, Vec::new());
    for request in requests {
        let whole = serde_json::to_value(coffer_policies::PolicyInput::new(
            request,
            common::confidential::state(),
        ))
        .unwrap();
        let kind = whole["request"]["kind"].as_str().unwrap().to_owned();
        let mut paths: Vec<Vec<PathStep>> = Vec::new();
        for (prefix, node) in [
            (vec!["request"], &whole["request"]),
            (vec!["request", "process"], &whole["request"]["process"]),
            (vec!["request", "rootfs"], &whole["request"]["rootfs"]),
        ] {
            for key in node
                .as_object()
                .map(|m| m.keys().cloned().collect::<Vec<_>>())
                .unwrap_or_default()
            {
                if key == "kind" {
                    continue;
                }
                let mut path: Vec<PathStep> = prefix
                    .iter()
                    .map(|k| PathStep::Key((*k).to_owned()))
                    .collect();
                path.push(PathStep::Key(key));
                paths.push(path);
            }
        }
        for path in paths {
            let cut = without(&whole, &path);
            if serde_json::from_value::<coffer_policies::PolicyInput>(cut.clone()).is_ok() {
                continue;
            }
            required += 1;
            let dotted = path
                .iter()
                .map(|step| match step {
                    PathStep::Key(k) => k.clone(),
                    PathStep::Index(i) => i.to_string(),
                })
                .collect::<Vec<_>>()
                .join(".");
            for (name, engine) in [("confidential", &confidential), ("sandbox", &sandbox)] {
                if name == "confidential" && by_kind_alone.contains(&kind.as_str()) {
                    continue;
                }
                let decision = engine.decide_json(&cut.to_string());
                if decision.allowed || !decision.reason.contains(&format!("has no {dotted} ")) {
                    failures.push(format!("{name}: {kind} without {dotted}: {decision:?}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(required >= 40, "only {required} required members seen");
}
