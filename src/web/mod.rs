//! The web role (`garivini web`): an operator's dashboard of server-rendered
//! pages and an HTTP JSON API under `/api/v1`, both on the admin functions
//! of [`crate::admin`] that `garivini status`, `jobs` and `functions` use,
//! so that the terminal, the page and the API never disagree.
//!
//! - [`api`]: the JSON API, its errors (each with a stable `code`) and its
//!   OpenAPI document (generated from the handler types);
//! - `pages`: the HTML pages (overview, job list, job page, confirmations,
//!   login), which work without JavaScript and refresh themselves;
//! - `auth`: the bearer token, the login cookie and the CSRF token;
//! - `session`: the login sessions, and the limit on failed logins and bad
//!   tokens per client address;
//! - `serve`: the connections (header-read and idle timeout, a cap on
//!   open connections under the process's file limit);
//! - `sample`: the queue depth and the rows added and gone per minute over
//!   the last hour, sampled by this role, drawn as SVG.
//!
//! Access: with a token configured, every state-changing request needs it
//! (`Authorization: Bearer ...`, or the login cookie and a CSRF token on
//! the pages), and so does every read unless [`Config::public_read`].
//! Without one the role is read-only, and it listens on loopback only.
//! No answer and no log line carries the token or a database password.
//! Every answer carries `X-Frame-Options: DENY`, a `Content-Security-Policy`
//! with `frame-ancestors 'none'`, `X-Content-Type-Options: nosniff` and
//! `Referrer-Policy: same-origin`.
//!
//! Cost to the databases: every page and every `GET /api/v1/status` share
//! one status report, read at most once per [`Config::status_ttl`] however
//! many browsers are open, and never twice at once; once there is one, a
//! page is answered from it at once (see `State::status`).

pub mod api;
mod auth;
mod pages;
mod sample;
mod serve;
mod session;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::header;
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::admin::Status;
use crate::client::Client;
use crate::error::{Error, Result};
use crate::store::Store;

pub use auth::Token;
pub use serve::{connection_cap, DEFAULT_HEADER_TIMEOUT, MAX_CONNECTIONS, RESERVED_FILES};
pub use session::{SESSION_IDLE, TRIES_PER_WINDOW, TRY_WINDOW};

/// Where the role listens unless told otherwise: loopback only.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8080";
/// Largest request body, in bytes: room for an array of jobs.
pub const DEFAULT_BODY_LIMIT: usize = 8 << 20;
/// How long a request may take, its body's upload included, before it is
/// answered 408: a slow client does not hold a connection for ever.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one status report is shared by every page and API reader.
pub const DEFAULT_STATUS_TTL: Duration = Duration::from_secs(3);
/// How often the chart's sampler reads the queue.
pub const DEFAULT_SAMPLE_EVERY: Duration = Duration::from_secs(30);
/// Seconds between two refreshes of the overview in a browser.
pub const DEFAULT_REFRESH_SECS: u32 = 5;
/// How long shutdown waits for the requests in hand.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The web role's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen. Other than loopback only with a token.
    pub addr: SocketAddr,
    /// The bearer token; `None`: read-only, loopback only.
    pub token: Option<Token>,
    /// Reads (pages, `GET` in the API) without the token.
    pub public_read: bool,
    /// The lease window that tells rows in flight, in seconds.
    pub lease: u32,
    /// Most jobs in one `POST /api/v1/jobs` array (as `inject_jobs`).
    pub max_batch: usize,
    /// Largest request body, in bytes.
    pub body_limit: usize,
    /// How long a request may take, once its head is in.
    pub request_timeout: Duration,
    /// How long a connection may take to send a request head, from its
    /// opening or its last answer (the header-read and idle timeout).
    pub header_timeout: Duration,
    /// Most open connections ([`connection_cap`] of the process's file
    /// limit: the binaries set it).
    pub max_connections: usize,
    /// Whether a proxy in front is trusted: its `X-Forwarded-Proto: https`
    /// makes the login cookie `Secure`, and the last address of its
    /// `X-Forwarded-For` is the client's, for the limit on failed logins.
    /// Without it both headers are ignored (a client could send them).
    pub trusted_proxy: bool,
    /// How long one status report is shared.
    pub status_ttl: Duration,
    /// How often the chart's sampler reads the queue.
    pub sample_every: Duration,
    /// Seconds between refreshes of the overview.
    pub refresh_secs: u32,
    /// What tells why a due row waits (the QueueRunner's watermark and
    /// per-function settings).
    pub limits: crate::waiting::Limits,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            addr: DEFAULT_ADDR.parse().expect("a socket address"),
            token: None,
            public_read: false,
            lease: crate::names::DEFAULT_LEASE,
            max_batch: crate::injector::DEFAULT_MAX_BATCH,
            body_limit: DEFAULT_BODY_LIMIT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            max_connections: connection_cap(1024),
            trusted_proxy: false,
            status_ttl: DEFAULT_STATUS_TTL,
            sample_every: DEFAULT_SAMPLE_EVERY,
            refresh_secs: DEFAULT_REFRESH_SECS,
            limits: crate::waiting::Limits::default(),
        }
    }
}

impl Config {
    /// Refuses an address other than loopback without a token, and limits
    /// of zero.
    pub fn validate(&self) -> Result<()> {
        if self.token.is_none() && !self.addr.ip().is_loopback() {
            return Err(Error::invalid_config(
                "web_addr",
                "an address other than loopback needs a token (--web-token-file or GARIVINI_WEB_TOKEN)",
            ));
        }
        let positive = [
            ("max_batch", self.max_batch > 0),
            ("body_limit", self.body_limit > 0),
            ("request_timeout", !self.request_timeout.is_zero()),
            ("header_timeout", !self.header_timeout.is_zero()),
            ("max_connections", self.max_connections > 0),
            ("sample_every", !self.sample_every.is_zero()),
            ("lease", self.lease > 0),
        ];
        for (name, ok) in positive {
            if !ok {
                return Err(Error::invalid_config(name, "must be more than 0"));
            }
        }
        Ok(())
    }
}

/// What every request handler shares.
pub(crate) struct State {
    pub config: Config,
    pub store: Arc<Store>,
    pub client: Client,
    pub gearmand: Vec<String>,
    pub keys: auth::Keys,
    /// Failed logins and bad tokens per client address.
    limiter: session::Limiter,
    last: std::sync::Mutex<Option<Report>>,
    /// Held by the one reading of the status at a time.
    reading: Arc<tokio::sync::Mutex<()>>,
    /// Moved on by every change: a reading begun before it is not kept.
    changes: std::sync::atomic::AtomicU64,
    pub samples: sample::Samples,
}

/// One status report as the pages and the API share it.
#[derive(Clone)]
pub(crate) struct Report {
    /// The report.
    pub status: Arc<Status>,
    /// When it was read.
    pub at: Instant,
    /// How long reading it took.
    pub took: Duration,
}

impl State {
    /// The shared status report. Fresh (younger than `status_ttl`): as
    /// it is. Stale: as it is too, and one reading of a new one starts in
    /// the background unless one is running (so a page never waits for
    /// the databases once a report exists). None yet (start, or just
    /// after a change): the caller waits for the one reading. However many
    /// readers there are, the databases see at most one set of status
    /// queries at a time and one per `status_ttl`.
    pub async fn status(self: &Arc<Self>) -> Report {
        let last = self.last.lock().unwrap().clone();
        match last {
            Some(report) if report.at.elapsed() < self.config.status_ttl => report,
            Some(report) => {
                if let Ok(held) = self.reading.clone().try_lock_owned() {
                    let state = self.clone();
                    tokio::spawn(async move {
                        state.read_status().await;
                        drop(held);
                    });
                }
                report
            }
            None => {
                let _held = self.reading.lock().await;
                if let Some(report) = self.last.lock().unwrap().clone() {
                    return report;
                }
                self.read_status().await
            }
        }
    }

    /// A new reading, now (the sampler's: it waits for the one in hand,
    /// if any, then reads), kept as the shared report.
    pub async fn fresh_status(self: &Arc<Self>) -> Report {
        let _held = self.reading.lock().await;
        self.read_status().await
    }

    async fn read_status(&self) -> Report {
        use std::sync::atomic::Ordering;
        let before = self.changes.load(Ordering::SeqCst);
        let started = Instant::now();
        let status = crate::admin::status(
            &self.store,
            &self.gearmand,
            self.config.lease,
            &self.config.limits,
        )
        .await;
        let report = Report {
            status: Arc::new(status),
            at: Instant::now(),
            took: started.elapsed(),
        };
        let mut last = self.last.lock().unwrap();
        if self.changes.load(Ordering::SeqCst) == before {
            *last = Some(report.clone());
        }
        report
    }

    /// Whether the browser came over HTTPS: said by a trusted proxy (the
    /// role itself serves plain HTTP).
    pub fn https(&self, headers: &axum::http::HeaderMap) -> bool {
        self.config.trusted_proxy
            && headers
                .get("x-forwarded-proto")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
    }

    /// The client's address: the peer's, or the last one a trusted proxy
    /// added to `X-Forwarded-For`.
    fn client(&self, peer: Option<SocketAddr>, headers: &axum::http::HeaderMap) -> Option<IpAddr> {
        let forwarded = self.config.trusted_proxy.then(|| {
            headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .next_back()
                .and_then(|last| last.trim().parse::<IpAddr>().ok())
        });
        forwarded.flatten().or(peer.map(|p| p.ip()))
    }

    /// Drops the shared report after a change, so that the next page
    /// waits for one that shows it.
    pub async fn forget_status(&self) {
        let mut last = self.last.lock().unwrap();
        self.changes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        *last = None;
    }
}

/// The web role, bound to its address.
pub struct Web {
    listener: tokio::net::TcpListener,
    state: Arc<State>,
}

impl Web {
    /// Checks `config` and binds its address; serves nothing until
    /// [`Web::run`].
    pub async fn bind(config: Config, store: Arc<Store>, gearmand: Vec<String>) -> Result<Web> {
        config.validate()?;
        let listener = tokio::net::TcpListener::bind(config.addr)
            .await
            .map_err(|source| Error::Listen {
                addr: config.addr.to_string(),
                source,
            })?;
        let state = Arc::new(State {
            client: Client::new(store.clone()),
            keys: auth::Keys::new(config.token.clone(), config.public_read),
            limiter: session::Limiter::default(),
            samples: sample::Samples::default(),
            last: std::sync::Mutex::new(None),
            reading: Arc::new(tokio::sync::Mutex::new(())),
            changes: std::sync::atomic::AtomicU64::new(0),
            config,
            store,
            gearmand,
        });
        Ok(Web { listener, state })
    }

    /// The address it listens on (the port chosen, for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` is cancelled, then lets the requests in
    /// hand finish (at most [`SHUTDOWN_GRACE`]) and returns. The sampler
    /// of the chart runs alongside.
    pub async fn run(self, shutdown: CancellationToken) {
        let addr = self.local_addr();
        tracing::info!(%addr, "serving the web dashboard and the API");
        let sampler = tokio::spawn(sample::run(self.state.clone(), shutdown.clone()));
        let app = router(self.state.clone());
        let config = &self.state.config;
        tracing::info!(
            max_connections = config.max_connections,
            header_timeout_s = config.header_timeout.as_secs_f64(),
            "web connections capped"
        );
        let serve = tokio::spawn(serve::serve(
            self.listener,
            app,
            config.max_connections,
            config.header_timeout,
            shutdown.clone(),
        ));
        tokio::select! {
            ended = serve => {
                if let Err(err) = ended {
                    tracing::error!(%err, "the web server ended");
                }
            }
            () = async {
                shutdown.cancelled().await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } => tracing::warn!("web requests still open after the shutdown grace; dropped"),
        }
        let _ = sampler.await;
        tracing::info!("web role stopped");
    }
}

/// Every route: the pages, the API, the health checks. Each of the pages
/// and the API bounds its request bodies and its time (tower-http), the
/// API answering its own JSON errors for both.
fn router(state: Arc<State>) -> Router {
    let limit = state.config.body_limit;
    let timeout = state.config.request_timeout;
    Router::new()
        .merge(pages::routes(limit, timeout))
        .nest("/api/v1", api::routes(limit, timeout))
        .route("/healthz", axum::routing::get(healthz))
        .route("/readyz", axum::routing::get(readyz))
        // tower-http's limit is the one that counts, for every extractor.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .layer(security_header(header::X_FRAME_OPTIONS, "DENY"))
        .layer(security_header(
            header::CONTENT_SECURITY_POLICY,
            "frame-ancestors 'none'",
        ))
        .layer(security_header(header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .layer(security_header(header::REFERRER_POLICY, "same-origin"))
        .with_state(state)
}

/// A header set on every answer that has none of the name.
fn security_header(
    name: header::HeaderName,
    value: &'static str,
) -> tower_http::set_header::SetResponseHeaderLayer<header::HeaderValue> {
    tower_http::set_header::SetResponseHeaderLayer::if_not_present(
        name,
        header::HeaderValue::from_static(value),
    )
}

/// Around every request: an address over the limit of failed logins and
/// bad bearer tokens gets 429 (with `Retry-After`) for any try (a login,
/// any bearer token), and the request's failures are counted; the request
/// is answered with its session's CSRF token (see `auth::Keys::csrf`).
async fn guard(
    axum::extract::State(state): axum::extract::State<Arc<State>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let headers = request.headers();
    let login = request.method() == axum::http::Method::POST && request.uri().path() == "/login";
    let bearer = headers.contains_key(header::AUTHORIZATION);
    let client = state.client(serve::peer(request.extensions()), headers);
    if login || bearer {
        if let Some(wait) = client.and_then(|c| state.limiter.blocked(c)) {
            let secs = wait.as_secs().max(1).to_string();
            // The API's error shape, with a code of its own.
            let body = serde_json::json!({
                "code": "too_many_requests",
                "error": format!("too many failed logins or bad tokens from this address: retry after {secs} s"),
            });
            return (
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, secs)],
                axum::Json(body),
            )
                .into_response();
        }
    }
    let bad_bearer = state.keys.bearer_wrong(headers);
    let csrf = state.keys.session(headers).map(|(_, csrf)| csrf);
    let response = auth::with_csrf(csrf, next.run(request)).await;
    let failed = bad_bearer || (login && response.status() == axum::http::StatusCode::UNAUTHORIZED);
    if let (true, Some(client)) = (failed, client) {
        state.limiter.failed(client);
    }
    response
}

/// The process is up.
async fn healthz() -> &'static str {
    "ok\n"
}

/// Every database takes calls (200), or not (503, naming which and why,
/// never its URL): [`Store::readiness`], the store's health state, so a
/// request costs no query, a database known down answers at once, and the
/// answer turns 200 when the process's roles resume, not before. A process
/// started with every database down serves this from the start.
async fn readyz(
    axum::extract::State(state): axum::extract::State<Arc<State>>,
) -> (axum::http::StatusCode, axum::Json<serde_json::Value>) {
    let checks = futures::future::join_all(state.store.dbids().map(|dbid| {
        let store = state.store.clone();
        async move { (dbid, store.readiness(dbid).await) }
    }))
    .await;
    let ready = checks.iter().all(|(_, r)| r.is_ok());
    let databases: Vec<serde_json::Value> = checks
        .into_iter()
        .map(|(dbid, r)| match r {
            Ok(_) => serde_json::json!({"dbid": dbid, "ok": true}),
            Err(e) => serde_json::json!({"dbid": dbid, "ok": false, "error": e}),
        })
        .collect();
    let code = if ready {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        axum::Json(serde_json::json!({"ready": ready, "databases": databases})),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_other_than_loopback_needs_a_token() {
        let open = Config {
            addr: "0.0.0.0:8080".parse().unwrap(),
            ..Config::default()
        };
        assert!(matches!(
            open.validate(),
            Err(Error::InvalidConfig {
                name: "web_addr",
                ..
            })
        ));
        let guarded = Config {
            token: Some(Token::new("a-token-of-some-length").unwrap()),
            ..open
        };
        assert!(guarded.validate().is_ok());
        assert!(Config::default().validate().is_ok());
    }
}
