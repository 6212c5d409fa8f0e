//! Our one door to gearmand: background submits, a worker loop, and the
//! admin `status` query.
//!
//! Several servers: every client of them ([`Submitter`],
//! [`ForegroundClient`], [`StatusReader`]) keeps a health state per server.
//! A server is live until a call to it fails; new work then skips it while
//! another server is live, until a probe in the background (capped,
//! jittered backoff) finds that it answers again. With every server down,
//! each is tried and the call fails, as with one server. Each server has
//! its own outage tracker: one warning when it goes away, one line when it
//! is back, whatever the other servers do meanwhile.
//!
//! Built on the `gearman` crate's codec and packet types, over sockets we
//! open ourselves with TCP_NODELAY. The crate 0.2.0 never sets it, and its
//! request/response traffic then stalls ~40 ms per exchange (Nagle against
//! delayed ACK: 45 jobs/s instead of thousands). Two more of the crate's
//! limits are worked around here, and only here:
//!
//! - Its admin client's `status` fails the whole reply on one line it
//!   cannot parse, and on a function name that is not UTF-8. gearmand
//!   prints each function as `NAME\tTOTAL\tRUNNING\tWORKERS\n` with the
//!   name as it is, and takes any bytes but NUL in a name, so one client's
//!   name with a newline or a tab (or a row inserted by SQL and dispatched
//!   by us) made every `status` of that gearmand fail, and the QueueRunner
//!   then dispatched nothing to it until it restarted. [`server_status`]
//!   reads the reply itself; see `StatusParser` for how it reads such
//!   names back.
//! - Its codec fails a connection on a packet over 64 MiB, which gearmand
//!   itself accepts; gearmand then hands the job to the next worker
//!   connection, which fails the same way, forever. Worker connections use
//!   `WorkerCodec`, which reads such a packet through without keeping it,
//!   and the worker refuses the job (WORK_WARNING, WORK_FAIL).
//!
//! What gearmand 1.1.20 does with function names (observed): it accepts
//! any bytes but NUL (the protocol's separator) from a raw client,
//! including the empty name and names of several KiB (4096 bytes went,
//! 8192 closed the connection; libgearman clients such as the `gearman`
//! CLI refuse names over 512 bytes, and the empty one). In `status`,
//! space, `\r`, ESC and bytes that are not UTF-8 come out raw on their
//! line; a tab adds fields to the line; a newline splits it in two (`a\nb`
//! is printed `a` and `b\t1\t0\t0`), and a name holding `\n.\n` prints
//! the reply's own end marker.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use gearman::protocol::{GearmanCodec, Packet, PacketType, HEADER_LEN, REQ_MAGIC, RES_MAGIC};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{Decoder, Encoder, Framed};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::error::{Error, Result};
use crate::job::Priority;
use crate::outage::Outage;

/// How long a connect to gearmand may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long gearmand may take to answer a request.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// gearmand refuses unique ids longer than this (GEARMAN_MAX_UNIQUE_SIZE).
pub const MAX_GEARMAN_UNIQUE: usize = 64;

type Conn = Framed<TcpStream, GearmanCodec>;

fn gearman_err(server: &str, source: gearman::GearmanError) -> Error {
    Error::Gearman {
        server: server.to_string(),
        source,
    }
}

fn io_err(server: &str, err: std::io::Error) -> Error {
    gearman_err(server, gearman::GearmanError::Io(err))
}

async fn connect_stream(server: &str) -> Result<TcpStream> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(server))
        .await
        .map_err(|_| gearman_err(server, gearman::GearmanError::Timeout))?
        .map_err(|e| io_err(server, e))?;
    stream.set_nodelay(true).map_err(|e| io_err(server, e))?;
    Ok(stream)
}

async fn connect(server: &str) -> Result<Conn> {
    Ok(Framed::new(
        connect_stream(server).await?,
        GearmanCodec::new(),
    ))
}

async fn recv(conn: &mut Conn, server: &str) -> Result<Packet> {
    match tokio::time::timeout(REPLY_TIMEOUT, conn.next()).await {
        Err(_) => Err(gearman_err(server, gearman::GearmanError::Timeout)),
        Ok(None) => Err(gearman_err(server, gearman::GearmanError::ConnectionClosed)),
        Ok(Some(pkt)) => pkt.map_err(|e| gearman_err(server, e)),
    }
}

fn req(ptype: PacketType, args: Vec<Bytes>) -> Packet {
    Packet::request(ptype, args)
}

/// How long a probe of a server that failed may take to connect and be
/// answered.
const PROBE_TIMEOUT: Duration = CONNECT_TIMEOUT;

/// What a server that is skipped while down answers.
fn skipped(server: &str) -> Error {
    io_err(
        server,
        std::io::Error::new(
            std::io::ErrorKind::NotConnected,
            "down since a call failed; skipped until it answers again",
        ),
    )
}

/// One gearmand server as one client sees it. Live until a call to it
/// fails; then down, skipped by new work while another server is live,
/// until it answers again (a probe, or a call made because every server
/// was down). Its outage tracker is its own.
struct Health {
    server: String,
    outage: Outage,
    live: AtomicBool,
    /// A probe task is out for it.
    probing: AtomicBool,
}

impl Health {
    fn new(server: String, what: &'static str) -> Arc<Health> {
        Health::with_outage(server.clone(), Outage::new(what).about(server))
    }

    fn with_outage(server: String, outage: Outage) -> Arc<Health> {
        Arc::new(Health {
            server,
            outage,
            live: AtomicBool::new(true),
            probing: AtomicBool::new(false),
        })
    }

    fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// The server answered: it takes new work (again).
    fn answered(&self) {
        self.live.store(true, Ordering::Release);
        self.outage.ended();
    }

    /// A call to the server failed: new work skips it while another
    /// server is live.
    fn failed(&self, err: &Error) {
        self.live.store(false, Ordering::Release);
        self.outage.failed(err);
    }

    /// Probes the server in a task of its own, with capped, jittered
    /// backoff, until it answers (it is live again) or `stop`. One probe
    /// at a time; none outside a Tokio runtime (the server then comes back
    /// when a call finds every server down and tries it).
    fn probe_in_background(self: &Arc<Self>, probe: Probe, stop: &CancellationToken) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let (me, stop) = (self.clone(), stop.clone());
        runtime.spawn(async move {
            loop {
                while !me.is_live() {
                    tokio::select! {
                        _ = stop.cancelled() => {
                            me.probing.store(false, Ordering::Release);
                            return;
                        }
                        _ = tokio::time::sleep(me.outage.delay()) => {}
                    }
                    // A call may have found it back meanwhile.
                    if me.is_live() {
                        break;
                    }
                    match probe.run(&me.server).await {
                        Ok(()) => me.answered(),
                        Err(err) => me.failed(&err),
                    }
                }
                me.probing.store(false, Ordering::Release);
                // A failure recorded just now saw this probe still out.
                if me.is_live() || me.probing.swap(true, Ordering::AcqRel) {
                    return;
                }
            }
        });
    }
}

/// Whether any of `servers` is live.
fn any_live(servers: &[Arc<Health>]) -> bool {
    servers.iter().any(|h| h.is_live())
}

/// How a server that failed is tried again in the background.
#[derive(Debug, Clone, Copy)]
enum Probe {
    /// Connect and ECHO: the server takes requests.
    Echo,
    /// Read its `status`.
    Status,
}

impl Probe {
    async fn run(self, server: &str) -> Result<()> {
        match self {
            Probe::Echo => tokio::time::timeout(PROBE_TIMEOUT, echo(server))
                .await
                .map_err(|_| gearman_err(server, gearman::GearmanError::Timeout))?,
            Probe::Status => server_status(server).await.map(drop),
        }
    }
}

/// One ECHO round trip on a new connection.
async fn echo(server: &str) -> Result<()> {
    connect_asking(
        server,
        PacketType::EchoReq,
        b"garivini",
        PacketType::EchoRes,
    )
    .await?;
    Ok(())
}

/// Largest packet a connection reads whole, as the crate's codec: 64 MiB.
/// gearmand takes larger ones; a worker connection refuses such a job
/// (see `WorkerCodec`) rather than lose the connection over it.
pub const MAX_PACKET: u32 = 64 * 1024 * 1024;

/// Most bytes kept of a packet over [`MAX_PACKET`]: enough for its
/// leading fields (handle, function, unique id; gearmand takes function
/// names of a few KiB).
const MAX_OVERSIZED_HEAD: usize = 16 * 1024;

/// What a worker connection reads.
#[derive(Debug)]
enum WorkerFrame {
    /// A packet of at most [`MAX_PACKET`] bytes.
    Packet(Packet),
    /// A packet over [`MAX_PACKET`], read through and thrown away but for
    /// its leading fields.
    Oversized(Oversized),
}

/// What is kept of a packet over [`MAX_PACKET`].
#[derive(Debug)]
struct Oversized {
    ptype: PacketType,
    /// Its declared payload length.
    len: u32,
    /// Its leading NUL-ended fields, as many as were found in the first
    /// [`MAX_OVERSIZED_HEAD`] bytes, up to all but the last (the data).
    fields: Vec<Bytes>,
}

impl Oversized {
    /// The size of its last field (a job's workload), when all the fields
    /// before it were found.
    fn data_len(&self) -> Option<u64> {
        let before = self.ptype.arg_count().checked_sub(1)?;
        (self.fields.len() == before).then(|| {
            let head: usize = self.fields.iter().map(Bytes::len).sum::<usize>() + before;
            u64::from(self.len).saturating_sub(head as u64)
        })
    }

    /// Why the job is refused, in one line for the client.
    fn refusal(&self) -> String {
        let limit = MAX_PACKET;
        match self.data_len() {
            Some(data) if data > u64::from(limit) => {
                format!("request of {data} bytes is over the limit of {limit} bytes")
            }
            Some(data) => format!(
                "request of {data} bytes is over the limit of {limit} bytes with its handle, function and unique id ({} bytes)",
                self.len
            ),
            None => format!(
                "request packet of {} bytes is over the limit of {limit} bytes",
                self.len
            ),
        }
    }
}

/// A packet over [`MAX_PACKET`] being read through.
#[derive(Debug)]
struct Skipping {
    ptype: PacketType,
    len: u32,
    /// Payload bytes still to come.
    left: usize,
    /// The payload's first bytes, up to the last wanted NUL.
    head: Vec<u8>,
    /// NULs wanted in `head` (the fields before the data).
    wanted: usize,
    /// NULs in `head` so far.
    nuls: usize,
}

/// The codec of worker connections: the crate's [`GearmanCodec`], but a
/// packet over [`MAX_PACKET`] is read through as it streams in and thrown
/// away, but for its leading fields, and yields a
/// [`WorkerFrame::Oversized`]; memory stays bounded and the connection
/// stays up. Any other decode error fails the connection as before.
struct WorkerCodec {
    inner: GearmanCodec,
    skipping: Option<Skipping>,
}

impl Default for WorkerCodec {
    fn default() -> Self {
        WorkerCodec {
            inner: GearmanCodec::with_max_payload_size(MAX_PACKET),
            skipping: None,
        }
    }
}

impl Decoder for WorkerCodec {
    type Item = WorkerFrame;
    type Error = gearman::GearmanError;

    fn decode(
        &mut self,
        src: &mut BytesMut,
    ) -> std::result::Result<Option<WorkerFrame>, Self::Error> {
        if self.skipping.is_none() {
            if src.len() < HEADER_LEN {
                return Ok(None);
            }
            let word = |at: usize| u32::from_be_bytes(src[at..at + 4].try_into().expect("4 bytes"));
            let len = word(8);
            if len <= MAX_PACKET {
                return Ok(self.inner.decode(src)?.map(WorkerFrame::Packet));
            }
            let magic: [u8; 4] = src[0..4].try_into().expect("4 bytes");
            if magic != RES_MAGIC && magic != REQ_MAGIC {
                return Err(gearman::GearmanError::BadMagic(magic));
            }
            let ptype = PacketType::try_from(word(4))?;
            src.advance(HEADER_LEN);
            self.skipping = Some(Skipping {
                ptype,
                len,
                left: len as usize,
                head: Vec::new(),
                wanted: ptype.arg_count().saturating_sub(1),
                nuls: 0,
            });
        }
        let s = self.skipping.as_mut().expect("skipping");
        let take = s.left.min(src.len());
        for &b in &src[..take] {
            if s.nuls == s.wanted || s.head.len() == MAX_OVERSIZED_HEAD {
                break;
            }
            s.head.push(b);
            s.nuls += usize::from(b == 0);
        }
        src.advance(take);
        s.left -= take;
        if s.left > 0 {
            return Ok(None);
        }
        let s = self.skipping.take().expect("skipping");
        let fields = s
            .head
            .split(|&b| b == 0)
            .take(s.nuls)
            .map(Bytes::copy_from_slice)
            .collect();
        Ok(Some(WorkerFrame::Oversized(Oversized {
            ptype: s.ptype,
            len: s.len,
            fields,
        })))
    }
}

impl Encoder<Packet> for WorkerCodec {
    type Error = gearman::GearmanError;

    fn encode(&mut self, pkt: Packet, dst: &mut BytesMut) -> std::result::Result<(), Self::Error> {
        self.inner.encode(pkt, dst)
    }
}

/// The Gearman unique id for a job's unique key: the key itself, or none
/// when gearmand cannot take it (the database still dedups): too long, or
/// holding a NUL byte, which ends a field in the Gearman protocol and
/// would make the rest of the key the start of the workload.
pub fn gearman_unique(uniqkey: Option<&str>) -> &str {
    match uniqkey {
        Some(k) if k.len() <= MAX_GEARMAN_UNIQUE && !k.contains('\0') => k,
        _ => "",
    }
}

/// One background job to submit.
#[derive(Debug, Clone)]
pub struct BackgroundJob {
    /// The Gearman function.
    pub function: String,
    /// The Gearman unique id ("" for none).
    pub unique: String,
    /// The workload.
    pub data: Bytes,
    /// Its place in gearmand's queue of the function: a high job goes
    /// before the normal and low ones waiting there.
    pub priority: Priority,
}

/// Submits background jobs to a set of gearmand servers, pipelined: a
/// batch is written at once and its answers read after, so a batch costs
/// one round trip, not one per job.
///
/// A server that fails is skipped while another is live (see the module
/// docs): one dead server of several costs the batch that found it dead,
/// not every other batch.
pub struct Submitter {
    servers: Vec<Arc<Health>>,
    conns: Vec<Option<Conn>>,
    next: usize,
    status: StatusReader,
    /// Ends the probes of servers that failed.
    stop: CancellationToken,
    _stop: DropGuard,
}

impl Submitter {
    /// A submitter for `servers`; it connects on first use and reconnects
    /// after failures.
    pub fn new(servers: Vec<String>) -> Submitter {
        let conns = servers.iter().map(|_| None).collect();
        let stop = CancellationToken::new();
        Submitter {
            status: StatusReader::new(servers.clone()),
            servers: servers
                .into_iter()
                .map(|s| Health::new(s, "gearmand unreachable for submits"))
                .collect(),
            conns,
            next: 0,
            _stop: stop.clone().drop_guard(),
            stop,
        }
    }

    /// Submits `jobs` as background jobs. Returns, per job in order,
    /// whether gearmand acknowledged it (JOB_CREATED). A batch goes to one
    /// live server, chosen in turn; what it does not acknowledge is tried
    /// on the next live one, until every live server has been tried. Down
    /// servers are tried only when no server is live (any more).
    pub async fn submit(&mut self, jobs: &[BackgroundJob]) -> Vec<bool> {
        let mut acked = vec![false; jobs.len()];
        let count = self.servers.len();
        if count == 0 {
            return acked;
        }
        let start = self.next;
        self.next = (self.next + 1) % count;
        let mut tried = vec![false; count];
        for live_only in [true, false] {
            if !live_only && any_live(&self.servers) {
                break;
            }
            for k in 0..count {
                let s = (start + k) % count;
                if tried[s] || (live_only && !self.servers[s].is_live()) {
                    continue;
                }
                let pending: Vec<usize> = (0..jobs.len()).filter(|&i| !acked[i]).collect();
                if pending.is_empty() {
                    return acked;
                }
                tried[s] = true;
                match self.submit_to(s, jobs, &pending, &mut acked).await {
                    Ok(()) => self.servers[s].answered(),
                    Err(err) => {
                        self.conns[s] = None;
                        self.servers[s].failed(&err);
                        self.servers[s].probe_in_background(Probe::Echo, &self.stop);
                    }
                }
            }
        }
        acked
    }

    /// Jobs and workers per function over the servers, as
    /// [`StatusReader::function_status`] reads them.
    pub async fn function_status(&self) -> (HashMap<String, FunctionLoad>, Vec<Error>) {
        self.status.function_status().await
    }

    async fn submit_to(
        &mut self,
        s: usize,
        jobs: &[BackgroundJob],
        pending: &[usize],
        acked: &mut [bool],
    ) -> Result<()> {
        let server = self.servers[s].server.clone();
        if self.conns[s].is_none() {
            self.conns[s] = Some(connect(&server).await?);
        }
        let conn = self.conns[s].as_mut().expect("connected above");
        for &i in pending {
            let job = &jobs[i];
            let kind = match job.priority {
                Priority::High => PacketType::SubmitJobHighBg,
                Priority::Normal => PacketType::SubmitJobBg,
                Priority::Low => PacketType::SubmitJobLowBg,
            };
            let pkt = req(
                kind,
                vec![
                    Bytes::copy_from_slice(job.function.as_bytes()),
                    Bytes::copy_from_slice(job.unique.as_bytes()),
                    job.data.clone(),
                ],
            );
            conn.feed(pkt).await.map_err(|e| gearman_err(&server, e))?;
        }
        conn.flush().await.map_err(|e| gearman_err(&server, e))?;
        // gearmand answers a connection's requests in order.
        for &i in pending {
            let pkt = recv(conn, &server).await?;
            match pkt.ptype {
                PacketType::JobCreated => acked[i] = true,
                PacketType::Error => {
                    tracing::warn!(
                        gearmand = %server,
                        funcname = %jobs[i].function,
                        code = %String::from_utf8_lossy(pkt.arg(0).map_or(&b""[..], |b| b)),
                        text = %String::from_utf8_lossy(pkt.arg(1).map_or(&b""[..], |b| b)),
                        "gearmand refused a job"
                    );
                }
                other => {
                    return Err(Error::GearmanProtocol {
                        server,
                        what: format!("{other:?} in answer to SUBMIT_JOB_BG"),
                    })
                }
            }
        }
        Ok(())
    }
}

/// Jobs and workers of one function, summed over the servers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FunctionLoad {
    /// Jobs queued or running.
    pub queued: u64,
    /// Jobs running.
    pub running: u64,
    /// Workers registered.
    pub workers: u64,
}

/// Most bytes of one `status` reply we read (some 200,000 functions):
/// past it the server counts as failed.
pub const MAX_STATUS_REPLY: usize = 16 * 1024 * 1024;

/// How long a `.` line that ends what has come so far, but may be a line
/// of a function name (a line of a name is still open), is waited on.
const STATUS_GRACE: Duration = Duration::from_millis(250);

/// Jobs and workers per function on one server, from the admin `status`
/// command, in the order the server lists them.
///
/// Read and parsed here, not by the crate's admin client (see the module
/// docs): a line that does not parse is skipped, not the whole reply. A
/// name with a tab or a newline is read back whole; one that is not UTF-8
/// is kept, its bad bytes replaced by U+FFFD. Each such line is logged
/// once per process, at warn, escaped.
pub async fn server_status(server: &str) -> Result<Vec<(String, FunctionLoad)>> {
    let mut stream = connect_stream(server).await?;
    let reply = tokio::time::timeout(REPLY_TIMEOUT, async {
        stream
            .write_all(b"status\r\n")
            .await
            .map_err(|e| io_err(server, e))?;
        read_status(&mut stream, server).await
    })
    .await
    .map_err(|_| gearman_err(server, gearman::GearmanError::Timeout))??;
    for (note, line) in &reply.notes {
        if first_sighting(server, line) {
            tracing::warn!(gearmand = %server, line = %line.escape_ascii(), "{}", note.message());
        }
    }
    Ok(reply.rows)
}

/// Reads a `status` reply up to its end: a `.` line that nothing follows.
/// gearmand writes the reply at once and we sent one command, so a `.`
/// line with more bytes behind it (read, or already in the socket) is a
/// line of a function name. So is one while a name is open, when more
/// comes within [`STATUS_GRACE`].
///
/// What this cannot tell: a name that starts with `.\n` (no name open
/// before it), whose `.` line is the last of a TCP segment, ends the
/// reply early; the functions after it are missing from that one reply.
/// No end marker of our own would do better: gearmand 1.1 echoes an
/// unknown command's name (`ERR UNKNOWN_COMMAND
/// Unknown+server+command<name>`, which a random name would make
/// unforgeable), but older servers do not, and a client that half-closes
/// after `status` mostly gets no reply at all.
async fn read_status(stream: &mut TcpStream, server: &str) -> Result<StatusReply> {
    const CHUNK: usize = 64 * 1024;
    let io = |e| io_err(server, e);
    let mut buf: Vec<u8> = Vec::with_capacity(CHUNK);
    let mut parser = StatusParser::default();
    let mut pos = 0;
    loop {
        while let Some(n) = buf[pos..].iter().position(|&b| b == b'\n') {
            let (line, next) = (pos..pos + n, pos + n + 1);
            if matches!(&buf[line.clone()], b"." | b".\r") && next == buf.len() {
                buf.reserve(CHUNK);
                let more = match stream.try_read_buf(&mut buf) {
                    Ok(n) => n > 0,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
                    Err(e) => return Err(io(e)),
                };
                let more = more
                    || (parser.is_open()
                        && matches!(
                            tokio::time::timeout(STATUS_GRACE, stream.read_buf(&mut buf)).await,
                            Ok(Ok(1..))
                        ));
                if !more {
                    return Ok(parser.finish());
                }
            }
            parser.line(&buf[line]);
            pos = next;
        }
        if buf.len() > MAX_STATUS_REPLY {
            return Err(Error::GearmanProtocol {
                server: server.to_string(),
                what: format!("status reply of more than {MAX_STATUS_REPLY} bytes"),
            });
        }
        buf.reserve(CHUNK);
        if stream.read_buf(&mut buf).await.map_err(io)? == 0 {
            return Err(gearman_err(server, gearman::GearmanError::ConnectionClosed));
        }
    }
}

/// Something odd in a `status` reply, worth one warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StatusNote {
    /// Lines that are no function's: skipped.
    Skipped,
    /// A function name with a newline, read back across its lines.
    Joined,
    /// A function name that is not UTF-8, kept lossily.
    NotUtf8,
}

impl StatusNote {
    fn message(self) -> &'static str {
        match self {
            StatusNote::Skipped => "gearmand status: skipping a line that cannot be parsed (a function name with a tab or newline?)",
            StatusNote::Joined => "gearmand status: a function name with a newline, read back across its lines (other admin tools may misread it)",
            StatusNote::NotUtf8 => "gearmand status: a function name that is not UTF-8, reported with U+FFFD for its bad bytes",
        }
    }
}

/// A parsed `status` reply.
#[derive(Debug, Default)]
struct StatusReply {
    rows: Vec<(String, FunctionLoad)>,
    /// What was odd, with the line (or name) it was about.
    notes: Vec<(StatusNote, Vec<u8>)>,
}

/// Reads the lines of a `status` reply, `NAME\tTOTAL\tRUNNING\tWORKERS`.
///
/// The three counts are the last three fields, so a tab in the name is
/// read back whole. gearmand prints a name as it is, so a name with a
/// newline takes several lines, and only the last one ends with counts:
/// a line without counts opens a name, which the next line with counts
/// closes. Lines still open at the end are skipped. (A name that holds a
/// whole line with counts, as `a\t1\t2\t3\nb`, is read as two functions:
/// the reply cannot tell them apart.)
#[derive(Debug, Default)]
struct StatusParser {
    reply: StatusReply,
    /// The lines of a name with a newline read so far, joined by `\n`.
    open: Option<Vec<u8>>,
}

impl StatusParser {
    /// Whether lines of a name are waiting for the line with its counts.
    fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// One line, without its `\n`.
    fn line(&mut self, line: &[u8]) {
        let notes = &mut self.reply.notes;
        let Some((name, load)) = split_counts(line) else {
            match &mut self.open {
                Some(open) => {
                    open.push(b'\n');
                    open.extend_from_slice(line);
                }
                None => self.open = Some(line.to_vec()),
            }
            return;
        };
        let name = match self.open.take() {
            Some(mut open) => {
                open.push(b'\n');
                open.extend_from_slice(name);
                notes.push((StatusNote::Joined, open.clone()));
                open
            }
            None => name.to_vec(),
        };
        let name = String::from_utf8(name).unwrap_or_else(|e| {
            let bytes = e.into_bytes();
            let lossy = String::from_utf8_lossy(&bytes).into_owned();
            notes.push((StatusNote::NotUtf8, bytes));
            lossy
        });
        self.reply.rows.push((name, load));
    }

    fn finish(mut self) -> StatusReply {
        if let Some(open) = self.open.take() {
            self.reply.notes.push((StatusNote::Skipped, open));
        }
        self.reply
    }
}

/// `NAME\tTOTAL\tRUNNING\tWORKERS` into the name and the counts.
fn split_counts(line: &[u8]) -> Option<(&[u8], FunctionLoad)> {
    fn count(field: &[u8]) -> Option<u64> {
        if field.is_empty() || !field.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(field).ok()?.parse().ok()
    }
    let mut fields = line.rsplitn(4, |&b| b == b'\t');
    let last = fields.next()?;
    let workers = count(last.strip_suffix(b"\r").unwrap_or(last))?;
    let running = count(fields.next()?)?;
    let queued = count(fields.next()?)?;
    let name = fields.next()?;
    let load = FunctionLoad {
        queued,
        running,
        workers,
    };
    Some((name, load))
}

/// Distinct odd `status` lines remembered so that each is logged once per
/// process; past this many (any client can make more) no more are logged.
const MAX_LOGGED_STATUS_LINES: usize = 1000;

/// Whether `line` of `server` is seen for the first time in this process.
fn first_sighting(server: &str, line: &[u8]) -> bool {
    type Seen = std::sync::Mutex<std::collections::HashSet<(String, Vec<u8>)>>;
    static SEEN: std::sync::OnceLock<Seen> = std::sync::OnceLock::new();
    let mut seen = SEEN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    seen.len() < MAX_LOGGED_STATUS_LINES && seen.insert((server.to_string(), line.to_vec()))
}

/// Jobs and workers per function, summed over `servers`, from the admin
/// `status` command. The servers are read at once, each bounded (connect
/// and reply timeouts): a server that does not answer costs its own
/// timeout, once, and is left out and named in the error list. Keeps no
/// state: a [`StatusReader`] also skips servers known to be down.
pub async fn function_status(servers: &[String]) -> (HashMap<String, FunctionLoad>, Vec<Error>) {
    sum_status(futures::future::join_all(servers.iter().map(|s| server_status(s))).await)
}

/// Queue depth (queued + running jobs) per function, summed over `servers`;
/// see [`function_status`].
pub async fn queue_depths(servers: &[String]) -> (HashMap<String, u64>, Vec<Error>) {
    depths(function_status(servers).await)
}

fn depths(
    (load, errors): (HashMap<String, FunctionLoad>, Vec<Error>),
) -> (HashMap<String, u64>, Vec<Error>) {
    (
        load.into_iter().map(|(f, l)| (f, l.queued)).collect(),
        errors,
    )
}

/// The servers' `status` rows summed per function, and the errors of those
/// that failed, in server order.
fn sum_status(
    replies: Vec<Result<Vec<(String, FunctionLoad)>>>,
) -> (HashMap<String, FunctionLoad>, Vec<Error>) {
    let mut load: HashMap<String, FunctionLoad> = HashMap::new();
    let mut errors = Vec::new();
    for reply in replies {
        match reply {
            Ok(rows) => {
                for (function, row) in rows {
                    let l = load.entry(function).or_default();
                    l.queued += row.queued;
                    l.running += row.running;
                    l.workers += row.workers;
                }
            }
            Err(e) => errors.push(e),
        }
    }
    (load, errors)
}

/// Reads gearmand's `status` from several servers, as [`function_status`]
/// does (at once, each bounded), and keeps a health state per server: one
/// whose read failed is skipped, and named in the error list at once,
/// while another server is live, until a read in the background answers
/// again. A server that hangs therefore costs its reply timeout once per
/// outage, not once per read. With every server down, every one is read.
/// Its outages log at debug level: its callers say what a failed read
/// means to them. Clones share the state.
#[derive(Clone)]
pub struct StatusReader {
    servers: Arc<Vec<Arc<Health>>>,
    stop: CancellationToken,
    /// Ends the probes once the last clone is dropped.
    _stop: Arc<DropGuard>,
}

impl StatusReader {
    /// A reader of `servers`, all live until a read fails.
    pub fn new(servers: Vec<String>) -> StatusReader {
        let stop = CancellationToken::new();
        let servers = servers
            .into_iter()
            .map(|s| {
                let outage = Outage::quiet("gearmand status unreadable").about(s.clone());
                Health::with_outage(s, outage)
            })
            .collect();
        StatusReader {
            servers: Arc::new(servers),
            _stop: Arc::new(stop.clone().drop_guard()),
            stop,
        }
    }

    /// How many servers it reads.
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// Whether it has no server.
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// Jobs and workers per function, summed over the servers read; the
    /// errors of those that failed or were skipped, in server order.
    pub async fn function_status(&self) -> (HashMap<String, FunctionLoad>, Vec<Error>) {
        let all = !any_live(&self.servers);
        let reads = self.servers.iter().map(|h| async move {
            if !all && !h.is_live() {
                return Err(skipped(&h.server));
            }
            let reply = server_status(&h.server).await;
            match &reply {
                Ok(_) => h.answered(),
                Err(err) => {
                    h.failed(err);
                    h.probe_in_background(Probe::Status, &self.stop);
                }
            }
            reply
        });
        sum_status(futures::future::join_all(reads).await)
    }

    /// Queue depth (queued + running jobs) per function; see
    /// [`StatusReader::function_status`].
    pub async fn queue_depths(&self) -> (HashMap<String, u64>, Vec<Error>) {
        depths(self.function_status().await)
    }
}

/// A job handed to a worker.
#[derive(Debug, Clone)]
pub struct Assignment {
    /// gearmand's handle for it.
    pub handle: Bytes,
    /// The function it was submitted to.
    pub function: String,
    /// Its unique id, if it had one.
    pub unique: Option<String>,
    /// The workload.
    pub data: Bytes,
}

/// How a worker's handler ended a job.
#[derive(Debug, Clone)]
pub enum WorkResult {
    /// WORK_COMPLETE with this result.
    Complete(Bytes),
    /// WORK_FAIL.
    Fail,
    /// WORK_WARNING with this message, then WORK_FAIL: every client gets a
    /// failure, and those that read warnings get the reason.
    FailWith(Bytes),
}

/// Most worker connections per server: each wakes on every new job of its
/// function (gearmand wakes all sleeping workers), so more connections
/// than needed for throughput only cost wake-ups.
pub const MAX_WORKER_CONNECTIONS: usize = 8;
/// Jobs one worker connection holds at most before another is opened:
/// with grabs pipelined, one connection takes a backlog as fast as
/// several, and every connection more is woken on every new job.
pub const SLOTS_PER_CONNECTION: usize = 64;
/// Connections [`serve`] opens to each server for `concurrency` jobs at
/// once.
pub fn worker_connections(concurrency: usize) -> usize {
    concurrency
        .max(1)
        .div_ceil(SLOTS_PER_CONNECTION)
        .min(MAX_WORKER_CONNECTIONS)
}

/// Grabs (GRAB_JOB_UNIQ) one worker connection keeps in flight at most.
const MAX_GRABS_IN_FLIGHT: usize = 32;

/// How long a worker waits, after shutdown, for the jobs in hand.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `function` on every server with up to `concurrency` jobs running
/// at once per server, until `shutdown`. Jobs are spread over a few
/// connections ([`worker_connections`]), each holding several jobs at once
/// (gearmand assigns a connection as many jobs as it grabs) and keeping
/// several grabs in flight while jobs keep coming; answers ready together
/// go out in one write. On shutdown no new job is grabbed,
/// and the jobs in hand are finished and answered, for at most
/// `shutdown_timeout`: then their connections close, and gearmand gives
/// their Gearman jobs to other workers. Lost connections are retried with
/// capped, jittered backoff; an outage is logged once.
pub async fn serve<H, F>(
    servers: Vec<String>,
    function: String,
    concurrency: usize,
    handler: H,
    shutdown: CancellationToken,
    shutdown_timeout: Duration,
) where
    H: Fn(Assignment) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = WorkResult> + Send + 'static,
{
    let concurrency = concurrency.max(1);
    let connections = worker_connections(concurrency);
    let mut tasks = tokio::task::JoinSet::new();
    for server in servers {
        for c in 0..connections {
            // Split `concurrency` over the connections as evenly as it goes.
            let slots = concurrency / connections + usize::from(c < concurrency % connections);
            let (server, function, handler, shutdown) = (
                server.clone(),
                function.clone(),
                handler.clone(),
                shutdown.clone(),
            );
            tasks.spawn(async move {
                // The first connection to a server speaks for all of them.
                const WHAT: &str = "gearmand unreachable for worker";
                let outage = if c == 0 {
                    Outage::new(WHAT)
                } else {
                    Outage::quiet(WHAT)
                }
                .about(format!("{server}, {function}"));
                while !shutdown.is_cancelled() {
                    let session = WorkSession {
                        server: &server,
                        function: &function,
                        slots,
                        handler: &handler,
                        shutdown: &shutdown,
                        shutdown_timeout,
                    };
                    match session.run(&outage).await {
                        Ok(()) => break,
                        Err(err) => {
                            outage.failed(&err);
                            tokio::select! {
                                _ = shutdown.cancelled() => break,
                                _ = tokio::time::sleep(outage.delay()) => {}
                            }
                        }
                    }
                }
            });
        }
    }
    while let Some(res) = tasks.join_next().await {
        if let Err(e) = res {
            tracing::error!(error = %e, "worker connection task ended badly");
        }
    }
}

struct WorkSession<'a, H> {
    server: &'a str,
    function: &'a str,
    slots: usize,
    handler: &'a H,
    shutdown: &'a CancellationToken,
    shutdown_timeout: Duration,
}

impl<H, F> WorkSession<'_, H>
where
    H: Fn(Assignment) -> F,
    F: Future<Output = WorkResult> + Send + 'static,
{
    /// One worker connection's life: Ok after a clean shutdown (every job
    /// in hand answered), Err when the connection is lost. Jobs still
    /// running then finish on their own; gearmand gives their Gearman jobs
    /// to another worker.
    async fn run(&self, outage: &Outage) -> Result<()> {
        let server = self.server;
        let err = |e| gearman_err(server, e);
        let mut conn = Framed::new(connect_stream(server).await?, WorkerCodec::default());
        let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<Vec<Packet>>(self.slots);
        let mut running = 0usize;
        // Grabs sent and not answered yet, and how many to keep in flight
        // while jobs keep coming: one after a wake-up, twice as many after
        // each job (up to the free slots), so that a backlog comes in a
        // few round trips while a lone job costs one grab more at most.
        let mut grabs = 0usize;
        let mut depth = 1usize;
        // A grab found the queue empty: no more grabs; once every grab is
        // answered, sleep until gearmand's NOOP.
        let mut empty = false;
        let mut sleeping = false;
        let mut stopping = false;
        let mut give_up = tokio::time::Instant::now();

        conn.feed(req(
            PacketType::CanDo,
            vec![Bytes::copy_from_slice(self.function.as_bytes())],
        ))
        .await
        .map_err(err)?;
        loop {
            if !stopping && !sleeping {
                if empty {
                    if grabs == 0 {
                        conn.feed(req(PacketType::PreSleep, vec![]))
                            .await
                            .map_err(err)?;
                        (sleeping, empty, depth) = (true, false, 1);
                    }
                } else {
                    let want = depth.min(self.slots - running);
                    while grabs < want {
                        conn.feed(req(PacketType::GrabJobUniq, vec![]))
                            .await
                            .map_err(err)?;
                        grabs += 1;
                    }
                }
            }
            conn.flush().await.map_err(err)?;
            // A grab still unanswered is no reason to stay: a job gearmand
            // assigns to a connection that closes goes back to its queue.
            // (Waiting for the answer held a stopping role for the whole
            // shutdown timeout when gearmand hung.)
            if stopping && running == 0 {
                return Ok(());
            }
            tokio::select! {
                _ = self.shutdown.cancelled(), if !stopping => {
                    stopping = true;
                    give_up = tokio::time::Instant::now() + self.shutdown_timeout;
                }
                _ = tokio::time::sleep_until(give_up), if stopping => {
                    tracing::warn!(gearmand = %server, function = %self.function, jobs = running, "shutdown timeout: leaving jobs unfinished");
                    return Ok(());
                }
                Some(answer) = done_rx.recv() => {
                    // Every answer ready now goes out in one write.
                    let mut next = Some(answer);
                    while let Some(answer) = next {
                        running -= 1;
                        for pkt in answer {
                            conn.feed(pkt).await.map_err(err)?;
                        }
                        next = done_rx.try_recv().ok();
                    }
                }
                pkt = conn.next() => {
                    let pkt = match pkt {
                        None => return Err(err(gearman::GearmanError::ConnectionClosed)),
                        Some(frame) => match frame.map_err(err)? {
                            WorkerFrame::Packet(pkt) => pkt,
                            WorkerFrame::Oversized(big) => {
                                if self.refuse(big, &mut conn, outage).await? {
                                    grabs = grabs.saturating_sub(1);
                                }
                                continue;
                            }
                        },
                    };
                    match pkt.ptype {
                        PacketType::JobAssignUniq if pkt.args.len() == 4 => {
                            outage.ended();
                            grabs = grabs.saturating_sub(1);
                            depth = (depth * 2).min(MAX_GRABS_IN_FLIGHT);
                            running += 1;
                            self.start_job(pkt, done_tx.clone());
                        }
                        PacketType::NoJob => {
                            outage.ended();
                            grabs = grabs.saturating_sub(1);
                            empty = true;
                        }
                        PacketType::Noop => sleeping = false,
                        // e.g. an answer for a job gearmand no longer knows:
                        // nothing to undo, the connection is still good.
                        PacketType::Error => tracing::warn!(
                            gearmand = %server,
                            error = %String::from_utf8_lossy(pkt.arg(1).map_or(&b""[..], |b| b)),
                            "gearmand answered ERROR"
                        ),
                        other => tracing::debug!(gearmand = %server, packet = ?other, "ignoring packet"),
                    }
                }
            }
        }
    }

    /// Answers a packet over [`MAX_PACKET`]: a job is refused as
    /// [`WorkResult::FailWith`] would (WORK_WARNING with the reason, then
    /// WORK_FAIL); anything else is ignored. Returns whether it was a job
    /// (the answer to our grab); Err for a job without a handle.
    async fn refuse(
        &self,
        big: Oversized,
        conn: &mut Framed<TcpStream, WorkerCodec>,
        outage: &Outage,
    ) -> Result<bool> {
        let server = self.server;
        let assignment = matches!(
            big.ptype,
            PacketType::JobAssign | PacketType::JobAssignUniq | PacketType::JobAssignAll
        );
        if !assignment {
            tracing::warn!(gearmand = %server, packet = ?big.ptype, bytes = big.len, "ignoring a packet over the size limit");
            return Ok(false);
        }
        // Without its handle the job cannot be answered: malformed, as any
        // packet the codec refuses, and so is the connection.
        let Some(handle) = big.fields.first().filter(|h| !h.is_empty()).cloned() else {
            return Err(Error::GearmanProtocol {
                server: server.to_string(),
                what: format!("{:?} of {} bytes without a handle", big.ptype, big.len),
            });
        };
        outage.ended();
        let reason = big.refusal();
        tracing::warn!(
            gearmand = %server,
            function = %big.fields.get(1).map_or(&b""[..], |f| f).escape_ascii(),
            bytes = big.len,
            "refusing a job over the size limit: {reason}"
        );
        for pkt in [
            req(
                PacketType::WorkWarning,
                vec![handle.clone(), Bytes::from(reason)],
            ),
            req(PacketType::WorkFail, vec![handle]),
        ] {
            conn.feed(pkt).await.map_err(|e| gearman_err(server, e))?;
        }
        Ok(true)
    }

    /// Runs one job in a task of its own; its answer comes back on `done`.
    /// A handler that panics answers WORK_FAIL, so its slot is not lost.
    fn start_job(&self, pkt: Packet, done: tokio::sync::mpsc::Sender<Vec<Packet>>) {
        use futures::FutureExt as _;
        let unique = pkt.arg_str(2).filter(|u| !u.is_empty()).map(str::to_string);
        let assignment = Assignment {
            handle: pkt.args[0].clone(),
            function: pkt.arg_str(1).unwrap_or_default().to_string(),
            unique,
            data: pkt.args[3].clone(),
        };
        let handle = assignment.handle.clone();
        let work = std::panic::AssertUnwindSafe((self.handler)(assignment)).catch_unwind();
        tokio::spawn(async move {
            let answer = match work.await {
                Ok(WorkResult::Complete(result)) => {
                    vec![req(PacketType::WorkComplete, vec![handle, result])]
                }
                // Not WORK_EXCEPTION: gearmand 1.1 ends the job on it but
                // tells only clients that asked for exceptions, so any other
                // client would wait forever. Every client gets WORK_WARNING.
                Ok(WorkResult::FailWith(message)) => vec![
                    req(PacketType::WorkWarning, vec![handle.clone(), message]),
                    req(PacketType::WorkFail, vec![handle]),
                ],
                Ok(WorkResult::Fail) => vec![req(PacketType::WorkFail, vec![handle])],
                Err(_) => {
                    tracing::error!("job handler panicked; answering WORK_FAIL");
                    vec![req(PacketType::WorkFail, vec![handle])]
                }
            };
            // The connection may be gone; gearmand then reassigns the job.
            let _ = done.send(answer).await;
        });
    }
}

/// How a foreground job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// WORK_COMPLETE, with the worker's result.
    Complete(Bytes),
    /// WORK_FAIL, with the last WORK_WARNING before it (empty if none).
    Fail(Bytes),
    /// WORK_EXCEPTION, with the worker's message.
    Exception(Bytes),
}

/// Why a foreground submit to one server got no outcome.
#[derive(Debug)]
enum Failure {
    /// The server did not take the job: it is down, refused it, or the
    /// connection was lost before JOB_CREATED. Another server may take it.
    NotCreated(Error),
    /// The connection was lost after JOB_CREATED: the outcome is unknown.
    Lost(Error),
}

type Waiter = oneshot::Sender<std::result::Result<Outcome, Failure>>;

struct Submit {
    function: String,
    unique: String,
    data: Bytes,
    /// Every server was down when it was sent: a down lane tries to
    /// connect for it rather than refuse it.
    force: bool,
    reply: Waiter,
}

impl Submit {
    fn into_parts(self) -> (Packet, Waiter) {
        let pkt = req(
            PacketType::SubmitJob,
            vec![
                Bytes::from(self.function),
                Bytes::from(self.unique),
                self.data,
            ],
        );
        (pkt, self.reply)
    }
}

/// One server's connection task, and its health as that task sees it.
struct Lane {
    tx: mpsc::Sender<Submit>,
    health: Arc<Health>,
}

/// Submits foreground jobs and waits for their outcome. Many jobs share
/// one connection per server (jobs go to the live servers in turn); each
/// connection has a task of its own, started on first use and again after
/// a failure.
///
/// A job that a server did not take (down, refused, or its connection lost
/// before JOB_CREATED) is tried on the next live server, once per server,
/// so a dead server costs a job at most a connect attempt. A job whose
/// connection is lost after JOB_CREATED gets an error: its outcome is
/// unknown. A server that failed is skipped while another is live, and
/// its task reconnects in the background (capped, jittered backoff).
#[derive(Clone)]
pub struct ForegroundClient {
    lanes: Arc<Vec<Lane>>,
    next: Arc<AtomicUsize>,
    status: StatusReader,
    /// Cancels the lanes' reconnect pauses once the last clone is dropped.
    _stop: Arc<DropGuard>,
}

/// Foreground submits queued per connection before callers wait.
const FOREGROUND_QUEUE: usize = 1024;

impl ForegroundClient {
    /// A client for `servers`. Must be called within a Tokio runtime.
    pub fn new(servers: Vec<String>) -> ForegroundClient {
        let stop = CancellationToken::new();
        let status = StatusReader::new(servers.clone());
        let lanes = servers
            .into_iter()
            .map(|server| {
                let (tx, rx) = mpsc::channel(FOREGROUND_QUEUE);
                let health = Health::new(server, "gearmand unreachable for foreground jobs");
                tokio::spawn(foreground_lane(health.clone(), rx, stop.clone()));
                Lane { tx, health }
            })
            .collect();
        ForegroundClient {
            lanes: Arc::new(lanes),
            next: Default::default(),
            status,
            _stop: Arc::new(stop.drop_guard()),
        }
    }

    /// Submits a foreground job and waits until a worker ends it. Tries
    /// the live servers in turn until one takes the job (all of them when
    /// none is live); fails with the last server's error when none does,
    /// or when the job was lost after a server took it.
    pub async fn submit(&self, function: &str, unique: &str, data: Bytes) -> Result<Outcome> {
        let lanes = &self.lanes;
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut tried = vec![false; lanes.len()];
        let mut last = None;
        let gone = || Error::GearmanProtocol {
            server: "(client)".into(),
            what: "shutdown of the foreground client".into(),
        };
        loop {
            let all = !lanes.iter().any(|l| l.health.is_live());
            let pick = (0..lanes.len())
                .map(|k| (n + k) % lanes.len())
                .find(|&i| !tried[i] && (all || lanes[i].health.is_live()));
            let Some(i) = pick else {
                return Err(last.unwrap_or(Error::NoGearmand));
            };
            tried[i] = true;
            let (reply, answer) = oneshot::channel();
            let submit = Submit {
                function: function.to_string(),
                unique: unique.to_string(),
                data: data.clone(),
                force: all,
                reply,
            };
            lanes[i].tx.send(submit).await.map_err(|_| gone())?;
            match answer.await.map_err(|_| gone())? {
                Ok(outcome) => return Ok(outcome),
                Err(Failure::NotCreated(err)) => last = Some(err),
                Err(Failure::Lost(err)) => return Err(err),
            }
        }
    }

    /// Jobs and workers per function over the servers, as
    /// [`StatusReader::function_status`] reads them (its own health state:
    /// a status read says nothing of this client's connections).
    pub async fn function_status(&self) -> (HashMap<String, FunctionLoad>, Vec<Error>) {
        self.status.function_status().await
    }
}

/// One server's connection for foreground jobs: connects when the first
/// submit comes, or, while the server is down, as a probe after a pause
/// (refusing the submits that come meanwhile, unless every server is down,
/// so that the client takes them elsewhere).
async fn foreground_lane(
    health: Arc<Health>,
    mut rx: mpsc::Receiver<Submit>,
    stop: CancellationToken,
) {
    let server = health.server.clone();
    let refuse = |s: Submit, err: Error| {
        let _ = s.reply.send(Err(Failure::NotCreated(err)));
    };
    let mut first: Option<Submit> = None;
    loop {
        if health.is_live() {
            tokio::select! {
                s = rx.recv() => match s {
                    Some(s) => first = Some(s),
                    None => return,
                },
                _ = stop.cancelled() => return,
            }
        } else {
            let probe_at = tokio::time::Instant::now() + health.outage.delay();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(probe_at) => break,
                    _ = stop.cancelled() => return,
                    s = rx.recv() => match s {
                        None => return,
                        Some(s) if s.force => {
                            first = Some(s);
                            break;
                        }
                        Some(s) => refuse(s, skipped(&server)),
                    },
                }
            }
        }
        let conn = match connect_foreground(&server).await {
            Ok(conn) => conn,
            Err(err) => {
                health.failed(&err);
                if let Some(s) = first.take() {
                    refuse(s, err);
                }
                // Refuse what queued up meanwhile rather than make it wait.
                while let Ok(s) = rx.try_recv() {
                    refuse(s, skipped(&server));
                }
                continue;
            }
        };
        health.answered();
        if let LaneEnd::Closed = run_lane(&health, conn, first.take(), &mut rx).await {
            return;
        }
    }
}

/// How a lane's connection ended.
enum LaneEnd {
    /// The client is gone and every job ended.
    Closed,
    /// The connection was lost; the server is marked down.
    Lost,
}

/// One connection's life: submits go out as they come; JOB_CREATED
/// answers arrive in submit order and tie each waiter to its handle;
/// WORK_* packets then end the job with that handle.
async fn run_lane(
    health: &Health,
    mut conn: Conn,
    first: Option<Submit>,
    rx: &mut mpsc::Receiver<Submit>,
) -> LaneEnd {
    let server = health.server.as_str();
    // Waiters for JOB_CREATED, in submit order, with when each was sent.
    let mut created: VecDeque<(Waiter, tokio::time::Instant)> = VecDeque::new();
    let mut running: HashMap<Bytes, Vec<Waiter>> = HashMap::new();
    let mut warnings: HashMap<Bytes, Bytes> = HashMap::new();
    let mut next = first;
    let mut closed = false;
    let failure = loop {
        if closed && created.is_empty() && running.is_empty() {
            return LaneEnd::Closed;
        }
        if let Some(s) = next.take() {
            // Take whatever else is queued before the one flush.
            let mut batch = vec![s];
            while let Ok(s) = rx.try_recv() {
                batch.push(s);
            }
            let mut fed = Ok(());
            let now = tokio::time::Instant::now();
            for s in batch {
                let (pkt, reply) = s.into_parts();
                if fed.is_ok() {
                    fed = conn.feed(pkt).await;
                }
                match fed {
                    Ok(()) => created.push_back((reply, now)),
                    Err(_) => {
                        let _ = reply.send(Err(Failure::NotCreated(gearman_err(
                            server,
                            gearman::GearmanError::ConnectionClosed,
                        ))));
                    }
                }
            }
            if let Err(e) = fed {
                break gearman_err(server, e);
            }
            if let Err(e) = conn.flush().await {
                break gearman_err(server, e);
            }
        }
        // A server that takes submits and never answers them is as good
        // as gone: its waiters go elsewhere.
        let answer_by = created.front().map(|(_, sent)| *sent + REPLY_TIMEOUT);
        tokio::select! {
            s = rx.recv(), if !closed => match s {
                Some(s) => next = Some(s),
                None => closed = true,
            },
            _ = sleep_until_some(answer_by) => {
                break gearman_err(server, gearman::GearmanError::Timeout);
            }
            pkt = conn.next() => {
                let pkt = match pkt {
                    None => break gearman_err(server, gearman::GearmanError::ConnectionClosed),
                    Some(Err(e)) => break gearman_err(server, e),
                    Some(Ok(pkt)) => pkt,
                };
                let handle = pkt.arg(0).cloned().unwrap_or_default();
                let end = |running: &mut HashMap<Bytes, Vec<Waiter>>, warnings: &mut HashMap<Bytes, Bytes>, outcome: Outcome| {
                    warnings.remove(&handle);
                    for w in running.remove(&handle).unwrap_or_default() {
                        let _ = w.send(Ok(outcome.clone()));
                    }
                };
                match pkt.ptype {
                    PacketType::JobCreated => match created.pop_front() {
                        // gearmand gives two submits with one unique id the
                        // same handle: both wait for that one job.
                        Some((w, _)) => {
                            health.answered();
                            running.entry(handle).or_default().push(w);
                        }
                        None => break Error::GearmanProtocol { server: server.to_string(), what: "JOB_CREATED with no submit".into() },
                    },
                    PacketType::Error => match created.pop_front() {
                        Some((w, _)) => {
                            let text = String::from_utf8_lossy(pkt.arg(1).map_or(&b""[..], |b| b)).into_owned();
                            let _ = w.send(Err(Failure::NotCreated(Error::GearmanProtocol { server: server.to_string(), what: format!("ERROR {text}") })));
                        }
                        None => break Error::GearmanProtocol { server: server.to_string(), what: "ERROR with no submit".into() },
                    },
                    PacketType::WorkComplete => end(&mut running, &mut warnings, Outcome::Complete(pkt.args[1].clone())),
                    PacketType::WorkFail => {
                        let warning = warnings.get(&handle).cloned().unwrap_or_default();
                        end(&mut running, &mut warnings, Outcome::Fail(warning))
                    }
                    PacketType::WorkException => end(&mut running, &mut warnings, Outcome::Exception(pkt.args[1].clone())),
                    PacketType::WorkWarning if running.contains_key(&handle) => {
                        warnings.insert(handle, pkt.args[1].clone());
                    }
                    _ => {} // WORK_DATA, WORK_STATUS, OPTION_RES: nothing to do
                }
            }
        }
    };
    // Marked down before any waiter hears of it, so that its retry goes
    // elsewhere.
    health.failed(&failure);
    let lost = || gearman_err(server, gearman::GearmanError::ConnectionClosed);
    for (w, _) in created {
        let _ = w.send(Err(Failure::NotCreated(lost())));
    }
    for w in running.into_values().flatten() {
        let _ = w.send(Err(Failure::Lost(lost())));
    }
    LaneEnd::Lost
}

/// Sleeps until `deadline`; for ever when there is none.
async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// A connection for foreground jobs that asked to be told of exceptions.
async fn connect_foreground(server: &str) -> Result<Conn> {
    connect_asking(
        server,
        PacketType::OptionReq,
        b"exceptions",
        PacketType::OptionRes,
    )
    .await
}

/// A new connection that has sent one request (`ask` with `arg`) and got
/// its answer, of type `answer`.
async fn connect_asking(
    server: &str,
    ask: PacketType,
    arg: &'static [u8],
    answer: PacketType,
) -> Result<Conn> {
    let mut conn = connect(server).await?;
    conn.send(req(ask, vec![Bytes::from_static(arg)]))
        .await
        .map_err(|e| gearman_err(server, e))?;
    let pkt = recv(&mut conn, server).await?;
    if pkt.ptype != answer {
        return Err(Error::GearmanProtocol {
            server: server.to_string(),
            what: format!(
                "{:?} in answer to {ask:?} {}",
                pkt.ptype,
                String::from_utf8_lossy(arg)
            ),
        });
    }
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_keys_gearmand_cannot_take_are_not_sent() {
        assert_eq!(gearman_unique(Some("k")), "k");
        assert_eq!(gearman_unique(None), "");
        assert_eq!(gearman_unique(Some(&"k".repeat(65))), "");
        assert_eq!(
            gearman_unique(Some("k\0rest")),
            "",
            "a NUL would end the field"
        );
    }

    fn parse(reply: &[u8]) -> StatusReply {
        let mut parser = StatusParser::default();
        for line in reply.split(|&b| b == b'\n') {
            parser.line(line);
        }
        parser.finish()
    }

    fn load(queued: u64, running: u64, workers: u64) -> FunctionLoad {
        FunctionLoad {
            queued,
            running,
            workers,
        }
    }

    #[test]
    fn status_names_with_tabs_newlines_and_odd_bytes_are_read_back() {
        // As gearmand 1.1.20 printed them (the end marker taken off).
        let reply = parse(
            b"ta\tb\t1\t0\t0\nesc\x1b[31mred\t1\t0\t0\nevil\nx\t2\t1\t0\nsp ace\t1\t0\t0\n\
              bad\xff\xfe\t1\t0\t0\n.\t1\t0\t0\nnormal\t3\t2\t5\ncr\rx\t1\t0\t0\n\t1\t0\t0\n\
              crlf\r\nz\t1\t0\t0\na\n.\nb\t0\t0\t1",
        );
        let names: Vec<&str> = reply.rows.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "ta\tb",
                "esc\x1b[31mred",
                "evil\nx",
                "sp ace",
                "bad\u{fffd}\u{fffd}",
                ".",
                "normal",
                "cr\rx",
                "",
                "crlf\r\nz",
                "a\n.\nb"
            ]
        );
        assert_eq!(reply.rows[2].1, load(2, 1, 0));
        assert_eq!(reply.rows[6].1, load(3, 2, 5));
        assert_eq!(reply.rows[10].1, load(0, 0, 1));
        assert_eq!(
            reply.notes,
            [
                (StatusNote::Joined, b"evil\nx".to_vec()),
                (StatusNote::NotUtf8, b"bad\xff\xfe".to_vec()),
                (StatusNote::Joined, b"crlf\r\nz".to_vec()),
                (StatusNote::Joined, b"a\n.\nb".to_vec()),
            ]
        );
    }

    #[test]
    fn status_lines_that_are_no_function_are_skipped_and_noted() {
        let reply = parse(b"good\t1\t0\t0\nno counts\nnot\ta\tnumber\nlast\t1\t2");
        assert_eq!(reply.rows, [("good".to_string(), load(1, 0, 0))]);
        assert_eq!(
            reply.notes,
            [(
                StatusNote::Skipped,
                b"no counts\nnot\ta\tnumber\nlast\t1\t2".to_vec()
            )]
        );
        assert_eq!(
            split_counts(b"f\t1\t2\t3\r"),
            Some((&b"f"[..], load(1, 2, 3)))
        );
        assert_eq!(split_counts(b"f\t1\t-2\t3"), None);
        assert_eq!(split_counts(b"f\t1\t\t3"), None);
        assert_eq!(split_counts(b"\t1\t2"), None);
    }

    #[test]
    fn an_odd_status_line_is_logged_once_per_server() {
        let line = b"unit-test\nline".as_slice();
        assert!(first_sighting("h:1", line));
        assert!(!first_sighting("h:1", line));
        assert!(first_sighting("h:2", line));
    }

    /// A JOB_ASSIGN_UNIQ header and its leading fields, for `data_len`
    /// bytes of workload.
    fn assign_head(data_len: usize) -> Vec<u8> {
        let fields = b"H:vm:1\0inject_jobs\0\0";
        let mut pkt = RES_MAGIC.to_vec();
        pkt.extend(31u32.to_be_bytes());
        pkt.extend(((fields.len() + data_len) as u32).to_be_bytes());
        pkt.extend(fields);
        pkt
    }

    #[test]
    fn a_packet_over_the_limit_is_read_through_and_the_next_one_decodes() {
        let data_len = MAX_PACKET as usize + 10;
        let mut codec = WorkerCodec::default();
        let mut src = BytesMut::from(&assign_head(data_len)[..]);
        assert!(codec.decode(&mut src).unwrap().is_none());
        // The workload streams in; nothing of it is kept.
        let chunk = vec![b'a'; 1024 * 1024];
        let mut left = data_len;
        while left > 0 {
            let n = left.min(chunk.len());
            src.extend_from_slice(&chunk[..n]);
            left -= n;
            if left > 0 {
                assert!(codec.decode(&mut src).unwrap().is_none());
                assert!(src.is_empty(), "consumed as it comes");
            }
        }
        // The next packet behind it, in the same read.
        let mut noop = RES_MAGIC.to_vec();
        noop.extend(6u32.to_be_bytes());
        noop.extend(0u32.to_be_bytes());
        src.extend_from_slice(&noop);
        let Some(WorkerFrame::Oversized(big)) = codec.decode(&mut src).unwrap() else {
            panic!("an oversized frame");
        };
        assert_eq!(big.ptype, PacketType::JobAssignUniq);
        assert_eq!(big.fields, [&b"H:vm:1"[..], b"inject_jobs", b""]);
        assert_eq!(big.data_len(), Some(data_len as u64));
        assert_eq!(
            big.refusal(),
            format!("request of {data_len} bytes is over the limit of 67108864 bytes")
        );
        let Some(WorkerFrame::Packet(pkt)) = codec.decode(&mut src).unwrap() else {
            panic!("a packet");
        };
        assert_eq!(pkt.ptype, PacketType::Noop);
        assert!(src.is_empty());
    }

    #[test]
    fn packets_within_the_limit_decode_as_the_crate_decodes_them() {
        let mut codec = WorkerCodec::default();
        let mut pkt = assign_head(4);
        pkt.extend(b"data");
        let mut src = BytesMut::from(&pkt[..]);
        let Some(WorkerFrame::Packet(pkt)) = codec.decode(&mut src).unwrap() else {
            panic!("a packet");
        };
        assert_eq!(pkt.ptype, PacketType::JobAssignUniq);
        assert_eq!(pkt.args[3], &b"data"[..]);
        // A workload just under the limit, with the fields over it.
        let big = Oversized {
            ptype: PacketType::JobAssignUniq,
            len: MAX_PACKET + 5,
            fields: vec![
                Bytes::from_static(b"H:vm:1"),
                Bytes::from_static(b"f"),
                Bytes::new(),
            ],
        };
        assert_eq!(
            big.refusal(),
            "request of 67108859 bytes is over the limit of 67108864 bytes with its handle, function and unique id (67108869 bytes)"
        );
        let mut bad = BytesMut::from(&b"\0XYZ\0\0\0\x1f\x7f\xff\xff\xff"[..]);
        assert!(codec.decode(&mut bad).is_err(), "bad magic still fails");
    }
}
