//! The sandbox state, with one owner: everything the agent knows about its sandbox (whether it
//! exists, its containers, the ids in use, the images pulled ahead, the starts the policy must
//! remember) lives in one [`State`] behind one lock, and a request's decision and its reservation
//! are taken under that lock together ([`super::Agent::handle`]). So no request can be decided
//! on a state another request is about to change: two creations of one id, a start decided while
//! another start of the same container is under way, or a second `CreateSandbox` while the first
//! is still applying the network cannot both pass.
//!
//! The lock is a plain mutex, never held across an await: a reservation is a guard that gives
//! the id back when the work it stood for is done (or abandoned).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use coffer_policies as pol;

use super::Container;
use crate::error::AgentError;
use crate::request::{AgentRequest, Id};

/// An image pulled by `PullImage`, waiting for its container's `CreateContainer`.
#[derive(Debug)]
pub(super) struct PrePulled {
    pub(super) reference: String,
    pub(super) root: PathBuf,
    /// The manifest digest the guest resolved, verified and unpacked.
    pub(super) manifest_digest: String,
}

/// Where the sandbox is in its life.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) enum Phase {
    /// No `CreateSandbox` yet (or the sandbox was destroyed).
    #[default]
    None,
    /// A `CreateSandbox` is applying the hostname, network and servers.
    Creating,
    /// The sandbox exists.
    Created(Id),
}

/// Everything the agent knows about its sandbox.
#[derive(Debug, Default)]
pub(super) struct State {
    pub(super) phase: Phase,
    pub(super) containers: HashMap<Id, Arc<Container>>,
    /// Ids being created, uploaded, pulled, started or removed right now.
    pub(super) busy: HashSet<Id>,
    /// Images pulled ahead of their container, by container id.
    pub(super) pulled: HashMap<Id, PrePulled>,
    /// The containers this sandbox has started, removed ones included (the policy input's
    /// `state.ever_started`): removing the started containers must not reopen network set-up.
    pub(super) ever_started: Vec<String>,
    /// Registry tunnel and published port servers, closed with the sandbox.
    pub(super) servers: Vec<tokio::task::JoinHandle<()>>,
}

impl State {
    /// Whether the sandbox exists.
    pub(super) fn has_sandbox(&self) -> bool {
        matches!(self.phase, Phase::Created(_))
    }

    /// What the policy knows about the sandbox: its containers, in id order, and the starts.
    pub(super) fn policy_view(&self) -> pol::SandboxState {
        let mut containers: Vec<_> = self
            .containers
            .values()
            .map(|c| pol::ContainerState {
                id: c.id.to_string(),
                image_digest: c.image_digest.clone(),
                started: c.started.load(std::sync::atomic::Ordering::SeqCst),
                record: c.record.clone(),
            })
            .collect();
        containers.sort_by(|a, b| a.id.cmp(&b.id));
        pol::SandboxState {
            containers,
            ever_started: self.ever_started.clone(),
        }
    }
}

/// The one owner of [`State`].
#[derive(Debug, Clone, Default)]
pub(super) struct Shared(Arc<Mutex<State>>);

impl Shared {
    /// The state, locked (never across an await).
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes what the admitted `request` needs reserved, in the same critical section as its
    /// decision (`state` is the guard the decision was taken under).
    pub(super) fn reserve(
        &self,
        state: &mut State,
        request: &AgentRequest,
    ) -> Result<Reservation, AgentError> {
        match request {
            AgentRequest::CreateSandbox { .. } => {
                match &state.phase {
                    Phase::Created(existing) => {
                        return Err(AgentError::SandboxExists(existing.to_string()));
                    }
                    Phase::Creating => {
                        return Err(AgentError::FailedPrecondition(
                            "a CreateSandbox is already in progress".into(),
                        ));
                    }
                    Phase::None => {}
                }
                state.phase = Phase::Creating;
                Ok(Reservation::new(self, Claim::Sandbox))
            }
            AgentRequest::UploadRootfs { container, .. }
            | AgentRequest::PullImage { container, .. }
            | AgentRequest::CreateContainer { container, .. } => {
                if state.has_sandbox() && state.containers.contains_key(container) {
                    return Err(AgentError::AlreadyExists {
                        kind: "container",
                        id: container.to_string(),
                    });
                }
                self.claim_id(state, container)
            }
            AgentRequest::RemoveContainer { container, .. } => self.claim_id(state, container),
            AgentRequest::StartContainer { container } => {
                if !state.has_sandbox() {
                    return Err(AgentError::NoSandbox);
                }
                let c = state
                    .containers
                    .get(container)
                    .ok_or_else(|| AgentError::ContainerNotFound(container.to_string()))?;
                if c.started.load(std::sync::atomic::Ordering::SeqCst) {
                    return Err(AgentError::FailedPrecondition(format!(
                        "container {container} was already started"
                    )));
                }
                let claim = self.claim_id(state, container)?;
                // Noted with the decision, before the start: every later decision sees it, and
                // one that fails half-way (it may still have run the process) still counts.
                pol::note_started(&mut state.ever_started, container.as_str());
                Ok(claim)
            }
            _ => Ok(Reservation::none()),
        }
    }

    /// Reserves `id` outside a request (the removals of `DestroySandbox`).
    pub(super) fn claim(&self, id: &Id) -> Result<Reservation, AgentError> {
        let mut state = self.lock();
        self.claim_id(&mut state, id)
    }

    /// Marks `id` busy; refuses if the sandbox does not exist or the id already is.
    fn claim_id(&self, state: &mut State, id: &Id) -> Result<Reservation, AgentError> {
        if !state.has_sandbox() {
            return Err(AgentError::NoSandbox);
        }
        if !state.busy.insert(id.clone()) {
            return Err(AgentError::FailedPrecondition(format!(
                "container {id} has another operation in progress"
            )));
        }
        Ok(Reservation::new(self, Claim::Id(id.clone())))
    }
}

#[derive(Debug)]
enum Claim {
    None,
    Id(Id),
    Sandbox,
}

/// What a request holds from its decision until its work is done: dropping it gives the id
/// back (and a `CreateSandbox` that did not finish leaves no sandbox). Dropping it takes the state
/// lock, so it is never dropped while that lock is held (the reservation is the last thing
/// [`Shared::reserve`] makes).
#[derive(Debug)]
#[must_use = "a reservation ends when it is dropped"]
pub(super) struct Reservation {
    shared: Option<Shared>,
    claim: Claim,
}

impl Reservation {
    fn new(shared: &Shared, claim: Claim) -> Self {
        Self {
            shared: Some(shared.clone()),
            claim,
        }
    }

    pub(super) fn none() -> Self {
        Self {
            shared: None,
            claim: Claim::None,
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let Some(shared) = &self.shared else { return };
        let mut state = shared.lock();
        match &self.claim {
            Claim::None => {}
            Claim::Id(id) => {
                state.busy.remove(id);
            }
            Claim::Sandbox => {
                if state.phase == Phase::Creating {
                    state.phase = Phase::None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> Id {
        Id::parse("container_id", s).unwrap()
    }

    fn created() -> Shared {
        let shared = Shared::default();
        shared.lock().phase = Phase::Created(id("sb"));
        shared
    }

    fn pull(container: &str) -> AgentRequest {
        AgentRequest::PullImage {
            container: id(container),
            reference: "registry.example/a@sha256:00".into(),
        }
    }

    #[test]
    fn an_id_is_reserved_once_until_its_work_ends() {
        let shared = created();
        let first = shared.reserve(&mut shared.lock(), &pull("c1")).unwrap();
        let err = shared.reserve(&mut shared.lock(), &pull("c1")).unwrap_err();
        assert!(
            err.to_string().contains("another operation in progress"),
            "{err}"
        );
        // Another id is independent.
        let _other = shared.reserve(&mut shared.lock(), &pull("c2")).unwrap();
        drop(first);
        let again = shared.reserve(&mut shared.lock(), &pull("c1"));
        assert!(again.is_ok());
    }

    #[test]
    fn nothing_is_reserved_without_a_sandbox() {
        let shared = Shared::default();
        assert!(matches!(
            shared.reserve(&mut shared.lock(), &pull("c1")),
            Err(AgentError::NoSandbox)
        ));
    }

    #[test]
    fn one_create_sandbox_at_a_time_and_a_failed_one_leaves_none() {
        let shared = Shared::default();
        let create = AgentRequest::CreateSandbox {
            sandbox_id: id("sb"),
            hostname: None,
            tunnels: vec![],
            published: vec![],
            network: None,
        };
        let first = shared.reserve(&mut shared.lock(), &create).unwrap();
        assert!(matches!(
            shared.reserve(&mut shared.lock(), &create),
            Err(AgentError::FailedPrecondition(_))
        ));
        // The first fails (dropped before it set the sandbox): a new one may try.
        drop(first);
        let second = shared.reserve(&mut shared.lock(), &create).unwrap();
        shared.lock().phase = Phase::Created(id("sb"));
        drop(second);
        assert!(matches!(
            shared.reserve(&mut shared.lock(), &create),
            Err(AgentError::SandboxExists(_))
        ));
    }

    #[test]
    fn the_policy_sees_nothing_but_what_it_is_shown() {
        let shared = created();
        assert_eq!(shared.lock().policy_view(), pol::SandboxState::default());
    }
}
