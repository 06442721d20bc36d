//! The policy input: JSON decoded into `coffer_policies::PolicyInput` (the typed, versioned
//! input the agent hands the gate) and decided by the real Rego engine.
//!
//! The first byte's bit 0 picks the shipped policy: the confidential default with a two-container
//! policy-data document, or the sandbox default. Bit 1 picks the entry point:
//! - clear: `serde_json` into `PolicyInput`, then `Engine::decide` (the agent's path);
//! - set: `Engine::decide_json` on the text (raw JSON, no schema: members may be missing).
//!
//! Every decision is evaluated in full by regorus (with the engine's memo of repeated inputs, as
//! in the agent). Properties: `decide` never panics, and a denial always carries a reason.
#![no_main]

use std::sync::LazyLock;

use coffer_policies::{CONFIDENTIAL_POLICY, Engine, Limits, PolicyInput, SANDBOX_POLICY};
use libfuzzer_sys::fuzz_target;

/// Two containers in the schema of `policies/POLICY-DATA.md`.
const DATA: &str = r#"{"containers": [
  {"name": "app", "image": "registry.example/app@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
   "args": ["/app/server", "--port", "8080"], "env": ["PATH=/usr/local/bin:/usr/bin:/bin"],
   "env_names_any_value": ["HOSTNAME"], "cwd": "/app", "user": {"uid": 1000, "gid": 1000},
   "exec": [["/app/health"]], "logs": true},
  {"name": "pause", "image": "registry.example/pause@sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
   "args": ["/pause"], "env": [], "cwd": "/", "user": {"uid": 65535, "gid": 65535}}
]}"#;

static CONFIDENTIAL: LazyLock<Engine> = LazyLock::new(|| {
    Engine::new(CONFIDENTIAL_POLICY, Some(DATA), Limits::default()).expect("shipped policy loads")
});
static SANDBOX: LazyLock<Engine> = LazyLock::new(|| {
    Engine::new(SANDBOX_POLICY, None, Limits::default()).expect("shipped policy loads")
});

fuzz_target!(|data: &[u8]| {
    let Some((&form, rest)) = data.split_first() else {
        return;
    };
    let engine = if form & 1 == 0 {
        &*CONFIDENTIAL
    } else {
        &*SANDBOX
    };
    let decision = if form & 2 == 0 {
        let Ok(input) = serde_json::from_slice::<PolicyInput>(rest) else {
            return;
        };
        engine.decide(&input)
    } else {
        let Ok(text) = std::str::from_utf8(rest) else {
            return;
        };
        engine.decide_json(text)
    };
    if !decision.allowed {
        assert!(!decision.reason.is_empty(), "a denial without a reason");
    }
});
