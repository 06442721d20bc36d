//! Sessions (INV-3): a 32-byte CSPRNG nonce per `/auth`, bound to one `kbs-session-id`, usable
//! for exactly one `/attest` within the TTL (default 5 minutes); a bounded store swept of expired
//! entries on insert and periodically.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rand_core::{OsRng, RngCore};
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use super::error::KbsError;
use crate::kbs::types::{Tee, TeePubKey};

/// Nonce length in bytes.
pub const NONCE_LEN: usize = 32;

/// What an attested session holds.
#[derive(Debug, Clone)]
pub struct Attested {
    /// Token claims (the policy input).
    pub claims: Arc<Map<String, Value>>,
    /// The key resources are encrypted to.
    pub tee_pubkey: TeePubKey,
}

#[derive(Debug)]
enum State {
    Challenged { nonce: Zeroizing<String> },
    Attesting,
    Attested(Attested),
}

#[derive(Debug)]
struct Entry {
    tee: Tee,
    expires: Instant,
    state: State,
}

/// The bounded session store.
#[derive(Debug)]
pub struct SessionStore {
    inner: Mutex<HashMap<String, Entry>>,
    max: usize,
    ttl: Duration,
}

/// A challenge handed out by `/auth`.
#[derive(Debug)]
pub struct NewSession {
    /// Cookie value.
    pub id: String,
    /// Base64 nonce.
    pub nonce: String,
    /// Session lifetime.
    pub ttl: Duration,
}

impl SessionStore {
    /// A store of at most `max` sessions living `ttl` each.
    pub fn new(max: usize, ttl: Duration) -> Self {
        Self {
            inner: Mutex::new(HashMap::new()),
            max,
            ttl,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A poisoned lock only means another request panicked; the map itself stays consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates a challenged session for `tee`.
    pub fn create(&self, tee: Tee) -> Result<NewSession, KbsError> {
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        let mut id = [0u8; 16];
        OsRng.fill_bytes(&mut id);
        let id = hex::encode(id);
        let nonce = B64.encode(nonce);
        let now = Instant::now();
        let mut map = self.lock();
        if map.len() >= self.max {
            map.retain(|_, e| e.expires > now);
            if map.len() >= self.max {
                return Err(KbsError::TooManySessions);
            }
        }
        map.insert(
            id.clone(),
            Entry {
                tee,
                expires: now + self.ttl,
                state: State::Challenged {
                    nonce: Zeroizing::new(nonce.clone()),
                },
            },
        );
        Ok(NewSession {
            id,
            nonce,
            ttl: self.ttl,
        })
    }

    /// Takes the challenge of session `id` for one `/attest`: returns its TEE and nonce and moves
    /// the session to "attesting", so a second or concurrent attest on it fails (KBS-01).
    pub fn begin_attest(&self, id: &str) -> Result<(Tee, Zeroizing<String>), KbsError> {
        let now = Instant::now();
        let mut map = self.lock();
        let entry = map.get_mut(id).ok_or(KbsError::NoChallenge)?;
        if entry.expires <= now {
            map.remove(id);
            return Err(KbsError::NoChallenge);
        }
        match std::mem::replace(&mut entry.state, State::Attesting) {
            State::Challenged { nonce } => Ok((entry.tee, nonce)),
            other => {
                entry.state = other;
                Err(KbsError::NoChallenge)
            }
        }
    }

    /// Records the outcome of the attest begun with [`Self::begin_attest`]: success attaches the
    /// claims, failure removes the session.
    pub fn finish_attest(&self, id: &str, outcome: Option<Attested>) {
        let mut map = self.lock();
        match outcome {
            Some(attested) => {
                if let Some(entry) = map.get_mut(id) {
                    entry.state = State::Attested(attested);
                }
            }
            None => {
                map.remove(id);
            }
        }
    }

    /// The attested state of a live session.
    pub fn attested(&self, id: &str) -> Option<Attested> {
        let now = Instant::now();
        let map = self.lock();
        match map.get(id) {
            Some(Entry {
                expires,
                state: State::Attested(a),
                ..
            }) if *expires > now => Some(a.clone()),
            _ => None,
        }
    }

    /// Drops expired sessions; returns how many remain.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        let mut map = self.lock();
        map.retain(|_, e| e.expires > now);
        map.len()
    }

    /// Number of stored sessions.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonce_is_single_use_kbs01() {
        let store = SessionStore::new(10, Duration::from_secs(60));
        let s = store.create(Tee::Sample).unwrap();
        assert_eq!(B64.decode(&s.nonce).unwrap().len(), NONCE_LEN);
        let (_, nonce) = store.begin_attest(&s.id).unwrap();
        assert_eq!(nonce.as_str(), s.nonce);
        assert!(matches!(
            store.begin_attest(&s.id),
            Err(KbsError::NoChallenge)
        ));
        store.finish_attest(&s.id, None);
        assert!(store.is_empty());
    }

    #[test]
    fn expired_sessions_refused_and_swept_kbs01_kbs10() {
        let store = SessionStore::new(2, Duration::from_millis(1));
        let a = store.create(Tee::Sample).unwrap();
        store.create(Tee::Sample).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        // Full store of expired entries: they are swept to make room.
        store.create(Tee::Sample).unwrap();
        assert_eq!(store.len(), 1);
        // An expired challenge is refused (and removed).
        let b = store.create(Tee::Sample).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert!(matches!(
            store.begin_attest(&b.id),
            Err(KbsError::NoChallenge)
        ));
        assert!(matches!(
            store.begin_attest(&a.id),
            Err(KbsError::NoChallenge)
        ));
    }

    #[test]
    fn bounded_store_refuses_when_full_kbs10() {
        let store = SessionStore::new(2, Duration::from_secs(60));
        store.create(Tee::Sample).unwrap();
        store.create(Tee::Sample).unwrap();
        assert!(matches!(
            store.create(Tee::Sample),
            Err(KbsError::TooManySessions)
        ));
    }
}
