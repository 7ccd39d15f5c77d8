//! Who may ask, and how much at once: bearer tokens (compared as SHA-256 digests in constant
//! time, never logged), a cap on requests in flight and a timeout per request.

use poem::http::{header, StatusCode};
use poem::{Endpoint, IntoResponse, Request, Response};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

/// The API's access rules.
#[derive(Clone)]
pub struct Access {
    /// SHA-256 of each accepted token; empty: no token needed.
    digests: Arc<Vec<[u8; 32]>>,
    protect_metrics: bool,
    timeout: Duration,
    permits: Arc<Semaphore>,
}

impl Access {
    /// `digests`: SHA-256 of every accepted token (none: the API is open).
    pub fn new(
        digests: Vec<[u8; 32]>,
        protect_metrics: bool,
        timeout: Duration,
        max_concurrent: usize,
    ) -> Access {
        Access {
            digests: Arc::new(digests),
            protect_metrics,
            timeout,
            permits: Arc::new(Semaphore::new(max_concurrent.max(1))),
        }
    }

    pub fn digest(token: &str) -> [u8; 32] {
        Sha256::digest(token.as_bytes()).into()
    }

    /// Whether `route` (a route template) needs a token.
    fn protects(&self, route: &str) -> bool {
        !self.digests.is_empty()
            && match route {
                // The dashboard's page and scripts hold no data; it asks the API with a token.
                "/healthz" | "/" | "/ui" => false,
                "/metrics" => self.protect_metrics,
                _ => true,
            }
    }

    fn admits(&self, req: &Request) -> bool {
        let Some(token) = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        let presented = Access::digest(token.trim());
        // Every digest is compared, so the time taken says nothing about which one matched.
        self.digests
            .iter()
            .fold(subtle::Choice::from(0), |any, d| any | d.ct_eq(&presented))
            .into()
    }

    /// Serve `req` through `ep` within the rules.
    pub async fn serve<E: Endpoint>(&self, ep: &E, route: &str, req: Request) -> Response {
        // A browser's CORS preflight carries no credentials: it only learns the CORS headers.
        let preflight = req.method() == poem::http::Method::OPTIONS;
        if !preflight && self.protects(route) && !self.admits(&req) {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "missing or invalid bearer token (Authorization: Bearer <token>)",
            )
            .with_header(header::WWW_AUTHENTICATE, "Bearer")
            .into_response();
        }
        let Ok(_permit) = self.permits.clone().try_acquire_owned() else {
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many requests in flight (api.max_concurrent_requests); retry shortly",
            )
            .with_header(header::RETRY_AFTER, "1")
            .into_response();
        };
        match tokio::time::timeout(self.timeout, ep.get_response(req)).await {
            Ok(resp) => resp,
            Err(_) => refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "the request took longer than api.request_timeout_s",
            ),
        }
    }
}

impl std::fmt::Debug for Access {
    // The digests stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("tokens", &self.digests.len())
            .field("protect_metrics", &self.protect_metrics)
            .field("timeout", &self.timeout)
            .finish()
    }
}

fn refuse(status: StatusCode, why: &str) -> Response {
    Response::builder()
        .status(status)
        .content_type("application/json")
        .body(serde_json::json!({ "error": why }).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_by_digest_and_healthz_stays_open() {
        let a = Access::new(
            vec![Access::digest("a-long-enough-token")],
            false,
            Duration::from_secs(1),
            1,
        );
        let req = |auth: Option<&str>| {
            let mut r = Request::builder().uri_str("/v1/hosts");
            if let Some(v) = auth {
                r = r.header(header::AUTHORIZATION, v);
            }
            r.finish()
        };
        assert!(a.admits(&req(Some("Bearer a-long-enough-token"))));
        assert!(!a.admits(&req(Some("Bearer a-long-enough-tokeN"))));
        assert!(!a.admits(&req(Some("Basic a-long-enough-token"))));
        assert!(!a.admits(&req(None)));
        assert!(a.protects("/v1/hosts") && a.protects("/readyz") && a.protects("/docs"));
        assert!(!a.protects("/healthz") && !a.protects("/metrics"));
        assert!(!a.protects("/") && !a.protects("/ui") && a.protects("/v1/stream"));
        let open = Access::new(Vec::new(), false, Duration::from_secs(1), 1);
        assert!(!open.protects("/v1/hosts"));
    }
}
