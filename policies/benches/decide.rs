//! Decision latency of the shipped confidential policy, evaluated by the Rego interpreter (the
//! only authority): median and p99 for `CreateContainer` against a 10-container policy, a simple
//! request and a streaming request (`ReadStdout`, which looks its entry up), a denial, and
//! decisions per second on one thread.
//!
//! `cargo bench -p coffer-policies --bench decide`
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use coffer_policies::{
    CONFIDENTIAL_POLICY, Capabilities, ContainerState, Decision, Engine, Limits, PolicyInput,
    Process, Request, SandboxState, User,
};
use serde_json::json;

#[path = "../tests/common/mod.rs"]
mod common;

const ENTRIES: usize = 10;

fn image(i: usize) -> String {
    format!(
        "registry.example/app{i}@sha256:{}",
        format!("{i:x}").repeat(64).get(..64).unwrap().to_owned()
    )
}

fn data() -> serde_json::Value {
    let containers: Vec<_> = (0..ENTRIES)
        .map(|i| {
            json!({
                "name": format!("c{i}"),
                "image": image(i),
                "args": ["/app/server", "--id", i.to_string()],
                "env": ["PATH=/usr/local/bin:/usr/bin:/bin", format!("ID={i}")],
                "env_names_any_value": ["HOSTNAME"],
                "cwd": "/app",
                "user": {"uid": 1000, "gid": 1000},
                "exec": [["/app/health"]],
                "logs": true
            })
        })
        .collect();
    json!({ "containers": containers })
}

/// The CreateContainer for the last entry (the policy has to consider every entry's image).
fn create() -> PolicyInput {
    let i = ENTRIES - 1;
    let caps: Vec<String> = ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
        .iter()
        .map(|c| (*c).to_owned())
        .collect();
    let process = Process {
        args: vec!["/app/server".into(), "--id".into(), i.to_string()],
        env: vec![
            "PATH=/usr/local/bin:/usr/bin:/bin".into(),
            format!("ID={i}"),
            "HOSTNAME=pod".into(),
        ],
        cwd: "/app".into(),
        user: User {
            uid: 1000,
            gid: 1000,
            ..User::default()
        },
        terminal: false,
        capabilities: Capabilities {
            bounding: caps.clone(),
            effective: caps.clone(),
            permitted: caps,
            inheritable: vec![],
            ambient: vec![],
        },
        no_new_privileges: true,
        ..Process::default()
    };
    // containerd's spec for a pulled image (the policy tests' builder), as the agent would get it.
    let mut request = common::image_container(&image(i), process);
    request.container_id = "ctr".into();
    PolicyInput::new(Request::CreateContainer(Box::new(request)), state())
}

fn state() -> SandboxState {
    SandboxState {
        containers: (0..3)
            .map(|i| ContainerState {
                id: format!("running{i}"),
                image_digest: None,
                started: true,
                record: BTreeMap::from([("entry".to_owned(), format!("c{i}"))]),
            })
            .collect(),
        ever_started: vec!["running0".to_owned(), "running1".to_owned()],
    }
}

/// The CreateContainer of [`create`] with a capability its entry does not list.
fn denied_create() -> PolicyInput {
    let mut input = create();
    if let Request::CreateContainer(c) = &mut input.request {
        c.process.capabilities.bounding.push("CAP_SYS_ADMIN".into());
    }
    input
}

fn simple() -> PolicyInput {
    PolicyInput::new(Request::GetGuestDetails, state())
}

/// Reading the output of a running container: its policy entry is looked up by its record.
fn stdout() -> PolicyInput {
    PolicyInput::new(
        Request::ReadStdout {
            container_id: "running1".into(),
            exec_id: None,
        },
        state(),
    )
}

/// `input` with the sandbox state made unique by `i` (one more removed container remembered as
/// started), so no two runs share a byte-identical input and no decision comes from the engine's
/// memo.
fn unique(input: &PolicyInput, i: usize) -> PolicyInput {
    let mut input = input.clone();
    input.state.containers.push(ContainerState {
        id: format!("gone{i}"),
        image_digest: None,
        started: false,
        record: BTreeMap::new(),
    });
    input
}

/// Latency samples of deciding `input` `runs` times: each time a new input (`fresh`, what a
/// first request costs) or the same one (repeats of a request that records nothing are answered
/// from the engine's memo).
fn measure(
    decide: impl Fn(&PolicyInput) -> Decision,
    input: &PolicyInput,
    allowed: bool,
    runs: usize,
    fresh: bool,
) -> Vec<Duration> {
    for _ in 0..runs / 10 {
        assert_eq!(decide(input).allowed, allowed);
    }
    let inputs: Vec<PolicyInput> = (0..runs)
        .map(|i| {
            if fresh {
                unique(input, i)
            } else {
                input.clone()
            }
        })
        .collect();
    let mut samples: Vec<Duration> = inputs
        .iter()
        .map(|input| {
            let started = Instant::now();
            let decision = decide(input);
            let took = started.elapsed();
            assert_eq!(decision.allowed, allowed, "{}", decision.reason);
            took
        })
        .collect();
    samples.sort();
    samples
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn report(name: &str, samples: &[Duration]) {
    let median = samples[samples.len() / 2];
    let p99 = samples[samples.len() * 99 / 100];
    let total: Duration = samples.iter().sum();
    let per_second = samples.len() as f64 / total.as_secs_f64();
    println!(
        "  {name}: median {:.1} µs, p99 {:.1} µs, {per_second:.0} decisions/s",
        micros(median),
        micros(p99),
    );
}

/// `PROFILE=1`: the median time of each rule in `RULES` (comma-separated, default: the
/// CreateContainer path), evaluated alone on the CreateContainer input (`INPUT=simple`: the
/// GetGuestDetails input, `INPUT=stdout`: the ReadStdout one). A rule's time includes the rules it
/// references. `POLICY=FILE` profiles another version of the policy, e.g. a candidate rewrite,
/// against the same data and input.
fn profile() {
    let policy = std::env::var("POLICY").map_or_else(
        |_| CONFIDENTIAL_POLICY.to_owned(),
        |path| std::fs::read_to_string(path).unwrap(),
    );
    let input = match std::env::var("INPUT").as_deref() {
        Ok("simple") => simple(),
        Ok("stdout") => stdout(),
        _ => create(),
    };
    let rules = std::env::var("RULES").unwrap_or_else(|_| {
        "requested_image,candidates,nonstandard_mounts,screened,matching,create_denials,create_decision,decision".to_owned()
    });
    let mut engine = regorus::Engine::new();
    engine.set_strict_builtin_errors(true);
    engine.add_policy("policy.rego".into(), policy).unwrap();
    engine.add_data_json(&data().to_string()).unwrap();
    // The index the engine adds at load (`data_index`, read as `data.coffer_index`).
    if let Ok(index) = engine.eval_rule("data.coffer.policy.data_index".into()) {
        let mut wrapper = regorus::Value::new_object();
        wrapper
            .as_object_mut()
            .unwrap()
            .insert(regorus::Value::from("coffer_index"), index);
        engine.add_data(wrapper).unwrap();
    }
    engine
        .set_input_json(&serde_json::to_string(&input).unwrap())
        .unwrap();
    for rule in rules.split(',') {
        let path = format!("data.coffer.policy.{rule}");
        let value = match engine.eval_rule(path.clone()) {
            Ok(value) => value,
            Err(e) => {
                println!(
                    "{rule}: error: {}",
                    e.to_string().lines().last().unwrap_or_default()
                );
                continue;
            }
        };
        let mut samples: Vec<Duration> = (0..400)
            .map(|_| {
                let started = Instant::now();
                engine.eval_rule(path.clone()).unwrap();
                started.elapsed()
            })
            .collect();
        samples.sort();
        let mut shown = value.to_string();
        shown.truncate(60);
        println!("{rule}: median {} µs ({shown})", samples[200].as_micros());
    }
}

fn main() {
    if std::env::var_os("PROFILE").is_some() {
        profile();
        return;
    }
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(2000);
    let engine = Engine::new(
        CONFIDENTIAL_POLICY,
        Some(&data().to_string()),
        Limits::default(),
    )
    .expect("policy loads");
    let create = create();
    let decision = engine.decide(&create);
    assert!(decision.allowed, "{}", decision.reason);
    assert_eq!(decision.record.get("entry").map(String::as_str), Some("c9"));
    let (simple, stdout) = (simple(), stdout());
    let denied = denied_create();
    let decide = |input: &PolicyInput| engine.decide(input);

    println!("Engine::decide (the Rego interpreter, what the agent calls):");
    let name = format!("CreateContainer, {ENTRIES}-container policy");
    report(&name, &measure(decide, &create, true, runs, true));
    report(
        "GetGuestDetails (simple), first time",
        &measure(decide, &simple, true, runs, true),
    );
    report(
        "GetGuestDetails (simple), repeated (memo)",
        &measure(decide, &simple, true, runs, false),
    );
    report(
        "ReadStdout (streaming; entry lookup), first time",
        &measure(decide, &stdout, true, runs, true),
    );
    report(
        "ReadStdout (streaming; entry lookup), repeated (memo)",
        &measure(decide, &stdout, true, runs, false),
    );
    report(
        "CreateContainer denied (extra capability), first time",
        &measure(decide, &denied, false, runs, true),
    );
    if std::env::var_os("TRIVIAL").is_some() {
        let trivial = Engine::new(
            "package coffer.policy\ndecision := {\"allow\": true}\n",
            Some(&data().to_string()),
            Limits::default(),
        )
        .unwrap();
        let trivial = |input: &PolicyInput| trivial.decide(input);
        report(
            "trivial policy, CreateContainer",
            &measure(trivial, &create, true, runs, true),
        );
        report(
            "trivial policy, GetGuestDetails",
            &measure(trivial, &simple, true, runs, true),
        );
    }
}
