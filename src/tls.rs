//! TLS to the database: the files a DSN names.
//!
//! The driver reads `require_ssl`, `verify_ca`, `verify_identity` and
//! `built_in_roots` from the URL itself; these are ours, taken out of the
//! URL by [`crate::config`] before the driver sees it:
//!
//! - `ssl_ca=PATH`: a PEM file of CA certificates to trust for the server's
//!   certificate. Unless the URL also says `built_in_roots=true`, they are
//!   the only ones trusted (as `mysql --ssl-ca` does): a certificate that
//!   some public CA signed for the same name is not accepted.
//! - `ssl_cert=PATH` and `ssl_key=PATH`: a client certificate (PEM, its
//!   chain) and its private key (PEM, unencrypted: PKCS#8, PKCS#1 or
//!   SEC1), for users created `REQUIRE X509` or `REQUIRE SUBJECT`.
//! - `ssl_server_name=NAME`: the name the server's certificate is checked
//!   against, instead of the URL's host: for a server reached through an
//!   address or alias its certificate does not name (a tunnel, a proxy, an
//!   IP). The certificate is still checked, for that name.
//!
//! `verify_identity=false` (the driver's) is refused unless `verify_ca` is
//! false too: mysql_async 0.37.1 with rustls 0.23 checks the name whatever
//! it says (it looks for a word in the error's text that rustls no longer
//! writes: blackbeam/mysql_async#404), so a URL with it would start and
//! then fail at every connection whose name does not match.
//! `ssl_server_name` is the way to connect by another name.
//!
//! All of them need `require_ssl=true`, and each file is read and checked
//! here, at start-up, so that a wrong path or a file of the wrong kind
//! fails the start with one line, instead of every connection later. The
//! driver is given the paths (it reads them again when it builds its TLS
//! settings, at the first connection), never their contents: the options
//! may be printed for debugging, and a key must not be.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use mysql_async::{ClientIdentity, Opts, OptsBuilder};

use crate::error::{Error, Result};

/// The CA file parameter.
const SSL_CA: &str = "ssl_ca";
/// The client certificate parameter.
const SSL_CERT: &str = "ssl_cert";
/// The client key parameter.
const SSL_KEY: &str = "ssl_key";
/// The name to check the server's certificate against.
const SSL_SERVER_NAME: &str = "ssl_server_name";

/// Our TLS parameters of one DSN (`ssl_ca`, `ssl_cert`, `ssl_key`,
/// `ssl_server_name`).
#[derive(Clone, Debug, Default)]
pub(crate) struct TlsParams {
    ca: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    server_name: Option<String>,
    /// Whether the URL says `built_in_roots` (the driver's parameter):
    /// without it, a URL with `ssl_ca` trusts that file alone.
    built_in_roots_given: bool,
    /// One of ours given twice (refused: which one was meant?).
    twice: Option<&'static str>,
}

impl TlsParams {
    /// Takes a query parameter if it is one of ours; false if not ours (the
    /// caller leaves it in the URL for the driver).
    ///
    /// `value` is the decoded value (`%2C` already `,`). Give it every
    /// parameter of the URL that is not otherwise the caller's: it also
    /// notes whether the driver's `built_in_roots` is there (returning
    /// false for it).
    pub(crate) fn take(&mut self, key: &str, value: &str) -> bool {
        let (name, slot) = match key {
            SSL_CA => (SSL_CA, &mut self.ca),
            SSL_CERT => (SSL_CERT, &mut self.cert),
            SSL_KEY => (SSL_KEY, &mut self.key),
            SSL_SERVER_NAME => (SSL_SERVER_NAME, &mut self.server_name),
            "built_in_roots" => {
                self.built_in_roots_given = true;
                return false;
            }
            _ => return false,
        };
        if slot.is_some() {
            self.twice.get_or_insert(name);
        }
        *slot = Some(value.to_string());
        true
    }

    /// The names of ours that were given, in the URL's terms.
    fn given(&self) -> Vec<&'static str> {
        [
            (SSL_CA, self.ca.is_some()),
            (SSL_CERT, self.cert.is_some()),
            (SSL_KEY, self.key.is_some()),
            (SSL_SERVER_NAME, self.server_name.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, given)| given.then_some(name))
        .collect()
    }

    /// Applies them to the driver's options parsed from the rest of the
    /// URL. `dsn` is the masked DSN for errors.
    ///
    /// Errors ([`Error::InvalidDsn`], one line, naming the parameter and
    /// the path, never a file's contents): one of ours without
    /// `require_ssl=true`, given twice, or empty; `ssl_cert` without
    /// `ssl_key` or the other way round; a file that cannot be read, is
    /// not PEM, or holds no certificate (no private key, for `ssl_key`),
    /// or an encrypted key; `verify_identity=false` with the CA checked
    /// (see the module's docs).
    pub(crate) fn apply(&self, dsn: &str, opts: Opts) -> Result<Opts> {
        let invalid = |reason: String| Error::InvalidDsn {
            dsn: dsn.to_string(),
            reason,
        };
        if opts
            .ssl_opts()
            .is_some_and(|ssl| ssl.skip_domain_validation() && !ssl.accept_invalid_certs())
        {
            return Err(invalid(
                "verify_identity=false is not honoured by this build's driver (mysql_async 0.37.1 \
                 checks the name anyway); to connect by a name the server's certificate does not \
                 hold, give ssl_server_name=A_NAME_IT_HOLDS instead"
                    .into(),
            ));
        }
        let given = self.given();
        if given.is_empty() {
            return Ok(opts);
        }
        if let Some(name) = self.twice {
            return Err(invalid(format!("{name} is given twice")));
        }
        let Some(ssl) = opts.ssl_opts().cloned() else {
            return Err(invalid(format!(
                "{} needs require_ssl=true (without it the connection is not encrypted)",
                given.join(", ")
            )));
        };
        let mut ssl = ssl;
        if let Some(ca) = &self.ca {
            let path = checked(SSL_CA, ca, Kind::Certificates).map_err(invalid)?;
            ssl = ssl.with_root_certs(vec![path.into()]);
            if !self.built_in_roots_given {
                ssl = ssl.with_disable_built_in_roots(true);
            }
        }
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let cert = checked(SSL_CERT, cert, Kind::Certificates).map_err(invalid)?;
                let key = checked(SSL_KEY, key, Kind::PrivateKey).map_err(invalid)?;
                ssl = ssl.with_client_identity(Some(ClientIdentity::new(cert.into(), key.into())));
            }
            (Some(_), None) => {
                return Err(invalid(
                    "ssl_cert needs ssl_key (the client certificate's private key)".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "ssl_key needs ssl_cert (the client certificate it is the key of)".into(),
                ))
            }
            (None, None) => {}
        }
        if let Some(name) = &self.server_name {
            if name.is_empty() {
                return Err(invalid(
                    "ssl_server_name needs a name (ssl_server_name=db.example.com)".into(),
                ));
            }
            ssl = ssl.with_danger_tls_hostname_override(Some(name.clone()));
        }
        Ok(OptsBuilder::from_opts(opts).ssl_opts(ssl).into())
    }
}

/// What a file must hold.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// One or more `CERTIFICATE` blocks.
    Certificates,
    /// A private key block, unencrypted.
    PrivateKey,
}

/// Reads and checks the file of parameter `name`; its path made absolute
/// (so that a later change of the working directory cannot change which
/// file the driver reads). Err: the one-line reason.
fn checked(name: &str, path: &str, kind: Kind) -> std::result::Result<PathBuf, String> {
    if path.is_empty() {
        return Err(format!("{name} needs a path ({name}=/path/to/file.pem)"));
    }
    let file = Path::new(path);
    let text = std::fs::read(file).map_err(|e| format!("{name} {path:?} cannot be read: {e}"))?;
    check(&text, kind).map_err(|what| format!("{name} {path:?} {what}"))?;
    std::path::absolute(file).map_err(|e| format!("{name} {path:?}: {e}"))
}

/// Checks that `text` is PEM holding what `kind` needs, each block's body
/// valid base64 of a DER structure. Err: what is wrong, for "FILE ...".
fn check(text: &[u8], kind: Kind) -> std::result::Result<(), String> {
    let Ok(text) = std::str::from_utf8(text) else {
        return Err(match kind {
            Kind::Certificates => "is not PEM text (a DER file? convert it: openssl x509 -inform DER -in FILE -out FILE.pem)",
            Kind::PrivateKey => "is not PEM text (a DER file? convert it: openssl pkey -inform DER -in FILE -out FILE.pem)",
        }
        .into());
    };
    let mut wanted = 0;
    for block in pem_blocks(text) {
        let (label, body) = block?;
        let is_key = label.ends_with("PRIVATE KEY");
        if kind == Kind::PrivateKey && label == "ENCRYPTED PRIVATE KEY" {
            return Err("is an encrypted key; give an unencrypted one \
                        (openssl pkey -in KEY -out PLAIN.pem, and keep it readable only by this user)"
                .into());
        }
        let counts = match kind {
            Kind::Certificates => label == "CERTIFICATE",
            Kind::PrivateKey => {
                is_key && matches!(label, "PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY")
            }
        };
        if !counts {
            continue;
        }
        if !is_der(&body) {
            return Err(format!(
                "has a damaged {} block (not base64 of DER)",
                if is_key { "key" } else { "certificate" }
            ));
        }
        wanted += 1;
    }
    match (wanted, kind) {
        (0, Kind::Certificates) => {
            Err("holds no certificate (expected PEM: -----BEGIN CERTIFICATE-----)".into())
        }
        (0, Kind::PrivateKey) => {
            Err("holds no private key (expected PEM: -----BEGIN PRIVATE KEY-----)".into())
        }
        _ => Ok(()),
    }
}

/// The PEM blocks of `text`: (label, decoded body), or Err for a block
/// that does not end or whose body is not base64. Text around the blocks
/// (comments, `openssl x509 -text` output) is skipped.
fn pem_blocks(text: &str) -> impl Iterator<Item = std::result::Result<(&str, Vec<u8>), String>> {
    const BEGIN: &str = "-----BEGIN ";
    let mut rest = text;
    std::iter::from_fn(move || {
        let start = rest.find(BEGIN)?;
        let after = &rest[start + BEGIN.len()..];
        let Some(label_end) = after.find("-----") else {
            rest = "";
            return Some(Err("has a damaged PEM header".into()));
        };
        let label = &after[..label_end];
        let body_start = &after[label_end + 5..];
        let end_marker = format!("-----END {label}-----");
        let Some(body_end) = body_start.find(&end_marker) else {
            rest = "";
            return Some(Err(format!(
                "has a PEM block that does not end ({end_marker})"
            )));
        };
        rest = &body_start[body_end + end_marker.len()..];
        let body: String = body_start[..body_end]
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        Some(
            base64::engine::general_purpose::STANDARD
                .decode(body.as_bytes())
                .map(|der| (label, der))
                .map_err(|_| format!("has a damaged {label} block (not base64)")),
        )
    })
}

/// Whether `der` is one DER SEQUENCE spanning all of it (as every
/// certificate and key is): catches a truncated or mangled block here
/// rather than at the first connection.
fn is_der(der: &[u8]) -> bool {
    let [0x30, first, rest @ ..] = der else {
        return false;
    };
    let (len, rest) = match *first {
        n if n < 0x80 => (n as usize, rest),
        0x81..=0x84 => {
            let octets = (*first & 0x7f) as usize;
            if rest.len() < octets {
                return false;
            }
            let len = rest[..octets]
                .iter()
                .fold(0usize, |n, b| (n << 8) | *b as usize);
            (len, &rest[octets..])
        }
        _ => return false,
    };
    rest.len() == len
}

#[cfg(test)]
mod tests {
    use super::*;

    const DSN: &str = "mysql://u:***@h:3306/db";

    /// A real (self-signed, EC P-256) certificate and its PKCS#8 key.
    const CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBlDCCATmgAwIBAgIUYB9LFUfast9GdpYQRTH8LqWphD4wCgYIKoZIzj0EAwIw
HjEcMBoGA1UEAwwTbXlzcWxfYXN5bmMtdGVzdC1lYzAgFw0yNjA1MjMwNjQ5MzNa
GA8yMTI2MDQyOTA2NDkzM1owHjEcMBoGA1UEAwwTbXlzcWxfYXN5bmMtdGVzdC1l
YzBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABMoSiTtNPi80Sx+dJ65l/CgCSukb
aqrFp1vq3wrzgbOJ51Etcq7szOVgfVCtZlcbC1QD7TS119J9ELzQVOlJFu+jUzBR
MB0GA1UdDgQWBBSEYBKB4Y2cpNeLJCL4a444cXfQxzAfBgNVHSMEGDAWgBSEYBKB
4Y2cpNeLJCL4a444cXfQxzAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0kA
MEYCIQCEKz/dG8PRLqE5asy+Xcja5H8EOzOdQId9rl9+UmfD2wIhAMIwy9puBewL
0fndnN33G44NOnqH6QPMstJSEDX+XmyZ
-----END CERTIFICATE-----
";
    const KEY: &str = "-----BEGIN EC PRIVATE KEY-----
MHcCAQEEIIfgf9+zR4IQO67je8L7RpFN7ILlUCHg8HHf2VDbIT4XoAoGCCqGSM49
AwEHoUQDQgAEyhKJO00+LzRLH50nrmX8KAJK6RtqqsWnW+rfCvOBs4nnUS1yruzM
5WB9UK1mVxsLVAPtNLXX0n0QvNBU6UkW7w==
-----END EC PRIVATE KEY-----
";

    fn opts(query: &str) -> Opts {
        Opts::from_url(&format!("mysql://u@h:3306/db{query}")).unwrap()
    }

    fn params(pairs: &[(&str, &str)]) -> TlsParams {
        let mut p = TlsParams::default();
        for (k, v) in pairs {
            p.take(k, v);
        }
        p
    }

    /// Files in a directory of their own: (dir, path of each).
    fn files(contents: &[(&str, &[u8])]) -> (tempfile::TempDir, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let paths = contents
            .iter()
            .map(|(name, text)| {
                let p = dir.path().join(name);
                std::fs::write(&p, text).unwrap();
                p.to_str().unwrap().to_string()
            })
            .collect();
        (dir, paths)
    }

    fn reason(err: Error) -> String {
        match err {
            Error::InvalidDsn { dsn, reason } => {
                assert_eq!(dsn, DSN);
                assert!(!reason.contains('\n'), "one line: {reason}");
                reason
            }
            other => panic!("expected InvalidDsn, got {other:?}"),
        }
    }

    #[test]
    fn takes_only_its_own_parameters() {
        let mut p = TlsParams::default();
        assert!(p.take("ssl_ca", "/ca.pem"));
        assert!(p.take("ssl_cert", "/c.pem"));
        assert!(p.take("ssl_key", "/k.pem"));
        assert!(p.take("ssl_server_name", "db.example"));
        for key in [
            "require_ssl",
            "verify_ca",
            "verify_identity",
            "built_in_roots",
            "pool_max",
            "ssl",
            "SSL_CA",
        ] {
            assert!(!p.take(key, "true"), "{key} is the driver's or another's");
        }
        assert_eq!(p.ca.as_deref(), Some("/ca.pem"));
        assert_eq!(p.cert.as_deref(), Some("/c.pem"));
        assert_eq!(p.key.as_deref(), Some("/k.pem"));
    }

    #[test]
    fn without_parameters_of_ours_the_options_are_unchanged() {
        for query in [
            "",
            "?require_ssl=true",
            "?require_ssl=true&verify_ca=false&verify_identity=false",
            "?verify_identity=false",
        ] {
            let before = opts(query);
            let after = TlsParams::default().apply(DSN, before.clone()).unwrap();
            assert_eq!(after.ssl_opts(), before.ssl_opts(), "{query}");
        }
    }

    #[test]
    fn ssl_ca_becomes_the_only_root_unless_built_in_roots_is_asked_for() {
        let (_dir, paths) = files(&[("ca.pem", CERT.as_bytes())]);
        let p = params(&[("ssl_ca", &paths[0])]);
        let applied = p.apply(DSN, opts("?require_ssl=true")).unwrap();
        let ssl = applied.ssl_opts().unwrap();
        assert_eq!(ssl.root_certs().len(), 1);
        assert!(ssl.disable_built_in_roots());
        assert!(!ssl.skip_domain_validation() && !ssl.accept_invalid_certs());

        let mut p = params(&[("ssl_ca", &paths[0])]);
        assert!(!p.take("built_in_roots", "true"));
        let applied = p
            .apply(DSN, opts("?require_ssl=true&built_in_roots=true"))
            .unwrap();
        assert!(!applied.ssl_opts().unwrap().disable_built_in_roots());
    }

    #[test]
    fn the_driver_gets_paths_never_file_contents() {
        let (_dir, paths) = files(&[
            ("ca.pem", CERT.as_bytes()),
            ("c.pem", CERT.as_bytes()),
            ("k.pem", KEY.as_bytes()),
        ]);
        let p = params(&[
            ("ssl_ca", &paths[0]),
            ("ssl_cert", &paths[1]),
            ("ssl_key", &paths[2]),
        ]);
        let applied = p.apply(DSN, opts("?require_ssl=true")).unwrap();
        let ssl = applied.ssl_opts().unwrap();
        assert!(ssl.client_identity().is_some());
        let shown = format!("{applied:?}");
        assert!(
            !shown.contains("MHcCAQEEIIfgf9"),
            "key contents shown: {shown}"
        );
        assert!(shown.contains("k.pem"), "{shown}");
    }

    #[test]
    fn ssl_server_name_is_the_name_checked() {
        let p = params(&[("ssl_server_name", "db.example")]);
        let applied = p.apply(DSN, opts("?require_ssl=true")).unwrap();
        let ssl = applied.ssl_opts().unwrap();
        assert_eq!(ssl.tls_hostname_override(), Some("db.example"));
        assert!(!ssl.skip_domain_validation());
        let p = params(&[("ssl_server_name", "")]);
        let r = reason(p.apply(DSN, opts("?require_ssl=true")).unwrap_err());
        assert!(r.starts_with("ssl_server_name needs a name"), "{r}");
    }

    #[test]
    fn verify_identity_false_with_the_ca_checked_is_refused() {
        for p in [TlsParams::default(), params(&[("ssl_server_name", "x")])] {
            let r = reason(
                p.apply(DSN, opts("?require_ssl=true&verify_identity=false"))
                    .unwrap_err(),
            );
            assert!(
                r.starts_with("verify_identity=false is not honoured")
                    && r.contains("ssl_server_name="),
                "{r}"
            );
        }
    }

    #[test]
    fn our_parameters_need_require_ssl() {
        let (_dir, paths) = files(&[("ca.pem", CERT.as_bytes())]);
        for query in ["", "?require_ssl=false"] {
            let p = params(&[("ssl_ca", &paths[0])]);
            let r = reason(p.apply(DSN, opts(query)).unwrap_err());
            assert_eq!(
                r, "ssl_ca needs require_ssl=true (without it the connection is not encrypted)",
                "{query}"
            );
        }
        let p = params(&[("ssl_cert", "/c"), ("ssl_key", "/k")]);
        let r = reason(p.apply(DSN, opts("")).unwrap_err());
        assert!(
            r.starts_with("ssl_cert, ssl_key needs require_ssl=true"),
            "{r}"
        );
    }

    #[test]
    fn a_client_certificate_needs_its_key_and_the_other_way_round() {
        let (_dir, paths) = files(&[("c.pem", CERT.as_bytes()), ("k.pem", KEY.as_bytes())]);
        let p = params(&[("ssl_cert", &paths[0])]);
        let r = reason(p.apply(DSN, opts("?require_ssl=true")).unwrap_err());
        assert!(r.starts_with("ssl_cert needs ssl_key"), "{r}");
        let p = params(&[("ssl_key", &paths[1])]);
        let r = reason(p.apply(DSN, opts("?require_ssl=true")).unwrap_err());
        assert!(r.starts_with("ssl_key needs ssl_cert"), "{r}");
    }

    #[test]
    fn a_parameter_given_twice_or_empty_is_refused() {
        let p = params(&[("ssl_ca", "/a.pem"), ("ssl_ca", "/b.pem")]);
        let r = reason(p.apply(DSN, opts("?require_ssl=true")).unwrap_err());
        assert_eq!(r, "ssl_ca is given twice");
        let p = params(&[("ssl_ca", "")]);
        let r = reason(p.apply(DSN, opts("?require_ssl=true")).unwrap_err());
        assert!(r.starts_with("ssl_ca needs a path"), "{r}");
    }

    #[test]
    fn a_missing_file_fails_with_its_parameter_and_path() {
        let p = params(&[("ssl_ca", "/nonexistent/ca.pem")]);
        let r = reason(p.apply(DSN, opts("?require_ssl=true")).unwrap_err());
        assert!(
            r.starts_with("ssl_ca \"/nonexistent/ca.pem\" cannot be read: "),
            "{r}"
        );
        let dir = tempfile::tempdir().unwrap();
        let p = params(&[("ssl_ca", dir.path().to_str().unwrap())]);
        let r = reason(p.apply(DSN, opts("?require_ssl=true")).unwrap_err());
        assert!(r.contains("cannot be read"), "a directory: {r}");
    }

    #[test]
    fn a_file_without_a_certificate_is_refused() {
        let damaged = CERT.replace("MIIBlDCCATmg", "MIIBlDCC*Tmg");
        let truncated: String = {
            let lines: Vec<&str> = CERT.lines().collect();
            [&lines[..3], &lines[lines.len() - 1..]].concat().join("\n")
        };
        let cases: &[(&[u8], &str)] = &[
            (b"", "holds no certificate"),
            (b"hello\n", "holds no certificate"),
            (KEY.as_bytes(), "holds no certificate"),
            (&[0x30, 0x82, 0x01, 0x00, 0xff, 0xfe], "is not PEM text"),
            (damaged.as_bytes(), "has a damaged CERTIFICATE block"),
            (truncated.as_bytes(), "has a damaged certificate block"),
            (
                b"-----BEGIN CERTIFICATE-----\nMIIB\n",
                "has a PEM block that does not end",
            ),
        ];
        for (text, expected) in cases {
            let (_dir, paths) = files(&[("ca.pem", text)]);
            let p = params(&[("ssl_ca", &paths[0])]);
            let r = reason(p.apply(DSN, opts("?require_ssl=true")).unwrap_err());
            assert!(r.starts_with(&format!("ssl_ca {:?} ", paths[0])), "{r}");
            assert!(r.contains(expected), "{expected}: {r}");
        }
    }

    #[test]
    fn a_key_file_must_hold_an_unencrypted_key_and_errors_never_show_it() {
        let encrypted = "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIBvTBXBgkqhkiG9w0BBQ0wSjApBgkq\n-----END ENCRYPTED PRIVATE KEY-----\n";
        let secret_garbage =
            "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw==\n-----END PRIVATE KEY-----\n";
        let cases: &[(&str, &str)] = &[
            (CERT, "holds no private key"),
            (encrypted, "is an encrypted key"),
            (secret_garbage, "has a damaged key block"),
        ];
        for (text, expected) in cases {
            let (_dir, paths) = files(&[("c.pem", CERT.as_bytes()), ("k.pem", text.as_bytes())]);
            let p = params(&[("ssl_cert", &paths[0]), ("ssl_key", &paths[1])]);
            let r = reason(p.apply(DSN, opts("?require_ssl=true")).unwrap_err());
            assert!(r.starts_with(&format!("ssl_key {:?} ", paths[1])), "{r}");
            assert!(r.contains(expected), "{expected}: {r}");
            assert!(!r.contains("c2VjcmV0") && !r.contains("MIIB"), "{r}");
        }
    }

    #[test]
    fn keys_of_each_pem_kind_are_taken() {
        for label in ["PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY"] {
            let key = KEY.replace("EC PRIVATE KEY", label);
            assert_eq!(check(key.as_bytes(), Kind::PrivateKey), Ok(()), "{label}");
        }
        // A bundle: text around the blocks, and a chain of several.
        let bundle = format!("subject=CN = x\n{CERT}\n# next\n{CERT}");
        assert_eq!(check(bundle.as_bytes(), Kind::Certificates), Ok(()));
    }

    #[test]
    fn der_lengths_are_checked() {
        assert!(is_der(&[0x30, 0x00]));
        assert!(is_der(&[0x30, 0x01, 0x05]));
        assert!(!is_der(&[0x30, 0x02, 0x05]));
        assert!(!is_der(&[0x31, 0x00]));
        assert!(!is_der(&[]));
        let mut long = vec![0x30, 0x82, 0x01, 0x00];
        long.extend(std::iter::repeat_n(0, 256));
        assert!(is_der(&long));
        assert!(!is_der(&long[..long.len() - 1]));
    }
}
