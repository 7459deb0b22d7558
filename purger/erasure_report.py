"""What an erasure did or would do, per category, and why records stay. Pure.

The exceptions of Art. 17(3) the purger knows: a category whose legal basis is
a legal obligation keeps its records (b), and records an active legal hold
covers stay until its release (e). Each is counted per category with its reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

LEGAL_OBLIGATION = "legal_obligation"
LEGAL_HOLD = "legal_hold"
_REASONS = {
    LEGAL_OBLIGATION: "kept: the category's legal basis is a legal obligation (Art. 17(3)(b))",
    LEGAL_HOLD: "kept while an active legal hold covers them (Art. 17(3)(e)); erased by the "
    "first pass after the last such hold is released, while the request is open",
}


def exemption(legal_basis: str) -> str | None:
    """LEGAL_OBLIGATION when a category's legal basis is a legal obligation, else None."""
    return LEGAL_OBLIGATION if legal_basis.strip().lower().startswith("legal obligation") else None


@dataclass
class CategoryErasure:
    """One category of an erasure: erased (or, in a dry run, erasable) and kept records."""

    legal_basis: str
    erased: int = 0
    kept_legal_obligation: int = 0
    kept_legal_hold: int = 0
    hold_ids: list[int] = field(default_factory=list)
    # Rows erased per table (partition or held storage): what is vacuumed afterwards.
    tables: dict[str, int] = field(default_factory=dict)

    def reasons(self) -> list[str]:
        """Why records stay, one line per exception."""
        out = []
        if self.kept_legal_obligation:
            out.append(f"{self.kept_legal_obligation} {_REASONS[LEGAL_OBLIGATION]}")
        if self.kept_legal_hold:
            holds = ", ".join(str(h) for h in self.hold_ids)
            out.append(f"{self.kept_legal_hold} {_REASONS[LEGAL_HOLD]} (holds {holds})")
        return out

    def audit_dict(self) -> dict[str, Any]:
        """Counts and hold ids only."""
        return {
            "erased": self.erased,
            "kept_legal_obligation": self.kept_legal_obligation,
            "kept_legal_hold": self.kept_legal_hold,
            "hold_ids": self.hold_ids,
        }

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, with the legal basis and the reasons."""
        return {**self.audit_dict(), "legal_basis": self.legal_basis, "reasons": self.reasons()}


@dataclass
class ErasureReport:
    """What an erasure did (or, dry, would do), per category."""

    request_id: int
    pass_id: str
    erased_at: datetime | None
    dry_run: bool = False
    deferred: bool = False
    categories: dict[str, CategoryErasure] = field(default_factory=dict)
    vacuum_problems: list[str] = field(default_factory=list)

    @property
    def erased(self) -> int:
        """Records erased (or erasable) in all categories."""
        return sum(c.erased for c in self.categories.values())

    @property
    def kept(self) -> int:
        """Records kept by an exception in all categories."""
        return sum(c.kept_legal_obligation + c.kept_legal_hold for c in self.categories.values())

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "request_id": self.request_id,
            "pass_id": self.pass_id,
            "dry_run": self.dry_run,
            "deferred": self.deferred,
            "erased_at": self.erased_at.isoformat() if self.erased_at else None,
            "erased": self.erased,
            "kept": self.kept,
            "categories": {n: c.as_dict() for n, c in self.categories.items()},
            "vacuum_problems": self.vacuum_problems,
        }
