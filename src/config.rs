//! Where the databases and job servers are: parsing of the `GARIVINI_DSN`
//! and `GARIVINI_GEARMAND` lists (the binaries read the environment and
//! flags; this module only parses strings), and password masking for logs.

use crate::error::{Error, Result};

/// One configured database: its id (1..n, in the order given) and URL.
#[derive(Clone)]
pub struct DbConfig {
    /// Database id, as written into every job JSON (`dbid`).
    pub dbid: u32,
    /// The `mysql://` URL, with password. Never log it: use [`DbConfig::masked`].
    pub url: String,
}

impl DbConfig {
    /// The URL with its password replaced by `***`, for logs and errors.
    pub fn masked(&self) -> String {
        mask_dsn(&self.url)
    }
}

impl std::fmt::Debug for DbConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DbConfig({}: {})", self.dbid, self.masked())
    }
}

/// Parses a comma separated list of `mysql://` URLs into databases 1..n.
///
/// Each URL is checked by the driver's own parser, so a URL that passes
/// here is one the pool will accept.
pub fn parse_dsn_list(list: &str) -> Result<Vec<DbConfig>> {
    let urls: Vec<&str> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if urls.is_empty() {
        return Err(Error::NoDatabase);
    }
    urls.into_iter()
        .enumerate()
        .map(|(i, url)| {
            if !url.starts_with("mysql://") {
                return Err(Error::InvalidDsn {
                    dsn: mask_dsn(url),
                    reason: "expected mysql://user:password@host:port/database".into(),
                });
            }
            let opts = driver_opts(url)?;
            if opts.db_name().is_none() {
                return Err(Error::InvalidDsn {
                    dsn: mask_dsn(url),
                    reason: "no database name (mysql://host:port/DATABASE)".into(),
                });
            }
            Ok(DbConfig {
                dbid: i as u32 + 1,
                url: url.to_string(),
            })
        })
        .collect()
}

/// The driver's options for a `mysql://` URL, refusing what this build
/// cannot do: its driver has no TLS backend, and would accept a URL with
/// `require_ssl` only to panic at the first connection.
pub(crate) fn driver_opts(url: &str) -> Result<mysql_async::Opts> {
    // pool_min/pool_max are ours to read (the driver would refuse
    // `?pool_max=4` alone against its own minimum of 10).
    let (without_pool, _) = crate::store::pool_params(url)?;
    let opts = mysql_async::Opts::from_url(&without_pool).map_err(|e| Error::InvalidDsn {
        dsn: mask_dsn(url),
        reason: e.to_string(),
    })?;
    if opts.ssl_opts().is_some() {
        return Err(Error::InvalidDsn {
            dsn: mask_dsn(url),
            reason: "TLS (require_ssl) is not supported by this build yet; \
                     remove require_ssl and the other TLS options from the URL"
                .into(),
        });
    }
    Ok(opts)
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
