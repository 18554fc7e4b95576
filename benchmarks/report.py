"""The printed report: machine and data lines, the table (time, speed-up vs the baseline, ✓/✗) and the notes."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from typing import Any

import numpy as np

from common import HSDS_NAME, QUERY, TS_NAME, WORKLOADS, ZARR_NAME
from results import Measurement, Report, SystemRun
from timing import MAX_RUNS, MIN_TIMED_S


def loadavg_1min() -> float | None:
    """Return the 1-minute load average, rounded to 0.01 (``None`` where the OS has none)."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def machine_info() -> dict[str, Any]:
    """Return cores, CPU model, Python and library versions, zlib/isal/libdeflate availability."""
    import zlib

    info: dict[str, Any] = {
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "zlib": zlib.ZLIB_RUNTIME_VERSION,
        "loadavg_1min": loadavg_1min(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            info["mem_gb"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    try:
        import isal

        info["isal"] = getattr(isal, "__version__", "yes")
    except ImportError:
        info["isal"] = None
    try:
        import deflate

        info["libdeflate"] = getattr(deflate, "__version__", "yes")
    except ImportError:
        info["libdeflate"] = None
    try:
        import numcodecs
        from numcodecs import blosc

        info["numcodecs"] = numcodecs.__version__
        info["blosc"] = getattr(blosc, "VERSION_STRING", "?")
    except ImportError:
        pass
    import hsds_backends

    info["hsds_backends"] = hsds_backends.__version__
    return info


def choose_baseline(systems: Sequence[SystemRun]) -> str:
    """Return the baseline column: HSDS h5pyd when it ran, else zarr-python, else TensorStore, else the first system."""
    ran = [s.name for s in systems if not s.error and s.name != "decode floor" and any(c.seconds for c in s.cells.values())]
    for name in (HSDS_NAME, ZARR_NAME, TS_NAME):
        if name in ran:
            return name
    return ran[0] if ran else ""  # the first system that ran (never the decode floor: it reads no answer)


def _fmt_seconds(s: float) -> str:
    if s >= 100:
        return f"{s:.0f} s"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 0.01:
        return f"{s * 1e3:.0f} ms"
    return f"{s * 1e3:.2f} ms"


def format_cell(m: Measurement | None, base: Measurement | None, is_base: bool) -> str:
    """Render one cell: time, speed-up vs the baseline (``base_time / time``) and ✓/✗."""
    if m is None:
        return "—"
    if m.seconds is None:
        return "—" if m.note in ("", "n/a") else "error"
    parts = [_fmt_seconds(m.seconds)]
    if is_base:
        parts.append("(base)")
    elif base is not None and base.seconds:
        parts.append(f"{base.seconds / m.seconds:.2f}×")
    else:
        parts.append("  —  ")
    if m.ok is not None:
        parts.append("✓" if m.ok else "✗")
    return " ".join(parts)


def _header_lines(report: Report) -> list[str]:
    p, m = report.profile, report.machine
    return [
        (
            f"machine: {m.get('cores')} cores ({m.get('cpu')}), {m.get('mem_gb', '?')} GB RAM; python {m['python']}, "
            f"numpy {m['numpy']}, numcodecs {m.get('numcodecs', '-')} (blosc {m.get('blosc', '-')}), zlib {m['zlib']}, "
            f"isal {m.get('isal') or 'not installed'}, deflate (libdeflate) {m.get('libdeflate') or 'not installed'}, "
            f"hsds-backends {m.get('hsds_backends')}; "
            f"1-min load average at start {m.get('loadavg_1min_start', '?')}, at end {m.get('loadavg_1min', '?')}"
        ),
        (
            f"data ({p.name}): grid float32 {p.grid_size}x{p.grid_size}, {p.grid_chunk}x{p.grid_chunk} chunks, "
            f"shuffle+gzip 4 as HSDS stores it, written by {'a real HSDS 1.0.2 through h5pyd' if p.writer == 'hsds' else 'the project writer'} "
            f"({report.data.get('grid_stored_mb', 0):.0f} MB stored for "
            f"{report.data.get('grid_mb', 0):.0f} MB; zarr copy {report.data.get('zarr_stored_mb', 0):.0f} MB); "
            f"table {p.rows:,} rows in {p.table_chunk:,}-row chunks "
            f"({report.data.get('query_rows', 0):,} match {QUERY!r})"
        ),
        (
            f"timing: best of {report.repeat} or more (timed calls go on until {MIN_TIMED_S:g} s, at most {MAX_RUNS}) "
            "after a warm-up (cold = the first read of a fresh client); "
            "cell = time, speed-up vs baseline (baseline time / time, >1 is faster), ✓/✗ = byte-identical to numpy"
        ),
        f"baseline: {report.baseline or 'none'}",
        "",
    ]


def _table_lines(report: Report) -> list[str]:
    systems = [s for s in report.systems if not s.error]
    base_run = next((s for s in systems if s.name == report.baseline), None)
    header = ["workload", *[s.name for s in systems]]
    rows = []
    for key, label in WORKLOADS:
        base = base_run.cells.get(key) if base_run else None
        rows.append([label, *[format_cell(s.cells.get(key), base, s is base_run) for s in systems]])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def fmt(r: list[str]) -> str:
        cells = (c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        return "| " + " | ".join(cells) + " |"

    return [fmt(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *(fmt(r) for r in rows), ""]


def _system_lines(s: SystemRun) -> list[str]:
    lines = []
    if s.error:
        lines.append(f"{s.name}: not run — {s.error}")
    for key, c in s.cells.items():
        if c.note and c.note != "n/a":
            lines.append(f"{s.name} / {key}: {c.note}")
    for n in s.notes:
        lines.append(f"{s.name}: {n}")
    mem = s.info.get("memory")
    if mem:
        out_mb = mem["output_mb"]
        rss = mem.get("peak_rss_delta_mb")
        if rss is not None:
            rss_txt = f"peak RSS +{rss:.0f} MB ({rss / out_mb:.2f}x)"
        else:
            rss_txt = f"peak RSS n/a ({mem.get('rss_error')})"
        lines.append(
            f"{s.name}: memory of one full read ({out_mb:.0f} MB output): {rss_txt} in a fresh process; "
            f"tracemalloc peak {mem['tracemalloc_peak_mb']:.0f} MB ({mem['tracemalloc_peak_mb'] / out_mb:.2f}x)"
        )
    if s.name == HSDS_NAME and s.info.get("versions"):
        v = s.info["versions"]
        lines.append(
            f"{s.name}: hsds 1.0.2, h5pyd {v.get('h5pyd')}, numcodecs {v.get('numcodecs')}; "
            f"{s.info.get('dn_count')} DNs on unix sockets, default config; "
            f"started in {s.info.get('start_seconds', 0):.1f} s"
        )
    return lines


def render(report: Report) -> str:
    """Return the printed report: machine line, data line, table and notes."""
    lines = [*_header_lines(report), *_table_lines(report)]
    for s in report.systems:
        lines.extend(_system_lines(s))
    lines.append(f"total run time {report.seconds_total:.0f} s")
    return "\n".join(lines)
