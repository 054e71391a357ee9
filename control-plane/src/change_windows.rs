//! Change windows: when the deployments of an environment may change. Pure code, table-tested.
//!
//! A schedule is a time zone, weekly windows in that zone's civil time and ad-hoc freezes (UTC
//! instants):
//!
//! ```json
//! {"timezone": "Europe/Paris",
//!  "windows": [{"days": ["mon", "tue"], "start": "09:00", "end": "17:00"}],
//!  "freezes": [{"from": "2026-12-20T00:00:00Z", "to": "2027-01-02T00:00:00Z", "reason": "holidays"}]}
//! ```
//!
//! Rules:
//! * no windows: open at all times (an environment starts so), except during freezes;
//! * a window opens on each listed day at `start` (civil time in the zone) and closes at `end`,
//!   on the same day if `end > start`, else on the next day (it crosses midnight); `end` may be
//!   `24:00`; `start == end` is refused (say `00:00`–`24:00` for a whole day);
//! * civil times are turned into instants with the usual "compatible" rule: a time skipped by a
//!   DST jump forward means the instant after the jump (02:30 → 03:30), a time that happens twice
//!   means its first occurrence — so a window keeps its wall-clock bounds and is an hour shorter
//!   or longer on DST days;
//! * a freeze `[from, to)` closes everything it covers, windows included;
//! * the time zone database is bundled into the binary (jiff's `tzdb-bundle-always`), so the
//!   answer never depends on the host's `/usr/share/zoneinfo`.

use jiff::Timestamp;
use jiff::civil::{Date, DateTime, Time, Weekday};
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

pub const MAX_WINDOWS: usize = 64;
pub const MAX_FREEZES: usize = 64;
pub const MAX_REASON_LEN: usize = 512;
/// How far ahead `next_open` is searched; beyond it the next opening is reported as unknown.
const HORIZON_DAYS: i64 = 400;
const DAY_MS: i64 = 86_400_000;

/// The schedule as written in requests and stored (a JSON document).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChangeWindowsDoc {
    pub timezone: String,
    #[serde(default)]
    pub windows: Vec<WindowDoc>,
    #[serde(default)]
    pub freezes: Vec<FreezeDoc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WindowDoc {
    pub days: Vec<String>,
    pub start: String,
    pub end: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FreezeDoc {
    pub from: String,
    pub to: String,
    #[serde(default)]
    pub reason: String,
}

/// A validated schedule.
#[derive(Debug, Clone)]
pub struct ChangeWindows {
    doc: ChangeWindowsDoc,
    tz: TimeZone,
    windows: Vec<Window>,
    freezes: Vec<Freeze>,
}

/// Two schedules are equal when their documents are.
impl PartialEq for ChangeWindows {
    fn eq(&self, other: &Self) -> bool {
        self.doc == other.doc
    }
}

impl Eq for ChangeWindows {}

#[derive(Debug, Clone)]
struct Window {
    days: Vec<Weekday>,
    start: Time,
    /// `None`: 24:00, the end of the day.
    end: Option<Time>,
}

#[derive(Debug, Clone)]
struct Freeze {
    from: Timestamp,
    to: Timestamp,
    reason: String,
}

/// Why a schedule is refused: the field (`windows[0].days[1]`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid { field: field.into(), message: message.into() }
}

/// Closed now, and when it opens next (`None`: not within the search horizon).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    pub next_open: Option<Timestamp>,
    /// The reason of the freeze that closes it now, if one does.
    pub freeze: Option<String>,
}

fn parse_day(s: &str) -> Option<Weekday> {
    Some(match s.to_ascii_lowercase().as_str() {
        "mon" | "monday" => Weekday::Monday,
        "tue" | "tuesday" => Weekday::Tuesday,
        "wed" | "wednesday" => Weekday::Wednesday,
        "thu" | "thursday" => Weekday::Thursday,
        "fri" | "friday" => Weekday::Friday,
        "sat" | "saturday" => Weekday::Saturday,
        "sun" | "sunday" => Weekday::Sunday,
        _ => return None,
    })
}

/// `HH:MM`, 00:00 to 23:59, or `24:00` when `allow_24` (→ `None`).
fn parse_time(s: &str, allow_24: bool) -> Result<Option<Time>, String> {
    let bad =
        || format!("invalid time {s:?}: expected HH:MM (00:00 to 23:59{})", if allow_24 { ", or 24:00" } else { "" });
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 || !h.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let (h, m): (i8, i8) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if allow_24 && h == 24 && m == 0 {
        return Ok(None);
    }
    if h > 23 || m > 59 {
        return Err(bad());
    }
    Ok(Some(Time::new(h, m, 0, 0).map_err(|_| bad())?))
}

impl ChangeWindowsDoc {
    /// Validates the document; errors name the field.
    pub fn compile(self) -> Result<ChangeWindows, Invalid> {
        let tz = TimeZone::get(&self.timezone).map_err(|_| {
            invalid("timezone", format!("unknown time zone {:?}: use an IANA name such as Europe/Paris", self.timezone))
        })?;
        if self.windows.len() > MAX_WINDOWS {
            return Err(invalid("windows", format!("at most {MAX_WINDOWS} windows")));
        }
        if self.freezes.len() > MAX_FREEZES {
            return Err(invalid("freezes", format!("at most {MAX_FREEZES} freezes")));
        }
        let mut windows = Vec::with_capacity(self.windows.len());
        for (i, w) in self.windows.iter().enumerate() {
            if w.days.is_empty() || w.days.len() > 7 {
                return Err(invalid(format!("windows[{i}].days"), "1 to 7 days, e.g. [\"mon\", \"tue\"]"));
            }
            let mut days = Vec::with_capacity(w.days.len());
            for (j, d) in w.days.iter().enumerate() {
                let day = parse_day(d).ok_or_else(|| {
                    invalid(
                        format!("windows[{i}].days[{j}]"),
                        format!("invalid day {d:?}: one of mon, tue, wed, thu, fri, sat, sun"),
                    )
                })?;
                if !days.contains(&day) {
                    days.push(day);
                }
            }
            let start = parse_time(&w.start, false)
                .map_err(|m| invalid(format!("windows[{i}].start"), m))?
                .expect("24:00 is refused for start");
            let end = parse_time(&w.end, true).map_err(|m| invalid(format!("windows[{i}].end"), m))?;
            if end == Some(start) {
                return Err(invalid(
                    format!("windows[{i}].end"),
                    "end equals start; for a whole day write 00:00 to 24:00",
                ));
            }
            windows.push(Window { days, start, end });
        }
        let mut freezes = Vec::with_capacity(self.freezes.len());
        for (i, f) in self.freezes.iter().enumerate() {
            let instant = |field: &str, s: &str| {
                s.parse::<Timestamp>().map_err(|_| {
                    invalid(
                        format!("freezes[{i}].{field}"),
                        format!("invalid instant {s:?}: RFC 3339, e.g. 2026-12-20T00:00:00Z"),
                    )
                })
            };
            let (from, to) = (instant("from", &f.from)?, instant("to", &f.to)?);
            if to <= from {
                return Err(invalid(format!("freezes[{i}].to"), "to must be after from"));
            }
            if f.reason.len() > MAX_REASON_LEN || f.reason.chars().any(char::is_control) {
                return Err(invalid(
                    format!("freezes[{i}].reason"),
                    format!("at most {MAX_REASON_LEN} bytes, no control characters"),
                ));
            }
            freezes.push(Freeze { from, to, reason: f.reason.clone() });
        }
        let mut doc = self;
        // Stored under the database's own spelling of the zone name.
        if let Some(name) = tz.iana_name() {
            doc.timezone = name.to_string();
        }
        Ok(ChangeWindows { doc, tz, windows, freezes })
    }
}

impl ChangeWindows {
    pub fn doc(&self) -> &ChangeWindowsDoc {
        &self.doc
    }

    /// The freeze covering `at`, if any.
    fn frozen(&self, at: Timestamp) -> Option<&Freeze> {
        self.freezes.iter().find(|f| f.from <= at && at < f.to)
    }

    /// The instants `[open, close)` of window `w` opening on `day`.
    fn occurrence(&self, w: &Window, day: Date) -> Option<(Timestamp, Timestamp)> {
        let open = self.tz.to_timestamp(DateTime::from_parts(day, w.start)).ok()?;
        let close_day = match w.end {
            Some(end) if end > w.start => DateTime::from_parts(day, end),
            Some(end) => DateTime::from_parts(day.tomorrow().ok()?, end),
            None => DateTime::from_parts(day.tomorrow().ok()?, Time::midnight()),
        };
        let close = self.tz.to_timestamp(close_day).ok()?;
        Some((open, close))
    }

    /// Whether a window (ignoring freezes) is open at `at`.
    fn in_window(&self, at: Timestamp) -> bool {
        if self.windows.is_empty() {
            return true;
        }
        let today = self.tz.to_datetime(at).date();
        // A window crossing midnight may have opened yesterday (civil); DST shifts are at most
        // a few hours, so two days back covers every case.
        let mut day = today.yesterday().ok().and_then(|d| d.yesterday().ok()).unwrap_or(today);
        while day <= today {
            for w in &self.windows {
                if w.days.contains(&day.weekday())
                    && let Some((open, close)) = self.occurrence(w, day)
                    && open <= at
                    && at < close
                {
                    return true;
                }
            }
            match day.tomorrow() {
                Ok(next) => day = next,
                Err(_) => break,
            }
        }
        false
    }

    fn open_at(&self, at: Timestamp) -> bool {
        self.frozen(at).is_none() && self.in_window(at)
    }

    /// `Ok(())` if changes may happen at `at`; otherwise when they may next, and the freeze
    /// that closes it, if one does.
    pub fn is_open(&self, at: Timestamp) -> Result<(), Closed> {
        let freeze = self.frozen(at).map(|f| f.reason.clone());
        if freeze.is_none() && self.in_window(at) {
            return Ok(());
        }
        Err(Closed { next_open: self.next_open(at), freeze })
    }

    /// The first instant at or after `at` at which changes may happen. The open set is a union
    /// of half-open intervals, so its first point is `at` itself, a window's opening or a
    /// freeze's end: those are the only candidates.
    fn next_open(&self, at: Timestamp) -> Option<Timestamp> {
        let horizon = Timestamp::from_millisecond(at.as_millisecond().saturating_add(HORIZON_DAYS * DAY_MS)).ok()?;
        let mut candidates: Vec<Timestamp> = vec![at];
        candidates.extend(self.freezes.iter().map(|f| f.to).filter(|t| *t >= at && *t <= horizon));
        if !self.windows.is_empty() {
            let mut day = self.tz.to_datetime(at).date().yesterday().ok()?;
            let last = self.tz.to_datetime(horizon).date();
            while day <= last {
                for w in &self.windows {
                    if w.days.contains(&day.weekday())
                        && let Some((open, _)) = self.occurrence(w, day)
                        && open >= at
                    {
                        candidates.push(open);
                    }
                }
                day = day.tomorrow().ok()?;
            }
        }
        candidates.sort_unstable();
        candidates.dedup();
        candidates.into_iter().find(|t| self.open_at(*t))
    }
}

/// [`ChangeWindows::is_open`] for an environment's optional schedule (none: always open) at a
/// millisecond timestamp.
pub fn is_open(windows: Option<&ChangeWindows>, at_ms: i64) -> Result<(), Closed> {
    match (windows, Timestamp::from_millisecond(at_ms)) {
        (Some(w), Ok(at)) => w.is_open(at),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(json: &str) -> ChangeWindows {
        serde_json::from_str::<ChangeWindowsDoc>(json).unwrap().compile().unwrap()
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    /// Expected: `None` open, or `Some((next_open, freeze))` closed.
    type Want = Option<(Option<&'static str>, Option<&'static str>)>;

    /// (schedule, instant, expected).
    #[test]
    fn evaluation_table() {
        let paris_office =
            r#"{"timezone":"Europe/Paris","windows":[{"days":["mon","tue"],"start":"09:00","end":"17:00"}]}"#;
        let night = r#"{"timezone":"UTC","windows":[{"days":["fri"],"start":"22:00","end":"02:00"}]}"#;
        // Spring forward in Paris: 2026-03-29 02:00 CET → 03:00 CEST (01:00Z).
        let paris_dst_night =
            r#"{"timezone":"Europe/Paris","windows":[{"days":["sun"],"start":"01:00","end":"04:00"}]}"#;
        let paris_gap = r#"{"timezone":"Europe/Paris","windows":[{"days":["sun"],"start":"02:30","end":"05:00"}]}"#;
        // Fall back in New York: 2026-11-01 02:00 EDT → 01:00 EST (06:00Z).
        let ny_fold = r#"{"timezone":"America/New_York","windows":[{"days":["sun"],"start":"01:00","end":"02:00"}]}"#;
        let holidays = r#"{"timezone":"Europe/Paris","windows":[{"days":["mon","tue","wed","thu","fri"],"start":"09:00","end":"17:00"}],
            "freezes":[{"from":"2026-12-21T00:00:00Z","to":"2026-12-23T12:00:00Z","reason":"holidays"}]}"#;
        let freeze_only = r#"{"timezone":"UTC","freezes":[
            {"from":"2026-05-01T00:00:00Z","to":"2026-05-02T00:00:00Z","reason":"a"},
            {"from":"2026-05-01T12:00:00Z","to":"2026-05-03T00:00:00Z","reason":"b"}]}"#;
        let whole_day = r#"{"timezone":"Asia/Tokyo","windows":[{"days":["sat"],"start":"00:00","end":"24:00"}]}"#;
        let cases: &[(&str, &str, Want)] = &[
            // 2026-03-02 is a Monday. 09:00 Paris (CET) is 08:00Z.
            (paris_office, "2026-03-02T08:00:00Z", None),
            (paris_office, "2026-03-02T15:59:59Z", None),
            (paris_office, "2026-03-02T16:00:00Z", Some((Some("2026-03-03T08:00:00Z"), None))),
            (paris_office, "2026-03-02T07:59:59Z", Some((Some("2026-03-02T08:00:00Z"), None))),
            // Wednesday → next Monday.
            (paris_office, "2026-03-04T10:00:00Z", Some((Some("2026-03-09T08:00:00Z"), None))),
            // In summer, 09:00 Paris (CEST) is 07:00Z.
            (paris_office, "2026-07-06T07:00:00Z", None),
            (paris_office, "2026-07-06T06:59:00Z", Some((Some("2026-07-06T07:00:00Z"), None))),
            // A window crossing midnight: Friday 22:00 to Saturday 02:00 (2026-03-06 is a Friday).
            (night, "2026-03-06T22:00:00Z", None),
            (night, "2026-03-07T01:59:00Z", None),
            (night, "2026-03-07T02:00:00Z", Some((Some("2026-03-13T22:00:00Z"), None))),
            // Saturday 23:00 is not a Friday night.
            (night, "2026-03-07T23:00:00Z", Some((Some("2026-03-13T22:00:00Z"), None))),
            // DST day: 01:00 CET (00:00Z) to 04:00 CEST (02:00Z) lasts two hours.
            (paris_dst_night, "2026-03-29T00:00:00Z", None),
            (paris_dst_night, "2026-03-29T01:59:59Z", None),
            (paris_dst_night, "2026-03-29T02:00:00Z", Some((Some("2026-04-04T23:00:00Z"), None))),
            // A start in the gap (02:30 does not exist) opens right after the jump: 03:30 CEST.
            (paris_gap, "2026-03-29T01:29:00Z", Some((Some("2026-03-29T01:30:00Z"), None))),
            (paris_gap, "2026-03-29T01:30:00Z", None),
            // The fold: 01:00 EDT (05:00Z) to 02:00 EST (07:00Z), both 01:xx hours included.
            (ny_fold, "2026-11-01T05:00:00Z", None),
            (ny_fold, "2026-11-01T06:30:00Z", None),
            (ny_fold, "2026-11-01T07:00:00Z", Some((Some("2026-11-08T06:00:00Z"), None))),
            // A freeze overrides the window (Monday 2026-12-21 10:00 Paris) and ends mid-window
            // on Wednesday 12:00Z: open from there.
            (holidays, "2026-12-21T09:00:00Z", Some((Some("2026-12-23T12:00:00Z"), Some("holidays")))),
            (holidays, "2026-12-23T12:00:00Z", None),
            // Before the freeze, outside the window: the next window is frozen, so the next
            // opening is the freeze's end.
            (holidays, "2026-12-20T20:00:00Z", Some((Some("2026-12-23T12:00:00Z"), None))),
            // No windows: open unless frozen; overlapping freezes chain.
            (freeze_only, "2026-04-30T23:59:59Z", None),
            (freeze_only, "2026-05-01T06:00:00Z", Some((Some("2026-05-03T00:00:00Z"), Some("a")))),
            (freeze_only, "2026-05-03T00:00:00Z", None),
            // A whole day: Saturday 00:00 to Sunday 00:00 Tokyo (UTC+9) (2026-03-07 is a Saturday).
            (whole_day, "2026-03-06T15:00:00Z", None),
            (whole_day, "2026-03-07T14:59:59Z", None),
            (whole_day, "2026-03-07T15:00:00Z", Some((Some("2026-03-13T15:00:00Z"), None))),
        ];
        for (json, at, want) in cases {
            let got = schedule(json).is_open(ts(at));
            let want = match want {
                None => Ok(()),
                Some((next, freeze)) => {
                    Err(Closed { next_open: next.map(ts), freeze: freeze.map(ToString::to_string) })
                }
            };
            assert_eq!(got, want, "{json} at {at}");
        }
    }

    #[test]
    fn no_schedule_or_no_windows_is_always_open() {
        assert_eq!(is_open(None, 0), Ok(()));
        let s = schedule(r#"{"timezone":"UTC"}"#);
        assert_eq!(s.is_open(ts("2030-01-01T00:00:00Z")), Ok(()));
        // A freeze that never ends within the horizon: closed, next opening unknown.
        let s =
            schedule(r#"{"timezone":"UTC","freezes":[{"from":"2026-01-01T00:00:00Z","to":"2099-01-01T00:00:00Z"}]}"#);
        assert_eq!(s.is_open(ts("2026-06-01T00:00:00Z")), Err(Closed { next_open: None, freeze: Some(String::new()) }));
    }

    #[test]
    fn invalid_documents_name_the_field() {
        let cases = [
            (r#"{"timezone":"Mars/Olympus"}"#, "timezone"),
            (r#"{"timezone":"UTC","windows":[{"days":[],"start":"09:00","end":"10:00"}]}"#, "windows[0].days"),
            (
                r#"{"timezone":"UTC","windows":[{"days":["mon","funday"],"start":"09:00","end":"10:00"}]}"#,
                "windows[0].days[1]",
            ),
            (r#"{"timezone":"UTC","windows":[{"days":["mon"],"start":"9:00","end":"10:00"}]}"#, "windows[0].start"),
            (r#"{"timezone":"UTC","windows":[{"days":["mon"],"start":"24:00","end":"10:00"}]}"#, "windows[0].start"),
            (r#"{"timezone":"UTC","windows":[{"days":["mon"],"start":"09:00","end":"25:00"}]}"#, "windows[0].end"),
            (r#"{"timezone":"UTC","windows":[{"days":["mon"],"start":"09:00","end":"09:60"}]}"#, "windows[0].end"),
            (r#"{"timezone":"UTC","windows":[{"days":["mon"],"start":"09:00","end":"09:00"}]}"#, "windows[0].end"),
            (r#"{"timezone":"UTC","freezes":[{"from":"yesterday","to":"2026-01-01T00:00:00Z"}]}"#, "freezes[0].from"),
            (
                r#"{"timezone":"UTC","freezes":[{"from":"2026-01-02T00:00:00Z","to":"2026-01-01T00:00:00Z"}]}"#,
                "freezes[0].to",
            ),
        ];
        for (json, field) in cases {
            let err = serde_json::from_str::<ChangeWindowsDoc>(json).unwrap().compile().unwrap_err();
            assert_eq!(err.field, field, "{json}: {}", err.message);
        }
        // Unknown fields are refused by the document itself.
        assert!(serde_json::from_str::<ChangeWindowsDoc>(r#"{"timezone":"UTC","window":[]}"#).is_err());
        // Names are normalized to the database's spelling; days may be long or any case.
        let s =
            schedule(r#"{"timezone":"europe/paris","windows":[{"days":["Monday"],"start":"00:00","end":"24:00"}]}"#);
        assert_eq!(s.doc().timezone, "Europe/Paris");
    }
}
