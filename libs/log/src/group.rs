//! Group membership: several processes share the partitions of a topic, each partition
//! owned by one member at a time, as in a Kafka consumer group.
//!
//! A member learns what it owns from [`GroupMembership::next_change`]. A revocation waits
//! for the member to let go ([`Revocation::done`]) before the group gives the partitions to
//! another member, so two members never work on one partition at once (unless a member
//! stops answering for longer than the session timeout: then the group presumes it dead).

use async_trait::async_trait;
use tokio::sync::oneshot;

use crate::LogError;

/// A change in the partitions this member owns.
#[derive(Debug)]
pub enum OwnershipChange {
    /// These partitions are now this member's, in addition to those it had.
    Assigned(Vec<u32>),
    /// These partitions are being taken away: stop using them, then call
    /// [`Revocation::done`].
    Revoked(Revocation),
}

/// Partitions being taken from this member. The group hands them to another member only
/// once this is done or dropped.
#[derive(Debug)]
pub struct Revocation {
    /// The partitions, ascending.
    pub partitions: Vec<u32>,
    done: Option<oneshot::Sender<()>>,
}

impl Revocation {
    /// A revocation that `done` tells about.
    pub(crate) fn new(partitions: Vec<u32>, done: oneshot::Sender<()>) -> Revocation {
        Revocation {
            partitions,
            done: Some(done),
        }
    }

    /// Says that this member no longer uses the partitions.
    pub fn done(mut self) {
        if let Some(done) = self.done.take() {
            // The group may have stopped waiting (the member is leaving): nothing to tell.
            let _ = done.send(());
        }
    }
}

/// This process's membership of a group over a topic's partitions. Dropping it leaves the
/// group; [`GroupMembership::leave`] also waits until the group knows.
#[async_trait]
pub trait GroupMembership: Send {
    /// Waits for the next change in what this member owns. The first change is the initial
    /// assignment. Cancel-safe: a dropped call loses no change.
    ///
    /// # Errors
    ///
    /// A fatal error of the group client; the membership is then unusable.
    async fn next_change(&mut self) -> Result<OwnershipChange, LogError>;

    /// Whether this member still owns `partition` as far as it knows now, ahead of the
    /// changes not yet taken from [`GroupMembership::next_change`]: false once a revocation
    /// of it has been announced, or once the member has lost its whole assignment (it was
    /// away longer than the session timeout, and the group may have given the partitions to
    /// another member). Ask before starting work on a partition assigned a while ago.
    fn owns(&self, partition: u32) -> bool;

    /// Leaves the group, so that the others take over this member's partitions at once
    /// rather than after the session timeout. Stop using the partitions first.
    ///
    /// # Errors
    ///
    /// Backend errors while leaving.
    async fn leave(self: Box<Self>) -> Result<(), LogError>;
}
