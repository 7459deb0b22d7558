"""The retention policy: which categories exist, their topics and how long they are kept."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from purger.durations import Duration, parse_duration
from purger.errors import DurationError, PolicyError
from purger.yamlfile import line_of, load_yaml

CATEGORY_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
# What a dead-letter topic keeps when the policy does not say (capped at the category's retention).
DEFAULT_DEAD_LETTER_RETENTION = parse_duration("P7D")
# Start days over which the shortest span of a calendar duration is sought: five years that
# include leap years and a century year that is not one (2100).
_SPAN_START = datetime(2097, 1, 1, tzinfo=UTC)
_SPAN_DAYS = 5 * 366


def _duration(value: Any) -> Duration:
    if isinstance(value, Duration):
        return value
    try:
        duration = parse_duration(value)
    except DurationError as exc:
        raise ValueError(str(exc)) from None
    if duration.is_zero:
        raise ValueError("a retention of zero keeps nothing; give a positive duration")
    return duration


RetentionDuration = Annotated[Duration, BeforeValidator(_duration)]


@lru_cache(maxsize=256)
def shortest_span(duration: Duration) -> timedelta:
    """The shortest time ``duration`` can add to an instant (months differ in length).

    Kafka's ``retention.ms`` is a fixed span: a topic keeps no record longer than a
    calendar retention allows only if its ``retention.ms`` is at most this.
    """
    if not duration.months:
        return duration.exact
    return min(
        duration.add_to(start) - start
        for start in (_SPAN_START + timedelta(days=d) for d in range(_SPAN_DAYS))
    )


def shorter_somewhere(a: Duration, b: Duration) -> bool:
    """True when ``a`` adds less time than ``b`` to some instant (so a < b as a bound).

    P6M and P181D differ by month: P181D is shorter after some start days and
    longer after others. Judged over the same start days as ``shortest_span``.
    """
    if not a.months and not b.months:
        return a.exact < b.exact
    return any(a.add_to(t) < b.add_to(t) for t in _span_starts())


@lru_cache(maxsize=1)
def _span_starts() -> tuple[datetime, ...]:
    return tuple(_SPAN_START + timedelta(days=d) for d in range(_SPAN_DAYS))


class CategoryPolicy(BaseModel):
    """One category of records: where it comes from and how long it is kept."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    topic: str
    retention: RetentionDuration
    controller: str = Field(min_length=1)
    legal_basis: str = Field(min_length=1)
    statement_row: str = Field(min_length=1)
    description: str = ""
    dead_letter_topic: str | None = None
    dead_letter_retention: RetentionDuration | None = None
    tenant_overrides: dict[str, RetentionDuration] = Field(default_factory=dict)
    # The legal floor and ceiling of the retention (and of every tenant override):
    # a policy outside them is refused, and changing them needs an explicit flag.
    minimum_retention: RetentionDuration | None = None
    maximum_retention: RetentionDuration | None = None

    @field_validator("topic", "dead_letter_topic")
    @classmethod
    def _topic(cls, value: str | None) -> str | None:
        if value is not None and not TOPIC_NAME.match(value):
            raise ValueError("a Kafka topic name has 1-249 characters of [A-Za-z0-9._-]")
        return value

    @field_validator("tenant_overrides")
    @classmethod
    def _tenants(cls, value: dict[str, Duration]) -> dict[str, Duration]:
        for tenant in value:
            if not isinstance(tenant, str) or not tenant.strip():
                raise ValueError("tenant names must be non-empty strings")
        return value


class _PolicyFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    version: str = Field(min_length=1)
    categories: dict[str, CategoryPolicy] = Field(min_length=1)

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, value: Any) -> Any:
        # YAML reads 2026-11-28 as a date and 1.2 as a float; a version is text.
        return str(value) if value is not None else value


@dataclass(frozen=True)
class Category:
    """A category as the rest of the code sees it."""

    name: str
    policy: CategoryPolicy
    dead_letter_topic: str

    @property
    def topic(self) -> str:
        """The Kafka topic the category is consumed from."""
        return self.policy.topic

    def rules(self) -> dict[str, Any]:
        """What decides the category's expiries, as stored in ``purger.category_rules``."""
        p = self.policy
        return {
            "retention": str(p.retention),
            "tenant_overrides": {t: str(d) for t, d in sorted(p.tenant_overrides.items())},
            "minimum_retention": str(p.minimum_retention) if p.minimum_retention else None,
            "maximum_retention": str(p.maximum_retention) if p.maximum_retention else None,
        }

    @cached_property
    def rule_digest(self) -> str:
        """sha256 of ``rules()``: equal digests give equal expiries."""
        return rules_digest(self.rules())

    def bound_violations(self) -> list[str]:
        """Where the retention or an override lies outside the category's own bounds."""
        p = self.policy
        spans = [("retention", p.retention)] + [
            (f"tenant_overrides.{t}", d) for t, d in sorted(p.tenant_overrides.items())
        ]
        found = []
        for key, duration in spans:
            if p.minimum_retention and shorter_somewhere(duration, p.minimum_retention):
                found.append(f"{key} {duration} is under minimum_retention {p.minimum_retention}")
            if p.maximum_retention and shorter_somewhere(p.maximum_retention, duration):
                found.append(f"{key} {duration} is over maximum_retention {p.maximum_retention}")
        return found

    def retention_for(self, tenant: str) -> Duration:
        """The retention of ``tenant``'s records (its override, else the category's)."""
        return self.policy.tenant_overrides.get(tenant, self.policy.retention)

    def expires_at(self, tenant: str, occurred_at: datetime) -> datetime:
        """``occurred_at + retention`` in UTC, per the project's expiry rule."""
        return self.retention_for(tenant).add_to(occurred_at)

    @property
    def topic_retention(self) -> timedelta:
        """The longest a topic may keep one of the category's records.

        The shortest span of the category's retention and of every tenant override:
        a topic holds the records of all tenants, and must keep none longer than its
        own tenant's retention.
        """
        spans = [self.policy.retention, *self.policy.tenant_overrides.values()]
        return min(shortest_span(d) for d in spans)

    @property
    def dead_letter_retention(self) -> timedelta:
        """What the dead-letter topic keeps (``retention.ms``): the policy's, default P7D.

        Never more than ``topic_retention`` (``load_policy`` refuses a longer one; the
        default is capped at it).
        """
        configured = self.policy.dead_letter_retention
        if configured is None:
            return min(shortest_span(DEFAULT_DEAD_LETTER_RETENTION), self.topic_retention)
        return shortest_span(configured)


@dataclass(frozen=True)
class RetentionPolicy:
    """The validated policy file."""

    version: str
    digest: str
    source: str
    categories: dict[str, Category]

    def by_topic(self) -> dict[str, Category]:
        """Map from Kafka topic to its category."""
        return {c.topic: c for c in self.categories.values()}

    def category(self, name: str) -> Category:
        """The category called ``name``; PolicyError when unknown."""
        try:
            return self.categories[name]
        except KeyError:
            known = ", ".join(sorted(self.categories))
            raise PolicyError(f"unknown category {name!r}; known: {known}") from None


def rules_digest(rules: dict[str, Any]) -> str:
    """The digest of a category's rules (``Category.rules()`` or as stored)."""
    return hashlib.sha256(json.dumps(rules, sort_keys=True).encode()).hexdigest()[:16]


def load_policy(path: Path, dead_letter_suffix: str = ".dlq") -> RetentionPolicy:
    """Load and validate the policy file; PolicyError names file, line, key and problem."""
    data, lines = load_yaml(path)
    if not isinstance(data, dict):
        raise PolicyError(f"{path}: expected a mapping with 'version' and 'categories'")
    try:
        parsed = _PolicyFile.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(_describe(path, exc, lines)) from None
    return _build(path, parsed, dead_letter_suffix, lines)


def _build(
    path: Path, parsed: _PolicyFile, suffix: str, lines: dict[tuple[str | int, ...], int]
) -> RetentionPolicy:
    topics: dict[str, str] = {}
    categories: dict[str, Category] = {}
    for name, cat in parsed.categories.items():
        where = _where(path, lines, ("categories", name))
        if not CATEGORY_NAME.match(name):
            raise PolicyError(
                f"{where}: categories.{name}: a category name is 1-40 characters of "
                "[a-z0-9_], starting with a letter"
            )
        dlq = cat.dead_letter_topic or f"{cat.topic}{suffix}"
        for key, topic in (("topic", cat.topic), ("dead_letter_topic", dlq)):
            if topic in topics:
                raise PolicyError(
                    f"{_where(path, lines, ('categories', name, key))}: categories.{name}.{key}: "
                    f"topic {topic!r} is already used by category {topics[topic]!r}"
                )
            topics[topic] = name
        category = Category(name=name, policy=cat, dead_letter_topic=dlq)
        for problem in category.bound_violations():
            raise PolicyError(f"{where}: categories.{name}: {problem}")
        if (
            cat.minimum_retention
            and cat.maximum_retention
            and shorter_somewhere(cat.maximum_retention, cat.minimum_retention)
        ):
            raise PolicyError(
                f"{where}: categories.{name}: maximum_retention {cat.maximum_retention} is under "
                f"minimum_retention {cat.minimum_retention}"
            )
        if category.dead_letter_retention > category.topic_retention:
            raise PolicyError(
                f"{_where(path, lines, ('categories', name, 'dead_letter_retention'))}: "
                f"categories.{name}.dead_letter_retention: {cat.dead_letter_retention} may keep "
                "a dead letter longer than the category's retention (or a tenant override) "
                "allows; give at most that"
            )
        categories[name] = category
    digest = hashlib.sha256(
        repr(sorted((n, c.policy.model_dump_json()) for n, c in categories.items())).encode()
    ).hexdigest()[:16]
    return RetentionPolicy(
        version=parsed.version, digest=digest, source=str(path), categories=categories
    )


def _where(path: Path, lines: dict[tuple[str | int, ...], int], loc: tuple[str | int, ...]) -> str:
    line = line_of(lines, loc)
    return f"{path}, line {line}" if line else str(path)


def _describe(path: Path, exc: ValidationError, lines: dict[tuple[str | int, ...], int]) -> str:
    problems = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc) or "(top level)"
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        problems.append(f"{_where(path, lines, loc)}: {key}: {message}")
    return "invalid retention policy:\n  " + "\n  ".join(problems)
