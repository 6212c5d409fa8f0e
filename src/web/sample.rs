//! The chart's data: every [`Config::sample_every`](super::Config) this
//! role reads the queue depth (due, in flight, retrying, scheduled: every
//! row not dead), the rows held (dead too) and each database's highest job
//! id, and keeps an hour of readings. Between two readings, rows added =
//! the rise of the highest ids, and rows gone (completed, or cancelled) =
//! rows added less the rise of the rows held: what the table shows of
//! jobs stored and done, without a counter of its own. Jobs dispatched
//! per minute come from the counter the dispatching roles keep in each
//! database (`garivini_dispatches`, [`crate::store::dispatches`]): read
//! whole for the last hour each time, so that the line is right even just
//! after this role started. Drawn as SVG.
//!
//! The counts are the status's: on a large table some are lower bounds
//! ([`crate::store::Counts::at_least`]). A reading that holds one is
//! marked so; the depth panel then says "at least", and no rows gone are
//! derived from it (rows held that are not all counted tell nothing of
//! rows gone).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use maud::{html, Markup};
use tokio_util::sync::CancellationToken;

use super::State;
use crate::store::dispatches::MinuteCount;

/// How far back the chart reaches.
pub const WINDOW: Duration = Duration::from_secs(3600);

/// One reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Point {
    /// Unix time of the reading (the first database's clock).
    pub at: u64,
    /// Rows not dead.
    pub depth: u64,
    /// Rows held, dead ones too.
    pub rows: u64,
    /// The sum over the databases of their highest job id.
    pub high: u64,
    /// `depth` and `rows` are exact: no count of the reading was a lower
    /// bound.
    pub exact: bool,
}

/// Per minute between two readings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Unix time of the later reading.
    pub at: u64,
    /// Rows added per minute.
    pub added: f64,
    /// Rows gone (completed or cancelled) per minute; `None` when a
    /// reading's rows held were a lower bound.
    pub gone: Option<f64>,
}

/// The last hour of readings.
#[derive(Debug, Default)]
pub struct Samples {
    points: Mutex<VecDeque<Point>>,
    /// The last hour's dispatches per minute, summed over the databases;
    /// `None` while no database has the counter table.
    dispatched: Mutex<Option<Vec<MinuteCount>>>,
}

impl Samples {
    /// Keeps `point`, dropping readings older than the window.
    pub fn push(&self, point: Point) {
        let mut points = self.points.lock().unwrap();
        points.push_back(point);
        while points
            .front()
            .is_some_and(|p| p.at + WINDOW.as_secs() < point.at)
        {
            points.pop_front();
        }
    }

    /// The readings, oldest first.
    pub fn points(&self) -> Vec<Point> {
        self.points.lock().unwrap().iter().copied().collect()
    }

    /// Keeps the last hour's dispatches (`None`: no counter table).
    pub fn set_dispatched(&self, minutes: Option<Vec<MinuteCount>>) {
        *self.dispatched.lock().unwrap() = minutes;
    }

    /// The last hour's dispatches per minute, oldest first; `None` when no
    /// database has the counter table.
    pub fn dispatched(&self) -> Option<Vec<MinuteCount>> {
        self.dispatched.lock().unwrap().clone()
    }
}

/// Rows added and gone per minute between each two readings.
pub fn rates(points: &[Point]) -> Vec<Rate> {
    points
        .windows(2)
        .filter(|w| w[1].at > w[0].at)
        .map(|w| {
            let (a, b) = (w[0], w[1]);
            let per_minute = 60.0 / (b.at - a.at) as f64;
            // A table emptied by hand moves the ids back: no rise then.
            let added = b.high.saturating_sub(a.high);
            let held = b.rows as i128 - a.rows as i128;
            let gone = (added as i128 - held).max(0) as u64;
            Rate {
                at: b.at,
                added: added as f64 * per_minute,
                gone: (a.exact && b.exact).then_some(gone as f64 * per_minute),
            }
        })
        .collect()
}

/// One reading: a new status report (kept as the shared one, so that
/// the pages' readers find it fresh) and one primary-key lookup per
/// database; `None` while a database cannot be read.
pub async fn read(state: &Arc<State>) -> Option<Point> {
    let status = state.fresh_status().await.status;
    let mut point = Point {
        at: 0,
        depth: 0,
        rows: 0,
        high: 0,
        exact: true,
    };
    for db in &status.databases {
        let now = db.now?;
        if point.at == 0 {
            point.at = u64::from(now);
        }
        let t = &db.total;
        let depth = t.due + t.in_flight + t.retrying + t.scheduled;
        point.depth += depth;
        point.rows += depth + t.dead;
        point.exact &= t.at_least.is_empty();
        point.high += state.store.max_jobid(db.dbid).await.ok()?;
    }
    (point.at > 0).then_some(point)
}

/// The dispatches of the hour before `now` (unix time), per minute and
/// summed over the databases: one primary-key range read per database.
/// `None` when no database has the counter table; `Err(())` when none
/// could be read (the last reading is then kept).
pub async fn read_dispatched(
    state: &Arc<State>,
    now: u64,
) -> std::result::Result<Option<Vec<MinuteCount>>, ()> {
    let since = (now / 60).saturating_sub(WINDOW.as_secs() / 60 - 1) as u32;
    let (mut sum, mut any, mut read) = (BTreeMap::new(), false, false);
    for dbid in state.store.dbids() {
        match state.store.dispatches_since(dbid, since).await {
            Ok(Some(minutes)) => {
                (any, read) = (true, true);
                for m in minutes {
                    *sum.entry(m.minute).or_insert(0) += m.dispatched;
                }
            }
            Ok(None) => read = true,
            Err(err) => {
                tracing::debug!(db.id = dbid, error = %err, "cannot read the dispatch counts")
            }
        }
    }
    if !read {
        return Err(());
    }
    Ok(any.then(|| {
        sum.into_iter()
            .map(|(minute, dispatched)| MinuteCount { minute, dispatched })
            .collect()
    }))
}

/// Reads the queue every `sample_every` until `shutdown`.
pub async fn run(state: Arc<State>, shutdown: CancellationToken) {
    loop {
        if let Some(point) = read(&state).await {
            state.samples.push(point);
            if let Ok(minutes) = read_dispatched(&state, point.at).await {
                state.samples.set_dispatched(minutes);
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(state.config.sample_every) => {}
        }
    }
}

const W: f64 = 640.0;
const H: f64 = 140.0;
const PAD: f64 = 40.0;

/// `values` (unix time, value) as polyline points over the last hour
/// before `now`, scaled to `max`.
fn line(values: &[(u64, f64)], now: u64, max: f64) -> String {
    values
        .iter()
        .map(|&(at, v)| {
            let ago = now.saturating_sub(at) as f64;
            let x = PAD + (W - PAD) * (1.0 - ago / WINDOW.as_secs_f64());
            let y = H - 20.0 - (H - 30.0) * (v / max);
            format!("{x:.1},{y:.1}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// One panel: its lines (CSS class, values), a title and the scale.
fn panel(title: &str, id: &str, lines: &[(&str, Vec<(u64, f64)>)], now: u64) -> Markup {
    let max = lines
        .iter()
        .flat_map(|(_, v)| v.iter().map(|p| p.1))
        .fold(0.0_f64, f64::max)
        .max(1.0);
    html! {
        svg id=(id) class="chart" width=(W) height=(H) viewBox=(format!("0 0 {W} {H}"))
            xmlns="http://www.w3.org/2000/svg" role="img" {
            title { (title) }
            text x=(PAD) y="12" class="chart-title" { (title) }
            line x1=(PAD) y1=(H - 20.0) x2=(W) y2=(H - 20.0) class="axis" {}
            line x1=(PAD) y1="10" x2=(PAD) y2=(H - 20.0) class="axis" {}
            text x="2" y="24" class="tick" { (format!("{max:.0}")) }
            text x="2" y=(H - 20.0) class="tick" { "0" }
            text x=(PAD) y=(H - 4.0) class="tick" { "-60 min" }
            text x=(W - 30.0) y=(H - 4.0) class="tick" { "now" }
            @for (class, values) in lines {
                polyline class=(class) fill="none" points=(line(values, now, max)) {}
            }
        }
    }
}

/// The two panels: queue depth; rows added, jobs dispatched and rows
/// gone per minute. `dispatched` (oldest first) is drawn by minute once the
/// minute has ended, at its end; the title gives the hour's total, the
/// minute under way included. Without it (no counter table) the rates
/// panel has no dispatched line.
pub fn chart(points: &[Point], dispatched: Option<&[MinuteCount]>) -> Markup {
    let now = points.last().map_or(0, |p| p.at);
    let depth: Vec<(u64, f64)> = points.iter().map(|p| (p.at, p.depth as f64)).collect();
    let rates = rates(points);
    let added: Vec<(u64, f64)> = rates.iter().map(|r| (r.at, r.added)).collect();
    let gone: Vec<(u64, f64)> = rates.iter().filter_map(|r| Some((r.at, r.gone?))).collect();
    let mut lines = vec![("added", added), ("gone", gone)];
    let title = match dispatched {
        Some(minutes) => {
            let now = now.max(minutes.last().map_or(0, |m| u64::from(m.minute) * 60));
            let total: u64 = minutes.iter().map(|m| m.dispatched).sum();
            let ended: Vec<(u64, f64)> = minutes
                .iter()
                .filter(|m| u64::from(m.minute) < now / 60)
                .map(|m| ((u64::from(m.minute) + 1) * 60, m.dispatched as f64))
                .collect();
            lines.insert(1, ("dispatched", ended));
            format!(
                "per minute: added (blue), dispatched (orange, {total} in the hour), \
                 completed or cancelled (green)"
            )
        }
        None => "per minute: added (blue), completed or cancelled (green)".to_string(),
    };
    let depth_title = if points.iter().all(|p| p.exact) {
        "queue depth (jobs not dead)"
    } else {
        "queue depth (jobs not dead; at least: where a status counted up to its caps, \
         and no rows gone derived there)"
    };
    html! {
        div class="charts" {
            (panel(depth_title, "chart-depth", &[("depth", depth)], now))
            (panel(&title, "chart-rates", &lines, now))
            @if points.len() < 2 {
                p class="muted" { "The chart fills as the web role samples the queue." }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(at: u64, depth: u64, rows: u64, high: u64) -> Point {
        Point {
            at,
            depth,
            rows,
            high,
            exact: true,
        }
    }

    #[test]
    fn rows_added_and_gone_come_from_the_ids_and_the_rows_held() {
        // 30 s apart: 20 added, rows held up by 5, so 15 gone.
        let r = rates(&[p(1000, 10, 10, 100), p(1030, 15, 15, 120)]);
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].added, r[0].gone), (40.0, Some(30.0)));
    }

    #[test]
    fn no_rows_gone_come_from_a_reading_that_counted_at_least() {
        let capped = Point {
            exact: false,
            ..p(1030, 15, 15, 120)
        };
        let r = rates(&[p(1000, 10, 10, 100), capped]);
        assert_eq!((r[0].added, r[0].gone), (40.0, None));
        let svg = chart(&[p(1000, 10, 10, 100), capped], None).into_string();
        assert!(
            svg.contains("queue depth (jobs not dead; at least"),
            "{svg}"
        );
        assert!(
            svg.contains(r#"<polyline class="gone" fill="none" points="""#),
            "no point of the gone line: {svg}"
        );
    }

    #[test]
    fn an_hour_of_readings_is_kept() {
        let s = Samples::default();
        for i in 0..100 {
            s.push(p(i * 60, 0, 0, 0));
        }
        let points = s.points();
        assert_eq!(points.first().unwrap().at, 99 * 60 - 3600);
        assert_eq!(points.len(), 61);
        let svg = chart(&points, None).into_string();
        assert!(svg.contains("<polyline"), "{svg}");
        assert!(!svg.contains("dispatched"), "no counter, no line: {svg}");
    }

    #[test]
    fn dispatches_are_drawn_by_ended_minute_and_totalled_in_the_title() {
        // Now is 20 s into minute 100: minutes 97 and 99 have ended, 100
        // has not (counted in the total, not drawn yet).
        let points = [p(5960, 0, 0, 0), p(6020, 0, 0, 0)];
        let minutes = [
            MinuteCount {
                minute: 97,
                dispatched: 30,
            },
            MinuteCount {
                minute: 99,
                dispatched: 120,
            },
            MinuteCount {
                minute: 100,
                dispatched: 7,
            },
        ];
        let svg = chart(&points, Some(&minutes)).into_string();
        assert!(
            svg.contains("dispatched (orange, 157 in the hour)"),
            "{svg}"
        );
        let line = svg
            .split(r#"<polyline class="dispatched" fill="none" points=""#)
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_else(|| panic!("a dispatched line: {svg}"));
        assert_eq!(line.split(' ').count(), 2, "{line}");
        // Scaled to the largest value of the panel: 120 per minute.
        assert!(svg.contains(">120</text>"), "{svg}");
        // Minute 99 ends at 6000, 20 s before now; at the top of the scale.
        let x = 40.0 + 600.0 * (1.0 - 20.0 / 3600.0);
        assert!(line.ends_with(&format!("{x:.1},10.0")), "{line}");
    }
}
