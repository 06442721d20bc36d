//! The hostile cases: requests a broker must refuse, each one change away from a request it
//! accepted (the module table of [`super`], `replayed-nonce` to `admin-without-token`).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde_json::json;

use super::{
    Checker, NESTING_DEPTH, OVERSIZED_BODY_BYTES, Stop, TEES, UNAUTHENTICATED_PROBE, Verdict,
    chain, fail, not_applicable,
};
use crate::kbs::binding;
use crate::kbs::jwe::TeeKeyPair;
use crate::kbs::jwt::TokenSigner;
use crate::kbs::probe::{self, Credential};
use crate::kbs::types::RuntimeData;

impl Checker {
    pub(super) async fn replayed_nonce(&self) -> Verdict {
        self.require_accepted()?;
        let key = TeeKeyPair::generate_ec();
        let a = self.open().await?;
        let body = self.body(&a, &key)?.to_string();
        let first = self.probe.attest(a.cookie.as_deref(), body.clone()).await?;
        if first.status != 200 {
            return not_applicable(format!(
                "the first /attest was refused ({}): nothing to replay",
                first.summary()
            ));
        }
        let again = self.probe.attest(a.cookie.as_deref(), body.clone()).await?;
        if again.success() {
            return fail("the same /attest on the same session got a second token");
        }
        let b = self.open().await?;
        let elsewhere = self.probe.attest(b.cookie.as_deref(), body).await?;
        if elsewhere.success() {
            return fail("the same evidence on a new session got a token");
        }
        Ok(format!(
            "again on its session: {}; on a new session: {}",
            again.summary(),
            elsewhere.summary()
        ))
    }

    pub(super) async fn other_session_nonce(&self) -> Verdict {
        self.require_accepted()?;
        let key = TeeKeyPair::generate_ec();
        let a = self.open().await?;
        let b = self.open().await?;
        let body_a = self.body(&a, &key)?.to_string();
        let crossed = self
            .probe
            .attest(b.cookie.as_deref(), body_a.clone())
            .await?;
        if crossed.success() {
            return fail("evidence for session A's nonce got a token on session B");
        }
        let none = self.probe.attest(None, body_a).await?;
        if none.success() {
            return fail("evidence got a token on /attest without a session cookie");
        }
        if let (Some((path, _)), Some(cookie)) = (&self.target, &b.cookie) {
            let reply = self
                .probe
                .resource(path, Credential::Cookie(cookie))
                .await?;
            if reply.is_jwe() {
                return fail(format!("session B got {path} after the crossed /attest"));
            }
        }
        Ok(format!(
            "on another session: {}; without a session: {}",
            crossed.summary(),
            none.summary()
        ))
    }

    pub(super) async fn swapped_tee_key(&self) -> Verdict {
        self.require_accepted()?;
        let bound = TeeKeyPair::generate_ec();
        let attacker = TeeKeyPair::generate_ec();
        let a = self.open().await?;
        let mut body = self.body(&a, &bound)?;
        body["runtime-data"]["tee-pubkey"] = json!(attacker.public_jwk());
        let reply = self
            .probe
            .attest(a.cookie.as_deref(), body.to_string())
            .await?;
        if reply.success() {
            return fail("evidence binding one key got a token for another key");
        }
        Ok(format!("refused: {}", reply.summary()))
    }

    pub(super) async fn report_data_mismatch(&self) -> Verdict {
        self.require_accepted()?;
        let key = TeeKeyPair::generate_ec();
        let a = self.open().await?;
        let runtime_data = RuntimeData {
            nonce: a.nonce.clone(),
            tee_pubkey: key.public_jwk(),
        };
        let mut wrong = binding::report_data(&runtime_data, "");
        wrong[0] ^= 1;
        let evidence = self
            .config
            .attester
            .evidence(&wrong)
            .map_err(|e| Stop::Fail(format!("producing evidence: {}", chain(&e))))?;
        let body = probe::attestation_with_evidence(runtime_data, evidence);
        let reply = self
            .probe
            .attest(a.cookie.as_deref(), body.to_string())
            .await?;
        if reply.success() {
            return fail("evidence whose report_data is not the binding got a token");
        }
        Ok(format!("refused: {}", reply.summary()))
    }

    pub(super) async fn tee_switched(&self) -> Verdict {
        self.require_accepted()?;
        let mut refused = Vec::new();
        for other in TEES.iter().filter(|t| **t != self.tee) {
            let challenge = match self.challenge(other).await? {
                Ok(c) => c,
                Err(reply) => {
                    refused.push(format!("{other}: {}", reply.status));
                    continue;
                }
            };
            let key = TeeKeyPair::generate_ec();
            let body = self.body(&challenge, &key)?;
            let reply = self
                .probe
                .attest(challenge.cookie.as_deref(), body.to_string())
                .await?;
            if reply.success() {
                return fail(format!(
                    "{} evidence got a token on a session opened for {other}",
                    self.tee
                ));
            }
            return Ok(format!(
                "{} evidence on a {other} session: {}",
                self.tee,
                reply.summary()
            ));
        }
        not_applicable(format!(
            "the broker opens sessions for no TEE other than {} ({})",
            self.tee,
            refused.join(", ")
        ))
    }

    pub(super) async fn resource_traversal(&self) -> Verdict {
        self.require_accepted()?;
        let attested = match self.handshake(Arc::new(TeeKeyPair::generate_ec())).await? {
            Ok(a) => a,
            Err(reply) => {
                return fail(format!(
                    "a fresh handshake was refused: {}",
                    reply.summary()
                ));
            }
        };
        let Some(cookie) = attested.cookie.clone() else {
            return fail("the attested session has no kbs-session-id cookie");
        };
        let mut paths = vec![
            "../outside".to_owned(),
            "default/../../outside".to_owned(),
            "default/key/../../../outside".to_owned(),
            "%2e%2e/%2e%2e/outside".to_owned(),
            "default/key/%2e%2e".to_owned(),
            "default//1".to_owned(),
            "default/key/1/extra".to_owned(),
            ".well-known/key/1".to_owned(),
            format!("default/key/{}", "a".repeat(10 * 1024)),
        ];
        if let Some((path, _)) = &self.target
            && let [repo, kind, tag] = path.split('/').collect::<Vec<_>>()[..]
        {
            // Paths that name the target only after dot segments are resolved.
            paths.push(format!("{repo}/x/../{kind}/{tag}"));
            paths.push(format!("{repo}/{kind}/%2e%2e/{kind}/{tag}"));
            paths.push(format!("x/../{repo}/{kind}/{tag}"));
        }
        let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
        for p in &paths {
            let reply = self.probe.resource(p, Credential::Cookie(&cookie)).await?;
            if reply.success() || reply.is_jwe() {
                let shown: String = p.chars().take(60).collect();
                return fail(format!("{shown} was answered {}", reply.status));
            }
            *statuses.entry(reply.status).or_default() += 1;
        }
        let statuses: Vec<String> = statuses.iter().map(|(s, n)| format!("{n}x {s}")).collect();
        let control = match &self.target {
            Some((path, _)) => {
                let reply = self
                    .probe
                    .resource(path, Credential::Cookie(&cookie))
                    .await?;
                if reply.is_jwe() {
                    format!("; {path} itself still released")
                } else {
                    String::new()
                }
            }
            None => String::new(),
        };
        Ok(format!(
            "{} paths refused ({}){control}",
            paths.len(),
            statuses.join(", ")
        ))
    }

    pub(super) async fn oversized_body(&self) -> Verdict {
        let Some(tee) = self.challenge_tee.clone() else {
            return not_applicable("the broker opens no session");
        };
        let accepted = self.accepted.is_ok();
        let challenge = match self.challenge(&tee).await? {
            Ok(c) => c,
            Err(reply) => return fail(format!("/auth refused: {}", reply.summary())),
        };
        let key = TeeKeyPair::generate_ec();
        let mut body = if accepted {
            self.body(&challenge, &key)?
        } else {
            json!({"init-data": null,
                   "runtime-data": {"nonce": challenge.nonce, "tee-pubkey": key.public_jwk()},
                   "tee-evidence": {"primary_evidence": {}, "additional_evidence": ""}})
        };
        body["coffer-check-padding"] = json!("A".repeat(OVERSIZED_BODY_BYTES));
        let big = match self
            .probe
            .attest(challenge.cookie.as_deref(), body.to_string())
            .await
        {
            Ok(reply) if reply.success() => {
                return fail(format!(
                    "a {} MiB /attest body was accepted ({})",
                    OVERSIZED_BODY_BYTES >> 20,
                    reply.status
                ));
            }
            Ok(reply) => {
                if !accepted && !matches!(reply.status, 400 | 413 | 431) {
                    return not_applicable(format!(
                        "the broker refuses this evidence anyway, and refused the {} MiB body the same way ({}): no size limit shown",
                        OVERSIZED_BODY_BYTES >> 20,
                        reply.summary()
                    ));
                }
                reply.summary()
            }
            Err(e) if e.closed_by_peer() => "connection closed".to_owned(),
            Err(e) => return Err(e.into()),
        };
        let nested = format!("{}{}", "[".repeat(NESTING_DEPTH), "]".repeat(NESTING_DEPTH));
        let deep = match self.probe.attest(challenge.cookie.as_deref(), nested).await {
            Ok(reply) if reply.success() => {
                return fail(format!("{NESTING_DEPTH}-deep JSON was accepted"));
            }
            Ok(reply) => reply.summary(),
            Err(e) if e.closed_by_peer() => "connection closed".to_owned(),
            Err(e) => return Err(e.into()),
        };
        match self.challenge(&tee).await {
            Ok(Ok(_)) => {}
            Ok(Err(reply)) => {
                return fail(format!(
                    "after the oversized bodies /auth is refused: {}",
                    reply.summary()
                ));
            }
            Err(e) => {
                return fail(format!(
                    "after the oversized bodies the broker does not answer: {}",
                    chain(&e)
                ));
            }
        }
        Ok(format!(
            "{} MiB body: {big}; {NESTING_DEPTH}-deep JSON: {deep}; the broker still answers",
            OVERSIZED_BODY_BYTES >> 20
        ))
    }

    pub(super) async fn admin_without_token(&self) -> Verdict {
        let exp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            + 60;
        let claims = json!({"iat": exp - 60, "exp": exp});
        let foreign = TokenSigner::generate()
            .and_then(|s| s.sign(&claims))
            .map_err(|e| Stop::Fail(format!("signing the foreign token: {e}")))?;
        let unsigned = probe::unsigned_token(&claims);
        let resource = format!("/kbs/v0/resource/{UNAUTHENTICATED_PROBE}");
        let write = b"coffer kbs check: this unauthenticated write must be refused".to_vec();
        // Invalid Rego: even a broker that skips authentication cannot apply it.
        let policy = json!({"policy": B64URL.encode("package policy\n# coffer kbs check: must be refused\nallow if {")})
            .to_string();
        let requests: [(&str, &str, Option<&str>, Vec<u8>); 4] = [
            (
                "resource write, no token",
                resource.as_str(),
                None,
                write.clone(),
            ),
            (
                "resource write, unsigned token",
                resource.as_str(),
                Some(&unsigned),
                write.clone(),
            ),
            (
                "resource write, token of another key",
                resource.as_str(),
                Some(&foreign),
                write,
            ),
            (
                "policy upload, no token",
                "/kbs/v0/resource-policy",
                None,
                policy.into_bytes(),
            ),
        ];
        let mut seen = Vec::new();
        for (what, path, token, body) in requests {
            let reply = self.probe.admin_post(path, token, body).await?;
            if !matches!(reply.status, 401 | 403 | 404 | 405) {
                return fail(format!("{what}: {}", reply.summary()));
            }
            seen.push(format!("{what}: {}", reply.status));
        }
        Ok(seen.join(", "))
    }
}
