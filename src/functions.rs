//! Per-function settings (`[functions.NAME]` in the config file, or
//! `--function NAME:KEY=VALUE,...`): a concurrency limit, a watermark of
//! its own, a timeout and its own max attempts. A function without an
//! entry takes the roles' settings.
//!
//! Who keeps each one:
//! - `concurrency`: at most N jobs of the function queued plus running in
//!   gearmand. The QueueRunner sends no more than the room gearmand's
//!   `status` shows; the Injector stores the function's jobs due and leaves
//!   them to the QueueRunner; a Controller runs at most N at once itself
//!   and gives back a job that finds N already queued or running.
//! - `watermark`: the QueueRunner's `queue_watermark_depth` for this
//!   function's own queue (throughput-mode rows).
//! - `timeout`: the Controller's `job_timeout` for this function.
//! - `max_attempts`: failures after which our Client (Controller, or a
//!   worker using it) parks the function's job as dead.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};

/// One function's settings; `None`: the role's own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Settings {
    /// Most jobs of the function queued plus running in gearmand at once
    /// (1: one at a time).
    pub concurrency: Option<u32>,
    /// Queue depth in gearmand above which its rows are held back (0: no
    /// limit).
    pub watermark: Option<u64>,
    /// How long a Controller waits for one of its jobs.
    pub timeout: Option<Duration>,
    /// Failures after which one of its jobs is parked as dead.
    pub max_attempts: Option<u8>,
}

impl Settings {
    /// Checks the ranges; `name` is the function, for the message.
    pub fn validate(&self, name: &str) -> Result<()> {
        let bad = |what: &str| {
            Err(Error::invalid_config(
                "functions",
                &format!("{name}: {what}"),
            ))
        };
        if name.is_empty() {
            return Err(Error::invalid_config(
                "functions",
                "a function name is empty",
            ));
        }
        if self.concurrency == Some(0) {
            return bad("concurrency must be at least 1");
        }
        if self.timeout == Some(Duration::ZERO) {
            return bad("timeout must be more than 0 seconds");
        }
        if self.max_attempts == Some(0) {
            return bad("max-attempts must be at least 1");
        }
        Ok(())
    }

    /// Sets `key` (`concurrency`, `watermark`, `timeout` in seconds,
    /// `max-attempts`) from its text.
    pub fn set(&mut self, key: &str, value: &str) -> std::result::Result<(), String> {
        let number = |what: &str| format!("{key}: {value:?} is not {what}");
        match key {
            "concurrency" => {
                self.concurrency = Some(value.parse().map_err(|_| number("a whole number"))?)
            }
            "watermark" => {
                self.watermark = Some(value.parse().map_err(|_| number("a whole number"))?)
            }
            "timeout" => {
                let secs: f64 = value.parse().map_err(|_| number("a number of seconds"))?;
                self.timeout = Some(
                    Duration::try_from_secs_f64(secs).map_err(|_| number("a number of seconds"))?,
                );
            }
            "max-attempts" | "max_attempts" => {
                self.max_attempts = Some(
                    value
                        .parse()
                        .map_err(|_| number("a number from 1 to 255"))?,
                )
            }
            _ => {
                return Err(format!(
                    "unknown setting {key:?} (known: concurrency, watermark, timeout, max-attempts)"
                ))
            }
        }
        Ok(())
    }
}

/// Every function's settings. Cheap to clone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Functions(Arc<HashMap<String, Settings>>);

impl Functions {
    /// From (function, settings) pairs; a function named twice keeps the
    /// keys of both, the later winning.
    pub fn new(entries: impl IntoIterator<Item = (String, Settings)>) -> Functions {
        let mut map: HashMap<String, Settings> = HashMap::new();
        for (name, s) in entries {
            let e = map.entry(name).or_default();
            e.concurrency = s.concurrency.or(e.concurrency);
            e.watermark = s.watermark.or(e.watermark);
            e.timeout = s.timeout.or(e.timeout);
            e.max_attempts = s.max_attempts.or(e.max_attempts);
        }
        Functions(Arc::new(map))
    }

    /// Parses one `--function NAME:KEY=VALUE[,KEY=VALUE...]`.
    pub fn parse_flag(text: &str) -> Result<(String, Settings)> {
        let bad = |why: String| Error::invalid_config("function", &format!("{text:?}: {why}"));
        let (name, pairs) = text
            .split_once(':')
            .ok_or_else(|| bad("expected NAME:KEY=VALUE[,KEY=VALUE...]".into()))?;
        let mut settings = Settings::default();
        for pair in pairs.split(',').filter(|p| !p.trim().is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| bad(format!("{pair:?} is not KEY=VALUE")))?;
            settings.set(key.trim(), value.trim()).map_err(bad)?;
        }
        settings.validate(name)?;
        Ok((name.to_string(), settings))
    }

    /// Checks every entry.
    pub fn validate(&self) -> Result<()> {
        self.0.iter().try_for_each(|(name, s)| s.validate(name))
    }

    /// The settings of `funcname` (all `None` when it has no entry).
    pub fn get(&self, funcname: &str) -> Settings {
        self.0.get(funcname).copied().unwrap_or_default()
    }

    /// Whether no function has an entry.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether any function has a concurrency limit or a watermark.
    pub fn limits_any(&self) -> bool {
        self.0
            .values()
            .any(|s| s.concurrency.is_some() || s.watermark.is_some())
    }

    /// The concurrency limit of `funcname`, if any.
    pub fn concurrency(&self, funcname: &str) -> Option<u32> {
        self.0.get(funcname).and_then(|s| s.concurrency)
    }

    /// Every entry, sorted by function.
    pub fn entries(&self) -> Vec<(&str, Settings)> {
        let mut all: Vec<_> = self.0.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        all.sort_by(|a, b| a.0.cmp(b.0));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flag_gives_a_functions_settings() {
        let (name, s) =
            Functions::parse_flag("resize:concurrency=1, timeout=2.5,max-attempts=3").unwrap();
        assert_eq!(name, "resize");
        assert_eq!(s.concurrency, Some(1));
        assert_eq!(s.timeout, Some(Duration::from_millis(2500)));
        assert_eq!(s.max_attempts, Some(3));
        assert_eq!(s.watermark, None);
    }

    #[test]
    fn bad_flags_name_what_is_wrong() {
        for (text, says) in [
            ("resize", "NAME:KEY=VALUE"),
            ("resize:speed=3", "unknown setting \"speed\""),
            ("resize:concurrency=0", "at least 1"),
            ("resize:timeout=-1", "not a number of seconds"),
            ("resize:max-attempts=300", "1 to 255"),
            (":concurrency=1", "empty"),
        ] {
            let err = Functions::parse_flag(text).unwrap_err().to_string();
            assert!(err.contains(says), "{text}: {err}");
        }
    }

    #[test]
    fn a_function_named_twice_keeps_both_keys() {
        let a = Settings {
            concurrency: Some(2),
            ..Settings::default()
        };
        let b = Settings {
            timeout: Some(Duration::from_secs(1)),
            ..Settings::default()
        };
        let f = Functions::new([("f".into(), a), ("f".into(), b)]);
        assert_eq!(f.concurrency("f"), Some(2));
        assert_eq!(f.get("f").timeout, Some(Duration::from_secs(1)));
        assert_eq!(f.get("other"), Settings::default());
    }
}
