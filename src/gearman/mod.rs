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

mod codec;
mod conn;
mod foreground;
mod health;
mod status;
mod submit;
mod worker;

pub use self::codec::MAX_PACKET;
pub(crate) use self::conn::sleep_until_some;
pub use self::conn::{CONNECT_TIMEOUT, REPLY_TIMEOUT};
pub use self::foreground::{ForegroundClient, Outcome};
pub use self::status::{
    function_status, queue_depths, server_status, FunctionLoad, StatusReader, MAX_STATUS_REPLY,
};
pub use self::submit::{BackgroundJob, Submitter};
pub use self::worker::{
    serve, worker_connections, Assignment, WorkResult, DEFAULT_SHUTDOWN_TIMEOUT,
    MAX_WORKER_CONNECTIONS, SLOTS_PER_CONNECTION,
};
pub use crate::job::{gearman_unique, MAX_GEARMAN_UNIQUE};
