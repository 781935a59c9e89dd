//! The demo's click stream: users clicking in bursts over Zipf-like pages, some events late,
//! sent to the ingest service over gRPC.

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

/// Counters the screen shows.
#[derive(Debug, Default)]
pub(super) struct Generated {
    pub(super) events: AtomicU64,
    pub(super) late: AtomicU64,
    pub(super) rejected: AtomicU64,
}

/// Users click in bursts (a click every 0.3-3 s, ending with 15% chance after each), then
/// idle 15-60 s; pages are Zipf-like, 2% of events are sent late.
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
        if events.is_empty() {
            continue;
        }
        let sent = events.len() as u64;
        let answer = client
            .ingest(IngestRequest {
                stream: "clicks".to_string(),
                all_or_nothing: false,
                events: Some(Events::Json(JsonEvents { events })),
            })
            .await;
        match answer {
            Ok(response) => {
                let response = response.into_inner();
                counters
                    .events
                    .fetch_add(response.accepted, Ordering::Relaxed);
                counters
                    .rejected
                    .fetch_add(response.rejected, Ordering::Relaxed);
            }
            Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                counters.rejected.fetch_add(sent, Ordering::Relaxed);
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
