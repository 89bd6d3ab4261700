"""The one table: a row per measurement with its median, min and max, its ratio to the
hand-written kernel.json's (or, for %%container, its extra over the bare runtime), a target
with its pass/fail mark, and the medians of jupyter_client's phases."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

PASS, FAIL = "✓", "✗"
PHASE_ORDER = ("sigint", "request", "exit", "cleanup", "pre", "launch", "post", "reply")
HEADER = ["runtime", "measurement", "unit", "median", "min", "max", "ratio", "target",
          "phases (median ms) / notes"]  # fmt: skip

# Targets (benchmarks/README.md and docs/contributors.md say why).
START_RATIO = 1.00  # ours / hand-written, kernel start
STANDBY_RESTART_RATIO = 0.40  # standby restart / hand-written restart
MAGIC_EXTRA_MS = 50.0  # %%container pass - exec IMAGE python3 -c pass
EARLY_SHUTDOWN_RATIO = 1.10  # shutdown right after start, standby on / off (as fast: noise)

NAMES = {
    "hand": "hand-written kernel.json",
    "ours": "provisioner",
    "standby": "provisioner, standby on",
    "installed": "installed spec (container-kernel install)",
    "host": "host ipykernel (LocalProvisioner)",
}


@dataclass
class Row:
    group: str  # a runtime, or "host"
    name: str
    unit: str  # "ms", "MB", or "x" (a ratio)
    samples: list[float] = field(default_factory=list)
    ratio: str = ""
    target: str = ""
    detail: str = ""  # phases, notes

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None

    def cells(self) -> list[str]:
        def show(value: float | None) -> str:
            if value is None:
                return "—"
            return f"{value:.2f}" if self.unit == "x" else f"{value:.0f}"

        low, high = (min(self.samples), max(self.samples)) if self.samples else (None, None)
        return [self.group, self.name, self.unit, show(self.median), show(low), show(high),
                self.ratio, self.target, self.detail]  # fmt: skip


class Samples:
    """What a run measured: (group, kind, config) -> one value per repetition."""

    def __init__(self, values: dict) -> None:
        self.values = values

    def __call__(self, group: str, kind: str, config: str = "") -> list:
        return self.values.get((group, kind, config), [])


def ratio(row: Row, reference: Row | None) -> float | None:
    """Median over median (both measured in the same repetitions, alternately)."""
    if reference is None or row.median is None or not reference.median:
        return None
    return row.median / reference.median


def set_ratio(row: Row, reference: Row | None) -> float | None:
    value = ratio(row, reference)
    row.ratio = "" if value is None else f"{value:.2f}"
    return value


def mark(passed: bool | None) -> str:
    return "?" if passed is None else PASS if passed else FAIL


def at_most(value: float | None, limit: float, text: str) -> str:
    """`text` and whether `value` (as shown, to 2 decimals) is at most `limit`."""
    return f"{text} {mark(None if value is None else round(value, 2) <= limit)}"


def phases(samples: list[dict[str, float]], forced: int = 0) -> str:
    """The median ms of each phase, in jupyter_client's order, then `gone`: when the old runtime
    parent had exited, counted from the shutdown_request (the rest of `request` and `exit` is
    waiting to see it)."""
    if not samples:
        return ""

    def ms(name: str) -> str:
        return f"{statistics.median(s.get(name, 0.0) for s in samples) * 1000:.0f}"

    names = [name for name in PHASE_ORDER if any(name in s for s in samples)]
    parts = [f"{name} {ms(name)}" for name in names]
    if all("gone" in s for s in samples):
        parts.append(f"(old kernel gone {ms('gone')})")
    if forced:
        parts.append(f"(SIGTERM/SIGKILL in {forced}/{len(samples)})")
    return " · ".join(parts)


def runtime_rows(get: Samples, group: str, configs: list[str], concurrent: int) -> list[Row]:
    """The rows of one runtime; `configs` the kernel specs measured on it."""
    starts = _start_rows(get, group, configs)
    rows = starts[:]
    rows += _restart_rows(get, group, configs)
    rows.append(_magic_row(get, group, floor=starts[0]))
    rows += _many_rows(get, group, concurrent)
    rows += _shutdown_rows(get, group, configs)
    rows += _rss_rows(get, group, configs)
    return rows


def _start_rows(get: Samples, group: str, configs: list[str]) -> list[Row]:
    floor = Row(group, "exec IMAGE python3 -c pass (floor)", "ms", get(group, "floor"))
    rows = {c: Row(group, f"start: {NAMES[c]}", "ms", get(group, "start", c)) for c in configs}
    hand = rows.get("hand")
    set_ratio(floor, hand)
    for config, row in rows.items():
        row.detail = phases(get(group, "start-phases", config))
        value = set_ratio(row, hand)
        if config != "hand":
            row.target = at_most(value, START_RATIO, f"≤ {START_RATIO:.2f}")
    return [floor, *rows.values()]


def _restart_rows(get: Samples, group: str, configs: list[str]) -> list[Row]:
    rows = {
        c: Row(group, f"restart: {NAMES[c]}", "ms", get(group, "restart", c))
        for c in configs
        if c != "installed"
    }
    for config, row in rows.items():
        forced = sum(get(group, "restart-forced", config))
        row.detail = phases(get(group, "restart-phases", config), forced)
        set_ratio(row, rows.get("hand"))
    if "standby" not in rows:
        return list(rows.values())
    standby = rows["standby"]
    value = ratio(standby, rows.get("hand"))
    standby.target = at_most(value, STANDBY_RESTART_RATIO, f"≤ {STANDBY_RESTART_RATIO:.2f}")
    paired = [s / o for s, o in zip(standby.samples, rows["ours"].samples, strict=False)]
    slower = sum(p > 1.0 for p in paired)
    versus = Row(group, "restart: standby on / off, per repetition", "x", paired)
    versus.target = f"never slower: {slower}/{len(paired)} {mark(bool(paired) and not slower)}"
    return [*rows.values(), versus]


def _magic_row(get: Samples, group: str, floor: Row) -> Row:
    row = Row(group, "%%container pass (host IPython)", "ms", get(group, "magic"))
    extra = None
    if row.median is not None and floor.median is not None:
        extra = row.median - floor.median
        row.ratio = f"{extra:+.0f} ms"
    row.target = at_most(extra, MAGIC_EXTRA_MS, f"≤ floor + {MAGIC_EXTRA_MS:.0f} ms")
    return row


def _many_rows(get: Samples, group: str, concurrent: int) -> list[Row]:
    rows = {}
    for config in ("hand", "ours"):
        row = Row(group, f"{concurrent} at once: {NAMES[config]}", "ms", get(group, "many", config))
        answered = get(group, "many-answered", config)
        complete = sum(count == concurrent for count in answered)
        row.target = f"all answer: {complete}/{len(answered)} {mark(complete == len(answered))}"
        rows[config] = row
    for row in rows.values():
        set_ratio(row, rows["hand"])
    return list(rows.values())


def _shutdown_rows(get: Samples, group: str, configs: list[str]) -> list[Row]:
    """A shutdown right after the start (its standby starting) never waits for the standby."""
    rows = {
        c: Row(group, f"shutdown right after start: {NAMES[c]}", "ms", get(group, "shutdown", c))
        for c in ("ours", "standby")
        if c in configs
    }
    if "standby" in rows:
        value = set_ratio(rows["standby"], rows.get("ours"))
        rows["standby"].target = at_most(
            value, EARLY_SHUTDOWN_RATIO, f"≤ {EARLY_SHUTDOWN_RATIO:.2f} of standby off"
        )
    return list(rows.values())


def _rss_rows(get: Samples, group: str, configs: list[str]) -> list[Row]:
    rows = {
        c: Row(group, f"RSS of the kernel: {NAMES[c]}", "MB", get(group, "rss", c))
        for c in configs
        if c != "installed"
    }
    for config, row in rows.items():
        set_ratio(row, rows.get("hand"))
        row.detail = _pss(get(group, "pss", config))
    if "standby" in rows:
        after = Row(group, "RSS of the kernel: standby on, after a restart", "MB",
                    get(group, "rss-after", "standby"),
                    detail=_pss(get(group, "pss-after", "standby")))  # fmt: skip
        set_ratio(after, rows.get("hand"))
        rows["after"] = after
        for key, when in (("", "before"), ("-after", "after")):
            rows[f"beside{key}"] = Row(
                group, f"RSS of the standby, beside the kernel, {when} a restart", "MB",
                get(group, f"rss-other{key}", "standby"),
                detail=_pss(get(group, f"pss-other{key}", "standby")),
            )  # fmt: skip
    return list(rows.values())


def _pss(samples: list[float]) -> str:
    return f"PSS {statistics.median(samples):.0f} MB" if samples else ""


def host_rows(get: Samples) -> list[Row]:
    name = NAMES["host"]
    forced = sum(get("host", "restart-forced", "host"))
    return [
        Row("host", f"start: {name}", "ms", get("host", "start", "host"),
            detail=phases(get("host", "start-phases", "host"))),
        Row("host", f"restart: {name}", "ms", get("host", "restart", "host"),
            detail=phases(get("host", "restart-phases", "host"), forced)),
        Row("host", f"RSS of the kernel: {name}", "MB", get("host", "rss", "host"),
            detail=_pss(get("host", "pss", "host"))),
    ]  # fmt: skip


def notes(get: Samples, group: str, configs: list[str]) -> list[str]:
    """What should not happen: processes beside a kernel without a standby, processes left."""
    found = []
    for config in configs:
        beside = [value for value in get(group, "rss-other", config) if value > 0]
        if config != "standby" and beside:
            found.append(f"{group} {NAMES[config]}: other processes ran beside the kernel "
                         f"({max(beside):.0f} MB)")  # fmt: skip
        if left := get(group, "left", config):
            found.append(f"{group} {NAMES[config]}: processes left after shutdown, in "
                         f"{len(left)} repetitions (killed)")  # fmt: skip
    return found


def render(rows: list[Row], markdown: bool) -> str:
    table = [row.cells() for row in rows]
    if markdown:
        lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join("---" for _ in HEADER) + "|"]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in table]
        return "\n".join(lines)
    widths = [max(len(cells[i]) for cells in [HEADER, *table]) for i in range(len(HEADER) - 1)]
    numeric = {3, 4, 5}

    def line(cells: list[str]) -> str:
        padded = [c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in
                  enumerate(zip(cells, widths, strict=False))]  # fmt: skip
        return "  ".join([*padded, cells[-1]]).rstrip()

    lines = [line(HEADER)]
    for i, cells in enumerate(table):
        if i and cells[0] != table[i - 1][0]:
            lines.append("")
        lines.append(line(cells))
    return "\n".join(lines)
