"""The one SVG line chart writer of the benchmark reports (docs/benchmarks-*.svg from
scripts/bench_report.py, docs/soak.svg from scripts/soak_report.py), with its "nice ticks".
Python 3.11+, standard library only.

A chart has a linear x axis from 0, a left y axis (linear from 0, or logarithmic), an
optional right y axis for series drawn against it, shaded x ranges (bands), a dashed
horizontal limit line and a legend in the right margin. Points drawn hollow mark a
condition the caller names in the legend (e.g. saturated steps).
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About `n` round values (steps of 1, 2, 2.5 or 5 times a power of ten) in [lo, hi]."""
    span = hi - lo
    if span <= 0:
        return [lo]
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(s * mag for s in (1, 2, 2.5, 5, 10) if s * mag >= raw)
    start = math.ceil(lo / step) * step
    ticks = []
    v = start
    while v <= hi + step * 1e-9 and len(ticks) < 50:
        ticks.append(round(v, 10))
        v += step
    return ticks


def fmt_num(v: float) -> str:
    """A tick label: 1500 -> 1.5k."""
    if v >= 1000:
        return f"{v / 1000:g}k"
    return f"{v:g}"


@dataclass
class Axis:
    label: str
    log: bool = False  # y axes only
    color: str | None = None  # of the tick labels and the axis label
    pad: float = 1.1  # the axis ends at the largest value times this
    round_top: bool = False  # ... or at the next tick above that (linear y axes)


@dataclass
class Series:
    label: str  # a trailing " (...)" goes on a second, smaller legend line
    color: str
    points: list[tuple[float, float | None]]
    hollow: set[float] = field(default_factory=set)  # x values whose point is drawn hollow
    dash: str = ""  # stroke-dasharray
    width: float = 2
    markers: bool = True
    right: bool = False  # drawn against the right y axis


@dataclass
class Band:
    x0: float
    x1: float
    fill: str
    label: str
    label_color: str


def _scale(axis: Axis, values: list[float], top: float, height: float):
    """(value -> y pixel, ticks, tick label) for a y axis spanning `values`."""
    if axis.log:
        y0 = 10 ** math.floor(math.log10(min(values)))
        y1 = 10 ** math.ceil(math.log10(max(values)))
        if y1 <= y0:
            y1 = y0 * 10
        ticks = [10 ** e for e in range(int(round(math.log10(y0))), int(round(math.log10(y1))) + 1)]

        def fy(v: float) -> float:
            v = max(v, y0)
            return top + height - (math.log10(v) - math.log10(y0)) / (math.log10(y1) - math.log10(y0)) * height
        return fy, ticks, lambda v: f"{v:g}"
    y0, y1 = 0.0, max(values) * axis.pad
    ticks = nice_ticks(y0, y1)
    if axis.round_top and len(ticks) > 1 and ticks[-1] < y1:
        ticks.append(round(ticks[-1] + ticks[1] - ticks[0], 10))
    y1 = max(y1, ticks[-1])

    def fy(v: float) -> float:
        return top + height - (v - y0) / (y1 - y0) * height
    return fy, ticks, fmt_num


def line_chart(title: str, x: Axis, y: Axis, series: list[Series], *,
               size: tuple[int, int] = (760, 440), margins: tuple[int, int, int, int] = (80, 200, 48, 58),
               y_right: Axis | None = None, x_ticks: list[tuple[float, str]] | None = None,
               bands: list[Band] = (), hline: tuple[float, str] | None = None,
               legend: bool = True, hollow_legend: tuple[str, list[str]] | None = None) -> str:
    """The SVG text of a line chart. `x_ticks` (value, label) replace the nice ticks of the
    x axis; `hline` is (value, label) on the left axis; `hollow_legend` is the legend's
    words for hollow points, a label and smaller lines under it. The first series is drawn
    on top."""
    W, H = size
    L, R, T, B = margins
    pw, ph = W - L - R, H - T - B
    esc = html.escape
    xs = [p[0] for s in series for p in s.points]
    ys = [p[1] for s in series if not s.right for p in s.points if p[1] is not None and p[1] > 0]
    if not xs or not ys:
        return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="80">'
                f'<text x="10" y="40">{esc(title)}: no data</text></svg>\n')
    x0, x1 = 0.0, (max(xs) * x.pad) or 1.0
    fy, yticks, ylabel = _scale(y, ys + ([hline[0]] if hline and y.log else []), T, ph)
    fy_right = fy
    if y_right is not None:
        right = [p[1] for s in series if s.right for p in s.points if p[1] is not None and p[1] > 0]
        fy_right, rticks, rlabel = _scale(y_right, right or [1.0], T, ph)

    def fx(v: float) -> float:
        return L + (v - x0) / (x1 - x0) * pw

    def fill(color: str | None) -> str:
        return f' fill="{color}"' if color else ""

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
           'font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{L + pw / 2}" y="24" text-anchor="middle" font-size="15" font-weight="bold">{esc(title)}</text>']
    for band in bands:
        b0, b1 = fx(max(band.x0, x0)), fx(min(band.x1, x1))
        if b1 > b0:
            out.append(f'<rect x="{b0:.1f}" y="{T}" width="{b1 - b0:.1f}" height="{ph}" fill="{band.fill}"/>')
            out.append(f'<text x="{b0 + 4:.1f}" y="{T + 14}" fill="{band.label_color}">{esc(band.label)}</text>')
    for v in yticks:
        yv = fy(v)
        out.append(f'<line x1="{L}" y1="{yv:.1f}" x2="{L + pw}" y2="{yv:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{L - 6}" y="{yv + 4:.1f}" text-anchor="end"{fill(y.color)}>{ylabel(v)}</text>')
    if y_right is not None:
        for v in rticks:
            out.append(f'<text x="{L + pw + 6}" y="{fy_right(v) + 4:.1f}"{fill(y_right.color)}>{rlabel(v)}</text>')
    for v, label in x_ticks if x_ticks is not None else [(v, fmt_num(v)) for v in nice_ticks(x0, x1, 6)]:
        xv = fx(v)
        out.append(f'<line x1="{xv:.1f}" y1="{T}" x2="{xv:.1f}" y2="{T + ph}" stroke="#eee"/>')
        out.append(f'<text x="{xv:.1f}" y="{T + ph + 18}" text-anchor="middle">{label}</text>')
    out.append(f'<rect x="{L}" y="{T}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>')
    out.append(f'<text x="{L + pw / 2}" y="{H - 14}" text-anchor="middle">{esc(x.label)}</text>')
    out.append(f'<text transform="translate(18 {T + ph / 2}) rotate(-90)" text-anchor="middle"{fill(y.color)}>'
               f'{esc(y.label)}</text>')
    if y_right is not None:
        out.append(f'<text transform="translate({W - 18} {T + ph / 2}) rotate(90)" text-anchor="middle"'
                   f'{fill(y_right.color)}>{esc(y_right.label)}</text>')
    if hline:
        yv = fy(hline[0])
        out.append(f'<line x1="{L}" y1="{yv:.1f}" x2="{L + pw}" y2="{yv:.1f}" stroke="#c00" stroke-dasharray="6 4"/>')
        out.append(f'<text x="{L + pw - 4}" y="{yv - 5:.1f}" text-anchor="end" fill="#c00">{esc(hline[1])}</text>')
    legend_y = T + 10
    parts: list[list[str]] = []  # drawn in reverse, so that the first series is on top
    for s in series:
        part: list[str] = []
        parts.append(part)
        sy = fy_right if s.right else fy
        dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
        pts = sorted((p for p in s.points if p[1] is not None), key=lambda p: p[0])
        if len(pts) > 1:
            path = " ".join(f"{fx(px):.1f},{sy(py):.1f}" for px, py in pts)
            part.append(f'<polyline points="{path}" fill="none" stroke="{s.color}" stroke-width="{s.width:g}"{dash}/>')
        for px, py in pts if s.markers else []:
            dot = "white" if px in s.hollow else s.color
            part.append(f'<circle cx="{fx(px):.1f}" cy="{sy(py):.1f}" r="4.5" fill="{dot}" stroke="{s.color}" stroke-width="2">'
                        f'<title>{esc(s.label)}: {px:g} -> {py:.4g}</title></circle>')
        if not legend:
            continue
        out.append(f'<line x1="{L + pw + 14}" y1="{legend_y}" x2="{L + pw + 38}" y2="{legend_y}" '
                   f'stroke="{s.color}" stroke-width="3"{dash}/>')
        words = s.label.split(" (")
        out.append(f'<text x="{L + pw + 44}" y="{legend_y + 4}">{esc(words[0])}</text>')
        if len(words) > 1:
            legend_y += 14
            out.append(f'<text x="{L + pw + 44}" y="{legend_y + 4}" font-size="10">({esc(words[1])}</text>')
        legend_y += 20
    for part in reversed(parts):
        out.extend(part)
    if legend and hollow_legend:
        word, notes = hollow_legend
        out.append(f'<circle cx="{L + pw + 26}" cy="{legend_y + 6}" r="4.5" fill="white" stroke="#555" stroke-width="2"/>')
        out.append(f'<text x="{L + pw + 44}" y="{legend_y + 10}">{esc(word)}</text>')
        for i, note in enumerate(notes):
            out.append(f'<text x="{L + pw + 14}" y="{legend_y + 26 + 13 * i}" font-size="10">{esc(note)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
