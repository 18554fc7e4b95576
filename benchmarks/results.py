"""What a run measured: one :class:`Measurement` per cell, one :class:`SystemRun` per column, the :class:`Report`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from data import Profile


@dataclass
class Measurement:
    """One cell of the table.

    Attributes
    ----------
    seconds : float or None
        Best-of-N wall time (the single first read for ``full_cold``); ``None`` when not run.
    ok : bool or None
        Result byte-identical to the oracle; ``None`` when not checked or not run.
    note : str
        Why there is no figure (``"n/a"``, an error), or a remark.
    """

    seconds: float | None = None
    ok: bool | None = None
    note: str = ""


@dataclass
class SystemRun:
    """All measurements of one system.

    Attributes
    ----------
    name : str
        Column title (``inline``, ``HSDS h5pyd``, ...).
    ours : bool
        An hsds-backends backend (a mismatch fails the run).
    cells : dict
        Workload key -> :class:`Measurement`.
    error : str
        Set when the system could not run at all.
    notes : list of str
        Remarks printed under the table.
    info : dict
        Versions, memory figures and similar extras.
    """

    name: str
    ours: bool = False
    cells: dict[str, Measurement] = field(default_factory=dict)
    error: str = ""
    notes: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Report:
    """Everything one run measured (``--json`` writes it)."""

    profile: Profile
    repeat: int
    machine: dict[str, Any]
    data: dict[str, Any]
    baseline: str
    systems: list[SystemRun]
    seconds_total: float = 0.0
