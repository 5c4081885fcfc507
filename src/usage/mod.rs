//! Origin offload accounting: the bytes `/hls` serves, by stream and kind, counted by the
//! server itself, and the figures viewers report about themselves (`reports`), summed per
//! stream with no viewer identity. Both live in one Prometheus registry (names without the
//! `tracker_` prefix: `hls_*`, `p2p_viewer_*`, `p2p_reports_total`) rendered after the
//! tracker's in `/metrics`; `/stats.json` and `/dashboard.json` read the same counters.
//!
//! A stream is the top-level directory of the HLS tree (`/hls/v0/seg_1.ts` is stream
//! `v0`); files at the top level form the stream `/`. The number of streams is capped
//! (`http.hls_max_streams`); later ones are counted as `other`, so label cardinality stays
//! bounded whatever the clients ask for.

pub mod reports;

use std::{collections::VecDeque, sync::Mutex};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use serde_json::{json, Value};

use reports::Accepted;

/// The stream name of files at the top level of the HLS tree.
pub const ROOT_STREAM: &str = "/";
/// Where streams beyond the cap are counted.
pub const OTHER_STREAM: &str = "other";

/// What an `/hls` file is, by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Playlist,
    Segment,
    Other,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Segment, Kind::Playlist, Kind::Other];

    pub fn of(path: &str) -> Self {
        let name = path.rsplit('/').next().unwrap_or(path);
        let extension = name
            .rsplit_once('.')
            .map(|(_, ext)| ext.to_ascii_lowercase())
            .unwrap_or_default();
        match extension.as_str() {
            "m3u8" => Kind::Playlist,
            "ts" | "m4s" | "mp4" | "aac" | "vtt" => Kind::Segment,
            _ => Kind::Other,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Kind::Playlist => "playlist",
            Kind::Segment => "segment",
            Kind::Other => "other",
        }
    }
}

/// The stream a path below the HLS prefix belongs to: its first directory, or
/// [`ROOT_STREAM`] for a file at the top level. `None` for paths that name no file.
pub fn stream_of(relative: &str) -> Option<&str> {
    let relative = relative.trim_start_matches('/');
    if relative.is_empty() || relative.ends_with('/') {
        return None;
    }
    Some(match relative.split_once('/') {
        Some((dir, _)) if !dir.is_empty() => dir,
        _ => ROOT_STREAM,
    })
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamKind {
    stream: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamSource {
    stream: String,
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamLabel {
    stream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

type Seconds = Counter<f64, std::sync::atomic::AtomicU64>;

/// The streams seen so far, in order of first appearance, at most `cap`.
#[derive(Debug)]
pub struct StreamTable {
    cap: usize,
    names: Vec<String>,
}

impl StreamTable {
    pub fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            names: Vec::new(),
        }
    }

    /// The label for `name`, adding it while there is room; `other` once the table is full.
    pub fn admit(&mut self, name: &str) -> String {
        if self.names.iter().any(|known| known == name) {
            return name.to_owned();
        }
        if self.names.len() < self.cap && name != OTHER_STREAM {
            self.names.push(name.to_owned());
            return name.to_owned();
        }
        OTHER_STREAM.to_owned()
    }

    /// The label for `name` without adding it: itself if known, `other` if the table is
    /// full (it may have been folded), `None` if it was never seen.
    pub fn lookup(&self, name: &str) -> Option<String> {
        if self.names.iter().any(|known| known == name) {
            Some(name.to_owned())
        } else if self.names.len() >= self.cap {
            Some(OTHER_STREAM.to_owned())
        } else {
            None
        }
    }

    pub fn is_full(&self) -> bool {
        self.names.len() >= self.cap
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }
}

/// How many totals the dashboard's history keeps (5 minutes at one sample per 2 s).
pub const HISTORY_SAMPLES: usize = 150;
/// Seconds between two samples of the history.
pub const HISTORY_INTERVAL_SECS: u64 = 2;

/// The running totals at one moment, for the dashboard's chart.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Seconds since the server started.
    pub at: f64,
    pub origin_bytes: u64,
    pub p2p_bytes: u64,
    pub http_bytes: u64,
    pub watch_seconds: f64,
}

/// The counters of this module; one per process, in `Shared`.
pub struct Usage {
    registry: Registry,
    history: Mutex<VecDeque<Sample>>,
    streams: Mutex<StreamTable>,
    hls_bytes: Family<StreamKind, Counter>,
    hls_requests: Family<StreamKind, Counter>,
    viewer_bytes: Family<StreamSource, Counter>,
    viewer_uploaded: Family<StreamLabel, Counter>,
    watch_seconds: Family<StreamLabel, Seconds>,
    peer_seconds: Family<StreamLabel, Seconds>,
    stalls: Family<StreamLabel, Counter>,
    stall_seconds: Family<StreamLabel, Seconds>,
    startups: Family<StreamLabel, Counter>,
    startup_seconds: Family<StreamLabel, Seconds>,
    reports: Family<ResultLabel, Counter>,
}

impl std::fmt::Debug for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Usage")
    }
}

impl Usage {
    pub fn new(max_streams: usize) -> Self {
        let mut registry = Registry::default();
        let hls_bytes = Family::default();
        registry.register(
            "hls_bytes",
            "Bytes the origin sent from /hls, by stream and kind (segment, playlist, other)",
            hls_bytes.clone(),
        );
        let hls_requests = Family::default();
        registry.register(
            "hls_requests",
            "Successful /hls responses, by stream and kind",
            hls_requests.clone(),
        );
        let viewer_bytes = Family::default();
        registry.register(
            "p2p_viewer_bytes",
            "Segment bytes viewers reported receiving, by stream and source (p2p, http)",
            viewer_bytes.clone(),
        );
        let viewer_uploaded = Family::default();
        registry.register(
            "p2p_viewer_uploaded_bytes",
            "Segment bytes viewers reported uploading to their peers",
            viewer_uploaded.clone(),
        );
        let watch_seconds = Family::default();
        registry.register(
            "p2p_viewer_watch_seconds",
            "Wall time covered by viewer reports; its rate is the number of reporting viewers",
            watch_seconds.clone(),
        );
        let peer_seconds = Family::default();
        registry.register(
            "p2p_viewer_peer_seconds",
            "Peers connected times the time they were, as reported; over watch seconds: mean peers",
            peer_seconds.clone(),
        );
        let stalls = Family::default();
        registry.register(
            "p2p_viewer_stalls",
            "Stalls (rebuffering after playback started) viewers reported",
            stalls.clone(),
        );
        let stall_seconds = Family::default();
        registry.register(
            "p2p_viewer_stall_seconds",
            "Time viewers reported spending stalled",
            stall_seconds.clone(),
        );
        let startups = Family::default();
        registry.register(
            "p2p_viewer_startups",
            "Viewers that reported their start-up time (page load to first frame)",
            startups.clone(),
        );
        let startup_seconds = Family::default();
        registry.register(
            "p2p_viewer_startup_seconds",
            "Sum of reported start-up times; over p2p_viewer_startups: the mean",
            startup_seconds.clone(),
        );
        let reports = Family::default();
        registry.register(
            "p2p_reports",
            "Viewer reports received, by result (accepted or why they were refused)",
            reports.clone(),
        );
        Self {
            registry,
            history: Mutex::new(VecDeque::with_capacity(HISTORY_SAMPLES)),
            streams: Mutex::new(StreamTable::new(max_streams)),
            hls_bytes,
            hls_requests,
            viewer_bytes,
            viewer_uploaded,
            watch_seconds,
            peer_seconds,
            stalls,
            stall_seconds,
            startups,
            startup_seconds,
            reports,
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, StreamTable> {
        // The table stays consistent whatever a panicking holder did (one push at most).
        self.streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts one successful `/hls` response for the file at `relative` (the path below the
    /// HLS prefix) and returns the counter its body bytes go to.
    pub fn hls_response(&self, relative: &str) -> Option<Counter> {
        let stream = self.table().admit(stream_of(relative)?);
        let label = StreamKind {
            stream,
            kind: Kind::of(relative).label(),
        };
        self.hls_requests.get_or_create(&label).inc();
        Some(self.hls_bytes.get_or_create(&label).clone())
    }

    /// The label a report for `stream` (a path below the HLS prefix) is counted under;
    /// `None` for a stream the server never served.
    pub fn report_stream(&self, relative: &str) -> Option<String> {
        self.table().lookup(stream_of(relative)?)
    }

    pub fn report_result(&self, result: &'static str) {
        self.reports.get_or_create(&ResultLabel { result }).inc();
    }

    /// Adds an accepted report to its stream's sums.
    pub fn add_report(&self, stream: String, report: &Accepted) {
        let source = |source| StreamSource {
            stream: stream.clone(),
            source,
        };
        self.viewer_bytes
            .get_or_create(&source("p2p"))
            .inc_by(report.p2p_bytes);
        self.viewer_bytes
            .get_or_create(&source("http"))
            .inc_by(report.http_bytes);
        let label = StreamLabel { stream };
        self.viewer_uploaded
            .get_or_create(&label)
            .inc_by(report.uploaded_bytes);
        self.watch_seconds
            .get_or_create(&label)
            .inc_by(report.seconds);
        self.peer_seconds
            .get_or_create(&label)
            .inc_by(report.peer_seconds);
        self.stalls.get_or_create(&label).inc_by(report.stalls);
        self.stall_seconds
            .get_or_create(&label)
            .inc_by(report.stall_seconds);
        if let Some(startup) = report.startup_seconds {
            self.startups.get_or_create(&label).inc();
            self.startup_seconds.get_or_create(&label).inc_by(startup);
        }
        self.report_result("accepted");
    }

    /// Per-stream figures and their totals, for `/stats.json` and `/dashboard.json`.
    pub fn snapshot(&self) -> Value {
        let mut names: Vec<String> = self.table().names().to_vec();
        if self.table().is_full() {
            names.push(OTHER_STREAM.to_owned());
        }
        let mut totals = StreamFigures::default();
        let streams: Vec<Value> = names
            .into_iter()
            .map(|stream| {
                let figures = self.figures(&stream);
                totals.add(&figures);
                figures.to_json(Some(&stream))
            })
            .collect();
        let reports: serde_json::Map<String, Value> = self
            .reports_by_result()
            .into_iter()
            .map(|(result, count)| (result.to_owned(), Value::from(count)))
            .collect();
        json!({
            "total": totals.to_json(None),
            "streams": streams,
            "reports": reports,
        })
    }

    /// Appends the current totals to the history (the oldest go beyond HISTORY_SAMPLES).
    pub fn record_sample(&self, at: f64) {
        let total = &self.snapshot()["total"];
        let sample = Sample {
            at,
            origin_bytes: total["origin"]["bytes"].as_u64().unwrap_or(0),
            p2p_bytes: total["reported"]["p2pBytes"].as_u64().unwrap_or(0),
            http_bytes: total["reported"]["httpBytes"].as_u64().unwrap_or(0),
            watch_seconds: total["reported"]["watchSeconds"].as_f64().unwrap_or(0.0),
        };
        let mut history = self
            .history
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if history.len() >= HISTORY_SAMPLES {
            history.pop_front();
        }
        history.push_back(sample);
    }

    /// The history as `[[at, origin, p2p, http, watch], ...]`, oldest first.
    pub fn history_json(&self) -> Value {
        let history = self
            .history
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Value::Array(
            history
                .iter()
                .map(|s| {
                    json!([
                        s.at,
                        s.origin_bytes,
                        s.p2p_bytes,
                        s.http_bytes,
                        s.watch_seconds
                    ])
                })
                .collect(),
        )
    }

    fn reports_by_result(&self) -> Vec<(&'static str, u64)> {
        reports::RESULTS
            .iter()
            .map(|result| {
                (
                    *result,
                    self.reports.get_or_create(&ResultLabel { result }).get(),
                )
            })
            .collect()
    }

    fn figures(&self, stream: &str) -> StreamFigures {
        let kind = |family: &Family<StreamKind, Counter>, kind: Kind| {
            family
                .get_or_create(&StreamKind {
                    stream: stream.to_owned(),
                    kind: kind.label(),
                })
                .get()
        };
        let label = StreamLabel {
            stream: stream.to_owned(),
        };
        let source = |source| {
            self.viewer_bytes
                .get_or_create(&StreamSource {
                    stream: stream.to_owned(),
                    source,
                })
                .get()
        };
        StreamFigures {
            origin_bytes: Kind::ALL.map(|k| kind(&self.hls_bytes, k)),
            origin_requests: Kind::ALL.map(|k| kind(&self.hls_requests, k)),
            p2p_bytes: source("p2p"),
            http_bytes: source("http"),
            uploaded_bytes: self.viewer_uploaded.get_or_create(&label).get(),
            watch_seconds: self.watch_seconds.get_or_create(&label).get(),
            peer_seconds: self.peer_seconds.get_or_create(&label).get(),
            stalls: self.stalls.get_or_create(&label).get(),
            stall_seconds: self.stall_seconds.get_or_create(&label).get(),
            startups: self.startups.get_or_create(&label).get(),
            startup_seconds: self.startup_seconds.get_or_create(&label).get(),
        }
    }

    /// The OpenMetrics text of this registry, without the `# EOF` line.
    pub fn render_into(&self, out: &mut String) {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_ok() {
            out.push_str(text.trim_end_matches("# EOF\n"));
        }
    }
}

/// One stream's counters, read at one moment.
#[derive(Debug, Default, Clone, PartialEq)]
struct StreamFigures {
    /// In `Kind::ALL` order: segment, playlist, other.
    origin_bytes: [u64; 3],
    origin_requests: [u64; 3],
    p2p_bytes: u64,
    http_bytes: u64,
    uploaded_bytes: u64,
    watch_seconds: f64,
    peer_seconds: f64,
    stalls: u64,
    stall_seconds: f64,
    startups: u64,
    startup_seconds: f64,
}

impl StreamFigures {
    fn add(&mut self, other: &Self) {
        for index in 0..3 {
            self.origin_bytes[index] += other.origin_bytes[index];
            self.origin_requests[index] += other.origin_requests[index];
        }
        self.p2p_bytes += other.p2p_bytes;
        self.http_bytes += other.http_bytes;
        self.uploaded_bytes += other.uploaded_bytes;
        self.watch_seconds += other.watch_seconds;
        self.peer_seconds += other.peer_seconds;
        self.stalls += other.stalls;
        self.stall_seconds += other.stall_seconds;
        self.startups += other.startups;
        self.startup_seconds += other.startup_seconds;
    }

    fn to_json(&self, stream: Option<&str>) -> Value {
        let [segment, playlist, other] = self.origin_bytes;
        let [segment_requests, playlist_requests, other_requests] = self.origin_requests;
        let received = self.p2p_bytes + self.http_bytes;
        let mut value = json!({
            "origin": {
                "bytes": segment + playlist + other,
                "segmentBytes": segment,
                "playlistBytes": playlist,
                "otherBytes": other,
                "requests": segment_requests + playlist_requests + other_requests,
                "segmentRequests": segment_requests,
                "playlistRequests": playlist_requests,
            },
            "reported": {
                "p2pBytes": self.p2p_bytes,
                "httpBytes": self.http_bytes,
                "uploadedBytes": self.uploaded_bytes,
                "p2pShare": if received == 0 { 0.0 } else { 100.0 * self.p2p_bytes as f64 / received as f64 },
                "watchSeconds": self.watch_seconds,
                "peerSeconds": self.peer_seconds,
                "stalls": self.stalls,
                "stallSeconds": self.stall_seconds,
                "startups": self.startups,
                "startupSeconds": self.startup_seconds,
            },
        });
        if let Some(stream) = stream {
            value["stream"] = Value::from(stream);
        }
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_top_level_directories() {
        assert_eq!(stream_of("/live.m3u8"), Some(ROOT_STREAM));
        assert_eq!(stream_of("seg_1.ts"), Some(ROOT_STREAM));
        assert_eq!(stream_of("/v0/seg_1.m4s"), Some("v0"));
        assert_eq!(stream_of("/ch1/v2/seg_1.m4s"), Some("ch1"));
        assert_eq!(stream_of("/"), None);
        assert_eq!(stream_of("/v0/"), None);
        assert_eq!(stream_of(""), None);
    }

    #[test]
    fn kinds_by_extension() {
        assert_eq!(Kind::of("/v0/live.M3U8"), Kind::Playlist);
        assert_eq!(Kind::of("/seg_1.ts"), Kind::Segment);
        assert_eq!(Kind::of("/init.mp4"), Kind::Segment);
        assert_eq!(Kind::of("/readme"), Kind::Other);
    }

    #[test]
    fn the_stream_table_folds_streams_beyond_its_cap_into_other() {
        let mut table = StreamTable::new(2);
        assert_eq!(table.lookup("a"), None, "unknown before it is served");
        assert_eq!(table.admit("a"), "a");
        assert_eq!(table.admit("b"), "b");
        assert_eq!(table.admit("a"), "a");
        assert_eq!(table.admit("c"), OTHER_STREAM);
        assert_eq!(table.names(), ["a", "b"]);
        assert_eq!(table.lookup("b").as_deref(), Some("b"));
        assert_eq!(table.lookup("zzz").as_deref(), Some(OTHER_STREAM));
    }

    #[test]
    fn the_history_keeps_the_last_samples() {
        let usage = Usage::new(1);
        for at in 0..HISTORY_SAMPLES + 5 {
            if let Some(bytes) = usage.hls_response("/seg.ts") {
                bytes.inc_by(10);
            }
            usage.record_sample(at as f64);
        }
        let history = usage.history_json();
        let history = history.as_array().expect("array");
        assert_eq!(history.len(), HISTORY_SAMPLES);
        assert_eq!(history[0][0], 5.0);
        assert_eq!(
            history[HISTORY_SAMPLES - 1][1],
            10 * (HISTORY_SAMPLES as u64 + 5)
        );
    }

    #[test]
    fn a_directory_named_other_cannot_take_a_slot() {
        let mut table = StreamTable::new(1);
        assert_eq!(table.admit(OTHER_STREAM), OTHER_STREAM);
        assert!(table.names().is_empty());
    }

    #[test]
    fn reports_and_hls_bytes_add_up_per_stream() {
        let usage = Usage::new(4);
        let bytes = usage.hls_response("/live.m3u8").expect("a file");
        bytes.inc_by(100);
        let segment = usage.hls_response("/seg_1.ts").expect("a file");
        segment.inc_by(1000);
        assert!(usage.hls_response("/").is_none());
        let stream = usage.report_stream("/live.m3u8").expect("known");
        let report = Accepted {
            p2p_bytes: 3000,
            http_bytes: 1000,
            uploaded_bytes: 500,
            seconds: 10.0,
            peer_seconds: 20.0,
            stalls: 1,
            stall_seconds: 0.5,
            startup_seconds: Some(1.5),
        };
        usage.add_report(stream, &report);
        assert_eq!(usage.report_stream("/v9/live.m3u8"), None, "never served");
        let snapshot = usage.snapshot();
        let total = &snapshot["total"];
        assert_eq!(total["origin"]["bytes"], 1100);
        assert_eq!(total["origin"]["segmentBytes"], 1000);
        assert_eq!(total["origin"]["playlistBytes"], 100);
        assert_eq!(total["origin"]["requests"], 2);
        assert_eq!(total["reported"]["p2pBytes"], 3000);
        assert_eq!(total["reported"]["httpBytes"], 1000);
        assert_eq!(total["reported"]["p2pShare"], 75.0);
        assert_eq!(total["reported"]["startups"], 1);
        assert_eq!(snapshot["streams"][0]["stream"], ROOT_STREAM);
        assert_eq!(snapshot["reports"]["accepted"], 1);
        let mut text = String::new();
        usage.render_into(&mut text);
        assert!(
            text.contains(r#"hls_bytes_total{stream="/",kind="segment"} 1000"#),
            "{text}"
        );
        assert!(
            text.contains(r#"p2p_viewer_bytes_total{stream="/",source="p2p"} 3000"#),
            "{text}"
        );
    }
}
