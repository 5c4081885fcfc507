// Real-browser test: several Chromium viewers watch the live test card through our server
// and share its segments over WebRTC, signalled by our tracker, with STUN from coturn.
// Run with ./run.sh (installs what is missing). Knobs: VIEWERS (default 4),
// WATCH_SECONDS (default 90, after the last join), STAGGER_SECONDS (default 4).

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Harness, formatTable, watchSession } from "./harness.js";

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
const CHECKS = 5;

before(async () => {
  // Below 4 viewers the ceiling (N-1)/N leaves too little room above MIN_P2P_SHARE.
  assert.ok(VIEWERS >= 4, `VIEWERS=${VIEWERS}: the test needs at least 4 viewers`);
  await harness.startTestCard(process.env.HLS_DIR || undefined);
  await harness.startStun(process.env.STUN_PORT ? Number(process.env.STUN_PORT) : undefined);
  await harness.startServer();
}, { timeout: 120_000 });

after(async () => {
  await harness.cleanup({ passed: checksPassed === CHECKS });
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

  await t.test("coturn served STUN binding requests", () => {
    const sessions = harness.stunSessions();
    console.log(`# coturn: ${sessions.length} STUN sessions with binding requests answered`);
    assert.ok(sessions.length > 0, `no STUN session with rp>0 and sp>0 in ${harness.stun.logPath}`);
    checksPassed += 1;
  });

});
