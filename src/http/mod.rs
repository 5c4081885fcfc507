//! Routes of the one HTTP server: the tracker path (426 to a plain GET; upgrades are
//! taken over by `connection::upgrade`), service endpoints, viewer reports
//! (`POST /api/report`), the dashboard, `/hls` and the player in
//! `public/` at "/". Registration order matters: the catch-all file service for "/" comes
//! last.

pub mod dashboard;
pub mod endpoints;
pub mod hls;
pub mod report;

use std::sync::Arc;

use actix_web::{middleware, web};

use crate::{connection::upgrade, shared::Shared};

pub fn configure(cfg: &mut web::ServiceConfig, shared: &Arc<Shared>) {
    let settings = &shared.settings;
    cfg.app_data(web::Data::new(shared.clone()));

    // WebSocket upgrades never reach these routes: actix-http hands them to
    // `connection::upgrade` (see `server`). A plain GET on the tracker path gets 426;
    // a plain GET on "/" is the player page.
    let tracker_path = settings.ws.path.as_str();
    if tracker_path != "/" && tracker_path != "/*" {
        cfg.route(tracker_path, web::get().to(upgrade::upgrade_required));
    }

    cfg.route("/healthz", web::get().to(endpoints::healthz))
        .route("/readyz", web::get().to(endpoints::readyz))
        .route("/config.json", web::get().to(endpoints::player_config));
    if settings.http.stats {
        cfg.route("/stats.json", web::get().to(endpoints::stats));
    }
    if settings.http.metrics {
        cfg.route("/metrics", web::get().to(endpoints::prometheus));
    }
    if settings.reports.enabled {
        cfg.route("/api/report", web::post().to(report::report));
    } else {
        // Not the player's directory's 405: the endpoint does not exist.
        cfg.route("/api/report", web::to(report::disabled));
    }
    if settings.dashboard.enabled {
        cfg.route("/dashboard", web::get().to(dashboard::page))
            .route("/dashboard.json", web::get().to(dashboard::data));
    }

    let cors_origin = settings.http.hls_cors_origin.clone();
    let hls_shared = shared.clone();
    cfg.service(
        web::scope(&settings.http.hls_path)
            .wrap(middleware::from_fn(move |req, next| {
                hls::headers_middleware(cors_origin.clone(), hls_shared.clone(), req, next)
            }))
            .service(hls::files(&settings.http)),
    );

    cfg.service(
        actix_files::Files::new("/", &settings.http.public_dir)
            .index_file("index.html")
            .use_etag(true)
            .prefer_utf8(true),
    );
}
