//! The resource policy: Rego evaluated by regorus. `data.policy.allow` over input = token
//! claims and data = `{plugin, resource-path, query}`. Any evaluation error or non-`true`
//! result denies (INV-5); evaluation time is bounded (INV-9).

use std::num::NonZeroU32;
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

/// A compiled resource policy.
#[derive(Clone)]
pub struct ResourcePolicy {
    prepared: regorus::Engine,
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
        Ok(Self { prepared: engine })
    }

    /// The shipped default.
    pub fn default_policy() -> Result<Self, PolicyError> {
        Self::new(DEFAULT_POLICY)
    }

    /// Decides whether `claims` may read `resource_path`. Errors deny.
    pub fn allows(&self, claims: &Map<String, Value>, resource_path: &str) -> bool {
        let mut engine = self.prepared.clone();
        let input = match serde_json::to_string(claims)
            .ok()
            .and_then(|s| regorus::Value::from_json_str(&s).ok())
        {
            Some(v) => v,
            None => return false,
        };
        let data = json!({"plugin": "resource", "resource-path": resource_path, "query": {}});
        let Ok(data) = regorus::Value::from_json_str(&data.to_string()) else {
            return false;
        };
        engine.set_input(input);
        if let Err(e) = engine.add_data(data) {
            tracing::warn!(error = %e, "resource policy data rejected: deny");
            return false;
        }
        match engine.eval_rule(DECISION.to_owned()) {
            Ok(v) => v == regorus::Value::Bool(true),
            Err(e) => {
                tracing::warn!(error = %e, "resource policy evaluation failed: deny");
                false
            }
        }
    }
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
