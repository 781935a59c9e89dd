//! `runnel log ...`: append a record, tail a partition, show offsets, through the `Log` trait;
//! check the embedded log's files for damage and repair a damaged partition.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::{ArgGroup, Args, Subcommand};
use runnel_config::{Config, LogBackend};
use runnel_log::{
    Log, PartitionCheck, ProduceRecord, Record, RepairAction, RepairReport, StartOffset,
};
use tokio_util::sync::CancellationToken;

/// How many records `tail` asks the log for at once.
const TAIL_BATCH_RECORDS: u64 = 1000;

/// How long one `tail` read waits for new records before checking for Ctrl-C again.
const TAIL_POLL_WAIT: Duration = Duration::from_secs(1);

/// Timestamps from this many milliseconds after the epoch on (year 10000) are printed as
/// numbers, since RFC 3339 has four-digit years.
const MAX_RFC3339_MILLIS: i64 = 253_402_300_800_000;

/// The `runnel log` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum LogCommand {
    /// Appends one record to a topic and prints its partition and offset once it is durable.
    Produce(ProduceArgs),
    /// Prints the records of one partition as `offset timestamp key value` lines.
    ///
    /// The timestamp is RFC 3339 in UTC (epoch milliseconds when out of that range). A
    /// missing key prints as `-`, an empty one as `""`. Control characters, backslashes,
    /// spaces in keys and bytes that are not UTF-8 are escaped (`\n`, `\\`, `\x20`, `\xff`),
    /// so every record is one line. Stops after `--max` records, or on Ctrl-C.
    Tail(TailArgs),
    /// Prints the earliest and latest offset of every partition of a topic.
    ///
    /// `earliest` is the oldest retained record; `latest` is the offset the next appended
    /// record will get. With `--group`, also the offset the group committed (`-` if none).
    Offsets(OffsetsArgs),
    /// Scans the embedded log's partitions for damaged records and index problems.
    ///
    /// Every topic's partitions, or those of `--topic` (only `--partition`, if given). Each
    /// bad frame is printed with its file, byte position and the offsets it makes
    /// unreadable, with the `runnel log repair` command that recovers it. Read-only and
    /// lock-free, so it runs beside the services. Exits non-zero if anything is wrong.
    /// The Kafka backend has no such files: there the command says so and fails.
    Check(CheckArgs),
    /// Recovers a damaged partition of the embedded log, after asking for confirmation.
    ///
    /// `--skip-range FIRST-LAST` replaces the records of those offsets with a marker that
    /// readers step over: every other offset keeps its record and its number.
    /// `--truncate-after OFFSET` drops every record after OFFSET (new appends reuse the
    /// offsets). Stop the process that writes the partition first (the repair takes its
    /// `writer.lock` and refuses while it is held). What is removed is kept under
    /// `<partition>/repairs/`, and every repair is recorded in `<partition>/repairs.jsonl`.
    /// Without `--yes` it asks to type the partition name (`clicks/0`) on a terminal, and
    /// refuses when stdin is not one.
    Repair(RepairArgs),
}

/// Arguments of `runnel log check`.
#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// Topic to check (all topics without it).
    #[arg(long)]
    topic: Option<String>,
    /// Partition to check (all of the topic's without it).
    #[arg(long, requires = "topic")]
    partition: Option<u32>,
}

/// Arguments of `runnel log repair`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("action").required(true).args(["truncate_after", "skip_range"])))]
pub(crate) struct RepairArgs {
    /// Topic of the partition.
    #[arg(long)]
    topic: String,
    /// Partition to repair.
    #[arg(long)]
    partition: u32,
    /// Drops every record after this offset, and the segments after it.
    #[arg(long, value_name = "OFFSET")]
    truncate_after: Option<u64>,
    /// Skips these offsets (inclusive; one offset alone is `N`): their records are replaced
    /// by a marker readers step over.
    #[arg(long, value_name = "FIRST-LAST", value_parser = parse_offset_range)]
    skip_range: Option<(u64, u64)>,
    /// Repairs without asking.
    #[arg(long)]
    yes: bool,
}

/// Arguments of `runnel log produce`.
#[derive(Debug, Args)]
pub(crate) struct ProduceArgs {
    /// Topic to append to; it must exist (every declared stream has one).
    #[arg(long)]
    topic: String,
    /// Record key. Records with a key go to its partition by Kafka's default partitioner
    /// (murmur2); without one, records are spread round robin.
    #[arg(long)]
    key: Option<String>,
    /// Record value, stored as its UTF-8 bytes.
    #[arg(long)]
    value: String,
    /// Appends to this partition instead of the key's.
    #[arg(long)]
    partition: Option<u32>,
    /// Record timestamp: epoch milliseconds, RFC 3339 (`2025-01-31T12:00:00.5Z`) or relative
    /// to now (`-1h`).
    /// Defaults to now.
    #[arg(long, value_parser = runnel_time::parse_time_flag)]
    timestamp: Option<i64>,
}

/// Arguments of `runnel log tail`.
#[derive(Debug, Args)]
pub(crate) struct TailArgs {
    /// Topic to read.
    #[arg(long)]
    topic: String,
    /// Partition to read.
    #[arg(long)]
    partition: u32,
    /// Where to start: `earliest`, `latest` (only records appended from now on) or an offset.
    #[arg(long, value_name = "earliest|latest|OFFSET", default_value = "earliest", value_parser = parse_start_offset)]
    from: StartOffset,
    /// Stops after printing this many records; without it, waits for new records until
    /// Ctrl-C.
    #[arg(long, value_name = "N")]
    max: Option<u64>,
}

/// Arguments of `runnel log offsets`.
#[derive(Debug, Args)]
pub(crate) struct OffsetsArgs {
    /// Topic to describe.
    #[arg(long)]
    topic: String,
    /// Also prints the offsets this consumer group committed.
    #[arg(long)]
    group: Option<String>,
}

/// Runs a `runnel log` subcommand on the log `config` selects.
pub(crate) async fn run(command: LogCommand, config: &Config) -> anyhow::Result<()> {
    match command {
        LogCommand::Produce(args) => produce(open_log(config).await?.as_ref(), args).await,
        LogCommand::Tail(args) => {
            // Installed before opening the log, so Ctrl-C during a slow open (e.g. a Kafka
            // cluster that does not answer) still ends `tail` cleanly.
            let shutdown =
                runnel_server_common::shutdown_on_signal().context("install signal handlers")?;
            tail(open_log(config).await?.as_ref(), args, shutdown).await
        }
        LogCommand::Offsets(args) => offsets(open_log(config).await?.as_ref(), args).await,
        LogCommand::Check(args) => check(config, args).await,
        LogCommand::Repair(args) => repair(config, args).await,
    }
}

/// Fails unless the log is the embedded one: `check` and `repair` work on its files.
fn require_embedded(config: &Config, command: &str) -> anyhow::Result<()> {
    match config.storage.log.backend {
        LogBackend::Embedded => Ok(()),
        LogBackend::Kafka => anyhow::bail!(
            "`runnel log {command}` is not applicable: storage.log.backend is kafka, and it \
             works on the embedded log's segment files only; Kafka brokers check their own \
             segments (see the broker's tools, e.g. kafka-dump-log.sh)"
        ),
    }
}

async fn check(config: &Config, args: CheckArgs) -> anyhow::Result<()> {
    require_embedded(config, "check")?;
    let dir = config.embedded_log_dir();
    let checks = tokio::task::spawn_blocking(move || {
        runnel_log::check_embedded_log(&dir, args.topic.as_deref(), args.partition)
    })
    .await
    .context("run the check")?
    .context("check the embedded log")?;
    let mut out = Vec::new();
    for check in &checks {
        write_check(&mut out, check)?;
    }
    let bad: Vec<&PartitionCheck> = checks.iter().filter(|check| !check.is_ok()).collect();
    if !bad.is_empty() {
        writeln!(
            out,
            "stop the process that writes a partition (the ingest service for a stream, the \
             stream-processor for results) before `runnel log repair`"
        )?;
    }
    std::io::stdout()
        .lock()
        .write_all(&out)
        .context("write to stdout")?;
    let n_problems: usize = bad.iter().map(|check| check.problems.len()).sum();
    anyhow::ensure!(
        bad.is_empty(),
        "found {n_problems} problem(s) in {} of {} partition(s)",
        bad.len(),
        checks.len()
    );
    Ok(())
}

/// Writes what the check found in one partition.
fn write_check(out: &mut Vec<u8>, check: &PartitionCheck) -> anyhow::Result<()> {
    let summary = format!(
        "{} segment(s), offsets {}..{}",
        check.segments, check.earliest_offset, check.next_offset
    );
    match check.problems.len() {
        0 => writeln!(out, "{}/{}: ok ({summary})", check.topic, check.partition)?,
        n => writeln!(
            out,
            "{}/{}: {n} problem(s) ({summary})",
            check.topic, check.partition
        )?,
    }
    for problem in &check.problems {
        let offsets = match (problem.first_offset, problem.last_offset) {
            (Some(first), Some(last)) if first == last => format!("offset {first} unreadable; "),
            (Some(first), Some(last)) => format!("offsets {first}-{last} unreadable; "),
            (Some(first), None) => format!("offsets from {first} on unreadable; "),
            (None, _) => String::new(),
        };
        writeln!(
            out,
            "  {}: {} byte {}: {offsets}{}",
            problem.kind,
            problem.path.display(),
            problem.position,
            problem.reason
        )?;
    }
    for skipped in &check.skipped {
        writeln!(
            out,
            "  skipped by a repair: offsets {}-{} ({} byte {})",
            skipped.first,
            skipped.last,
            skipped.path.display(),
            skipped.position
        )?;
    }
    if check.unfinished_tail_bytes > 0 {
        writeln!(
            out,
            "  {} byte(s) after the last whole record: an append in progress, or a torn tail \
             the next writer truncates",
            check.unfinished_tail_bytes
        )?;
    }
    for command in check.repair_commands() {
        writeln!(out, "  repair: {command}")?;
    }
    Ok(())
}

async fn repair(config: &Config, args: RepairArgs) -> anyhow::Result<()> {
    require_embedded(config, "repair")?;
    let action = match (args.truncate_after, args.skip_range) {
        (Some(offset), None) => RepairAction::TruncateAfter(offset),
        (None, Some((first, last))) => RepairAction::SkipRange { first, last },
        _ => anyhow::bail!("give one of --truncate-after and --skip-range"),
    };
    let name = format!("{}/{}", args.topic, args.partition);
    let dir = config.embedded_log_dir();
    let checks = {
        let (dir, topic) = (dir.clone(), args.topic.clone());
        tokio::task::spawn_blocking(move || {
            runnel_log::check_embedded_log(&dir, Some(&topic), Some(args.partition))
        })
        .await
        .context("run the check")?
        .with_context(|| format!("check {name}"))?
    };
    let mut out = Vec::new();
    for check in &checks {
        write_check(&mut out, check)?;
    }
    let effect = match action {
        RepairAction::TruncateAfter(offset) => format!(
            "drop every record of {name} after offset {offset}; new appends reuse the offsets \
             from {}",
            offset + 1
        ),
        RepairAction::SkipRange { first, last } => format!(
            "skip offsets {first}-{last} of {name}: their records are replaced by a marker \
             readers step over"
        ),
    };
    writeln!(out, "this repair will {effect}")?;
    std::io::stdout()
        .lock()
        .write_all(&out)
        .context("write to stdout")?;
    confirm(args.yes, &name)?;
    let operator = operator_name();
    let index_interval_bytes = config.storage.log.embedded.index_interval_bytes;
    let report = tokio::task::spawn_blocking(move || {
        runnel_log::repair_embedded_partition(
            &dir,
            index_interval_bytes,
            &args.topic,
            args.partition,
            action,
            operator.as_deref(),
        )
    })
    .await
    .context("run the repair")?
    .with_context(|| format!("repair {name}"))?;
    write_report(&report)
}

/// Asks for the partition name on a terminal, unless `yes`.
fn confirm(yes: bool, name: &str) -> anyhow::Result<()> {
    if yes {
        return Ok(());
    }
    anyhow::ensure!(
        std::io::stdin().is_terminal(),
        "refusing to repair {name} unconfirmed: pass --yes (stdin is not a terminal to ask on)"
    );
    let mut stderr = std::io::stderr().lock();
    write!(stderr, "type the partition name ({name}) to repair it: ")?;
    stderr.flush()?;
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .context("read the confirmation")?;
    anyhow::ensure!(
        answer.trim() == name,
        "not confirmed ({:?} is not {name}): nothing was changed",
        answer.trim()
    );
    Ok(())
}

/// The user running the repair, for the audit record: the one behind `sudo` if any.
fn operator_name() -> Option<String> {
    ["SUDO_USER", "USER", "LOGNAME"]
        .into_iter()
        .find_map(|var| std::env::var(var).ok().filter(|name| !name.is_empty()))
}

fn write_report(report: &RepairReport) -> anyhow::Result<()> {
    let mut out = Vec::new();
    let dropped = match report.last_dropped {
        Some(last) => format!("offsets {}-{last}", report.first_dropped),
        None => format!("offsets from {}", report.first_dropped),
    };
    writeln!(
        out,
        "repaired {}/{} ({}): {dropped} dropped, {} byte(s); removed bytes kept in {}; recorded in {}",
        report.topic,
        report.partition,
        report.action,
        report.bytes_dropped,
        report.backup_dir.display(),
        report.audit_path.display()
    )?;
    if let Some(next) = report.next_offset {
        writeln!(out, "the next record appended gets offset {next}")?;
    }
    for (group, committed) in &report.groups_past {
        writeln!(
            out,
            "warning: consumer group `{group}` committed offset {committed}, past the cut: it \
             will not read the records appended at offsets below {committed}"
        )?;
    }
    writeln!(
        out,
        "processes that followed {}/{} before the repair read it again once restarted",
        report.topic, report.partition
    )?;
    std::io::stdout()
        .lock()
        .write_all(&out)
        .context("write to stdout")?;
    Ok(())
}

async fn open_log(config: &Config) -> anyhow::Result<Arc<dyn Log>> {
    runnel_server_common::open_storage(config)
        .await
        .context("open storage")
}

async fn produce(log: &dyn Log, args: ProduceArgs) -> anyhow::Result<()> {
    let timestamp = match args.timestamp {
        Some(timestamp) => timestamp,
        None => runnel_time::now_millis(),
    };
    let record = ProduceRecord {
        key: args.key.map(Bytes::from),
        value: Bytes::from(args.value),
        timestamp,
        headers: Vec::new(),
        partition: args.partition,
    };
    let positions = log
        .append(&args.topic, vec![record])
        .await
        .with_context(|| format!("append to topic `{}`", args.topic))?;
    let position = positions
        .first()
        .context("the log acknowledged the append without a position")?;
    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "partition {} offset {}",
        position.partition, position.offset
    )
    .context("write to stdout")?;
    Ok(())
}

async fn tail(log: &dyn Log, args: TailArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut reader = log
        .reader(&args.topic, args.partition, args.from)
        .await
        .with_context(|| format!("open reader of {}/{}", args.topic, args.partition))?;
    let mut n_printed: u64 = 0;
    loop {
        let max_records = match args.max {
            Some(max) if n_printed >= max => break,
            Some(max) => (max - n_printed).min(TAIL_BATCH_RECORDS),
            None => TAIL_BATCH_RECORDS,
        };
        // `next_batch` is cancel-safe, so dropping it on Ctrl-C loses nothing.
        let batch = tokio::select! {
            _ = shutdown.cancelled() => break,
            batch = reader.next_batch(max_records as usize, TAIL_POLL_WAIT) => batch,
        };
        let batch = batch.with_context(|| {
            format!(
                "read {}/{} at offset {}",
                args.topic,
                args.partition,
                reader.position()
            )
        })?;
        match write_records(&batch) {
            Ok(()) => {}
            // The reader of our output is gone (`runnel log tail ... | head`): done.
            Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => break,
            Err(error) => return Err(anyhow::Error::new(error).context("write to stdout")),
        }
        n_printed += batch.len() as u64;
    }
    Ok(())
}

fn write_records(records: &[Record]) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    let mut line = Vec::new();
    for record in records {
        line.clear();
        format_record(&mut line, record)?;
        stdout.write_all(&line)?;
    }
    stdout.flush()
}

/// Writes `record` as one `offset timestamp key value` line.
fn format_record(out: &mut Vec<u8>, record: &Record) -> std::io::Result<()> {
    write!(out, "{} ", record.offset)?;
    format_timestamp(out, record.timestamp)?;
    out.push(b' ');
    match &record.key {
        None => out.push(b'-'),
        Some(key) if key.is_empty() => out.extend_from_slice(b"\"\""),
        Some(key) => write_escaped(out, key, true)?,
    }
    out.push(b' ');
    write_escaped(out, &record.value, false)?;
    out.push(b'\n');
    Ok(())
}

/// Writes `timestamp` as RFC 3339 in UTC with milliseconds (the one formatter every runnel
/// command prints times with), or as the number when negative (Kafka's "no timestamp" is
/// -1) or past year 9999.
fn format_timestamp(out: &mut Vec<u8>, timestamp: i64) -> std::io::Result<()> {
    if (0..MAX_RFC3339_MILLIS).contains(&timestamp) {
        write!(out, "{}", runnel_time::format_millis(timestamp))
    } else {
        write!(out, "{timestamp}")
    }
}

/// Writes `bytes` with control characters, backslashes, non-UTF-8 bytes and, if
/// `escape_space`, spaces escaped.
fn write_escaped(out: &mut Vec<u8>, bytes: &[u8], escape_space: bool) -> std::io::Result<()> {
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() || c == '\\' {
                write!(out, "{}", c.escape_default())?;
            } else if c == ' ' && escape_space {
                out.extend_from_slice(b"\\x20");
            } else {
                let mut buf = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
        for byte in chunk.invalid() {
            write!(out, "\\x{byte:02x}")?;
        }
    }
    Ok(())
}

async fn offsets(log: &dyn Log, args: OffsetsArgs) -> anyhow::Result<()> {
    let topic = &args.topic;
    let n_partitions = log
        .partition_count(topic)
        .await
        .with_context(|| format!("get partition count of `{topic}`"))?;
    let mut lines = Vec::new();
    match &args.group {
        None => writeln!(
            lines,
            "{:>9} {:>12} {:>12}",
            "partition", "earliest", "latest"
        )?,
        Some(_) => writeln!(
            lines,
            "{:>9} {:>12} {:>12} {:>12}",
            "partition", "earliest", "latest", "committed"
        )?,
    }
    for partition in 0..n_partitions {
        let earliest = log
            .earliest_offset(topic, partition)
            .await
            .with_context(|| format!("get earliest offset of {topic}/{partition}"))?;
        let latest = log
            .latest_offset(topic, partition)
            .await
            .with_context(|| format!("get latest offset of {topic}/{partition}"))?;
        write!(lines, "{partition:>9} {earliest:>12} {latest:>12}")?;
        if let Some(group) = &args.group {
            let committed = log
                .committed_offset(group, topic, partition)
                .await
                .with_context(|| {
                    format!("get offset of group `{group}` committed for {topic}/{partition}")
                })?;
            match committed {
                Some(committed) => write!(lines, " {committed:>12}")?,
                None => write!(lines, " {:>12}", "-")?,
            }
        }
        writeln!(lines)?;
    }
    std::io::stdout()
        .lock()
        .write_all(&lines)
        .context("write to stdout")?;
    Ok(())
}

fn parse_start_offset(text: &str) -> Result<StartOffset, String> {
    match text {
        "earliest" => Ok(StartOffset::Earliest),
        "latest" => Ok(StartOffset::Latest),
        _ => text
            .parse()
            .map(StartOffset::At)
            .map_err(|_| format!("`{text}` is not `earliest`, `latest` or an offset")),
    }
}

/// `FIRST-LAST` or a single offset `N` (`N-N`).
fn parse_offset_range(text: &str) -> Result<(u64, u64), String> {
    let parse = |part: &str| {
        part.trim()
            .parse::<u64>()
            .map_err(|_| format!("`{text}` is not FIRST-LAST (two offsets) or one offset"))
    };
    let (first, last) = match text.split_once('-') {
        Some((first, last)) => (parse(first)?, parse(last)?),
        None => {
            let offset = parse(text)?;
            (offset, offset)
        }
    };
    if first > last {
        return Err(format!("`{text}`: the first offset is after the last"));
    }
    Ok((first, last))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(timestamp: i64, key: Option<&[u8]>, value: &[u8]) -> Record {
        Record {
            topic: Arc::from("t"),
            partition: 0,
            offset: 7,
            timestamp,
            key: key.map(Bytes::copy_from_slice),
            value: Bytes::copy_from_slice(value),
            headers: Vec::new(),
        }
    }

    #[track_caller]
    fn check(record: Record, expect: &str) {
        let mut out = Vec::new();
        format_record(&mut out, &record).expect("write to a Vec");
        assert_eq!(
            String::from_utf8(out).expect("escaped output is UTF-8"),
            expect
        );
    }

    #[test]
    fn records_print_as_one_escaped_line() {
        check(
            record(1_700_000_000_123, Some(b"user 1"), b"{\"a\": 1}"),
            "7 2023-11-14T22:13:20.123Z user\\x201 {\"a\": 1}\n",
        );
        check(
            record(0, None, b"a\nb\\c"),
            "7 1970-01-01T00:00:00.000Z - a\\nb\\\\c\n",
        );
        check(
            record(-1, Some(b""), b"\xff\xfeok"),
            "7 -1 \"\" \\xff\\xfeok\n",
        );
        check(
            record(MAX_RFC3339_MILLIS, None, "é".as_bytes()),
            "7 253402300800000 - é\n",
        );
    }

    #[test]
    fn start_offsets_parse() {
        assert_eq!(parse_start_offset("earliest"), Ok(StartOffset::Earliest));
        assert_eq!(parse_start_offset("latest"), Ok(StartOffset::Latest));
        assert_eq!(parse_start_offset("42"), Ok(StartOffset::At(42)));
        assert!(parse_start_offset("-1").is_err());
        assert!(parse_start_offset("first").is_err());
    }

    #[test]
    fn offset_ranges_parse() {
        assert_eq!(parse_offset_range("10-12"), Ok((10, 12)));
        assert_eq!(parse_offset_range("7"), Ok((7, 7)));
        assert!(parse_offset_range("12-10").is_err());
        assert!(parse_offset_range("a-b").is_err());
        assert!(parse_offset_range("-3").is_err());
    }
}
