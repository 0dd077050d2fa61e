"""The live view of a run on the terminal: progress bar, rates, final table."""

from __future__ import annotations

import json
import sys
import time

from stillshot.pipeline.result import StillResult


class Progress:
    """Shows shots/s, hit rate and indexing rate while a run goes.

    Parameters
    ----------
    total : int
        Shots to process in this run (not counting resumed ones).
    mode : {"bar", "quiet", "json"}
        ``bar``: a one-line live bar on stderr (updated at most 5×/s; a plain
        line every 5 s when stderr is not a terminal); ``quiet``: nothing;
        ``json``: one JSON object per shot on stdout (for batch systems).
    """

    def __init__(self, total: int = 0, mode: str = "bar", stream=None, label: str = ""):
        if mode not in ("bar", "quiet", "json"):
            raise ValueError(f"progress mode must be bar, quiet or json, not {mode!r}")
        self.total = total
        self.mode = mode
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.perf_counter()
        self.last_draw = 0.0
        self.n = self.hits = self.indexed = 0

    def start(self, total: int, skipped: int = 0) -> None:
        """Set the number of shots to do (called once the run's work is known).

        Parameters
        ----------
        total : int
            Shots this run will process.
        skipped : int
            Shots already done by an earlier run into the same directory (resumed).
        """
        self.total = total
        self.t0 = time.perf_counter()
        if self.mode == "bar" and skipped:
            self.stream.write(f"{self.label}resuming: {skipped} shots already done, {total} to go\n")
            self.stream.flush()
        elif self.mode == "json":
            print(json.dumps({"event": "start", "to_do": total, "already_done": skipped}), flush=True)

    def __call__(self, result: StillResult) -> None:
        self.n += 1
        self.hits += result.is_hit
        self.indexed += result.is_indexed
        if self.mode == "json":
            print(json.dumps({"event": "shot", **result.summary()}, default=_plain), flush=True)
        elif self.mode == "bar":
            now = time.perf_counter()
            interval = 0.2 if self.tty else 5.0
            if now - self.last_draw >= interval or self.n == self.total:
                self.last_draw = now
                self._draw(now)

    def line(self, now: float | None = None) -> str:
        """The status line: counts, rates, throughput and time left."""
        now = time.perf_counter() if now is None else now
        elapsed = max(now - self.t0, 1e-9)
        rate = self.n / elapsed
        left = (self.total - self.n) / rate if rate > 0 else 0.0
        frac = self.n / self.total if self.total else 1.0
        width = 24
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        hit = 100.0 * self.hits / self.n if self.n else 0.0
        idx = 100.0 * self.indexed / self.hits if self.hits else 0.0
        return (f"{self.label}[{bar}] {self.n}/{self.total} shots  {rate:.1f} shots/s  hits {hit:.1f}%  "
                f"indexed {idx:.1f}% of hits  ETA {left:.0f} s")

    def _draw(self, now: float) -> None:
        if self.tty:
            self.stream.write("\r" + self.line(now) + "\x1b[K")
            if self.n == self.total:
                self.stream.write("\n")
        else:
            self.stream.write(self.line(now) + "\n")
        self.stream.flush()


def _plain(obj):
    """JSON for numpy scalars and arrays (and anything else as text)."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def final_table(totals: dict) -> str:
    """The end-of-run table of shot counts per status and rates."""
    counts = totals["status_counts"]
    rows = [("shots", totals["n_shots"])] + [(k, v) for k, v in counts.items() if v]
    rows += [("hits", totals["n_hits"]), ("indexed shots", totals["n_indexed"]), ("lattices", totals["n_lattices"])]
    width = max(len(k) for k, _ in rows)
    lines = [f"  {k:<{width}}  {v:>8}" for k, v in rows]
    lines.append(f"  {'hit rate':<{width}}  {100 * totals['hit_rate']:>7.1f}%")
    lines.append(f"  {'indexed/hits':<{width}}  {100 * totals['indexing_rate_of_hits']:>7.1f}%")
    timing = ", ".join(f"{k} {1000 * v:.1f} ms" for k, v in totals.get("mean_timings_s", {}).items())
    if timing:
        lines.append(f"  mean per shot: {timing}")
    return "\n".join(lines)
