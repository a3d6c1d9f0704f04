"""``cache_filepath`` (the server's absolute path) is shown to sysadmins
only, in package_show and the archiver_* actions, unless
``show_cache_filepath`` restores the older behaviour."""

import pytest
from ckan.tests import factories
from ckan.tests.helpers import call_action

from ckanext.archiver import status as st
from ckanext.archiver.model import Archival
from ckanext.archiver.tests.factories import make_archival

pytestmark = pytest.mark.usefixtures("with_plugins", "clean_db")

PATH = "/var/lib/ckan/archiver/ab/abc/data.csv"


@pytest.fixture
def archived():
    dataset = factories.Dataset()
    res = factories.Resource(package_id=dataset["id"])
    make_archival(res, st.ARCHIVED, cache_filepath=PATH, cache_url="https://x/archive/data.csv")
    return dataset, res


def _seen(user, dataset, res):
    context = {"user": user["name"] if user else "", "ignore_auth": False}
    pkg = call_action("package_show", dict(context), id=dataset["id"])
    shown = [pkg["resources"][0]["archiver"],
             call_action("archiver_resource_show", dict(context), id=res["id"]),
             call_action("archiver_dataset_show", dict(context), id=dataset["id"])[
                 "resources"][0]]
    for info in shown:
        assert info["cache_url"] == "https://x/archive/data.csv"
        assert info.get("cache_filename", "data.csv") == "data.csv"
    return [info.get("cache_filepath") for info in shown]


def test_only_sysadmins_see_cache_filepath(archived):
    dataset, res = archived
    assert _seen(None, dataset, res) == [None] * 3
    assert _seen(factories.User(), dataset, res) == [None] * 3
    assert _seen(factories.Sysadmin(), dataset, res) == [PATH] * 3
    assert Archival.get_for_resource(res["id"]).cache_filepath == PATH  # the model keeps it


@pytest.mark.ckan_config("ckanext.archiver.show_cache_filepath", "true")
def test_option_restores_the_older_behaviour(archived):
    dataset, res = archived
    assert _seen(None, dataset, res) == [PATH] * 3
