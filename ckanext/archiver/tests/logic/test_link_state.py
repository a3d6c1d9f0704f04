"""``logic.link_state``: pending states (a retry waiting for its
countdown), the short words both pages show, ``package_show``'s
``pending``. Plain dicts, as ``Archival.as_dict`` gives them."""

from __future__ import annotations

import datetime

from hypothesis import given
from hypothesis import strategies as hs

from ckanext.archiver import status as st
from ckanext.archiver.logic import link_state as ls

NOW = datetime.datetime(2026, 12, 1, 12, 0, 0)


def _at(minutes: float) -> str:
    return (NOW + datetime.timedelta(minutes=minutes)).isoformat()


def _failed(**extra):
    return dict({"status_id": st.DOWNLOAD_ERROR, "is_broken": True, "updated": _at(-1),
                 "last_checked": _at(-1), "started_at": _at(-2),
                 "reason": "Server returned 503 Service Unavailable (will retry)"}, **extra)


def test_a_retry_waits_until_it_is_due_then_is_queued_then_runs():
    waiting = _failed(queued_at=_at(4))
    assert ls.pending(waiting, NOW) == "retry"
    state = ls.link_state(waiting, NOW)
    assert state["pending"] == "retry" and state["queued_at"] == NOW + datetime.timedelta(minutes=4)
    assert ls.pending(waiting, NOW + datetime.timedelta(minutes=5)) == "queued"  # due
    # "Check link now" queues it again at once: no longer waiting for the retry
    assert ls.pending(_failed(queued_at=_at(0)), NOW + datetime.timedelta(seconds=1)) == "queued"
    assert ls.pending(_failed(queued_at=_at(4), started_at=_at(4)), NOW) == "checking"
    # a failure without "(will retry)" queued again is a plain queued check
    assert ls.pending(_failed(queued_at=_at(4), reason="Server returned 404"), NOW) == "queued"


def test_short_state_words_and_what_is_on_its_way():
    short = ls.short_state(ls.link_state(_failed(queued_at=_at(4)), NOW))
    assert short["verdict"] == {"kind": "broken", "tone": "broken", "icon": "fa-times-circle",
                                "words": "Link broken"}
    assert short["pending"] == {"state": "retry", "words": "Waiting to be tried again",
                                "since": NOW + datetime.timedelta(minutes=4)}
    queued_first = ls.short_state(ls.link_state({"queued_at": _at(0), "created": _at(0)}, NOW))
    assert queued_first == {"verdict": None, "pending": {
        "state": "queued", "words": "Waiting to be checked", "since": NOW}}
    assert ls.short_state(ls.link_state(None))["verdict"]["words"] == "Not checked yet"
    fault = {"status_id": st.SYSTEM_ERROR, "is_broken": None, "site_fault_at": _at(0),
             "updated": _at(0)}
    assert ls.short_state(ls.link_state(fault))["verdict"]["words"] == "Could not be checked yet"
    moved = {"status_id": st.ARCHIVED, "is_broken": False, "url": "http://a/x",
             "moved_to": "http://b/x", "updated": _at(0)}
    assert ls.short_state(ls.link_state(moved))["verdict"]["words"] == "Link works, but it moved"


def test_add_pending_gives_each_resource_dict_its_pending():
    pkg = {"resources": [{"id": "a", "archiver": _failed(queued_at=_at(60 * 24 * 365))},
                         {"id": "b", "archiver": _failed()},
                         {"id": "c"}]}
    ls.add_pending(pkg)
    assert pkg["resources"][0]["archiver"]["pending"] == "retry"
    assert pkg["resources"][1]["archiver"]["pending"] is None
    assert "archiver" not in pkg["resources"][2]


_times = hs.one_of(hs.none(), hs.integers(-10, 10).map(_at))


@given(queued=_times, updated=_times, started=_times, retry=hs.booleans(),
       status=hs.sampled_from([None, st.ARCHIVED, st.DOWNLOAD_ERROR, st.SYSTEM_ERROR,
                               st.CHOSE_NOT_TO_DOWNLOAD]))
def test_every_state_has_its_words(queued, updated, started, retry, status):
    info = {"queued_at": queued, "updated": updated, "started_at": started,
            "status_id": status, "is_broken": st.is_broken(status) if status is not None else None,
            "reason": "x (will retry)" if retry else "x"}
    state = ls.link_state(info, NOW)
    short = ls.short_state(state)
    assert short["verdict"] or short["pending"], "something is always said"
    if short["pending"]:
        assert short["pending"]["words"] == ls.PENDING[state["pending"]]
    assert (state["pending"] == "retry") == (
        retry and queued is not None and queued > (updated or "") and queued > NOW.isoformat()
        and not (started is not None and started >= queued))
