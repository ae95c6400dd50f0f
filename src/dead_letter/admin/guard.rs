//! The cross-site check on state-changing requests.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, Method, StatusCode, header};

/// Refuses, with 403, any request but GET, HEAD and OPTIONS that a browser
/// says comes from another origin.
///
/// Browsers tell the server where a request comes from: `Sec-Fetch-Site`
/// (every current browser) and, on every POST, `Origin`. A form on another
/// site can make the browser send a POST with the admin's credentials, but
/// it cannot make the browser hide or forge these headers. A request with
/// neither header is not from a browser (curl, a script): it cannot ride on
/// a signed-in person's credentials, so it passes.
pub(super) async fn same_origin_only(request: Request, next: Next) -> Response {
    if is_cross_site(request.method(), request.headers(), request.uri()) {
        return (
            StatusCode::FORBIDDEN,
            "cross-site request refused: state-changing requests must come from this page's own origin",
        )
            .into_response();
    }
    next.run(request).await
}

fn is_cross_site(method: &Method, headers: &HeaderMap, uri: &http::Uri) -> bool {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return false;
    }
    if let Some(site) = headers.get("sec-fetch-site") {
        // "none": the person started it (typed URL, bookmark).
        return !matches!(site.as_bytes(), b"same-origin" | b"none");
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return false;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .or_else(|| uri.authority().map(|authority| authority.as_str()));
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|origin| origin.split_once("://"))
        .map(|(_, authority)| authority);
    match (origin_host, host) {
        (Some(origin_host), Some(host)) => !origin_host.eq_ignore_ascii_case(host),
        // "null" (a sandboxed or file: page) or no Host to compare with.
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| {
                (
                    header::HeaderName::from_static(name),
                    header::HeaderValue::from_static(value),
                )
            })
            .collect()
    }

    #[test]
    fn decides_by_fetch_metadata_then_origin() {
        let uri = http::Uri::from_static("/replay");
        let post = Method::POST;
        let cases = [
            (vec![("sec-fetch-site", "same-origin")], false),
            (vec![("sec-fetch-site", "none")], false),
            (vec![("sec-fetch-site", "same-site")], true),
            (vec![("sec-fetch-site", "cross-site")], true),
            (
                vec![
                    ("origin", "http://admin.local:8080"),
                    ("host", "admin.local:8080"),
                ],
                false,
            ),
            (
                vec![
                    ("origin", "http://evil.example"),
                    ("host", "admin.local:8080"),
                ],
                true,
            ),
            (vec![("origin", "null"), ("host", "admin.local:8080")], true),
            (vec![], false),
        ];
        for (pairs, refused) in cases {
            assert_eq!(
                is_cross_site(&post, &headers(&pairs), &uri),
                refused,
                "{pairs:?}"
            );
        }
        let evil = headers(&[("sec-fetch-site", "cross-site")]);
        assert!(!is_cross_site(&Method::GET, &evil, &uri));
    }
}
