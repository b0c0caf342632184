//! The dashboard at `/`: one page of plain JavaScript (no build step) that polls the HTTP
//! API and draws what it answers, with uPlot (vendored under `uplot/`, MIT) for the charts.
//! Its files are compiled into the binary and served from here: `/` and `/assets/<name>`.
//! This module holds no data and calls nothing: every figure the page shows comes from the
//! `/api/v1/` endpoints and `/metrics`, under their usual bearer-token check, so the page
//! itself is open to all (it is the same for everyone, and a caller outside the trusted
//! networks needs it to type a token). Documented in `docs/operations.md` (Dashboard).

use axum::extract::{Path, RawQuery};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The uPlot release vendored in `uplot/` (its `README.md` says where it came from).
pub const UPLOT_VERSION: &str = "1.6.32";

/// One file of the page.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("app.js"),
    },
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("style.css"),
    },
    Asset {
        name: "uPlot.iife.min.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("uplot/uPlot.iife.min.js"),
    },
    Asset {
        name: "uPlot.min.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("uplot/uPlot.min.css"),
    },
    Asset {
        name: "uPlot.LICENSE.txt",
        content_type: "text/plain; charset=utf-8",
        bytes: include_bytes!("uplot/LICENSE"),
    },
];

const INDEX: &str = include_str!("index.html");

/// The page's scripts may come from here only, and its fetches go to this origin only.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; \
                   base-uri 'none'; form-action 'none'";

/// The page as served: `index.html` with `{{version}}` filled in, and the version, a hash
/// of every file, that asset URLs carry (`/assets/app.js?v=…`) so that a browser may keep
/// them for good and still fetches the new ones after an upgrade.
struct Page {
    index: String,
    version: String,
}

impl Page {
    fn new() -> Page {
        let version = format!("{:016x}", fingerprint());
        Page {
            index: INDEX.replace("{{version}}", &version),
            version,
        }
    }
}

/// FNV-1a over every file: stable across builds of the same files, different when one
/// changes.
fn fingerprint() -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let files = ASSETS
        .iter()
        .map(|a| a.bytes)
        .chain(std::iter::once(INDEX.as_bytes()));
    for bytes in files {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// Whether `path` is the page or one of its files, which need no token.
pub fn is_page(path: &str) -> bool {
    path == "/" || path.starts_with("/assets/")
}

static PAGE: std::sync::OnceLock<Page> = std::sync::OnceLock::new();

fn page() -> &'static Page {
    PAGE.get_or_init(Page::new)
}

/// The dashboard's page.
#[utoipa::path(get, path = "/", tag = "dashboard", security(()), responses((status = 200, description = "The dashboard", content_type = "text/html"), (status = 304, description = "Not modified")))]
pub async fn get_index(headers: HeaderMap) -> Response {
    index(page(), &headers)
}

/// One of the dashboard's files (its script, styles, and the chart library).
#[utoipa::path(get, path = "/assets/{name}", tag = "dashboard", security(()), params(("name" = String, Path, description = "The file's name")), responses((status = 200, description = "The file"), (status = 304, description = "Not modified"), (status = 404, description = "No such file")))]
pub async fn get_asset(
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    asset(page(), &name, query.as_deref(), &headers)
}

fn index(page: &Page, headers: &HeaderMap) -> Response {
    let etag = format!("\"{}\"", page.version);
    if not_modified(headers, &etag) {
        return unchanged(&etag, "no-cache");
    }
    let mut resp = page.index.clone().into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::ETAG, HeaderValue::from_str(&etag).expect("hex"));
    resp
}

fn asset(page: &Page, name: &str, query: Option<&str>, headers: &HeaderMap) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.name == name) else {
        return (StatusCode::NOT_FOUND, "no such file\n").into_response();
    };
    // Kept for good only under the URL of this very version; any other is checked again.
    let versioned = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .any(|pair| pair.strip_prefix("v=") == Some(page.version.as_str()));
    let cache = if versioned {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let etag = format!("\"{}\"", page.version);
    if not_modified(headers, &etag) {
        return unchanged(&etag, cache);
    }
    let mut resp = asset.bytes.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::ETAG, HeaderValue::from_str(&etag).expect("hex"));
    resp
}

fn not_modified(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag))
}

fn unchanged(etag: &str, cache: &'static str) -> Response {
    let mut resp = StatusCode::NOT_MODIFIED.into_response();
    let h = resp.headers_mut();
    h.insert(header::ETAG, HeaderValue::from_str(etag).expect("hex"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_names_only_files_that_are_served_and_carries_the_version() {
        let page = Page::new();
        assert!(!page.index.contains("{{"), "every placeholder filled");
        let mut named = 0;
        for part in page.index.split("/assets/").skip(1) {
            let name = part.split('?').next().unwrap();
            assert!(
                ASSETS.iter().any(|a| a.name == name),
                "index.html names {name}, which is not served"
            );
            assert!(
                part.starts_with(&format!("{name}?v={}", page.version)),
                "{name} is versioned"
            );
            named += 1;
        }
        assert!(named >= 4, "the page loads its scripts and styles");
    }

    #[test]
    fn the_vendored_uplot_is_the_version_named() {
        let js = std::str::from_utf8(&ASSETS[2].bytes[..80]).unwrap();
        assert!(js.contains(&format!("(v{UPLOT_VERSION})")), "{js}");
        assert!(
            std::str::from_utf8(ASSETS[4].bytes)
                .unwrap()
                .contains("MIT License")
        );
    }

    #[test]
    fn only_the_page_and_its_files_are_open() {
        assert!(is_page("/"));
        assert!(is_page("/assets/app.js"));
        assert!(!is_page("/api/v1/queue"));
        assert!(!is_page("/metrics"));
        assert!(!is_page("/assetsx"));
    }
}
