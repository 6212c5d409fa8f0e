//! Hostile input at gearmand's own door, against a private gearmand and a
//! real MariaDB: function names that gearmand's admin `status` cannot print
//! on one line (newline, tab, ESC, bytes that are not UTF-8, its own `.`
//! end marker), and an `inject_jobs` request over the 64 MiB packet limit.
//! Jobs go in through plain Gearman packets on a socket of the test's own,
//! as any client's would. Needs scripts/services up.

use std::collections::HashSet;
use std::time::Duration;

use garivini::gearman::{queue_depths, server_status, worker_connections, FunctionLoad};
use garivini::injector::answer_refs;
use garivini::names::{INJECT_JOBS, RUN_QUEUED_JOB};
use garivini::{injector, queue_runner, Client, Flag, NewJob};
use testkit::{queue_runner, round, wait_until, within, Gearmand, Roles, TestDb};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(30);
const MIB: usize = 1024 * 1024;

// Gearman packet types.
const CAN_DO: u32 = 1;
const SUBMIT_JOB: u32 = 7;
const JOB_CREATED: u32 = 8;
const WORK_COMPLETE: u32 = 13;
const WORK_FAIL: u32 = 14;
const SUBMIT_JOB_BG: u32 = 18;
const WORK_WARNING: u32 = 29;

/// A plain Gearman connection: packets written and read by hand.
struct Raw(TcpStream);

impl Raw {
    async fn connect(gearmand: &Gearmand) -> Raw {
        let stream = within(LIMIT, "connect", TcpStream::connect(&gearmand.addr))
            .await
            .unwrap();
        Raw(stream)
    }

    /// Sends a request packet of `ptype` whose payload is `fields` joined
    /// by NUL (written piece by piece: a workload may be large).
    async fn send(&mut self, ptype: u32, fields: &[&[u8]]) {
        let len: usize = fields.iter().map(|f| f.len()).sum::<usize>() + fields.len() - 1;
        let mut head = b"\0REQ".to_vec();
        head.extend(ptype.to_be_bytes());
        head.extend(u32::try_from(len).unwrap().to_be_bytes());
        within(LIMIT, "send", async {
            self.0.write_all(&head).await?;
            for (i, f) in fields.iter().enumerate() {
                if i > 0 {
                    self.0.write_all(b"\0").await?;
                }
                self.0.write_all(f).await?;
            }
            self.0.flush().await
        })
        .await
        .unwrap();
    }

    /// Reads one response packet: its type and payload.
    async fn recv(&mut self) -> (u32, Vec<u8>) {
        within(LIMIT, "a packet from gearmand", async {
            let mut head = [0u8; 12];
            self.0.read_exact(&mut head).await.expect("a packet header");
            assert_eq!(&head[..4], b"\0RES");
            let ptype = u32::from_be_bytes(head[4..8].try_into().unwrap());
            let len = u32::from_be_bytes(head[8..12].try_into().unwrap());
            let mut body = vec![0; len as usize];
            self.0.read_exact(&mut body).await.expect("a packet body");
            (ptype, body)
        })
        .await
    }

    /// Submits a background job with no unique id; panics unless gearmand
    /// takes it.
    async fn submit_bg(&mut self, function: &[u8], data: &[u8]) {
        self.send(SUBMIT_JOB_BG, &[function, b"", data]).await;
        let (ptype, _) = self.recv().await;
        assert_eq!(
            ptype,
            JOB_CREATED,
            "gearmand takes {:?}",
            function.escape_ascii().to_string()
        );
    }

    /// Submits a foreground job and waits for its end: Ok(result) on
    /// WORK_COMPLETE, Err(last warning) on WORK_FAIL.
    async fn submit(&mut self, function: &[u8], data: &[u8]) -> Result<Vec<u8>, String> {
        self.send(SUBMIT_JOB, &[function, b"", data]).await;
        let (ptype, handle) = self.recv().await;
        assert_eq!(ptype, JOB_CREATED);
        let mut warning = String::new();
        loop {
            let (ptype, body) = self.recv().await;
            let (h, rest) = body.split_at(body.iter().position(|&b| b == 0).unwrap_or(body.len()));
            assert_eq!(h, handle, "one job at a time on this connection");
            let rest = rest.get(1..).unwrap_or_default();
            match ptype {
                WORK_COMPLETE => return Ok(rest.to_vec()),
                WORK_FAIL => return Err(warning),
                WORK_WARNING => warning = String::from_utf8_lossy(rest).into_owned(),
                other => panic!("unexpected packet type {other}"),
            }
        }
    }
}

/// The (local port) of every established connection of this machine to
/// `port` on 127.0.0.1, from /proc/net/tcp: the client sides, ours among
/// them.
fn connections_to(port: u16) -> HashSet<u16> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let hex_port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next().unwrap(), 16).unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // f[1] local, f[2] remote, f[3] state (01 = ESTABLISHED).
            (f.len() > 3 && f[3] == "01" && hex_port(f[2]) == port).then(|| hex_port(f[1]))
        })
        .collect()
}

/// The connections to `port` that last: seen in two looks 300 ms apart
/// (the short `status` ones come and go).
async fn lasting_connections_to(port: u16) -> HashSet<u16> {
    let first = connections_to(port);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = connections_to(port);
    first.intersection(&second).copied().collect()
}

#[tokio::test]
async fn function_names_with_a_newline_or_tab_do_not_stop_status_or_dispatch() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let mut client = Raw::connect(&gearmand).await;
    // gearmand takes any bytes but NUL in a function name; each of these
    // prints a `status` line that is not `NAME\tTOTAL\tRUNNING\tWORKERS`,
    // and `.\nfake` prints the reply's end marker in the middle of it.
    let odd: [&[u8]; 6] = [
        b"evil\nx",
        b"ta\tb",
        b"esc\x1b[31mred",
        b"bad\xff\xfe",
        b".\nfake",
        b"two\n\nnewlines",
    ];
    for name in odd {
        client.submit_bg(name, b"data").await;
    }
    client.submit_bg(b"plain", b"data").await;
    // A worker for a function with a newline: shown with its worker.
    let mut worker = Raw::connect(&gearmand).await;
    worker.send(CAN_DO, &[b"wk\nr"]).await;

    let status = || async {
        within(LIMIT, "gearmand status", server_status(&gearmand.addr))
            .await
            .expect("status is read despite the odd names")
    };
    wait_until(LIMIT, "the worker in status", || async {
        status()
            .await
            .iter()
            .any(|(f, l)| f == "wk\nr" && l.workers == 1)
    })
    .await;
    let rows = status().await;
    let names: HashSet<&str> = rows.iter().map(|(f, _)| f.as_str()).collect();
    let one_queued = FunctionLoad {
        queued: 1,
        running: 0,
        workers: 0,
    };
    for name in [
        "plain",
        "evil\nx",
        "ta\tb",
        "esc\x1b[31mred",
        ".\nfake",
        "two\n\nnewlines",
    ] {
        let load = rows.iter().find(|(f, _)| f == name).map(|(_, l)| *l);
        assert_eq!(load, Some(one_queued), "{name:?} in {names:?}");
    }
    assert!(
        names.contains("bad\u{fffd}\u{fffd}"),
        "kept lossily: {names:?}"
    );
    for part in ["x", "fake", "newlines", "ta"] {
        assert!(
            !names.contains(part),
            "{part:?} is no function of its own: {names:?}"
        );
    }
    let (depths, errors) = within(
        LIMIT,
        "queue depths",
        queue_depths(std::slice::from_ref(&gearmand.addr)),
    )
    .await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(depths.get("plain"), Some(&1));

    // The QueueRunner still dispatches to this gearmand: a plain job, and a
    // `controller` row, which goes only while gearmand's status shows a
    // worker for its function.
    worker.send(CAN_DO, &[b"served"]).await;
    worker.send(CAN_DO, &[b"normal"]).await;
    wait_until(LIMIT, "the second worker in status", || async {
        gearmand.workers("served").await == 1 && gearmand.workers("normal").await == 1
    })
    .await;
    let store = db.store().await;
    let jobs = Client::new(store.clone());
    jobs.insert_job(NewJob::new("normal", "x")).await.unwrap();
    jobs.insert_job(NewJob {
        flag: Flag::Controller,
        ..NewJob::new("served", "y")
    })
    .await
    .unwrap();
    let mut runner = queue_runner(queue_runner::Config::default(), store, &gearmand);
    let stats = round(&mut runner).await.unwrap();
    assert_eq!((stats.dispatched, stats.held), (2, 0), "{stats:?}");
    assert_eq!(gearmand.depth("normal").await, 1);
    assert_eq!(gearmand.depth(RUN_QUEUED_JOB).await, 1);
}

#[tokio::test]
async fn an_inject_jobs_request_over_64_mib_is_refused_and_the_worker_stays_connected() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let _injector = Roles::injector(injector::Config::default(), db.store().await, &gearmand).await;
    let connections = worker_connections(injector::DEFAULT_CONCURRENCY) as u64;
    wait_until(LIMIT, "every inject_jobs worker connection", || async {
        gearmand.workers(INJECT_JOBS).await == connections
    })
    .await;
    let before = lasting_connections_to(gearmand.port).await;
    assert!(before.len() as u64 >= connections, "{before:?}");

    // 70 MiB: gearmand takes it and hands it to the Injector.
    let mut body = br#"{"funcname":"f","arg":""#.to_vec();
    body.resize(70 * MIB - 2, b'a');
    body.extend(br#""}"#);
    let mut client = Raw::connect(&gearmand).await;
    let reason = client
        .submit(INJECT_JOBS.as_bytes(), &body)
        .await
        .unwrap_err();
    assert_eq!(
        reason,
        "request of 73400320 bytes is over the limit of 67108864 bytes"
    );
    assert_eq!(db.count("1").await, 0, "nothing stored");

    // The next request is served, on the same worker connections.
    let answer = client
        .submit(
            INJECT_JOBS.as_bytes(),
            br#"{"funcname":"f","arg":"fine","run_after":60}"#,
        )
        .await
        .expect("served");
    assert_eq!(answer_refs(&answer).unwrap().len(), 1);
    assert_eq!(db.count("1").await, 1);
    let after = connections_to(gearmand.port);
    assert!(
        before.is_subset(&after),
        "worker connections were dropped: before {before:?}, after {after:?}"
    );
    assert_eq!(gearmand.workers(INJECT_JOBS).await, connections);
}
