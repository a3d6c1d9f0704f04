"""Translations: the catalogue is complete and current, reasons are shown
in the reader's language, and the pages answer in German and French."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest
from babel.messages.mofile import read_mo
from babel.messages.pofile import read_po
from ckan.tests import factories

from ckanext.archiver import status as st
from ckanext.archiver.engine import netguard, reasons
from ckanext.archiver.tests.factories import make_archival
from ckanext.archiver.tests.helpers import login

I18N = pathlib.Path(__file__).resolve().parents[1] / "i18n"
ROOT = I18N.parents[2]
LANGUAGES = ("de", "fr")
_PLACEHOLDER = re.compile(r"\{\w*\}|%\(\w+\)s")


def _catalog(lang: str):
    with open(I18N / lang / "LC_MESSAGES" / "ckanext-archiver.po", "rb") as f:
        return read_po(f, locale=lang)


def _ids(catalog) -> set:
    return {m.id if isinstance(m.id, str) else tuple(m.id) for m in catalog if m.id}


def test_pot_is_current(tmp_path):
    out = tmp_path / "fresh.pot"
    subprocess.run([sys.executable, "setup.py", "-q", "extract_messages",
                    f"--output-file={out}"], cwd=ROOT, check=True,
                   capture_output=True)
    with open(out, "rb") as f:
        fresh = _ids(read_po(f))
    with open(I18N / "ckanext-archiver.pot", "rb") as f:
        committed = _ids(read_po(f))
    assert fresh == committed, "run python setup.py extract_messages"
    assert "Server returned {status}" in committed      # Python (reasons.py)
    assert "Archived successfully" in committed         # status.py, N_()
    assert ("Failed %(count)s check in a row since %(since)s",
            "Failed %(count)s checks in a row since %(since)s") in committed


@pytest.mark.parametrize("lang", LANGUAGES)
def test_translation_complete_with_plurals_and_placeholders(lang):
    with open(I18N / "ckanext-archiver.pot", "rb") as f:
        pot = _ids(read_po(f))
    catalog = _catalog(lang)
    assert _ids(catalog) == pot
    plurals = 0
    for message in catalog:
        if not message.id:
            continue
        assert not message.fuzzy, message.id
        ids = [message.id] if isinstance(message.id, str) else list(message.id)
        strings = ([message.string] if isinstance(message.string, str)
                   else list(message.string))
        assert all(strings), f"{lang}: untranslated {message.id!r}"
        if len(ids) > 1:
            plurals += 1
            assert len(strings) == catalog.num_plurals == 2
        wanted = set(_PLACEHOLDER.findall(ids[-1]))
        for string in strings:
            assert set(_PLACEHOLDER.findall(string)) == wanted, (lang, message.id)
    assert plurals >= 6


@pytest.mark.parametrize("lang", LANGUAGES)
def test_mo_matches_po(lang):
    with open(I18N / lang / "LC_MESSAGES" / "ckanext-archiver.mo", "rb") as f:
        compiled = {m.id if isinstance(m.id, str) else tuple(m.id): m.string
                    for m in read_mo(f) if m.id}
    source = {m.id if isinstance(m.id, str) else tuple(m.id): m.string
              for m in _catalog(lang) if m.id}
    assert {k: tuple(v) if isinstance(v, (list, tuple)) else v
            for k, v in compiled.items()} == {
        k: tuple(v) if isinstance(v, (list, tuple)) else v
        for k, v in source.items()}, "recompile: python setup.py compile_catalog"


# -- reasons ----------------------------------------------------------------

def test_every_template_parses_back_to_its_code():
    for code, template in reasons.TEMPLATES.items():
        params = {name: f"p{i}x" for i, name in enumerate(
            re.findall(r"\{(\w+)\}", template))}
        parsed = reasons.parse(template.format(**params))
        assert parsed is not None and parsed.code == code, (code, parsed)
        assert parsed.params == params


def test_engine_reasons_are_known():
    # real outputs of the URL guard, not copies of its strings
    for bad in ("", "ftp://example.com/x", "example.com/x", "http://a b/",
                "C:\\data\\x.csv", "http://example.com:99999/"):
        try:
            netguard.normalise_url(bad)
        except netguard.InvalidURL as e:
            assert reasons.parse(e.reason) is not None, e.reason
    blocked = netguard.BlockedAddress("intranet", "10.0.0.1")
    assert reasons.parse(blocked.reason).params == {"address": "10.0.0.1"}
    for status_text in st.STATUSES.values():
        assert status_text  # status texts are marked too (N_)


def test_translate_nested_retry_and_unknown():
    german = {t: "DE:" + t for t in reasons.TEMPLATES.values()}
    german[reasons.RETRY_TEMPLATE] = "{reason} (NOCHMAL)"
    gettext = lambda s: german.get(s, s)  # noqa: E731
    assert reasons.translate("Server returned 503 Service Unavailable (will retry)",
                             gettext) == "DE:Server returned 503 Service Unavailable (NOCHMAL)"
    assert reasons.translate("Redirected to an invalid URL: URL has no host name",
                             gettext) == "DE:Redirected to an invalid URL: DE:URL has no host name"
    assert reasons.translate("Some text of the older archiver", gettext) == \
        "Some text of the older archiver"
    # a translation with a wrong placeholder falls back to English
    assert reasons.translate("Connection refused", lambda s: "{oops}") == "Connection refused"
    assert reasons.translate(None, gettext) == ""


# -- pages ------------------------------------------------------------------

@pytest.fixture
def broken_site():
    org = factories.Organization(name="health", title="Health")
    dataset = factories.Dataset(owner_org=org["id"], name="clinics", resources=[
        {"name": "Clinic list", "url": "http://example.com/clinics.csv"}])
    res = dataset["resources"][0]
    from ckan import model

    from ckanext.archiver.model import Archival
    model.Session.query(Archival).filter_by(resource_id=res["id"]).delete()
    model.Session.commit()
    make_archival(res, st.DOWNLOAD_ERROR, reason="Server returned 404 Not Found",
                  http_status=404, failure_count=1)
    return dataset, res


@pytest.mark.usefixtures("with_plugins", "clean_db")
@pytest.mark.parametrize("lang, words", [
    ("de", ["Defekte Links", "Der Server antwortete mit 404 Not Found",
            "Fehlerhaft seit", "Download-Fehler"]),
    ("fr", ["Liens cassés", "Le serveur a répondu 404 Not Found",
            "En échec depuis", "Erreur de téléchargement"]),
])
def test_report_page_translated(app, broken_site, lang, words):
    login(app, None)
    body = app.get(f"/{lang}/report/broken-links/health").get_data(as_text=True)
    for word in words:
        assert word in body, (lang, word)
    assert "Server returned 404" not in body


@pytest.mark.usefixtures("with_plugins", "clean_db")
def test_resource_page_plural_in_german(app, broken_site):
    dataset, res = broken_site
    login(app, None)
    body = app.get(f"/de/dataset/clinics/resource/{res['id']}").get_data(as_text=True)
    assert "Link defekt" in body
    assert "Einmaliger Fehler am" in body
    english = app.get(f"/dataset/clinics/resource/{res['id']}").get_data(as_text=True)
    assert "One-off failure on" in english and "Link broken" in english
    from ckan import model

    from ckanext.archiver.model import Archival
    model.Session.query(Archival).filter_by(resource_id=res["id"]).update({"failure_count": 3})
    model.Session.commit()
    body = app.get(f"/de/dataset/clinics/resource/{res['id']}").get_data(as_text=True)
    assert "3 Prüfungen in Folge fehlgeschlagen seit" in body
    assert re.search(r"\d{2}:\d{2} \(\w+\)", english)  # hours and time zone


