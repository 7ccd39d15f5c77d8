//! `wtm probe`: a health check for container images without curl. A plain HTTP/1.1 GET over a
//! TCP stream is all a probe needs; no client library.

use std::io::{Read, Write};
use std::net::ToSocketAddrs;
use std::time::Duration;

/// A plain HTTP/1.1 GET over a TCP stream: enough for a health check, no client library.
pub fn probe(url: &str, timeout: Duration, token: Option<&str>) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url:?}: only http:// URLs can be probed"))?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| format!("{authority:?} is not host:port: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority:?} resolves to nothing"))?;
    let io = |e: std::io::Error| format!("{url}: {e}");
    let mut conn = std::net::TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("cannot connect to {authority}: {e}"))?;
    conn.set_read_timeout(Some(timeout)).map_err(io)?;
    conn.set_write_timeout(Some(timeout)).map_err(io)?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        conn,
        "GET /{path} HTTP/1.1\r\nHost: {authority}\r\n{auth}Connection: close\r\n\r\n"
    )
    .map_err(io)?;
    let mut head = [0u8; 64];
    let n = conn.read(&mut head).map_err(io)?;
    let status_line = String::from_utf8_lossy(&head[..n]);
    let code = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| format!("{url}: not an HTTP answer"))?;
    if (200..300).contains(&code) {
        Ok(())
    } else {
        Err(format!("{url} answered {code}"))
    }
}
