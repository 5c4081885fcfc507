//! `/hls`: the live stream from `http.hls_dir`, with the MIME types and cache rules HLS
//! players and CDNs expect (actix-files' guesses are wrong for all three HLS types), CORS
//! for players on other origins, and ffmpeg's in-progress `*.tmp` files hidden. Every
//! byte of a successful response body is counted by stream and kind as it is sent
//! (`usage`), so an aborted download counts what actually left.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use actix_files::Files;
use actix_web::{
    body::{BodySize, BoxBody, MessageBody},
    dev::{ServiceRequest, ServiceResponse},
    http::{
        header::{self, HeaderValue},
        Method,
    },
    middleware::Next,
    HttpResponse,
};

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;

use crate::{config::HttpSettings, shared::Shared};

/// The file service for the HLS directory, mounted inside the `/hls` scope (no listing;
/// actix-files refuses `..`).
pub fn files(settings: &HttpSettings) -> Files {
    Files::new("", &settings.hls_dir)
        .path_filter(|path, _| {
            !path
                .extension()
                .is_some_and(|ext| ext.eq_ignore_ascii_case("tmp"))
        })
        .use_etag(true)
        .use_last_modified(true)
        .prefer_utf8(true)
}

/// Content type and Cache-Control by file name.
pub fn media_headers(path: &str) -> Option<(&'static str, &'static str)> {
    let name = path.rsplit('/').next().unwrap_or(path);
    let extension = name
        .rsplit_once('.')
        .map(|(_, ext)| ext.to_ascii_lowercase())?;
    let is_master = name.starts_with("master");
    Some(match extension.as_str() {
        // RFC 8216 type. Live media playlists change every segment: revalidate always. A
        // master playlist changes only when renditions do.
        "m3u8" if is_master => ("application/vnd.apple.mpegurl", "public, max-age=5"),
        "m3u8" => ("application/vnd.apple.mpegurl", "no-cache"),
        // Segment names are unique for the life of a stream: cache them for good.
        "ts" => ("video/mp2t", "public, max-age=31536000, immutable"),
        "m4s" => ("video/mp4", "public, max-age=31536000, immutable"),
        // The fMP4 init segment is rewritten when the encoder restarts.
        "mp4" => ("video/mp4", "public, max-age=60"),
        "aac" => ("audio/aac", "public, max-age=31536000, immutable"),
        "vtt" => ("text/vtt", "public, max-age=31536000, immutable"),
        _ => return None,
    })
}

/// Middleware for the `/hls` scope.
pub async fn headers_middleware(
    cors_origin: String,
    shared: Arc<Shared>,
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    if req.method() == Method::OPTIONS {
        // CORS preflight (a Range request from another origin).
        let mut response = HttpResponse::NoContent();
        if !cors_origin.is_empty() {
            response
                .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, cors_origin.as_str()))
                .insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, "GET, HEAD, OPTIONS"))
                .insert_header((header::ACCESS_CONTROL_ALLOW_HEADERS, "Range"))
                .insert_header((header::ACCESS_CONTROL_MAX_AGE, "3600"));
        }
        return Ok(req.into_response(response.finish()));
    }
    let path = req.path().to_owned();
    let relative = req.match_info().unprocessed().to_owned();
    let is_head = req.method() == Method::HEAD;
    let response = next.call(req).await?;
    let success = response.status().is_success()
        || response.status() == actix_web::http::StatusCode::NOT_MODIFIED;
    // Only bodies that leave count: 2xx to GET (200 or 206), not 304, 404 or HEAD.
    let counter = (response.status().is_success() && !is_head)
        .then(|| shared.usage.hls_response(&relative))
        .flatten();
    let mut response = match counter {
        Some(counter) => response.map_body(|_, body| {
            CountingBody {
                inner: body.boxed(),
                counter,
            }
            .boxed()
        }),
        None => response.map_into_boxed_body(),
    };
    let headers = response.headers_mut();
    if success {
        if let Some((content_type, cache_control)) = media_headers(&path) {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            headers.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static(cache_control),
            );
            // actix-files marks unknown types as attachments; media is played inline.
            headers.remove(header::CONTENT_DISPOSITION);
        }
    } else {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    if !cors_origin.is_empty() {
        if let Ok(value) = HeaderValue::from_str(&cors_origin) {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
        }
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("Content-Length, Content-Range"),
        );
    }
    Ok(response)
}

/// A response body that adds the size of each chunk to `counter` as it is sent.
struct CountingBody {
    inner: BoxBody,
    counter: Counter,
}

impl MessageBody for CountingBody {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> BodySize {
        self.inner.size()
    }

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let poll = Pin::new(&mut self.inner).poll_next(cx);
        if let Poll::Ready(Some(Ok(chunk))) = &poll {
            self.counter.inc_by(chunk.len() as u64);
        }
        poll
    }
}

#[cfg(test)]
mod tests {
    use super::media_headers;

    #[test]
    fn hls_types_and_cache_rules() {
        assert_eq!(
            media_headers("/hls/live.m3u8"),
            Some(("application/vnd.apple.mpegurl", "no-cache"))
        );
        assert_eq!(
            media_headers("/hls/master.m3u8"),
            Some(("application/vnd.apple.mpegurl", "public, max-age=5"))
        );
        assert_eq!(
            media_headers("/hls/seg_000001.TS"),
            Some(("video/mp2t", "public, max-age=31536000, immutable"))
        );
        assert_eq!(
            media_headers("/hls/v0/seg_1.m4s").map(|(kind, _)| kind),
            Some("video/mp4")
        );
        assert_eq!(
            media_headers("/hls/init.mp4"),
            Some(("video/mp4", "public, max-age=60"))
        );
        assert_eq!(media_headers("/hls/readme"), None);
    }
}
