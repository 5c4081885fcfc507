// P2P-share benchmark: runs the browser harness (tests/browser/harness.js) for several viewer
// counts against one test card, coturn and server, then writes docs/p2p-share.md and
// docs/p2p-share.svg. Started by scripts/bench-p2p.sh, which prepares the machine first.

import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { parseArgs } from "node:util";
import { Harness, REPO, TEST_CARD, formatSteady, formatTable, watchSession } from "../tests/browser/harness.js";

const USAGE = `Usage: scripts/bench-p2p.sh [options]

Measures the P2P share of segment bytes and the stalls for several numbers of Chromium
viewers watching the live test card through p2p-mediastream, over the whole run and after
every viewer has joined (the steady state), with the origin's segment bytes in stream copies,
and writes the results into docs/p2p-share.md (between its results markers; the rest of the
page is written by hand) and docs/p2p-share.svg (chart).

Options:
  --viewers LIST   viewer counts to run, comma or space separated (default: 2,4,6,8)
  --seconds N      how long each run lasts after its last viewer joined (default: 90)
  --stagger N      seconds between two joins (default: 4)
  --repeat N       run each viewer count N times (default: 1)
  --set KEY=VALUE  player setting passed as a page query parameter, repeatable
                   (a key of DEFAULT_TUNING in player/src/config.js)
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
    repeat: { type: "string", default: "1" },
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
const repeat = Number(opts.repeat);
if (!counts.length || counts.some((n) => !Number.isInteger(n) || n < 2) || !(seconds > 0) || !(stagger >= 0) ||
  !Number.isInteger(repeat) || repeat < 1) {
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
    const runs = Array.from({ length: repeat }, (_, i) => counts.map((count) => ({ count, run: i + 1 }))).flat();
    for (const { count, run } of runs) {
      log(`--- ${count} viewers, ${stagger} s apart, ${seconds} s after the last join (run ${run} of ${repeat}) ---`);
      const before = cpuTimes();
      try {
        const session = await watchSession(harness, { count, watchSeconds: seconds, staggerSeconds: stagger, query });
        session.cpuBusy = busyPercent(before, cpuTimes());
        session.loadAverage = os.loadavg()[0];
        session.run = run;
        console.log(formatTable(session));
        log(formatSteady(session));
        log(`${count} viewers: P2P share ${session.p2pShare.toFixed(1)} % (ceiling ${session.ceiling.toFixed(1)} %), ` +
          `stalls ${session.totalStalls}, worst ${session.maxStallSeconds.toFixed(1)} s, ` +
          `CPU ${session.cpuBusy.toFixed(0)} %, load ${session.loadAverage.toFixed(1)}`);
        results.push(session);
      } catch (err) {
        log(`${count} viewers failed: ${err.message}`);
        await harness.closeViewers();
        results.push({ count, run, error: err.message });
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
    const existing = fs.existsSync(opts.out) ? fs.readFileSync(opts.out, "utf8") : null;
    fs.writeFileSync(opts.out, renderPage(existing, results, path.basename(svgPath)));
    log(`wrote ${opts.out} and ${svgPath}`);
  }
  process.exitCode = ok ? 0 : 1;
}

/** docs/p2p-share.md is written by hand around this block, which the script rewrites. */
const BEGIN = "<!-- bench-p2p results: begin (written by scripts/bench-p2p.sh, do not edit) -->";
const END = "<!-- bench-p2p results: end -->";

/** The page with its results block replaced (or a new page holding only the block). */
function renderPage(existing, results, svgName) {
  const block = renderResults(results, svgName);
  const begin = existing?.indexOf(BEGIN) ?? -1;
  const end = existing?.indexOf(END) ?? -1;
  if (begin >= 0 && end > begin) {
    return `${existing.slice(0, begin + BEGIN.length)}\n${block}\n${existing.slice(end)}`;
  }
  return `# P2P share of the live stream\n\n${BEGIN}\n${block}\n${END}\n`;
}

const pct = (x) => `${x.toFixed(1)} %`;
const mean = (values) => values.reduce((a, b) => a + b, 0) / values.length;
/** "mean (min–max)" of the runs, or the one value. */
function spread(values, format) {
  if (values.length === 1) return format(values[0]);
  return `${format(mean(values))} (${format(Math.min(...values))}–${format(Math.max(...values))})`;
}

/** Per viewer count, over its runs: the steady-state and whole-run figures. */
function summarise(done) {
  return [...new Set(done.map((r) => r.count))].map((count) => {
    const runs = done.filter((r) => r.count === count);
    const steady = runs.map((r) => r.steady).filter(Boolean);
    return {
      count,
      runs,
      steady,
      ceiling: runs[0].ceiling,
      shares: runs.map((r) => r.p2pShare),
      stalls: runs.reduce((sum, r) => sum + r.totalStalls, 0),
      maxStall: Math.max(...runs.map((r) => r.maxStallSeconds)),
      slowestStart: Math.max(...runs.flatMap((r) => r.rows.map((row) => row.startupSeconds ?? Infinity))),
    };
  });
}

function renderResults(results, svgName) {
  const done = results.filter((r) => !r.error);
  const failed = results.filter((r) => r.error);
  const settings = done[0]?.settings ?? {};
  const binPath = path.resolve(process.env.P2P_MEDIASTREAM_BIN || path.join(REPO, "target/debug/p2p-mediastream"));
  const bin = process.env.PAGE_URL ? `the server at ${process.env.PAGE_URL}`
    : binPath.startsWith(`${REPO}/`) ? `\`${path.relative(REPO, binPath)}\``
    : "the `p2p-mediastream` binary given in `P2P_MEDIASTREAM_BIN` (outside the repository)";
  const commit = commandVersion("git", ["-C", REPO, "rev-parse", "--short", "HEAD"], /\w+/);
  const cpu = os.cpus();
  const copies = (x) => (x === null || x === undefined ? "–" : x.toFixed(2));
  const command = `scripts/bench-p2p.sh --viewers ${counts.join(",")} --seconds ${seconds} --stagger ${stagger}` +
    `${repeat > 1 ? ` --repeat ${repeat}` : ""}${opts.set.map((s) => ` --set ${s}`).join("")}`;
  const summary = summarise(done);
  const lines = [
    `Measured with \`${command}\` on ${new Date().toISOString().slice(0, 10)}: ` +
      `${repeat} run${repeat > 1 ? "s" : ""} per viewer count.`,
    "",
    `![P2P share by number of viewers](${svgName})`,
    "",
    "| Viewers | Runs | P2P share, all joined | Of the ceiling | Origin copies | Stalls | P2P share, start-up | P2P share, whole run | Ceiling (N-1)/N | Slowest start |",
    "|--------:|-----:|----------------------:|---------------:|--------------:|-------:|--------------------:|---------------------:|----------------:|--------------:|",
    ...summary.map((c) => {
      const has = c.steady.length > 0;
      return `| ${c.count} | ${c.runs.length} | ${has ? `**${spread(c.steady.map((s) => s.p2pShare), pct)}**` : "–"} ` +
        `| ${has ? spread(c.steady.map((s) => s.ofCeiling), pct) : "–"} ` +
        `| ${has && c.steady.every((s) => s.originCopies !== null) ? spread(c.steady.map((s) => s.originCopies), copies) : "–"} ` +
        `| ${c.stalls} | ${has ? spread(c.steady.map((s) => s.startup.p2pShare), pct) : "–"} ` +
        `| ${spread(c.shares, pct)} | ${pct(c.ceiling)} ` +
        `| ${Number.isFinite(c.slowestStart) ? `${c.slowestStart.toFixed(1)} s` : "never"} |`;
    }),
    ...failed.map((r) => `| ${r.count} | run ${r.run} failed: ${r.error.replace(/\|/g, "\\|")} | | | | | | | | |`),
    "",
    "\"All joined\" is the steady state: from the first sample (every 2 s) at which every viewer " +
      "plays to the end of the run; \"start-up\" is everything before it. Origin copies: segment " +
      "bytes the server sent in the steady state over the bytes one viewer played in it (1.00 is the " +
      "ceiling: every segment entered the swarm exactly once). Stalls count rebuffering after a " +
      "viewer's first frame, in all runs; \"slowest start\" is the longest wait from page load to " +
      "the first frame.",
    "",
    ...(opts.note ? [opts.note, ""] : []),
    "Each run:",
    "",
    "| Viewers | Run | P2P share, all joined | Of the ceiling | Origin copies | Viewers' HTTP copies | Refetched segments | Stalls | Start-up | Whole run | CPU busy | Load |",
    "|--------:|----:|------:|------:|------:|------:|------:|------:|------:|------:|------:|-----:|",
    ...done.map((r) => {
      const s = r.steady;
      return `| ${r.count} | ${r.run} | ${s ? pct(s.p2pShare) : "–"} | ${s ? pct(s.ofCeiling) : "–"} | ${copies(s?.originCopies)} ` +
        `| ${copies(s?.httpCopies)} | ${s ? `${s.refetched.segments} of ${s.segments}` : "–"} | ${r.totalStalls} ` +
        `| ${s ? `${pct(s.startup.p2pShare)} in ${s.startup.seconds.toFixed(0)} s` : "–"} | ${pct(r.p2pShare)} ` +
        `| ${r.cpuBusy.toFixed(0)} % | ${r.loadAverage.toFixed(1)} |`;
    }),
    "",
    "Refetched segments: segments first fetched over HTTP in the steady state that another viewer " +
      "fetched over HTTP too. CPU busy is the whole machine (all cores) over the run, load the " +
      `1-minute load average at its end (${cpu.length} cores).`,
    "",
    "Set-up:",
    "",
    `- Each run starts N headless Chromium viewers, each its own browser process, that join ${stagger} s ` +
      `apart and watch until the last one has played for ${seconds} s. Signalling goes through our ` +
      "tracker, ICE uses a STUN-only coturn on loopback, everything runs on one machine.",
    `- Machine: ${cpu.length} cores (${cpu[0]?.model.trim() ?? "unknown CPU"}), ${Math.round(os.totalmem() / 2 ** 30)} GiB RAM, ` +
      `${commandVersion("/usr/bin/chromium", ["--version"], /Chromium [\d.]+/)}, ` +
      `${commandVersion("ffmpeg", ["-version"], /ffmpeg version [^\s]+/)}, ` +
      `${commandVersion("turnserver", ["--version"], /[\d.]+/).replace(/^/, "coturn ")}.`,
    `- Server: ${bin}, repository at commit ${commit}.`,
    `- Test card: \`scripts/generate-video.sh\`, ${TEST_CARD.size}, ${TEST_CARD.bitrate}bit/s H.264 + AAC, ` +
      `${TEST_CARD.segment} s segments, ${TEST_CARD.listSize} segments in the live playlist.`,
    `- Player settings: ${Object.entries(settings).map(([k, v]) => `\`${k}: ${v}\``).join(", ")}.`,
    "",
    "Per viewer, each run:",
    "",
  ];
  for (const r of done) {
    lines.push(`<details><summary>${r.count} viewers, run ${r.run}</summary>`, "", "```", formatTable(r), "```", "", "</details>", "");
  }
  return lines.join("\n");
}

/**
 * Per viewer count: the mean share of the whole run (pale) and of the steady state (green),
 * and a dashed tick for the (N-1)/N ceiling.
 */
function renderSvg(results) {
  const summary = summarise(results);
  const W = 640, H = 330, L = 56, R = 20, T = 56, B = 44;
  const plotW = W - L - R, plotH = H - T - B;
  const slot = plotW / summary.length;
  const barW = Math.min(40, slot * 0.3);
  const y = (value) => T + plotH - (value / 100) * plotH;
  const out = [
    `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" font-family="system-ui, sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="#ffffff"/>`,
    `<text x="${L}" y="20" font-size="14" font-weight="600" fill="#1f2430">P2P share of segment bytes by number of viewers</text>`,
  ];
  for (let value = 0; value <= 100; value += 25) {
    out.push(`<line x1="${L}" x2="${W - R}" y1="${y(value)}" y2="${y(value)}" stroke="#e3e6ec"/>`,
      `<text x="${L - 8}" y="${y(value) + 4}" text-anchor="end" fill="#5b6475">${value} %</text>`);
  }
  summary.forEach((c, i) => {
    const cx = L + slot * (i + 0.5);
    const whole = mean(c.shares);
    const steady = c.steady.length ? mean(c.steady.map((s) => s.p2pShare)) : 0;
    out.push(
      `<rect x="${cx - barW - 2}" y="${y(whole)}" width="${barW}" height="${y(0) - y(whole)}" fill="#a8e0c3"/>`,
      `<text x="${cx - barW / 2 - 2}" y="${y(whole) + 16}" text-anchor="middle" font-size="11" fill="#1f2430">${whole.toFixed(1)}</text>`,
      `<rect x="${cx + 2}" y="${y(steady)}" width="${barW}" height="${y(0) - y(steady)}" fill="#2bb673"/>`,
      `<text x="${cx + barW / 2 + 2}" y="${y(steady) + 16}" text-anchor="middle" font-size="11" font-weight="600" fill="#ffffff">${steady.toFixed(1)}</text>`,
      `<line x1="${cx - barW - 10}" x2="${cx + barW + 10}" y1="${y(c.ceiling)}" y2="${y(c.ceiling)}" stroke="#1f2430" stroke-width="2" stroke-dasharray="5 3"/>`,
      `<text x="${cx}" y="${H - B + 18}" text-anchor="middle" fill="#1f2430">${c.count} viewers</text>`,
      `<text x="${cx}" y="${H - B + 34}" text-anchor="middle" fill="#5b6475">stalls ${c.stalls}</text>`,
    );
  });
  out.push(
    `<rect x="${L}" y="29" width="10" height="10" fill="#a8e0c3"/>`,
    `<text x="${L + 15}" y="38" fill="#1f2430">whole run</text>`,
    `<rect x="${L + 85}" y="29" width="10" height="10" fill="#2bb673"/>`,
    `<text x="${L + 100}" y="38" fill="#1f2430">all joined</text>`,
    `<line x1="${L + 175}" x2="${L + 195}" y1="34" y2="34" stroke="#1f2430" stroke-width="2" stroke-dasharray="5 3"/>`,
    `<text x="${L + 200}" y="38" fill="#1f2430">ceiling (N-1)/N, one HTTP fetch per segment</text>`,
    "</svg>",
    "",
  );
  return out.join("\n");
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
