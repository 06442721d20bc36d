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
//! - **Attested session**: after `/attest`, the same cookie (Trustee's clients keep it, and some
//!   never read the `/attest` reply's `Set-Cookie`) authenticates resource and identity requests.
//!   The broker keeps what those need (the token's claims as JSON bytes and the TEE key) for
//!   `ttl_secs`, never beyond the token's `exp`. Bounded by `max` sessions and `max_bytes` of
//!   claims: the oldest (the first to expire) are dropped to make room, so the bound costs a
//!   client that returns after the table turned over one more handshake (its resource request
//!   gets 401 and our client and Trustee's attest again; a bearer token stays valid), and never
//!   refuses a handshake.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use super::error::KbsError;
use super::seal::{Opened, SessionId, SessionKeys};
use crate::kbs::types::{Tee, TeePubKey};

pub use super::seal::NONCE_LEN;

/// Accounted per attested session besides its claims: map and queue slots, the key.
const ENTRY_OVERHEAD: usize = 256;

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
    /// Attested sessions held at most.
    pub max_sessions: usize,
    /// Bytes of attested sessions held at most.
    pub max_bytes: usize,
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
}

/// Counters for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Attested sessions held.
    pub sessions: usize,
    /// Bytes accounted to them.
    pub bytes: usize,
    /// Attested sessions dropped before their expiry to stay in bounds.
    pub evicted: u64,
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

#[derive(Debug)]
struct Entry {
    expires: Instant,
    claims: Box<[u8]>,
    tee_pubkey: TeePubKey,
    size: usize,
}

/// Attested sessions, oldest first (all share one lifetime, so oldest is first to expire).
#[derive(Debug, Default)]
struct AttestedTable {
    map: HashMap<SessionId, Arc<Entry>, IdBuild>,
    order: VecDeque<(SessionId, Instant)>,
    bytes: usize,
    evicted: u64,
}

impl AttestedTable {
    fn pop_oldest(&mut self) -> bool {
        let Some((id, _)) = self.order.pop_front() else {
            return false;
        };
        if let Some(e) = self.map.remove(&id) {
            self.bytes -= e.size;
        }
        true
    }

    fn drop_expired(&mut self, now: Instant) {
        while self.order.front().is_some_and(|(_, exp)| *exp <= now) {
            self.pop_oldest();
        }
    }

    fn insert(&mut self, id: SessionId, entry: Entry, limits: &Limits, now: Instant) -> bool {
        self.drop_expired(now);
        if entry.size > limits.max_bytes {
            return false;
        }
        while self.map.len() >= limits.max_sessions || self.bytes + entry.size > limits.max_bytes {
            if !self.pop_oldest() {
                break;
            }
            self.evicted += 1;
        }
        self.bytes += entry.size;
        self.order.push_back((id, entry.expires));
        if let Some(old) = self.map.insert(id, Arc::new(entry)) {
            // Unreachable (a challenge is claimed once), kept consistent anyway.
            self.bytes -= old.size;
        }
        true
    }
}

/// The session model: sealed challenges, the used-challenge record, the attested sessions.
#[derive(Debug)]
pub struct Sessions {
    keys: SessionKeys,
    limits: Limits,
    used: Mutex<UsedChallenges>,
    attested: Mutex<AttestedTable>,
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
            attested: Mutex::new(AttestedTable::default()),
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

    fn lock_attested(&self) -> std::sync::MutexGuard<'_, AttestedTable> {
        self.attested.lock().unwrap_or_else(|p| p.into_inner())
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

    /// Records a successful attestation of `challenge`: claims its nonce (false when another
    /// `/attest` already did: refuse) and keeps the attested session until `expires` (at most
    /// the session lifetime). Returns the session's expiry.
    pub fn complete(
        &self,
        challenge: &LiveChallenge,
        claims: &Map<String, Value>,
        tee_pubkey: TeePubKey,
        token_expires: SystemTime,
    ) -> Result<SystemTime, KbsError> {
        let now_sys = SystemTime::now();
        let now_ms = unix_ms(now_sys);
        let id = challenge.opened.id();
        let expires_ms = challenge.opened.expires_ms;
        if expires_ms <= now_ms
            || !self
                .lock_used()
                .claim(id, expires_ms, now_ms, self.limits.max_used)
        {
            return Err(KbsError::NoChallenge);
        }
        let lifetime = self
            .limits
            .session_ttl
            .min(token_expires.duration_since(now_sys).unwrap_or_default());
        let claims = serde_json::to_vec(claims)
            .map_err(|e| KbsError::Internal {
                reason: format!("session claims: {e}"),
            })?
            .into_boxed_slice();
        let key_size = serde_json::to_vec(&tee_pubkey).map_or(0, |v| v.len());
        let entry = Entry {
            expires: Instant::now() + lifetime,
            size: claims.len() + key_size + ENTRY_OVERHEAD,
            claims,
            tee_pubkey,
        };
        if !self
            .lock_attested()
            .insert(id, entry, &self.limits, Instant::now())
        {
            tracing::warn!(
                max_bytes = self.limits.max_bytes,
                "attested session larger than sessions.max_bytes: cookie not usable, bearer token is"
            );
        }
        Ok(now_sys + lifetime)
    }

    /// The attested session named by `cookie`, if it is held and live.
    pub fn attested(&self, cookie: &str) -> Option<Attested> {
        let opened = self.keys.open(cookie)?;
        let entry = {
            let table = self.lock_attested();
            table.map.get(&opened.id())?.clone()
        };
        if entry.expires <= Instant::now() {
            return None;
        }
        let claims: Map<String, Value> = serde_json::from_slice(&entry.claims).ok()?;
        Some(Attested {
            claims: Arc::new(claims),
            tee_pubkey: entry.tee_pubkey.clone(),
        })
    }

    /// Drops expired entries.
    pub fn sweep(&self) -> Stats {
        self.lock_attested().drop_expired(Instant::now());
        self.lock_used().drop_expired(unix_ms(SystemTime::now()));
        self.stats()
    }

    /// Current counts.
    pub fn stats(&self) -> Stats {
        let (sessions, bytes, evicted) = {
            let t = self.lock_attested();
            (t.map.len(), t.bytes, t.evicted)
        };
        let (used, used_forgotten) = {
            let u = self.lock_used();
            (u.len, u.forgotten)
        };
        Stats {
            sessions,
            bytes,
            evicted,
            used,
            used_forgotten,
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
            max_sessions: 3,
            max_bytes: 1 << 20,
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

    #[test]
    fn challenge_is_single_use_and_stores_nothing_until_attested_kbs01() {
        let s = Sessions::new(SessionKeys::generate(), limits());
        let c = s.challenge(Tee::Sample).unwrap();
        assert_eq!(s.stats(), Stats::default());
        let live = s.live_challenge(&c.cookie).unwrap();
        assert_eq!(live.nonce(), c.nonce);
        assert_eq!(live.tee(), Tee::Sample);
        // Two attests raced past live_challenge: exactly one completes.
        let again = s.live_challenge(&c.cookie).unwrap();
        s.complete(&live, &claims(1), key(), token_exp()).unwrap();
        assert!(matches!(
            s.complete(&again, &claims(1), key(), token_exp()),
            Err(KbsError::NoChallenge)
        ));
        assert!(matches!(
            s.live_challenge(&c.cookie),
            Err(KbsError::NoChallenge)
        ));
        let attested = s.attested(&c.cookie).unwrap();
        assert_eq!(attested.claims.get("n"), Some(&Value::from(1)));
        assert_eq!(s.stats().sessions, 1);
        assert_eq!(s.stats().used, 1);
        // A challenge that was never attested authenticates nothing.
        let other = s.challenge(Tee::Sample).unwrap();
        assert!(s.attested(&other.cookie).is_none());
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
    fn full_table_drops_the_oldest_session_never_refuses_kbs10() {
        let s = Sessions::new(SessionKeys::generate(), limits());
        let mut cookies = Vec::new();
        for n in 0..10 {
            let c = s.challenge(Tee::Sample).unwrap();
            let live = s.live_challenge(&c.cookie).unwrap();
            s.complete(&live, &claims(n), key(), token_exp()).unwrap();
            cookies.push(c.cookie);
        }
        let stats = s.stats();
        assert_eq!(stats.sessions, 3);
        assert_eq!(stats.evicted, 7);
        assert!(s.attested(&cookies[6]).is_none());
        for (n, c) in cookies.iter().enumerate().skip(7) {
            assert_eq!(
                s.attested(c).unwrap().claims.get("n"),
                Some(&Value::from(n))
            );
        }
        // Evicted sessions' challenges stay used.
        assert!(s.live_challenge(&cookies[0]).is_err());
    }

    #[test]
    fn byte_budget_bounds_the_table_kbs10() {
        let s = Sessions::new(
            SessionKeys::generate(),
            Limits {
                max_sessions: 1000,
                max_bytes: 4 * (ENTRY_OVERHEAD + 600),
                ..limits()
            },
        );
        let mut big = Map::new();
        big.insert("pad".into(), Value::String("x".repeat(300)));
        for _ in 0..20 {
            let c = s.challenge(Tee::Sample).unwrap();
            let live = s.live_challenge(&c.cookie).unwrap();
            s.complete(&live, &big, key(), token_exp()).unwrap();
        }
        let stats = s.stats();
        assert!(stats.bytes <= 4 * (ENTRY_OVERHEAD + 600), "{stats:?}");
        assert!(stats.sessions >= 3 && stats.sessions < 20, "{stats:?}");
    }

    #[test]
    fn session_never_outlives_its_token() {
        let s = Sessions::new(SessionKeys::generate(), limits());
        let c = s.challenge(Tee::Sample).unwrap();
        let live = s.live_challenge(&c.cookie).unwrap();
        let expires = s
            .complete(&live, &claims(0), key(), SystemTime::now())
            .unwrap();
        assert!(expires <= SystemTime::now());
        assert!(s.attested(&c.cookie).is_none());
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
