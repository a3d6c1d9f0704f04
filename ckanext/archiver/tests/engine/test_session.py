"""The sessions read the environment when they are made, and at each
request only where it has proxies or a .netrc (``engine.session``)."""

import dataclasses

from ckanext.archiver import status
from ckanext.archiver.engine.session import get_session, guarded_session
from ckanext.archiver.fetch import fetch
from ckanext.archiver.tests.http_fixtures import respond

CSV = b"a,b\n1,2\n"


def _no_netrc(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("NETRC", raising=False)


def test_nothing_in_the_environment_is_not_read_at_each_request(
        archiver_clean_proxy_env, monkeypatch, tmp_path):
    _no_netrc(monkeypatch, tmp_path)
    session = guarded_session()
    assert session.trust_env is False
    settings = session.merge_environment_settings("http://example.org/", {}, None, True, None)
    assert settings["verify"] is True and settings["proxies"] == {}


def test_a_ca_bundle_is_still_honoured(archiver_clean_proxy_env, monkeypatch, tmp_path):
    _no_netrc(monkeypatch, tmp_path)
    session = guarded_session()
    assert session.trust_env is False
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "ca.pem"))  # read at each request
    verify = session.merge_environment_settings("https://x.org/", {}, None, True, None)["verify"]
    assert verify == str(tmp_path / "ca.pem")
    # verify off stays off
    assert session.merge_environment_settings("https://x.org/", {}, None, False,
                                              None)["verify"] is False


def test_a_proxy_variable_or_a_netrc_file_is_read_at_each_request(
        archiver_clean_proxy_env, monkeypatch, tmp_path):
    _no_netrc(monkeypatch, tmp_path)
    monkeypatch.setenv("https_proxy", "http://proxy.invalid:3128")
    assert guarded_session().trust_env is True
    monkeypatch.delenv("https_proxy")
    (tmp_path / ".netrc").write_text("machine files.example.org login a password b\n")
    assert guarded_session().trust_env is True


def test_a_variable_set_after_a_session_was_made_is_seen(
        fetch_settings, fetch_tmp_dir, raw_server, monkeypatch, tmp_path):
    _no_netrc(monkeypatch, tmp_path)
    before = get_session(fetch_settings)
    assert before.trust_env is False and get_session(fetch_settings) is before
    raw_server.default = lambda request, conn: respond(conn, 200, CSV,
                                                       {"Content-Type": "text/csv"})
    monkeypatch.setenv("HTTP_PROXY", raw_server.base_url)
    settings = dataclasses.replace(fetch_settings, allow_private_networks=False)
    outcome = fetch("http://93.184.215.14/later.csv", settings, None, tmp_dir=fetch_tmp_dir)
    assert outcome.status_id == status.ARCHIVED, outcome.reason
    assert raw_server.requests[0].target == "http://93.184.215.14/later.csv"
    assert get_session(fetch_settings) is not before
