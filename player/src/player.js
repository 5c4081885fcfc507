// Entry point of the web player: hls.js with P2P Media Loader v2, live figures on the page
// and in window.p2pStats.

import Hls from "hls.js";
import { HlsJsP2PEngine } from "p2p-media-loader-hlsjs";
import { loadPlayerConfig } from "./config.js";
import { ViewerStats } from "./stats.js";
import { drawChart } from "./chart.js";
import { formatBytes } from "./format.js";
import { Reporter } from "./report.js";

const $ = (id) => document.getElementById(id);

function setStatus(text, isError = false) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", isError);
  status.hidden = !text;
}

function createPlayer(video, config, stats) {
  const HlsWithP2P = HlsJsP2PEngine.injectMixin(Hls);
  const { liveSyncDurationCount, ...windows } = config.tuning;
  const hls = new HlsWithP2P({
    liveSyncDurationCount,
    p2p: {
      core: {
        announceTrackers: [config.trackerUrl],
        // Always set: the library's defaults point at public STUN servers.
        rtcConfig: { iceServers: config.iceServers },
        swarmId: config.swarmId,
        isP2PDisabled: config.p2pDisabled,
        ...windows,
      },
      onHlsJsCreated(hlsInstance) {
        const engine = hlsInstance.p2pEngine;
        engine.addEventListener("onChunkDownloaded", (bytes, source) => stats.chunk(bytes, source));
        engine.addEventListener("onChunkUploaded", (bytes) => stats.upload(bytes));
        engine.addEventListener("onSegmentLoaded", () => stats.segmentLoaded());
        engine.addEventListener("onPeerConnect", ({ peerId }) => stats.peerConnected(peerId));
        engine.addEventListener("onPeerClose", ({ peerId }) => stats.peerClosed(peerId));
        engine.addEventListener("onTrackerError", ({ error }) => {
          stats.trackerError(error);
          console.warn("tracker error:", error);
        });
      },
    },
  });

  hls.on(Hls.Events.ERROR, (_event, data) => {
    if (!data.fatal) return;
    console.error("hls.js fatal error:", data);
    setStatus(`Playback error (${data.details}), retrying…`, true);
    if (data.type === Hls.ErrorTypes.MEDIA_ERROR) hls.recoverMediaError();
    else hls.startLoad();
  });
  hls.loadSource(config.streamUrl);
  hls.attachMedia(video);
  return hls;
}

function render(stats, canvas) {
  const f = stats.figures;
  const total = f.p2pBytes + f.httpBytes;
  $("p2pShare").textContent = total ? f.p2pShare.toFixed(1) : "–";
  $("shareBar").style.width = `${f.p2pShare}%`;
  $("p2pBytes").textContent = formatBytes(f.p2pBytes);
  $("httpBytes").textContent = formatBytes(f.httpBytes);
  $("uploadBytes").textContent = formatBytes(f.uploadBytes);
  $("peers").textContent = f.peers;
  $("segments").textContent = f.segments;
  $("stalls").textContent = `${f.stallCount} · ${f.stallSeconds.toFixed(1)} s`;
  $("latency").textContent = f.latency === null ? "–" : `${f.latency.toFixed(1)} s`;
  $("trackerErrors").textContent = f.trackerErrors;
  $("trackerErrors").title = f.lastTrackerError ?? "";
  drawChart(canvas, stats.samples);
}

async function main() {
  const video = $("video");
  const stats = new ViewerStats();
  window.p2pStats = stats.figures;
  stats.watch(video);

  if (!Hls.isSupported()) {
    setStatus("This browser cannot play HLS with Media Source Extensions.", true);
    return;
  }
  const config = await loadPlayerConfig();
  window.p2pConfig = config;
  $("trackerUrl").textContent = config.p2pDisabled ? "P2P disabled" : config.trackerUrl;
  $("streamUrl").textContent = config.streamUrl;
  $("settings").textContent = Object.entries(config.tuning)
    .map(([key, value]) => `${key}=${value}`)
    .join(" ");

  const hls = createPlayer(video, config, stats);
  // Reports to the server (docs/reports.md), when it takes them and plays its own stream.
  if (config.reportPath && new URL(config.streamUrl, location.href).origin === location.origin) {
    const reporter = new Reporter(stats, { endpoint: config.reportPath, streamUrl: config.streamUrl });
    window.p2pReporter = reporter;
    window.p2pReport = reporter.acknowledged;
    reporter.start();
  }
  video.addEventListener("playing", () => setStatus(""));
  video.addEventListener("waiting", () => setStatus("Buffering…"));
  video.play().catch(() => setStatus("Press play to start."));

  const canvas = $("chart");
  setInterval(() => {
    stats.tick(video, hls.latency);
    render(stats, canvas);
  }, 1000);
}

main().catch((err) => {
  console.error(err);
  setStatus(`Player failed to start: ${err.message}`, true);
});
