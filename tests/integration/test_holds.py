"""Legal holds on the real PostgreSQL (and Kafka for arrivals): nothing covered is ever lost."""

from __future__ import annotations

import functools
import json
import random
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from kafka import KafkaProducer
from prometheus_client import CollectorRegistry
from psycopg import sql

from consumers.service import consume
from purger import audit, held_storage, hold_registry
from purger.metrics import Metrics
from purger.partitions import held_table, parent_table, partition_name, range_containing
from purger.policy import RetentionPolicy
from purger.purge import Purger
from purger.settings import Settings
from purger.stats import Stats
from tests.integration.holds_support import (
    DAY,
    Row,
    audit_kinds,
    make_purger,
    place,
    relation_exists,
    release,
    seed,
    seed_bulk,
    where_stored,
)
from tests.integration.support import purger_cli, settings_env

pytestmark = pytest.mark.integration

MSISDN = "+31612345678"


def _midnight(instant: datetime) -> datetime:
    return range_containing(instant, DAY)[0]


def _now() -> datetime:
    return datetime.now(UTC)


def _sample(purger: Purger, name: str, **labels: str) -> float | None:
    return purger.metrics.registry.get_sample_value(name, labels)


def _overdue(purger: Purger) -> dict[str, int]:
    # The read model on the purger's metrics, so that _sample sees the gauges it sets.
    return Stats(purger.conninfo, purger.policy, purger.metrics).overdue()


def _chain_ok(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        result = audit.verify(conn)
    assert result.ok, result.problem


def test_a_hold_on_one_msisdn_keeps_exactly_its_records_while_the_partition_is_dropped(
    database: str, policy: RetentionPolicy
) -> None:
    day = _midnight(_now() - timedelta(days=30))
    pname = partition_name("cdr", day)
    seed_bulk(database, "cdr", day, 100_000)
    targets = [
        Row(f"target-{i}", day + timedelta(hours=i + 1), subjects={"msisdn": [MSISDN]})
        for i in range(5)
    ]
    seed(
        database,
        "cdr",
        [
            *targets,
            Row("neighbour", day + timedelta(hours=2), subjects={"msisdn": ["+31612345679"]}),
        ],
    )

    # The operator writes the national form; ingestion stored E.164.
    placement = place(database, policy, subjects={"msisdn": ["0612345678"]})
    assert placement.preserved == {name: 5 if name == "cdr" else 0 for name in policy.categories}
    assert sum(placement.destroyed_while_placing.values()) == 0

    # The copy finds its rows through the index: its cost follows the held records.
    with psycopg.connect(database) as conn:
        check = held_storage.held_rows_check(hold_registry.active_holds(conn), "cdr", pname, _now())
        assert check is not None
        plan = "\n".join(
            r[0] for r in conn.execute(sql.SQL("EXPLAIN ") + check[0], check[1]).fetchall()
        )
    assert "Seq Scan" not in plan, plan
    assert "Index Scan" in plan, plan

    report = make_purger(database, policy).run_pass(categories=["cdr"])

    assert report.outcome == "success", report.error
    cat = report.categories["cdr"]
    assert (cat.partitions_dropped, cat.rows_held, cat.rows_purged) == (1, 5, 100_001)
    assert not relation_exists(database, pname)
    assert where_stored(database, "cdr") == {r.record_id: "held" for r in targets}
    (dropped,) = audit_kinds(database, "partition_dropped")
    assert (dropped["rows"], dropped["held"], dropped["hold_ids"]) == (
        100_001,
        5,
        [placement.hold.id],
    )
    # Held records are not overdue; they are counted as held.
    purger = make_purger(database, policy)
    assert _overdue(purger)["cdr"] == 0
    assert _sample(purger, "purger_records_held", category="cdr") == 5
    assert _sample(purger, "purger_legal_holds_active") == 1
    _chain_ok(database)


def test_overlapping_holds_release_one_stays_release_both_goes(
    database: str, policy: RetentionPolicy
) -> None:
    day = _midnight(_now() - timedelta(days=10))
    both = Row("both", day + timedelta(hours=1), tenant="acme", subjects={"msisdn": [MSISDN]})
    first = Row("first-only", day + timedelta(hours=2), subjects={"msisdn": [MSISDN]})
    free = Row("free", day + timedelta(hours=3), subjects={"msisdn": ["+31611111111"]})
    # Covered by the second hold only: the copy must look for every hold's records.
    second = Row("second-only", day + timedelta(hours=4), tenant="acme")
    seed(database, "cdr", [both, first, free, second])
    h1 = place(database, policy, "CASE-1", subjects={"msisdn": [MSISDN]}).hold
    h2 = place(database, policy, "CASE-2", tenant="acme", categories=["cdr"]).hold
    purger = make_purger(database, policy)

    assert purger.run_pass(categories=["cdr"]).outcome == "success"
    assert where_stored(database, "cdr") == {
        "both": "held",
        "first-only": "held",
        "second-only": "held",
    }

    release(database, h1.id)
    # Released and not yet passed: first-only is overdue now, both is still held.
    assert _overdue(purger)["cdr"] == 1
    assert _sample(purger, "purger_records_held", category="cdr") == 2
    report = purger.run_pass(categories=["cdr"])
    assert report.categories["cdr"].held_purged == 1
    assert where_stored(database, "cdr") == {"both": "held", "second-only": "held"}

    release(database, h2.id)
    report = purger.run_pass(categories=["cdr"])
    assert report.categories["cdr"].held_purged == 2
    assert where_stored(database, "cdr") == {}
    assert [e["rows"] for e in audit_kinds(database, "held_rows_deleted")] == [1, 2]
    assert _overdue(purger)["cdr"] == 0
    assert _sample(purger, "purger_legal_holds_active") == 0
    _chain_ok(database)


def test_the_row_delete_of_the_partition_containing_t_moves_covered_rows_to_held_storage(
    database: str, policy: RetentionPolicy
) -> None:
    t = _midnight(_now() - timedelta(days=5)) + timedelta(hours=12)
    rows = [
        Row("kept", t - timedelta(hours=1), subjects={"email": ["jan@example.nl"]}),
        Row("gone", t - timedelta(hours=2), subjects={"email": ["piet@example.nl"]}),
        Row("live", t + timedelta(hours=1), subjects={"email": ["jan@example.nl"]}),
    ]
    seed(database, "cdr", rows)
    # Upper case from the operator matches the lower-cased stored address.
    place(database, policy, subjects={"email": ["JAN@Example.NL"]})
    purger = make_purger(database, policy, delete_batch_size=1)

    dry = purger.run_pass(categories=["cdr"], now=t, dry_run=True)
    assert (dry.categories["cdr"].rows_purged, dry.categories["cdr"].rows_held) == (1, 1)
    report = purger.run_pass(categories=["cdr"], now=t)

    assert report.outcome == "success", report.error
    assert (report.categories["cdr"].rows_purged, report.categories["cdr"].rows_held) == (1, 1)
    assert where_stored(database, "cdr") == {"kept": "held", "live": "live"}
    with psycopg.connect(database) as conn:
        row = conn.execute(
            "SELECT row_count FROM purger.partitions WHERE partition_name = %s",
            (partition_name("cdr", _midnight(t)),),
        ).fetchone()
    assert row == (1,), "the registry counts only the row left in the partition"
    _chain_ok(database)


def test_a_failed_preservation_check_rolls_back_and_destroys_nothing(
    database: str, policy: RetentionPolicy
) -> None:
    day = _midnight(_now() - timedelta(days=10))
    rows = [
        Row(f"r{i}", day + timedelta(hours=i + 1), subjects={"msisdn": [MSISDN]}) for i in range(3)
    ]
    seed(database, "cdr", rows)
    place(database, policy, subjects={"msisdn": [MSISDN]})
    with psycopg.connect(database, autocommit=True) as conn:
        # Held storage that silently swallows one row: the count check must notice.
        conn.execute(
            "CREATE FUNCTION purger.test_swallow() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN IF NEW.record_id = 'r1' THEN RETURN NULL; END IF; RETURN NEW; END $$"
        )
        conn.execute(
            sql.SQL(
                "CREATE TRIGGER swallow BEFORE INSERT ON purger.{} "
                "FOR EACH ROW EXECUTE FUNCTION purger.test_swallow()"
            ).format(sql.Identifier(held_table("cdr")))
        )

    report = make_purger(database, policy).run_pass(categories=["cdr"])

    assert report.outcome == "failure"
    assert report.error is not None and "nothing was destroyed" in report.error
    # The partition was detached before the failed drop; it is still all there.
    pname = partition_name("cdr", day)
    with psycopg.connect(database, autocommit=True) as conn:
        kept = conn.execute(
            sql.SQL("SELECT record_id FROM purger.{} ORDER BY 1").format(sql.Identifier(pname))
        ).fetchall()
        assert [k[0] for k in kept] == [r.record_id for r in rows]
        assert audit_kinds(database, "partition_dropped") == []
        conn.execute(
            sql.SQL("DROP TRIGGER swallow ON purger.{}").format(sql.Identifier(held_table("cdr")))
        )

    # The next pass finishes the drop and keeps every covered record.
    assert make_purger(database, policy).run_pass(categories=["cdr"]).outcome == "success"
    assert where_stored(database, "cdr") == {r.record_id: "held" for r in rows}
    assert not relation_exists(database, pname)


def _race(
    pass_delay: float, pass_action: Any, hold_delay: float, hold_action: Any
) -> dict[str, Any]:
    """Start a pass and a hold placement together, each after its delay; their results."""
    results: dict[str, Any] = {}
    go = threading.Barrier(2)

    def run(name: str, delay: float, action: Any) -> None:
        try:
            go.wait()
            # The random timing is what the test is about: there is nothing to await.
            threading.Event().wait(delay)
            results[name] = action()
        except BaseException as exc:  # re-raised in the test's thread
            results[name] = exc

    threads = [
        threading.Thread(target=run, args=("pass", pass_delay, pass_action)),
        threading.Thread(target=run, args=("hold", hold_delay, hold_action)),
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    for value in results.values():
        if isinstance(value, BaseException):
            raise value
    assert set(results) == {"pass", "hold"}, "a side did not finish"
    return results


def test_a_hold_placed_during_a_pass_never_loses_a_covered_record(
    database: str, policy: RetentionPolicy
) -> None:
    purger = make_purger(database, policy, lock_timeout_ms=60_000)
    rng = random.Random(20261128)
    base = _midnight(_now() - timedelta(days=170))
    per_run = 3

    def prepare(i: int) -> tuple[str, list[Row]]:
        day = base + i * DAY
        msisdn = f"+316{i + 10_000_000:08d}"
        seed_bulk(database, "cdr", day, 2000, prefix=f"i{i}-")
        covered = [
            Row(f"i{i}-covered-{k}", day + timedelta(hours=k + 1), subjects={"msisdn": [msisdn]})
            for k in range(per_run)
        ]
        seed(database, "cdr", covered)
        return msisdn, covered

    # A pass's duration sets the range of the random offsets between the two.
    prepare(0)
    started = _now()
    assert purger.run_pass(categories=["cdr"]).outcome == "success"
    window = max((_now() - started).total_seconds(), 0.01)

    orders: Counter[str] = Counter()
    for i in range(1, 51):
        msisdn, covered = prepare(i)
        offset = rng.uniform(-window, window)
        results = _race(
            max(-offset, 0),
            functools.partial(purger.run_pass, categories=["cdr"]),
            max(offset, 0),
            functools.partial(place, database, policy, f"C{i}", subjects={"msisdn": [msisdn]}),
        )
        assert results["pass"].outcome == "success", results["pass"].error
        placement: hold_registry.Placement = results["hold"]
        stored = where_stored(database, "cdr")
        kept = [r.record_id for r in covered if r.record_id in stored]
        (placed,) = [
            e for e in audit_kinds(database, "hold_placed") if e["hold_id"] == placement.hold.id
        ]
        (dropped,) = [
            e
            for e in audit_kinds(database, "partition_dropped")
            if e["partition"] == partition_name("cdr", base + i * DAY)
        ]
        before, preserved, lost = (
            placement.counted_before["cdr"],
            placement.preserved["cdr"],
            placement.destroyed_while_placing["cdr"],
        )
        # What the hold counted before its lock is either preserved or reported lost.
        assert before == preserved + lost, f"run {i}: {placement.as_dict()}"
        # Audit appends are serialised until commit: seq order is commit order.
        if placed["seq"] < dropped["seq"]:
            orders["hold first"] += 1
            assert kept == [r.record_id for r in covered], f"run {i}: a covered record was lost"
            assert {stored[k] for k in kept} == {"held"}
            assert (before, preserved, lost, dropped["held"]) == (per_run, per_run, 0, per_run)
        else:
            orders["drop first"] += 1
            assert kept == [] and preserved == 0 and dropped["held"] == 0
            assert lost in (0, per_run)

    # Both orders happened, so the test exercised the race it is about.
    assert orders["hold first"] and orders["drop first"], orders
    _chain_ok(database)


def test_an_expired_record_arriving_under_a_hold_is_kept_as_held(
    settings: Settings, policy: RetentionPolicy, topics: dict[str, str], producer: KafkaProducer
) -> None:
    url = settings.conninfo()
    hold = place(url, policy, subjects={"email": ["JAN@EXAMPLE.NL"]}, categories=["cdr"]).hold
    long_ago = _now() - timedelta(days=400)

    def message(record_id: str, email: str) -> bytes:
        body = {
            "record_id": record_id,
            "occurred_at": long_ago.isoformat(),
            "tenant": "t1",
            "subjects": {"email": email},
        }
        return json.dumps(body).encode()

    producer.send(topics["cdr"], message("covered", "jan@example.nl"), partition=0)
    producer.send(topics["cdr"], message("covered", "jan@example.nl"), partition=0)  # again
    producer.send(topics["cdr"], message("uncovered", "piet@example.nl"), partition=0)
    producer.flush()
    metrics = Metrics(CollectorRegistry(), list(policy.categories), list(topics.values()))

    summary = consume(settings, policy, metrics, threading.Event(), until_idle=True)

    counts = summary["categories"]["cdr"]
    assert (counts["held"], counts["duplicates"], counts["expired_on_arrival"]) == (1, 1, 1)
    assert counts["stored"] == 0
    assert (
        metrics.registry.get_sample_value("purger_records_ingested_total", {"category": "cdr"}) == 1
    )
    assert where_stored(url, "cdr") == {"covered": "held"}
    purger = make_purger(url, policy)
    assert purger.run_pass(categories=["cdr"]).outcome in ("success", "nothing_to_do")
    assert where_stored(url, "cdr") == {"covered": "held"}
    release(url, hold.id)
    purger.run_pass(categories=["cdr"])
    assert where_stored(url, "cdr") == {}


def test_holds_are_never_deleted_and_a_released_hold_never_changes(
    database: str, policy: RetentionPolicy
) -> None:
    hold = place(database, policy, tenant="acme").hold
    release(database, hold.id)
    with psycopg.connect(database, autocommit=True) as conn:
        for statement in (
            "UPDATE purger.legal_holds SET released_at = NULL, released_by = NULL, "
            "release_reason = NULL WHERE id = %(id)s",
            "DELETE FROM purger.legal_holds WHERE id = %(id)s",
            "TRUNCATE purger.legal_holds",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement, {"id": hold.id} if "%(id)s" in statement else None)
        with pytest.raises(hold_registry.HoldReleased):
            hold_registry.release(conn, hold.id, released_by="x", reason="again")
        with pytest.raises(hold_registry.UnknownHold):
            hold_registry.get(conn, hold.id + 1000)
    kinds = [e for e in audit_kinds(database, "hold_released") if e["hold_id"] == hold.id]
    assert len(kinds) == 1


def test_a_released_hold_forgets_its_identifiers_but_not_how_many_it_had(
    database: str, policy: RetentionPolicy
) -> None:
    placement = place(
        database, policy, subjects={"msisdn": ["0612345678", "0687654321"], "email": ["A@B.nl"]}
    )
    released = release(database, placement.hold.id)

    assert released.scope.subject_keys is None
    assert released.selector_counts() == {"msisdn": 2, "email": 1}
    with psycopg.connect(database) as conn:
        row = conn.execute(
            "SELECT subject_keys, released_selectors, to_jsonb(h)::text "
            "FROM purger.legal_holds h WHERE id = %s",
            (placement.hold.id,),
        ).fetchone()
        assert row is not None
        assert row[:2] == (None, {"msisdn": 2, "email": 1})
        assert "612345678" not in row[2] and "a@b.nl" not in row[2].lower()
        # Not even by hand: a release must forget them, and nothing else may.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(
                "UPDATE purger.legal_holds SET subject_keys = NULL, "
                "released_selectors = purger.selector_counts(subject_keys) WHERE id = %s",
                (place(database, policy, "CASE-2", subjects={"msisdn": ["0611111111"]}).hold.id,),
            )
        conn.rollback()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(
                "UPDATE purger.legal_holds SET released_at = now(), released_by = 'x', "
                "release_reason = 'keeps the identifiers' WHERE case_ref = 'CASE-2'"
            )
    # The audit trail vouches for the scope as it was placed.
    (entry,) = [
        e for e in audit_kinds(database, "hold_released") if e["hold_id"] == placement.hold.id
    ]
    (placed,) = [
        e for e in audit_kinds(database, "hold_placed") if e["hold_id"] == placement.hold.id
    ]
    assert entry["scope_hmac"] == placed["scope"]["scope_hmac"]
    _chain_ok(database)


def test_a_scope_with_tenant_window_and_category_covers_only_its_records(
    database: str, policy: RetentionPolicy
) -> None:
    day = _midnight(_now() - timedelta(days=20))
    at = datetime(2025, 6, 1, 12, tzinfo=UTC)
    rows = [
        Row("in", day + timedelta(hours=1), tenant="acme", occurred_at=at),
        Row("edge-from", day + timedelta(hours=2), tenant="acme", occurred_at=at - DAY),
        Row("edge-to", day + timedelta(hours=3), tenant="acme", occurred_at=at + DAY),
        Row("before", day + timedelta(hours=4), tenant="acme", occurred_at=at - 2 * DAY),
        Row("other-tenant", day + timedelta(hours=5), tenant="other", occurred_at=at),
    ]
    seed(database, "cdr", rows)
    seed(
        database,
        "cookie_stats",
        [Row("other-category", day + timedelta(hours=1), tenant="acme", occurred_at=at)],
    )
    placement = place(
        database,
        policy,
        tenant="acme",
        categories=["cdr"],
        occurred_from=at - DAY,
        occurred_to=at + DAY,
    )
    assert placement.preserved == {"cdr": 3}

    report = make_purger(database, policy).run_pass(categories=["cdr", "cookie_stats"])

    assert report.outcome == "success"
    assert where_stored(database, "cdr") == {"in": "held", "edge-from": "held", "edge-to": "held"}
    assert where_stored(database, "cookie_stats") == {}


def test_the_cli_places_lists_shows_releases_and_exports(
    settings: Settings, policy: RetentionPolicy
) -> None:
    url = settings.conninfo()
    env = settings_env(settings)
    day = _midnight(_now() - timedelta(days=3))
    seed(url, "cdr", [Row("old", day, subjects={"msisdn": [MSISDN]})])
    seed(
        url,
        "cookie_stats",
        [
            Row(
                "live",
                _now() + timedelta(days=30),
                subjects={"msisdn": [MSISDN], "email": ["a@b.nl"]},
            )
        ],
    )

    placed = purger_cli(
        "hold",
        "place",
        "--case-ref",
        "CASE-9",
        "--reason",
        "court order",
        "--by",
        "alice",
        "--msisdn",
        "06 12 34 56 78",
        "--json",
        env=env,
    )
    assert placed.returncode == 0, placed.stderr
    body = json.loads(placed.stdout)
    hold_id = body["id"]
    assert body["preserved"]["cdr"] == 1 and body["preserved"]["cookie_stats"] == 1
    assert body["scope"]["subject_keys"] == [f"msisdn:{MSISDN}"]

    listed = purger_cli("hold", "list", "--active", "--json", env=env)
    assert [h["id"] for h in json.loads(listed.stdout)] == [hold_id]
    shown = purger_cli("hold", "show", str(hold_id), "--json", env=env)
    assert json.loads(shown.stdout)["preserved"] == body["preserved"]
    text = purger_cli("hold", "show", str(hold_id), env=env)
    assert text.returncode == 0 and "CASE-9" in text.stdout

    assert purger_cli("purge", "--category", "cdr", env=env).returncode == 0
    exported = purger_cli("subject", "export", "--msisdn", "0612345678", env=env)
    assert exported.returncode == 0, exported.stderr
    records = {r["record_id"]: r for r in json.loads(exported.stdout)["records"]}
    assert {k: (r["storage"], r["holds"]) for k, r in records.items()} == {
        "old": ("held", [hold_id]),
        "live": ("live", [hold_id]),
    }
    as_csv = purger_cli("subject", "export", "--email", "A@B.NL", "--format", "csv", env=env)
    lines = as_csv.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[1].startswith("cookie_stats,live,")

    released = purger_cli(
        "hold", "release", str(hold_id), "--by", "bob", "--reason", "case closed", "--json", env=env
    )
    assert released.returncode == 0 and json.loads(released.stdout)["active"] is False
    again = purger_cli("hold", "release", str(hold_id), "--by", "bob", "--reason", "x", env=env)
    unknown = purger_cli("hold", "show", "999999", env=env)
    for result in (again, unknown):
        assert result.returncode == 1
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr

    # User mistakes: one line, exit 2, and the identifier never echoed.
    for args in (
        ["--msisdn", "not-a-phone-0612"],
        ["--all-records", "--msisdn", "0612345678"],
        [],
        ["--tenant", "acme", "--occurred-from", "yesterday"],
        ["--tenant", "acme", "--category", "nope"],
    ):
        bad = purger_cli(
            "hold", "place", "--case-ref", "C", "--reason", "r", "--by", "b", *args, env=env
        )
        assert bad.returncode == 2, (args, bad.stderr)
        assert bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
        assert "not-a-phone" not in bad.stderr and "0612345678" not in bad.stderr
    with psycopg.connect(url) as conn:
        kinds = [r[0] for r in conn.execute("SELECT kind FROM purger.audit_log ORDER BY seq")]
    assert kinds.count("hold_placed") == 1 and kinds.count("hold_released") == 1
    assert f"msisdn:{MSISDN}" not in json.dumps(audit_kinds(url, "hold_placed"))
    _chain_ok(url)


def test_parents_and_held_tables_are_created_with_the_category(database: str) -> None:
    with psycopg.connect(database) as conn:
        for name in ("cdr", "call_recordings", "interception", "cookie_stats"):
            parent = conn.execute(
                "SELECT array_agg(attname::text ORDER BY attnum) FROM pg_attribute "
                "WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped",
                (f"purger.{parent_table(name)}",),
            ).fetchone()
            held = conn.execute(
                "SELECT array_agg(attname::text ORDER BY attnum) FROM pg_attribute "
                "WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped",
                (f"purger.{held_table(name)}",),
            ).fetchone()
            assert parent is not None and held is not None
            assert held[0] == parent[0]
