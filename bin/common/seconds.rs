//! Flags given in seconds (`--shutdown-timeout 2.5`).

/// A flag's seconds as a Duration, refusing what is not a number >= 0.
pub fn seconds(flag: &str, secs: f64) -> anyhow::Result<std::time::Duration> {
    std::time::Duration::try_from_secs_f64(secs)
        .map_err(|_| anyhow::anyhow!("invalid setting {flag}: must be a number of seconds >= 0"))
}
