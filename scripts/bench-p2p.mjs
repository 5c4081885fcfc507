// P2P-share benchmark: runs the browser harness (tests/browser/harness.js) for several viewer
// counts against one test card, coturn and server, then writes docs/p2p-share.md and
// docs/p2p-share.svg. Started by scripts/bench-p2p.sh, which prepares the machine first.

import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { parseArgs } from "node:util";
import { Harness, REPO, TEST_CARD, formatTable, watchSession } from "../tests/browser/harness.js";

const USAGE = `Usage: scripts/bench-p2p.sh [options]

Measures the P2P share of segment bytes and the stalls for several numbers of Chromium
viewers watching the live test card through p2p-mediastream, and writes the results to
docs/p2p-share.md (table) and docs/p2p-share.svg (chart).

Options:
  --viewers LIST   viewer counts to run, comma or space separated (default: 2,4,6,8)
  --seconds N      how long each run lasts after its last viewer joined (default: 90)
  --stagger N      seconds between two joins (default: 4)
  --set KEY=VALUE  player setting passed as a page query parameter, repeatable
                   (liveSyncDurationCount, highDemandTimeWindow, httpDownloadTimeWindow,
                   p2pDownloadTimeWindow; see player/src/config.js)
  --out FILE       Markdown report (default: docs/p2p-share.md; the SVG goes next to it)
  --note TEXT      a remark for the report, e.g. what else ran on the machine
  --no-write       print the results only
  -h, --help       show this help

Environment: P2P_MEDIASTREAM_BIN (server binary, default target/debug/p2p-mediastream)
and the other knobs described in tests/browser/harness.js.`;

const { values: opts } = parseArgs({
  options: {
    viewers: { type: "string", default: "2,4,6,8" },
    seconds: { type: "string", default: "90" },
    stagger: { type: "string", default: "4" },
    set: { type: "string", multiple: true, default: [] },
    out: { type: "string", default: path.join(REPO, "docs/p2p-share.md") },
    note: { type: "string", default: "" },
    "no-write": { type: "boolean", default: false },
    help: { type: "boolean", short: "h", default: false },
  },
});
if (opts.help) {
  console.log(USAGE);
  process.exit(0);
}
const counts = opts.viewers.split(/[\s,]+/).filter(Boolean).map(Number);
const seconds = Number(opts.seconds);
const stagger = Number(opts.stagger);
if (!counts.length || counts.some((n) => !Number.isInteger(n) || n < 2) || !(seconds > 0) || !(stagger >= 0)) {
  console.error(`bad arguments\n\n${USAGE}`);
  process.exit(2);
}
const query = Object.fromEntries(opts.set.map((pair) => {
  const [key, ...rest] = pair.split("=");
  return [key, rest.join("=")];
}));

const log = (line) => console.log(`[bench] ${line}`);

/** Busy share of all cores between two /proc/stat readings, in percent. */
function cpuTimes() {
  const fields = fs.readFileSync("/proc/stat", "utf8").split("\n")[0].trim().split(/\s+/).slice(1).map(Number);
  const idle = fields[3] + fields[4];
  return { idle, total: fields.reduce((a, b) => a + b, 0) };
}
const busyPercent = (a, b) => (100 * (1 - (b.idle - a.idle) / (b.total - a.total)));

function commandVersion(command, args, pattern) {
  try {
    const out = execFileSync(command, args, { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] });
    return (out.match(pattern) ?? [out.split("\n")[0]])[0].trim();
  } catch {
    return "unknown";
  }
}

async function main() {
  const harness = new Harness({ log });
  const results = [];
  let ok = false;
  try {
    await harness.startTestCard(process.env.HLS_DIR || undefined);
    await harness.startStun(process.env.STUN_PORT ? Number(process.env.STUN_PORT) : undefined);
    await harness.startServer();
    for (const count of counts) {
      log(`--- ${count} viewers, ${stagger} s apart, ${seconds} s after the last join ---`);
      const before = cpuTimes();
      try {
        const session = await watchSession(harness, { count, watchSeconds: seconds, staggerSeconds: stagger, query });
        session.cpuBusy = busyPercent(before, cpuTimes());
        session.loadAverage = os.loadavg()[0];
        console.log(formatTable(session));
        log(`${count} viewers: P2P share ${session.p2pShare.toFixed(1)} % (ceiling ${session.ceiling.toFixed(1)} %), ` +
          `stalls ${session.totalStalls}, worst ${session.maxStallSeconds.toFixed(1)} s, ` +
          `CPU ${session.cpuBusy.toFixed(0)} %, load ${session.loadAverage.toFixed(1)}`);
        results.push(session);
      } catch (err) {
        log(`${count} viewers failed: ${err.message}`);
        await harness.closeViewers();
        results.push({ count, error: err.message });
      }
      await sleep(5_000); // let the tracker see the closed sockets before the next swarm forms
    }
    ok = results.every((r) => !r.error);
  } finally {
    await harness.cleanup({ passed: ok });
  }

  if (!opts["no-write"] && results.some((r) => !r.error)) {
    const svgPath = opts.out.replace(/\.md$/, "") + ".svg";
    fs.mkdirSync(path.dirname(opts.out), { recursive: true });
    fs.writeFileSync(svgPath, renderSvg(results.filter((r) => !r.error)));
    fs.writeFileSync(opts.out, renderMarkdown(results, path.basename(svgPath)));
    log(`wrote ${opts.out} and ${svgPath}`);
  }
  process.exitCode = ok ? 0 : 1;
}

function renderMarkdown(results, svgName) {
  const done = results.filter((r) => !r.error);
  const settings = done[0]?.settings ?? {};
  const binPath = path.resolve(process.env.P2P_MEDIASTREAM_BIN || path.join(REPO, "target/debug/p2p-mediastream"));
  const bin = process.env.PAGE_URL ? `the server at ${process.env.PAGE_URL}`
    : binPath.startsWith(`${REPO}/`) ? `\`${path.relative(REPO, binPath)}\``
    : "the `p2p-mediastream` binary given in `P2P_MEDIASTREAM_BIN` (outside the repository)";
  const commit = commandVersion("git", ["-C", REPO, "rev-parse", "--short", "HEAD"], /\w+/);
  const cpu = os.cpus();
  const pct = (x) => `${x.toFixed(1)} %`;
  const lines = [
    "# P2P share of the live stream",
    "",
    `Measured with \`scripts/bench-p2p.sh --viewers ${counts.join(",")} --seconds ${seconds} --stagger ${stagger}` +
      `${opts.set.map((s) => ` --set ${s}`).join("")}\` on ${new Date().toISOString().slice(0, 10)}. ` +
      "The script wrote this page; run it again to refresh the figures.",
    "",
    "Each run starts N headless Chromium viewers, each its own browser process, that join " +
      `${stagger} s apart and watch until the last one has played for ${seconds} s. The player ` +
      "(`player/`, served from `public/`) reports the bytes it received per source; the share is P2P bytes over all segment " +
      "bytes of all viewers. Signalling goes through our tracker, ICE uses a STUN-only coturn on " +
      "loopback, everything runs on one machine.",
    "",
    `![P2P share by number of viewers](${svgName})`,
    "",
    "| Viewers | P2P share | Ceiling (N-1)/N | Share per viewer | P2P MB | HTTP MB | Stalls | Worst viewer's stall time | Slowest start | CPU busy | Load |",
    "|--------:|----------:|----------------:|-----------------:|-------:|--------:|-------:|--------------------------:|--------------:|---------:|-----:|",
    ...results.map((r) => {
      if (r.error) return `| ${r.count} | failed: ${r.error.replace(/\|/g, "\\|")} | | | | | | | | | |`;
      const shares = r.rows.map((row) => row.p2pShare);
      const startup = Math.max(...r.rows.map((row) => row.startupSeconds ?? Infinity));
      return `| ${r.count} | **${pct(r.p2pShare)}** | ${pct(r.ceiling)} | ${Math.min(...shares).toFixed(0)}–${Math.max(...shares).toFixed(0)} % ` +
        `| ${(r.p2pBytes / 1e6).toFixed(1)} | ${(r.httpBytes / 1e6).toFixed(1)} | ${r.totalStalls} | ${r.maxStallSeconds.toFixed(1)} s ` +
        `| ${Number.isFinite(startup) ? `${startup.toFixed(1)} s` : "never"} | ${r.cpuBusy.toFixed(0)} % | ${r.loadAverage.toFixed(1)} |`;
    }),
    "",
    "Stalls count rebuffering (`waiting` until `playing`) after a viewer first started playing; " +
      "the start-up wait is reported separately (\"slowest start\", from page load to the first " +
      "frame). CPU busy is the whole machine (all cores) over the run, load the 1-minute load " +
      `average at its end (${os.cpus().length} cores).`,
    "",
    ...(opts.note ? [opts.note, ""] : []),
    "## Why the ceiling is (N-1)/N",
    "",
    "Every new segment has to enter the swarm once over HTTP. With the settings below each new " +
      "segment is fetched over HTTP by one viewer and over P2P by the others, so N viewers can at " +
      "best get (N-1)/N of the bytes from peers. A viewer also fetches its first segments over HTTP " +
      "before its first peer connection is up (joins take well under a second on loopback), which " +
      "is most of the gap to the ceiling in short runs.",
    "",
    "## Settings in use",
    "",
    `- Machine: ${cpu.length} cores (${cpu[0]?.model.trim() ?? "unknown CPU"}), ${Math.round(os.totalmem() / 2 ** 30)} GiB RAM, ` +
      `${commandVersion("/usr/bin/chromium", ["--version"], /Chromium [\d.]+/)}, ` +
      `${commandVersion("ffmpeg", ["-version"], /ffmpeg version [^\s]+/)}, ` +
      `${commandVersion("turnserver", ["--version"], /[\d.]+/).replace(/^/, "coturn ")}.`,
    `- Server: ${bin}, repository at commit ${commit}.`,
    `- Test card: \`scripts/generate-video.sh\`, ${TEST_CARD.size}, ${TEST_CARD.bitrate}bit/s H.264 + AAC, ` +
      `${TEST_CARD.segment} s segments, ${TEST_CARD.listSize} segments in the live playlist.`,
    `- Player (hls.js 1.7.4, P2P Media Loader 2.3.1): ${Object.entries(settings).map(([k, v]) => `\`${k}: ${v}\``).join(", ")}. ` +
      "The three windows are P2P Media Loader's, in seconds; `liveSyncDurationCount` is hls.js's " +
      "distance from the live edge in segments. They are the player defaults (`player/src/config.js`) " +
      "and can be changed per page with query parameters of the same names.",
    "",
    "## Per viewer",
    "",
  ];
  for (const r of done) {
    lines.push(`### ${r.count} viewers`, "", "```", formatTable(r), "```", "");
  }
  return lines.join("\n");
}

/** Bars for the measured share, a dashed tick for the (N-1)/N ceiling, by viewer count. */
function renderSvg(results) {
  const W = 640, H = 330, L = 56, R = 20, T = 56, B = 44;
  const plotW = W - L - R, plotH = H - T - B;
  const slot = plotW / results.length;
  const barW = Math.min(64, slot * 0.5);
  const y = (pct) => T + plotH - (pct / 100) * plotH;
  const out = [
    `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" font-family="system-ui, sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="#ffffff"/>`,
    `<text x="${L}" y="20" font-size="14" font-weight="600" fill="#1f2430">P2P share of segment bytes by number of viewers</text>`,
  ];
  for (let pct = 0; pct <= 100; pct += 25) {
    out.push(`<line x1="${L}" x2="${W - R}" y1="${y(pct)}" y2="${y(pct)}" stroke="#e3e6ec"/>`,
      `<text x="${L - 8}" y="${y(pct) + 4}" text-anchor="end" fill="#5b6475">${pct} %</text>`);
  }
  results.forEach((r, i) => {
    const cx = L + slot * (i + 0.5);
    out.push(
      `<rect x="${cx - barW / 2}" y="${y(r.p2pShare)}" width="${barW}" height="${y(0) - y(r.p2pShare)}" fill="#2bb673"/>`,
      `<line x1="${cx - barW / 2 - 8}" x2="${cx + barW / 2 + 8}" y1="${y(r.ceiling)}" y2="${y(r.ceiling)}" stroke="#1f2430" stroke-width="2" stroke-dasharray="5 3"/>`,
      `<text x="${cx}" y="${y(r.p2pShare) + 18}" text-anchor="middle" font-weight="600" fill="#ffffff">${r.p2pShare.toFixed(1)} %</text>`,
      `<text x="${cx}" y="${H - B + 18}" text-anchor="middle" fill="#1f2430">${r.count} viewers</text>`,
      `<text x="${cx}" y="${H - B + 34}" text-anchor="middle" fill="#5b6475">stalls ${r.totalStalls}</text>`,
    );
  });
  out.push(
    `<rect x="${L}" y="29" width="10" height="10" fill="#2bb673"/>`,
    `<text x="${L + 15}" y="38" fill="#1f2430">measured</text>`,
    `<line x1="${L + 85}" x2="${L + 105}" y1="34" y2="34" stroke="#1f2430" stroke-width="2" stroke-dasharray="5 3"/>`,
    `<text x="${L + 110}" y="38" fill="#1f2430">ceiling (N-1)/N with one HTTP fetch per segment</text>`,
    "</svg>",
    "",
  );
  return out.join("\n");
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
