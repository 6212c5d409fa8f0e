//! Who may read and who may change: the bearer token (compared in constant
//! time), the login cookie the pages keep after one login with it, and the
//! CSRF token every state-changing form carries.
//!
//! The cookie holds a random session key made at start-up, never the
//! token; it is `HttpOnly` and `SameSite=Strict`. A restart logs every
//! browser out.

use axum::http::HeaderMap;
use rand::Rng;
use subtle::ConstantTimeEq;

use crate::error::{Error, Result};

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

/// The token and the process's session and CSRF keys.
pub struct Keys {
    token: Option<Token>,
    session: String,
    csrf: String,
    public_read: bool,
}

fn random_hex() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn ct_eq(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

impl Keys {
    /// Fresh session and CSRF keys for `token`.
    pub fn new(token: Option<Token>, public_read: bool) -> Keys {
        Keys {
            token,
            session: random_hex(),
            csrf: random_hex(),
            public_read,
        }
    }

    /// Whether a token is configured (without one, the role is read-only).
    pub fn has_token(&self) -> bool {
        self.token.is_some()
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

    /// Whether the request carries the login cookie of this process.
    pub fn logged_in(&self, headers: &HeaderMap) -> bool {
        self.token.is_some()
            && headers
                .get_all(axum::http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|pair| pair.trim().split_once('='))
                .any(|(name, value)| name == COOKIE && ct_eq(value, &self.session))
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

    /// The `Set-Cookie` value of a login.
    pub fn session_cookie(&self) -> String {
        format!(
            "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/",
            self.session
        )
    }

    /// The `Set-Cookie` value of a logout.
    pub fn logout_cookie() -> String {
        format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0")
    }

    /// The CSRF token the forms carry (shown only to a logged-in page).
    pub fn csrf(&self) -> &str {
        &self.csrf
    }

    /// Whether a form's CSRF token is this process's.
    pub fn csrf_ok(&self, given: &str) -> bool {
        ct_eq(given, &self.csrf)
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
        let cookie = keys.session_cookie();
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
