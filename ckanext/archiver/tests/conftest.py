"""Fixtures shared by the archiver's tests.

CKAN's search index (Solr) is replaced by a no-op for the whole session,
see ``ckanext.archiver.nosearch``: Solr cannot be installed on the machines
this project is built on.
"""

from __future__ import annotations

import pytest

from ckanext.archiver import nosearch

nosearch.install()


@pytest.fixture
def clean_db(reset_db, migrate_db_for):
    """CKAN's clean_db drops the plugin's tables on its first run in a
    session: put them back."""
    reset_db()
    migrate_db_for("archiver")


@pytest.fixture
def archive_dir(tmp_path, ckan_config, monkeypatch):
    """A fresh archive_dir for one test."""
    path = tmp_path / "archive"
    path.mkdir()
    monkeypatch.setitem(ckan_config, "ckanext.archiver.archive_dir", str(path))
    return path
