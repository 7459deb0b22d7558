"""Data-subject requests, pure logic: deadlines (Art. 12(3)), the subject, exceptions, purposes."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from purger.erasure_report import LEGAL_OBLIGATION, CategoryErasure, exemption
from purger.request_rules import (
    InvalidRequest,
    can_extend,
    check_received,
    due_on,
    extended_due_on,
    is_overdue,
    selector_counts,
    subject_hmac,
    subject_keys,
    text,
    utc_today,
)
from purger.restriction import check_purpose


@pytest.mark.parametrize(
    ("received", "due", "extended"),
    [
        (date(2026, 3, 15), date(2026, 4, 15), date(2026, 6, 15)),
        # No 31 February: the month's last day (EU Reg. 1182/71, Art. 3(2)(c)).
        (date(2026, 1, 31), date(2026, 2, 28), date(2026, 4, 30)),
        (date(2028, 1, 31), date(2028, 2, 29), date(2028, 4, 30)),
        (date(2026, 11, 30), date(2026, 12, 30), date(2027, 2, 28)),
        (date(2026, 12, 31), date(2027, 1, 31), date(2027, 3, 31)),
    ],
)
def test_deadlines_count_calendar_months_from_receipt(
    received: date, due: date, extended: date
) -> None:
    assert due_on(received) == due
    assert extended_due_on(received) == extended


@given(st.dates(min_value=date(2000, 1, 1), max_value=date(2099, 12, 31)))
def test_a_deadline_is_one_month_on_and_the_extension_two_more(received: date) -> None:
    due, extended = due_on(received), extended_due_on(received)
    assert timedelta(days=28) <= due - received <= timedelta(days=31)
    assert timedelta(days=89) <= extended - received <= timedelta(days=92)
    # The same day of the month, or the month's last day when it has no such day.
    last_day = (due + timedelta(days=1)).day == 1
    assert due.day == received.day or (due.day < received.day and last_day)


def test_overdue_starts_the_day_after_the_deadline() -> None:
    due = date(2026, 4, 15)
    assert not is_overdue(due, date(2026, 4, 15))
    assert is_overdue(due, date(2026, 4, 16))
    assert utc_today(datetime(2026, 4, 15, 23, 30, tzinfo=UTC)) == date(2026, 4, 15)
    late_evening_east = datetime(2026, 4, 16, 0, 30, tzinfo=UTC).astimezone()
    assert utc_today(late_evening_east) == date(2026, 4, 16)


def test_the_extension_is_given_within_the_first_month_and_receipt_is_not_in_the_future() -> None:
    received = date(2026, 3, 15)
    assert can_extend(received, date(2026, 4, 15))
    assert not can_extend(received, date(2026, 4, 16))
    assert check_received(received, received) == received
    with pytest.raises(InvalidRequest, match="future"):
        check_received(received + timedelta(days=1), received)


def test_the_subject_is_normalised_as_ingestion_does_and_errors_name_no_value() -> None:
    keys = subject_keys({"msisdn": ["06 12 34 56 78", "+31612345678"], "email": ["A@B.NL"]}, 31)
    assert keys == ["email:a@b.nl", "msisdn:+31612345678"]
    assert selector_counts(keys) == {"email": 1, "msisdn": 1}
    with pytest.raises(InvalidRequest) as bad:
        subject_keys({"msisdn": ["not-a-phone-0612"]}, 31)
    assert "not-a-phone" not in str(bad.value)
    with pytest.raises(InvalidRequest, match="at least one identifier"):
        subject_keys({}, 31)
    with pytest.raises(InvalidRequest, match="unknown subject selector"):
        subject_keys({"name": ["Jan"]}, 31)


def test_the_audited_hmac_depends_on_the_key_and_not_on_the_order() -> None:
    keys = ["msisdn:+31612345678", "email:a@b.nl"]
    one, other = b"k" * 32, b"x" * 32
    assert subject_hmac(keys, one) == subject_hmac(list(reversed(keys)), one)
    assert subject_hmac(keys, one) != subject_hmac(keys, other)
    assert "612345678" not in subject_hmac(keys, one)


def test_free_text_that_looks_like_personal_data_is_refused() -> None:
    assert text("DSR-2026-001", "request reference (--ref)") == "DSR-2026-001"
    with pytest.raises(InvalidRequest, match="phone number") as bad:
        text("call 0612345678", "request reference (--ref)")
    assert "0612345678" not in str(bad.value)


def test_only_a_legal_obligation_exempts_a_category_from_erasure() -> None:
    assert exemption("legal obligation (statutory interception duty)") == LEGAL_OBLIGATION
    assert exemption("Legal obligation") == LEGAL_OBLIGATION
    for basis in ("performance of the contract", "legitimate interest", "consent"):
        assert exemption(basis) is None
    kept = CategoryErasure("legal obligation", kept_legal_obligation=2)
    held = CategoryErasure("consent", erased=1, kept_legal_hold=3, hold_ids=[4, 7])
    assert "17(3)(b)" in kept.reasons()[0]
    assert "17(3)(e)" in held.reasons()[0] and "4, 7" in held.reasons()[0]
    assert held.audit_dict() == {
        "erased": 1,
        "kept_legal_obligation": 0,
        "kept_legal_hold": 3,
        "hold_ids": [4, 7],
    }


def test_restricted_reads_take_only_the_purposes_of_art_18_2() -> None:
    assert check_purpose(None) is None
    assert check_purpose("legal-claims") == "legal_claims"
    assert check_purpose("Public_Interest") == "public_interest"
    with pytest.raises(InvalidRequest, match=r"Art\. 18"):
        check_purpose("marketing")
