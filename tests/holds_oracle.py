"""A test oracle of legal-hold coverage: the Python twin of ``purger.hold_covers``.

The database's function (migration 0003) decides in production; this mirror
lets tests state which records a scope covers without a database.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from purger.hold_scope import HoldScope


def covers(
    scope: HoldScope,
    category: str,
    tenant: str,
    occurred_at: datetime,
    subject_keys: Iterable[str],
) -> bool:
    """True when ``scope`` covers a record with these attributes."""
    if not scope.applies_to(category):
        return False
    if scope.subject_keys is not None and not set(scope.subject_keys) & set(subject_keys):
        return False
    if scope.tenant is not None and tenant != scope.tenant:
        return False
    if scope.occurred_from is not None and occurred_at < scope.occurred_from:
        return False
    return scope.occurred_to is None or occurred_at <= scope.occurred_to
