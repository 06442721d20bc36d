//! The measured guest carries no broker code. `guest/build.sh` builds the agent by itself, so
//! cargo enables only the features the agent's own dependency graph asks for; this test reads
//! that graph (`cargo tree -p coffer-agent`, which resolves features exactly as that build does)
//! and fails if the broker's side of `coffer-attestation` (its `server`, `check`, `load` or
//! `testing` features) or any crate only those features bring is in it.
// Test code: a failed expectation is a test failure.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

const TARGET: &str = "x86_64-unknown-linux-gnu";
/// `coffer-attestation` features that are the broker's, or tools' and tests', never the guest's.
const BROKER_FEATURES: &[&str] = &["server", "check", "load", "testing"];
/// Crates that are the broker's whatever pulls them in (its PostgreSQL store).
const BROKER_CRATES: &[&str] = &["tokio-postgres", "postgres-protocol", "postgres-types"];

fn cargo_tree(args: &[&str]) -> String {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new(env!("CARGO"))
        .current_dir(&workspace)
        .args([
            "tree",
            "--locked",
            "--offline",
            "--target",
            TARGET,
            "--prefix",
            "none",
        ])
        .args(args)
        .output()
        .expect("running cargo tree");
    assert!(
        out.status.success(),
        "cargo tree {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Package names in a `cargo tree -e normal` listing.
fn crates(args: &[&str]) -> BTreeSet<String> {
    let mut all = vec!["-e", "normal"];
    all.extend_from_slice(args);
    cargo_tree(&all)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_guest_build_links_no_broker_code() {
    let agent = crates(&["-p", "coffer-agent"]);

    // Which coffer-attestation features the agent's build enables.
    let features = cargo_tree(&[
        "-p",
        "coffer-agent",
        "-e",
        "features",
        "-i",
        "coffer-attestation",
    ]);
    let enabled: BTreeSet<&str> = features
        .lines()
        .filter_map(|l| l.split("coffer-attestation feature \"").nth(1))
        .filter_map(|rest| rest.split('"').next())
        .collect();
    for feature in BROKER_FEATURES {
        assert!(
            !enabled.contains(feature),
            "the guest build enables coffer-attestation's {feature:?} feature (enabled: {enabled:?})"
        );
    }

    // Crates only the broker's features bring: in coffer-attestation with them, not in it as the
    // guest builds it, and not wanted by the agent's other dependencies.
    let broker = crates(&[
        "-p",
        "coffer-attestation",
        "--features",
        &BROKER_FEATURES.join(","),
    ]);
    let mut guest_features: Vec<&str> = enabled.iter().copied().collect();
    guest_features.retain(|f| *f != "default");
    let mut guest_attestation = vec!["-p", "coffer-attestation", "--no-default-features"];
    let joined = guest_features.join(",");
    if !joined.is_empty() {
        guest_attestation.extend(["--features", &joined]);
    }
    let guest_side = crates(&guest_attestation);
    let others = crates(&["-p", "coffer-agent", "--prune", "coffer-attestation"]);
    let broker_only: BTreeSet<&String> = broker
        .iter()
        .filter(|c| !guest_side.contains(*c) && !others.contains(*c))
        .collect();
    assert!(
        broker_only.len() >= BROKER_CRATES.len(),
        "the broker's own crates were not found ({broker_only:?}): is this test still reading the right tree?"
    );
    let leaked: Vec<&&String> = broker_only.iter().filter(|c| agent.contains(**c)).collect();
    assert!(
        leaked.is_empty(),
        "broker-only crates in the guest agent's tree: {leaked:?}"
    );
    for name in BROKER_CRATES {
        assert!(
            !agent.contains(*name),
            "{name} is in the guest agent's tree"
        );
    }
    // The size guest/agent/README.md states.
    println!("the guest agent's tree: {} crates", agent.len());
}
