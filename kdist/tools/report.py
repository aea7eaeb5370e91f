"""`kdist report`: one self-contained HTML page that pictures a local run from its metrics.jsonl.

Pure: `parse` turns the lines of `metrics.jsonl` into a `RunModel`; `render_html` turns the model
into an HTML string with inline SVG charts (no JavaScript, no network, no external fonts or CSS).
The same input always gives the same bytes.

metrics.jsonl (written by kdist.targets.local.job) holds two kinds of JSON lines, each with
`elapsed` (seconds since the nodes started), `wall` and `node`:

- kdist's own events, `kdist.start` / `kdist.kill` / `kdist.exit` / `kdist.add-node` / ...;
  `node` is the node the event is about;
- the trainer's `KDIST_METRIC` lines (start, step, checkpoint, done), printed by global rank 0;
  `node` is the node whose output carried them, i.e. where rank 0 ran at the time. They are
  optional: for a trainer without them, the worker groups come from the rendezvous rounds kdist
  read in torchrun's agent logs (`kdist.round` / `kdist.resumed`, with world size and restart).

A reused `--run-dir` appends a second run to the same file (its `elapsed` starts again near 0);
the report shows the last run and says how many the file holds.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

TRAINER_EVENTS = ("start", "step", "checkpoint", "done")
RANK0 = "rank 0 (global)"

# ---- the model ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One training step as reported by global rank 0."""

    t: float
    node: int  # where rank 0 ran
    group: int  # index of the worker group (rendezvous round) it belongs to
    step: int
    loss: float | None
    samples_per_s: float | None
    world_size: int | None


@dataclass(frozen=True)
class Marker:
    """An event drawn as a vertical line: a node started/was killed/exited, a restart, ..."""

    t: float
    kind: str  # see KINDS
    nodes: tuple[int, ...]  # the nodes it is about; () for job-wide events
    detail: str = ""  # e.g. "code 0", "world 2", "step 50"
    source: str = "kdist"  # "kdist" or RANK0


@dataclass(frozen=True)
class Group:
    """One worker group (a rendezvous round's training): world size from t0 to t1."""

    t0: float
    t1: float
    world_size: int
    restart: int
    resumed_step: int


@dataclass(frozen=True)
class Lifeline:
    """One node's agent: started at t0, exited at t1 (None: still running at the end)."""

    node: int
    t0: float
    t1: float | None = None
    code: int | None = None
    killed: bool = False


@dataclass(frozen=True)
class RunModel:
    samples: tuple[Sample, ...] = ()
    markers: tuple[Marker, ...] = ()
    checkpoints: tuple[tuple[float, int], ...] = ()  # (t, step)
    groups: tuple[Group, ...] = ()
    lifelines: tuple[Lifeline, ...] = ()
    elapsed: float = 0.0
    final_step: int | None = None
    done: bool = False
    skipped: int = 0  # empty or garbled lines
    runs_in_file: int = 1

    @property
    def nodes(self) -> tuple[int, ...]:
        seen = {life.node for life in self.lifelines} | {s.node for s in self.samples}
        return tuple(sorted(n for n in seen if n >= 0))

    @property
    def restarts(self) -> int:
        return sum(1 for g in self.groups if g.restart > 0)

    @property
    def world_sizes(self) -> tuple[int, ...]:
        """World sizes in the order seen, consecutive repeats dropped."""
        sizes: list[int] = []
        for group in self.groups:
            if not sizes or sizes[-1] != group.world_size:
                sizes.append(group.world_size)
        return tuple(sizes)

    @property
    def paused(self) -> float:
        """Seconds without training between worker groups (failure detection + rendezvous)."""
        return sum(max(b.t0 - a.t1, 0.0) for a, b in zip(self.groups, self.groups[1:], strict=False))


# ---- parsing -----------------------------------------------------------------------------


def read_records(lines: Iterable[str]) -> tuple[list[dict[str, Any]], int]:
    """JSON objects with an `event` name and a numeric `elapsed`; and how many lines were not."""
    records: list[dict[str, Any]] = []
    skipped = 0
    for line in lines:
        try:
            value = json.loads(line)
        except ValueError:
            skipped += 1
            continue
        if (isinstance(value, dict) and isinstance(value.get("event"), str)
                and _number(value.get("elapsed")) is not None):
            records.append(value)
        else:
            skipped += 1
    return records, skipped


def split_runs(records: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """One list per run: `elapsed` never goes back within a run, so a drop starts a new one."""
    runs: list[list[dict[str, Any]]] = []
    last = math.inf
    for record in records:
        t = float(record["elapsed"])
        if t < last - 1e-9:
            runs.append([])
        runs[-1].append(record)
        last = t
    return runs


def parse(lines: Iterable[str]) -> RunModel:
    """The model of the last run in `lines` (the lines of a metrics.jsonl)."""
    records, skipped = read_records(lines)
    runs = split_runs(records)
    run = runs[-1] if runs else []
    groups = build_groups(run)
    return RunModel(
        samples=build_samples(run),
        markers=build_markers(run),
        checkpoints=tuple((float(r["elapsed"]), _int(r.get("step")))
                          for r in run if r["event"] == "checkpoint"),
        groups=groups,
        lifelines=build_lifelines(run),
        elapsed=max((float(r["elapsed"]) for r in run), default=0.0),
        final_step=final_step(run),
        done=any(r["event"] == "done" for r in run),
        skipped=skipped,
        runs_in_file=max(len(runs), 1),
    )


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _node(record: dict[str, Any]) -> int:
    return _int(record.get("node"), -1)


def _group_index(run: Sequence[dict[str, Any]]) -> list[int]:
    """For each record, the index of the worker group it belongs to (-1 before the first)."""
    index, out = -1, []
    for record in run:
        if record["event"] == "start":
            index += 1
        out.append(index)
    return out


def build_samples(run: Sequence[dict[str, Any]]) -> tuple[Sample, ...]:
    samples = []
    for record, group in zip(run, _group_index(run), strict=True):
        if record["event"] != "step":
            continue
        world = record.get("world_size")
        samples.append(Sample(float(record["elapsed"]), _node(record), max(group, 0),
                              _int(record.get("step")), _number(record.get("loss")),
                              _number(record.get("samples_per_s")),
                              world if isinstance(world, int) else None))
    return tuple(samples)


ROUND_EVENTS = ("kdist.round", "kdist.resumed")


def trainer_starts(run: Sequence[dict[str, Any]]) -> bool:
    return any(r["event"] == "start" for r in run)


def round_groups(run: Sequence[dict[str, Any]]) -> tuple[Group, ...]:
    """Worker groups from torchrun's rendezvous rounds; each ends at the last record before the
    next round (a kill, an exit) or at the end of the run."""
    groups: list[Group] = []
    for record in run:
        t = float(record["elapsed"])
        if record["event"] in ROUND_EVENTS:
            groups.append(Group(t, t, _int(record.get("world_size")), _int(record.get("restart")), 0))
        elif groups:
            last = groups[-1]
            groups[-1] = Group(last.t0, t, last.world_size, last.restart, last.resumed_step)
    return tuple(groups)


def build_groups(run: Sequence[dict[str, Any]]) -> tuple[Group, ...]:
    """Worker groups from the trainer's `start` events; each ends at its last trainer line.

    Without any `start` (a trainer that prints only steps) the steps' world sizes make the groups;
    without any trainer line, torchrun's rendezvous rounds do.
    """
    if not any(r["event"] in TRAINER_EVENTS for r in run):
        return round_groups(run)
    groups: list[Group] = []
    for record in run:
        event, t = record["event"], float(record["elapsed"])
        if event not in TRAINER_EVENTS:
            continue
        world = record.get("world_size")
        new_world = isinstance(world, int) and (not groups or groups[-1].world_size != world)
        if event == "start" or (not groups and new_world) or (event == "step" and new_world):
            size = world if isinstance(world, int) else (groups[-1].world_size if groups else 0)
            groups.append(Group(t, t, size, _int(record.get("restart")),
                                _int(record.get("resumed_step"))))
        elif groups:
            last = groups[-1]
            groups[-1] = Group(last.t0, t, last.world_size, last.restart, last.resumed_step)
    return tuple(groups)


def build_lifelines(run: Sequence[dict[str, Any]]) -> tuple[Lifeline, ...]:
    lives: dict[int, Lifeline] = {}
    for record in run:
        event, node, t = record["event"], _node(record), float(record["elapsed"])
        if event == "kdist.start" and node >= 0:
            lives[node] = Lifeline(node, t)
        elif event == "kdist.exit" and node >= 0:
            start = lives[node].t0 if node in lives else 0.0
            code = record.get("code")
            lives[node] = Lifeline(node, start, t, code if isinstance(code, int) else None,
                                   record.get("killed") is True)
    return tuple(lives[n] for n in sorted(lives))


def final_step(run: Sequence[dict[str, Any]]) -> int | None:
    steps = [_int(r.get("step")) for r in run
             if r["event"] in ("step", "done") and isinstance(r.get("step"), int)]
    return steps[-1] if steps else None


def build_markers(run: Sequence[dict[str, Any]]) -> tuple[Marker, ...]:
    markers: list[Marker] = []
    rounds = not trainer_starts(run)  # the trainer's own `start` events mark its restarts
    for record in run:
        if record["event"] in ROUND_EVENTS:
            markers.extend(round_markers(record) if rounds else [])
        else:
            markers.extend(record_markers(record))
    return tuple(markers)


def round_markers(record: dict[str, Any]) -> list[Marker]:
    """A rendezvous round from torchrun's agent logs: training (re)starts with its world."""
    t, restart = float(record["elapsed"]), _int(record.get("restart"))
    world = f"world {record.get('world_size')}"
    if record["event"] == "kdist.resumed":
        return [Marker(t, "restart", (), f"restart {restart}, {world}")]
    return [Marker(t, "train-start", (), world)]


def record_markers(record: dict[str, Any]) -> list[Marker]:
    """The markers one metrics line makes (a restart with a resume makes two)."""
    event, t, node = record["event"], float(record["elapsed"]), _node(record)
    nodes = (node,) if node >= 0 else ()
    simple = {"kdist.start": "node-start", "kdist.add-node": "node-added", "kdist.kill": "kill"}
    if event in simple:
        return [Marker(t, simple[event], nodes)]
    if event == "kdist.exit":
        kind = "exit-killed" if record.get("killed") is True else (
            "exit" if record.get("code") == 0 else "exit-failed")
        return [Marker(t, kind, nodes, f"code {record.get('code')}")]
    if event in ("kdist.kill-skipped", "kdist.add-node-skipped"):
        what = event.removeprefix("kdist.").removesuffix("-skipped")
        return [Marker(t, "note", nodes, f"{what} skipped: {record.get('reason', '')}")]
    if event == "start":
        return start_markers(record, t, node)
    if event == "done":
        return [Marker(t, "done", nodes, f"step {record.get('step')}", RANK0)]
    return []


def start_markers(record: dict[str, Any], t: float, node: int) -> list[Marker]:
    restart, resumed = _int(record.get("restart")), _int(record.get("resumed_step"))
    world = f"world {record.get('world_size')}"
    on = (node,) if node >= 0 else ()
    first = (Marker(t, "restart", on, f"restart {restart}, {world}", RANK0) if restart > 0
             else Marker(t, "train-start", on, world, RANK0))
    if resumed > 0:
        return [first, Marker(t, "resume", on, f"step {resumed}", RANK0)]
    return [first]


# ---- labels --------------------------------------------------------------------------------

# kind -> (colour, legend text)
KINDS: dict[str, tuple[str, str]] = {
    "node-start": ("#2ca02c", "node started (kdist)"),
    "node-added": ("#17becf", "node added (kdist)"),
    "kill": ("#d62728", "node killed (kdist --kill)"),
    "exit-killed": ("#8c564b", "node exited after the kill"),
    "exit-failed": ("#e377c2", "node failed"),
    "exit": ("#7f7f7f", "node exited"),
    "note": ("#bcbd22", "kdist note"),
    "train-start": ("#393b79", "training started (rank 0)"),
    "restart": ("#ff7f0e", "worker group restart: new rendezvous round"),
    "resume": ("#9467bd", "resumed from checkpoint"),
    "done": ("#1f77b4", "training done"),
}
CHECKPOINT_COLOR = "#098a7a"
NODE_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
               "#7f7f7f")


def node_names(nodes: Sequence[int]) -> str:
    return ", ".join(f"node-{n}" for n in nodes)


def marker_label(marker: Marker) -> str:
    """`node-2 killed`, `restart 1, world 2`, `resumed from checkpoint step 50`, ..."""
    who = node_names(marker.nodes)
    detail = marker.detail
    return {
        "node-start": f"{who} started",
        "node-added": f"{who} added",
        "kill": f"{who} killed",
        "exit-killed": f"{who} exited ({detail}, killed)",
        "exit-failed": f"{who} failed ({detail})",
        "exit": f"{who} exited ({detail})",
        "note": detail,
        "train-start": f"training started, {detail}",
        "restart": f"{detail} (new rendezvous)",
        "resume": f"resumed from checkpoint {detail}",
        "done": f"done at {detail}",
    }.get(marker.kind, marker.kind)


def merge_markers(markers: Sequence[Marker], within: float) -> list[Marker]:
    """Markers of the same kind and detail less than `within` s apart become one (for charts)."""
    merged: list[Marker] = []
    for marker in sorted(markers, key=lambda m: m.t):
        for i, other in enumerate(merged):
            if (other.kind, other.detail) == (marker.kind, marker.detail) \
                    and marker.t - other.t < within:
                merged[i] = Marker(other.t, other.kind, other.nodes + marker.nodes, other.detail,
                                   other.source)
                break
        else:
            merged.append(marker)
    return merged


def seconds(t: float) -> str:
    return f"{t:.2f} s"


def duration(t: float) -> str:
    minutes, rest = divmod(t, 60.0)
    return f"{int(minutes)} min {rest:.1f} s" if minutes else f"{rest:.1f} s"


# ---- scales ----------------------------------------------------------------------------------


def nice_step(span: float, count: int) -> float:
    raw = max(span, 1e-12) / max(count, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    for factor in (1.0, 2.0, 2.5, 5.0, 10.0):
        if raw <= factor * power * (1 + 1e-9):
            return factor * power
    return 10.0 * power


def nice_ticks(lo: float, hi: float, count: int = 6) -> list[float]:
    step = nice_step(hi - lo, count)
    first = math.ceil(lo / step - 1e-9)
    last = math.floor(hi / step + 1e-9)
    return [round(i * step, 10) for i in range(first, last + 1)]


def tick_text(value: float) -> str:
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-4):
        return f"{value:.0e}"
    return f"{value:.6f}".rstrip("0").rstrip(".")


@dataclass(frozen=True)
class Scale:
    """Maps values to pixels: [lo, hi] -> [a, b] (linear or log10)."""

    lo: float
    hi: float
    a: float
    b: float
    log: bool = False

    def __call__(self, value: float) -> float:
        f = (math.log10 if self.log else float)
        lo, hi = f(self.lo), f(self.hi)
        v = f(min(max(value, self.lo), self.hi))
        return self.a + (v - lo) / ((hi - lo) or 1.0) * (self.b - self.a)

    def ticks(self) -> list[float]:
        if not self.log:
            return nice_ticks(self.lo, self.hi, 5)
        lo, hi = math.floor(math.log10(self.lo)), math.ceil(math.log10(self.hi))
        return [10.0 ** p for p in range(lo, hi + 1) if self.lo <= 10.0 ** p <= self.hi * 1.0001]


def value_scale(values: Sequence[float], a: float, b: float, log_ok: bool = False) -> Scale:
    """A y scale for `values` (pixels a at the bottom, b at the top); log when they span >= 50x."""
    if not values:
        return Scale(0.0, 1.0, a, b)
    lo, hi = min(values), max(values)
    if log_ok and lo > 0 and hi / lo >= 50:
        return Scale(10.0 ** math.floor(math.log10(lo)), 10.0 ** math.ceil(math.log10(hi)), a, b,
                     log=True)
    lo = min(lo, 0.0)
    hi = hi * 1.05 if hi > lo else lo + 1.0  # headroom: a line at the maximum stays visible
    step = nice_step(hi - lo, 5)
    return Scale(lo, math.ceil(hi / step - 1e-9) * step, a, b)


# ---- SVG ---------------------------------------------------------------------------------------

WIDTH = 960
LEFT, RIGHT = 70, 24
PLOT_H = 170
ROW_H = 14  # one row of marker labels
CHAR_W = 6.1  # average width of one 11px character
TIME_TICKS = 12


def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def num(value: float) -> str:
    return f"{value:.1f}"


@dataclass(frozen=True)
class PlacedLabel:
    marker: Marker
    text: str
    row: int
    anchor: str  # "start" (right of the line) or "end" (left of it)


@dataclass(frozen=True)
class Frame:
    """What every chart shares: the time axis and the marker labels placed above the plot."""

    x: Scale
    labels: tuple[PlacedLabel, ...]
    rows: int
    checkpoints: tuple[tuple[float, int], ...] = ()
    pauses: tuple[tuple[float, float], ...] = ()

    @property
    def band(self) -> float:
        return self.rows * ROW_H + 8


def place_labels(markers: Sequence[Marker], x: Scale) -> tuple[tuple[PlacedLabel, ...], int]:
    """Greedy rows: a label goes on the first row where it does not overlap the one before it."""
    ends: list[float] = []  # per row, the right edge of its last label
    placed = []
    for marker in markers:
        text = marker_label(marker)
        width = len(text) * CHAR_W
        at = x(marker.t)
        anchor = "start" if at + 4 + width <= x.b else "end"
        left = at + 4 if anchor == "start" else at - 4 - width
        row = next((i for i, end in enumerate(ends) if left > end + 6), len(ends))
        if row == len(ends):
            ends.append(0.0)
        ends[row] = max(ends[row], left + width) if anchor == "start" else max(ends[row], at)
        placed.append(PlacedLabel(marker, text, row, anchor))
    return tuple(placed), len(ends)


def make_frame(model: RunModel) -> Frame:
    end = max(model.elapsed, 1.0)
    step = nice_step(end, 3 * TIME_TICKS)  # finer than the ticks: little room after the end
    x = Scale(0.0, math.ceil(end / step - 1e-9) * step, LEFT, WIDTH - RIGHT)
    pixel = (x.hi - x.lo) / (x.b - x.a)
    markers = merge_markers(model.markers, within=6 * pixel)
    labels, rows = place_labels(markers, x)
    pauses = tuple((a.t1, b.t0) for a, b in zip(model.groups, model.groups[1:], strict=False)
                   if b.t0 > a.t1)
    return Frame(x, labels, rows, model.checkpoints, pauses)


def svg_open(chart_id: str, title: str, height: float) -> str:
    return (f'<svg id="{chart_id}" class="chart" role="img" aria-label="{esc(title)}" '
            f'xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{num(height)}" '
            f'viewBox="0 0 {WIDTH} {num(height)}">')


def time_axis(frame: Frame, top: float, bottom: float) -> list[str]:
    """Grid lines, tick labels and the axis title below the plot."""
    out = []
    for tick in nice_ticks(frame.x.lo, frame.x.hi, TIME_TICKS):
        at = num(frame.x(tick))
        out.append(f'<line class="grid" x1="{at}" y1="{num(top)}" x2="{at}" y2="{num(bottom)}"/>')
        out.append(f'<text class="tick" x="{at}" y="{num(bottom + 14)}" '
                   f'text-anchor="middle">{tick_text(tick)}</text>')
    out.append(f'<text class="axis" x="{num((frame.x.a + frame.x.b) / 2)}" y="{num(bottom + 30)}" '
               'text-anchor="middle">seconds since the nodes started</text>')
    return out


def value_axis(y: Scale, title: str) -> list[str]:
    out = []
    for tick in y.ticks():
        at = num(y(tick))
        out.append(f'<line class="grid" x1="{LEFT}" y1="{at}" x2="{WIDTH - RIGHT}" y2="{at}"/>')
        out.append(f'<text class="tick" x="{LEFT - 6}" y="{at}" text-anchor="end" '
                   f'dominant-baseline="middle">{tick_text(tick)}</text>')
    mid = num((y.a + y.b) / 2)
    out.append(f'<text class="axis" x="14" y="{mid}" text-anchor="middle" '
               f'transform="rotate(-90 14 {mid})">{esc(title)}</text>')
    return out


def pause_bands(frame: Frame, top: float, bottom: float) -> list[str]:
    out = []
    for t0, t1 in frame.pauses:
        x0, x1 = frame.x(t0), frame.x(t1)
        out.append(f'<rect class="pause" x="{num(x0)}" y="{num(top)}" width="{num(x1 - x0)}" '
                   f'height="{num(bottom - top)}"><title>no training from {seconds(t0)} to '
                   f'{seconds(t1)}: failure detection, rendezvous, restart</title></rect>')
    return out


def marker_lines(frame: Frame, bottom: float) -> list[str]:
    """Each marker: a vertical line through the plot and its label in the band above it."""
    out = []
    for label in frame.labels:
        color = KINDS.get(label.marker.kind, ("#555555", ""))[0]
        at = frame.x(label.marker.t)
        y = 4 + (label.row + 1) * ROW_H - 3
        dx = 4 if label.anchor == "start" else -4
        tip = f"{label.text} at {seconds(label.marker.t)} ({label.marker.source})"
        out.append(f'<g class="marker {label.marker.kind}"><title>{esc(tip)}</title>'
                   f'<line x1="{num(at)}" y1="{num(y - 10)}" x2="{num(at)}" y2="{num(bottom)}" '
                   f'stroke="{color}"/><text x="{num(at + dx)}" y="{num(y)}" '
                   f'text-anchor="{label.anchor}" fill="{color}">{esc(label.text)}</text></g>')
    return out


def checkpoint_ticks(frame: Frame, bottom: float) -> list[str]:
    out = []
    for t, step in frame.checkpoints:
        at = num(frame.x(t))
        out.append(f'<line class="ckpt" x1="{at}" y1="{num(bottom)}" x2="{at}" '
                   f'y2="{num(bottom - 7)}"><title>checkpoint step {step} at {seconds(t)}'
                   '</title></line>')
    return out


@dataclass(frozen=True)
class Line:
    """One polyline of a chart: (t, value) points, drawn in `color`."""

    points: tuple[tuple[float, float], ...]
    color: str
    title: str
    dashed: bool = False


def polyline(line: Line, frame: Frame, y: Scale) -> str:
    points = " ".join(f"{num(frame.x(t))},{num(y(v))}" for t, v in line.points)
    dash = ' stroke-dasharray="5 4"' if line.dashed else ""
    return (f'<polyline class="series" points="{points}" stroke="{line.color}"{dash}>'
            f'<title>{esc(line.title)}</title></polyline>')


def chart(chart_id: str, title: str, frame: Frame, y_title: str, lines: Sequence[Line],
          log_ok: bool = False) -> str:
    """One chart: the marker band on top, then the plot, the shared time axis below."""
    top = frame.band
    bottom = top + PLOT_H
    y = value_scale([v for line in lines for _, v in line.points], bottom, top, log_ok)
    if y.log:
        y_title += " (log scale)"
    parts = [svg_open(chart_id, title, bottom + 40),
             f'<rect class="plot" x="{LEFT}" y="{num(top)}" width="{WIDTH - LEFT - RIGHT}" '
             f'height="{PLOT_H}"/>',
             *pause_bands(frame, top, bottom), *time_axis(frame, top, bottom),
             *value_axis(y, y_title), *marker_lines(frame, bottom),
             *checkpoint_ticks(frame, bottom), *(polyline(line, frame, y) for line in lines)]
    if not lines:
        parts.append(f'<text class="empty" x="{num((frame.x.a + frame.x.b) / 2)}" '
                     f'y="{num((top + bottom) / 2)}" text-anchor="middle">no data</text>')
    parts.append("</svg>")
    return "\n".join(parts)


# ---- the series --------------------------------------------------------------------------------


def node_color(node: int) -> str:
    return NODE_COLORS[node % len(NODE_COLORS)] if node >= 0 else "#333333"


def sample_lines(samples: Sequence[Sample], attr: str) -> list[Line]:
    """Rank 0's values: one polyline per stretch on one node within one worker group."""
    runs: list[tuple[int, int, list[tuple[float, float]]]] = []
    for sample in samples:
        value = getattr(sample, attr)
        if value is None:
            continue
        if not runs or runs[-1][:2] != (sample.node, sample.group):
            runs.append((sample.node, sample.group, []))
        runs[-1][2].append((sample.t, float(value)))
    return [Line(tuple(points), node_color(node), f"{RANK0} on node-{node}")
            for node, _, points in runs]


def world_lines(model: RunModel) -> list[Line]:
    """Node agents alive (dashed, from kdist) under the world size of each worker group (solid,
    from rank 0; a gap while no group trains)."""
    lines = []
    changes = sorted([(life.t0, 1) for life in model.lifelines]
                     + [(life.t1, -1) for life in model.lifelines if life.t1 is not None])
    if changes:
        alive, points = 0, [(changes[0][0], 0.0)]
        for t, delta in changes:
            points.append((t, float(alive)))
            alive += delta
            points.append((t, float(alive)))
        points.append((model.elapsed, float(alive)))
        lines.append(Line(tuple(points), "#7f7f7f", "node agents alive (kdist)", dashed=True))
    lines.extend(Line(((g.t0, g.world_size), (g.t1, g.world_size)), "#393b79",
                      "world size of the worker group (from rank 0)") for g in model.groups)
    return lines


def lifeline_chart(model: RunModel, frame: Frame) -> str:
    """Nodes: one bar per node's agent from its start to its exit."""
    top = frame.band
    rows = max(len(model.lifelines), 1)
    bottom = top + rows * 26 + 8
    parts = [svg_open("chart-nodes", "node agents over time", bottom + 40),
             f'<rect class="plot" x="{LEFT}" y="{num(top)}" width="{WIDTH - LEFT - RIGHT}" '
             f'height="{num(bottom - top)}"/>', *pause_bands(frame, top, bottom),
             *time_axis(frame, top, bottom), *marker_lines(frame, bottom)]
    for i, life in enumerate(model.lifelines):
        y = top + 8 + i * 26
        end = model.elapsed if life.t1 is None else life.t1
        x0, x1 = frame.x(life.t0), frame.x(end)
        state = ("running at the end" if life.t1 is None else
                 f"exited with code {life.code}" + (" after the kill" if life.killed else ""))
        parts.append(f'<text class="tick" x="{LEFT - 6}" y="{num(y + 9)}" text-anchor="end" '
                     f'dominant-baseline="middle">node-{life.node}</text>')
        parts.append(f'<rect class="life" x="{num(x0)}" y="{num(y)}" width="{num(max(x1 - x0, 1))}"'
                     f' height="18" fill="{node_color(life.node)}"><title>node-{life.node}: '
                     f'{seconds(life.t0)} to {seconds(end)}, {esc(state)}</title></rect>')
        if life.t1 is not None:
            parts.append(f'<text class="end" x="{num(x1 + 4)}" y="{num(y + 9)}" '
                         f'dominant-baseline="middle">{"killed" if life.killed else life.code}'
                         '</text>')
    parts.append("</svg>")
    return "\n".join(parts)


# ---- the page ----------------------------------------------------------------------------------

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222;
       margin: 24px auto; max-width: 1000px; padding: 0 12px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 22px 0 4px; }
p.note { color: #555; margin: 0 0 14px; }
table { border-collapse: collapse; margin: 6px 0 10px; }
th, td { text-align: left; padding: 3px 12px 3px 0; border-bottom: 1px solid #e4e4e4;
         vertical-align: top; }
th { color: #555; font-weight: 600; } td.t { text-align: right; font-variant-numeric: tabular-nums; }
ul.legend { list-style: none; padding: 0; margin: 4px 0 0; display: flex; flex-wrap: wrap; gap: 4px 16px; }
ul.legend li { font-size: 12px; color: #444; }
.key { display: inline-block; width: 18px; height: 0; border-top: 3px solid; margin-right: 5px;
       vertical-align: middle; }
.key.dashed { border-top-style: dashed; } .key.band { height: 10px; border: 0; background: #fdebd3; }
svg.chart { display: block; font: 11px system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
svg .plot { fill: #fcfcfc; stroke: #bbb; } svg .grid { stroke: #ececec; }
svg .tick { fill: #555; } svg .axis { fill: #333; font-size: 12px; }
svg .series { fill: none; stroke-width: 1.6; stroke-linejoin: round; }
svg .marker line { stroke-width: 1.2; stroke-dasharray: 4 3; } svg .ckpt { stroke: #098a7a; stroke-width: 2; }
svg .marker text { paint-order: stroke; stroke: #fff; stroke-width: 3px; }
svg .pause { fill: #fdebd3; } svg .end { fill: #333; } svg .empty { fill: #999; font-size: 14px; }
"""


def summary_rows(model: RunModel, run_id: str) -> list[tuple[str, str]]:
    ckpts = model.checkpoints
    ckpt_text = "none" if not ckpts else (
        f"{len(ckpts)} (last: step {ckpts[-1][1]} at {seconds(ckpts[-1][0])})")
    step = "-" if model.final_step is None else str(model.final_step)
    kills = [m for m in model.markers if m.kind == "kill"]
    rows = [
        ("run", run_id),
        ("nodes", f"{len(model.nodes)} ({node_names(model.nodes)})" if model.nodes else "0"),
        ("final step", step + ("" if model.done else " (no done event)")),
        ("elapsed", f"{duration(model.elapsed)} ({seconds(model.elapsed)})"),
        ("restarts", str(model.restarts)),
        ("world sizes seen", " → ".join(map(str, model.world_sizes)) or "-"),
        ("checkpoints", ckpt_text),
        ("nodes killed", ", ".join(f"{node_names(m.nodes)} at {seconds(m.t)}" for m in kills)
         or "none"),
        ("training paused", f"{seconds(model.paused)} between worker groups" if model.paused
         else "never"),
    ]
    if model.runs_in_file > 1:
        rows.append(("note", f"metrics.jsonl holds {model.runs_in_file} runs (a reused --run-dir);"
                             " this report shows the last one"))
    if model.skipped:
        rows.append(("skipped lines", f"{model.skipped} empty or garbled lines of metrics.jsonl"))
    return rows


def summary_table(rows: Sequence[tuple[str, str]]) -> str:
    body = "\n".join(f'<tr><th scope="row">{esc(k)}</th><td>{esc(v)}</td></tr>' for k, v in rows)
    return f'<table class="summary">\n{body}\n</table>'


def events_table(model: RunModel) -> str:
    rows = []
    for marker in sorted(model.markers, key=lambda m: m.t):
        color = KINDS.get(marker.kind, ("#555555", ""))[0]
        source = marker.source
        if marker.source == RANK0 and marker.nodes:
            source += f" on {node_names(marker.nodes)}"
        rows.append(f'<tr><td class="t">{seconds(marker.t)}</td><td><span class="key" '
                    f'style="border-color:{color}"></span>{esc(marker_label(marker))}</td>'
                    f"<td>{esc(source)}</td></tr>")
    head = '<tr><th>time</th><th>event</th><th>from</th></tr>'
    return f'<table class="events">\n{head}\n' + "\n".join(rows) + "\n</table>"


def legend(model: RunModel, series: Sequence[Line]) -> str:
    items = []
    for line in series:
        dashed = " dashed" if line.dashed else ""
        items.append(f'<li><span class="key{dashed}" style="border-color:{line.color}"></span>'
                     f"{esc(line.title)}</li>")
    used = dict.fromkeys(m.kind for m in model.markers)
    for kind in (k for k in KINDS if k in used):
        color, text = KINDS[kind]
        items.append(f'<li><span class="key dashed" style="border-color:{color}"></span>'
                     f"{esc(text)}</li>")
    if model.checkpoints:
        items.append(f'<li><span class="key" style="border-color:{CHECKPOINT_COLOR}"></span>'
                     "checkpoint (tick on the time axis)</li>")
    if model.paused > 0:
        items.append('<li><span class="key band"></span>no training (between worker groups)</li>')
    return '<ul class="legend">' + "".join(dict.fromkeys(items)) + "</ul>"


def render_html(model: RunModel, run_id: str) -> str:
    """The whole page: summary, four charts on one time axis, and the event list."""
    frame = make_frame(model)
    loss = sample_lines(model.samples, "loss")
    speed = sample_lines(model.samples, "samples_per_s")
    world = world_lines(model)
    title = f"kdist report: {run_id}"
    sections = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f"<title>{esc(title)}</title>", f"<style>{STYLE}</style>", "</head>", "<body>",
        f"<h1>kdist run <code>{esc(run_id)}</code></h1>",
        '<p class="note">Every chart shares one time axis: seconds since kdist started the nodes. '
        f"Loss and throughput come from the trainer's global rank 0, labelled “{RANK0}” with the "
        "node it ran on; node events come from kdist.</p>",
        summary_table(summary_rows(model, run_id)),
        legend(model, [*loss, *world]),
        "<h2>Loss</h2>", chart("chart-loss", "loss over time", frame, "loss", loss, log_ok=True),
        "<h2>Throughput</h2>",
        chart("chart-throughput", "samples per second over time", frame, "samples/s", speed),
        "<h2>World size</h2>", chart("chart-world", "world size over time", frame, "world size",
                                     world),
        "<h2>Nodes</h2>", lifeline_chart(model, frame),
        "<h2>Events</h2>", events_table(model),
        "</body>", "</html>", "",
    ]
    return "\n".join(sections)
