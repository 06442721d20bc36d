//! The engine: one Rego policy (plus optional data) loaded once, then one [`Engine::decide`] per
//! request. Every failure mode of evaluation is a denial (INV-5); only loading returns errors.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use regorus::utils::limits::ExecutionTimerConfig;
use regorus::{LimitError, PolicyLengthConfig, Value};
use thiserror::Error;

use crate::input::{PolicyInput, Request};

/// The package every policy must declare.
pub const POLICY_PACKAGE: &str = "coffer.policy";
/// The rule the engine evaluates.
pub const DECISION_RULE: &str = "data.coffer.policy.decision";
/// Longest reason passed on to the caller; longer ones are cut at a character boundary.
pub const MAX_REASON_BYTES: usize = 1024;

const POLICY_SOURCE_NAME: &str = "policy.rego";
/// How many interpreter work units pass between two clock reads. A clock read per unit was a
/// tenth of a decision's time; one per 32 units still stops a runaway loop within microseconds of
/// the deadline.
const TIMER_CHECK_INTERVAL: u32 = 32;

/// Resource ceilings for loading and evaluating a policy (INV-9, POL-02).
///
/// regorus 0.14 enforces the evaluation time limit cooperatively: the interpreter checks a
/// wall-clock deadline as it iterates, so loops and comprehensions stop at the deadline. A single
/// builtin call is not interrupted. regorus's memory limit needs its `allocator-memory-limits`
/// feature, which replaces the process allocator and is process-global, so it is not used here;
/// memory is instead bounded through the input, data and policy size caps plus the time limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest policy source, checked before parsing. Default 1 MiB.
    pub max_policy_bytes: usize,
    /// Largest policy data JSON, checked before parsing. Default 4 MiB.
    pub max_data_bytes: usize,
    /// Largest serialized input per decision. Default 4 MiB (the agent caps an OCI spec at 1 MiB).
    pub max_input_bytes: usize,
    /// Wall-clock budget of one evaluation. Default 250 ms.
    pub max_eval_time: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_policy_bytes: 1024 * 1024,
            max_data_bytes: 4 * 1024 * 1024,
            max_input_bytes: 4 * 1024 * 1024,
            max_eval_time: Duration::from_millis(250),
        }
    }
}

/// Why a policy could not be loaded. A caller that cannot load its policy must refuse to serve; it
/// must never fall back to another policy.
#[derive(Debug, Error)]
pub enum PolicyError {
    /// A limit is zero.
    #[error("invalid limits: {0} must be non-zero")]
    InvalidLimits(&'static str),
    /// The policy source is over [`Limits::max_policy_bytes`].
    #[error("policy is {size} bytes, over the limit of {limit}")]
    PolicyTooLarge {
        /// Source size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The data JSON is over [`Limits::max_data_bytes`].
    #[error("policy data is {size} bytes, over the limit of {limit}")]
    DataTooLarge {
        /// Data size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The policy does not parse.
    #[error("policy does not parse: {message}")]
    Parse {
        /// regorus's message, with the location.
        message: String,
    },
    /// The policy declares another package.
    #[error("policy declares package {found}, expected data.{expected}")]
    WrongPackage {
        /// The declared package.
        found: String,
        /// The package this mode requires.
        expected: &'static str,
    },
    /// The policy has no `decision` rule.
    #[error("policy has no rule {DECISION_RULE}")]
    NoDecisionRule,
    /// The data document is not valid JSON or conflicts with the policy.
    #[error("policy data is invalid: {message}")]
    Data {
        /// regorus's message.
        message: String,
    },
    /// A function of the policy can call itself (POL-02; see the `recursion` module).
    #[error("policy function recursion {cycle} is not allowed")]
    Recursion {
        /// The call cycle, e.g. `f → g → f`.
        cycle: String,
    },
    /// A Kata policy sets `AllowRequestsFailingPolicy`, which would let denied requests through.
    #[error(
        "policy sets AllowRequestsFailingPolicy ({found}); Coffer does not let requests a policy denies through: remove the setting"
    )]
    FailingRequestsAllowed {
        /// Where it is set.
        found: String,
    },
    /// The policy parses but cannot be compiled (e.g. unsafe variables).
    #[error("policy does not compile: {message}")]
    Compile {
        /// regorus's message, with the location.
        message: String,
    },
}

/// Most entries a decision may record on a container.
pub const MAX_RECORD_ENTRIES: usize = 16;
/// Longest key or value a decision may record.
pub const MAX_RECORD_BYTES: usize = 256;

/// The outcome of one decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// Why; always non-empty for a denial. Names the rule or field, never the whole request.
    pub reason: String,
    /// State update: facts to record on the container an allowed `CreateContainer` creates (e.g.
    /// which policy entry admitted it). The caller applies them only if the request succeeds, and
    /// later inputs show them as `state.containers[].record`. Always empty for other requests and
    /// for denials.
    pub record: BTreeMap<String, String>,
}

impl Decision {
    fn allow(reason: String, record: BTreeMap<String, String>) -> Self {
        Self {
            allowed: true,
            reason,
            record,
        }
    }

    fn deny(reason: impl Into<String>) -> Self {
        Self {
            allowed: false,
            reason: truncate(reason.into()),
            record: BTreeMap::new(),
        }
    }

    /// `Ok(())` when allowed, otherwise the reason: the shape of the agent's policy gate.
    pub fn into_result(self) -> Result<(), String> {
        if self.allowed {
            Ok(())
        } else {
            Err(self.reason)
        }
    }
}

/// Idle interpreters kept for reuse (one per concurrent decision, up to this many).
const MAX_IDLE_INTERPRETERS: usize = 8;

/// The optional rule listing problems with the policy data, evaluated once at load.
pub const DATA_PROBLEMS_RULE: &str = "data.coffer.policy.data_problems";

/// The optional rule computing indexes of the policy data, evaluated once at load (after the data
/// passed [`DATA_PROBLEMS_RULE`]); decisions read its value as `data.`[`DATA_INDEX_KEY`].
pub const DATA_INDEX_RULE: &str = "data.coffer.policy.data_index";

/// Where decisions find [`DATA_INDEX_RULE`]'s value: a top-level data key the policy data must
/// not use itself when the policy declares an index.
pub const DATA_INDEX_KEY: &str = "coffer_index";

/// Most decisions remembered for byte-identical inputs (see [`Engine::decide`]).
const MEMO_ENTRIES: usize = 256;
/// Longest input (JSON) whose decision is remembered.
const MEMO_MAX_INPUT_BYTES: usize = 4096;

/// A loaded policy. Cheap to share: [`Engine::decide`] takes `&self` and evaluates on an
/// interpreter no other decision is using at the time (a pooled copy of the prepared one), so one
/// engine serves any number of threads and no decision can observe another's evaluation state.
#[derive(Clone)]
pub struct Engine {
    prepared: Arc<regorus::Engine>,
    idle: Arc<Mutex<Vec<regorus::Engine>>>,
    limits: Limits,
    /// Decisions that record nothing, by the exact JSON text of their input (request and state).
    memo: Arc<Mutex<HashMap<String, Decision>>>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Loads `policy_rego` (package [`POLICY_PACKAGE`], rule `decision`) and optional `data_json`
    /// (becomes `data`), checking sizes before parsing and compiling the policy once.
    pub fn new(
        policy_rego: &str,
        data_json: Option<&str>,
        limits: Limits,
    ) -> Result<Self, PolicyError> {
        // regorus analyses and schedules the whole policy again after any change to `data`, and
        // the index is data: for the shipped confidential policy the index is computed first, so
        // the policy is analysed once, and checked against the policy's own rule.
        if policy_rego == crate::CONFIDENTIAL_POLICY
            && let Some(index) = shipped_data_index(data_json)
            && let Some(engine) = Self::with_index(policy_rego, data_json, &limits, index)?
        {
            return Ok(engine);
        }
        Self::general(policy_rego, data_json, limits)
    }

    /// [`Engine::new`] for any policy: analysed with its data, then, if it declares
    /// `data_index`, analysed again with the index in the data.
    fn general(
        policy_rego: &str,
        data_json: Option<&str>,
        limits: Limits,
    ) -> Result<Self, PolicyError> {
        let mut engine = with_data(policy_rego, data_json, &limits)?;
        // Analyse and schedule the policy; decisions reuse prepared interpreters.
        prepare(&mut engine)?;
        check_data(&mut engine)?;
        if add_data_index(&mut engine, data_json)? {
            // Schedule again with the index in `data`, once, before interpreters are copied.
            prepare(&mut engine)?;
        }
        Ok(Self::from_prepared(engine, limits))
    }

    /// [`Engine::new`] with `index` in the data before the one analysis; `None` when the
    /// policy's `data_index` rule gives another value (never expected:
    /// `the_shipped_index_is_the_rules_value` compares the two), for [`Engine::general`] to load.
    fn with_index(
        policy_rego: &str,
        data_json: Option<&str>,
        limits: &Limits,
        index: Value,
    ) -> Result<Option<Self>, PolicyError> {
        let mut engine = with_data(policy_rego, data_json, limits)?;
        reserve_data_index(data_json)?;
        add_index_to_data(&mut engine, index.clone())?;
        prepare(&mut engine)?;
        check_data(&mut engine)?;
        if eval_data_index(&mut engine)? != index {
            return Ok(None);
        }
        Ok(Some(Self::from_prepared(engine, *limits)))
    }

    /// An engine deciding with copies of `engine`, prepared.
    fn from_prepared(engine: regorus::Engine, limits: Limits) -> Self {
        Self {
            prepared: Arc::new(engine),
            idle: Arc::new(Mutex::new(Vec::new())),
            limits,
            memo: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The limits this engine enforces.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Decides one request with the Rego interpreter, the only authority. Never fails: any
    /// problem with the input, the evaluation or the policy's result is a denial whose reason
    /// names the cause (INV-5).
    ///
    /// A decision that records nothing is remembered for its input's exact JSON text (request and
    /// sandbox state, at most 4 KiB): the policy has no clock, randomness or I/O, so the same text
    /// is decided the same way, and the repeat (a stream's every chunk, a health probe) skips the
    /// interpreter. Evaluation errors and limits are never remembered, nor any decision that
    /// updates state (an allowed `CreateContainer`'s record).
    pub fn decide(&self, input: &PolicyInput) -> Decision {
        let json = match serde_json::to_string(input) {
            Ok(json) => json,
            Err(e) => return Decision::deny(format!("policy error: input not encodable: {e}")),
        };
        if json.len() > self.limits.max_input_bytes {
            return Decision::deny(format!(
                "policy input is {} bytes, over the limit of {}",
                json.len(),
                self.limits.max_input_bytes
            ));
        }
        let memoizable = json.len() <= MEMO_MAX_INPUT_BYTES;
        if memoizable
            && let Some(decision) = self.memo.lock().ok().and_then(|m| m.get(&json).cloned())
        {
            return decision;
        }
        // Built from the input's tree rather than by parsing `json` again (a third of a small
        // decision's cost).
        let tree = match serde_json::to_value(input) {
            Ok(tree) => tree,
            Err(e) => return Decision::deny(format!("policy error: input not encodable: {e}")),
        };
        let is_create = matches!(input.request, Request::CreateContainer(_));
        let (decision, evaluated) = self.evaluate(json_value(tree));
        let decision = checked_record(decision, is_create);
        if memoizable
            && evaluated
            && decision.record.is_empty()
            && let Ok(mut memo) = self.memo.lock()
        {
            if memo.len() >= MEMO_ENTRIES {
                memo.clear();
            }
            memo.insert(json, decision.clone());
        }
        decision
    }

    /// Decides an input given as JSON text (tests and tools holding raw JSON; the agent and
    /// `coffer policy eval` use [`Engine::decide`] on the typed input). The text is not checked
    /// against the [`PolicyInput`] schema: the policy sees it as it is, so policies must deny what
    /// they do not recognise, a request missing a member included (the shipped ones do).
    pub fn decide_json(&self, json: &str) -> Decision {
        if json.len() > self.limits.max_input_bytes {
            return Decision::deny(format!(
                "policy input is {} bytes, over the limit of {}",
                json.len(),
                self.limits.max_input_bytes
            ));
        }
        let value = match Value::from_json_str(json) {
            Ok(value) => value,
            Err(e) => return Decision::deny(format!("policy error: input not decodable: {e}")),
        };
        let is_create = value["request"]["kind"] == Value::from("CreateContainer");
        checked_record(self.decide_value(value), is_create)
    }

    /// Evaluates [`DECISION_RULE`] on an already converted input.
    fn decide_value(&self, input: Value) -> Decision {
        self.evaluate(input).0
    }

    /// Evaluates [`DECISION_RULE`] on an already converted input; whether the evaluation ran to
    /// its end (no error, no limit), i.e. the decision is the policy's own.
    fn evaluate(&self, input: Value) -> (Decision, bool) {
        // An idle interpreter, or a fresh copy of the prepared one. regorus clears its evaluation
        // state at the start of every `eval_rule`, so nothing of one decision reaches the next.
        let idle = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let mut engine = idle.unwrap_or_else(|| (*self.prepared).clone());
        engine.set_input(input);
        let result = engine.eval_rule(DECISION_RULE.to_owned());
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE_INTERPRETERS
        {
            idle.push(engine);
        }
        match result {
            Ok(result) => (interpret(&result), true),
            Err(e) => (Decision::deny(eval_error_reason(&e)), false),
        }
    }
}

/// The interpreter's value of a JSON tree: the value `Value::from_json_str` gives for its text,
/// built without parsing it again.
fn json_value(tree: serde_json::Value) -> Value {
    match tree {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::from(b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Value::from(i),
            (None, Some(u), _) => Value::from(u),
            (None, None, Some(f)) => Value::from(f),
            (None, None, None) => Value::Null,
        },
        serde_json::Value::String(s) => Value::from(s),
        serde_json::Value::Array(items) => {
            Value::from(items.into_iter().map(json_value).collect::<Vec<_>>())
        }
        serde_json::Value::Object(members) => Value::from(
            members
                .into_iter()
                .map(|(k, v)| (Value::from(k), json_value(v)))
                .collect::<BTreeMap<_, _>>(),
        ),
    }
}

/// The interpreter for `policy_rego`: its and `data_json`'s sizes checked, parsed, in package [`POLICY_PACKAGE`], no
/// recursive function, a `decision` rule declared; no data yet, not analysed.
fn parsed(
    policy_rego: &str,
    data_json: Option<&str>,
    limits: &Limits,
) -> Result<regorus::Engine, PolicyError> {
    let max_policy_bytes = check_sizes(policy_rego, data_json, limits)?;
    let mut engine = interpreter(limits, max_policy_bytes);
    engine.set_strict_builtin_errors(true);

    let package = engine
        .add_policy(POLICY_SOURCE_NAME.to_owned(), policy_rego.to_owned())
        .map_err(|e| PolicyError::Parse {
            message: e.to_string(),
        })?;
    if package != format!("data.{POLICY_PACKAGE}") {
        return Err(PolicyError::WrongPackage {
            found: package,
            expected: POLICY_PACKAGE,
        });
    }
    // The shipped policies' function call graphs are checked once, by the unit test
    // `shipped_policies_have_no_recursion`: a load of one of them skips the AST walk (a
    // third of a load's time, paid at every guest boot). Any other source is walked.
    if !is_shipped(policy_rego) {
        reject_recursion(&engine)?;
    }
    let declared = engine
        .has_declared_rule_rooted_at(POLICY_SOURCE_NAME, "decision")
        .map_err(|e| PolicyError::Compile {
            message: e.to_string(),
        })?;
    if !declared {
        return Err(PolicyError::NoDecisionRule);
    }
    Ok(engine)
}

/// [`parsed`] with `data_json` added as `data`.
fn with_data(
    policy_rego: &str,
    data_json: Option<&str>,
    limits: &Limits,
) -> Result<regorus::Engine, PolicyError> {
    let mut engine = parsed(policy_rego, data_json, limits)?;
    if let Some(data) = data_json {
        engine.add_data_json(data).map_err(|e| PolicyError::Data {
            message: e.to_string(),
        })?;
    }
    Ok(engine)
}

/// Analyses and schedules the policy with the current data (regorus does it again after any
/// change to the data).
fn prepare(engine: &mut regorus::Engine) -> Result<(), PolicyError> {
    engine
        .eval_query("true".to_owned(), false)
        .map(drop)
        .map_err(|e| PolicyError::Compile {
            message: e.to_string(),
        })
}

/// The value the shipped confidential policy's `data_index` rule gives for `data_json`, computed
/// without the interpreter: `by_image` maps each entry's image to the entries naming it (in data
/// order), `by_name` each entry's name to the entry. `None` where the rule's value is not this
/// simple (no `containers` array, an entry not an object, a name given twice to different
/// entries): those loads take the general way, and most fail the data checks anyway.
fn shipped_data_index(data_json: Option<&str>) -> Option<Value> {
    let data: serde_json::Value = serde_json::from_str(data_json?).ok()?;
    let entries = data.get("containers")?.as_array()?;
    let mut by_image: Vec<(&serde_json::Value, Vec<serde_json::Value>)> = Vec::new();
    let mut by_name = BTreeMap::new();
    for entry in entries {
        let fields = entry.as_object()?;
        if let Some(image) = fields.get("image")
            && !by_image.iter().any(|(known, _)| *known == image)
        {
            let naming = entries
                .iter()
                .filter(|e| e.get("image") == Some(image))
                .cloned()
                .collect();
            by_image.push((image, naming));
        }
        if let Some(name) = fields.get("name") {
            let name = json_value(name.clone());
            let value = json_value(entry.clone());
            match by_name.get(&name) {
                Some(known) if *known != value => return None,
                _ => {
                    by_name.insert(name, value);
                }
            }
        }
    }
    let by_image = by_image
        .into_iter()
        .map(|(image, naming)| {
            (
                json_value(image.clone()),
                Value::from(naming.into_iter().map(json_value).collect::<Vec<_>>()),
            )
        })
        .collect::<BTreeMap<_, _>>();
    Some(Value::from(BTreeMap::from([
        (Value::from("by_image"), Value::from(by_image)),
        (Value::from("by_name"), Value::from(by_name)),
    ])))
}

/// Refuses data that uses [`DATA_INDEX_KEY`] itself.
fn reserve_data_index(data_json: Option<&str>) -> Result<(), PolicyError> {
    let reserved = data_json
        .and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .is_some_and(|d| d.get(DATA_INDEX_KEY).is_some());
    if reserved {
        return Err(PolicyError::Data {
            message: format!("{DATA_INDEX_KEY} is reserved for the policy's data index"),
        });
    }
    Ok(())
}

/// The value of [`DATA_INDEX_RULE`] (an object).
fn eval_data_index(engine: &mut regorus::Engine) -> Result<Value, PolicyError> {
    engine.set_input(Value::new_object());
    let index = engine
        .eval_rule(DATA_INDEX_RULE.to_owned())
        .map_err(|e| PolicyError::Data {
            message: one_line(&e.to_string()),
        })?;
    if !matches!(index, Value::Object(_)) {
        return Err(PolicyError::Data {
            message: format!(
                "{DATA_INDEX_RULE} is {}, expected an object",
                type_name(&index)
            ),
        });
    }
    Ok(index)
}

/// Adds `index` to the data as [`DATA_INDEX_KEY`].
fn add_index_to_data(engine: &mut regorus::Engine, index: Value) -> Result<(), PolicyError> {
    let mut wrapper = Value::new_object();
    wrapper
        .as_object_mut()
        .map_err(|e| PolicyError::Data {
            message: e.to_string(),
        })?
        .insert(Value::from(DATA_INDEX_KEY), index);
    engine.add_data(wrapper).map_err(|e| PolicyError::Data {
        message: e.to_string(),
    })
}

/// Evaluates [`DATA_INDEX_RULE`], if the policy declares it, and adds its value to the data as
/// [`DATA_INDEX_KEY`]. Whether it did.
fn add_data_index(
    engine: &mut regorus::Engine,
    data_json: Option<&str>,
) -> Result<bool, PolicyError> {
    let declared = engine
        .has_declared_rule_rooted_at(POLICY_SOURCE_NAME, "data_index")
        .map_err(|e| PolicyError::Compile {
            message: e.to_string(),
        })?;
    if !declared {
        return Ok(false);
    }
    reserve_data_index(data_json)?;
    let index = eval_data_index(engine)?;
    add_index_to_data(engine, index)?;
    Ok(true)
}

/// Whether `policy` is one of the policies this crate ships, byte for byte.
fn is_shipped(policy: &str) -> bool {
    policy == crate::SANDBOX_POLICY || policy == crate::CONFIDENTIAL_POLICY
}

/// Checks `limits` and the source and data sizes, before anything is parsed. Returns the policy
/// size cap for regorus's own length check.
pub(crate) fn check_sizes(
    policy: &str,
    data: Option<&str>,
    limits: &Limits,
) -> Result<NonZeroUsize, PolicyError> {
    let max_policy_bytes = NonZeroUsize::new(limits.max_policy_bytes)
        .ok_or(PolicyError::InvalidLimits("max_policy_bytes"))?;
    if limits.max_data_bytes == 0 {
        return Err(PolicyError::InvalidLimits("max_data_bytes"));
    }
    if limits.max_input_bytes == 0 {
        return Err(PolicyError::InvalidLimits("max_input_bytes"));
    }
    if limits.max_eval_time.is_zero() {
        return Err(PolicyError::InvalidLimits("max_eval_time"));
    }
    if policy.len() > limits.max_policy_bytes {
        return Err(PolicyError::PolicyTooLarge {
            size: policy.len(),
            limit: limits.max_policy_bytes,
        });
    }
    if let Some(data) = data
        && data.len() > limits.max_data_bytes
    {
        return Err(PolicyError::DataTooLarge {
            size: data.len(),
            limit: limits.max_data_bytes,
        });
    }
    Ok(max_policy_bytes)
}

/// A regorus interpreter with the source length cap and the evaluation timer of `limits`; the
/// caller chooses the builtin error mode and Rego version.
pub(crate) fn interpreter(limits: &Limits, max_policy_bytes: NonZeroUsize) -> regorus::Engine {
    let mut engine = regorus::Engine::new();
    engine.set_policy_length_config(PolicyLengthConfig {
        max_file_bytes: max_policy_bytes,
        ..PolicyLengthConfig::default()
    });
    engine.set_execution_timer_config(ExecutionTimerConfig {
        limit: limits.max_eval_time,
        check_interval: NonZeroU32::MIN.saturating_add(TIMER_CHECK_INTERVAL - 1),
    });
    engine
}

/// Refuses a policy one of whose functions can call itself (POL-02; see the `recursion` module).
pub(crate) fn reject_recursion(engine: &regorus::Engine) -> Result<(), PolicyError> {
    let ast = engine
        .get_ast_as_json()
        .and_then(|ast| Ok(serde_json::from_str(&ast)?))
        .map_err(|e| PolicyError::Compile {
            message: e.to_string(),
        })?;
    match crate::recursion::find_function_cycle(&ast) {
        Some(cycle) => Err(PolicyError::Recursion { cycle }),
        None => Ok(()),
    }
}

/// The denial reason for an evaluation error: `policy limit exceeded: …` for an exceeded limit,
/// otherwise `policy error: …`, on one line.
pub(crate) fn eval_error_reason(error: &anyhow::Error) -> String {
    let limit = error.downcast_ref::<LimitError>().copied().or_else(|| {
        error
            .chain()
            .find_map(|cause| cause.downcast_ref::<LimitError>().copied())
    });
    let message = one_line(&error.to_string());
    match limit {
        Some(limit) => format!("policy limit exceeded: {limit}"),
        // regorus sometimes re-renders a limit error into a located message.
        None if message.contains(TIME_LIMIT_MESSAGE) => {
            format!("policy limit exceeded: {message}")
        }
        None => format!("policy error: {message}"),
    }
}

/// A `record` is a state update of CreateContainer only.
fn checked_record(decision: Decision, is_create: bool) -> Decision {
    if decision.allowed && !decision.record.is_empty() && !is_create {
        return Decision::deny(format!(
            "policy result invalid: {DECISION_RULE}.record is only valid for CreateContainer"
        ));
    }
    decision
}

/// Checks the shape `{"allow": bool, "reason": string}` of a decision value.
fn interpret(result: &Value) -> Decision {
    let object = match result {
        Value::Undefined => {
            return Decision::deny(format!(
                "policy result undefined: {DECISION_RULE} has no value for this request"
            ));
        }
        Value::Object(object) => object,
        other => {
            return Decision::deny(format!(
                "policy result invalid: {DECISION_RULE} is {}, expected an object",
                type_name(other)
            ));
        }
    };
    let mut allow = None;
    let mut reason = None;
    let mut record = BTreeMap::new();
    for (key, value) in object.iter() {
        match (key, value) {
            (Value::String(k), Value::Bool(b)) if k.as_ref() == "allow" => allow = Some(*b),
            (Value::String(k), Value::String(s)) if k.as_ref() == "reason" => {
                reason = Some(s.to_string());
            }
            (Value::String(k), value) if k.as_ref() == "record" => match parse_record(value) {
                Ok(r) => record = r,
                Err(problem) => {
                    return Decision::deny(format!(
                        "policy result invalid: {DECISION_RULE}.record {problem}"
                    ));
                }
            },
            (Value::String(k), other) if k.as_ref() == "allow" || k.as_ref() == "reason" => {
                return Decision::deny(format!(
                    "policy result invalid: {DECISION_RULE}.{k} is {}",
                    type_name(other)
                ));
            }
            (Value::String(k), _) => {
                return Decision::deny(format!(
                    "policy result invalid: {DECISION_RULE} has unexpected field {k:?}"
                ));
            }
            (other, _) => {
                return Decision::deny(format!(
                    "policy result invalid: {DECISION_RULE} has a {} key",
                    type_name(other)
                ));
            }
        }
    }
    match (allow, reason) {
        (None, _) => Decision::deny(format!(
            "policy result invalid: {DECISION_RULE} has no field \"allow\""
        )),
        (Some(true), reason) => Decision::allow(truncate(reason.unwrap_or_default()), record),
        (Some(false), Some(reason)) if !reason.trim().is_empty() => Decision::deny(reason),
        (Some(false), _) => Decision::deny(format!(
            "policy result invalid: {DECISION_RULE} denies without a reason"
        )),
    }
}

/// Checks `record`: an object of at most [`MAX_RECORD_ENTRIES`] string pairs, each at most
/// [`MAX_RECORD_BYTES`].
fn parse_record(value: &Value) -> Result<BTreeMap<String, String>, String> {
    let Value::Object(object) = value else {
        return Err(format!("is {}, expected an object", type_name(value)));
    };
    if object.len() > MAX_RECORD_ENTRIES {
        return Err(format!("has more than {MAX_RECORD_ENTRIES} entries"));
    }
    let mut record = BTreeMap::new();
    for (key, value) in object.iter() {
        let (Value::String(k), Value::String(v)) = (key, value) else {
            return Err("must map strings to strings".into());
        };
        if k.len() > MAX_RECORD_BYTES || v.len() > MAX_RECORD_BYTES {
            return Err(format!("entries are limited to {MAX_RECORD_BYTES} bytes"));
        }
        record.insert(k.to_string(), v.to_string());
    }
    Ok(record)
}

/// Evaluates [`DATA_PROBLEMS_RULE`] if the policy declares it: a set of strings, each a problem
/// with the policy data. Any problem (or a result of another shape) fails the load, so malformed
/// data can never be read leniently at decision time.
fn check_data(engine: &mut regorus::Engine) -> Result<(), PolicyError> {
    let declared = engine
        .has_declared_rule_rooted_at(POLICY_SOURCE_NAME, "data_problems")
        .map_err(|e| PolicyError::Compile {
            message: e.to_string(),
        })?;
    if !declared {
        return Ok(());
    }
    engine.set_input(Value::new_object());
    let result = engine
        .eval_rule(DATA_PROBLEMS_RULE.to_owned())
        .map_err(|e| PolicyError::Data {
            message: one_line(&e.to_string()),
        })?;
    let problems: Vec<String> = match &result {
        Value::Undefined => return Ok(()),
        Value::Set(set) => set
            .iter()
            .map(|p| match p {
                Value::String(s) => s.to_string(),
                other => format!("{other}"),
            })
            .collect(),
        other => {
            return Err(PolicyError::Data {
                message: format!(
                    "{DATA_PROBLEMS_RULE} is {}, expected a set",
                    type_name(other)
                ),
            });
        }
    };
    if problems.is_empty() {
        return Ok(());
    }
    Err(PolicyError::Data {
        message: truncate(problems.join("; ")),
    })
}

/// regorus's rendering of [`LimitError::TimeLimitExceeded`].
const TIME_LIMIT_MESSAGE: &str = "execution exceeded time limit";

/// regorus errors carry multi-line source excerpts; a reason is one line.
fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

pub(crate) fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Set(_) => "a set",
        Value::Object(_) => "an object",
        Value::Undefined => "undefined",
    }
}

pub(crate) fn truncate(mut reason: String) -> String {
    if reason.len() > MAX_REASON_BYTES {
        let mut end = MAX_REASON_BYTES;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
        reason.push('…');
    }
    reason
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The index [`Engine::new`] computes for the shipped confidential policy is the value of the
    /// policy's own `data_index` rule: entries sharing an image, names, entries without an image,
    /// non-string images and names, no entries; and where it declines, the general way decides.
    #[test]
    fn the_shipped_index_is_the_rules_value() {
        let entry = |name: serde_json::Value, image: Option<serde_json::Value>, n: u64| {
            let mut e = serde_json::json!({"name": name, "args": ["/app", n.to_string()]});
            if let Some(image) = image {
                e["image"] = image;
            }
            e
        };
        let img =
            |c: char| serde_json::json!(format!("r.example/a@sha256:{}", c.to_string().repeat(64)));
        let docs = [
            serde_json::json!({"containers": []}),
            serde_json::json!({"containers": [entry("a".into(), Some(img('a')), 1)]}),
            serde_json::json!({"containers": [
                entry("a".into(), Some(img('a')), 1),
                entry("b".into(), Some(img('b')), 2),
                entry("c".into(), Some(img('a')), 3),
                entry("d".into(), None, 4),
                entry(7.into(), Some(8.into()), 5),
                entry("e".into(), Some(serde_json::json!({"k": [1, 2.5, null]})), 6),
            ], "other": {"x": 1}}),
            // The same entry twice: one name, listed twice under its image.
            serde_json::json!({"containers": [entry("a".into(), Some(img('a')), 1), entry("a".into(), Some(img('a')), 1)]}),
        ];
        for doc in &docs {
            let json = doc.to_string();
            let ours = shipped_data_index(Some(&json)).expect("a simple index");
            let mut engine =
                parsed(crate::CONFIDENTIAL_POLICY, Some(&json), &Limits::default()).unwrap();
            engine.add_data_json(&json).unwrap();
            prepare(&mut engine).unwrap();
            assert_eq!(eval_data_index(&mut engine).unwrap(), ours, "{json}");
        }
        // Declined: no data, no containers array, an entry not an object, one name for two
        // different entries (the rule's own conflict).
        for json in [
            None,
            Some(r#"{"containers": {"a": {}}}"#),
            Some(r#"{"containers": [1]}"#),
            Some(r#"{"containers": [{"name": "a", "args": []}, {"name": "a", "args": ["x"]}]}"#),
        ] {
            assert_eq!(shipped_data_index(json), None, "{json:?}");
        }
        // Valid data loads the same through either way and decides alike.
        let json = docs[2].to_string();
        let fast = Engine::new(crate::CONFIDENTIAL_POLICY, Some(&json), Limits::default());
        let general = Engine::general(crate::CONFIDENTIAL_POLICY, Some(&json), Limits::default());
        assert_eq!(fast.is_ok(), general.is_ok());
        let valid =
            serde_json::json!({"containers": [entry("a".into(), Some(img('a')), 1)]}).to_string();
        // The one-analysis way is the one taken: it does not fall back on valid data.
        let index = shipped_data_index(Some(&valid)).unwrap();
        let fast = Engine::with_index(
            crate::CONFIDENTIAL_POLICY,
            Some(&valid),
            &Limits::default(),
            index,
        )
        .unwrap()
        .expect("the precomputed index is the rule's value");
        let general =
            Engine::general(crate::CONFIDENTIAL_POLICY, Some(&valid), Limits::default()).unwrap();
        let pull = |image: &str| {
            serde_json::json!({"version": 1, "request": {"kind": "PullImage", "container_id": "c1", "image": image}, "state": {"containers": []}}).to_string()
        };
        let mut allowed = Vec::new();
        for image in [img('a'), img('b')] {
            let input = pull(image.as_str().unwrap());
            let decision = fast.decide_json(&input);
            assert_eq!(decision, general.decide_json(&input), "{input}");
            allowed.push(decision.allowed);
        }
        // The listed image is found through the index, the other is not.
        assert_eq!(allowed, [true, false]);
        // The reserved key is refused on both ways.
        let reserved = r#"{"containers": [], "coffer_index": {}}"#;
        assert!(matches!(
            Engine::new(
                crate::CONFIDENTIAL_POLICY,
                Some(reserved),
                Limits::default()
            ),
            Err(PolicyError::Data { .. })
        ));
    }

    #[test]
    fn shipped_policies_have_no_recursion() {
        for policy in [crate::SANDBOX_POLICY, crate::CONFIDENTIAL_POLICY] {
            assert!(is_shipped(policy));
            let max = NonZeroUsize::new(Limits::default().max_policy_bytes).unwrap();
            let mut engine = interpreter(&Limits::default(), max);
            engine
                .add_policy(POLICY_SOURCE_NAME.to_owned(), policy.to_owned())
                .unwrap();
            reject_recursion(&engine).unwrap();
        }
        // One byte more and the source is walked like any other.
        assert!(!is_shipped(&format!("{}\n", crate::SANDBOX_POLICY)));
    }
    use crate::input::SandboxState;

    const ALLOW_ALL: &str = r#"
package coffer.policy

decision := {"allow": true, "reason": ""}
"#;

    fn simple_input() -> PolicyInput {
        PolicyInput::new(Request::GetGuestDetails, SandboxState::default())
    }

    fn decide_json(policy: &str, input_json: &str) -> Decision {
        let engine = Engine::new(policy, None, Limits::default()).unwrap();
        engine.decide_value(Value::from_json_str(input_json).unwrap())
    }

    /// A policy's `data_index` is computed once from its data and read as `data.coffer_index`;
    /// data using that key itself does not load.
    #[test]
    fn data_index_is_computed_at_load() {
        let policy = r#"
package coffer.policy

data_index := {"allowed": {k | some k in data.kinds}}

default decision := {"allow": false, "reason": "not in the index"}

decision := {"allow": true, "reason": ""} if data.coffer_index.allowed[input.request.kind]
"#;
        let engine = Engine::new(
            policy,
            Some(r#"{"kinds": ["GetGuestDetails"]}"#),
            Limits::default(),
        )
        .unwrap();
        assert!(engine.decide(&simple_input()).allowed);
        let other = PolicyInput::new(Request::GetOomEvent, SandboxState::default());
        assert_eq!(engine.decide(&other).reason, "not in the index");
        let err = Engine::new(
            policy,
            Some(r#"{"kinds": [], "coffer_index": {"allowed": {"GetOOMEvent": true}}}"#),
            Limits::default(),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("coffer_index is reserved"),
            "{err}"
        );
    }

    /// A remembered decision is only ever the one for the same bytes: another state is decided
    /// anew.
    #[test]
    fn remembered_decisions_follow_the_state() {
        let policy = r#"
package coffer.policy

default decision := {"allow": false, "reason": "no container"}

decision := {"allow": true, "reason": ""} if count(input.state.containers) > 0
"#;
        let engine = Engine::new(policy, None, Limits::default()).unwrap();
        let empty = simple_input();
        let mut one = simple_input();
        one.state.containers.push(crate::input::ContainerState {
            id: "c".into(),
            image_digest: None,
            started: false,
            record: BTreeMap::new(),
        });
        for _ in 0..3 {
            assert!(!engine.decide(&empty).allowed);
            assert!(engine.decide(&one).allowed);
        }
        assert_eq!(engine.memo.lock().unwrap().len(), 2);
    }

    /// The input the interpreter sees is the one its own JSON parser makes of the input's text.
    #[test]
    fn input_values_are_the_json_parsers() {
        let json = serde_json::json!({"a": [1, -2, 18446744073709551615u64, 1.5, null, true, "s"], "b": {"c": {}}, "é": []});
        assert_eq!(
            json_value(json.clone()),
            Value::from_json_str(&json.to_string()).unwrap()
        );
    }

    #[test]
    fn engine_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Engine>();
    }

    /// INV-5: every malformed result shape is a denial with a reason naming the problem.
    #[test]
    fn inv5_result_shape_table() {
        let cases: &[(&str, &str)] = &[
            ("true", "is a boolean, expected an object"),
            ("\"allow\"", "is a string, expected an object"),
            ("[1]", "is an array, expected an object"),
            ("{}", "has no field \"allow\""),
            ("{\"allow\": \"true\"}", "decision.allow is a string"),
            ("{\"allow\": 1}", "decision.allow is a number"),
            ("{\"allow\": false}", "denies without a reason"),
            (
                "{\"allow\": false, \"reason\": \" \"}",
                "denies without a reason",
            ),
            (
                "{\"allow\": false, \"reason\": 7}",
                "decision.reason is a number",
            ),
            (
                "{\"allow\": true, \"reason\": \"\", \"ops\": []}",
                "unexpected field \"ops\"",
            ),
            ("{1: true}", "has a a number key"),
        ];
        for (value, expected) in cases {
            let policy = format!("package coffer.policy\n\ndecision := {value}\n");
            let decision = decide_json(&policy, "{}");
            assert!(!decision.allowed, "{value} allowed");
            assert!(
                decision.reason.starts_with("policy result invalid: ")
                    && decision.reason.contains(expected),
                "{value}: {}",
                decision.reason
            );
        }
    }

    #[test]
    fn denial_reason_comes_from_the_policy() {
        let policy = r#"
package coffer.policy

decision := {"allow": false, "reason": sprintf("%s is not listed", [input.request.kind])}
"#;
        let engine = Engine::new(policy, None, Limits::default()).unwrap();
        let decision = engine.decide(&simple_input());
        assert_eq!(
            decision,
            Decision {
                allowed: false,
                reason: "GetGuestDetails is not listed".into(),
                record: BTreeMap::new(),
            }
        );
        assert_eq!(
            decision.into_result(),
            Err("GetGuestDetails is not listed".into())
        );
    }

    #[test]
    fn long_reasons_are_truncated() {
        let policy = r#"
package coffer.policy

decision := {"allow": false, "reason": concat("", [x | some _ in numbers.range(1, 2000); x := "é"])}
"#;
        let decision = decide_json(policy, "{}");
        assert!(!decision.allowed);
        assert!(decision.reason.len() <= MAX_REASON_BYTES + '…'.len_utf8());
        assert!(decision.reason.ends_with('…'));
    }

    #[test]
    fn data_document_is_visible() {
        let policy = r#"
package coffer.policy

default decision := {"allow": false, "reason": "kind not listed in data.allowed"}

decision := {"allow": true, "reason": ""} if input.request.kind in data.allowed
"#;
        let engine = Engine::new(
            policy,
            Some(r#"{"allowed": ["GetGuestDetails"]}"#),
            Limits::default(),
        )
        .unwrap();
        assert!(engine.decide(&simple_input()).allowed);
        let other = PolicyInput::new(Request::GetOomEvent, SandboxState::default());
        assert_eq!(
            engine.decide(&other).reason,
            "kind not listed in data.allowed"
        );
    }

    #[test]
    fn input_over_the_limit_is_denied() {
        let limits = Limits {
            max_input_bytes: 16,
            ..Limits::default()
        };
        let engine = Engine::new(ALLOW_ALL, None, limits).unwrap();
        let decision = engine.decide(&simple_input());
        assert!(!decision.allowed);
        assert!(
            decision.reason.starts_with("policy input is ")
                && decision.reason.ends_with("over the limit of 16"),
            "{}",
            decision.reason
        );
    }

    #[test]
    fn load_errors_table() {
        let zero_time = Limits {
            max_eval_time: Duration::ZERO,
            ..Limits::default()
        };
        let cases: Vec<(&str, Option<&str>, Limits, &str)> = vec![
            (
                "package coffer.policy\ndecision := ",
                None,
                Limits::default(),
                "policy does not parse",
            ),
            (
                "package other\ndecision := {\"allow\": true}",
                None,
                Limits::default(),
                "expected data.coffer.policy",
            ),
            (
                "package coffer.policy\nallow := true",
                None,
                Limits::default(),
                "has no rule data.coffer.policy.decision",
            ),
            (
                ALLOW_ALL,
                Some("{not json"),
                Limits::default(),
                "policy data is invalid",
            ),
            (
                ALLOW_ALL,
                Some("[]"),
                Limits {
                    max_data_bytes: 1,
                    ..Limits::default()
                },
                "policy data is 2 bytes, over the limit of 1",
            ),
            (ALLOW_ALL, None, zero_time, "max_eval_time must be non-zero"),
            (
                "package coffer.policy\ndecision := {\"allow\": true} if { x }",
                None,
                Limits::default(),
                "policy does not",
            ),
        ];
        for (policy, data, limits, expected) in cases {
            let err = Engine::new(policy, data, limits).unwrap_err().to_string();
            assert!(err.contains(expected), "{policy:?}: {err}");
        }
    }

    /// POL-01: under strict builtin errors a builtin given the wrong type is an evaluation error, so
    /// `not startswith(<number>, …)` cannot turn into "allow" the way an undefined result would.
    #[test]
    fn pol01_type_confusion_under_negation_with_builtin_is_denied() {
        let policy = r#"
package coffer.policy

default decision := {"allow": false, "reason": "no rule allows this request"}

decision := {"allow": true, "reason": ""} if {
    not startswith(input.request.process.args[0], "/bin/evil")
}
"#;
        for arg in ["5", "null", "{\"a\": 1}", "[\"/bin/evil\"]"] {
            let input = format!(r#"{{"request": {{"process": {{"args": [{arg}]}}}}}}"#);
            let decision = decide_json(policy, &input);
            assert!(!decision.allowed, "args[0] = {arg} allowed");
            assert!(
                decision.reason.starts_with("policy error: "),
                "{arg}: {}",
                decision.reason
            );
        }
        let decision = decide_json(policy, r#"{"request": {"process": {"args": ["/bin/ok"]}}}"#);
        assert!(decision.allowed, "{}", decision.reason);
        let decision = decide_json(
            policy,
            r#"{"request": {"process": {"args": ["/bin/evil"]}}}"#,
        );
        assert_eq!(decision.reason, "no rule allows this request");
    }

    /// POL-01, documented outcome: `==` is not a builtin and compares values of different types as
    /// unequal without error, so `not x == "y"` holds for a non-string `x`. Policies must not
    /// negate comparisons on fields whose type they have not checked; the typed input (every field
    /// has one JSON type per schema version) is what keeps this from being reachable through the
    /// agent.
    #[test]
    fn pol01_negated_equality_on_wrong_type_is_true() {
        let policy = r#"
package coffer.policy

default decision := {"allow": false, "reason": "args[0] is x"}

decision := {"allow": true, "reason": ""} if not input.request.process.args[0] == "x"
"#;
        let decision = decide_json(policy, r#"{"request": {"process": {"args": [5]}}}"#);
        assert!(decision.allowed, "{}", decision.reason);
        let decision = decide_json(policy, r#"{"request": {"process": {"args": ["x"]}}}"#);
        assert_eq!(decision.reason, "args[0] is x");
    }
}

#[cfg(test)]
mod sandbox_policy_tests {
    use super::*;

    /// INV-5: `sandbox.rego` denies kinds and versions the typed input cannot even express (raw
    /// JSON input, reachable only through a future input adapter).
    #[test]
    fn inv5_sandbox_policy_denies_unknown_kind_and_version() {
        let engine = Engine::new(crate::SANDBOX_POLICY, None, Limits::default()).unwrap();
        let cases = [
            (
                r#"{"version": 1, "request": {"kind": "SetPolicy"}}"#,
                "SetPolicy is not an RPC this policy knows",
            ),
            (
                r#"{"version": 1, "request": {}}"#,
                "<missing kind> is not an RPC this policy knows",
            ),
            (
                r#"{"version": 2, "request": {"kind": "GetGuestDetails"}}"#,
                "unsupported policy input version 2, expected 1",
            ),
            (
                r#"{"request": {"kind": "GetGuestDetails"}}"#,
                "unsupported policy input version null, expected 1",
            ),
        ];
        for (input, reason) in cases {
            let decision = engine.decide_value(Value::from_json_str(input).unwrap());
            assert!(!decision.allowed, "{input} allowed");
            assert_eq!(decision.reason, reason, "{input}");
        }
    }
}
