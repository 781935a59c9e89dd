//! Group membership (`Log::join_group`): who owns which partition of a topic.

use std::collections::BTreeSet;
use std::time::Duration;

use runnel_log::{GroupMembership, LogError, OwnershipChange};

use crate::fixtures::Fixture;

/// Long enough for a broker's group join and a rebalance (tansu answers in a few seconds).
const CHANGE_TIMEOUT: Duration = Duration::from_secs(60);

async fn next_change(member: &mut Box<dyn GroupMembership>, who: &str) -> OwnershipChange {
    tokio::time::timeout(CHANGE_TIMEOUT, member.next_change())
        .await
        .unwrap_or_else(|_| panic!("member {who}: no ownership change within {CHANGE_TIMEOUT:?}"))
        .unwrap_or_else(|error| panic!("member {who}: {error}"))
}

/// Applies a change to what a member owns; a revocation is acknowledged at once (the member
/// holds nothing to stop).
fn apply(owned: &mut BTreeSet<u32>, change: OwnershipChange, who: &str) {
    match change {
        OwnershipChange::Assigned(partitions) => {
            for partition in partitions {
                assert!(
                    owned.insert(partition),
                    "{who} was assigned {partition} twice"
                );
            }
        }
        OwnershipChange::Revoked(revocation) => {
            for partition in &revocation.partitions {
                assert!(
                    owned.remove(partition),
                    "{who} lost {partition}, which it did not own"
                );
            }
            revocation.done();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_member_owns_every_partition() {
    let fixture = Fixture::embedded().await;
    let log = fixture.log();
    let topic = fixture.topic("members");
    log.ensure_topic(&topic, 3).await.expect("create topic");
    let mut member = log.join_group("g", &topic).await.expect("join");
    match next_change(&mut member, "sole").await {
        OwnershipChange::Assigned(partitions) => assert_eq!(partitions, vec![0, 1, 2]),
        OwnershipChange::Revoked(revocation) => panic!("revoked {:?}", revocation.partitions),
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(200), member.next_change())
            .await
            .is_err(),
        "the sole member keeps its partitions"
    );
    member.leave().await.expect("leave");
    assert!(matches!(
        log.join_group("g", "no-such-topic").await.err(),
        Some(LogError::UnknownTopic(_))
    ));
}

/// Two members split a topic's partitions without ever owning one partition both at once,
/// and the one that stays takes everything back when the other leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_members_share_partitions_and_hand_over() {
    let Some(fixture) = Fixture::kafka() else {
        return;
    };
    let log = fixture.log();
    let topic = fixture.topic("members");
    let group = fixture.topic("members-group");
    let all: BTreeSet<u32> = (0..4).collect();
    log.ensure_topic(&topic, 4).await.expect("create topic");
    let mut first = log.join_group(&group, &topic).await.expect("join first");
    let mut owned_first = BTreeSet::new();
    while owned_first != all {
        let change = next_change(&mut first, "first").await;
        apply(&mut owned_first, change, "first");
    }

    let mut second = log.join_group(&group, &topic).await.expect("join second");
    let mut owned_second = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + CHANGE_TIMEOUT;
    while owned_first.is_empty()
        || owned_second.is_empty()
        || owned_first
            .union(&owned_second)
            .copied()
            .collect::<BTreeSet<_>>()
            != all
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no balanced split: first {owned_first:?}, second {owned_second:?}"
        );
        tokio::select! {
            change = next_change(&mut first, "first") => apply(&mut owned_first, change, "first"),
            change = next_change(&mut second, "second") => apply(&mut owned_second, change, "second"),
        }
        assert!(
            owned_first.is_disjoint(&owned_second),
            "a partition has two owners: first {owned_first:?}, second {owned_second:?}"
        );
    }
    assert_eq!(owned_first.len(), 2, "an even split of 4 partitions");

    second.leave().await.expect("second leaves");
    while owned_first != all {
        let change = next_change(&mut first, "first").await;
        apply(&mut owned_first, change, "first");
    }
    first.leave().await.expect("first leaves");
}
