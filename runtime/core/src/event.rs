//! The event model: one parsed access-log record.

use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// One request as seen by a web server. Times are UTC milliseconds since the epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub ts_ms: i64,
    pub host: String,
    pub method: String,
    pub path: String,
    pub status: u16,
    pub bytes: u64,
    pub latency_ms: Option<f64>,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    pub referrer: Option<String>,
}

/// User-agent fragments of well-known crawlers and tools; matched case-insensitively.
const BOT_MARKERS: [&str; 10] = [
    "bot",
    "crawl",
    "spider",
    "slurp",
    "curl/",
    "wget/",
    "python-requests",
    "go-http-client",
    "facebookexternalhit",
    "headless",
];

fn bot_finders() -> &'static [memchr::memmem::Finder<'static>] {
    static F: std::sync::OnceLock<Vec<memchr::memmem::Finder<'static>>> =
        std::sync::OnceLock::new();
    F.get_or_init(|| {
        BOT_MARKERS
            .iter()
            .map(|m| memchr::memmem::Finder::new(m.as_bytes()))
            .collect()
    })
}

impl Event {
    /// Its fields borrowed, as the aggregates read them.
    pub fn view(&self) -> EventView<'_> {
        EventView {
            ts_ms: self.ts_ms,
            host: &self.host,
            method: &self.method,
            path: &self.path,
            status: self.status,
            bytes: self.bytes,
            latency_ms: self.latency_ms,
            client_ip: self.client_ip.as_deref(),
            user_agent: self.user_agent.as_deref(),
            referrer: self.referrer.as_deref(),
        }
    }
}

/// An event's fields borrowed from wherever they are kept: an [`Event`], or a row of
/// [`crate::records::EventColumns`] (how events travel from an owner to its window shards).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EventView<'a> {
    pub ts_ms: i64,
    pub host: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub bytes: u64,
    pub latency_ms: Option<f64>,
    pub client_ip: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub referrer: Option<&'a str>,
}

impl EventView<'_> {
    pub fn is_bot(&self) -> bool {
        is_bot(self.user_agent)
    }
}

impl From<EventView<'_>> for Event {
    fn from(v: EventView<'_>) -> Event {
        Event {
            ts_ms: v.ts_ms,
            host: v.host.to_owned(),
            method: v.method.to_owned(),
            path: v.path.to_owned(),
            status: v.status,
            bytes: v.bytes,
            latency_ms: v.latency_ms,
            client_ip: v.client_ip.map(str::to_owned),
            user_agent: v.user_agent.map(str::to_owned),
            referrer: v.referrer.map(str::to_owned),
        }
    }
}

/// A parsed record whose strings borrow from the record's bytes where they can (an access-log
/// field, a JSON string without escapes): parsing allocates nothing for most records, and an
/// owner copies the fields into columns from here. [`ParsedEvent::into_owned`] makes the
/// [`Event`] a late record keeps.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedEvent<'a> {
    pub ts_ms: i64,
    pub host: Cow<'a, str>,
    pub method: Cow<'a, str>,
    pub path: Cow<'a, str>,
    pub status: u16,
    pub bytes: u64,
    pub latency_ms: Option<f64>,
    pub client_ip: Option<Cow<'a, str>>,
    pub user_agent: Option<Cow<'a, str>>,
    pub referrer: Option<Cow<'a, str>>,
}

impl ParsedEvent<'_> {
    pub fn view(&self) -> EventView<'_> {
        EventView {
            ts_ms: self.ts_ms,
            host: &self.host,
            method: &self.method,
            path: &self.path,
            status: self.status,
            bytes: self.bytes,
            latency_ms: self.latency_ms,
            client_ip: self.client_ip.as_deref(),
            user_agent: self.user_agent.as_deref(),
            referrer: self.referrer.as_deref(),
        }
    }

    /// The owned event (a late record keeps one; rare, so it simply copies).
    pub fn into_owned(self) -> Event {
        self.view().into()
    }
}

/// How much of a user agent decides whether it is a bot.
const BOT_JUDGED_BYTES: usize = 512;

/// Whether a user agent belongs to a crawler or an automated client. Runs per event, so it
/// lower-cases into a stack buffer (the first `BOT_JUDGED_BYTES` decide) instead of allocating.
fn is_bot(user_agent: Option<&str>) -> bool {
    let Some(ua) = user_agent else {
        return false;
    };
    let mut buf = [0u8; BOT_JUDGED_BYTES];
    let n = ua.len().min(buf.len());
    for (d, s) in buf.iter_mut().zip(&ua.as_bytes()[..n]) {
        *d = s.to_ascii_lowercase();
    }
    bot_finders().iter().any(|f| f.find(&buf[..n]).is_some())
}

/// User agents already judged by [`EventView::is_bot`], for a window shard that judges every
/// event it aggregates: a site's visitors send a few agents over and over, and lower-casing one
/// and searching it for every marker was a twentieth of a backfill's CPU (`bench/PROFILE-batch.md`).
/// Forgets everything at [`BotCache::CAPACITY`] agents, so hostile input that never repeats one
/// costs a lookup and an insert more per event. Keyed by the bytes the check reads (the first
/// [`BOT_JUDGED_BYTES`]), so hostile agents as long as `limits.max_field_bytes` allows hold at
/// most 2 MiB per shard.
#[derive(Debug, Default)]
pub struct BotCache {
    judged: std::collections::HashMap<Box<[u8]>, bool, ahash::RandomState>,
}

impl BotCache {
    pub const CAPACITY: usize = 4096;

    /// What [`EventView::is_bot`] says of this agent.
    pub fn is_bot(&mut self, user_agent: Option<&str>) -> bool {
        let Some(ua) = user_agent else {
            return false;
        };
        let judged = &ua.as_bytes()[..ua.len().min(BOT_JUDGED_BYTES)];
        if let Some(&bot) = self.judged.get(judged) {
            return bot;
        }
        let bot = is_bot(Some(ua));
        if self.judged.len() >= Self::CAPACITY {
            self.judged.clear();
        }
        self.judged.insert(judged.into(), bot);
        bot
    }
}

/// The input formats `wtm` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// JSON lines; see the README for the schema.
    #[default]
    Json,
    /// nginx/Apache combined, optionally followed by the request time in seconds.
    Combined,
    /// Apache `vhost_combined`: `host:port` first, then combined.
    VhostCombined,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "json" => Ok(Format::Json),
            "combined" => Ok(Format::Combined),
            "vhost_combined" => Ok(Format::VhostCombined),
            other => Err(format!(
                "unknown format {other:?}: expected json, combined or vhost_combined"
            )),
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Json => "json",
            Format::Combined => "combined",
            Format::VhostCombined => "vhost_combined",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bots_are_recognised_case_insensitively() {
        assert!(is_bot(Some("Mozilla/5.0 (compatible; Googlebot/2.1)")));
        assert!(is_bot(Some("DuckDuckBot/1.1")));
        assert!(is_bot(Some("curl/8.5.0")));
        assert!(!is_bot(Some(
            "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"
        )));
        assert!(!is_bot(None));
    }

    #[test]
    fn the_bot_cache_answers_as_the_check_and_stays_bounded() {
        let mut cache = BotCache::default();
        let agents: Vec<String> = (0..BotCache::CAPACITY * 2 + 7)
            .map(|i| match i % 4 {
                0 => format!("Mozilla/5.0 Firefox/{i}"),
                1 => format!("SomeBOT/{i}"),
                // Long ones: only the first bytes decide (this marker lies beyond them).
                2 => format!("{}{i}-crawler", "x".repeat(BOT_JUDGED_BYTES)),
                _ => "curl/8.5.0".to_string(),
            })
            .collect();
        // Each agent twice: once judged, once (mostly) remembered.
        for ua in agents.iter().chain(&agents) {
            assert_eq!(cache.is_bot(Some(ua)), is_bot(Some(ua)), "{ua}");
            assert!(cache.judged.len() <= BotCache::CAPACITY);
            assert!(cache.judged.keys().all(|k| k.len() <= BOT_JUDGED_BYTES));
        }
        assert!(!cache.is_bot(None));
    }
}
