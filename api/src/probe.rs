//! `wtm probe`: a health check for container images without curl. A plain HTTP/1.1 GET over a
//! TCP stream (or a TLS one, for an API served over TLS) is all a probe needs; no client library.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use std::io::{Read, Write};
use std::net::ToSocketAddrs;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// GET `url` (http:// or https://, the latter verified against the certificates in `ca`);
/// Ok on a 2xx answer. `token` goes in an `Authorization: Bearer` header.
pub fn probe(
    url: &str,
    timeout: Duration,
    token: Option<&str>,
    ca: Option<&Path>,
) -> Result<(), String> {
    let (tls, rest) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
        (Some(rest), _) => (false, rest),
        (_, Some(rest)) => (true, rest),
        _ => {
            return Err(format!(
                "{url:?}: only http:// and https:// URLs can be probed"
            ))
        }
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| format!("{authority:?} is not host:port: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority:?} resolves to nothing"))?;
    let io = |e: std::io::Error| format!("{url}: {e}");
    let conn = std::net::TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("cannot connect to {authority}: {e}"))?;
    conn.set_read_timeout(Some(timeout)).map_err(io)?;
    conn.set_write_timeout(Some(timeout)).map_err(io)?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request =
        format!("GET /{path} HTTP/1.1\r\nHost: {authority}\r\n{auth}Connection: close\r\n\r\n");
    let head = if tls {
        let ca = ca.ok_or(
            "an https:// probe needs --ca FILE (the CA that signed the API's certificate)",
        )?;
        let host = authority
            .rsplit_once(':')
            .map_or(authority, |(h, _)| h)
            .trim_matches(['[', ']']);
        let mut stream = tls_stream(conn, host, ca)?;
        exchange(&mut stream, &request).map_err(io)?
    } else {
        let mut conn = conn;
        exchange(&mut conn, &request).map_err(io)?
    };
    let code = head
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

/// Send the request; the first bytes of the answer (its status line).
fn exchange(s: &mut (impl Read + Write), request: &str) -> std::io::Result<String> {
    s.write_all(request.as_bytes())?;
    s.flush()?;
    let mut head = [0u8; 64];
    let n = s.read(&mut head)?;
    Ok(String::from_utf8_lossy(&head[..n]).into_owned())
}

fn tls_stream(
    conn: std::net::TcpStream,
    host: &str,
    ca: &Path,
) -> Result<rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).map_err(|e| format!("--ca {}: {e}", ca.display()))? {
        roots
            .add(c.map_err(|e| format!("--ca {}: {e}", ca.display()))?)
            .map_err(|e| format!("--ca {}: {e}", ca.display()))?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(host.to_owned()).map_err(|e| format!("{host:?}: {e}"))?;
    let client =
        rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    Ok(rustls::StreamOwned::new(client, conn))
}
