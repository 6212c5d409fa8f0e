//! Where the databases and job servers are: parsing of the `GARIVINI_DSN`
//! and `GARIVINI_GEARMAND` lists (the binaries read the environment and
//! flags; this module only parses strings, and reads the files a DSN
//! names), and password masking for logs.
//!
//! `GARIVINI_DSN` is a comma separated list of databases (shards); each
//! is one `mysql://` URL, or several URLs separated by `|`: the nodes of
//! one replicated database (a Galera cluster, a primary and its standby)
//! in failover order. Besides the driver's own URL parameters
//! (`require_ssl`, `verify_ca`, `verify_identity`, `prefer_socket`, ...)
//! a URL takes ours, taken out before the driver sees it:
//!
//! - `pool_min`, `pool_max`: the pool's size ([`crate::store`]);
//! - `password_file=PATH`: the password, read from a file (so that it
//!   need not be in the URL, where `ps` or a log might show it);
//! - `ssl_ca`, `ssl_cert`, `ssl_key`: TLS files, and `ssl_server_name`:
//!   the name the server's certificate must hold when it is not the URL's
//!   host ([`crate::tls`]; the driver's `verify_identity=false` is refused,
//!   since this driver version ignores it);
//! - session settings, applied to every pooled connection when it opens:
//!   `wsrep_sync_wait`, `innodb_lock_wait_timeout`, `lock_wait_timeout`,
//!   `time_zone`, and `init=STATEMENT` (percent-encoded, repeatable) for
//!   any other;
//! - `single_claimer=true|false`: whether QueueRunners elect one claimer
//!   for this database (default: on a Galera cluster, see
//!   [`crate::store::Store::claim_turn`]).
//!
//! A `,` or `|` inside a parameter's value must be written `%2C` / `%7C`.

use mysql_async::PoolConstraints;

use crate::error::{Error, Result};
use crate::tls::TlsParams;

/// One configured database: its id (1..n, in the order given) and URL.
#[derive(Clone)]
pub struct DbConfig {
    /// Database id, as written into every job JSON (`dbid`).
    pub dbid: u32,
    /// The `mysql://` URL, with password, or its nodes' URLs separated by
    /// `|`. Never log it: use [`DbConfig::masked`].
    pub url: String,
}

impl DbConfig {
    /// The URL with its passwords replaced by `***`, for logs and errors.
    pub fn masked(&self) -> String {
        self.nodes().map(mask_dsn).collect::<Vec<_>>().join("|")
    }

    /// The URLs of its nodes, in failover order (one, unless the entry
    /// lists several separated by `|`).
    pub fn nodes(&self) -> impl Iterator<Item = &str> {
        self.url.split('|').map(str::trim).filter(|s| !s.is_empty())
    }
}

impl std::fmt::Debug for DbConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DbConfig({}: {})", self.dbid, self.masked())
    }
}

/// Parses a comma separated list of databases into databases 1..n; each
/// is a `mysql://` URL or several separated by `|` (nodes of one
/// database, in failover order).
///
/// Each URL is checked by the driver's own parser, and the files it names
/// are read, so a URL that passes here is one the pool will accept.
pub fn parse_dsn_list(list: &str) -> Result<Vec<DbConfig>> {
    let entries: Vec<&str> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if entries.is_empty() {
        return Err(Error::NoDatabase);
    }
    entries
        .into_iter()
        .enumerate()
        .map(|(i, entry)| {
            let db = DbConfig {
                dbid: i as u32 + 1,
                url: entry.to_string(),
            };
            if db.nodes().next().is_none() {
                return Err(Error::InvalidDsn {
                    dsn: mask_dsn(entry),
                    reason: "no URL between the `|`s".into(),
                });
            }
            for url in db.nodes() {
                node_options(url)?;
            }
            Ok(db)
        })
        .collect()
}

/// What one node's URL says: the driver's options (with our TLS files,
/// password file and session settings applied), the pool's size limits,
/// and whether to elect one claimer.
pub(crate) struct NodeOptions {
    /// For the driver's pool (its pool options are the store's to set).
    pub opts: mysql_async::Opts,
    /// `pool_min`/`pool_max`, or the store's defaults.
    pub pool: PoolConstraints,
    /// `single_claimer`, if the URL sets it.
    pub single_claimer: Option<bool>,
}

/// Session variables a URL may set by name (`?wsrep_sync_wait=1`), and
/// whether their value is a number (else it is quoted as a string).
const SESSION_SETTINGS: &[(&str, bool)] = &[
    ("wsrep_sync_wait", true),
    ("innodb_lock_wait_timeout", true),
    ("lock_wait_timeout", true),
    ("time_zone", false),
];

/// The options of one node's `mysql://` URL (see the module's docs).
pub(crate) fn node_options(url: &str) -> Result<NodeOptions> {
    let invalid = |reason: String| Error::InvalidDsn {
        dsn: mask_dsn(url),
        reason,
    };
    if !url.starts_with("mysql://") {
        return Err(invalid(
            "expected mysql://user:password@host:port/database".into(),
        ));
    }
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let (mut min, mut max) = (None, None);
    let mut tls = TlsParams::default();
    let mut init = Vec::new();
    let mut password_file = None;
    let mut single_claimer = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, raw) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_encoding::percent_decode_str(raw)
            .decode_utf8()
            .map_err(|_| invalid(format!("{key}: the value is not UTF-8 once decoded")))?
            .into_owned();
        let number = || {
            value
                .parse::<usize>()
                .map_err(|_| invalid(format!("{key} must be a whole number, not {value:?}")))
        };
        match key {
            "pool_min" => min = Some(number()?),
            "pool_max" => max = Some(number()?),
            "password_file" => password_file = Some(value),
            "init" if value.trim().is_empty() => {
                return Err(invalid("init needs a statement".into()));
            }
            "init" => init.push(value),
            "single_claimer" => {
                single_claimer = Some(match value.as_str() {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => {
                        return Err(invalid(format!(
                            "single_claimer must be true or false, not {value:?}"
                        )))
                    }
                })
            }
            _ => {
                if let Some(&(name, numeric)) = SESSION_SETTINGS.iter().find(|(n, _)| *n == key) {
                    let literal = if numeric {
                        number()?.to_string()
                    } else {
                        format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
                    };
                    init.push(format!("SET SESSION {name} = {literal}"));
                } else if !tls.take(key, &value) {
                    kept.push(pair);
                }
            }
        }
    }
    let min = min.unwrap_or(crate::store::DEFAULT_POOL_MIN);
    let max = max.unwrap_or(crate::store::DEFAULT_POOL_SIZE.max(min));
    let pool = PoolConstraints::new(min, max)
        .filter(|_| max > 0)
        .ok_or_else(|| {
            invalid(format!(
                "pool_min ({min}) must not exceed pool_max ({max}), and pool_max must be at least 1"
            ))
        })?;
    let driver_url = match kept.is_empty() {
        true => base.to_string(),
        false => format!("{base}?{}", kept.join("&")),
    };
    let opts = mysql_async::Opts::from_url(&driver_url).map_err(|e| invalid(e.to_string()))?;
    if opts.db_name().is_none() {
        return Err(invalid(
            "no database name (mysql://host:port/DATABASE)".into(),
        ));
    }
    let opts = tls.apply(&mask_dsn(url), opts)?;
    // The driver runs its init statements last first (it pops them off
    // the list); ours run in the order the URL gives them.
    init.reverse();
    let mut builder = mysql_async::OptsBuilder::from_opts(opts).init(init);
    if let Some(path) = password_file {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| invalid(format!("password_file {path:?} cannot be read: {e}")))?;
        // A file written by `echo` ends in a newline that is no part of it.
        let password = text.strip_suffix('\n').unwrap_or(&text);
        let password = password.strip_suffix('\r').unwrap_or(password);
        builder = builder.pass(Some(password));
    }
    Ok(NodeOptions {
        opts: builder.into(),
        pool,
        single_claimer,
    })
}

/// Parses a comma separated list of gearmand `host:port` addresses.
pub fn parse_gearmand_list(list: &str) -> Result<Vec<String>> {
    let addrs: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if addrs.is_empty() {
        return Err(Error::NoGearmand);
    }
    for addr in &addrs {
        let ok = addr
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !ok {
            return Err(Error::InvalidGearmandAddr { addr: addr.clone() });
        }
    }
    Ok(addrs)
}

/// Replaces the password of a `scheme://user:password@host/...` URL by
/// `***`. Anything without a password is returned as it was.
///
/// Errs on the side of hiding: the password runs from the first `:` after
/// the user name to the last `@` of the URL, so that a password holding
/// `@`, `/`, `?` or `#` (which no URL parser would split as meant) is
/// still hidden whole, even in the error that says the URL does not parse.
pub fn mask_dsn(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let Some(at) = rest.rfind('@') else {
        return url.to_string();
    };
    let userinfo = &rest[..at];
    match userinfo.find(':') {
        // A user name holds none of these: a ':' after one of them is a
        // port's, and the '@' is in the path or query.
        Some(colon) if !userinfo[..colon].contains(['@', '/', '?', '#']) => format!(
            "{}{}:***{}",
            &url[..scheme_end + 3],
            &userinfo[..colon],
            &rest[at..]
        ),
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dsn_list_numbers_databases_from_one_in_order() {
        let dbs = parse_dsn_list("mysql://root@127.0.0.1:3306/a, mysql://u:p@h:3307/b").unwrap();
        assert_eq!(dbs.len(), 2);
        assert_eq!((dbs[0].dbid, dbs[1].dbid), (1, 2));
        assert_eq!(dbs[1].url, "mysql://u:p@h:3307/b");
    }

    #[test]
    fn dsn_without_scheme_or_database_is_refused() {
        assert!(matches!(
            parse_dsn_list("root@localhost/db"),
            Err(Error::InvalidDsn { .. })
        ));
        assert!(matches!(
            parse_dsn_list("mysql://root@localhost:3306"),
            Err(Error::InvalidDsn { .. })
        ));
        assert!(matches!(
            parse_dsn_list("mysql://root@localhost:notaport/db"),
            Err(Error::InvalidDsn { .. })
        ));
        assert!(matches!(parse_dsn_list(" , "), Err(Error::NoDatabase)));
    }

    #[test]
    fn invalid_dsn_error_does_not_show_the_password() {
        let err = parse_dsn_list("mysql://user:s3cret@host:bad/db").unwrap_err();
        let text = err.to_string();
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains("user:***@host"), "{text}");
    }

    #[test]
    fn mask_dsn_hides_only_the_password() {
        assert_eq!(mask_dsn("mysql://u:pw@h:1/db"), "mysql://u:***@h:1/db");
        assert_eq!(mask_dsn("mysql://u:p@w@h/db"), "mysql://u:***@h/db");
        assert_eq!(mask_dsn("mysql://u@h/db"), "mysql://u@h/db");
        assert_eq!(mask_dsn("mysql://h/db"), "mysql://h/db");
        assert_eq!(
            mask_dsn("mysql://u@h:3306/db?socket=/tmp/a@b"),
            "mysql://u@h:3306/db?socket=/tmp/a@b"
        );
    }

    #[test]
    fn mask_dsn_hides_a_password_with_url_delimiters_in_it() {
        for url in [
            "mysql://u:pa/ss@h:1/db",
            "mysql://u:pa?ss@h:1/db",
            "mysql://u:pa#ss@h:1/db",
            "mysql://u:p@a/s?s#@h:1/db",
        ] {
            assert_eq!(mask_dsn(url), "mysql://u:***@h:1/db", "{url}");
        }
        // Such a URL does not parse, and its error must not show it either.
        let err = parse_dsn_list("mysql://user:pa/s3cret@host:3306/db").unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }

    fn limits(url: &str) -> (usize, usize) {
        let pool = node_options(url).unwrap().pool;
        (pool.min(), pool.max())
    }

    #[test]
    fn pool_limits_come_from_the_url_else_our_defaults() {
        use crate::store::DEFAULT_POOL_SIZE;
        let base = "mysql://u:p@h:3306/db";
        assert_eq!(limits(base), (0, DEFAULT_POOL_SIZE));
        // pool_max alone: the driver would refuse it (its min is 10).
        assert_eq!(limits(&format!("{base}?pool_max=4")), (0, 4));
        assert_eq!(
            limits(&format!(
                "{base}?prefer_socket=false&pool_min=2&pool_max=8&tcp_nodelay=true"
            )),
            (2, 8)
        );
        // pool_min alone raises the default max when it has to.
        assert_eq!(limits(&format!("{base}?pool_min=40")).1, 40);
        for bad in ["pool_max=0", "pool_min=5&pool_max=4", "pool_max=many"] {
            let err = node_options(&format!("{base}?{bad}"))
                .err()
                .expect("refused")
                .to_string();
            assert!(err.contains("u:***@h"), "{err}");
            assert!(!err.contains(":p@"), "{err}");
        }
    }

    #[test]
    fn nodes_of_one_database_are_separated_by_bars_and_shards_by_commas() {
        let dbs = parse_dsn_list(
            "mysql://u:pw@n1:3306/db|mysql://u:pw@n2:3306/db, mysql://u@other:3306/db2",
        )
        .unwrap();
        assert_eq!(dbs.len(), 2);
        let nodes: Vec<&str> = dbs[0].nodes().collect();
        assert_eq!(
            nodes,
            ["mysql://u:pw@n1:3306/db", "mysql://u:pw@n2:3306/db"]
        );
        assert_eq!(
            dbs[0].masked(),
            "mysql://u:***@n1:3306/db|mysql://u:***@n2:3306/db"
        );
        assert_eq!(dbs[1].nodes().count(), 1);
        // Each node is checked on its own.
        let err = parse_dsn_list("mysql://u@n1:3306/db|n2:3306/db").unwrap_err();
        assert!(err.to_string().contains("n2:3306"), "{err}");
        assert!(matches!(parse_dsn_list("|"), Err(Error::InvalidDsn { .. })));
    }

    #[test]
    fn session_settings_become_statements_run_on_each_new_connection() {
        let opts = node_options(
            "mysql://u@h:3306/db?wsrep_sync_wait=1&time_zone=%2B00:00\
             &init=SET%20SESSION%20sql_mode%3D%27ANSI%27&innodb_lock_wait_timeout=20",
        )
        .unwrap()
        .opts;
        // (in the driver's order: it runs the last first)
        assert_eq!(
            opts.init(),
            [
                "SET SESSION innodb_lock_wait_timeout = 20",
                "SET SESSION sql_mode='ANSI'",
                "SET SESSION time_zone = '+00:00'",
                "SET SESSION wsrep_sync_wait = 1",
            ]
        );
        // A quote in a string value cannot end the literal.
        let opts = node_options("mysql://u@h:3306/db?time_zone=a%27b")
            .unwrap()
            .opts;
        assert_eq!(opts.init(), ["SET SESSION time_zone = 'a''b'"]);
        for bad in [
            "wsrep_sync_wait=all",
            "init=",
            "single_claimer=maybe",
            "nosuch=1",
        ] {
            let err = node_options(&format!("mysql://u:pw@h:3306/db?{bad}"))
                .err()
                .expect("refused");
            let text = err.to_string();
            assert!(text.contains("u:***@h"), "{text}");
        }
        assert_eq!(
            node_options("mysql://u@h:3306/db?single_claimer=true")
                .unwrap()
                .single_claimer,
            Some(true)
        );
    }

    #[test]
    fn password_file_gives_the_password_without_its_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "s3cret\n").unwrap();
        let url = format!("mysql://u@h:3306/db?password_file={}", path.display());
        let opts = node_options(&url).unwrap().opts;
        assert_eq!(opts.pass(), Some("s3cret"));
        let err = node_options("mysql://u@h:3306/db?password_file=/nonexistent/pw")
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("/nonexistent/pw"), "{err}");
    }

    #[test]
    fn gearmand_list_wants_host_and_port() {
        assert_eq!(
            parse_gearmand_list("127.0.0.1:4730,h:1").unwrap(),
            vec!["127.0.0.1:4730".to_string(), "h:1".to_string()]
        );
        assert!(matches!(parse_gearmand_list(""), Err(Error::NoGearmand)));
        assert!(matches!(
            parse_gearmand_list("localhost"),
            Err(Error::InvalidGearmandAddr { .. })
        ));
        assert!(matches!(
            parse_gearmand_list("h:99999"),
            Err(Error::InvalidGearmandAddr { .. })
        ));
    }
}
