//! Why a due job waits: the one answer every surface gives (status, the
//! pages, the API, the metrics), from what the QueueRunner itself decides
//! on ([`crate::queue_runner`] holds such rows, due, their `run_after`
//! untouched).

use std::collections::HashMap;

use serde::Serialize;

use crate::functions::Functions;
use crate::gearman::FunctionLoad;
use crate::names::RUN_QUEUED_JOB;

/// Why a function's due rows are not being dispatched.
#[cfg_attr(feature = "web", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitReason {
    /// The function is paused (`garivini functions pause`).
    Paused,
    /// No gearmand that answered has a worker for it.
    NoWorker,
    /// Its concurrency limit is taken (`[functions.NAME] concurrency`).
    OverLimit,
    /// Its gearmand queue (or `run_queued_job`'s, for low-latency rows) is
    /// at the watermark.
    OverWatermark,
}

impl WaitReason {
    /// How people read it.
    pub fn as_str(self) -> &'static str {
        match self {
            WaitReason::Paused => "paused",
            WaitReason::NoWorker => "no worker",
            WaitReason::OverLimit => "over the limit",
            WaitReason::OverWatermark => "over the watermark",
        }
    }

    /// As a metric label or JSON value.
    pub fn label(self) -> &'static str {
        match self {
            WaitReason::Paused => "paused",
            WaitReason::NoWorker => "no_worker",
            WaitReason::OverLimit => "over_limit",
            WaitReason::OverWatermark => "over_watermark",
        }
    }
}

/// What tells the reasons apart: the roles' watermark and per-function
/// settings, as the QueueRunner runs with them.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The roles' queue watermark (0: none).
    pub watermark: u64,
    /// Per-function settings (limits, own watermarks).
    pub functions: Functions,
}

impl Default for Limits {
    /// The roles' default watermark, no per-function settings.
    fn default() -> Self {
        Limits {
            watermark: crate::names::DEFAULT_QUEUE_WATERMARK_DEPTH,
            functions: Functions::default(),
        }
    }
}

impl Limits {
    /// Why `funcname`'s due rows wait, given whether it is `paused` and
    /// gearmand's `load` (summed over the servers that answered; `None`
    /// when none did, and then only a pause is known). `None`: nothing
    /// holds them, they go with the next claim.
    pub fn reason(
        &self,
        funcname: &str,
        paused: bool,
        load: Option<&HashMap<String, FunctionLoad>>,
    ) -> Option<WaitReason> {
        if paused {
            return Some(WaitReason::Paused);
        }
        let load = load?;
        let of = |f: &str| load.get(f).copied().unwrap_or_default();
        let own = of(funcname);
        if own.workers == 0 {
            return Some(WaitReason::NoWorker);
        }
        let settings = self.functions.get(funcname);
        if settings
            .concurrency
            .is_some_and(|c| own.queued >= u64::from(c))
        {
            return Some(WaitReason::OverLimit);
        }
        let full = |f: &str| match self.functions.get(f).watermark.unwrap_or(self.watermark) {
            0 => false,
            w => of(f).queued >= w,
        };
        (full(funcname) || full(RUN_QUEUED_JOB)).then_some(WaitReason::OverWatermark)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pause_wins_then_no_worker_then_the_limit_then_the_watermark() {
        let limits = Limits {
            watermark: 10,
            functions: Functions::new([(
                "limited".to_string(),
                crate::functions::Settings {
                    concurrency: Some(2),
                    ..Default::default()
                },
            )]),
        };
        let status: HashMap<String, FunctionLoad> = [
            ("served".to_string(), FunctionLoad::of(0, 1)),
            ("limited".to_string(), FunctionLoad::of(2, 1)),
            ("full".to_string(), FunctionLoad::of(10, 1)),
        ]
        .into();
        let s = Some(&status);
        assert_eq!(limits.reason("served", true, s), Some(WaitReason::Paused));
        assert_eq!(limits.reason("gone", false, s), Some(WaitReason::NoWorker));
        assert_eq!(
            limits.reason("limited", false, s),
            Some(WaitReason::OverLimit)
        );
        assert_eq!(
            limits.reason("full", false, s),
            Some(WaitReason::OverWatermark)
        );
        assert_eq!(limits.reason("served", false, s), None);
        assert_eq!(limits.reason("gone", false, None), None, "not known");
    }
}
