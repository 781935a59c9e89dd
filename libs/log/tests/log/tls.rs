//! The Kafka log over TLS, as to Amazon MSK: the broker's TLS listener at
//! `KAFKA_TLS_BOOTSTRAP`, whose certificate the CA at `KAFKA_TLS_CA` signed
//! (`scripts/lib/kafka.sh`'s `start_kafka`). The librdkafka properties come from `RUNNEL__`
//! variables through runnel-config's environment layer, which spells their keys with dashes
//! (`security-protocol`), as a container configured by its environment alone would have them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use runnel_config::Config;
use runnel_log::{LogError, StartOffset};

use crate::fixtures::{Fixture, read_n, to_partition, value_str};

/// The Kafka fixture on the TLS listener, its properties set by `RUNNEL__` variables; `None`
/// as [`Fixture::kafka_at`].
fn tls_fixture() -> Option<Fixture> {
    Fixture::kafka_at("KAFKA_TLS_BOOTSTRAP", |config| {
        let ca = std::env::var("KAFKA_TLS_CA")
            .expect("KAFKA_TLS_CA is set with KAFKA_TLS_BOOTSTRAP (scripts/lib/kafka.sh)");
        let env = HashMap::from([
            (
                "RUNNEL__STORAGE__LOG__KAFKA__PROPERTIES__SECURITY_PROTOCOL".to_string(),
                "SSL".to_string(),
            ),
            (
                "RUNNEL__STORAGE__LOG__KAFKA__PROPERTIES__SSL_CA_LOCATION".to_string(),
                ca.clone(),
            ),
        ]);
        let from_env = Config::load(&[], &env).expect("load the config with the variables");
        config.properties = from_env.storage.log.kafka.properties;
        assert_eq!(
            config
                .properties
                .get("security-protocol")
                .map(String::as_str),
            Some("SSL")
        );
        assert_eq!(config.properties.get("ssl-ca-location"), Some(&ca));
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_round_trip_over_tls_with_properties_from_the_environment() {
    let Some(fixture) = tls_fixture() else {
        return;
    };
    let log = fixture.log();
    let topic = fixture.topic("tls");
    log.ensure_topic(&topic, 2)
        .await
        .expect("create topic over TLS");
    let records = (0..20)
        .map(|idx| to_partition(idx % 2, &format!("r{idx}"), 1_000 + i64::from(idx)))
        .collect();
    log.append(&topic, records).await.expect("append over TLS");
    for partition in 0..2 {
        let read = read_n(log.as_ref(), &topic, partition, StartOffset::Earliest, 10).await;
        let values: Vec<&str> = read.iter().map(value_str).collect();
        let expected: Vec<String> = (0..20)
            .filter(|idx| idx % 2 == partition)
            .map(|idx| format!("r{idx}"))
            .collect();
        assert_eq!(values, expected, "partition {partition}");
        let offsets: Vec<u64> = read.iter().map(|record| record.offset).collect();
        assert_eq!(
            offsets,
            (0..10).collect::<Vec<u64>>(),
            "partition {partition}"
        );
    }
}

/// Without the CA the broker's certificate does not verify: calls fail within the request
/// timeout (librdkafka retries the handshake, so a failure must not turn into a hang).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_certificate_that_does_not_verify_gives_errors_not_hangs() {
    let Some(fixture) = tls_fixture() else {
        return;
    };
    let topic = fixture.topic("tls-unverified");
    fixture
        .log()
        .ensure_topic(&topic, 1)
        .await
        .expect("create topic with the CA");
    let request_timeout = Duration::from_secs(3);
    let unverified = fixture
        .another_kafka_log(|config| {
            config.properties.remove("ssl-ca-location");
            config.request_timeout = request_timeout;
        })
        .expect("a Kafka fixture");
    // Each call waits out the request timeout once; the rest is slack for a busy machine.
    let limit = request_timeout * 3;
    let other_topic = fixture.topic("tls-unverified-new");
    fails_within(
        "create topic",
        limit,
        unverified.ensure_topic(&other_topic, 1),
    )
    .await;
    let records = vec![to_partition(0, "never", 1_000)];
    fails_within("append", limit, unverified.append(&topic, records)).await;
    let reader = unverified.reader(&topic, 0, StartOffset::Earliest);
    fails_within("open reader", limit, reader).await;
}

/// Asserts that `call` fails within `limit`, and gives up on it after a minute.
async fn fails_within<T>(
    action: &str,
    limit: Duration,
    call: impl Future<Output = Result<T, LogError>>,
) {
    let started = Instant::now();
    let res = tokio::time::timeout(Duration::from_secs(60), call).await;
    let elapsed = started.elapsed();
    match res {
        Err(_) => panic!("{action} hung for {elapsed:?}"),
        Ok(Ok(_)) => panic!("{action} succeeded against a certificate that does not verify"),
        Ok(Err(error)) => assert!(
            elapsed < limit,
            "{action} failed after {elapsed:?}, not within {limit:?}: {error}"
        ),
    }
}
