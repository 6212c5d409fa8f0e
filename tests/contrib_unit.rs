//! contrib/garivini@.service run as systemd runs it, with
//! contrib/garivini.env.example as its EnvironmentFile: the example's
//! values keep their form, only its hosts become the test's databases and
//! gearmand servers (and its metrics addresses free loopback ports); each
//! instance the example configures starts from the unit's ExecStart, jobs
//! run through them, each serves its metrics, and SIGTERM ends each with
//! status 0. Needs scripts/services up.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use garivini::{Client, NewJob, Store};
use testkit::{
    free_port, scrape_metrics, wait_until, Gearmand, InjectClient, Proc, TestDb, Worker,
};

const LIMIT: Duration = Duration::from_secs(30);

fn read(rel: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The value of `key=` in the unit's text (its one line).
fn unit_key<'a>(unit: &'a str, key: &str) -> &'a str {
    let mut found = unit
        .lines()
        .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='));
    let value = found
        .next()
        .unwrap_or_else(|| panic!("no {key}= in the unit"));
    assert!(found.next().is_none(), "{key}= twice in the unit");
    value.trim()
}

/// An EnvironmentFile as systemd reads it: `KEY=VALUE` lines, `#` and
/// `;` comments. Quotes and backslashes, which systemd would interpret,
/// are refused here rather than read otherwise than it does.
fn environment_file(text: &str) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        assert!(
            !line.contains(['"', '\'', '\\']),
            "quotes or a backslash: this test does not read them as systemd does: {line}"
        );
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not KEY=VALUE: {line}"));
        env.insert(key.trim().to_string(), value.trim().to_string());
    }
    env
}

/// The unit's ExecStart for instance `instance` as systemd makes it an
/// argv: `%i` is the instance; a word `$NAME` is the variable's value
/// split at whitespace (no word when it is unset or empty), `${NAME}` its
/// value as one word. Anything else systemd would read differently
/// (quotes, prefixes such as `-`, other specifiers) is refused.
fn exec_start(unit: &str, instance: &str, env: &BTreeMap<String, String>) -> Vec<String> {
    let line = unit_key(unit, "ExecStart");
    assert!(
        line.starts_with('/') && !line.contains(['"', '\'', '\\', ';']),
        "an ExecStart this test does not read as systemd does: {line}"
    );
    let mut argv = Vec::new();
    for word in line.split_whitespace() {
        let word = word.replace("%i", instance);
        assert!(!word.contains('%'), "a specifier other than %i: {word}");
        if let Some(name) = word.strip_prefix("${").and_then(|w| w.strip_suffix('}')) {
            argv.push(env.get(name).cloned().unwrap_or_default());
        } else if let Some(name) = word.strip_prefix('$') {
            assert!(
                name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{word}"
            );
            let value = env.get(name).map(String::as_str).unwrap_or_default();
            argv.extend(value.split_whitespace().map(String::from));
        } else {
            assert!(!word.contains('$'), "a variable inside a word: {word}");
            argv.push(word);
        }
    }
    argv
}

/// `list` with each `mysql://` URL (up to a `,`, a `|` or the end) in
/// place replaced by the next of `urls`.
fn with_urls(list: &str, mut urls: impl Iterator<Item = String>) -> String {
    let mut out = String::new();
    let mut rest = list;
    while let Some(at) = rest.find("mysql://") {
        out.push_str(&rest[..at]);
        let url = &rest[at..];
        let end = url.find([',', '|']).unwrap_or(url.len());
        out.push_str(&urls.next().expect("a test database for each URL"));
        rest = &url[end..];
    }
    out.push_str(rest);
    out
}

#[tokio::test]
async fn the_systemd_unit_runs_each_role_with_the_example_environment_file() {
    let unit = read("contrib/garivini@.service");
    let example = read("contrib/garivini.env.example");
    let file = unit_key(&unit, "EnvironmentFile");
    assert!(
        example.contains(file),
        "the example does not say it is the unit's {file}"
    );
    let mut env = environment_file(&example);

    // The example's databases and gearmand servers, one of the test's each.
    let dsn = env
        .get("GARIVINI_DSN")
        .expect("the example sets GARIVINI_DSN");
    let count = dsn.matches("mysql://").count();
    assert!(count > 0, "no mysql:// URL in {dsn}");
    let mut dbs = Vec::new();
    for _ in 0..count {
        dbs.push(TestDb::new().await);
    }
    let dsn = with_urls(dsn, dbs.iter().map(|d| d.url.clone()));
    let servers = env
        .get("GARIVINI_GEARMAND")
        .expect("the example sets GARIVINI_GEARMAND");
    let mut gearmands = Vec::new();
    for entry in servers.split(',') {
        assert!(
            entry
                .rsplit_once(':')
                .is_some_and(|(_, p)| p.parse::<u16>().is_ok()),
            "not host:port: {entry}"
        );
        gearmands.push(Gearmand::start().await);
    }
    let addrs: Vec<&str> = gearmands.iter().map(|g| g.addr.as_str()).collect();
    env.insert("GARIVINI_DSN".into(), dsn);
    env.insert("GARIVINI_GEARMAND".into(), addrs.join(","));
    // Each 0.0.0.0:PORT (the metrics addresses) on a free loopback port.
    for value in env.values_mut() {
        let words: Vec<String> = value
            .split(' ')
            .map(|w| match w.strip_prefix("0.0.0.0:") {
                Some(_) => format!("127.0.0.1:{}", free_port()),
                None => w.to_string(),
            })
            .collect();
        *value = words.join(" ");
    }

    // One instance per role the example gives flags to, as
    // `systemctl enable --now garivini@ROLE` starts it.
    let instances: Vec<String> = env
        .keys()
        .filter_map(|k| k.strip_prefix("GARIVINI_ARGS_"))
        .map(String::from)
        .collect();
    for role in ["queuerunner", "injector", "controller"] {
        assert!(instances.iter().any(|i| i == role), "no garivini@{role}");
    }
    let logs = tempfile::tempdir().unwrap();
    let mut running = Vec::new();
    for instance in &instances {
        let argv = exec_start(&unit, instance, &env);
        assert_eq!(argv[0], "/usr/local/bin/garivini", "{argv:?}");
        let mut cmd = std::process::Command::new(testkit::bin_path("garivini"));
        cmd.args(&argv[1..]).env_clear().envs(&env);
        let (out, log) = (
            logs.path().join(format!("{instance}.out")),
            logs.path().join(format!("{instance}.log")),
        );
        let proc = Proc::start_logged(instance, cmd, &out, &log).expect("it starts");
        let metrics = argv
            .iter()
            .position(|a| a == "--metrics-addr")
            .map(|i| argv[i + 1].clone());
        running.push((instance.clone(), proc, metrics));
    }

    // Started: each serves its metrics (or has exited, saying why).
    for (name, proc, metrics) in &mut running {
        let addr = metrics
            .clone()
            .unwrap_or_else(|| panic!("garivini@{name}: no --metrics-addr"));
        wait_until(LIMIT, &format!("garivini@{name} to serve /metrics"), || {
            assert!(proc.running(), "garivini@{name} exited: {}", proc.tail());
            let scraped = scrape_metrics(&addr);
            async move { scraped.is_some() }
        })
        .await;
    }

    // A stored job (QueueRunner) and an injected one (Injector, then
    // Controller) run on workers of each gearmand.
    let configs = dbs.iter().enumerate().map(|(i, d)| d.config(i as u32 + 1));
    let store = Store::connect(configs.collect()).await.expect("store");
    let client = Client::new(std::sync::Arc::new(store));
    let mut workers = Vec::new();
    for g in &gearmands {
        let stored = Worker::serving("unit_stored").completing_with(client.clone());
        workers.push(stored.start(g).await);
        workers.push(Worker::plain(g, "unit_injected").await);
    }
    client
        .insert_job(NewJob::new("unit_stored", "stored"))
        .await
        .expect("stored");
    InjectClient::new(&gearmands[0])
        .inject(r#"{"funcname":"unit_injected","arg":"injected"}"#)
        .await
        .expect("stored");
    wait_until(LIMIT, "both jobs to run and their rows to go", || async {
        let ran = workers.iter().map(Worker::count).sum::<usize>() == 2;
        let mut rows = 0;
        for db in &dbs {
            rows += db.count("1").await;
        }
        ran && rows == 0
    })
    .await;
    // KillSignal=SIGTERM: each ends on its own, exit 0.
    for (name, proc, _) in &mut running {
        let status = proc.terminate(LIMIT).await;
        assert!(
            status.success(),
            "garivini@{name}: {status}; {}",
            proc.tail()
        );
    }
}
