//! Kata compatibility mode: a Kata genpolicy policy (`rules.rego` in package `agent_policy`, with
//! its `policy_data`) decided the way Kata's agent decides it, so such policies work unchanged.
//!
//! * **Policy.** One module in package `agent_policy`, Rego v1 or, if it does not parse as v1,
//!   Rego v0 (with `import future.keywords.*` as genpolicy writes it, or without keywords). Its data is the
//!   rule `policy_data` (genpolicy embeds `policy_data := {...}` in the same file) or a separate
//!   JSON document, which the policy then sees as `policy_data` exactly as if embedded. Builtin
//!   errors are not strict (Kata's setting: a builtin given the wrong type is undefined, not an
//!   error).
//! * **Input.** Kata's request as its agent serializes it: the protobuf request message as JSON,
//!   every field present (defaults filled), OCI fields capitalized as in Kata's `oci.proto`
//!   (`input.OCI.Process.Args`, `input.OCI.Mounts[_].type_`, `input.storages`, …). The engine does
//!   not fill missing fields: the caller supplies the full request.
//! * **Decision.** `data.agent_policy.<Message>` (e.g. `CreateContainerRequest`) must be `true`,
//!   or `{"allowed": true, "ops": [...]}` whose ops — JSON Patch (RFC 6902) — update the policy
//!   state `data.pstate` (initially `{}`), applied only when the request is allowed and all at
//!   once. Anything else denies: `false`, `allowed: false`, undefined (no default rule), any other
//!   type, an evaluation error, an exceeded limit, ops that do not apply.
//! * **Not honoured.** `AllowRequestsFailingPolicy` (Kata's switch letting denied requests through)
//!   is refused at load, in the rules or anywhere in the policy data: a policy that sets it does
//!   not load.

use std::fmt;

use regorus::Value;

use crate::engine::{
    Limits, PolicyError, check_sizes, eval_error_reason, interpreter, reject_recursion,
    truncate as cut, type_name,
};

/// The package of a Kata policy.
pub const KATA_PACKAGE: &str = "agent_policy";
/// Kata's setting that lets requests the policy denies through; refused at load.
pub const FAILING_POLICY_SETTING: &str = "AllowRequestsFailingPolicy";

const RULES_SOURCE_NAME: &str = "rules.rego";
const DATA_BRIDGE_NAME: &str = "policy_data.rego";
/// Makes a separately supplied data document (`data.policy_data`) the rule genpolicy embeds.
const DATA_BRIDGE: &str = "package agent_policy\n\npolicy_data := data.policy_data\n";
const DATA_ROOT: &str = "policy_data";
const STATE_ROOT: &str = "pstate";
/// Most `print` lines kept per decision (for `coffer policy eval`; Kata's agent logs them).
pub const MAX_PRINTS: usize = 256;
/// What every Kata denial says after the rule: the policy language has no reason to give.
pub const NO_REASON: &str = "Kata policies give no reason beyond the rule";

/// Kata agent RPCs (`agent.proto`) and the request message each is decided by: the rule
/// `data.agent_policy.<message>`.
pub const KATA_REQUESTS: &[(&str, &str)] = &[
    ("AddARPNeighbors", "AddARPNeighborsRequest"),
    ("AddSwap", "AddSwapRequest"),
    ("CloseStdin", "CloseStdinRequest"),
    ("CopyFile", "CopyFileRequest"),
    ("CreateContainer", "CreateContainerRequest"),
    ("CreateSandbox", "CreateSandboxRequest"),
    ("DestroySandbox", "DestroySandboxRequest"),
    ("ExecProcess", "ExecProcessRequest"),
    ("GetGuestDetails", "GuestDetailsRequest"),
    ("GetIPTables", "GetIPTablesRequest"),
    ("GetMetrics", "GetMetricsRequest"),
    ("GetOOMEvent", "GetOOMEventRequest"),
    ("GetVolumeStats", "VolumeStatsRequest"),
    ("ListInterfaces", "ListInterfacesRequest"),
    ("ListRoutes", "ListRoutesRequest"),
    ("MemAgentCompactSet", "MemAgentCompactConfig"),
    ("MemAgentMemcgSet", "MemAgentMemcgConfig"),
    ("MemHotplugByProbe", "MemHotplugByProbeRequest"),
    ("OnlineCPUMem", "OnlineCPUMemRequest"),
    ("PauseContainer", "PauseContainerRequest"),
    ("ReadStderr", "ReadStreamRequest"),
    ("ReadStdout", "ReadStreamRequest"),
    ("RemoveContainer", "RemoveContainerRequest"),
    (
        "RemoveStaleVirtiofsShareMounts",
        "RemoveStaleVirtiofsShareMountsRequest",
    ),
    ("ReseedRandomDev", "ReseedRandomDevRequest"),
    ("ResizeVolume", "ResizeVolumeRequest"),
    ("ResumeContainer", "ResumeContainerRequest"),
    ("SetGuestDateTime", "SetGuestDateTimeRequest"),
    ("SetIPTables", "SetIPTablesRequest"),
    ("SetPolicy", "SetPolicyRequest"),
    ("SignalProcess", "SignalProcessRequest"),
    ("StartContainer", "StartContainerRequest"),
    ("StatsContainer", "StatsContainerRequest"),
    ("TtyWinResize", "TtyWinResizeRequest"),
    ("UpdateContainer", "UpdateContainerRequest"),
    ("UpdateEphemeralMounts", "UpdateEphemeralMountsRequest"),
    ("UpdateInterface", "UpdateInterfaceRequest"),
    ("UpdateRoutes", "UpdateRoutesRequest"),
    ("WaitProcess", "WaitProcessRequest"),
    ("WriteStdin", "WriteStreamRequest"),
];

/// The request message a name designates: a message name (`CreateContainerRequest`), a message
/// name without its `Request` suffix (`CreateContainer`, `ReadStream`), or an RPC name
/// (`ReadStdout` → `ReadStreamRequest`, `GetGuestDetails` → `GuestDetailsRequest`).
pub fn kata_request(name: &str) -> Option<&'static str> {
    KATA_REQUESTS
        .iter()
        .find_map(|&(_, message)| {
            (message == name || message.strip_suffix("Request") == Some(name)).then_some(message)
        })
        .or_else(|| {
            KATA_REQUESTS
                .iter()
                .find_map(|&(rpc, message)| (rpc == name).then_some(message))
        })
}

/// The outcome of one Kata decision.
#[derive(Debug, Clone, PartialEq)]
pub struct KataDecision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// The rule evaluated, `data.agent_policy.<Message>`.
    pub rule: String,
    /// Why: the rule's verdict, or the engine's reason for a denial (`policy result undefined`,
    /// `policy result invalid`, `policy error`, `policy limit exceeded`, `policy input is`,
    /// `policy state update failed`, `unknown Kata request`).
    pub reason: String,
    /// The state operations applied (JSON Patch on `data.pstate`); empty for denials.
    pub ops: Vec<serde_json::Value>,
    /// What the policy printed during this decision (at most [`MAX_PRINTS`] lines).
    pub prints: Vec<String>,
}

impl KataDecision {
    fn deny(rule: String, reason: impl Into<String>, prints: Vec<String>) -> Self {
        Self {
            allowed: false,
            rule,
            reason: cut(reason.into()),
            ops: Vec::new(),
            prints,
        }
    }
}

/// A loaded Kata policy and its state. Decisions are sequential (`&mut self`), as in Kata's agent:
/// each sees the state the previous allowed ones left.
pub struct KataEngine {
    engine: regorus::Engine,
    /// The request rules the policy declares; the others are undefined.
    declared: Vec<&'static str>,
    /// `data` without the state: `{}` or `{"policy_data": …}` for separately supplied data.
    base_data: Value,
    state: serde_json::Value,
    /// Set if the state could not be installed: every later decision is denied (POL-03).
    lost_state: Option<String>,
    limits: Limits,
}

impl fmt::Debug for KataEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KataEngine")
            .field("state", &self.state)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Parses `rules` (and the data bridge, if any) as Rego v0 or v1.
fn load(
    rules: &str,
    bridge: bool,
    limits: &Limits,
    max_policy_bytes: std::num::NonZeroUsize,
    rego_v0: bool,
) -> Result<(regorus::Engine, String), String> {
    let mut engine = interpreter(limits, max_policy_bytes);
    engine.set_rego_v0(rego_v0);
    engine.set_strict_builtin_errors(false);
    engine.set_gather_prints(true);
    let package = engine
        .add_policy(RULES_SOURCE_NAME.to_owned(), rules.to_owned())
        .map_err(|e| e.to_string())?;
    if bridge {
        engine
            .add_policy(DATA_BRIDGE_NAME.to_owned(), DATA_BRIDGE.to_owned())
            .map_err(|e| e.to_string())?;
    }
    Ok((engine, package))
}

impl KataEngine {
    /// Loads a Kata policy: `rules_rego` (package `agent_policy`) and, when the policy does not
    /// embed `policy_data`, optional `policy_data_json` (the object genpolicy would embed).
    pub fn new(
        rules_rego: &str,
        policy_data_json: Option<&str>,
        limits: Limits,
    ) -> Result<Self, PolicyError> {
        let max_policy_bytes = check_sizes(rules_rego, policy_data_json, &limits)?;
        let bridge = policy_data_json.is_some();
        // Rego v1 first: a v1 module can parse as v0 with another meaning (its `if`, `in` and
        // `contains` read as names), while a v0 module (rule bodies without `if`, or keywords
        // only through `import future.keywords`) does not parse as v1 unless it means the same.
        let (mut engine, package) = match load(rules_rego, bridge, &limits, max_policy_bytes, false)
        {
            Ok(loaded) => loaded,
            Err(v1) => load(rules_rego, bridge, &limits, max_policy_bytes, true).map_err(|v0| {
                PolicyError::Parse {
                    message: format!("as Rego v1: {v1}\nas Rego v0: {v0}"),
                }
            })?,
        };
        if package != format!("data.{KATA_PACKAGE}") {
            return Err(PolicyError::WrongPackage {
                found: package,
                expected: KATA_PACKAGE,
            });
        }
        reject_recursion(&engine)?;
        let declares = |engine: &regorus::Engine, rule: &str| {
            engine
                .has_declared_rule_rooted_at(RULES_SOURCE_NAME, rule)
                .map_err(|e| PolicyError::Compile {
                    message: e.to_string(),
                })
        };
        let mut base_data = Value::new_object();
        if let Some(json) = policy_data_json {
            if declares(&engine, DATA_ROOT)? {
                return Err(PolicyError::Data {
                    message: format!(
                        "the policy embeds {DATA_ROOT} and a separate data document was given"
                    ),
                });
            }
            let data = Value::from_json_str(json).map_err(|e| PolicyError::Data {
                message: e.to_string(),
            })?;
            if data.as_object().is_err() {
                return Err(PolicyError::Data {
                    message: "the data document must be a JSON object".into(),
                });
            }
            base_data
                .as_object_mut()
                .map_err(|e| PolicyError::Data {
                    message: e.to_string(),
                })?
                .insert(Value::from(DATA_ROOT), data);
        }
        let state = serde_json::Value::Object(serde_json::Map::new());
        install(&mut engine, &base_data, &state)
            .map_err(|message| PolicyError::Data { message })?;
        engine
            .eval_query("true".to_owned(), false)
            .map_err(|e| PolicyError::Compile {
                message: e.to_string(),
            })?;
        engine.set_input(Value::new_object());
        if declares(&engine, FAILING_POLICY_SETTING)? {
            let value = engine
                .eval_rule(format!("data.{KATA_PACKAGE}.{FAILING_POLICY_SETTING}"))
                .map_err(|e| PolicyError::Compile {
                    message: e.to_string(),
                })?;
            if !matches!(value, Value::Bool(false) | Value::Undefined) {
                return Err(failing_policy_refused(&format!(
                    "rule {FAILING_POLICY_SETTING} is {value}"
                )));
            }
        }
        if bridge || declares(&engine, DATA_ROOT)? {
            let data = engine
                .eval_rule(format!("data.{KATA_PACKAGE}.{DATA_ROOT}"))
                .map_err(|e| PolicyError::Data {
                    message: e.to_string(),
                })?;
            if let Some(path) = find_failing_policy_setting(&data) {
                return Err(failing_policy_refused(&format!("{DATA_ROOT}{path} is set")));
            }
        }
        let mut declared = Vec::new();
        for &(_, message) in KATA_REQUESTS {
            if declares(&engine, message)? && !declared.contains(&message) {
                declared.push(message);
            }
        }
        let _ = engine.take_prints();
        Ok(Self {
            engine,
            declared,
            base_data,
            state,
            lost_state: None,
            limits,
        })
    }

    /// Starts from `state` (an object) instead of `{}`, e.g. to replay a decision.
    pub fn with_state(mut self, state: serde_json::Value) -> Result<Self, PolicyError> {
        check_state(&state, &self.limits).map_err(|message| PolicyError::Data { message })?;
        install(&mut self.engine, &self.base_data, &state)
            .map_err(|message| PolicyError::Data { message })?;
        self.state = state;
        Ok(self)
    }

    /// The policy state (`data.pstate`) after the decisions so far.
    pub fn state(&self) -> &serde_json::Value {
        &self.state
    }

    /// The limits this engine enforces.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Decides `request` (a name [`kata_request`] accepts) with `input_json`, Kata's request JSON.
    /// Never fails: every problem is a denial whose reason names it. State operations of an allowed
    /// decision are applied before this returns; a denial changes nothing.
    pub fn decide(&mut self, request: &str, input_json: &str) -> KataDecision {
        let Some(message) = kata_request(request) else {
            let shown: String = request.chars().take(64).collect();
            return KataDecision::deny(
                shown.clone(),
                format!("unknown Kata request {shown:?}"),
                Vec::new(),
            );
        };
        let rule = format!("data.{KATA_PACKAGE}.{message}");
        if let Some(lost) = &self.lost_state {
            return KataDecision::deny(rule, format!("policy state lost: {lost}"), Vec::new());
        }
        if !self.declared.contains(&message) {
            let reason = format!(
                "policy result undefined: the policy has no rule {rule} (nor a default for it)"
            );
            return KataDecision::deny(rule, reason, Vec::new());
        }
        if input_json.len() > self.limits.max_input_bytes {
            let reason = format!(
                "policy input is {} bytes, over the limit of {}",
                input_json.len(),
                self.limits.max_input_bytes
            );
            return KataDecision::deny(rule, reason, Vec::new());
        }
        let input = match Value::from_json_str(input_json) {
            Ok(input @ Value::Object(_)) => input,
            Ok(_) => {
                let reason = "policy input is not a JSON object";
                return KataDecision::deny(rule, reason, Vec::new());
            }
            Err(e) => {
                let reason = format!("policy error: input not decodable: {e}");
                return KataDecision::deny(rule, reason, Vec::new());
            }
        };
        self.engine.set_input(input);
        let result = self.engine.eval_rule(rule.clone());
        let mut prints = self.engine.take_prints().unwrap_or_default();
        prints.truncate(MAX_PRINTS);
        let prints = prints.into_iter().map(cut).collect();
        let result = match result {
            Ok(result) => result,
            Err(e) => return KataDecision::deny(rule, eval_error_reason(&e), prints),
        };
        let ops = match verdict(&rule, &result) {
            Ok(Some(ops)) => ops,
            Ok(None) => {
                return KataDecision::deny(
                    rule.clone(),
                    format!("{rule} is false; {NO_REASON}"),
                    prints,
                );
            }
            Err(reason) => return KataDecision::deny(rule, reason, prints),
        };
        if !ops.is_empty()
            && let Err(reason) = self.apply(&ops)
        {
            return KataDecision::deny(rule, reason, prints);
        }
        KataDecision {
            allowed: true,
            reason: format!("{rule} is true"),
            rule,
            ops,
            prints,
        }
    }

    /// Applies `ops` to the state, all or nothing.
    fn apply(&mut self, ops: &[serde_json::Value]) -> Result<(), String> {
        let state = crate::json_patch::apply(&self.state, ops)
            .map_err(|e| format!("policy state update failed: {e}"))?;
        check_state(&state, &self.limits)
            .map_err(|problem| format!("policy state update failed: {problem}"))?;
        if let Err(e) = install(&mut self.engine, &self.base_data, &state) {
            // The interpreter's data is gone: nothing may be decided on it any more.
            self.lost_state = Some(e.clone());
            return Err(format!("policy state lost: {e}"));
        }
        self.state = state;
        Ok(())
    }
}

/// The state must stay an object within [`Limits::max_data_bytes`].
fn check_state(state: &serde_json::Value, limits: &Limits) -> Result<(), String> {
    if !state.is_object() {
        return Err(format!("{STATE_ROOT} must be a JSON object"));
    }
    let size = serde_json::to_vec(state).map_or(usize::MAX, |s| s.len());
    if size > limits.max_data_bytes {
        return Err(format!(
            "{STATE_ROOT} would be {size} bytes, over the limit of {}",
            limits.max_data_bytes
        ));
    }
    Ok(())
}

/// Makes `data` = `base_data` + `{"pstate": state}`.
fn install(
    engine: &mut regorus::Engine,
    base_data: &Value,
    state: &serde_json::Value,
) -> Result<(), String> {
    let mut data = base_data.clone();
    data.as_object_mut()
        .map_err(|e| e.to_string())?
        .insert(Value::from(STATE_ROOT), Value::from(state.clone()));
    engine.clear_data();
    engine.add_data(data).map_err(|e| e.to_string())
}

/// `Ok(Some(ops))` for an allow (with its state operations), `Ok(None)` for a plain denial,
/// `Err(reason)` for a result Kata's agent would not accept either.
fn verdict(rule: &str, result: &Value) -> Result<Option<Vec<serde_json::Value>>, String> {
    match result {
        Value::Bool(true) => Ok(Some(Vec::new())),
        Value::Bool(false) => Ok(None),
        Value::Undefined => Err(format!(
            "policy result undefined: {rule} has no value for this request (no default rule)"
        )),
        Value::Object(object) => {
            match object.get(&Value::from("allowed")) {
                Some(Value::Bool(true)) => {}
                Some(Value::Bool(false)) => return Ok(None),
                Some(other) => {
                    return Err(format!(
                        "policy result invalid: {rule}.allowed is {}, expected a boolean",
                        type_name(other)
                    ));
                }
                None => {
                    return Err(format!(
                        "policy result invalid: {rule} has no field \"allowed\""
                    ));
                }
            }
            match object.get(&Value::from("ops")) {
                None | Some(Value::Null) => Ok(Some(Vec::new())),
                Some(Value::Array(ops)) => ops
                    .iter()
                    .map(serde_json::to_value)
                    .collect::<Result<Vec<_>, _>>()
                    .map(Some)
                    .map_err(|e| format!("policy result invalid: {rule}.ops: {e}")),
                Some(other) => Err(format!(
                    "policy result invalid: {rule}.ops is {}, expected an array",
                    type_name(other)
                )),
            }
        }
        other => Err(format!(
            "policy result invalid: {rule} is {}, expected a boolean or an object",
            type_name(other)
        )),
    }
}

fn failing_policy_refused(found: &str) -> PolicyError {
    PolicyError::FailingRequestsAllowed {
        found: found.to_owned(),
    }
}

/// The path (`.a.b`) of an object member named [`FAILING_POLICY_SETTING`] whose value is not
/// `false`, anywhere in `data`.
fn find_failing_policy_setting(data: &Value) -> Option<String> {
    let mut pending = vec![(String::new(), data)];
    while let Some((path, value)) = pending.pop() {
        match value {
            Value::Object(object) => {
                for (key, member) in object.iter() {
                    let key = match key {
                        Value::String(s) => s.to_string(),
                        other => other.to_string(),
                    };
                    let member_path = format!("{path}.{key}");
                    if key == FAILING_POLICY_SETTING && *member != Value::Bool(false) {
                        return Some(member_path);
                    }
                    pending.push((member_path, member));
                }
            }
            Value::Array(items) => {
                pending.extend(
                    items
                        .iter()
                        .enumerate()
                        .map(|(i, item)| (format!("{path}[{i}]"), item)),
                );
            }
            _ => {}
        }
    }
    None
}
