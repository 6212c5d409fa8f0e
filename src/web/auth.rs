//! Who may read and who may change: the bearer token (compared in constant
//! time), the login sessions the pages keep after a login with it, and the
//! CSRF token every state-changing form carries.
//!
//! The cookie holds a session's random key (see [`super::session`]), never
//! the token; it is `HttpOnly`, `SameSite=Strict`, and `Secure` when the
//! request came over HTTPS through a trusted proxy. Each session has its
//! own CSRF token; a request authenticated by the bearer token alone (no
//! browser adds that header by itself) uses the process's.

use axum::http::HeaderMap;
use subtle::ConstantTimeEq;

use super::session::{random_hex, Sessions};
use crate::error::{Error, Result};

tokio::task_local! {
    /// The CSRF token of the request being answered: its session's, set
    /// around each request by the web role's middleware (`super::guard`),
    /// so that a page shows and checks the one of its own session.
    static REQUEST_CSRF: Option<String>;
}

/// Runs `answer` with `csrf` as the request's CSRF token (see
/// [`Keys::csrf`]).
pub(crate) async fn with_csrf<F: std::future::Future>(
    csrf: Option<String>,
    answer: F,
) -> F::Output {
    REQUEST_CSRF.scope(csrf, answer).await
}

/// Shortest token taken, in bytes: guessing one must stay out of reach.
pub const MIN_TOKEN_LEN: usize = 16;
/// The login cookie's name.
pub const COOKIE: &str = "garivini_session";

/// The web role's bearer token. Its `Debug` shows no character of it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// The token written in `text` (a file's content: surrounding
    /// whitespace and the final newline dropped). Refuses one shorter than
    /// [`MIN_TOKEN_LEN`] or holding whitespace or control characters (it
    /// travels in a header).
    pub fn new(text: &str) -> Result<Token> {
        let token = text.trim();
        if token.len() < MIN_TOKEN_LEN {
            return Err(Error::InvalidConfig {
                name: "web_token",
                reason: format!("is {} bytes, shorter than {MIN_TOKEN_LEN}", token.len()),
            });
        }
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Error::invalid_config(
                "web_token",
                "holds whitespace or a control character",
            ));
        }
        Ok(Token(token.to_string()))
    }

    fn matches(&self, given: &str) -> bool {
        // The length may show; the content does not.
        self.0.as_bytes().ct_eq(given.as_bytes()).into()
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(***)")
    }
}

/// What a request may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Nothing: it must give the token (or log in).
    Denied,
    /// Read.
    Read,
    /// Read and change.
    Write,
}

/// The token, the live sessions and the bearer requests' CSRF token.
pub struct Keys {
    token: Option<Token>,
    sessions: Sessions,
    bearer_csrf: String,
    public_read: bool,
}

fn ct_eq(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

impl Keys {
    /// No session yet, for `token`.
    pub fn new(token: Option<Token>, public_read: bool) -> Keys {
        Keys {
            token,
            sessions: Sessions::default(),
            bearer_csrf: random_hex(),
            public_read,
        }
    }

    /// Whether a token is configured (without one, the role is read-only).
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// Whether the request carries a bearer token that is not the token
    /// (what the limiter counts, with failed logins).
    pub fn bearer_wrong(&self, headers: &HeaderMap) -> bool {
        headers.contains_key(axum::http::header::AUTHORIZATION) && !self.bearer_ok(headers)
    }

    fn bearer_ok(&self, headers: &HeaderMap) -> bool {
        let Some(token) = &self.token else {
            return false;
        };
        headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|given| token.matches(given.trim()))
    }

    /// The session keys the request's cookies name (a browser may send
    /// more than one cookie of the name).
    fn cookie_keys(headers: &HeaderMap) -> impl Iterator<Item = &str> {
        headers
            .get_all(axum::http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .filter(|(name, _)| *name == COOKIE)
            .map(|(_, value)| value)
    }

    /// The live session of the request's cookie, if any: its key and its
    /// CSRF token (the session counts as used now).
    pub fn session(&self, headers: &HeaderMap) -> Option<(String, String)> {
        self.token.as_ref()?;
        Self::cookie_keys(headers).find_map(|key| Some((key.to_string(), self.sessions.csrf(key)?)))
    }

    /// Whether the request carries the cookie of a live session.
    pub fn logged_in(&self, headers: &HeaderMap) -> bool {
        self.session(headers).is_some()
    }

    fn access(&self, granted: bool) -> Access {
        match (&self.token, granted) {
            (None, _) => Access::Read,
            (Some(_), true) => Access::Write,
            (Some(_), false) if self.public_read => Access::Read,
            (Some(_), false) => Access::Denied,
        }
    }

    /// An API request's access: by its bearer token only (a cookie is
    /// not taken: a cross-site request would carry it).
    pub fn api_access(&self, headers: &HeaderMap) -> Access {
        self.access(self.bearer_ok(headers))
    }

    /// A page's access: by the login cookie (or a bearer token).
    pub fn page_access(&self, headers: &HeaderMap) -> Access {
        self.access(self.logged_in(headers) || self.bearer_ok(headers))
    }

    /// Whether `given` is the token (a login).
    pub fn login(&self, given: &str) -> bool {
        self.token.as_ref().is_some_and(|t| t.matches(given.trim()))
    }

    /// A new session, and the `Set-Cookie` value that gives it (`Secure`
    /// if `secure`: the browser came over HTTPS).
    pub fn open_session(&self, secure: bool) -> String {
        let (key, _csrf) = self.sessions.open();
        let secure = if secure { "; Secure" } else { "" };
        format!("{COOKIE}={key}; HttpOnly; SameSite=Strict; Path=/{secure}")
    }

    /// Ends the session of the request's cookie, if any (logout): the
    /// cookie and its CSRF token are refused from then on.
    pub fn close_session(&self, headers: &HeaderMap) {
        for key in Self::cookie_keys(headers) {
            self.sessions.close(key);
        }
    }

    /// The `Set-Cookie` value of a logout.
    pub fn logout_cookie() -> String {
        format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0")
    }

    /// The CSRF token the forms of the request being answered carry
    /// (shown only to a page allowed to change): its session's, or, for a
    /// request with the bearer token and no session, the process's.
    pub fn csrf(&self) -> String {
        REQUEST_CSRF
            .try_with(|csrf| csrf.clone())
            .ok()
            .flatten()
            .unwrap_or_else(|| self.bearer_csrf.clone())
    }

    /// Whether a form's CSRF token is the request's (see [`Keys::csrf`]).
    pub fn csrf_ok(&self, given: &str) -> bool {
        ct_eq(given, &self.csrf())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: axum::http::HeaderName, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, value.parse().unwrap());
        h
    }

    #[test]
    fn a_short_or_spaced_token_is_refused_and_never_shown() {
        assert!(Token::new("short").is_err());
        assert!(Token::new("a token with spaces in it").is_err());
        let t = Token::new("  0123456789abcdef\n").unwrap();
        assert_eq!(format!("{t:?}"), "Token(***)");
    }

    #[test]
    fn the_right_bearer_or_cookie_grants_and_nothing_else_does() {
        use axum::http::header::{AUTHORIZATION, COOKIE as COOKIE_HEADER};
        let keys = Keys::new(Some(Token::new("0123456789abcdef").unwrap()), false);
        let right = headers(AUTHORIZATION, "Bearer 0123456789abcdef");
        let wrong = headers(AUTHORIZATION, "Bearer 0123456789abcdeX");
        assert_eq!(keys.api_access(&right), Access::Write);
        assert_eq!(keys.api_access(&wrong), Access::Denied);
        assert_eq!(keys.api_access(&HeaderMap::new()), Access::Denied);
        let cookie = keys.open_session(false);
        let pair = cookie.split(';').next().unwrap();
        let logged = headers(COOKIE_HEADER, &format!("other=1; {pair}"));
        assert_eq!(keys.page_access(&logged), Access::Write);
        // The cookie is the pages' only: the API wants the token.
        assert_eq!(keys.api_access(&logged), Access::Denied);
        let public = Keys::new(Some(Token::new("0123456789abcdef").unwrap()), true);
        assert_eq!(public.api_access(&wrong), Access::Read);
        let none = Keys::new(None, false);
        assert_eq!(none.api_access(&right), Access::Read);
    }
}
