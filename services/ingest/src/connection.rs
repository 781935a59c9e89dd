//! The ingest port's connections: admission by count (`ingest.max-connections` in total,
//! `ingest.max-connections-per-client` per client IP address) and the deadline for a request
//! head (`ingest.header-read-timeout`).
//!
//! The accept loop ([`incoming`]) admits a connection only while both counts are under
//! their limits; a refused one is answered `503` with a JSON body (plaintext ports; with TLS
//! it is just closed) and closed at once, without touching the admitted ones.
//!
//! An admitted connection is a [`GuardedStream`]. While no request of it is in progress
//! (from its opening, and again from each answer) it must deliver a complete request head
//! within `ingest.header-read-timeout`, or it reads as closed: that ends a connection that
//! sends nothing, a request head that trickles in, an unfinished TLS handshake and an idle
//! HTTP/1.1 keep-alive alike. An HTTP/2 connection is exempt once its preface has arrived (or
//! its first request, under TLS): gRPC channels stay open between calls, and HTTP/2
//! keepalive pings watch them instead. Request bodies have their own timeouts (`http.rs`).
//!
//! The requests tell their connection when they start and end through [`track_requests`],
//! which finds the connection's [`ConnectionInfo`] among the request's extensions (tonic puts
//! it there from [`Connected::connect_info`]).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::Request;
use axum::http::Version;
use axum::middleware::Next;
use axum::response::Response;
use futures::Stream;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tonic::transport::server::Connected;
use tracing::{debug, warn};

/// The first bytes of every HTTP/2 connection (RFC 9113, section 3.4).
const HTTP2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Refused connections being answered at once; past this many, a refused connection is
/// closed without an answer, so a flood of connections cannot pile up tasks.
const MAX_REFUSALS_IN_PROGRESS: usize = 64;

/// How long a refused connection is given to take its answer before it is closed.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// A refused connection's request bytes read (and dropped) at most, so that closing it does
/// not reset the connection before the client has read the answer.
const REFUSAL_DRAIN_BYTES: usize = 64 * 1024;

/// How long the accept loop pauses after an accept error that is not about one connection
/// (e.g. too many open files), so that it does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(250);

/// At most one warning about refused connections per this interval.
const REFUSAL_WARN_INTERVAL: Duration = Duration::from_secs(10);

/// The limits of the ingest port's connections.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectionLimits {
    /// `ingest.max-connections`.
    pub(crate) max_connections: usize,
    /// `ingest.max-connections-per-client`.
    pub(crate) max_connections_per_client: usize,
    /// `ingest.header-read-timeout`.
    pub(crate) header_read_timeout: Duration,
    /// Whether a refused connection is answered 503 before it is closed (not under TLS,
    /// where the client expects a handshake).
    pub(crate) answer_refusals: bool,
}

/// The open connections, counted in total and per client address.
#[derive(Debug)]
struct Admission {
    limits: ConnectionLimits,
    open: Mutex<OpenConnections>,
    refusals_in_progress: Arc<Semaphore>,
    /// Connections refused since the last warning, and when that was.
    refused: Mutex<(u64, Option<Instant>)>,
}

#[derive(Debug, Default)]
struct OpenConnections {
    total: usize,
    // Invariant: holds only addresses with at least one open connection, and their counts
    // add up to `total`.
    per_client: HashMap<IpAddr, usize>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Refusal {
    Total { limit: usize },
    PerClient { client: IpAddr, limit: usize },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Total { limit } => write!(
                f,
                "the service has {limit} connections open, its limit (ingest.max-connections); retry later"
            ),
            Refusal::PerClient { client, limit } => write!(
                f,
                "{client} has {limit} connections open, the limit per client address (ingest.max-connections-per-client); reuse a connection or close one"
            ),
        }
    }
}

impl Admission {
    fn new(limits: ConnectionLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            open: Mutex::new(OpenConnections::default()),
            refusals_in_progress: Arc::new(Semaphore::new(MAX_REFUSALS_IN_PROGRESS)),
            refused: Mutex::new((0, None)),
        })
    }

    /// Counts a new connection from `client`, or says why it is refused.
    fn admit(self: &Arc<Self>, client: IpAddr) -> Result<ConnectionSlot, Refusal> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.total >= self.limits.max_connections {
            return Err(Refusal::Total {
                limit: self.limits.max_connections,
            });
        }
        let from_client = open.per_client.entry(client).or_insert(0);
        if *from_client >= self.limits.max_connections_per_client {
            return Err(Refusal::PerClient {
                client,
                limit: self.limits.max_connections_per_client,
            });
        }
        *from_client += 1;
        open.total += 1;
        Ok(ConnectionSlot {
            admission: Arc::clone(self),
            client,
        })
    }

    fn release(&self, client: IpAddr) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.total = open.total.saturating_sub(1);
        if let Some(from_client) = open.per_client.get_mut(&client) {
            *from_client -= 1;
            if *from_client == 0 {
                open.per_client.remove(&client);
            }
        }
    }

    /// Logs refusals at WARN, at most once per [`REFUSAL_WARN_INTERVAL`], with how many
    /// there were since the last warning.
    fn note_refusal(&self, peer: SocketAddr, refusal: &Refusal) {
        debug!(%peer, reason = %refusal, "connection refused");
        let mut refused = self.refused.lock().unwrap_or_else(PoisonError::into_inner);
        refused.0 += 1;
        let now = Instant::now();
        if refused
            .1
            .is_none_or(|last| now.duration_since(last) >= REFUSAL_WARN_INTERVAL)
        {
            warn!(
                n_refused = refused.0,
                reason = %refusal,
                "ingest refused connections over its limits"
            );
            *refused = (0, Some(now));
        }
    }

    /// Answers a refused connection 503 and closes it, in a task of its own that lasts at
    /// most [`REFUSAL_LINGER`]; closes it at once under TLS or when too many refusals are
    /// being answered already.
    fn refuse(&self, mut stream: TcpStream, peer: SocketAddr, refusal: Refusal) {
        self.note_refusal(peer, &refusal);
        if !self.limits.answer_refusals {
            return;
        }
        let Ok(permit) = Arc::clone(&self.refusals_in_progress).try_acquire_owned() else {
            return;
        };
        let answer = refusal_answer(&refusal);
        tokio::spawn(async move {
            let answered = async {
                stream.write_all(&answer).await?;
                stream.shutdown().await?;
                // Read what the client sent, so that the close is not a reset that could
                // overtake the answer.
                let mut drained = 0;
                let mut buffer = [0_u8; 4096];
                while drained < REFUSAL_DRAIN_BYTES {
                    let n_read = stream.read(&mut buffer).await?;
                    if n_read == 0 {
                        break;
                    }
                    drained += n_read;
                }
                io::Result::Ok(())
            };
            let _ = tokio::time::timeout(REFUSAL_LINGER, answered).await;
            drop(permit);
        });
    }
}

/// The HTTP/1.1 answer to a refused connection: 503, `Retry-After: 1`, a JSON error body.
fn refusal_answer(refusal: &Refusal) -> Vec<u8> {
    let body = serde_json::json!({
        "code": "too_many_connections",
        "error": refusal.to_string(),
    })
    .to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// One admitted connection's place in the counts, given back when it is dropped.
#[derive(Debug)]
struct ConnectionSlot {
    admission: Arc<Admission>,
    client: IpAddr,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.admission.release(self.client);
    }
}

/// Accepts connections from `listener`, forever: admitted ones are yielded, refused ones
/// answered and closed. Errors of one connection are skipped; others pause the loop
/// briefly. The stream never yields an error or ends; tonic drops it at shutdown, which
/// closes the listener.
pub(crate) fn incoming(
    listener: TcpListener,
    limits: ConnectionLimits,
) -> impl Stream<Item = Result<GuardedStream, io::Error>> {
    let admission = Admission::new(limits);
    futures::stream::unfold(
        (listener, admission),
        move |(listener, admission)| async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(error) if is_connection_error(&error) => {
                        debug!(%error, "accept: the connection failed");
                        continue;
                    }
                    Err(error) => {
                        warn!(%error, "accept failed; pausing the accept loop");
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                        continue;
                    }
                };
                let client = peer.ip().to_canonical();
                match admission.admit(client) {
                    Ok(slot) => {
                        if let Err(error) = stream.set_nodelay(true) {
                            debug!(%error, %peer, "set TCP_NODELAY");
                        }
                        let guarded = GuardedStream::new(stream, peer, slot, limits);
                        return Some((Ok(guarded), (listener, admission)));
                    }
                    Err(refusal) => admission.refuse(stream, peer, refusal),
                }
            }
        },
    )
}

/// Whether an accept error is about one connection only (the next accept may succeed).
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::TimedOut
    )
}

/// What a connection's requests and its stream share.
#[derive(Debug)]
struct ConnectionState {
    peer: SocketAddr,
    opened: Instant,
    /// Requests started and not yet answered.
    active_requests: AtomicUsize,
    /// When the connection last became idle (no request in progress), in milliseconds
    /// since `opened`.
    idle_since_ms: AtomicU64,
    /// Whether the connection speaks HTTP/2 (its preface arrived, or an HTTP/2 request).
    http2: AtomicBool,
}

/// The connection a request came on, found among the request's extensions.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionInfo(Arc<ConnectionState>);

impl ConnectionInfo {
    /// Marks a request as started until the guard is dropped.
    fn begin_request(&self, http2: bool) -> RequestGuard {
        if http2 {
            self.0.http2.store(true, Ordering::SeqCst);
        }
        self.0.active_requests.fetch_add(1, Ordering::SeqCst);
        RequestGuard(Arc::clone(&self.0))
    }

    /// When the connection must have delivered a complete request head, if it must: while
    /// it is idle and not HTTP/2.
    fn head_deadline(&self, header_read_timeout: Duration) -> Option<Instant> {
        let state = &self.0;
        if state.http2.load(Ordering::SeqCst) || state.active_requests.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let idle_since = Duration::from_millis(state.idle_since_ms.load(Ordering::SeqCst));
        Some(state.opened + idle_since + header_read_timeout)
    }
}

/// A request in progress on its connection.
#[derive(Debug)]
struct RequestGuard(Arc<ConnectionState>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let state = &self.0;
        // The idle time is stored before the count drops, so that a reader that sees no
        // request in progress also sees when the connection became idle.
        let idle_since = u64::try_from(state.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        state.idle_since_ms.store(idle_since, Ordering::SeqCst);
        state.active_requests.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Middleware: tells the request's connection that a request is in progress until its
/// answer is ready, so that the connection's head deadline waits meanwhile.
pub(crate) async fn track_requests(request: Request, next: Next) -> Response {
    let _guard = request
        .extensions()
        .get::<ConnectionInfo>()
        .map(|info| info.begin_request(request.version() == Version::HTTP_2));
    next.run(request).await
}

/// An admitted TCP connection: it holds its place in the connection counts and reads as
/// closed once it misses its head deadline.
#[derive(Debug)]
pub(crate) struct GuardedStream {
    inner: TcpStream,
    info: ConnectionInfo,
    _slot: ConnectionSlot,
    header_read_timeout: Duration,
    deadline: Pin<Box<Sleep>>,
    /// Bytes of the HTTP/2 preface matched so far; `None` once the question is settled.
    preface_matched: Option<usize>,
    timed_out: bool,
}

impl GuardedStream {
    fn new(
        inner: TcpStream,
        peer: SocketAddr,
        slot: ConnectionSlot,
        limits: ConnectionLimits,
    ) -> Self {
        let opened = Instant::now();
        Self {
            inner,
            info: ConnectionInfo(Arc::new(ConnectionState {
                peer,
                opened,
                active_requests: AtomicUsize::new(0),
                idle_since_ms: AtomicU64::new(0),
                http2: AtomicBool::new(false),
            })),
            _slot: slot,
            header_read_timeout: limits.header_read_timeout,
            deadline: Box::pin(tokio::time::sleep_until(
                opened + limits.header_read_timeout,
            )),
            preface_matched: Some(0),
            timed_out: false,
        }
    }

    /// Follows the first bytes read against the HTTP/2 preface.
    fn sniff_preface(&mut self, read: &[u8]) {
        let Some(matched) = self.preface_matched else {
            return;
        };
        let wanted = &HTTP2_PREFACE[matched..];
        let n_compared = wanted.len().min(read.len());
        if read[..n_compared] != wanted[..n_compared] {
            self.preface_matched = None;
        } else if matched + n_compared == HTTP2_PREFACE.len() {
            self.preface_matched = None;
            self.info.0.http2.store(true, Ordering::SeqCst);
        } else {
            self.preface_matched = Some(matched + n_compared);
        }
    }
}

impl Connected for GuardedStream {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> ConnectionInfo {
        self.info.clone()
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.timed_out {
            return Poll::Ready(Ok(()));
        }
        if let Some(deadline) = this.info.head_deadline(this.header_read_timeout) {
            if this.deadline.deadline() != deadline {
                this.deadline.as_mut().reset(deadline);
            }
            if this.deadline.as_mut().poll(cx).is_ready() {
                this.timed_out = true;
                debug!(
                    peer = %this.info.0.peer,
                    "no complete request head within ingest.header-read-timeout; closing the connection"
                );
                // End of stream: the server closes the connection.
                return Poll::Ready(Ok(()));
            }
        }
        let filled = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.preface_matched.is_some() && matches!(polled, Poll::Ready(Ok(()))) {
            this.sniff_preface(&buf.filled()[filled..]);
        }
        polled
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_connections: usize, max_connections_per_client: usize) -> ConnectionLimits {
        ConnectionLimits {
            max_connections,
            max_connections_per_client,
            header_read_timeout: Duration::from_secs(1),
            answer_refusals: true,
        }
    }

    #[test]
    fn connections_are_admitted_up_to_the_limits_and_released_on_drop() {
        let admission = Admission::new(limits(3, 2));
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        let a1 = admission.admit(a).expect("a1");
        let _a2 = admission.admit(a).expect("a2");
        assert_eq!(
            admission.admit(a).expect_err("a3"),
            Refusal::PerClient {
                client: a,
                limit: 2
            }
        );
        let _b1 = admission.admit(b).expect("b1");
        assert_eq!(
            admission.admit(b).expect_err("over the total"),
            Refusal::Total { limit: 3 }
        );
        drop(a1);
        let _b2 = admission.admit(b).expect("a place was given back");
        let open = admission.open.lock().expect("lock");
        assert_eq!(open.total, 3);
        assert_eq!(open.per_client.get(&a), Some(&1));
        assert_eq!(open.per_client.get(&b), Some(&2));
    }

    #[test]
    fn refusals_are_http_answers_with_a_json_body() {
        let answer = refusal_answer(&Refusal::Total { limit: 7 });
        let answer = String::from_utf8(answer).expect("utf-8");
        let (head, body) = answer.split_once("\r\n\r\n").expect("head and body");
        assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let body: serde_json::Value = serde_json::from_str(body).expect("json");
        assert_eq!(body["code"], "too_many_connections");
        assert!(
            body["error"]
                .as_str()
                .expect("error")
                .contains("ingest.max-connections"),
            "{body}"
        );
    }

    #[tokio::test]
    async fn the_http2_preface_exempts_a_connection_from_the_head_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = TcpStream::connect(addr).await.expect("connect");
        let (server, peer) = listener.accept().await.expect("accept");
        let admission = Admission::new(limits(1, 1));
        let slot = admission.admit(peer.ip()).expect("admit");
        let mut stream = GuardedStream::new(server, peer, slot, limits(1, 1));
        let timeout = Duration::from_secs(1);
        assert!(stream.info.head_deadline(timeout).is_some());
        stream.sniff_preface(&HTTP2_PREFACE[..10]);
        assert!(stream.info.head_deadline(timeout).is_some(), "a part");
        stream.sniff_preface(&HTTP2_PREFACE[10..]);
        assert_eq!(stream.info.head_deadline(timeout), None);
        drop(client);

        let other = TcpStream::connect(addr).await.expect("connect");
        let (server, peer) = listener.accept().await.expect("accept");
        let slot = Admission::new(limits(1, 1))
            .admit(peer.ip())
            .expect("admit");
        let mut stream = GuardedStream::new(server, peer, slot, limits(1, 1));
        stream.sniff_preface(b"POST /v1/streams/clicks/events HTTP/1.1\r\n");
        stream.sniff_preface(&HTTP2_PREFACE[..]);
        assert!(
            stream.info.head_deadline(timeout).is_some(),
            "HTTP/1.1 stays watched"
        );
        let guard = stream.info.begin_request(false);
        assert_eq!(stream.info.head_deadline(timeout), None, "while answering");
        drop(guard);
        assert!(stream.info.head_deadline(timeout).is_some(), "idle again");
        drop(other);
    }
}
