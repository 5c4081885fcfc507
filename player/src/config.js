// Where the player gets its settings from: the server's /config.json, then query
// parameters of the page URL (for tests and the benchmark).

/** Player settings that raise the P2P share of a live stream (see docs/p2p-share.md).
 * P2P Media Loader's time windows are in seconds; its defaults (httpDownloadTimeWindow 3000)
 * make every viewer at the live edge fetch every new segment over HTTP itself. Sitting
 * 7 segments behind the edge and keeping the HTTP window well behind the P2P window means
 * each new segment is fetched over HTTP by one viewer and over P2P by the rest. */
export const DEFAULT_TUNING = {
  liveSyncDurationCount: 7, // hls.js: segments behind the live edge
  highDemandTimeWindow: 4, // P2P Media Loader (seconds ahead of the playhead)
  httpDownloadTimeWindow: 12,
  p2pDownloadTimeWindow: 14,
};

/** Used when /config.json cannot be fetched; the same shape the server returns. */
const FALLBACK_SERVER_CONFIG = {
  announcePath: "/announce",
  iceServers: [],
  streamUrl: "/hls/live.m3u8",
};

async function fetchServerConfig() {
  try {
    const response = await fetch("/config.json", { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    return { ...FALLBACK_SERVER_CONFIG, ...(await response.json()) };
  } catch (err) {
    console.warn("config.json unavailable, using defaults:", err);
    return FALLBACK_SERVER_CONFIG;
  }
}

/** The tracker lives on the page's own origin: ws:// or wss:// to match http:// or https://. */
function trackerUrlFor(announcePath) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}${announcePath}`;
}

/** Numeric tuning values from the query string; anything missing or not a number keeps its default. */
function tuningFrom(params) {
  const tuning = { ...DEFAULT_TUNING };
  for (const key of Object.keys(tuning)) {
    const value = Number(params.get(key));
    if (params.has(key) && Number.isFinite(value)) tuning[key] = value;
  }
  return tuning;
}

/**
 * Everything the player needs to start.
 * Query parameters: `src` (stream URL), `tracker` (tracker URL), `p2p=0` (HTTP only),
 * and the keys of DEFAULT_TUNING.
 */
export async function loadPlayerConfig() {
  const params = new URLSearchParams(location.search);
  const server = await fetchServerConfig();
  return {
    streamUrl: params.get("src") || server.streamUrl,
    trackerUrl: params.get("tracker") || trackerUrlFor(server.announcePath),
    iceServers: server.iceServers ?? [],
    swarmId: server.swarmId,
    p2pDisabled: params.get("p2p") === "0",
    // Where to send viewer reports; absent when the server does not take them.
    reportPath: server.reportPath,
    tuning: tuningFrom(params),
  };
}
