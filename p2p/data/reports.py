"""What import, build and validation report: offending files, counts, warnings."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from p2p.errors import DataError

REPORT = "report.json"  # written beside the manifest: skipped files and why, warnings


@dataclass(frozen=True)
class Problem:
    """One offending file and why (`file` is the path as the user knows it)."""

    file: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: {self.reason}"


class InvalidDataset(DataError):
    """Validation failed; `.problems` lists every offending file. The message names them all."""

    def __init__(self, where: str, problems: list[Problem], note: str = "") -> None:
        self.problems = list(problems)
        tail = f" ({note})" if note else ""
        if len(self.problems) == 1:
            msg = f"{self.problems[0]}{tail}"
        else:
            lines = "\n".join(f"  {p}" for p in self.problems)
            msg = f"{len(self.problems)} problems in {where}{tail}:\n{lines}"
        super().__init__(msg)


def reason(e: DataError, name: str) -> str:
    """The reason part of a "<name>: <reason>" DataError."""
    msg = str(e)
    return msg[len(name) + 2 :] if msg.startswith(f"{name}: ") else msg


@dataclass
class ValidationReport:
    """What `validate_dataset` found: good pair counts per split, problems, warnings."""

    path: Path
    kind: str  # "canonical" | "aligned" | "folders"
    counts: dict[str, int]
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_if_bad(self) -> None:
        if self.problems:
            raise InvalidDataset(str(self.path), self.problems)


@dataclass
class ImportReport:
    """What import/build wrote: per-split counts, skipped files, size, time."""

    out: Path
    name: str
    counts: dict[str, int]
    skipped: list[Problem]
    warnings: list[str]
    bytes: int
    seconds: float

    @property
    def num_pairs(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        counts = ", ".join(f"{s} {n}" for s, n in self.counts.items())
        lines = [
            f"wrote {self.num_pairs} pairs ({counts}) to {self.out}: "
            f"{self.bytes / 1e6:.1f} MB in {self.seconds:.1f} s"
        ]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} file(s) (see {self.out / REPORT}):")
            lines += [f"  {p}" for p in self.skipped]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)
