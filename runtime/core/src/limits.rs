//! Bounds on what strangers control. Every field of an access log but the time is chosen by
//! whoever sent the request, and each becomes state here: a host becomes a series, a path, a
//! referrer and a user agent become sketch keys and lake columns. So a record longer than
//! `max_record_bytes` is dead-lettered (`too_long`) without being read whole, a host that is not
//! a plausible `host[:port]` is dead-lettered (`bad_host`), and the free-text fields are cut at
//! `max_field_bytes` with a marker.

use crate::event::ParsedEvent;
use std::borrow::Cow;

/// The bounds (`[limits]` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_record_bytes: usize,
    pub max_field_bytes: usize,
    /// Named sites one window of one partition admits; the rest fold into [`OVERFLOW_HOST`].
    pub max_hosts: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_record_bytes: 64 * 1024,
            max_field_bytes: 2048,
            max_hosts: 50_000,
        }
    }
}

/// The series sites beyond `limits.max_hosts` fold into (not a plausible host name, so no real
/// site can be called that).
pub const OVERFLOW_HOST: &str = "(other)";

/// How much of a too-long record the dead-letter output keeps.
pub const KEPT_OF_TOO_LONG: usize = 1024;

/// Appended to a field that was cut.
pub const CUT_MARKER: &str = "…";

/// The longest host name (DNS: 253) plus `:` and a port.
pub const MAX_HOST_BYTES: usize = 253 + 6;

/// Methods longer than this (no HTTP method is) count as `OTHER`.
pub const MAX_METHOD_BYTES: usize = 16;

/// The fields that are cut, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Path,
    Referrer,
    UserAgent,
    ClientIp,
}

impl Field {
    pub const ALL: [Field; 4] = [
        Field::Path,
        Field::Referrer,
        Field::UserAgent,
        Field::ClientIp,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Field::Path => "path",
            Field::Referrer => "referrer",
            Field::UserAgent => "user_agent",
            Field::ClientIp => "client_ip",
        }
    }
}

/// Which fields of one event were cut (indexed like [`Field::ALL`]).
pub type FieldsCut = [bool; 4];

/// Is `host` a plausible `host[:port]`: a name of 1 to 253 bytes of ASCII letters, digits,
/// `-`, `_` and `.` (not starting with `.` or `-`), or a bracketed IPv6 literal of hex digits,
/// `:` and `.`; then optionally `:` and a port of 1 to 5 digits.
pub fn plausible_host(host: &str) -> bool {
    if host.is_empty() || host.len() > MAX_HOST_BYTES {
        return false;
    }
    let b = host.as_bytes();
    let (name_ok, rest) = if b[0] == b'[' {
        match host.find(']') {
            Some(end) => (
                end > 1
                    && b[1..end]
                        .iter()
                        .all(|c| c.is_ascii_hexdigit() || *c == b':' || *c == b'.'),
                &host[end + 1..],
            ),
            None => return false,
        }
    } else {
        let (name, rest) = match host.find(':') {
            Some(c) => (&host[..c], &host[c..]),
            None => (host, ""),
        };
        let nb = name.as_bytes();
        (
            !nb.is_empty()
                && nb.len() <= 253
                && !matches!(nb[0], b'.' | b'-')
                && nb
                    .iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')),
            rest,
        )
    };
    name_ok
        && match rest.strip_prefix(':') {
            None => rest.is_empty(),
            Some(port) => (1..=5).contains(&port.len()) && port.bytes().all(|c| c.is_ascii_digit()),
        }
}

/// Cut the free-text fields of `e` to `max` bytes (at a character boundary, then
/// [`CUT_MARKER`]); a method longer than [`MAX_METHOD_BYTES`] becomes `OTHER`. Says which
/// fields were cut.
pub fn bound_fields(e: &mut ParsedEvent<'_>, max: usize) -> FieldsCut {
    if e.method.len() > MAX_METHOD_BYTES {
        e.method = Cow::Borrowed("OTHER");
    }
    [
        cut(&mut e.path, max),
        e.referrer.as_mut().is_some_and(|s| cut(s, max)),
        e.user_agent.as_mut().is_some_and(|s| cut(s, max)),
        e.client_ip.as_mut().is_some_and(|s| cut(s, max)),
    ]
}

/// Only a field that is cut is copied (the rest stay borrowed from the record).
fn cut(s: &mut Cow<'_, str>, max: usize) -> bool {
    if s.len() <= max {
        return false;
    }
    let mut at = max.saturating_sub(CUT_MARKER.len());
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    let s = s.to_mut();
    s.truncate(at);
    s.push_str(CUT_MARKER);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plausible_hosts_and_not() {
        for ok in [
            "shop.example",
            "shop.example:8080",
            "a",
            "xn--bcher-kva.example",
            "my_vhost.internal",
            "10.0.0.1:80",
            "[::1]",
            "[2001:db8::1]:443",
        ] {
            assert!(plausible_host(ok), "{ok}");
        }
        let long = "a".repeat(254);
        for bad in [
            "",
            "shop example",
            "<script>",
            "shop.example:",
            "shop.example:123456",
            "shop.example:80:80",
            ".example",
            "-x",
            "[::1",
            "[]",
            "[zz::1]",
            OVERFLOW_HOST,
            "ünï.example",
            long.as_str(),
        ] {
            assert!(!plausible_host(bad), "{bad:?}");
        }
    }

    #[test]
    fn fields_are_cut_at_a_char_boundary_with_a_marker() {
        let mut e = ParsedEvent {
            ts_ms: 0,
            host: "a".into(),
            method: "X".repeat(17).into(),
            path: format!("/{}", "é".repeat(100)).into(),
            status: 200,
            bytes: 0,
            latency_ms: None,
            client_ip: Some("1.2.3.4".into()),
            user_agent: Some("ua".into()),
            referrer: None,
        };
        let cut = bound_fields(&mut e, 64);
        assert_eq!(cut, [true, false, false, false]);
        assert!(
            e.path.len() <= 64 && e.path.ends_with(CUT_MARKER),
            "{}",
            e.path
        );
        assert!(e.path.starts_with("/é"));
        assert_eq!(e.method, "OTHER");
        let again = e.clone();
        assert_eq!(bound_fields(&mut e, 64), [false; 4], "a cut field fits");
        assert_eq!(e, again);
    }
}
