//! The archiver's metrics over loopback, as `runnel archive` serves them
//! (`runnel_archive::status::serve`): files, rows and bytes written, and the lag behind the
//! log, per partition, agree with the manifest; the exposition parses.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use runnel_archive::ArchiverStatus;
use runnel_metrics::{MetricType, ParsedMetrics, parse_text};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

/// Scrapes `GET /metrics` at `address` and parses it.
async fn scrape(address: SocketAddr) -> ParsedMetrics {
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    parse_text(body).unwrap_or_else(|error| panic!("{error}\n{body}"))
}

#[tokio::test]
async fn files_rows_bytes_and_lag_per_partition_agree_with_the_manifest() {
    let mut fixture = Fixture::new(2).await;
    // Files roll by size only: the last file of each partition stays open, so what it holds
    // is read but not archived, and counts as lag.
    fixture.config.archive.max_file_age = Duration::from_secs(3600);
    let start = now_ms();
    let events = fixture.append(0, 1000, 100, |n| start + n as i64).await;
    let ends = partition_ends(&events, 2);

    let status = ArchiverStatus::new();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(runnel_archive::status::serve(
        listener,
        Arc::clone(&status),
        shutdown.clone(),
    ));
    let before = scrape(address).await;
    assert_eq!(
        before.types.get("runnel_archiver_lag_records"),
        Some(&MetricType::Gauge)
    );
    assert!(before.family("runnel_archiver_lag_records").is_empty());
    let archiver = tokio::spawn({
        let (config, log, store, status, shutdown) = (
            fixture.config.clone(),
            fixture.log(),
            fixture.store.clone(),
            Arc::clone(&status),
            shutdown.clone(),
        );
        async move {
            runnel_archive::run_archiver_with_status(&config, log, store, status, shutdown).await
        }
    });

    // Every record is read and every full file written once a scrape and the manifest agree
    // and stay so.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut agreed = 0;
    let (metrics, manifest) = loop {
        let metrics = scrape(address).await;
        let manifest = runnel_archive::load_manifest(
            fixture.store.as_ref(),
            &fixture.config.archive.prefix,
            &fixture.stream,
        )
        .await
        .unwrap();
        let agree = manifest.as_ref().is_some_and(|manifest| {
            (0..2u32).all(|partition| {
                let labels = [("stream", STREAM), ("partition", &partition.to_string())];
                let files = manifest.partition_files(partition).count() as f64;
                files > 0.0
                    && metrics.value("runnel_archiver_files_total", &labels) == Some(files)
                    && metrics.value("runnel_archiver_log_end_offset", &labels)
                        == Some(ends[partition as usize] as f64)
            })
        });
        agreed = if agree { agreed + 1 } else { 0 };
        if agreed == 3 {
            break (metrics, manifest.unwrap());
        }
        assert!(
            Instant::now() < deadline,
            "the archiver caught up within 30 s: {:#?}",
            metrics.samples
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut lag_total = 0;
    for partition in 0..2u32 {
        let partition_text = partition.to_string();
        let labels = [("stream", STREAM), ("partition", partition_text.as_str())];
        let files: Vec<_> = manifest.partition_files(partition).collect();
        let next = manifest.next_offset(partition).unwrap();
        let rows: u64 = files.iter().map(|file| file.rows).sum();
        let bytes: u64 = files.iter().map(|file| file.bytes).sum();
        assert!(rows > 0, "partition {partition}'s events were decoded");
        let lag = ends[partition as usize] - next;
        lag_total += lag;
        for (name, expect) in [
            ("runnel_archiver_rows_total", rows),
            ("runnel_archiver_written_bytes_total", bytes),
            ("runnel_archiver_archived_until_offset", next),
            ("runnel_archiver_lag_records", lag),
            ("runnel_archiver_partition_corrupt", 0),
        ] {
            assert_eq!(
                metrics.value(name, &labels),
                Some(expect as f64),
                "{name} of partition {partition}"
            );
        }
    }
    assert!(lag_total > 0, "the open files' records are not archived");
    assert_eq!(
        metrics.value("runnel_archiver_stream_errors_total", &[("stream", STREAM)]),
        Some(0.0)
    );

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), archiver)
        .await
        .expect("the archiver stops within 10 s")
        .unwrap()
        .unwrap();
    server.await.unwrap().unwrap();
}
