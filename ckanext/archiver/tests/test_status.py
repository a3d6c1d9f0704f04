import pytest

from ckanext.archiver import status as st


@pytest.mark.parametrize("status_id, broken", [
    (0, False), (1, False), (2, False), (9, False),
    (10, True), (11, True), (12, True), (19, True),
    (20, None), (21, None), (22, None), (23, None), (None, None),
])
def test_broken_rule(status_id, broken):
    assert st.is_broken(status_id) is broken


def test_contract_texts_unchanged():
    assert {i: st.STATUSES[i] for i in (0, 1, 10, 11, 12, 21, 22, 23)} == {
        0: "Archived successfully",
        1: "Content has not changed",
        10: "URL invalid",
        11: "URL request failed",
        12: "Download error",
        21: "Chose not to download",
        22: "Download failure",
        23: "System error during archival",
    }


def test_text_and_lookup():
    assert st.text(None) is None
    assert st.text(99) == "Unknown status 99"
    assert st.by_text("URL invalid") == 10
    with pytest.raises(KeyError):
        st.by_text("nope")


def test_printable():
    assert st.is_broken_printable(True) == "Broken"
    assert st.is_broken_printable(False) == "Downloaded OK"
    assert st.is_broken_printable(None) == "Not sure if broken"
