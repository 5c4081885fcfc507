// Live figures for one viewer: what the page shows and what scripts read as window.p2pStats.

/**
 * Counts bytes by source, peers, segments and stalls. `figures` is one object updated in
 * place, so a script can keep a reference to window.p2pStats and read it at any time:
 *   p2pBytes, httpBytes    segment bytes received over P2P / HTTP
 *   p2pShare               p2pBytes / (p2pBytes + httpBytes) in percent (0 before any byte)
 *   uploadBytes            segment bytes sent to other peers
 *   peers                  WebRTC peers connected right now
 *   segments               segments loaded (any source)
 *   stallCount, stallSeconds  rebuffering after the first `playing` event, ongoing stall included
 *   currentTime, playing   the video element's position and whether it is advancing
 *   trackerErrors          tracker errors reported by P2P Media Loader (lastTrackerError: text)
 */
export class ViewerStats {
  constructor() {
    this.figures = {
      p2pBytes: 0,
      httpBytes: 0,
      p2pShare: 0,
      uploadBytes: 0,
      peers: 0,
      segments: 0,
      stallCount: 0,
      stallSeconds: 0,
      currentTime: 0,
      playing: false,
      trackerErrors: 0,
      lastTrackerError: null,
      firstPlayAt: null, // ms since page load when playback first started
      latency: null, // seconds behind the live edge
    };
    this.peerIds = new Set();
    this.stallStartedAt = null; // performance.now() of the ongoing stall, if any
    this.finishedStallMs = 0;
    /** Cumulative bytes sampled once a second for the chart: {t, p2p, http}. */
    this.samples = [];
  }

  chunk(bytes, source) {
    if (source === "p2p") this.figures.p2pBytes += bytes;
    else this.figures.httpBytes += bytes;
    const total = this.figures.p2pBytes + this.figures.httpBytes;
    this.figures.p2pShare = total ? (100 * this.figures.p2pBytes) / total : 0;
  }

  upload(bytes) {
    this.figures.uploadBytes += bytes;
  }

  segmentLoaded() {
    this.figures.segments += 1;
  }

  peerConnected(peerId) {
    this.peerIds.add(peerId);
    this.figures.peers = this.peerIds.size;
  }

  peerClosed(peerId) {
    this.peerIds.delete(peerId);
    this.figures.peers = this.peerIds.size;
  }

  trackerError(error) {
    this.figures.trackerErrors += 1;
    this.figures.lastTrackerError = String(error?.message ?? error);
  }

  /** Wires the stall clock to the video element. Only waits after the first play count. */
  watch(video) {
    video.addEventListener("playing", () => {
      if (this.figures.firstPlayAt === null) this.figures.firstPlayAt = performance.now();
      this.endStall();
    });
    video.addEventListener("waiting", () => {
      if (this.figures.firstPlayAt === null || this.stallStartedAt !== null) return;
      this.stallStartedAt = performance.now();
      this.figures.stallCount += 1;
    });
    video.addEventListener("pause", () => this.endStall());
  }

  endStall() {
    if (this.stallStartedAt === null) return;
    this.finishedStallMs += performance.now() - this.stallStartedAt;
    this.stallStartedAt = null;
  }

  /** Refreshes the time-dependent figures; called on a timer. */
  tick(video, latency) {
    const now = performance.now();
    const ongoing = this.stallStartedAt === null ? 0 : now - this.stallStartedAt;
    const f = this.figures;
    f.stallSeconds = (this.finishedStallMs + ongoing) / 1000;
    f.currentTime = video.currentTime;
    f.playing =
      f.firstPlayAt !== null && !video.paused && this.stallStartedAt === null && video.readyState > 2;
    f.latency = Number.isFinite(latency) ? latency : null;
    this.samples.push({ t: now / 1000, p2p: f.p2pBytes, http: f.httpBytes });
    if (this.samples.length > 600) this.samples.shift();
  }
}
