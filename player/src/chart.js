// A small hand-drawn chart: cumulative bytes received, HTTP stacked under P2P, over time.

import { formatBytes } from "./format.js";

const COLORS = { p2p: "#2bb673", http: "#f0a030", grid: "#2a3140", text: "#8a94a6" };
const PAD = { left: 56, right: 10, top: 10, bottom: 22 };

/** Draws `samples` ({t, p2p, http}, cumulative, t in seconds) into `canvas`. */
export function drawChart(canvas, samples) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  ctx.font = "11px system-ui, sans-serif";

  const plotW = width - PAD.left - PAD.right;
  const plotH = height - PAD.top - PAD.bottom;
  const last = samples[samples.length - 1];
  const maxBytes = niceCeiling(last ? last.p2p + last.http : 0);
  const t0 = samples.length ? samples[0].t : 0;
  const span = Math.max(30, last ? last.t - t0 : 0);
  const x = (t) => PAD.left + ((t - t0) / span) * plotW;
  const y = (bytes) => PAD.top + plotH - (bytes / maxBytes) * plotH;

  // Grid and y labels.
  ctx.strokeStyle = COLORS.grid;
  ctx.fillStyle = COLORS.text;
  ctx.lineWidth = 1;
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (let i = 0; i <= 4; i++) {
    const value = (maxBytes * i) / 4;
    const gy = Math.round(y(value)) + 0.5;
    ctx.beginPath();
    ctx.moveTo(PAD.left, gy);
    ctx.lineTo(width - PAD.right, gy);
    ctx.stroke();
    ctx.fillText(formatBytes(value), PAD.left - 6, gy);
  }
  ctx.textAlign = "left";
  ctx.textBaseline = "alphabetic";
  ctx.fillText(`${Math.round(span)} s ago`, PAD.left, height - 6);
  ctx.textAlign = "right";
  ctx.fillText("now", width - PAD.right, height - 6);

  if (samples.length < 2) return;
  // HTTP band from 0, P2P band stacked on top of it.
  fillBand(ctx, samples, x, y, () => 0, (s) => s.http, COLORS.http);
  fillBand(ctx, samples, x, y, (s) => s.http, (s) => s.http + s.p2p, COLORS.p2p);
}

function fillBand(ctx, samples, x, y, lower, upper, color) {
  ctx.beginPath();
  samples.forEach((s, i) => (i ? ctx.lineTo(x(s.t), y(upper(s))) : ctx.moveTo(x(s.t), y(upper(s)))));
  for (let i = samples.length - 1; i >= 0; i--) ctx.lineTo(x(samples[i].t), y(lower(samples[i])));
  ctx.closePath();
  ctx.globalAlpha = 0.35;
  ctx.fillStyle = color;
  ctx.fill();
  ctx.globalAlpha = 1;
  ctx.beginPath();
  samples.forEach((s, i) => (i ? ctx.lineTo(x(s.t), y(upper(s))) : ctx.moveTo(x(s.t), y(upper(s)))));
  ctx.strokeStyle = color;
  ctx.lineWidth = 2;
  ctx.stroke();
}

/** Rounds up to 1, 2 or 5 times a power of ten (at least 1 MB) so grid labels are round. */
function niceCeiling(value) {
  const v = Math.max(value, 1e6);
  const power = 10 ** Math.floor(Math.log10(v));
  for (const step of [1, 2, 5, 10]) if (step * power >= v) return step * power;
  return 10 * power;
}
