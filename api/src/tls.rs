//! TLS for the API (`[api.tls]`): the certificate and key are read at start-up (a bad pair fails
//! it, naming the key) and again whenever either file changes or the node gets SIGHUP, so a
//! renewed certificate is served without a restart. A pair that does not load is logged and
//! the previous one stays in use.

use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use poem::listener::{RustlsCertificate, RustlsConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How often the files' modification times are looked at.
const WATCH_EVERY: Duration = Duration::from_secs(2);

/// Read and check a certificate chain and its key; the error names the setting at fault.
pub fn load(cert: &Path, key: &Path) -> Result<RustlsConfig, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect())
        .map_err(|e| format!("api.tls.cert {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("api.tls.cert {}: no certificate", cert.display()));
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("api.tls.key {}: {e}", key.display()))?;
    // The pair must belong together: build the server side once to find out now.
    rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("api.tls: {e}"))?
    .with_no_client_auth()
    .with_single_cert(chain, private)
    .map_err(|e| format!("api.tls.cert/key: {e}"))?;
    let read = |p: &Path, what: &str| {
        std::fs::read(p).map_err(|e| format!("api.tls.{what} {}: {e}", p.display()))
    };
    Ok(RustlsConfig::new().fallback(
        RustlsCertificate::new()
            .cert(read(cert, "cert")?)
            .key(read(key, "key")?),
    ))
}

/// The configs to serve: the first now, then a new one after each change or SIGHUP.
pub fn reloading(cert: PathBuf, key: PathBuf) -> Result<BoxStream<'static, RustlsConfig>, String> {
    let first = load(&cert, &key)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<RustlsConfig>(1);
    tokio::spawn(async move {
        let stamp = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let mut seen: (Option<SystemTime>, Option<SystemTime>) = (stamp(&cert), stamp(&key));
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            let forced = tokio::select! {
                _ = async {
                    match hup.as_mut() {
                        Some(h) => { h.recv().await; }
                        None => std::future::pending::<()>().await,
                    }
                } => true,
                _ = tokio::time::sleep(WATCH_EVERY) => false,
            };
            let now = (stamp(&cert), stamp(&key));
            if !forced && now == seen {
                continue;
            }
            seen = now;
            match load(&cert, &key) {
                Ok(c) => {
                    tracing::info!(cert = %cert.display(), "API certificate reloaded");
                    if tx.send(c).await.is_err() {
                        return; // the server stopped
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "API certificate not reloaded: the previous one stays in use")
                }
            }
        }
    });
    let rest =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    Ok(futures_util::stream::once(async move { first })
        .chain(rest)
        .boxed())
}
