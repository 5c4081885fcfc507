// Real-browser test: several Chromium viewers watch the live test card through our server
// and share its segments over WebRTC, signalled by our tracker, with STUN from coturn.
// Before they leave, each sends its last report, and the savings dashboard is opened in
// Chromium too: its figures must agree with what the viewers say about themselves, and the
// origin bytes the server counted with the HTTP bytes the viewers received.
// Then the same viewing through nginx in front of two instances clustered over NATS.
// Run with ./run.sh (installs what is missing). Knobs: VIEWERS (default 4),
// WATCH_SECONDS (default 90, after the last join), STAGGER_SECONDS (default 4),
// ARTIFACTS_DIR (where the dashboard screenshot goes; default target/browser-artifacts);
// run one case alone with `--test-name-pattern=cluster` (or `--test-name-pattern=^[0-9]`).

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { after, before, test } from "node:test";
import { Harness, REPO, formatTable, getJson, watchSession, within } from "./harness.js";

const VIEWERS = Number(process.env.VIEWERS || 4);
const WATCH_SECONDS = Number(process.env.WATCH_SECONDS || 90);
const STAGGER_SECONDS = Number(process.env.STAGGER_SECONDS || 4);

/** With one HTTP fetch per segment the share cannot exceed (N-1)/N: 75 % for 4 viewers. */
const MIN_P2P_SHARE = 50;
const MAX_STALL_SECONDS = 2;
/** A playing viewer's position must keep up with the wall clock (allowing for start-up jitter). */
const MIN_PLAYBACK_RATE = 0.75;

const ARTIFACTS_DIR = process.env.ARTIFACTS_DIR || path.join(REPO, "target/browser-artifacts");
/**
 * The viewers' own byte counts against the dashboard's sums of their reports: each page
 * reads its own figures right after its last report was answered, so only what arrived
 * during that round trip differs.
 */
const OWN_FIGURES_TOLERANCE = 0.02;
/**
 * Origin segment bytes against the viewers' HTTP bytes: viewers keep loading while the
 * figures are read one after the other, so the server's count must lie between the sum
 * read before it and the sum read after it, give or take this share and one segment.
 */
const ORIGIN_TOLERANCE = 0.05;
const SEGMENT_BYTES = 250_000;

const harness = new Harness({ log: (line) => console.log(`# ${line}`) });
/** Subtests that passed; the temp dir (logs) is removed only when all of them did. */
let checksPassed = 0;
/** The single-instance case's checks, then the cluster case's (when it runs). */
const CHECKS = 9;
const CLUSTER_CHECKS = 7;
/** The cluster case needs our binary, and nginx and NATS of its own. */
const CLUSTER_SKIP = process.env.PAGE_URL || process.env.TRACKER_URL
  ? "PAGE_URL/TRACKER_URL: the cluster case starts its own instances" : false;
let clusterRan = false;

const sum = (rows, key) => rows.reduce((total, row) => total + row[key], 0);

async function dashboardJson() {
  const response = await fetch(`${harness.baseUrl}/dashboard.json`);
  assert.equal(response.status, 200, "GET /dashboard.json");
  return response.json();
}

/**
 * While the viewers are still open: stop their report timers, have each send its last
 * report, read their own figures around the server's, and open the dashboard in Chromium.
 */
async function finalFigures(viewers) {
  // The dashboard first, while reports still come in every 10 s: its rates need them.
  const page = await harness.openPage("dashboard", "/dashboard");
  await within(40_000, "dashboard: 8 refreshes", page.page.waitForFunction(
    () => window.dashboard?.refreshes >= 8, null, { polling: 500, timeout: 40_000 }));
  const shown = await page.page.evaluate(() => ({
    data: window.dashboard.data,
    text: Object.fromEntries(["viewers", "originRate", "audienceRate", "share", "saved"]
      .map((id) => [id, document.getElementById(id).textContent])),
    streamRows: document.querySelectorAll("#streams tr").length,
    swarmRows: document.querySelectorAll("#swarms tr").length,
  }));
  fs.mkdirSync(ARTIFACTS_DIR, { recursive: true });
  const screenshot = path.join(ARTIFACTS_DIR, "dashboard.png");
  await page.page.screenshot({ path: screenshot, fullPage: true });

  // Then every viewer's last report, with the timers stopped so that nothing else arrives.
  const finals = [];
  for (const viewer of viewers) {
    const final = await within(20_000, `${viewer.name}: last report`, viewer.page.evaluate(async () => {
      const reporter = window.p2pReporter;
      if (!reporter) return null;
      reporter.stop();
      if (reporter.inFlight) await reporter.inFlight;
      const status = await reporter.flush();
      return { status, acknowledged: { ...window.p2pReport }, own: { ...window.p2pStats } };
    }));
    assert.ok(final, `${viewer.name} has no reporter (is reportPath in /config.json?)`);
    finals.push({ name: viewer.name, ...final });
  }
  const ownBefore = (await Promise.all(viewers.map((v) => Harness.readStats(v)))).filter(Boolean);
  const server = await dashboardJson();
  const ownAfter = (await Promise.all(viewers.map((v) => Harness.readStats(v)))).filter(Boolean);
  return { finals, ownBefore, ownAfter, server, shown, screenshot };
}

before(async () => {
  // Below 4 viewers the ceiling (N-1)/N leaves too little room above MIN_P2P_SHARE.
  assert.ok(VIEWERS >= 4, `VIEWERS=${VIEWERS}: the test needs at least 4 viewers`);
  await harness.startTestCard(process.env.HLS_DIR || undefined);
  await harness.startStun(process.env.STUN_PORT ? Number(process.env.STUN_PORT) : undefined);
  await harness.startServer();
}, { timeout: 120_000 });

after(async () => {
  await harness.cleanup({ passed: checksPassed === CHECKS + (clusterRan ? CLUSTER_CHECKS : 0) });
});

test(`${VIEWERS} Chromium viewers share the live stream over P2P`, {
  timeout: (STAGGER_SECONDS * VIEWERS + WATCH_SECONDS + 120) * 1000,
}, async (t) => {
  const session = await watchSession(harness, {
    count: VIEWERS,
    watchSeconds: WATCH_SECONDS,
    staggerSeconds: STAGGER_SECONDS,
    beforeClose: finalFigures,
  });
  console.log(formatTable(session));
  console.log(`# P2P share over all viewers: ${session.p2pShare.toFixed(1)} % ` +
    `(ceiling with one HTTP fetch per segment: ${session.ceiling.toFixed(1)} %)`);

  await playShareAndStallChecks(t, session);

  const { finals, ownBefore, ownAfter, server, shown, screenshot } = session.extra;
  const acknowledged = finals.map((final) => final.acknowledged);
  const reported = server.usage.total.reported;
  const origin = server.usage.total.origin;
  const mb = (bytes) => (bytes / 1e6).toFixed(3);
  console.log(`# dashboard: P2P ${mb(reported.p2pBytes)} MB, HTTP ${mb(reported.httpBytes)} MB reported ` +
    `(${reported.p2pShare.toFixed(1)} % P2P), origin segments ${mb(origin.segmentBytes)} MB, ` +
    `playlists ${mb(origin.playlistBytes)} MB; reports ${JSON.stringify(server.usage.reports)}`);
  console.log(`# viewers: acknowledged P2P ${mb(sum(acknowledged, "p2pBytes"))} MB, HTTP ${mb(sum(acknowledged, "httpBytes"))} MB; ` +
    `own P2P ${mb(sum(finals.map((f) => f.own), "p2pBytes"))} MB, own HTTP ${mb(sum(ownBefore, "httpBytes"))}..${mb(sum(ownAfter, "httpBytes"))} MB`);
  console.log(`# dashboard page: ${JSON.stringify(shown.text)}; screenshot ${screenshot}`);

  await t.test("every viewer's reports were accepted", () => {
    for (const final of finals) {
      assert.equal(final.status, 204, `${final.name}: last report answered ${final.status}`);
      assert.ok(final.acknowledged.reports >= 2, `${final.name}: ${final.acknowledged.reports} reports accepted`);
      assert.equal(final.acknowledged.refused, 0, `${final.name}: ${final.acknowledged.refused} reports refused`);
    }
    assert.equal(server.usage.reports.accepted, sum(acknowledged, "reports"), "accepted reports");
    checksPassed += 1;
  });

  await t.test("the dashboard's figures agree with what the viewers report themselves", () => {
    // The server sums exactly what it accepted.
    assert.equal(reported.p2pBytes, sum(acknowledged, "p2pBytes"), "P2P bytes: server vs acknowledged");
    assert.equal(reported.httpBytes, sum(acknowledged, "httpBytes"), "HTTP bytes: server vs acknowledged");
    assert.equal(reported.uploadedBytes, sum(acknowledged, "uploadBytes"), "uploaded bytes");
    assert.equal(reported.stalls, sum(acknowledged, "stalls"), "stalls");
    assert.equal(reported.startups, VIEWERS, "one start-up time per viewer");
    // And what they accepted is what the viewers count themselves.
    for (const key of ["p2pBytes", "httpBytes"]) {
      const own = sum(finals.map((final) => final.own), key);
      assert.ok(Math.abs(reported[key] - own) <= OWN_FIGURES_TOLERANCE * own,
        `${key}: dashboard ${reported[key]}, viewers' own ${own}`);
    }
    const swarm = server.swarms[0];
    assert.equal(swarm?.peers, VIEWERS, `largest swarm: ${JSON.stringify(server.swarms)}`);
    checksPassed += 1;
  });

  await t.test("the origin bytes the server counted match the HTTP bytes the viewers received", () => {
    const low = sum(ownBefore, "httpBytes") * (1 - ORIGIN_TOLERANCE) - SEGMENT_BYTES;
    const high = sum(ownAfter, "httpBytes") * (1 + ORIGIN_TOLERANCE) + SEGMENT_BYTES;
    assert.ok(origin.segmentBytes >= low && origin.segmentBytes <= high,
      `origin segment bytes ${origin.segmentBytes} outside [${Math.round(low)}, ${Math.round(high)}]`);
    checksPassed += 1;
  });

  await t.test("the dashboard opens in Chromium and shows non-zero figures", () => {
    const total = shown.data.usage.total;
    assert.ok(total.reported.p2pBytes > 0 && total.origin.segmentBytes > 0, JSON.stringify(total));
    assert.equal(shown.data.tracker.peers, VIEWERS, "viewers shown");
    assert.ok(shown.streamRows >= 1, "no stream row");
    assert.ok(shown.swarmRows >= 1, "no swarm row");
    for (const [id, text] of Object.entries(shown.text)) {
      assert.ok(text !== "–" && text !== "" && !/^0(\.0)? (B|%)/.test(text), `#${id} shows ${JSON.stringify(text)}`);
    }
    assert.ok(fs.statSync(screenshot).size > 10_000, "screenshot written");
    checksPassed += 1;
  });

  await t.test("coturn served STUN binding requests", () => {
    const sessions = harness.stunSessions();
    console.log(`# coturn: ${sessions.length} STUN sessions with binding requests answered`);
    assert.ok(sessions.length > 0, `no STUN session with rp>0 and sp>0 in ${harness.stun.logPath}`);
    checksPassed += 1;
  });

});

/** The WebSocket connections an instance holds, from its /stats.json (null if it does not answer). */
async function webSockets(baseUrl) {
  const stats = await getJson(`${baseUrl}/stats.json`);
  return stats ? stats.servers.reduce((sum, server) => sum + server.webSocketsCount, 0) : null;
}

test(`cluster: ${VIEWERS} viewers through nginx in front of two instances clustered over NATS`, {
  skip: CLUSTER_SKIP,
  timeout: (STAGGER_SECONDS * VIEWERS + WATCH_SECONDS + 180) * 1000,
}, async (t) => {
  clusterRan = true;
  const nats = await harness.startNats();
  // The production heartbeat and expiry (1 s, 3 s): the instances see each other in a second.
  const instances = [];
  for (const name of ["instance1", "instance2"]) {
    const { baseUrl } = await harness.spawnServer(name, {
      TRACKER__CLUSTER__NATS_URLS: nats,
      TRACKER__CLUSTER__INSTANCE_ID: `browser-${name}`,
      // Believe nginx's X-Forwarded-For, as a deployment would.
      TRACKER__SERVER__TRUSTED_PROXIES: "127.0.0.1/32",
    });
    instances.push(baseUrl);
  }
  let views = [];
  const deadline = Date.now() + 20_000;
  for (;;) {
    views = await Promise.all(instances.map(async (url) => (await getJson(`${url}/stats.json`))?.cluster ?? null));
    const ids = views.map((view) => view?.instance).sort();
    if (views.every((view) => view?.busUp && JSON.stringify([...view.instances].sort()) === JSON.stringify(ids))) break;
    assert.ok(Date.now() < deadline, `the two instances did not see each other on the bus within 20 s: ${JSON.stringify(views)}`);
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  harness.log(`cluster: instances ${views.map((view) => view.instance).join(", ")} up on ${nats}`);
  harness.baseUrl = await harness.startNginx(instances);

  // Each instance's WebSockets, sampled while the viewers watch; kept: the sample with the most
  // viewers' sockets (all of them, once every viewer is in).
  let spread = null;
  const session = await watchSession(harness, {
    count: VIEWERS,
    watchSeconds: WATCH_SECONDS,
    staggerSeconds: STAGGER_SECONDS,
    onSample: async () => {
      const counts = await Promise.all(instances.map(webSockets));
      if (counts.includes(null)) return;
      const total = counts.reduce((a, b) => a + b, 0);
      if (!spread || total > spread.total || (total === spread.total && Math.min(...counts) > Math.min(...spread.counts))) {
        spread = { total, counts };
      }
    },
  });
  views = await Promise.all(instances.map(async (url) => (await getJson(`${url}/stats.json`))?.cluster ?? null));
  console.log(formatTable(session));
  console.log(`# cluster: P2P share over all viewers: ${session.p2pShare.toFixed(1)} % ` +
    `(ceiling with one HTTP fetch per segment: ${session.ceiling.toFixed(1)} %)`);
  console.log(`# cluster: viewers' WebSockets per instance: ${JSON.stringify(spread?.counts)}; ` +
    views.map((view, i) => `instance${i + 1} forwarded ${JSON.stringify(view?.forwarded)}`).join("; "));

  await t.test("both instances hold viewers' tracker WebSockets", () => {
    assert.ok(spread, "no instance answered /stats.json during the session");
    assert.equal(spread.total, VIEWERS, `the instances never held one WebSocket per viewer: ${JSON.stringify(spread)}`);
    assert.ok(spread.counts.every((count) => count > 0),
      `nginx put every viewer's WebSocket on one instance: ${JSON.stringify(spread.counts)} (see ${harness.nginxAccessLog})`);
    checksPassed += 1;
  });

  await t.test("viewers meet viewers on the other instance", () => {
    // Without the cluster a viewer could only meet the other viewers on its own instance: an
    // instance holding c viewers' sockets gives each at most c - 1 peers, so the viewers' peak
    // peers could add up to sum(c * (c - 1)) at most (4 with 2 + 2 viewers; 12 is everyone
    // meeting everyone).
    const sameInstance = spread.counts.reduce((sum, c) => sum + c * (c - 1), 0);
    const peaks = session.rows.map((row) => row.peakPeers);
    const total = peaks.reduce((a, b) => a + b, 0);
    assert.ok(total > sameInstance,
      `the viewers' peak peers (${peaks.join(" + ")} = ${total}) are no more than viewers on the same instance ` +
      `could give each other (${sameInstance}; WebSockets per instance: ${JSON.stringify(spread.counts)})`);
    checksPassed += 1;
  });

  await t.test("the signalling crossed the bus", () => {
    assert.ok(views.every(Boolean), "an instance has no cluster section in /stats.json");
    const total = (field, kind) => views.reduce((sum, view) => sum + (view[field][kind] ?? 0), 0);
    assert.ok(total("forwarded", "announce") > 0, "no announce was forwarded to the swarm's owner");
    assert.ok(total("handled", "announce") > 0, "no instance handled a forwarded announce");
    assert.ok(total("forwarded", "deliver") > 0, "no offer or answer was delivered over the bus");
    checksPassed += 1;
  });

  await playShareAndStallChecks(t, session);
});

/** Whether every viewer played, found a peer, got its share over P2P and never stalled. */
async function playShareAndStallChecks(t, session) {
  await t.test("every viewer plays", () => {
    for (const row of session.rows) {
      assert.ok(row.started, `${row.name} never started playing`);
      assert.ok(row.advancedSeconds >= MIN_PLAYBACK_RATE * row.watchedSeconds,
        `${row.name} advanced ${row.advancedSeconds.toFixed(1)} s in ${row.watchedSeconds.toFixed(1)} s of wall time`);
    }
    checksPassed += 1;
  });

  await t.test("viewers connect to each other through the tracker", () => {
    for (const row of session.rows) {
      assert.ok(row.peakPeers > 0, `${row.name} never had a peer (tracker errors: ${row.trackerErrors}` +
        `${row.lastTrackerError ? `, last: ${row.lastTrackerError}` : ""})`);
    }
    checksPassed += 1;
  });

  await t.test(`P2P share of segment bytes is at least ${MIN_P2P_SHARE} %`, () => {
    assert.ok(session.p2pBytes + session.httpBytes > 0, "no segment bytes at all");
    assert.ok(session.p2pShare >= MIN_P2P_SHARE, `P2P share ${session.p2pShare.toFixed(1)} %`);
    checksPassed += 1;
  });

  await t.test(`no viewer stalls more than ${MAX_STALL_SECONDS} s after it started`, () => {
    for (const row of session.rows) {
      assert.ok(row.stallSeconds <= MAX_STALL_SECONDS,
        `${row.name} stalled ${row.stallCount} times, ${row.stallSeconds.toFixed(1)} s in total`);
    }
    checksPassed += 1;
  });
}
