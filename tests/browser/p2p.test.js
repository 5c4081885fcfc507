// Real-browser test: several Chromium viewers watch the live test card through our server
// and share its segments over WebRTC, signalled by our tracker, with STUN from coturn.
// Then the same through nginx in front of two instances clustered over NATS.
// Run with ./run.sh (installs what is missing). Knobs: VIEWERS (default 4),
// WATCH_SECONDS (default 90, after the last join), STAGGER_SECONDS (default 4); run one
// case alone with `--test-name-pattern=cluster` (or `--test-name-pattern=^[0-9]`).

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Harness, formatTable, getJson, watchSession } from "./harness.js";

const VIEWERS = Number(process.env.VIEWERS || 4);
const WATCH_SECONDS = Number(process.env.WATCH_SECONDS || 90);
const STAGGER_SECONDS = Number(process.env.STAGGER_SECONDS || 4);

/** With one HTTP fetch per segment the share cannot exceed (N-1)/N: 75 % for 4 viewers. */
const MIN_P2P_SHARE = 50;
const MAX_STALL_SECONDS = 2;
/** A playing viewer's position must keep up with the wall clock (allowing for start-up jitter). */
const MIN_PLAYBACK_RATE = 0.75;

const harness = new Harness({ log: (line) => console.log(`# ${line}`) });
/** Subtests that passed; the temp dir (logs) is removed only when all of them did. */
let checksPassed = 0;
/** The single-instance case's checks, then the cluster case's (when it runs). */
const CHECKS = 5;
const CLUSTER_CHECKS = 7;
/** The cluster case needs our binary, and nginx and NATS of its own. */
const CLUSTER_SKIP = process.env.PAGE_URL || process.env.TRACKER_URL
  ? "PAGE_URL/TRACKER_URL: the cluster case starts its own instances" : false;
let clusterRan = false;

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
  });
  console.log(formatTable(session));
  console.log(`# P2P share over all viewers: ${session.p2pShare.toFixed(1)} % ` +
    `(ceiling with one HTTP fetch per segment: ${session.ceiling.toFixed(1)} %)`);

  await playShareAndStallChecks(t, session);

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
