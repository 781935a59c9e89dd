//! The demo's click stream: users clicking in bursts over Zipf-like pages, some events late,
//! sent to the ingest service over gRPC; and the users' changelog (`user_updates`, the table
//! `users`): each user's plan at the start, then a plan change or a deleted user now and then.

use std::collections::BinaryHeap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use runnel_proto::client::Connection;
use runnel_proto::ingest::v1::ingest_client::IngestClient;
use runnel_proto::ingest::v1::{IngestRequest, JsonEvents, ingest_request::Events};
use runnel_time::now_millis;
use tokio_util::sync::CancellationToken;
/// A small xorshift generator: the demo needs variety, not statistics.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const PAGES: [&str; 12] = [
    "/home",
    "/search",
    "/product/1",
    "/product/2",
    "/product/3",
    "/cart",
    "/checkout",
    "/help",
    "/blog",
    "/about",
    "/careers",
    "/pricing",
];
const COUNTRIES: [&str; 8] = ["de", "fr", "us", "br", "jp", "in", "gb", "es"];
const PLANS: [&str; 3] = ["free", "pro", "team"];

/// Sends `events` to `stream`: how many were accepted and rejected, or the refusal.
async fn send(
    client: &mut IngestClient<Connection>,
    stream: &str,
    events: Vec<Bytes>,
) -> Result<(u64, u64), tonic::Status> {
    let sent = events.len() as u64;
    match client
        .ingest(IngestRequest {
            stream: stream.to_string(),
            all_or_nothing: false,
            events: Some(Events::Json(JsonEvents { events })),
        })
        .await
    {
        Ok(response) => {
            let response = response.into_inner();
            Ok((response.accepted, response.rejected))
        }
        Err(status) if status.code() == tonic::Code::ResourceExhausted => Ok((0, sent)),
        Err(status) => Err(status),
    }
}

/// A `user_updates` row: `user`'s plan from `at` on, or (`None`) the user deleted.
fn user_update(user: u64, at: i64, plan: Option<&str>) -> Bytes {
    Bytes::from(match plan {
        Some(plan) => format!(r#"{{"event_time":{at},"user_id":"u{user}","plan":"{plan}"}}"#),
        None => format!(r#"{{"event_time":{at},"user_id":"u{user}","deleted":true}}"#),
    })
}

/// Counters the screen shows.
#[derive(Debug, Default)]
pub(super) struct Generated {
    pub(super) events: AtomicU64,
    pub(super) late: AtomicU64,
    pub(super) rejected: AtomicU64,
}

/// Users click in bursts (a click every 0.3-3 s, ending with 15% chance after each), then
/// idle 15-60 s; pages are Zipf-like, 2% of events are sent late. Every user has a plan from
/// two minutes before the start (before any late click); about every 200 ms a user changes
/// plan, and one change in ten deletes the user (whose clicks then join no plan).
pub(super) async fn generate(
    mut client: IngestClient<Connection>,
    rate: u32,
    counters: Arc<Generated>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut random = Random(0x9e37_79b9_7f4a_7c15);
    // About 7 clicks per 48 s cycle per user.
    let users = u64::from(rate) * 7;
    let started = now_millis();
    let mut next: BinaryHeap<std::cmp::Reverse<(i64, u64)>> = (0..users)
        .map(|user| std::cmp::Reverse((started + random.below(30_000) as i64, user)))
        .collect();
    let plans: Vec<Bytes> = (0..users)
        .map(|user| {
            user_update(
                user,
                started - 120_000,
                Some(PLANS[(user % PLANS.len() as u64) as usize]),
            )
        })
        .collect();
    for chunk in plans.chunks(1_000) {
        send(&mut client, "user_updates", chunk.to_vec())
            .await
            .map_err(|status| anyhow::anyhow!("ingest refused the demo's users: {status}"))?;
    }
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        let now = now_millis();
        let mut events = Vec::new();
        while let Some(std::cmp::Reverse((at, user))) = next.peek().copied() {
            if at > now {
                break;
            }
            next.pop();
            let page_rank = (random.below(1000) * random.below(1000) / 1000 * PAGES.len() as u64
                / 1000) as usize;
            let page = PAGES[page_rank.min(PAGES.len() - 1)];
            let country = COUNTRIES[(user % COUNTRIES.len() as u64) as usize];
            let mut event_time = at;
            if random.chance(2) {
                event_time -= 5_000 + random.below(55_000) as i64;
                counters.late.fetch_add(1, Ordering::Relaxed);
            }
            events.push(Bytes::from(format!(
                r#"{{"event_time":{event_time},"user_id":"u{user}","page":"{page}","country":"{country}","duration_ms":{}}}"#,
                200 + random.below(5_000)
            )));
            let gap = if random.chance(15) {
                15_000 + random.below(45_000)
            } else {
                300 + random.below(2_700)
            };
            next.push(std::cmp::Reverse((at + gap as i64, user)));
        }
        let mut updates = Vec::new();
        if random.chance(50) {
            let user = random.below(users);
            let plan = (!random.chance(10)).then(|| PLANS[random.below(3) as usize]);
            updates.push(user_update(user, now, plan));
        }
        for (stream, events) in [("user_updates", updates), ("clicks", events)] {
            if events.is_empty() {
                continue;
            }
            match send(&mut client, stream, events).await {
                Ok((accepted, rejected)) => {
                    counters.events.fetch_add(accepted, Ordering::Relaxed);
                    counters.rejected.fetch_add(rejected, Ordering::Relaxed);
                }
                Err(status) => {
                    if shutdown.is_cancelled() {
                        return Ok(());
                    }
                    return Err(anyhow::anyhow!(
                        "ingest refused the demo's events: {status}"
                    ));
                }
            }
        }
    }
}
