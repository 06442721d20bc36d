//! The resource policy: Rego evaluated by regorus. `data.policy.allow` over input = token
//! claims and data = `{plugin, resource-path, query}`: plugin `resource` with the resource path,
//! or `identity` with the SPIFFE ID about to be issued. Any evaluation error or non-`true`
//! result denies (INV-5); evaluation time is bounded (INV-9).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::RwLock;
use std::time::Duration;

use regorus::utils::limits::ExecutionTimerConfig;
use serde_json::{Map, Value, json};

/// The shipped default policy: affirming, non-sample evidence only.
pub const DEFAULT_POLICY: &str = include_str!("default-policy.rego");
/// Largest accepted policy source.
pub const MAX_POLICY_LEN: usize = 64 * 1024;
const DECISION: &str = "data.policy.allow";
const EVAL_TIME_LIMIT: Duration = Duration::from_secs(1);

/// Policy load failures.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The source is too large.
    #[error("policy is {size} bytes, over the limit of {MAX_POLICY_LEN}")]
    TooLarge {
        /// Size.
        size: usize,
    },
    /// The source does not parse or is not `package policy`.
    #[error("policy does not compile: {message}")]
    Compile {
        /// The engine's message.
        message: String,
    },
}

/// Most resource paths whose prepared engine is kept; further paths are evaluated unprepared.
const MAX_PREPARED_PATHS: usize = 256;

/// A compiled resource policy.
///
/// regorus re-analyses the modules whenever data changes, and the data document differs per
/// resource path; so the engine with a path's data added and analysed is kept (up to
/// [`MAX_PREPARED_PATHS`]) and each decision clones it and sets only the input.
pub struct ResourcePolicy {
    /// The source is the shipped [`DEFAULT_POLICY`].
    shipped_default: bool,
    compiled: regorus::Engine,
    prepared: RwLock<HashMap<(&'static str, String), regorus::Engine>>,
}

impl std::fmt::Debug for ResourcePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResourcePolicy")
    }
}

impl ResourcePolicy {
    /// Compiles `source`, which must declare `package policy`.
    pub fn new(source: &str) -> Result<Self, PolicyError> {
        if source.len() > MAX_POLICY_LEN {
            return Err(PolicyError::TooLarge { size: source.len() });
        }
        let compile = |e: anyhow::Error| PolicyError::Compile {
            message: e.to_string(),
        };
        let mut engine = regorus::Engine::new();
        engine.set_strict_builtin_errors(true);
        engine.set_execution_timer_config(ExecutionTimerConfig {
            limit: EVAL_TIME_LIMIT,
            check_interval: NonZeroU32::MIN.saturating_add(999),
        });
        let package = engine
            .add_policy("resource-policy.rego".to_owned(), source.to_owned())
            .map_err(compile)?;
        if package != "data.policy" {
            return Err(PolicyError::Compile {
                message: format!("package is {package}, expected policy"),
            });
        }
        engine
            .eval_query("true".to_owned(), false)
            .map_err(compile)?;
        Ok(Self {
            shipped_default: source == DEFAULT_POLICY,
            compiled: engine,
            prepared: RwLock::new(HashMap::new()),
        })
    }

    /// The shipped default.
    pub fn default_policy() -> Result<Self, PolicyError> {
        Self::new(DEFAULT_POLICY)
    }

    /// Decides whether `claims` may read `resource_path`. Errors deny.
    pub fn allows(&self, claims: &Map<String, Value>, resource_path: &str) -> bool {
        self.decide(claims, "resource", resource_path)
    }

    /// Decides a request of `plugin` (`resource`, `identity`) for `resource_path`. Errors deny.
    pub fn decide(
        &self,
        claims: &Map<String, Value>,
        plugin: &'static str,
        resource_path: &str,
    ) -> bool {
        let input = regorus::Value::from(Value::Object(claims.clone()));
        if input == regorus::Value::Undefined {
            return false;
        }
        let cached = self
            .prepared
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(plugin, resource_path.to_owned()))
            .cloned();
        let (mut engine, fresh) = match cached {
            Some(engine) => (engine, false),
            None => {
                let mut engine = self.compiled.clone();
                let data = json!({"plugin": plugin, "resource-path": resource_path, "query": {}});
                if let Err(e) = engine.add_data(regorus::Value::from(data)) {
                    tracing::warn!(error = %e, "resource policy data rejected: deny");
                    return false;
                }
                (engine, true)
            }
        };
        engine.set_input(input);
        let allowed = match engine.eval_rule(DECISION.to_owned()) {
            Ok(v) => v == regorus::Value::Bool(true),
            Err(e) => {
                tracing::warn!(error = %e, "resource policy evaluation failed: deny");
                false
            }
        };
        if !allowed && self.shipped_default && is_sample(claims) {
            tracing::warn!(
                plugin,
                path = resource_path,
                "denied: the default resource policy never releases to sample evidence; a \
                 development broker that should, names a policy admitting it in [policy] file"
            );
        }
        if fresh {
            // Analysed now; keep it for this path, without this requester's input.
            engine.set_input(regorus::Value::new_object());
            let mut prepared = self.prepared.write().unwrap_or_else(|p| p.into_inner());
            if prepared.len() < MAX_PREPARED_PATHS {
                prepared.insert((plugin, resource_path.to_owned()), engine);
            }
        }
        allowed
    }
}

/// Whether `claims` appraise development-only sample evidence.
fn is_sample(claims: &Map<String, Value>) -> bool {
    claims
        .get("submods")
        .and_then(|s| s.get("cpu0"))
        .and_then(|c| c.get("ear.veraison.annotated-evidence"))
        .and_then(|e| e.get("tee"))
        .is_some_and(|tee| tee == "sample")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(status: &str, tee: &str) -> Map<String, Value> {
        let v = json!({"submods": {"cpu0": {
            "ear.status": status,
            "ear.veraison.annotated-evidence": {"tee": tee}
        }}});
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn default_policy_requires_affirming_non_sample_kbs04() {
        let p = ResourcePolicy::default_policy().unwrap();
        assert!(p.allows(&claims("affirming", "snp"), "default/key/1"));
        assert!(!p.allows(&claims("warning", "snp"), "default/key/1"));
        assert!(!p.allows(&claims("affirming", "sample"), "default/key/1"));
        assert!(!p.allows(&Map::new(), "default/key/1"));
        // Decisions from the prepared (cached) engine are the same.
        assert!(p.allows(&claims("affirming", "snp"), "default/key/1"));
        assert!(!p.allows(&claims("affirming", "sample"), "default/key/1"));
        // Identities: the same rule (plugin "identity", path = the SPIFFE ID); other plugins deny.
        let id = "spiffe://coffer.test/ns/a/sa/b";
        assert!(p.decide(&claims("affirming", "tdx"), "identity", id));
        assert!(!p.decide(&claims("warning", "tdx"), "identity", id));
        assert!(!p.decide(&claims("affirming", "sample"), "identity", id));
        assert!(!p.decide(&claims("affirming", "snp"), "other", id));
    }

    #[test]
    fn data_is_per_resource_path_with_prepared_engines() {
        let p = ResourcePolicy::new(
            "package policy\nimport rego.v1\ndefault allow := false\n\
             allow if { data[\"resource-path\"] == \"a/b/c\"; data.plugin == \"resource\" }\n",
        )
        .unwrap();
        for _ in 0..3 {
            assert!(p.allows(&Map::new(), "a/b/c"));
            assert!(!p.allows(&Map::new(), "a/b/d"));
        }
    }

    #[test]
    fn broken_policies_are_refused_or_deny_kbs09() {
        assert!(ResourcePolicy::new("package other\nallow := true").is_err());
        assert!(ResourcePolicy::new("package policy\nallow if {").is_err());
        // A runtime error (strict builtins) denies.
        let p = ResourcePolicy::new("package policy\nallow if { to_number(\"x\") == 1 }").unwrap();
        assert!(!p.allows(&claims("affirming", "snp"), "a/b/c"));
    }
}
