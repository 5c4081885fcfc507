// Where the player gets its settings from: the server's /config.json, then query
// parameters of the page URL (for tests and the benchmark).

/**
 * Player settings that bring the P2P share of a live stream close to its ceiling (N-1)/N,
 * one HTTP fetch per segment for the whole swarm; figures in docs/p2p-share.md.
 *
 * How P2P Media Loader 2.3 decides (its time windows are in seconds ahead of the playhead):
 * a segment inside the high-demand window that is not stored yet is fetched over HTTP at
 * once, by every viewer that gets there before a peer's copy arrives. Before that, a viewer
 * only takes it from a peer, or, every 1 to 1 + (peers) seconds, fetches at random one of
 * the segments in its HTTP window that no peer has or is loading, with a probability of
 * 1/(peers + 1); over the whole swarm that is one fetch per (N + 1)/2 seconds on average.
 * So a new segment must be picked at random before it reaches anyone's high-demand window,
 * or several viewers fetch it over HTTP at once. The time it has is the distance to the
 * live edge, less one segment and the high-demand window.
 */
export const DEFAULT_TUNING = {
  // hls.js: play 10 segments (20 s with 2 s segments) behind the live edge. 7 left a new
  // segment about 7 s to be picked; with 6 or 8 viewers 7 or 8 of about 43 segments were
  // not, and were fetched over HTTP by several viewers at once. 10 leaves about 13 s. Costs 6 s more latency, and needs a playlist of
  // at least 12 segments (the viewer must stay inside its window; our test card has 12).
  liveSyncDurationCount: 10,
  // P2P Media Loader: the HTTP fallback margin. Kept at 4 s (the library's default is 15):
  // a slow peer's transfer is abandoned for HTTP when its segment comes this close, and
  // hls.js buffers only this much (the P2P engine lowers hls.js's maxBufferLength to it).
  highDemandTimeWindow: 4,
  // Random HTTP fetches may take any segment up to the live edge (18 s ahead of the
  // playhead at 20 s behind it), so that a new segment is a candidate as soon as it appears.
  httpDownloadTimeWindow: 18,
  // P2P reaches a little further than HTTP, so a peer's copy is always worth taking.
  p2pDownloadTimeWindow: 20,
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
