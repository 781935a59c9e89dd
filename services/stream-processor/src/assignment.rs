//! A job's share of the work in this instance: the partitions its group assigns here.
//!
//! Instances of the stream-processor share each job's partitions as Kafka Streams shares
//! tasks: each joins the job's group (`members_group`) over `<job>.members`, which has the
//! stream's partition count, and runs the task (and, for a repartitioned job, the router) of
//! every partition it is assigned. A revoked partition's tasks are stopped first (each
//! checkpoints as it stops) and only then let go, so the next owner resumes from exactly
//! where this one stopped and writes the same records. On the embedded log the one
//! instance owns every partition.

use std::collections::BTreeMap;
use std::sync::Arc;

use runnel_log::{GroupMembership, OwnershipChange};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use crate::StreamProcessorError;
use crate::router::Router;
use crate::task::{Task, TaskContext};
use runnel_jobs::{Job, members_group, members_topic};

/// What a finished task or router returns: its partition and how it ended.
type Finished = (u32, Result<(), StreamProcessorError>);

/// The partitions of one job running here.
struct Running {
    job: Arc<Job>,
    source_partitions: u32,
    context: TaskContext,
    /// Per owned partition: the token that stops its task and router, and how many of them
    /// are still running.
    owned: BTreeMap<u32, (CancellationToken, usize)>,
    tasks: JoinSet<Finished>,
    shutdown: CancellationToken,
}

impl Running {
    /// Opens and starts the task (and router) of `partition`.
    async fn start(&mut self, partition: u32) -> Result<(), StreamProcessorError> {
        if self.owned.contains_key(&partition) {
            warn!(partition, "assigned a partition already running here");
            return Ok(());
        }
        let token = self.shutdown.child_token();
        let mut started = 0;
        if self.job.repartition {
            let router =
                Router::open(Arc::clone(&self.job), partition, self.context.clone()).await?;
            let span = info_span!("router", job = %self.job.name, partition);
            let stop = token.clone();
            self.tasks
                .spawn(async move { (partition, router.run(stop).await) }.instrument(span));
            started += 1;
        }
        let task = Task::open(
            Arc::clone(&self.job),
            partition,
            self.source_partitions,
            self.context.clone(),
        )
        .await?;
        let span = info_span!("task", job = %self.job.name, partition);
        let stop = token.clone();
        self.tasks
            .spawn(async move { (partition, task.run(stop).await) }.instrument(span));
        started += 1;
        self.owned.insert(partition, (token, started));
        Ok(())
    }

    /// Accounts for a finished task or router; a failure, or one ending unasked, is an error.
    fn finished(
        &mut self,
        joined: Result<Finished, tokio::task::JoinError>,
    ) -> Result<(), StreamProcessorError> {
        self.account(joined).1
    }

    /// Accounts for a finished task or router: its partition (unknown if it panicked) and
    /// how it ended, an error for a failure or for one that ended unasked. A partition whose
    /// task and router have both ended is no longer owned here.
    fn account(
        &mut self,
        joined: Result<Finished, tokio::task::JoinError>,
    ) -> (Option<u32>, Result<(), StreamProcessorError>) {
        let (partition, ended) = match joined {
            Ok(finished) => finished,
            Err(join_error) => {
                return (
                    None,
                    Err(StreamProcessorError::Task {
                        job: self.job.name.clone(),
                        partition: 0,
                        message: join_error.to_string(),
                    }),
                );
            }
        };
        let asked = match self.owned.get_mut(&partition) {
            Some((token, running)) => {
                let asked = token.is_cancelled();
                *running -= 1;
                if *running == 0 {
                    self.owned.remove(&partition);
                    self.context.status.unregister(&self.job.name, partition);
                }
                asked
            }
            None => true,
        };
        // The job's supervisor logs a failure and restarts the job.
        let result = ended.and_then(|()| {
            if asked {
                Ok(())
            } else {
                Err(StreamProcessorError::Task {
                    job: self.job.name.clone(),
                    partition,
                    message: "stopped without being asked to".to_string(),
                })
            }
        });
        (Some(partition), result)
    }

    /// Stops the tasks of `partitions` and waits until they have checkpointed and ended. A
    /// task of one of them that fails meanwhile is logged and counts as stopped: its
    /// partition is leaving, and its next owner resumes from its last checkpoint. Failing
    /// the job here would leave the group in the middle of a cooperative rebalance, and a
    /// static member that rejoins then gets its old assignment back without the second
    /// round that hands the revoked partitions to their new owner: they would stay with
    /// nobody (seen in the compose test). Another task's failure is the job's.
    async fn stop(&mut self, partitions: &[u32]) -> Result<(), StreamProcessorError> {
        for partition in partitions {
            if let Some((token, _)) = self.owned.get(partition) {
                token.cancel();
            }
        }
        while partitions
            .iter()
            .any(|partition| self.owned.contains_key(partition))
        {
            let Some(joined) = self.tasks.join_next().await else {
                break;
            };
            match self.account(joined) {
                (_, Ok(())) => {}
                (Some(partition), Err(error)) if partitions.contains(&partition) => {
                    warn!(job = %self.job.name, partition, %error,
                        "a task failed while its partition was being let go; its next owner resumes from its last checkpoint");
                }
                (_, Err(error)) => return Err(error),
            }
        }
        Ok(())
    }

    /// Stops every task here, returning the first failure.
    async fn stop_all(&mut self) -> Result<(), StreamProcessorError> {
        let partitions: Vec<u32> = self.owned.keys().copied().collect();
        for (token, _) in self.owned.values() {
            token.cancel();
        }
        let mut first_error = None;
        while let Some(joined) = self.tasks.join_next().await {
            if let Err(error) = self.finished(joined) {
                first_error.get_or_insert(error);
            }
        }
        for partition in partitions {
            self.context.status.unregister(&self.job.name, partition);
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Runs `job` on the partitions its group assigns to this instance, until `shutdown` is
/// cancelled or one of its tasks fails; then stops every task here (each checkpoints) and
/// leaves the group, so the other instances take the partitions over at once.
///
/// # Errors
///
/// Log failures joining or following the group, and the first task failure.
pub(crate) async fn run_job(
    job: Arc<Job>,
    source_partitions: u32,
    context: TaskContext,
    shutdown: CancellationToken,
) -> Result<(), StreamProcessorError> {
    let (group, topic) = (members_group(&job.name), members_topic(&job.name));
    let mut membership = context
        .log
        .join_group(&group, &topic)
        .await
        .map_err(|source| StreamProcessorError::log(&topic, source))?;
    let mut running = Running {
        job: Arc::clone(&job),
        source_partitions,
        context,
        owned: BTreeMap::new(),
        tasks: JoinSet::new(),
        shutdown: shutdown.clone(),
    };
    let followed = follow(&mut running, membership.as_mut(), &topic, &shutdown).await;
    let stopped = running.stop_all().await;
    if let Err(error) = membership.leave().await {
        warn!(job = %job.name, %error, "leaving the group failed; the others wait for the session timeout");
    }
    followed.and(stopped)
}

/// Applies the group's changes until `shutdown` or a failure.
async fn follow(
    running: &mut Running,
    membership: &mut dyn GroupMembership,
    topic: &str,
    shutdown: &CancellationToken,
) -> Result<(), StreamProcessorError> {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            change = membership.next_change() => {
                match change.map_err(|source| StreamProcessorError::log(topic, source))? {
                    OwnershipChange::Assigned(partitions) => {
                        info!(job = %running.job.name, ?partitions, "partitions assigned here");
                        for partition in partitions {
                            // Opening a task takes a while (on Kafka with exactly-once, it
                            // fences every other writer of the partition): a member that was
                            // paused meanwhile and has lost the partition leaves it alone.
                            if !membership.owns(partition) {
                                warn!(job = %running.job.name, partition, "no longer owned here; not starting its task");
                                continue;
                            }
                            running.start(partition).await?;
                        }
                    }
                    OwnershipChange::Revoked(revocation) => {
                        info!(job = %running.job.name, partitions = ?revocation.partitions, "partitions moving away; stopping their tasks");
                        running.stop(&revocation.partitions).await?;
                        info!(job = %running.job.name, partitions = ?revocation.partitions, "partitions let go");
                        revocation.done();
                    }
                }
            }
            Some(joined) = running.tasks.join_next(), if !running.tasks.is_empty() => {
                running.finished(joined)?;
            }
        }
    }
}
