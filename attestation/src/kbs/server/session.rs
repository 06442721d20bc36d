//! Sessions (INV-3, KBS-01, KBS-10): what the broker remembers between `/auth`, `/attest` and
//! `/resource`, and for how long.
//!
//! - **Challenge** (`/auth`): a 32-byte CSPRNG nonce, sealed with the TEE and its expiry into the
//!   `kbs-session-id` cookie ([`super::seal`]). Nothing is stored: an `/auth` flood costs CPU,
//!   never memory, and cannot lock anyone out. A challenge lives `challenge_ttl_secs` (seconds,
//!   not the token's lifetime).
//! - **Used challenges**: a challenge answered by a successful `/attest` is remembered until it
//!   expires, so its nonce works once (a second or concurrent `/attest` on it is refused). Only
//!   successes enter (a failed attestation uses nothing up: the challenge may be answered again
//!   until it expires), so only evidence the broker accepted can grow the record; entries are
//!   grouped by expiry second and the expired groups dropped. Bounded by `max_used_challenges`:
//!   beyond it the group closest to expiry is forgotten and the *horizon* moves past it, so every
//!   challenge expiring no later is refused from then on: the bound may shorten a challenge's
//!   life under extreme load, never reopen a nonce.
//!   The record is this process's; a broker on the PostgreSQL store also claims each challenge
//!   in the store's shared record (`store::Store::claim_challenge`), so a nonce works once across
//!   replicas.
//! - **Attested session**: `/attest` answers with a new `kbs-session-id` value, the attested
//!   session sealed ([`super::seal::SealedSession`]: TEE key, claims, expiry), which
//!   authenticates resource and identity requests on any replica holding the key set. Nothing is
//!   kept: the session lives `ttl_secs`, never beyond the token's `exp`. Trustee's clients keep
//!   cookies in a jar and send the new value; a client that sent the challenge cookie again gets
//!   401 and attests again (ours and Trustee's do).

use std::collections::{BTreeMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use super::error::KbsError;
use super::seal::{Opened, SealedSession, SessionId, SessionKeys};
use crate::kbs::types::{Tee, TeePubKey};

pub use super::seal::NONCE_LEN;

/// What an attested session holds: what resource and identity requests need.
#[derive(Debug, Clone)]
pub struct Attested {
    /// Token claims (the policy input).
    pub claims: Arc<Map<String, Value>>,
    /// The key resources are encrypted to.
    pub tee_pubkey: TeePubKey,
}

/// Session settings.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Challenge lifetime.
    pub challenge_ttl: Duration,
    /// Attested session lifetime (capped by the token's).
    pub session_ttl: Duration,
    /// Used challenges remembered at most.
    pub max_used: usize,
}

/// A challenge handed out by `/auth`.
#[derive(Debug)]
pub struct NewChallenge {
    /// Cookie value.
    pub cookie: String,
    /// Base64 nonce.
    pub nonce: String,
    /// When the challenge expires.
    pub expires: SystemTime,
}

/// A challenge presented on `/attest`, opened and not expired.
#[derive(Debug, Clone)]
pub struct LiveChallenge {
    opened: Opened,
}

impl LiveChallenge {
    /// The TEE the challenge was issued for.
    pub fn tee(&self) -> Tee {
        self.opened.tee
    }

    /// The nonce, base64 as in the challenge.
    pub fn nonce(&self) -> String {
        self.opened.nonce_b64()
    }

    /// The session id (the nonce's prefix).
    pub fn id(&self) -> SessionId {
        self.opened.id()
    }

    /// When the challenge expires, Unix milliseconds.
    pub fn expires_ms(&self) -> u64 {
        self.opened.expires_ms
    }
}

/// Counters for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Used challenges remembered.
    pub used: usize,
    /// Used challenges forgotten before their expiry (the horizon moved).
    pub used_forgotten: u64,
}

/// A hasher for session ids: they are CSPRNG output the client cannot choose (the cookie is
/// sealed), so their first 8 bytes are already a uniform hash.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for (i, b) in bytes.iter().take(8).enumerate() {
            self.0 ^= u64::from(*b) << (8 * i);
        }
    }
}

type IdBuild = BuildHasherDefault<IdHasher>;

/// The second a challenge expiring at `expires_ms` is grouped under (rounded up).
fn group_of(expires_ms: u64) -> u64 {
    expires_ms.div_ceil(1000)
}

/// Successful challenges until they expire, grouped by expiry second.
#[derive(Debug, Default)]
struct UsedChallenges {
    groups: BTreeMap<u64, HashSet<SessionId, IdBuild>>,
    len: usize,
    /// Challenges whose group is this second or earlier are refused.
    horizon: u64,
    forgotten: u64,
}

impl UsedChallenges {
    /// Drops the groups whose every challenge has expired by `now_ms`.
    fn drop_expired(&mut self, now_ms: u64) {
        while let Some(entry) = self.groups.first_entry() {
            if entry.key().saturating_mul(1000) > now_ms {
                break;
            }
            self.len -= entry.remove().len();
        }
    }

    fn is_used(&self, id: &SessionId, expires_ms: u64) -> bool {
        let group = group_of(expires_ms);
        group <= self.horizon || self.groups.get(&group).is_some_and(|g| g.contains(id))
    }

    /// Marks the challenge used; false if it already was (or is beyond the horizon).
    fn claim(&mut self, id: SessionId, expires_ms: u64, now_ms: u64, max: usize) -> bool {
        self.drop_expired(now_ms);
        if self.is_used(&id, expires_ms) {
            return false;
        }
        while self.len >= max {
            let Some((second, group)) = self.groups.pop_first() else {
                break;
            };
            self.len -= group.len();
            self.forgotten += group.len() as u64;
            self.horizon = self.horizon.max(second);
        }
        let group = group_of(expires_ms);
        if group <= self.horizon {
            return false;
        }
        let inserted = self.groups.entry(group).or_default().insert(id);
        if inserted {
            self.len += 1;
        }
        inserted
    }
}

/// The session model: sealed challenges, the used-challenge record, sealed attested sessions.
#[derive(Debug)]
pub struct Sessions {
    keys: SessionKeys,
    limits: Limits,
    used: Mutex<UsedChallenges>,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Sessions {
    /// Sessions sealed with `keys`.
    pub fn new(keys: SessionKeys, limits: Limits) -> Self {
        Self {
            keys,
            limits,
            used: Mutex::new(UsedChallenges::default()),
        }
    }

    /// The settings.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn lock_used(&self) -> std::sync::MutexGuard<'_, UsedChallenges> {
        // A poisoned lock only means another request panicked; the record stays consistent.
        self.used.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new challenge for `tee` (stores nothing).
    pub fn challenge(&self, tee: Tee) -> Result<NewChallenge, KbsError> {
        let ttl_ms = u64::try_from(self.limits.challenge_ttl.as_millis()).unwrap_or(u64::MAX);
        let expires_ms = unix_ms(SystemTime::now()).saturating_add(ttl_ms);
        let (cookie, opened) = self.keys.seal(tee, expires_ms).ok_or(KbsError::Internal {
            reason: "session cookie sealing failed".into(),
        })?;
        Ok(NewChallenge {
            cookie,
            nonce: opened.nonce_b64(),
            expires: UNIX_EPOCH + Duration::from_millis(expires_ms),
        })
    }

    /// The challenge in `cookie`, if it opens, has not expired and was not used (KBS-01). The
    /// final, atomic check is [`Self::complete`].
    pub fn live_challenge(&self, cookie: &str) -> Result<LiveChallenge, KbsError> {
        let opened = self.keys.open(cookie).ok_or(KbsError::NoChallenge)?;
        if opened.expires_ms <= unix_ms(SystemTime::now()) {
            return Err(KbsError::NoChallenge);
        }
        if self.lock_used().is_used(&opened.id(), opened.expires_ms) {
            return Err(KbsError::NoChallenge);
        }
        Ok(LiveChallenge { opened })
    }

    /// Marks `challenge` used in this process's record (KBS-01): false when it already was
    /// (refuse), or has expired.
    pub fn claim_local(&self, challenge: &LiveChallenge) -> bool {
        let now_ms = unix_ms(SystemTime::now());
        let expires_ms = challenge.opened.expires_ms;
        expires_ms > now_ms
            && self
                .lock_used()
                .claim(challenge.id(), expires_ms, now_ms, self.limits.max_used)
    }

    /// Seals the attested session opened by `challenge` (claimed already): the new cookie value
    /// and the session's expiry (the session lifetime, never beyond `token_expires`).
    pub fn seal_attested(
        &self,
        challenge: &LiveChallenge,
        claims: Map<String, Value>,
        tee_pubkey: TeePubKey,
        token_expires: SystemTime,
    ) -> Result<(String, SystemTime), KbsError> {
        let now = SystemTime::now();
        let lifetime = self
            .limits
            .session_ttl
            .min(token_expires.duration_since(now).unwrap_or_default());
        let expires = now + lifetime;
        let session = SealedSession {
            expires_ms: unix_ms(expires),
            id: challenge.id(),
            tee_pubkey,
            claims,
        };
        let value = self.keys.seal_session(&session).ok_or(KbsError::Internal {
            reason: "attested session too large to seal (or sealing failed)".into(),
        })?;
        Ok((value, expires))
    }

    /// The attested session in `cookie`, if it opens and has not expired.
    pub fn attested(&self, cookie: &str) -> Option<Attested> {
        let session = self.keys.open_session(cookie)?;
        if session.expires_ms <= unix_ms(SystemTime::now()) {
            return None;
        }
        Some(Attested {
            claims: Arc::new(session.claims),
            tee_pubkey: session.tee_pubkey,
        })
    }

    /// Drops expired used challenges.
    pub fn sweep(&self) -> Stats {
        self.lock_used().drop_expired(unix_ms(SystemTime::now()));
        self.stats()
    }

    /// Current counts.
    pub fn stats(&self) -> Stats {
        let u = self.lock_used();
        Stats {
            used: u.len,
            used_forgotten: u.forgotten,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            challenge_ttl: Duration::from_secs(30),
            session_ttl: Duration::from_secs(300),
            max_used: 1024,
        }
    }

    fn key() -> TeePubKey {
        crate::kbs::jwe::TeeKeyPair::generate_ec().public_jwk()
    }

    fn claims(n: usize) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("n".into(), Value::from(n));
        m
    }

    fn token_exp() -> SystemTime {
        SystemTime::now() + Duration::from_secs(300)
    }

    fn attest(s: &Sessions, c: &NewChallenge, n: usize, exp: SystemTime) -> Option<String> {
        let live = s.live_challenge(&c.cookie).ok()?;
        if !s.claim_local(&live) {
            return None;
        }
        Some(s.seal_attested(&live, claims(n), key(), exp).unwrap().0)
    }

    #[test]
    fn challenge_is_single_use_and_stores_nothing_until_attested_kbs01() {
        let s = Sessions::new(SessionKeys::generate(), limits());
        let c = s.challenge(Tee::Sample).unwrap();
        assert_eq!(s.stats(), Stats::default());
        let live = s.live_challenge(&c.cookie).unwrap();
        assert_eq!(live.nonce(), c.nonce);
        assert_eq!(live.tee(), Tee::Sample);
        // Two attests raced past live_challenge: exactly one claims.
        let again = s.live_challenge(&c.cookie).unwrap();
        assert!(s.claim_local(&live));
        assert!(!s.claim_local(&again));
        assert!(matches!(
            s.live_challenge(&c.cookie),
            Err(KbsError::NoChallenge)
        ));
        let (session, _) = s
            .seal_attested(&live, claims(1), key(), token_exp())
            .unwrap();
        let attested = s.attested(&session).unwrap();
        assert_eq!(attested.claims.get("n"), Some(&Value::from(1)));
        assert_eq!(s.stats().used, 1);
        // A challenge cookie, attested or not, authenticates nothing.
        assert!(s.attested(&c.cookie).is_none());
        // Another broker with the same keys serves the session; one with other keys does not.
        let keys = |b: u8| SessionKeys::from_secrets(vec![zeroize::Zeroizing::new([b; 32])]);
        let a = Sessions::new(keys(5).unwrap(), limits());
        let b = Sessions::new(keys(5).unwrap(), limits());
        let other = Sessions::new(keys(6).unwrap(), limits());
        let c = a.challenge(Tee::Sample).unwrap();
        let session = attest(&b, &c, 2, token_exp()).unwrap();
        assert!(a.attested(&session).is_some());
        assert!(other.attested(&session).is_none());
        assert!(other.live_challenge(&c.cookie).is_err());
    }

    #[test]
    fn expired_challenge_refused_kbs01() {
        let s = Sessions::new(SessionKeys::generate(), limits());
        let (cookie, _) = s
            .keys
            .seal(Tee::Sample, unix_ms(SystemTime::now()))
            .unwrap();
        assert!(matches!(
            s.live_challenge(&cookie),
            Err(KbsError::NoChallenge)
        ));
        assert!(s.live_challenge("not-a-cookie").is_err());
    }

    #[test]
    fn session_never_outlives_its_token() {
        let s = Sessions::new(SessionKeys::generate(), limits());
        let c = s.challenge(Tee::Sample).unwrap();
        let live = s.live_challenge(&c.cookie).unwrap();
        assert!(s.claim_local(&live));
        let (session, expires) = s
            .seal_attested(&live, claims(0), key(), SystemTime::now())
            .unwrap();
        assert!(expires <= SystemTime::now());
        assert!(s.attested(&session).is_none());
    }

    #[test]
    fn used_record_forgets_by_moving_the_horizon_never_reopening_a_nonce() {
        let mut used = UsedChallenges::default();
        let now = 1_000_000;
        // Four challenges expiring in seconds 1010, 1011, 1012, 1013; room for three.
        for (i, exp) in (1010..1014).enumerate() {
            assert!(used.claim([i as u8; 16], exp * 1000 - 500, now, 3));
        }
        assert_eq!(used.len, 3);
        assert_eq!(used.horizon, 1010);
        assert_eq!(used.forgotten, 1);
        // The forgotten challenge (and any other expiring by second 1010) is refused, not
        // reopened.
        assert!(!used.claim([0u8; 16], 1_009_500, now, 3));
        assert!(!used.claim([9u8; 16], 1_009_999, now, 3));
        // Remembered ones stay used.
        assert!(!used.claim([1u8; 16], 1_010_500, now, 3));
        // Groups whose challenges all expired leave.
        used.drop_expired(1_012_000);
        assert_eq!(used.len, 1);
        assert!(used.claim([7u8; 16], 1_020_000, 1_012_000, 3));
    }
}
