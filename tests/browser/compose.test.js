// Two Chromium viewers against the composed stack (tests/compose/run.sh starts it with the
// real docker-compose.yml): the page, the player bundle and the live segments come from
// the tracker container, signalling from its tracker, STUN from the stun container.
// Checks that both play and that they exchange segments over P2P.
//
//   COMPOSE_URL=http://127.0.0.1:8000 node --test compose.test.js
// Knobs: WATCH_SECONDS (default 40, after the second viewer joined).

import assert from "node:assert/strict";
import { after, test } from "node:test";
import { Harness, formatTable, watchSession } from "./harness.js";

const BASE_URL = process.env.COMPOSE_URL;
const WATCH_SECONDS = Number(process.env.WATCH_SECONDS || 40);
const MIN_PLAYBACK_RATE = 0.75;

// The stack's ports are published on the host, so Chromium runs in the host's network
// namespace (not the browser test's isolated one): resolve no host name at all, so that
// its background look-ups cannot leave the machine. The page is addressed by IP.
const harness = new Harness({
  log: (line) => console.log(`# ${line}`),
  chromiumArgs: ["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"],
});
let passed = false;

after(async () => {
  await harness.cleanup({ passed });
});

test("two Chromium viewers play the composed stream and share it over P2P", {
  timeout: (WATCH_SECONDS + 120) * 1000,
}, async () => {
  assert.ok(BASE_URL, "COMPOSE_URL is not set (the composed stack's page, e.g. http://127.0.0.1:8000)");
  harness.baseUrl = BASE_URL.replace(/\/$/, "");
  const session = await watchSession(harness, { count: 2, watchSeconds: WATCH_SECONDS, staggerSeconds: 3 });
  console.log(formatTable(session));
  console.log(`# P2P share over both viewers: ${session.p2pShare.toFixed(1)} % (ceiling ${session.ceiling.toFixed(1)} %)`);
  for (const row of session.rows) {
    assert.ok(row.started, `${row.name} never started playing`);
    assert.ok(row.advancedSeconds >= MIN_PLAYBACK_RATE * row.watchedSeconds,
      `${row.name} advanced ${row.advancedSeconds.toFixed(1)} s in ${row.watchedSeconds.toFixed(1)} s of wall time`);
    assert.ok(row.peakPeers > 0, `${row.name} never had a peer through the composed tracker ` +
      `(tracker errors: ${row.trackerErrors}${row.lastTrackerError ? `, last: ${row.lastTrackerError}` : ""})`);
  }
  assert.ok(session.p2pBytes > 0, "no segment bytes went over P2P between the two viewers");
  passed = true;
});
