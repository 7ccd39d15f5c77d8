//! The dashboard: one page and its assets, compiled into the binary (no CDN, nothing fetched at
//! run time). It reads only the documented `/v1` API, like any other client, so it needs no
//! token to be served (it holds no data) and asks the API with the user's token.
//! uPlot 1.6.32 (MIT, `ui/vendor/uPlot-LICENSE`) is vendored: 51 KB, no dependencies, and no
//! npm step in the build.

use poem::http::{header, StatusCode};
use poem::web::Path;
use poem::{handler, IntoResponse, Response};

struct Asset {
    name: &'static str,
    mime: &'static str,
    body: &'static [u8],
}

/// `asset!(path under api/ui/, name under /ui/, content type)`.
macro_rules! asset {
    ($path:literal, $name:literal, $mime:literal) => {
        Asset {
            name: $name,
            mime: $mime,
            body: include_bytes!(concat!("../ui/", $path)),
        }
    };
}

const ASSETS: &[Asset] = &[
    asset!("index.html", "index.html", "text/html; charset=utf-8"),
    asset!("app.js", "app.js", "text/javascript; charset=utf-8"),
    asset!("app.css", "app.css", "text/css; charset=utf-8"),
    asset!(
        "vendor/uPlot.iife.min.js",
        "uPlot.iife.min.js",
        "text/javascript; charset=utf-8"
    ),
    asset!(
        "vendor/uPlot.min.css",
        "uPlot.min.css",
        "text/css; charset=utf-8"
    ),
    asset!(
        "vendor/uPlot-LICENSE",
        "uPlot-LICENSE",
        "text/plain; charset=utf-8"
    ),
];

/// Scripts and styles from this node only; the page's data comes from its own API.
const CSP: &str = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

fn serve(name: &str) -> Response {
    match ASSETS.iter().find(|a| a.name == name) {
        Some(a) => Response::builder()
            .content_type(a.mime)
            // Small files, and a node upgrade changes them: revalidate rather than go stale.
            .header(header::CACHE_CONTROL, "no-cache")
            .header("x-content-type-options", "nosniff")
            .header("content-security-policy", CSP)
            .body(a.body),
        None => (
            StatusCode::NOT_FOUND,
            format!("no dashboard asset {name:?}"),
        )
            .into_response(),
    }
}

/// `GET /`: the dashboard.
pub fn page() -> Response {
    serve("index.html")
}

/// `GET /ui/{name}`: its scripts, styles and the chart library's licence.
#[handler]
pub fn asset(Path(name): Path<String>) -> Response {
    serve(&name)
}
