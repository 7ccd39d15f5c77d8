//! Log-format parsers: bytes of one line in, an [`Event`] or a reasoned [`ParseError`] out.
//!
//! Parsers never panic: every malformed input maps to an [`InvalidReason`], which is the bounded
//! label the `wtm_invalid_total` metric and the dead-letter output use.

use crate::event::{Event, Format, ParsedEvent};
use crate::time::{parse_clf, parse_rfc3339};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use std::borrow::Cow;

/// Why a record was rejected. The set is closed so that metrics stay bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvalidReason {
    Empty,
    NotUtf8,
    BadJson,
    MissingField,
    BadTimestamp,
    BadStatus,
    BadRequestLine,
    BadFormat,
    BadNumber,
    /// Longer than `limits.max_record_bytes`: only its first bytes are kept.
    TooLong,
    /// A site name that is not a plausible `host[:port]`.
    BadHost,
}

impl InvalidReason {
    pub fn as_str(self) -> &'static str {
        match self {
            InvalidReason::Empty => "empty",
            InvalidReason::NotUtf8 => "not_utf8",
            InvalidReason::BadJson => "bad_json",
            InvalidReason::MissingField => "missing_field",
            InvalidReason::BadTimestamp => "bad_timestamp",
            InvalidReason::BadStatus => "bad_status",
            InvalidReason::BadRequestLine => "bad_request_line",
            InvalidReason::BadFormat => "bad_format",
            InvalidReason::BadNumber => "bad_number",
            InvalidReason::TooLong => "too_long",
            InvalidReason::BadHost => "bad_host",
        }
    }
}

/// A rejected record: the bounded reason and a human-readable detail.
#[derive(Debug, Clone, PartialEq)]
pub struct ParseError {
    pub reason: InvalidReason,
    pub detail: String,
}

fn fail<T>(reason: InvalidReason, detail: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError {
        reason,
        detail: detail.into(),
    })
}

/// Parse one line (without its newline) in `format`. `default_host` names the site for `combined`.
pub fn parse_line(format: Format, line: &[u8], default_host: &str) -> Result<Event, ParseError> {
    parse_record(format, line, default_host).map(ParsedEvent::into_owned)
}

/// [`parse_line`] without copying: the strings borrow from `line` (or `default_host`) where
/// they can.
pub fn parse_record<'a>(
    format: Format,
    line: &'a [u8],
    default_host: &'a str,
) -> Result<ParsedEvent<'a>, ParseError> {
    let line = trim_line(line);
    if line.is_empty() {
        return fail(InvalidReason::Empty, "empty line");
    }
    match format {
        Format::Json => parse_json(line),
        Format::Combined => parse_combined(line, default_host),
        Format::VhostCombined => parse_vhost_combined(line),
    }
}

fn trim_line(mut line: &[u8]) -> &[u8] {
    while let [rest @ .., b'\r' | b'\n' | b' ' | b'\t'] = line {
        line = rest;
    }
    line
}

/// `ts` as either RFC 3339 text or epoch milliseconds.
enum RawTs<'a> {
    Millis(f64),
    Text(Cow<'a, str>),
}

impl<'de: 'a, 'a> Deserialize<'de> for RawTs<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawTs<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an RFC 3339 string or epoch milliseconds")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(RawTs::Millis(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(RawTs::Millis(v as f64))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(RawTs::Millis(v))
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(RawTs::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(RawTs::Text(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_any(V)
    }
}

/// A JSON string borrowed from the record when it has no escapes. (serde's `#[serde(borrow)]`
/// borrows a `Cow<str>` field but not an `Option<Cow<str>>`: that one always allocated.)
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

#[derive(Deserialize)]
struct RawJson<'a> {
    #[serde(borrow)]
    ts: Option<RawTs<'a>>,
    #[serde(borrow)]
    host: Option<Text<'a>>,
    #[serde(borrow)]
    method: Option<Text<'a>>,
    #[serde(borrow)]
    path: Option<Text<'a>>,
    status: Option<serde_json::Number>,
    bytes: Option<serde_json::Number>,
    latency_ms: Option<f64>,
    #[serde(borrow)]
    client_ip: Option<Text<'a>>,
    #[serde(borrow)]
    user_agent: Option<Text<'a>>,
    #[serde(borrow)]
    referrer: Option<Text<'a>>,
}

/// Largest epoch-millisecond value accepted (year 9999), so window math never overflows.
const MAX_TS_MS: f64 = 253_402_300_799_000.0;

fn parse_json(line: &[u8]) -> Result<ParsedEvent<'_>, ParseError> {
    let raw: RawJson = match serde_json::from_slice(line) {
        Ok(r) => r,
        Err(e) if std::str::from_utf8(line).is_err() => {
            return fail(InvalidReason::NotUtf8, e.to_string())
        }
        Err(e) => return fail(InvalidReason::BadJson, e.to_string()),
    };
    let ts_ms = match raw.ts {
        None => return fail(InvalidReason::MissingField, "missing field `ts`"),
        Some(RawTs::Millis(v)) if v.is_finite() && (0.0..=MAX_TS_MS).contains(&v) => v as i64,
        Some(RawTs::Millis(v)) => {
            return fail(InvalidReason::BadTimestamp, format!("ts {v} out of range"))
        }
        Some(RawTs::Text(t)) => match parse_rfc3339(&t) {
            // Before the epoch is as out of range as a negative millisecond count.
            Some(v) if v >= 0 => v,
            _ => {
                return fail(
                    InvalidReason::BadTimestamp,
                    format!("ts {t:?} is not RFC 3339"),
                )
            }
        },
    };
    let host = required(raw.host.map(|t| t.0), "host")?;
    let method = required(raw.method.map(|t| t.0), "method")?;
    let path = required(raw.path.map(|t| t.0), "path")?;
    let status = match raw.status {
        None => return fail(InvalidReason::MissingField, "missing field `status`"),
        Some(n) => match n.as_u64() {
            Some(s @ 100..=599) => s as u16,
            _ => {
                return fail(
                    InvalidReason::BadStatus,
                    format!("status {n} is not 100..=599"),
                )
            }
        },
    };
    let bytes = match raw.bytes {
        None => 0,
        Some(n) => match n.as_u64() {
            Some(b) => b,
            None => {
                return fail(
                    InvalidReason::BadNumber,
                    format!("bytes {n} is not a non-negative integer"),
                )
            }
        },
    };
    let latency_ms = match raw.latency_ms {
        Some(l) if !(l.is_finite() && l >= 0.0) => {
            return fail(
                InvalidReason::BadNumber,
                format!("latency_ms {l} is negative"),
            )
        }
        other => other,
    };
    Ok(ParsedEvent {
        ts_ms,
        host,
        method,
        path,
        status,
        bytes,
        latency_ms,
        client_ip: raw.client_ip.map(|t| t.0),
        user_agent: raw.user_agent.map(|t| t.0),
        referrer: raw.referrer.map(|t| t.0),
    })
}

fn required<'a>(v: Option<Cow<'a, str>>, name: &str) -> Result<Cow<'a, str>, ParseError> {
    match v {
        Some(s) if !s.is_empty() => Ok(s),
        Some(_) => fail(
            InvalidReason::MissingField,
            format!("field `{name}` is empty"),
        ),
        None => fail(
            InvalidReason::MissingField,
            format!("missing field `{name}`"),
        ),
    }
}

/// A cursor over one log line.
struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scanner<'a> {
    fn token(&mut self) -> Option<&'a [u8]> {
        let start = self.i;
        let len = memchr::memchr(b' ', &self.b[start..]).unwrap_or(self.b.len() - start);
        if len == 0 {
            return None;
        }
        self.i = start + len;
        self.skip_space();
        Some(&self.b[start..start + len])
    }

    fn skip_space(&mut self) {
        while self.i < self.b.len() && self.b[self.i] == b' ' {
            self.i += 1;
        }
    }

    fn bracketed(&mut self) -> Option<&'a [u8]> {
        if self.b.get(self.i) != Some(&b'[') {
            return None;
        }
        let start = self.i + 1;
        let len = memchr::memchr(b']', &self.b[start..])?;
        self.i = start + len + 1;
        self.skip_space();
        Some(&self.b[start..start + len])
    }

    /// A double-quoted field; `\"` (Apache) and `\x22` (nginx) escapes stay as written.
    fn quoted(&mut self) -> Option<&'a [u8]> {
        if self.b.get(self.i) != Some(&b'"') {
            return None;
        }
        let start = self.i + 1;
        let mut j = start;
        loop {
            let k = memchr::memchr2(b'"', b'\\', &self.b[j..])?;
            j += k;
            if self.b[j] == b'\\' {
                j += 2;
                if j > self.b.len() {
                    return None;
                }
                continue;
            }
            break;
        }
        self.i = j + 1;
        self.skip_space();
        Some(&self.b[start..j])
    }

    fn done(&self) -> bool {
        self.i >= self.b.len()
    }
}

fn utf8(b: &[u8]) -> Result<&str, ParseError> {
    std::str::from_utf8(b).or_else(|e| fail(InvalidReason::NotUtf8, e.to_string()))
}

fn dash_none(b: &[u8]) -> Result<Option<Cow<'_, str>>, ParseError> {
    if b == b"-" || b.is_empty() {
        Ok(None)
    } else {
        Ok(Some(Cow::Borrowed(utf8(b)?)))
    }
}

fn parse_u64(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 19 {
        return None;
    }
    b.iter().try_fold(0u64, |acc, &c| {
        c.is_ascii_digit().then(|| acc * 10 + (c - b'0') as u64)
    })
}

fn parse_combined<'a>(line: &'a [u8], host: &'a str) -> Result<ParsedEvent<'a>, ParseError> {
    let mut sc = Scanner { b: line, i: 0 };
    parse_combined_rest(&mut sc, host)
}

fn parse_vhost_combined(line: &[u8]) -> Result<ParsedEvent<'_>, ParseError> {
    let mut sc = Scanner { b: line, i: 0 };
    let Some(vhost) = sc.token() else {
        return fail(InvalidReason::BadFormat, "missing virtual host");
    };
    // `host:port`; an IPv6 literal host is bracketed, so split at the last colon after any `]`.
    let host = match memchr::memrchr(b':', vhost) {
        Some(c) if !vhost[c + 1..].is_empty() && vhost[c + 1..].iter().all(u8::is_ascii_digit) => {
            &vhost[..c]
        }
        _ => vhost,
    };
    let host = utf8(host)?;
    parse_combined_rest(&mut sc, host)
}

fn parse_combined_rest<'a>(
    sc: &mut Scanner<'a>,
    host: &'a str,
) -> Result<ParsedEvent<'a>, ParseError> {
    let bad = |what: &str| ParseError {
        reason: InvalidReason::BadFormat,
        detail: format!("expected {what}"),
    };
    let ip = sc.token().ok_or_else(|| bad("client address"))?;
    let _ident = sc.token().ok_or_else(|| bad("identity"))?;
    let _user = sc.token().ok_or_else(|| bad("user"))?;
    let time = sc.bracketed().ok_or_else(|| bad("[time]"))?;
    let Some(ts_ms) = parse_clf(time) else {
        return fail(
            InvalidReason::BadTimestamp,
            format!(
                "time {:?} is not dd/Mon/yyyy:HH:MM:SS +zzzz",
                String::from_utf8_lossy(time)
            ),
        );
    };
    let request = sc.quoted().ok_or_else(|| bad("\"request\""))?;
    let (method, path) = split_request(request)?;
    let status = sc.token().ok_or_else(|| bad("status"))?;
    let status = match parse_u64(status) {
        Some(s @ 100..=599) => s as u16,
        _ => {
            return fail(
                InvalidReason::BadStatus,
                format!(
                    "status {:?} is not 100..=599",
                    String::from_utf8_lossy(status)
                ),
            )
        }
    };
    let bytes_tok = sc.token().ok_or_else(|| bad("bytes"))?;
    let bytes = if bytes_tok == b"-" {
        0
    } else {
        parse_u64(bytes_tok).ok_or_else(|| ParseError {
            reason: InvalidReason::BadNumber,
            detail: format!(
                "bytes {:?} is not a number",
                String::from_utf8_lossy(bytes_tok)
            ),
        })?
    };
    let mut referrer = None;
    let mut user_agent = None;
    let mut latency_ms = None;
    if !sc.done() {
        referrer = dash_none(sc.quoted().ok_or_else(|| bad("\"referrer\""))?)?;
        user_agent = dash_none(sc.quoted().ok_or_else(|| bad("\"user agent\""))?)?;
        if let Some(rt) = sc.token() {
            latency_ms = Some(seconds_to_ms(rt).ok_or_else(|| ParseError {
                reason: InvalidReason::BadNumber,
                detail: format!(
                    "request time {:?} is not seconds",
                    String::from_utf8_lossy(rt)
                ),
            })?);
        }
        if !sc.done() {
            return Err(bad("end of line"));
        }
    }
    Ok(ParsedEvent {
        ts_ms,
        host: Cow::Borrowed(host),
        method,
        path,
        status,
        bytes,
        latency_ms,
        client_ip: dash_none(ip)?,
        user_agent,
        referrer,
    })
}

/// `$request_time` (seconds, millisecond resolution) to milliseconds. Decimal arithmetic for up
/// to three fraction digits, so `0.123` is exactly 123 ms (via f64 it would be 122.999…).
fn seconds_to_ms(b: &[u8]) -> Option<f64> {
    let (int, frac) = match memchr::memchr(b'.', b) {
        Some(d) => (&b[..d], &b[d + 1..]),
        None => (b, &b[b.len()..]),
    };
    if frac.len() <= 3 {
        let i = parse_u64(int)?;
        let f = if frac.is_empty() {
            0
        } else {
            parse_u64(frac)? * 10u64.pow(3 - frac.len() as u32)
        };
        return Some(i.checked_mul(1000)?.checked_add(f)? as f64);
    }
    let secs: f64 = std::str::from_utf8(b).ok()?.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then_some(secs * 1000.0)
}

fn split_request(req: &[u8]) -> Result<(Cow<'_, str>, Cow<'_, str>), ParseError> {
    let mut parts = req.split(|&c| c == b' ').filter(|p| !p.is_empty());
    let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
        return fail(
            InvalidReason::BadRequestLine,
            format!(
                "request {:?} is not `METHOD PATH PROTOCOL`",
                String::from_utf8_lossy(req)
            ),
        );
    };
    if !method.iter().all(u8::is_ascii_uppercase) {
        return fail(
            InvalidReason::BadRequestLine,
            format!(
                "method {:?} is not an HTTP method",
                String::from_utf8_lossy(method)
            ),
        );
    }
    Ok((Cow::Borrowed(utf8(method)?), Cow::Borrowed(utf8(path)?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_borrow_unless_escaped() {
        let line = br#"{"ts":1,"host":"a.example","method":"GET","path":"/a\"b","status":200,"user_agent":"x\u00e9","referrer":null,"client_ip":"10.0.0.1"}"#;
        let e = parse_record(Format::Json, line, "").unwrap();
        assert!(matches!(e.host, Cow::Borrowed("a.example")));
        assert!(matches!(e.client_ip, Some(Cow::Borrowed("10.0.0.1"))));
        assert!(matches!(&e.path, Cow::Owned(p) if p == "/a\"b"));
        assert_eq!(e.user_agent.as_deref(), Some("xé"));
        assert_eq!(e.referrer, None);
        let number = parse_line(
            Format::Json,
            br#"{"ts":1,"host":7,"method":"GET","path":"/","status":200}"#,
            "",
        );
        assert_eq!(number.unwrap_err().reason, InvalidReason::BadJson);
    }

    #[test]
    fn json_minimal_and_full() {
        let e = parse_line(
            Format::Json,
            br#"{"ts":"2026-01-01T00:00:01Z","host":"a.example","method":"GET","path":"/","status":200}"#,
            "",
        )
        .unwrap();
        assert_eq!(e.ts_ms, 1_767_225_601_000);
        assert_eq!(e.bytes, 0);
        let e = parse_line(
            Format::Json,
            br#"{"ts":1767225601500,"host":"a","method":"POST","path":"/x","status":503,"bytes":10,"latency_ms":12.5,"client_ip":"1.2.3.4","user_agent":"Googlebot/2.1","referrer":"-"}"#,
            "",
        )
        .unwrap();
        assert_eq!(
            (e.ts_ms, e.status, e.bytes, e.latency_ms),
            (1_767_225_601_500, 503, 10, Some(12.5))
        );
        assert!(e.view().is_bot());
    }

    #[test]
    fn json_rejections_have_reasons() {
        let cases: [(&[u8], InvalidReason); 7] = [
            (b"{not json", InvalidReason::BadJson),
            (
                br#"{"host":"a","method":"GET","path":"/","status":200}"#,
                InvalidReason::MissingField,
            ),
            (
                br#"{"ts":"yesterday","host":"a","method":"GET","path":"/","status":200}"#,
                InvalidReason::BadTimestamp,
            ),
            (
                br#"{"ts":1,"host":"a","method":"GET","path":"/","status":1000}"#,
                InvalidReason::BadStatus,
            ),
            (
                br#"{"ts":1,"host":"a","method":"GET","path":"/","status":200,"bytes":-1}"#,
                InvalidReason::BadNumber,
            ),
            (b"   ", InvalidReason::Empty),
            (b"{\"ts\":1,\"host\":\"\xff\xfe\"}", InvalidReason::NotUtf8),
        ];
        for (line, reason) in cases {
            let err = parse_line(Format::Json, line, "").unwrap_err();
            assert_eq!(
                err.reason,
                reason,
                "{}: {}",
                String::from_utf8_lossy(line),
                err.detail
            );
        }
    }

    #[test]
    fn combined_with_and_without_request_time() {
        let line = br#"203.0.113.9 - frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326 "http://www.example.com/start.html" "Mozilla/4.08 [en] (Win98; I ;Nav)" 0.042"#;
        let e = parse_line(Format::Combined, line, "site.example").unwrap();
        assert_eq!(e.host, "site.example");
        assert_eq!(e.path, "/apache_pb.gif");
        assert_eq!(e.status, 200);
        assert_eq!(e.bytes, 2326);
        assert_eq!(e.latency_ms, Some(42.0));
        assert_eq!(e.client_ip.as_deref(), Some("203.0.113.9"));
        let line =
            br#"::1 - - [10/Oct/2000:13:55:36 +0000] "POST /a\"b HTTP/1.1" 404 - "-" "curl/8.0""#;
        let e = parse_line(Format::Combined, line, "h").unwrap();
        assert_eq!(
            (e.method.as_str(), e.path.as_str(), e.bytes, e.latency_ms),
            ("POST", "/a\\\"b", 0, None)
        );
        assert_eq!(e.referrer, None);
    }

    #[test]
    fn vhost_combined_splits_the_port() {
        let line = br#"shop.example:443 10.0.0.1 - - [10/Oct/2000:13:55:36 +0000] "GET / HTTP/1.1" 301 0 "-" "-" 0.001"#;
        let e = parse_line(Format::VhostCombined, line, "").unwrap();
        assert_eq!(e.host, "shop.example");
        assert_eq!(e.status, 301);
    }

    proptest::proptest! {
        /// Any bytes at all: a result, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            for f in [Format::Json, Format::Combined, Format::VhostCombined] {
                let _ = parse_line(f, &bytes, "h");
            }
        }

        /// Valid lines cut anywhere: a result, never a panic.
        #[test]
        fn truncated_lines_never_panic(cut in 0usize..400) {
            let lines: [&[u8]; 2] = [
                br#"site.example:443 203.0.113.9 - frank [10/Oct/2000:13:55:36 -0700] "GET /a\"b HTTP/1.0" 200 2326 "http://x/" "Mozilla/4.08" 0.042"#,
                br#"{"ts":"2026-01-01T00:00:01.5+02:00","host":"a","method":"GET","path":"/","status":200,"bytes":1,"latency_ms":2.5}"#,
            ];
            for line in lines {
                let cut = cut.min(line.len());
                for f in [Format::Json, Format::Combined, Format::VhostCombined] {
                    let _ = parse_line(f, &line[..cut], "h");
                }
            }
        }
    }

    #[test]
    fn combined_rejections_have_reasons() {
        let cases: [(&[u8], InvalidReason); 5] = [
            (b"1.2.3.4 - - [10/Oct/2000:13:55:36 +0000] \"GET / HTTP/1.1\" abc 1", InvalidReason::BadStatus),
            (b"1.2.3.4 - - [10/Oct/2000:99:55:36 +0000] \"GET / HTTP/1.1\" 200 1", InvalidReason::BadTimestamp),
            (b"1.2.3.4 - - [10/Oct/2000:13:55:36 +0000] \"-\" 400 0", InvalidReason::BadRequestLine),
            (b"1.2.3.4 - - 10/Oct/2000", InvalidReason::BadFormat),
            (b"1.2.3.4 - - [10/Oct/2000:13:55:36 +0000] \"GET / HTTP/1.1\" 200 1 \"-\" \"ua\" fast", InvalidReason::BadNumber),
        ];
        for (line, reason) in cases {
            let err = parse_line(Format::Combined, line, "h").unwrap_err();
            assert_eq!(
                err.reason,
                reason,
                "{}: {}",
                String::from_utf8_lossy(line),
                err.detail
            );
        }
    }
}
