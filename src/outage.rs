//! Riding out an outage of a remote service (a database, gearmand): log
//! its start once and its end once, however many calls fail in between,
//! and space the retries (exponential, capped, jittered).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::Rng as _;

use crate::Error;

/// First retry delay after a failure.
pub const RETRY_BASE: Duration = Duration::from_millis(100);
/// Longest retry delay.
pub const RETRY_CAP: Duration = Duration::from_secs(5);
/// How long after its last failure a success ends an outage. Calls that
/// were under way when the service went away still succeed for a moment;
/// without this, each of them would end the outage and the next failure
/// would start, and log, a new one.
pub const SETTLE: Duration = Duration::from_secs(1);
/// A failure this long after the last one starts a new outage even if no
/// success was seen in between.
pub const FORGET: Duration = Duration::from_secs(60);

/// Tracks one outage of a remote service. Shared by reference: every task
/// that uses the service reports to the same tracker, so an outage that
/// fails a thousand jobs is still one warning and one recovery line.
pub struct Outage {
    what: &'static str,
    /// Failures since the last success: the retry delay grows with them.
    failures: AtomicU32,
    /// When the outage being logged last failed; None while none is.
    last_failure: Mutex<Option<Instant>>,
    loudness: Loudness,
    /// Which instance of the service it tracks (a server, a database),
    /// when there are several: named in each line.
    about: Option<String>,
    /// Whether it is a database's own tracker ([`Outage::database`]).
    database: bool,
}

/// How an [`Outage`] logs its start and end.
#[derive(Clone, Copy, PartialEq)]
enum Loudness {
    /// Start as a warning, end as info.
    Warn,
    /// Both as info: for a consequence of an outage that another tracker
    /// already warns about.
    Info,
    /// Both at debug.
    Quiet,
}

impl Outage {
    /// A tracker whose log lines say `what`.
    pub fn new(what: &'static str) -> Outage {
        Outage {
            what,
            failures: AtomicU32::new(0),
            last_failure: Mutex::new(None),
            loudness: Loudness::Warn,
            about: None,
            database: false,
        }
    }

    /// The tracker of one database, the store's own: the one that warns
    /// about the database's faults ([`Error::is_connection_fault`]). Every
    /// other tracker that meets such a fault (a claim, a request refused)
    /// says it at info, so that an outage of a database is one warning
    /// per process however many roles call it, and however long it lasts
    /// (from the start, say). Other errors warn as ever.
    pub fn database(what: &'static str) -> Outage {
        Outage {
            database: true,
            ..Outage::new(what)
        }
    }

    /// The same tracker for one of several instances of the service (a
    /// gearmand server, a database): its lines say `what (about)`, so that
    /// the outages of different instances read apart.
    pub fn about(self, instance: impl Into<String>) -> Outage {
        Outage {
            about: Some(instance.into()),
            ..self
        }
    }

    /// What the lines say: `what`, and the instance when there is one.
    fn label(&self) -> std::borrow::Cow<'static, str> {
        match &self.about {
            None => self.what.into(),
            Some(about) => format!("{} ({about})", self.what).into(),
        }
    }

    /// A tracker that logs its start and end at info level: for what an
    /// outage does to a caller (completions kept for later) where the
    /// service's own tracker already warned that it is down, so that one
    /// outage is still one warning.
    pub fn info(what: &'static str) -> Outage {
        Outage {
            loudness: Loudness::Info,
            ..Outage::new(what)
        }
    }

    /// A tracker that logs only at debug level: for one of several
    /// connections to a server, whose first connection already tells.
    pub fn quiet(what: &'static str) -> Outage {
        Outage {
            loudness: Loudness::Quiet,
            ..Outage::new(what)
        }
    }

    /// Records a failure; the first one of an outage is logged as a warning.
    pub fn failed(&self, err: &Error) {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed);
        let mut last = self.last_failure.lock().unwrap();
        let new = last.is_none_or(|at| at.elapsed() > FORGET);
        *last = Some(Instant::now());
        let loudness = match self.loudness {
            // The database's own tracker warned already.
            Loudness::Warn if err.is_connection_fault() && !self.database => Loudness::Info,
            loudness => loudness,
        };
        match (new, loudness) {
            (true, Loudness::Warn) => tracing::warn!(error = %err, "{}", self.label()),
            (true, Loudness::Info) => tracing::info!(error = %err, "{}", self.label()),
            _ => tracing::debug!(error = %err, failures, "{}", self.label()),
        }
    }

    /// Records a success; ends the outage once no failure has come for
    /// [`SETTLE`].
    pub fn ended(&self) {
        self.failures.store(0, Ordering::Relaxed);
        let mut last = self.last_failure.lock().unwrap();
        if last.is_some_and(|at| at.elapsed() >= SETTLE) {
            *last = None;
            if self.loudness != Loudness::Quiet {
                tracing::info!("{}: recovered", self.label());
            }
        }
    }

    /// Whether an outage is going on.
    pub fn is_down(&self) -> bool {
        self.failures.load(Ordering::Relaxed) > 0
    }

    /// How long to wait before the next try: doubling from [`RETRY_BASE`],
    /// at most [`RETRY_CAP`], with up to 50 % jitter so that many
    /// processes do not retry in step.
    pub fn delay(&self) -> Duration {
        self.delay_up_to(RETRY_CAP)
    }

    /// [`Outage::delay`] with a cap of `cap` instead of [`RETRY_CAP`]: for
    /// retries that cost the service nothing while it is known down (the
    /// store refuses them without a round trip), so that the work resumes
    /// soon after the service does.
    pub fn delay_up_to(&self, cap: Duration) -> Duration {
        let exp = self
            .failures
            .load(Ordering::Relaxed)
            .saturating_sub(1)
            .min(16);
        let full = RETRY_BASE.saturating_mul(1 << exp).min(cap);
        full.mul_f64(rand::rng().random_range(0.5..=1.0))
    }

    /// Reports `result` of a call to the service: a connection fault is
    /// part of the outage, a success ends it; other errors are the call's
    /// own and are left to the caller.
    pub fn track<T>(&self, result: &crate::Result<T>) {
        match result {
            Ok(_) => self.ended(),
            Err(err) if err.is_connection_fault() => self.failed(err),
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_grows_and_stays_under_the_cap() {
        let o = Outage::new("test");
        let err = Error::NoGearmand;
        o.failed(&err);
        assert!(o.delay() <= RETRY_BASE);
        for _ in 0..40 {
            o.failed(&err);
        }
        let d = o.delay();
        assert!(d <= RETRY_CAP && d >= RETRY_CAP / 2, "{d:?}");
        o.ended();
        assert!(!o.is_down());
        for _ in 0..40 {
            o.failed(&err);
        }
        let d = o.delay_up_to(Duration::from_secs(1));
        assert!(
            d <= Duration::from_secs(1) && d >= Duration::from_millis(500),
            "{d:?}"
        );
    }

    #[test]
    fn a_success_right_after_a_failure_does_not_end_the_outage() {
        let o = Outage::new("test");
        o.failed(&Error::NoGearmand);
        o.ended();
        assert!(
            o.last_failure.lock().unwrap().is_some(),
            "a call under way when the service went away must not end the outage"
        );
    }
}
