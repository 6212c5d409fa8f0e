//! Reading and parsing gearmand's admin `status` reply.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::conn::{connect_stream, gearman_err, io_err};
use super::health::{any_live, skipped, Health, Probe};
use super::REPLY_TIMEOUT;
use crate::error::{Error, Result};
use crate::outage::Outage;

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

#[cfg(test)]
impl FunctionLoad {
    /// `queued` jobs and `workers` workers, none running (for tests).
    pub(crate) fn of(queued: u64, workers: u64) -> FunctionLoad {
        FunctionLoad {
            queued,
            running: 0,
            workers,
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
