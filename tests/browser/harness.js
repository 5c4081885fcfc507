// Harness for real-browser runs on loopback: a live test card (ffmpeg), STUN (coturn), our
// server, and Chromium viewers that read window.p2pStats from the player page.
// Used by p2p.test.js and by scripts/bench-p2p.sh.
//
// Environment:
//   P2P_MEDIASTREAM_BIN  server binary (default: <repo>/target/debug/p2p-mediastream)
//   CHROMIUM             browser executable (default: /usr/bin/chromium)
//   PAGE_URL             use an already running server/stand-in at this URL instead of
//                        starting the binary (its HLS dir must be HLS_DIR)
//   TRACKER_URL          tracker for the viewers (default: the page's own /announce)
//   HLS_DIR              where the test card writes (default: a temp dir)
//   STUN_PORT            coturn's port (default: a free UDP port)
//   KEEP_TMP=1           keep the temp dir (logs) even after a successful run

import { spawn } from "node:child_process";
import dgram from "node:dgram";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");

/**
 * Headless Chromium as root (hence --no-sandbox) without GPU, QUIC or background traffic to
 * outside hosts, and WebRTC with plain 127.0.0.1 host candidates: Chromium otherwise hides
 * local addresses behind mDNS names (WebRtcHideLocalIpsWithMdns), which the peers would have
 * to resolve over multicast DNS before they could connect.
 */
const CHROMIUM_ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--autoplay-policy=no-user-gesture-required",
  "--mute-audio",
  "--disable-features=WebRtcHideLocalIpsWithMdns",
];

/** The test card every run uses: small enough for 2 cores next to several browsers. */
export const TEST_CARD = { size: "640x360", bitrate: "800k", segment: 2, listSize: 12 };

/** A media segment's path below /hls in a URL path (playlists do not match). */
const SEGMENT_FILE = /\/hls\/(.+\.(?:ts|m4s|mp4|aac))$/;

/** Rejects with `what` if `promise` does not settle within `ms`. */
export async function within(ms, what, promise) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms / 1000} s: ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

async function freeUdpPort() {
  const socket = dgram.createSocket("udp4");
  await new Promise((resolve, reject) => {
    socket.once("error", reject);
    socket.bind(0, "127.0.0.1", resolve);
  });
  const { port } = socket.address();
  await new Promise((resolve) => socket.close(resolve));
  return port;
}

async function freeTcpPort() {
  const server = net.createServer();
  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", resolve);
  });
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** `name` on PATH, else in /usr/sbin (Debian puts nginx and nats-server there); null if neither. */
function findExecutable(name) {
  const dirs = (process.env.PATH || "").split(path.delimiter).filter(Boolean).concat(["/usr/sbin"]);
  for (const dir of dirs) {
    const candidate = path.join(dir, name);
    try {
      fs.accessSync(candidate, fs.constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return null;
}

/** Waits until 127.0.0.1:`port` accepts TCP connections (or `child` exits, or `ms` pass). */
async function waitForPort(port, ms, what, child) {
  await within(ms, `${what} to listen on 127.0.0.1:${port}`, (async () => {
    for (;;) {
      const open = await new Promise((resolve) => {
        const socket = net.connect(port, "127.0.0.1");
        const done = (ok) => { socket.destroy(); resolve(ok); };
        socket.setTimeout(1_000, () => done(false));
        socket.once("connect", () => done(true));
        socket.once("error", () => done(false));
      });
      if (open) return;
      if (child.exitCode !== null) throw new Error(`${what} exited (code ${child.exitCode}), see ${child.logPath}`);
      await sleep(100);
    }
  })());
}

/** GET `url` as JSON, bounded; null when it fails. */
export async function getJson(url) {
  return fetch(url, { signal: AbortSignal.timeout(5_000) })
    .then((res) => (res.ok ? res.json() : null))
    .catch(() => null);
}

/**
 * Owns every process of one run and stops them all in cleanup(), also when the run fails.
 * Each child gets a process group of its own, so stopping one stops its helpers too.
 */
export class Harness {
  /** `chromiumArgs`: extra browser flags (the compose test keeps Chromium's look-ups local). */
  constructor({ log = console.log, chromiumArgs = [] } = {}) {
    this.log = log;
    this.chromiumArgs = chromiumArgs;
    this.tmp = fs.mkdtempSync(path.join(os.tmpdir(), "p2p-browser-"));
    this.children = [];
    this.browsers = [];
    // Children run in their own process groups, so a Ctrl-C does not reach them: stop them
    // on the way out, whatever ends this process. SIGTERM, not SIGKILL, because
    // generate-video.sh traps it to stop its ffmpeg, which runs in a session of its own.
    this.onExit = () => this.children.forEach((child) => killGroup(child, "SIGTERM"));
    this.onSignal = (signal) => {
      this.onExit();
      process.exit(128 + os.constants.signals[signal]);
    };
    process.once("exit", this.onExit);
    for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"]) process.once(signal, this.onSignal);
  }

  file(name) {
    return path.join(this.tmp, name);
  }

  /** Spawns `command` with stdout and stderr appended to <tmp>/<logName>. */
  spawnLogged(logName, command, args, options = {}) {
    const logFd = fs.openSync(this.file(logName), "a");
    const child = spawn(command, args, {
      ...options,
      detached: true,
      stdio: ["ignore", options.pipeStderr ? "pipe" : logFd, options.pipeStderr ? "pipe" : logFd],
    });
    fs.closeSync(logFd);
    child.logPath = this.file(logName);
    child.exited = new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
    child.once("error", (err) => this.log(`${logName}: ${err.message}`));
    this.children.push(child);
    return child;
  }

  /**
   * Starts the live test card into `dir` and waits until the playlist lists `minSegments`
   * segments, so that a player sitting 7 segments behind the edge can start at once.
   */
  async startTestCard(dir = this.file("hls"), minSegments = 8) {
    fs.mkdirSync(dir, { recursive: true });
    const { size, bitrate, segment, listSize } = TEST_CARD;
    const child = this.spawnLogged("testcard.log", "bash", [
      path.join(REPO, "scripts/generate-video.sh"), "--out", dir, "--size", size, "--bitrate", bitrate,
      "--segment", String(segment), "--list-size", String(listSize),
    ]);
    this.log(`test card: scripts/generate-video.sh -> ${dir}`);
    const playlist = path.join(dir, "live.m3u8");
    await within(30_000 + minSegments * segment * 1000, `test card playlist with ${minSegments} segments`, (async () => {
      for (;;) {
        if (child.exitCode !== null) throw new Error(`test card exited early, see ${child.logPath}`);
        const text = fs.existsSync(playlist) ? fs.readFileSync(playlist, "utf8") : "";
        if ((text.match(/^#EXTINF/gm) ?? []).length >= minSegments) return;
        await sleep(500);
      }
    })());
    this.hlsDir = dir;
    return dir;
  }

  /** Starts a STUN-only coturn on loopback; its log later proves the browsers used it. */
  async startStun(port) {
    this.stunPort = port ?? (await freeUdpPort());
    this.stun = this.spawnLogged("coturn.log", "turnserver", [
      "-n", "--stun-only", "--no-auth", "--listening-ip=127.0.0.1",
      `--listening-port=${this.stunPort}`, "--no-tls", "--no-dtls", "--no-cli",
      `--pidfile=${this.file("turnserver.pid")}`, "--log-file=stdout", "--verbose",
    ]);
    await within(10_000, "coturn to listen", (async () => {
      while (!fs.readFileSync(this.stun.logPath, "utf8").includes("UDP listener opened on")) {
        if (this.stun.exitCode !== null) throw new Error(`coturn exited, see ${this.stun.logPath}`);
        await sleep(200);
      }
    })());
    this.log(`coturn: stun:127.0.0.1:${this.stunPort}`);
    return this.stunPort;
  }

  /** STUN sessions coturn closed after serving binding requests: [{rp, rb, sp, sb}]. */
  stunSessions() {
    const text = fs.readFileSync(this.stun.logPath, "utf8");
    return [...text.matchAll(/rp=(\d+), rb=(\d+), sp=(\d+), sb=(\d+)/g)]
      .map(([, rp, rb, sp, sb]) => ({ rp: +rp, rb: +rb, sp: +sp, sb: +sb }))
      .filter((session) => session.rp > 0 && session.sp > 0);
  }

  /**
   * Starts our server (or uses PAGE_URL) and returns the page's base URL. The binary prints
   * "listening on http://127.0.0.1:PORT" on stderr once it accepts connections.
   */
  async startServer() {
    if (process.env.PAGE_URL) {
      this.baseUrl = process.env.PAGE_URL.replace(/\/$/, "");
      this.log(`server: using PAGE_URL ${this.baseUrl}`);
      return this.baseUrl;
    }
    const { child, baseUrl } = await this.spawnServer("server");
    this.server = child;
    this.baseUrl = baseUrl;
    return this.baseUrl;
  }

  /**
   * Starts one instance of our binary on a free loopback port, serving the test card and the
   * player, with `env` added (the cluster settings, say); logs to <tmp>/<name>.log. Resolves
   * to { child, baseUrl } once it listens.
   */
  async spawnServer(name, extraEnv = {}) {
    const bin = process.env.P2P_MEDIASTREAM_BIN || path.join(REPO, "target/debug/p2p-mediastream");
    if (!fs.existsSync(bin)) throw new Error(`server binary not found: ${bin} (build it or set P2P_MEDIASTREAM_BIN)`);
    const env = {
      ...process.env,
      TRACKER__SERVER__HOST: "127.0.0.1",
      TRACKER__SERVER__PORT: "0",
      TRACKER__HTTP__HLS_DIR: this.hlsDir,
      TRACKER__HTTP__PUBLIC_DIR: path.join(REPO, "public"),
      TRACKER__PLAYER__ICE_SERVERS: `stun:127.0.0.1:${this.stunPort}`,
      RUST_LOG: process.env.RUST_LOG || "info",
      ...extraEnv,
    };
    const child = this.spawnLogged(`${name}.log`, bin, [], { env, pipeStderr: true });
    const serverLog = fs.createWriteStream(child.logPath, { flags: "a" });
    child.stdout.pipe(serverLog);
    const baseUrl = await within(30_000, `"listening on" from ${bin} (${name})`, new Promise((resolve, reject) => {
      let seen = "";
      child.stderr.on("data", (chunk) => {
        serverLog.write(chunk);
        seen += chunk;
        const match = seen.match(/listening on (http:\/\/[\d.]+:\d+)/);
        if (match) resolve(match[1]);
      });
      child.exited.then(({ code, signal }) =>
        reject(new Error(`${name} exited (code ${code}, signal ${signal}), see ${child.logPath}`)));
    }));
    this.log(`${name}: ${bin} at ${baseUrl}`);
    return { child, baseUrl };
  }

  /**
   * Starts a NATS server (Debian package nats-server) on a free loopback port and returns its
   * URL once it accepts connections.
   */
  async startNats() {
    const bin = findExecutable("nats-server");
    if (!bin) {
      throw new Error("nats-server not found (on PATH or in /usr/sbin): the cluster case needs a real NATS " +
        "server; install it with `apt-get install -y nats-server` (setup.sh does)");
    }
    const port = await freeTcpPort();
    const child = this.spawnLogged("nats-server.log", bin, ["-a", "127.0.0.1", "-p", String(port)]);
    await waitForPort(port, 10_000, "nats-server", child);
    this.log(`nats-server: nats://127.0.0.1:${port}`);
    return `nats://127.0.0.1:${port}`;
  }

  /**
   * Starts nginx (a child, not a daemon) on a free loopback port in front of `backends`
   * (base URLs), with the config generated from nginx-cluster.conf next to this file, and
   * returns its base URL once it proxies /healthz.
   */
  async startNginx(backends) {
    const bin = findExecutable("nginx");
    if (!bin) throw new Error("nginx not found (on PATH or in /usr/sbin): install it with `apt-get install -y nginx` (setup.sh does)");
    const prefix = this.file("nginx");
    fs.mkdirSync(prefix, { recursive: true });
    const port = await freeTcpPort();
    const servers = backends.map((url) => `server ${new URL(url).host};`).join("\n        ");
    const template = fs.readFileSync(path.join(path.dirname(fileURLToPath(import.meta.url)), "nginx-cluster.conf"), "utf8");
    const conf = template
      .replaceAll("@PREFIX@", prefix)
      .replaceAll("@PORT@", String(port))
      .replaceAll("@UPSTREAM_SERVERS@", servers)
      .replaceAll("@USER@", os.userInfo().username);
    const leftover = conf.match(/@[A-Z_]+@/);
    if (leftover) throw new Error(`nginx-cluster.conf: placeholder ${leftover[0]} not filled in`);
    const confPath = path.join(prefix, "nginx.conf");
    fs.writeFileSync(confPath, conf);
    const args = ["-c", confPath, "-p", prefix, "-e", path.join(prefix, "error.log"), "-g", "daemon off;"];
    const child = this.spawnLogged("nginx.log", bin, args);
    await waitForPort(port, 10_000, "nginx", child);
    const baseUrl = `http://127.0.0.1:${port}`;
    await within(10_000, "nginx to proxy /healthz", (async () => {
      for (;;) {
        const ok = await fetch(`${baseUrl}/healthz`, { signal: AbortSignal.timeout(2_000) })
          .then((res) => res.ok).catch(() => false);
        if (ok) return;
        if (child.exitCode !== null) throw new Error(`nginx exited, see ${child.logPath} and ${prefix}/error.log`);
        await sleep(200);
      }
    })());
    this.nginxAccessLog = path.join(prefix, "access.log");
    this.log(`nginx: ${baseUrl} -> ${backends.join(", ")} (config ${confPath})`);
    return baseUrl;
  }

  /** Opens the player in a new Chromium process; `query` goes into the page URL. */
  async launchViewer(name, query = {}) {
    const params = new URLSearchParams(query);
    if (process.env.TRACKER_URL) params.set("tracker", process.env.TRACKER_URL);
    return this.openPage(name, `/${params.size ? `?${params}` : ""}`);
  }

  /** Opens `pathAndQuery` of the server in a new Chromium process, its console logged. */
  async openPage(name, pathAndQuery) {
    const browser = await within(30_000, `${name}: chromium launch`, chromium.launch({
      executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
      args: [...CHROMIUM_ARGS, ...this.chromiumArgs],
    }));
    this.browsers.push(browser);
    const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    const consoleLog = fs.createWriteStream(this.file(`${name}.console.log`));
    page.on("console", (msg) => consoleLog.write(`[${msg.type()}] ${msg.text()}\n`));
    page.on("pageerror", (err) => consoleLog.write(`[pageerror] ${err.message}\n`));
    page.on("response", (response) => {
      if (response.status() >= 400) consoleLog.write(`[http ${response.status()}] ${response.url()}\n`);
    });
    // Every segment the page fetches over HTTP, with its age (since ffmpeg finished it) at
    // that moment: the benchmark tells from them which segments entered the swarm more than
    // once, and whether the extra fetch was a race or a late fallback.
    const segmentRequests = [];
    page.on("request", (request) => {
      const file = SEGMENT_FILE.exec(new URL(request.url()).pathname)?.[1];
      if (!file) return;
      const at = Date.now();
      let ageMs = null;
      try {
        if (this.hlsDir) ageMs = at - fs.statSync(path.join(this.hlsDir, file)).mtimeMs;
      } catch {
        // already deleted from the live window
      }
      segmentRequests.push({ file, at, ageMs });
    });
    const url = `${this.baseUrl}${pathAndQuery}`;
    await within(30_000, `${name}: load ${url}`, page.goto(url));
    return { name, browser, page, url, segmentRequests };
  }

  /** Runs the player's figures getter in the page; null if the page does not answer. */
  static async readStats(viewer) {
    return within(5_000, `${viewer.name}: read p2pStats`,
      viewer.page.evaluate(() => (window.p2pStats ? { ...window.p2pStats, config: window.p2pConfig } : null)))
      .catch(() => null);
  }

  async closeViewers() {
    const browsers = this.browsers.splice(0);
    await Promise.allSettled(browsers.map((browser) => within(10_000, "browser close", browser.close())));
  }

  /** Stops everything; keeps the temp dir (logs) unless the run passed and KEEP_TMP is unset. */
  async cleanup({ passed = false } = {}) {
    await this.closeViewers();
    const children = this.children.splice(0);
    for (const child of children) killGroup(child, "SIGTERM");
    await Promise.allSettled(children.map((child) =>
      within(5_000, "child exit", child.exited).catch(() => killGroup(child, "SIGKILL"))));
    process.removeListener("exit", this.onExit);
    for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"]) process.removeListener(signal, this.onSignal);
    if (passed && !process.env.KEEP_TMP) fs.rmSync(this.tmp, { recursive: true, force: true });
    else this.log(`logs kept in ${this.tmp}`);
  }
}

function killGroup(child, signal) {
  if (child.exitCode !== null || child.signalCode !== null) return;
  try {
    process.kill(-child.pid, signal);
  } catch {
    // already gone
  }
}

/**
 * One viewing session: `count` viewers join `staggerSeconds` apart, and the run goes on until
 * the last one has watched `watchSeconds`. Figures are sampled every 2 s (and `onSample`, if
 * given, is awaited after each sample with the number of viewers so far). Returns one row per
 * viewer (final figures, peak peers, position advance) plus totals. `beforeClose(viewers)`,
 * if given, runs while the viewers' pages are still open; its result is `session.extra`.
 */
export async function watchSession(harness, { count, watchSeconds, staggerSeconds, query = {}, onSample = null, beforeClose }) {
  const viewers = [];
  // The steady state starts at the first sample that finds every viewer playing: what the
  // viewers and the origin had counted by then is the start-up's, the rest the steady state's.
  let steadyStart = null;
  const snapshot = async () => ({
    at: Date.now(),
    viewers: viewers.map((v) => ({ p2pBytes: v.last.p2pBytes, httpBytes: v.last.httpBytes, stalls: v.last.stallCount })),
    originBytes: (await getJson(`${harness.baseUrl}/stats.json`))?.usage?.total?.origin?.segmentBytes ?? null,
  });
  const sample = async () => {
    for (const viewer of viewers) {
      const stats = await Harness.readStats(viewer);
      if (!stats) continue;
      viewer.last = stats;
      viewer.peakPeers = Math.max(viewer.peakPeers, stats.peers);
      if (stats.firstPlayAt !== null && viewer.playStart === undefined) {
        viewer.playStart = { wall: Date.now(), currentTime: stats.currentTime };
      }
    }
    if (!steadyStart && viewers.length === count && viewers.every((v) => v.playStart)) {
      steadyStart = await snapshot();
      harness.log(`every viewer plays: steady state from here`);
    }
    if (onSample) await onSample(viewers.length);
  };
  for (let i = 0; i < count; i++) {
    if (i > 0) await sleep(staggerSeconds * 1000);
    const viewer = await harness.launchViewer(`viewer${i + 1}`, query);
    Object.assign(viewer, { joinedAt: Date.now(), peakPeers: 0, last: null });
    viewers.push(viewer);
    harness.log(`${viewer.name} joined: ${viewer.url}`);
    await sample();
  }
  const end = Date.now() + watchSeconds * 1000;
  let nextReport = Date.now() + 15_000;
  while (Date.now() < end) {
    await sleep(2_000);
    await sample();
    if (Date.now() >= nextReport) {
      nextReport += 15_000;
      harness.log(`  ${Math.max(0, Math.round((end - Date.now()) / 1000))} s left: ` + viewers
        .map((v) => `${v.name} ${v.last ? `${v.last.p2pShare.toFixed(0)}% p2p, ${v.last.peers} peers` : "no stats"}`)
        .join(" | "));
    }
  }
  await sample();
  const rows = viewers.map((viewer) => {
    const s = viewer.last ?? {};
    const watched = viewer.playStart ? (Date.now() - viewer.playStart.wall) / 1000 : 0;
    const advanced = viewer.playStart ? s.currentTime - viewer.playStart.currentTime : 0;
    return {
      name: viewer.name,
      started: s.firstPlayAt != null,
      startupSeconds: s.firstPlayAt != null ? s.firstPlayAt / 1000 : null,
      watchedSeconds: watched,
      advancedSeconds: advanced,
      p2pBytes: s.p2pBytes ?? 0,
      httpBytes: s.httpBytes ?? 0,
      p2pShare: s.p2pShare ?? 0,
      uploadBytes: s.uploadBytes ?? 0,
      peakPeers: viewer.peakPeers,
      peers: s.peers ?? 0,
      segments: s.segments ?? 0,
      stallCount: s.stallCount ?? 0,
      stallSeconds: s.stallSeconds ?? 0,
      trackerErrors: s.trackerErrors ?? 0,
      lastTrackerError: s.lastTrackerError ?? null,
      latency: s.latency ?? null,
    };
  });
  const p2p = rows.reduce((sum, row) => sum + row.p2pBytes, 0);
  const http = rows.reduce((sum, row) => sum + row.httpBytes, 0);
  const steady = steadyStart ? steadyFigures(count, steadyStart, await snapshot(), viewers) : null;
  const settings = viewers.find((v) => v.last?.config)?.last.config.tuning ?? null;
  const extra = beforeClose ? await beforeClose(viewers) : undefined;
  await harness.closeViewers();
  return {
    count,
    rows,
    p2pBytes: p2p,
    httpBytes: http,
    p2pShare: p2p + http ? (100 * p2p) / (p2p + http) : 0,
    ceiling: (100 * (count - 1)) / count,
    maxStallSeconds: Math.max(0, ...rows.map((row) => row.stallSeconds)),
    totalStalls: rows.reduce((sum, row) => sum + row.stallCount, 0),
    steady,
    settings,
    extra,
  };
}

/** Two HTTP fetches of one segment less than this apart raced; a later one is a fallback. */
const RACE_MS = 1_000;

/**
 * The figures between two snapshots (`start`: every viewer playing, `end`: the end of the
 * run) and those before `start` (the start-up). Origin copies: segment bytes that left the
 * origin (as the server counted them; as the viewers counted them in `httpCopies`) over the
 * bytes one viewer played, 1.0 when every segment entered the swarm exactly once. Of the
 * segments first fetched over HTTP in the window, `refetched.segments` were fetched again by
 * another viewer: `raced` extra fetches within RACE_MS of the first, `late` ones after it (the
 * segment had not reached that viewer over P2P in time). Ages: how old a segment was (since
 * ffmpeg wrote it) at its first HTTP fetch, median, for segments fetched once and again: a
 * segment first fetched only once it entered a viewer's high-demand window is old.
 */
function steadyFigures(count, start, end, viewers) {
  const sumOf = (snap, key) => snap.viewers.reduce((total, v) => total + v[key], 0);
  const p2pBytes = sumOf(end, "p2pBytes") - sumOf(start, "p2pBytes");
  const httpBytes = sumOf(end, "httpBytes") - sumOf(start, "httpBytes");
  const copyBytes = (p2pBytes + httpBytes) / count;
  const share = p2pBytes + httpBytes ? (100 * p2pBytes) / (p2pBytes + httpBytes) : 0;
  const ceiling = (100 * (count - 1)) / count;
  const originBytes = start.originBytes !== null && end.originBytes !== null ? end.originBytes - start.originBytes : null;

  const bySegment = new Map();
  for (const viewer of viewers) {
    for (const request of viewer.segmentRequests ?? []) {
      const list = bySegment.get(request.file) ?? [];
      list.push(request);
      bySegment.set(request.file, list);
    }
  }
  let segments = 0, refetchedSegments = 0, raced = 0, late = 0;
  const onceAges = [], refetchedAges = [];
  for (const list of bySegment.values()) {
    list.sort((a, b) => a.at - b.at);
    if (list[0].at < start.at || list[0].at > end.at) continue;
    segments += 1;
    if (list.length > 1) refetchedSegments += 1;
    if (list[0].ageMs !== null) (list.length > 1 ? refetchedAges : onceAges).push(list[0].ageMs);
    for (const request of list.slice(1)) {
      if (request.at - list[0].at < RACE_MS) raced += 1;
      else late += 1;
    }
  }
  const median = (values) => {
    if (!values.length) return null;
    const sorted = [...values].sort((a, b) => a - b);
    return sorted[Math.floor(sorted.length / 2)] / 1000;
  };
  return {
    seconds: (end.at - start.at) / 1000,
    p2pBytes,
    httpBytes,
    p2pShare: share,
    ofCeiling: (100 * share) / ceiling,
    originCopies: originBytes !== null && copyBytes ? originBytes / copyBytes : null,
    httpCopies: copyBytes ? httpBytes / copyBytes : null,
    stalls: sumOf(end, "stalls") - sumOf(start, "stalls"),
    segments,
    refetched: { segments: refetchedSegments, raced, late },
    medianAgeOnce: median(onceAges),
    medianAgeRefetched: median(refetchedAges),
    startup: {
      seconds: (start.at - Math.min(...viewers.map((v) => v.joinedAt))) / 1000,
      p2pBytes: sumOf(start, "p2pBytes"),
      httpBytes: sumOf(start, "httpBytes"),
      p2pShare: sumOf(start, "p2pBytes") + sumOf(start, "httpBytes")
        ? (100 * sumOf(start, "p2pBytes")) / (sumOf(start, "p2pBytes") + sumOf(start, "httpBytes")) : 0,
    },
  };
}

/** One line on a session's steady state, for logs. */
export function formatSteady(session) {
  const s = session.steady;
  if (!s) return "steady state: never reached (not every viewer played)";
  const num = (x, digits = 2) => (x === null ? "-" : x.toFixed(digits));
  return `steady state (${s.seconds.toFixed(0)} s, all ${session.count} playing): P2P ${s.p2pShare.toFixed(1)} % ` +
    `= ${s.ofCeiling.toFixed(1)} % of the ceiling ${session.ceiling.toFixed(1)} %, origin copies ${num(s.originCopies)} ` +
    `(viewers' HTTP ${num(s.httpCopies)}), stalls ${s.stalls}; of ${s.segments} segments ${s.refetched.segments} were ` +
    `fetched over HTTP again (${s.refetched.raced} extra fetches within ${RACE_MS / 1000} s of the first, ` +
    `${s.refetched.late} later); median age at the first HTTP fetch: ${num(s.medianAgeOnce, 1)} s (fetched once), ` +
    `${num(s.medianAgeRefetched, 1)} s (fetched again) | start-up (${s.startup.seconds.toFixed(0)} s): ` +
    `P2P ${s.startup.p2pShare.toFixed(1)} % of ${((s.startup.p2pBytes + s.startup.httpBytes) / 1e6).toFixed(1)} MB`;
}

/** A fixed-width table of a session's rows, for logs. */
export function formatTable(session) {
  const mb = (bytes) => (bytes / 1e6).toFixed(2);
  const header = ["viewer", "startup s", "played s", "P2P MB", "HTTP MB", "P2P %", "up MB", "peers", "peak", "segs", "stalls", "stall s", "trk err"];
  const lines = session.rows.map((r) => [
    r.name, r.startupSeconds?.toFixed(1) ?? "-", r.advancedSeconds.toFixed(1), mb(r.p2pBytes), mb(r.httpBytes),
    r.p2pShare.toFixed(1), mb(r.uploadBytes), r.peers, r.peakPeers, r.segments, r.stallCount,
    r.stallSeconds.toFixed(1), r.trackerErrors,
  ].map(String));
  lines.push(["all", "", "", mb(session.p2pBytes), mb(session.httpBytes), session.p2pShare.toFixed(1),
    "", "", "", "", String(session.totalStalls), session.maxStallSeconds.toFixed(1) + " max", ""]);
  const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i].length)));
  const fmt = (cells) => cells.map((c, i) => (i ? c.padStart(widths[i]) : c.padEnd(widths[i]))).join("  ");
  return [fmt(header), widths.map((w) => "-".repeat(w)).join("  "), ...lines.map(fmt)].join("\n");
}
