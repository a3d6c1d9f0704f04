"""The boundary for untrusted text (no CKAN needed)."""

import pytest

from ckanext.archiver.engine import untrusted


@pytest.mark.parametrize("raw, header, expected", [
    ('"v1"', True, '"v1"'),
    ('"a\x00b"', True, '"ab"'),
    ("max-age=60\r\nSet-Cookie: x", True, "max-age=60Set-Cookie: x"),
    ("a\tb", False, "a b"),
    ("caf\xc3\xa9", True, "café"),  # UTF-8 bytes http.client decoded as latin-1
    ("bad\xff\xfe", True, "bad\ufffd\ufffd"),  # invalid UTF-8 replaced
    (b"raw\x00\xff", False, "raw\ufffd"),
    ("lone \udcff surrogate", False, "lone ? surrogate"),
    ("\x00\x01\x7f", True, None),  # nothing left
    ("Server returned 999 \x85odd", False, "Server returned 999 odd"),
    (None, True, None),
])
def test_clean(raw, header, expected):
    cleaned = untrusted.clean(raw, header=header)
    assert cleaned == expected
    if cleaned is not None:
        cleaned.encode("utf-8")  # storable
        assert cleaned.isprintable()


def test_clean_cuts_to_the_limit():
    assert untrusted.clean("é" * 5000, 10) == "é" * 10
    assert untrusted.clean("x" * 10, 10) == "x" * 10


def test_every_text_column_has_a_limit():
    assert set(untrusted.LIMITS) >= {
        "reason", "url_redirected_to", "cache_filepath", "cache_url", "mimetype", "etag",
        "last_modified", "cache_control"}


def test_clean_row_drops_changed_validators_and_names_them():
    values = {"etag": '"x\x00"', "last_modified": "Tue, 01 Dec 2026 10:00:00 GMT",
              "cache_control": "max-age=1" + "0" * 5000, "reason": "Downloaded\x00 2 bytes",
              "status_id": 0, "mimetype": "text/csv"}
    changed = untrusted.clean_row(values, ("etag", "last_modified", "cache_control",
                                           "mimetype"))
    assert changed == ["ETag", "Cache-Control"]
    assert values["etag"] is None  # never sent back altered
    assert values["last_modified"] == "Tue, 01 Dec 2026 10:00:00 GMT"
    assert len(values["cache_control"]) == untrusted.LIMITS["cache_control"]
    assert values["reason"] == "Downloaded 2 bytes" and values["status_id"] == 0
    assert untrusted.note(changed) == (
        " (the server sent an invalid ETag, Cache-Control: they were not kept as sent)")
    assert untrusted.note([]) == ""
