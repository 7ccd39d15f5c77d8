//! The event model: one parsed access-log record.

use serde::{Deserialize, Serialize};

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

impl Event {
    /// Whether the user agent belongs to a crawler or an automated client.
    pub fn is_bot(&self) -> bool {
        match &self.user_agent {
            Some(ua) => {
                let lower = ua.to_ascii_lowercase();
                BOT_MARKERS.iter().any(|m| lower.contains(m))
            }
            None => false,
        }
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
