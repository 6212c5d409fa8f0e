//! Periodic jobs (`[[periodic]]`): two QueueRunners insert each tick of an
//! entry once, cron entries tick on their expression, missed ticks are
//! skipped or the last one caught up, a completed tick is not inserted
//! again, a bad expression is refused in one line, and a database without
//! the `garivini_periodic` table costs one warning and nothing else. Real
//! MariaDB (a database per test) and a private gearmand; needs
//! scripts/services up.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use garivini::periodic::{self, Entry, Schedule, Ticker};
use garivini::queue_runner::{self, QueueRunner};
use garivini::{roles, Client, NewJob, Store};
use testkit::{
    quick_queue_runner, wait_until, with_servers, within, Gearmand, Proc, Roles, TestDb, Worker,
};

const LIMIT: Duration = Duration::from_secs(30);

/// A QueueRunner running `entries` (quick rounds) in this process, on a
/// store of its own, as a `garivini queuerunner` process runs it.
async fn queue_runner_with(entries: Vec<Entry>, db: &TestDb, gearmand: &Gearmand) -> Roles {
    let config = roles::Config {
        queue_runner: Some(queue_runner::Config {
            periodic: entries,
            ..quick_queue_runner()
        }),
        ..roles::Config::default()
    };
    Roles::start(config, db.store().await, gearmand).await
}

/// A worker for `function` that completes each row (deletes it), as a
/// throughput-mode worker does.
async fn completing(gearmand: &Gearmand, function: &str, store: Arc<Store>) -> Worker {
    Worker::serving(function)
        .completing_with(Client::new(store))
        .start(gearmand)
        .await
}

/// The tick of each unique key `worker` was handed for entry `name`, in
/// the order handed; panics on a key that is not a tick's.
fn ticks_seen(worker: &Worker, name: &str) -> Vec<u32> {
    let prefix = format!("periodic:{name}:");
    worker
        .jobs()
        .iter()
        .map(|job| {
            let key = job.uniqkey.as_deref().expect("a tick's job has a key");
            key.strip_prefix(&prefix)
                .and_then(|t| t.parse().ok())
                .unwrap_or_else(|| panic!("not a tick of {name}: {key}"))
        })
        .collect()
}

/// Waits until no row of `funcname` is left (every job handed out was
/// completed).
async fn wait_until_drained(db: &TestDb, funcname: &str) {
    db.wait_for_count(
        LIMIT,
        "every tick's job completed",
        &format!("funcname = '{funcname}'"),
        0,
    )
    .await;
}

#[tokio::test]
async fn two_queue_runners_insert_each_tick_of_a_one_second_entry_once() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let worker = completing(&gearmand, "pq_beat", db.store().await).await;
    let entry = Entry::new("beat", "pq_beat", Schedule::Every(1));
    let a = queue_runner_with(vec![entry.clone()], &db, &gearmand).await;
    let b = queue_runner_with(vec![entry], &db, &gearmand).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    a.stop(LIMIT).await;
    b.stop(LIMIT).await;
    wait_until_drained(&db, "pq_beat").await;

    let ticks = ticks_seen(&worker, "beat");
    assert!(
        (5..=7).contains(&ticks.len()),
        "{} runs in 6 s: {ticks:?}",
        ticks.len()
    );
    let distinct: HashSet<u32> = ticks.iter().copied().collect();
    assert_eq!(distinct.len(), ticks.len(), "a tick ran twice: {ticks:?}");
    let (first, last) = (
        *distinct.iter().min().unwrap(),
        *distinct.iter().max().unwrap(),
    );
    assert_eq!(
        (last - first + 1) as usize,
        ticks.len(),
        "one run per second, none skipped: {ticks:?}"
    );
    assert_eq!(
        db.query::<u32>("SELECT last_tick FROM garivini_periodic WHERE name = 'beat'")
            .await,
        vec![last]
    );
}

#[tokio::test]
async fn a_cron_entry_ticks_on_its_expression_in_utc() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    let worker = completing(&gearmand, "pq_cron", db.store().await).await;
    // Every even second (six fields: seconds first).
    let entry =
        Entry::new("even", "pq_cron", Schedule::Cron("*/2 * * * * *".into())).arg("payload");
    let qr = queue_runner_with(vec![entry], &db, &gearmand).await;
    wait_until(LIMIT, "three ticks of */2 seconds", || async {
        worker.count() >= 3
    })
    .await;
    qr.stop(LIMIT).await;
    wait_until_drained(&db, "pq_cron").await;

    let ticks = ticks_seen(&worker, "even");
    assert!(ticks.iter().all(|t| t % 2 == 0), "{ticks:?}");
    assert!(ticks.windows(2).all(|w| w[1] == w[0] + 2), "{ticks:?}");
    assert!(worker.jobs().iter().all(|j| j.arg == b"payload"));
}

/// A daily cron expression whose tick was `ago` seconds before `now` (UTC).
fn daily_at(now: u32, ago: u32) -> Schedule {
    let t = (now - ago) % 86_400;
    Schedule::Cron(format!("{} {} {} * * *", t % 60, t / 60 % 60, t / 3600))
}

async fn look(ticker: &mut Ticker) -> periodic::Stats {
    within(LIMIT, "a periodic look", ticker.run_once())
        .await
        .expect("a look")
}

#[tokio::test]
async fn a_missed_tick_is_skipped_unless_the_entry_catches_up_the_last_one() {
    let db = TestDb::new().await;
    let store = db.store().await;
    let now = db.now().await;
    // Its tick was five minutes ago: missed by a QueueRunner starting now.
    let skip = Entry::new("skip", "pq_missed", daily_at(now, 300));
    let catch = Entry::new("catch", "pq_missed", daily_at(now, 300)).catch_up(true);

    let mut first = Ticker::new(vec![skip.clone(), catch.clone()], store.clone()).unwrap();
    let stats = look(&mut first).await;
    assert_eq!((stats.inserted, stats.taken), (1, 0), "{stats:?}");
    assert_eq!(
        db.query::<String>("SELECT uniqkey FROM job WHERE funcname = 'pq_missed'")
            .await,
        vec![format!("periodic:catch:{}", now - 300)],
        "the caught-up tick only, none for the entry that skips"
    );
    // Looking on, nothing more: the next tick is tomorrow.
    assert_eq!(look(&mut first).await, periodic::Stats::default());

    // Another QueueRunner starting now finds the tick taken...
    let mut second = Ticker::new(vec![skip.clone(), catch.clone()], store.clone()).unwrap();
    assert_eq!(
        look(&mut second).await,
        periodic::Stats {
            taken: 1,
            ..Default::default()
        }
    );
    // ... and so does one that starts once the tick's job has completed
    // (its row deleted): the unique key alone would let it in again.
    db.exec("DELETE FROM job WHERE funcname = 'pq_missed'")
        .await;
    let mut third = Ticker::new(vec![skip, catch], store).unwrap();
    assert_eq!(look(&mut third).await.taken, 1);
    assert_eq!(db.count("funcname = 'pq_missed'").await, 0);
}

#[tokio::test]
async fn a_tick_raced_by_many_queue_runners_is_inserted_once() {
    let db = TestDb::new().await;
    let store = db.store().await;
    let now = db.now().await;
    // Its tick is the one of the moment for each of them.
    let entry = Entry::new("race", "pq_race", daily_at(now, 1));
    let mut tickers: Vec<Ticker> = (0..8)
        .map(|_| Ticker::new(vec![entry.clone()], store.clone()).unwrap())
        .collect();
    let looks = futures::future::join_all(tickers.iter_mut().map(|t| t.run_once()));
    let stats: Vec<periodic::Stats> = within(LIMIT, "eight looks at once", looks)
        .await
        .into_iter()
        .map(|s| s.expect("a look"))
        .collect();
    let inserted: usize = stats.iter().map(|s| s.inserted).sum();
    let taken: usize = stats.iter().map(|s| s.taken).sum();
    assert_eq!((inserted, taken), (1, 7), "{stats:?}");
    assert_eq!(db.count("funcname = 'pq_race'").await, 1);
}

#[tokio::test]
async fn a_bad_cron_expression_is_refused_in_one_line() {
    let db = TestDb::new().await;
    let config = queue_runner::Config {
        periodic: vec![Entry::new(
            "nightly",
            "report",
            Schedule::Cron("0 25 * * *".into()),
        )],
        ..queue_runner::Config::default()
    };
    let err = QueueRunner::new(config, db.store().await, vec!["127.0.0.1:1".into()])
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.starts_with(
            "invalid setting periodic: entry \"nightly\": invalid cron expression \"0 25 * * *\""
        ),
        "{err}"
    );
    assert!(!err.contains('\n'), "{err}");

    // The same from the config file, before anything starts.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("garivini.toml");
    std::fs::write(
        &file,
        format!(
            "dsn = {:?}\ngearmand = \"127.0.0.1:1\"\n\n[[periodic]]\nname = \"nightly\"\nfuncname = \"report\"\ncron = \"0 25 * * *\"\n",
            db.url
        ),
    )
    .unwrap();
    let file = file.to_str().unwrap();
    for command in ["queuerunner", "config"] {
        let mut args = vec!["--config", file, command];
        if command == "config" {
            args.push("check");
        }
        let (status, out, err) = testkit::run_bin("garivini", &args, LIMIT).await;
        assert!(!status.success(), "{command}: {out}{err}");
        assert_eq!(err.trim().lines().count(), 1, "{command}: {err}");
        assert!(
            err.contains("entry \"nightly\": invalid cron expression \"0 25 * * *\""),
            "{command}: {err}"
        );
    }
}

#[tokio::test]
async fn without_the_periodic_table_one_warning_and_other_jobs_still_run() {
    let (db, gearmand) = (TestDb::new().await, Gearmand::start().await);
    db.exec("DROP TABLE garivini_periodic").await;
    let store = db.store().await;
    let beats = Worker::plain(&gearmand, "pq_notable").await;
    let other = completing(&gearmand, "pq_other", store.clone()).await;

    let dir = tempfile::tempdir().unwrap();
    let (file, log) = (dir.path().join("garivini.toml"), dir.path().join("log"));
    std::fs::write(
        &file,
        "[[periodic]]\nname = \"beat\"\nfuncname = \"pq_notable\"\nevery = 1\n",
    )
    .unwrap();
    let args = with_servers(
        &db,
        &gearmand,
        &[
            "--config",
            file.to_str().unwrap(),
            "queuerunner",
            "--batch-run-sleep",
            "0.1",
        ],
    );
    let mut qr = Proc::spawn_logged("garivini", &args, &log);
    // Several seconds of ticks, and a plain job meanwhile.
    tokio::time::sleep(Duration::from_secs(2)).await;
    Client::new(store)
        .insert_job(NewJob::new("pq_other", "x"))
        .await
        .expect("stored");
    wait_until(LIMIT, "the plain job to run", || async {
        other.count() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    qr.check_running().expect("the QueueRunner keeps running");
    let status = qr.terminate(LIMIT).await;
    assert!(status.success(), "{}", qr.tail());

    assert_eq!(beats.count(), 0, "no tick without the table");
    assert_eq!(db.count("funcname = 'pq_notable'").await, 0);
    let text = qr.log();
    let warnings: Vec<&str> = text.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 1, "{text}");
    assert!(warnings[0].contains("no garivini_periodic table"), "{text}");
}

#[tokio::test]
async fn schema_check_reports_a_missing_periodic_table_and_apply_creates_it() {
    let db = TestDb::new().await;
    db.exec("DROP TABLE garivini_periodic").await;
    let (code, out, err) = testkit::run_garivini(&db.url, &["schema", "check"]).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains(
            "  needs: no garivini_periodic table: QueueRunners do not run [[periodic]] entries \
             (each logs a warning)\n    CREATE TABLE IF NOT EXISTS garivini_periodic (\n"
        ),
        "{out}"
    );
    let (code, out, err) = testkit::run_garivini(&db.url, &["schema", "check", "--apply"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("  applied: CREATE TABLE IF NOT EXISTS garivini_periodic ( …\n"),
        "{out}"
    );
    // Ticks go in again from the next look on.
    let now = db.now().await;
    let entry = Entry::new("after", "pq_applied", daily_at(now, 1));
    let mut ticker = Ticker::new(vec![entry], db.store().await).unwrap();
    assert_eq!(look(&mut ticker).await.inserted, 1);
}
