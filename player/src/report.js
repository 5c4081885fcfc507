// Viewer reports: every REPORT_INTERVAL_MS, and when the page is hidden or left, the player
// POSTs what it received, uploaded and suffered since its previous report to the server's
// report endpoint (format: docs/reports.md). Deltas only, no identity; the server sums them
// per stream for its dashboard and metrics.

const REPORT_INTERVAL_MS = 10_000;

/**
 * Sends the deltas of a ViewerStats' figures. `acknowledged` (also window.p2pReport) holds
 * the totals the server accepted, so a page (or a test) can compare them with what the
 * server shows: p2pBytes, httpBytes, uploadBytes, stalls, stallMs, startups, reports
 * (accepted), refused, lastStatus.
 */
export class Reporter {
  constructor(stats, { endpoint, streamUrl }) {
    this.stats = stats;
    this.endpoint = endpoint;
    this.stream = new URL(streamUrl, location.href).href;
    this.sent = { p2pBytes: 0, httpBytes: 0, uploadBytes: 0, stalls: 0, stallMs: 0, at: 0, startupSent: false };
    this.inFlight = null;
    this.acknowledged = {
      p2pBytes: 0, httpBytes: 0, uploadBytes: 0, stalls: 0, stallMs: 0, startups: 0,
      reports: 0, refused: 0, lastStatus: null,
    };
  }

  /** Starts the timer and the page-hide hooks. */
  start() {
    this.timer = setInterval(() => this.flush(), REPORT_INTERVAL_MS);
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "hidden") this.flush();
    });
    window.addEventListener("pagehide", () => this.flush());
  }

  /** Stops the timer (the page-hide hooks stay). */
  stop() {
    clearInterval(this.timer);
  }

  /** The report for everything since the last one sent, and the baseline it moves to. */
  next() {
    const f = this.stats.figures;
    const now = Math.round(performance.now());
    const stallMs = Math.round(f.stallSeconds * 1000);
    const baseline = {
      p2pBytes: f.p2pBytes, httpBytes: f.httpBytes, uploadBytes: f.uploadBytes,
      stalls: f.stallCount, stallMs, at: now, startupSent: this.sent.startupSent || f.firstPlayAt !== null,
    };
    const report = {
      v: 1,
      stream: this.stream,
      ms: Math.max(0, now - this.sent.at),
      p2p: f.p2pBytes - this.sent.p2pBytes,
      http: f.httpBytes - this.sent.httpBytes,
      up: f.uploadBytes - this.sent.uploadBytes,
      stalls: f.stallCount - this.sent.stalls,
      stallMs: Math.max(0, Math.min(stallMs - this.sent.stallMs, now - this.sent.at)),
      peers: f.peers,
    };
    if (!this.sent.startupSent && f.firstPlayAt !== null) report.startupMs = Math.round(f.firstPlayAt);
    return { report, baseline };
  }

  /** Sends one report now (one at a time); resolves with the HTTP status, or null. */
  async flush() {
    if (this.inFlight) return this.inFlight;
    const { report, baseline } = this.next();
    const previous = this.sent;
    // Move the baseline at once, so that a report sent meanwhile (page hide) does not
    // count the same bytes twice; a refused report is folded back into the next one.
    this.sent = baseline;
    this.inFlight = (async () => {
      try {
        const response = await fetch(this.endpoint, {
          method: "POST",
          body: JSON.stringify(report),
          headers: { "Content-Type": "application/json" },
          keepalive: true,
          cache: "no-store",
        });
        this.acknowledged.lastStatus = response.status;
        if (response.ok) {
          const a = this.acknowledged;
          a.p2pBytes += report.p2p; a.httpBytes += report.http; a.uploadBytes += report.up;
          a.stalls += report.stalls; a.stallMs += report.stallMs; a.reports += 1;
          if (report.startupMs !== undefined) a.startups += 1;
        } else {
          this.acknowledged.refused += 1;
          // 4xx other than 429 will not get better by resending: drop it. Otherwise retry
          // with the next report (the interval grows with it, so it stays plausible).
          if (response.status === 429 || response.status >= 500) this.rollBack(previous);
          console.warn(`report refused: HTTP ${response.status} ${await response.text()}`);
        }
        return response.status;
      } catch (err) {
        this.acknowledged.lastStatus = null;
        this.rollBack(previous);
        console.warn("report not sent:", err);
        return null;
      } finally {
        this.inFlight = null;
      }
    })();
    return this.inFlight;
  }

  /** Folds a report that did not count back into the next one (keeping the time base). */
  rollBack(previous) {
    this.sent = previous;
  }
}
