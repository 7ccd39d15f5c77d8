//! Mutual TLS between nodes (`[cluster.tls]`): every node presents a certificate its peers' CA
//! signed and accepts only such peers, on both the listening and the dialling side. The cookie
//! still authenticates members inside the encrypted session.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::sync::Arc;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use wtm_config::ClusterTlsConfig;

/// Both sides of a node's TLS.
#[derive(Clone)]
pub struct Tls {
    pub acceptor: TlsAcceptor,
    pub connector: TlsConnector,
    server_name: Option<String>,
}

impl Tls {
    pub fn load(cfg: &ClusterTlsConfig) -> Result<Tls, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cfg.cert)
            .and_then(|it| it.collect())
            .map_err(|e| format!("cluster.tls.cert {}: {e}", cfg.cert.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "cluster.tls.cert {}: no certificate",
                cfg.cert.display()
            ));
        }
        let key = PrivateKeyDer::from_pem_file(&cfg.key)
            .map_err(|e| format!("cluster.tls.key {}: {e}", cfg.key.display()))?;
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_file_iter(&cfg.ca)
            .map_err(|e| format!("cluster.tls.ca {}: {e}", cfg.ca.display()))?
        {
            let ca = ca.map_err(|e| format!("cluster.tls.ca {}: {e}", cfg.ca.display()))?;
            roots
                .add(ca)
                .map_err(|e| format!("cluster.tls.ca {}: {e}", cfg.ca.display()))?;
        }
        if roots.is_empty() {
            return Err(format!(
                "cluster.tls.ca {}: no certificate",
                cfg.ca.display()
            ));
        }
        let roots = Arc::new(roots);
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| format!("cluster.tls.ca: {e}"))?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("cluster.tls: {e}"))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(|e| format!("cluster.tls.cert/key: {e}"))?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("cluster.tls: {e}"))?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .map_err(|e| format!("cluster.tls.cert/key: {e}"))?;
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
            server_name: cfg.server_name.clone(),
        })
    }

    /// The name the peer at `addr` (`host:port`) must present.
    pub fn server_name(&self, addr: &str) -> Result<ServerName<'static>, String> {
        let host = match &self.server_name {
            Some(n) => n.as_str(),
            None => addr.rsplit_once(':').map_or(addr, |(h, _)| h),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        ServerName::try_from(host.to_owned()).map_err(|e| format!("tls server name {host:?}: {e}"))
    }
}
