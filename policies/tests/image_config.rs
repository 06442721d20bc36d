//! REG-04: the fields of an image config an attacker controls (`Volumes`, `Labels`, `User`, `Env`)
//! as they can reach the policy. The guest never reads them (image-rs parses only the config's
//! platform and diff IDs); whatever the host's runtime derives from them arrives as part of the
//! CreateContainer spec, where both shipped policies judge it like any other field.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test-only file: panics are failures

mod common;

use std::collections::BTreeMap;

use coffer_policies::{
    CONFIDENTIAL_POLICY, CreateContainer, Decision, Engine, Limits, PolicyInput, Request,
    SANDBOX_POLICY, SandboxState,
};
use common::mount;

/// Both policies, each with the CreateContainer it admits and the state it is decided in.
fn policies() -> Vec<(&'static str, Engine, CreateContainer, SandboxState)> {
    let mut app = common::confidential::app();
    app.container_id = "c3".into();
    vec![
        (
            "sandbox",
            Engine::new(SANDBOX_POLICY, None, Limits::default()).unwrap(),
            common::create_container(),
            common::state(),
        ),
        (
            "confidential",
            Engine::new(
                CONFIDENTIAL_POLICY,
                Some(&common::confidential::data().to_string()),
                Limits::default(),
            )
            .unwrap(),
            app,
            common::confidential::state(),
        ),
    ]
}

fn decide(engine: &Engine, c: CreateContainer, state: &SandboxState) -> Decision {
    engine.decide(&PolicyInput::new(
        Request::CreateContainer(Box::new(c)),
        state.clone(),
    ))
}

/// An image `Volumes` entry becomes, in containerd's CRI plugin, a bind mount of a directory it
/// made on the host (CVE-2022-23648 was a path escaping that copy). In the guest such a mount is
/// a bind of a guest path: refused by both policies, whatever the destination, the declared type
/// or the options.
#[test]
fn reg04_image_volumes_as_bind_mounts_are_refused() {
    let volume = "/var/lib/containerd/io.containerd.grpc.v1.cri/containers/c1/volumes/0123abcd";
    let mounts = [
        mount("/host", volume, "bind", &["rbind", "rprivate"]),
        mount("/etc/shadow", volume, "bind", &["rbind", "rprivate"]),
        mount("/data", "/", "none", &["rbind"]),
        mount("/data", volume, "tmpfs", &["bind", "ro"]),
    ];
    for (policy, engine, base, state) in policies() {
        assert!(
            decide(&engine, base.clone(), &state).allowed,
            "{policy}: the base request is admitted"
        );
        for m in &mounts {
            let mut c = base.clone();
            c.mounts.push(m.clone());
            let decision = decide(&engine, c, &state);
            assert!(!decision.allowed, "{policy}: {m:?} allowed");
            assert!(
                decision.reason.contains("mount ") && decision.reason.contains(&m.destination),
                "{policy}: {m:?}: {}",
                decision.reason
            );
        }
    }
}

/// Image labels (and anything else the host copies into the spec's annotations) drive nothing:
/// the decision and its record are the same with and without them, including labels that name
/// the pod annotations `coffer policy gen` reads and Kata's runtime knobs.
#[test]
fn reg04_labels_and_annotations_change_no_decision() {
    let labels = BTreeMap::from([
        ("coffer.dev/allow-logs".to_owned(), "true".to_owned()),
        (
            "coffer.dev/workload-identity.app".to_owned(),
            "/var/run/secrets".to_owned(),
        ),
        (
            "io.katacontainers.config.agent.policy".to_owned(),
            "cGFja2FnZSBhZ2VudF9wb2xpY3kKZGVmYXVsdCBhbGxvdyA6PSB0cnVl".to_owned(),
        ),
        (
            "io.kubernetes.cri.container-type".to_owned(),
            "sandbox".to_owned(),
        ),
        (
            "org.opencontainers.image.volumes".to_owned(),
            "/host".to_owned(),
        ),
        ("x\ny".to_owned(), "\u{202e}".to_owned()),
    ]);
    for (policy, engine, base, state) in policies() {
        for c in [base.clone(), {
            let mut denied = base.clone();
            denied.process.user.uid = 0;
            denied
        }] {
            let plain = decide(&engine, c.clone(), &state);
            let mut labelled = c;
            labelled.annotations = labels.clone();
            assert_eq!(
                decide(&engine, labelled, &state),
                plain,
                "{policy}: annotations changed the decision"
            );
        }
    }
}

/// An image whose config says `User: "0:0"` where the policy entry (from the pod's
/// `runAsUser`/`runAsGroup`) says 1000:1000: the host's runtime may put either in the spec; only
/// the authorized one is admitted, so the user that runs is the one the policy names.
#[test]
fn reg04_image_user_root_is_refused_where_the_entry_names_another() {
    let (_, engine, base, state) = policies().pop().unwrap();
    assert_eq!((base.process.user.uid, base.process.user.gid), (1000, 1000));
    assert!(decide(&engine, base.clone(), &state).allowed);
    for (uid, gid) in [(0, 0), (0, 1000), (1000, 0)] {
        let mut c = base.clone();
        c.process.user.uid = uid;
        c.process.user.gid = gid;
        let decision = decide(&engine, c, &state);
        assert!(!decision.allowed, "{uid}:{gid} admitted");
        assert!(
            decision.reason.contains(&format!(
                "user {{\"gid\": {gid}, \"uid\": {uid}}} differs from {{\"gid\": 1000, \"uid\": 1000}}"
            )),
            "{uid}:{gid}: {}",
            decision.reason
        );
    }
}

/// Environment entries an image config could carry, each outside the entry's list: refused by
/// name (the agent refuses the ones execve cannot pass exactly before the policy sees them).
#[test]
fn reg04_image_environment_outside_the_entry_is_refused() {
    let (_, engine, base, state) = policies().pop().unwrap();
    for (var, name) in [
        ("LD_PRELOAD=/tmp/x.so", "LD_PRELOAD"),
        ("MODE=prod\nLD_PRELOAD=/tmp/x.so", "MODE"),
        ("MODE=debug", "MODE"),
        ("PATH=/tmp:/usr/bin:/bin", "PATH"),
    ] {
        let mut c = base.clone();
        c.process.env.push(var.into());
        let decision = decide(&engine, c, &state);
        assert!(!decision.allowed, "{var:?} admitted");
        assert!(
            decision
                .reason
                .contains(&format!("environment variable {name} is not listed")),
            "{var:?}: {}",
            decision.reason
        );
    }
}
