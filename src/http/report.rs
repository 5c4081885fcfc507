//! `POST /api/report`: a viewer's periodic report (docs/reports.md). The order of the
//! checks is what keeps abuse cheap: the address's report bucket first (429), then the
//! declared and the actual body size (413, read no further), the schema (400), the
//! plausibility checks and the stream (422), and last the address's viewing-time budget
//! (429). Only a report that passes all of them changes the sums; the answer is 204.

use std::{net::IpAddr, sync::Arc, time::Instant};

use actix_web::{http::header, web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde_json::json;

use crate::{
    client_ip,
    shared::Shared,
    usage::reports::{self, Limits, Refusal},
};

/// The client address as the per-IP limits see it (trusted proxies resolved).
pub fn client_address(req: &HttpRequest, shared: &Shared) -> Option<IpAddr> {
    let forwarded = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|value| value.to_str().ok());
    client_ip::resolve(
        req.peer_addr(),
        forwarded,
        &shared.settings.server.trusted_proxies,
    )
}

fn refused(shared: &Shared, refusal: &Refusal) -> HttpResponse {
    shared.usage.report_result(refusal.label());
    let status = actix_web::http::StatusCode::from_u16(refusal.status())
        .unwrap_or(actix_web::http::StatusCode::BAD_REQUEST);
    let mut response = HttpResponse::build(status);
    response.insert_header((header::CACHE_CONTROL, "no-store"));
    if matches!(refusal, Refusal::RateLimited | Refusal::BudgetExceeded) {
        response.insert_header((header::RETRY_AFTER, "10"));
    }
    response.json(json!({ "error": refusal.label(), "reason": refusal.message() }))
}

/// Reads at most `limit` bytes of the body; `Err(TooLarge)` as soon as there are more.
async fn read_capped(mut payload: web::Payload, limit: usize) -> Result<Vec<u8>, Refusal> {
    let mut body = Vec::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|err| Refusal::Malformed(format!("body: {err}")))?;
        if body.len() + chunk.len() > limit {
            return Err(Refusal::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn declared_length(req: &HttpRequest) -> Option<usize> {
    req.headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

pub async fn report(
    req: HttpRequest,
    payload: web::Payload,
    shared: web::Data<Arc<Shared>>,
) -> HttpResponse {
    let shared = shared.get_ref().as_ref();
    match accept(&req, payload, shared).await {
        Ok(()) => HttpResponse::NoContent()
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .finish(),
        Err(refusal) => refused(shared, &refusal),
    }
}

/// `/api/report` while `reports.enabled` is off.
pub async fn disabled() -> HttpResponse {
    HttpResponse::NotFound()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({ "error": "disabled", "reason": "this server does not take viewer reports" }))
}

fn budgets(shared: &Shared) -> std::sync::MutexGuard<'_, reports::Budgets> {
    shared
        .report_budgets
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn accept(req: &HttpRequest, payload: web::Payload, shared: &Shared) -> Result<(), Refusal> {
    let limits = Limits::from(&shared.settings.reports);
    // Without a peer address (not a TCP socket) there is nobody to budget: refuse.
    let ip = client_address(req, shared).ok_or(Refusal::Busy)?;
    budgets(shared).take_report(ip, Instant::now())?;
    if declared_length(req).is_some_and(|length| length > limits.max_body_bytes) {
        return Err(Refusal::TooLarge);
    }
    let body = read_capped(payload, limits.max_body_bytes).await?;
    let report = reports::parse(&body, &limits)?;
    let accepted = reports::check(&report, &limits)?;
    let stream = reports::stream_path(&report.stream, &shared.settings.http.hls_path)
        .and_then(|path| shared.usage.report_stream(path))
        .ok_or(Refusal::UnknownStream)?;
    budgets(shared).take_watch_time(ip, report.ms, Instant::now())?;
    shared.usage.add_report(stream, &accepted);
    Ok(())
}
