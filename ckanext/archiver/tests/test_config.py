"""Every option is declared (default, type, example, description, legacy key)."""

import dataclasses
import logging
import pathlib

import pytest
import yaml
from ckan.common import config_declaration
from ckan.plugins import toolkit as tk

from ckanext.archiver import config

DECLARATION = pathlib.Path(__file__).parents[1] / "config_declaration.yaml"


def _options():
    data = yaml.safe_load(DECLARATION.read_text())
    return [o for group in data["groups"] for o in group["options"]]


@pytest.mark.usefixtures("with_plugins")
def test_options_declared_and_no_warning(caplog):
    options = _options()
    assert len(options) >= 20
    with caplog.at_level(logging.WARNING, logger="ckan.common"):
        for option in options:
            assert config_declaration.get(option["key"]) is not None, option["key"]
            tk.config.get(option["key"])
    assert not [r for r in caplog.records if "not declared" in r.getMessage()]


@pytest.mark.parametrize("option", _options(), ids=lambda o: o["key"])
def test_option_documented(option):
    name = option["key"].removeprefix("ckanext.archiver.")
    assert option["key"].startswith("ckanext.archiver.")
    assert option["legacy_key"] == "ckanext-archiver." + name
    assert option.get("description"), "needs a description"
    assert "example" in option, "needs an example"


@pytest.mark.usefixtures("with_plugins")
@pytest.mark.ckan_config("ckanext-archiver.max_content_length", "1234")
def test_legacy_key_still_read(ckan_config):
    ckan_config.pop("ckanext.archiver.max_content_length")
    config_declaration.make_safe(ckan_config)
    config_declaration.normalize(ckan_config)
    assert tk.config.get("ckanext.archiver.max_content_length") == 1234


@pytest.mark.usefixtures("with_plugins")
def test_defaults_typed():
    assert tk.config.get("ckanext.archiver.max_content_length") == 50_000_000
    assert tk.config.get("ckanext.archiver.allow_private_networks") is False
    assert float(tk.config.get("ckanext.archiver.connect_timeout")) == 2.0  # test.ini


def test_every_option_is_read_once_in_config_py():
    """``config.current()`` has a typed field per declared option, and no
    other module of the package names an option."""
    fields = {f.name for f in dataclasses.fields(config.Options)}
    names = {o["key"].removeprefix("ckanext.archiver.") for o in _options()}
    assert names <= fields
    package = DECLARATION.parent
    readers = sorted(str(p.relative_to(package)) for p in package.rglob("*.py")
                     if "tests" not in p.parts and p.name != "config.py"
                     and any(f'"ckanext.archiver.{n}"' in p.read_text() for n in names))
    assert readers == []


@pytest.mark.usefixtures("with_plugins")
def test_options_typed(ckan_config, monkeypatch):
    monkeypatch.setitem(ckan_config, "ckanext.archiver.total_timeout", "12.5")
    monkeypatch.setitem(ckan_config, "ckanext.archiver.host_wait", "3")
    options = config.current()
    assert options.total_timeout == 12.5 and options.download_time_max == 15.5
    assert options.time_limits == (75, 135)
    assert options.queue_name("bulk") == f"{options.site_id}:bulk"


def test_a_worker_reads_its_options_once(ckan_config, monkeypatch):
    """``freeze`` (a worker process): ``current()`` no longer reads CKAN's
    config; an explicit config is still read."""
    monkeypatch.setattr(config, "_frozen", [])
    monkeypatch.setitem(ckan_config, "ckanext.archiver.per_host_concurrency", 3)
    config.freeze()
    frozen = config.current()
    monkeypatch.setitem(ckan_config, "ckanext.archiver.per_host_concurrency", 5)
    assert config.current() is frozen and frozen.per_host_concurrency == 3
    assert config.current(ckan_config).per_host_concurrency == 5
