//! The pages' login sessions, and the limit on failed logins and bad
//! bearer tokens per client address.
//!
//! A session is made at each login: a random key (the cookie's value,
//! 256 bits) and a random CSRF token of its own, kept in this process's
//! memory. It ends at logout, after [`SESSION_IDLE`] without a request, or
//! when the process stops (a restart logs every browser out).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::Rng;

/// A session unused this long is gone.
pub const SESSION_IDLE: Duration = Duration::from_secs(12 * 3600);
/// Most sessions kept at once: past it a login ends the least recently
/// used one (logins need the token: this bounds memory, not attackers).
pub const MAX_SESSIONS: usize = 10_000;
/// Failed logins or bad bearer tokens an address may send per
/// [`TRY_WINDOW`] before its tries are answered 429.
pub const TRIES_PER_WINDOW: u32 = 10;
/// The window of [`TRIES_PER_WINDOW`].
pub const TRY_WINDOW: Duration = Duration::from_secs(60);
/// Most addresses remembered by the limiter; past it, ended windows are
/// forgotten first.
const MAX_ADDRESSES: usize = 100_000;

/// 32 random bytes, in hex.
pub(crate) fn random_hex() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct Session {
    csrf: String,
    seen: Instant,
}

/// The live sessions, by key.
#[derive(Default)]
pub struct Sessions {
    live: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// A new session: its key (for the cookie) and its CSRF token.
    pub fn open(&self) -> (String, String) {
        let mut live = self.live.lock().unwrap();
        live.retain(|_, s| s.seen.elapsed() < SESSION_IDLE);
        if live.len() >= MAX_SESSIONS {
            if let Some(oldest) = live
                .iter()
                .min_by_key(|(_, s)| s.seen)
                .map(|(k, _)| k.clone())
            {
                live.remove(&oldest);
            }
        }
        let (key, csrf) = (random_hex(), random_hex());
        live.insert(
            key.clone(),
            Session {
                csrf: csrf.clone(),
                seen: Instant::now(),
            },
        );
        (key, csrf)
    }

    /// The CSRF token of the live session `key`, which counts as used
    /// now; `None` for an unknown, ended or expired one. (The lookup is by
    /// hash, with Rust's randomly keyed SipHash: its timing tells an
    /// outsider nothing usable about the 256-bit keys.)
    pub fn csrf(&self, key: &str) -> Option<String> {
        let mut live = self.live.lock().unwrap();
        let session = live.get_mut(key)?;
        if session.seen.elapsed() >= SESSION_IDLE {
            live.remove(key);
            return None;
        }
        session.seen = Instant::now();
        Some(session.csrf.clone())
    }

    /// Ends the session `key` (logout).
    pub fn close(&self, key: &str) {
        self.live.lock().unwrap().remove(key);
    }
}

struct Window {
    start: Instant,
    failures: u32,
    refused: u32,
}

/// Failed logins and bad bearer tokens per client address, in fixed
/// windows of [`TRY_WINDOW`]: past [`TRIES_PER_WINDOW`] failures the
/// address's tries (any login, any request with a bearer token) are
/// answered 429 until its window ends. The log gets one warning when an
/// address reaches the limit and one with the count refused after, not a
/// line per try.
#[derive(Default)]
pub struct Limiter {
    windows: Mutex<HashMap<IpAddr, Window>>,
}

impl Limiter {
    /// How long `client` must wait before its next try, if it is over the
    /// limit (the try is then counted as refused).
    pub fn blocked(&self, client: IpAddr) -> Option<Duration> {
        let mut windows = self.windows.lock().unwrap();
        let window = windows.get_mut(&client)?;
        let age = window.start.elapsed();
        if age >= TRY_WINDOW {
            report_refused(client, window);
            windows.remove(&client);
            return None;
        }
        if window.failures < TRIES_PER_WINDOW {
            return None;
        }
        window.refused += 1;
        Some(TRY_WINDOW - age)
    }

    /// Counts one failed login or bad bearer token from `client`.
    pub fn failed(&self, client: IpAddr) {
        let mut windows = self.windows.lock().unwrap();
        if windows.len() >= MAX_ADDRESSES {
            windows.retain(|ip, w| {
                let keep = w.start.elapsed() < TRY_WINDOW;
                if !keep {
                    report_refused(*ip, w);
                }
                keep
            });
        }
        let window = windows.entry(client).or_insert_with(|| Window {
            start: Instant::now(),
            failures: 0,
            refused: 0,
        });
        if window.start.elapsed() >= TRY_WINDOW {
            report_refused(client, window);
            *window = Window {
                start: Instant::now(),
                failures: 0,
                refused: 0,
            };
        }
        window.failures += 1;
        if window.failures == TRIES_PER_WINDOW {
            tracing::warn!(
                %client,
                "web: {TRIES_PER_WINDOW} failed logins or bad tokens from this address within {}s; its tries are refused (429) until then",
                TRY_WINDOW.as_secs()
            );
        } else {
            tracing::debug!(%client, "web: a failed login or a bad token");
        }
    }
}

fn report_refused(client: IpAddr, window: &Window) {
    if window.refused > 0 {
        tracing::warn!(
            %client,
            refused = window.refused,
            "web: tries refused (429) from this address while over the limit"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_its_own_and_ends_at_close() {
        let sessions = Sessions::default();
        let (a, csrf_a) = sessions.open();
        let (b, csrf_b) = sessions.open();
        assert_ne!(a, b);
        assert_ne!(csrf_a, csrf_b);
        assert_eq!(sessions.csrf(&a).as_deref(), Some(csrf_a.as_str()));
        sessions.close(&a);
        assert_eq!(sessions.csrf(&a), None);
        assert_eq!(sessions.csrf(&b).as_deref(), Some(csrf_b.as_str()));
        assert_eq!(sessions.csrf("unknown"), None);
    }

    #[test]
    fn an_address_over_the_limit_waits_and_others_do_not() {
        let limiter = Limiter::default();
        let bad: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..TRIES_PER_WINDOW {
            assert_eq!(limiter.blocked(bad), None);
            limiter.failed(bad);
        }
        let wait = limiter.blocked(bad).expect("over the limit");
        assert!(wait <= TRY_WINDOW && wait > TRY_WINDOW - Duration::from_secs(5));
        assert_eq!(limiter.blocked(other), None);
    }
}
