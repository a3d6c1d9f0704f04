"""The ``broken-links`` report for ckanext-report: the older archiver's
name, options and result keys (read from ckan/ckanext-archiver's
reports.py and ckanext-report's report_registry.py), computed by the
archiver's own report queries. ckanext-report is optional: these tests run
with or without it installed."""

import importlib.util

import pytest
from ckan import model
from ckan.plugins import toolkit as tk
from ckan.tests import factories

from ckanext.archiver import status as st
from ckanext.archiver.compat import report
from ckanext.archiver.tests.factories import make_archival

pytestmark = pytest.mark.usefixtures("with_plugins", "clean_db")

REPORT_INSTALLED = importlib.util.find_spec("ckanext.report") is not None
# ckanext-report's registry refuses other keys
REQUIRED = {"name", "generate", "template", "option_defaults", "option_combinations"}
OPTIONAL = {"title", "description", "authorize"}


@pytest.fixture
def orgs():
    parent = factories.Organization(name="parent")
    child = factories.Organization(name="child")
    # CKAN's hierarchy: the child is the member group, the parent its table_id
    model.Session.add(model.Member(group=model.Group.get(child["id"]), table_id=parent["id"],
                                   table_name="group", capacity="parent", state="active"))
    model.Session.commit()
    ok = factories.Dataset(owner_org=parent["id"], resources=[{"url": "http://a.example/1"}])
    bad = factories.Dataset(owner_org=parent["id"], resources=[
        {"url": "http://a.example/2"}, {"url": "http://a.example/3"}])
    secret = factories.Dataset(owner_org=parent["id"], private=True,
                               resources=[{"url": "http://a.example/4"}])
    below = factories.Dataset(owner_org=child["id"], resources=[{"url": "http://a.example/5"}])
    make_archival(ok["resources"][0])
    make_archival(bad["resources"][0], st.DOWNLOAD_ERROR, reason="Server returned 404")
    make_archival(bad["resources"][1])
    make_archival(secret["resources"][0], st.DOWNLOAD_ERROR)
    make_archival(below["resources"][0], st.URL_INVALID)
    model.Session.commit()
    return parent, child, bad


def test_registration_has_the_older_name_options_and_keys():
    info = report.broken_links_report_info()
    assert REQUIRED <= set(info) and set(info) <= REQUIRED | OPTIONAL
    assert info["name"] == "broken-links"
    assert list(info["option_defaults"].items()) == [
        ("organization", None), ("include_sub_organizations", False)]
    assert info["template"] == "report/broken_links.html"


def test_index_keys_and_counts_public_datasets_only(orgs):
    data = report.broken_links()
    by_name = {row["organization_name"]: row for row in data["table"]}
    assert list(by_name["parent"]) == [
        "organization_title", "organization_name", "package_count", "resource_count",
        "broken_package_count", "broken_package_percent", "broken_resource_count",
        "broken_resource_percent"]
    # the private dataset's broken link is counted nowhere
    assert {k: by_name["parent"][k] for k in ("package_count", "resource_count",
            "broken_package_count", "broken_resource_count", "broken_package_percent",
            "broken_resource_percent")} == {
        "package_count": 2, "resource_count": 3, "broken_package_count": 1,
        "broken_resource_count": 1, "broken_package_percent": 50,
        "broken_resource_percent": 33}
    assert {k: data[k] for k in ("num_packages", "num_resources", "num_broken_packages",
                                 "num_broken_resources")} == {
        "num_packages": 3, "num_resources": 4, "num_broken_packages": 2,
        "num_broken_resources": 2}
    assert data["broken_package_percent"] == 66 and data["broken_resource_percent"] == 50


def test_index_with_sub_organizations(orgs):
    data = report.broken_links(include_sub_organizations=True)
    parent = {row["organization_name"]: row for row in data["table"]}["parent"]
    assert (parent["package_count"], parent["broken_package_count"]) == (3, 2)
    assert data["num_packages"] == 3  # a dataset counts once in the totals


def test_organization_keys_and_rows(orgs):
    _parent, _child, bad = orgs
    data = report.broken_links(organization="parent")
    assert (data["organization_name"], data["num_broken_resources"], data["num_packages"]) == (
        "parent", 1, 2)
    [row] = data["table"]
    assert list(row) == [
        "dataset_title", "dataset_name", "dataset_notes", "organization_title",
        "organization_name", "resource_position", "resource_id", "resource_url",
        "url_up_to_date", "via", "first_failure", "last_updated", "last_success",
        "url_redirected_to", "reason", "status", "failure_count"]
    assert (row["dataset_name"], row["resource_id"], row["resource_position"]) == (
        bad["name"], bad["resources"][0]["id"], 0)
    assert (row["status"], row["reason"], row["failure_count"]) == (
        "Download error", "Server returned 404", 3)
    assert len(report.broken_links("parent", include_sub_organizations=True)["table"]) == 2
    with pytest.raises(tk.ObjectNotFound):
        report.broken_links(organization="nowhere")


def test_option_combinations(orgs):
    combos = list(report.option_combinations())
    assert {"organization": None, "include_sub_organizations": False} in combos
    assert {"organization": "child", "include_sub_organizations": True} in combos
    assert len(combos) == 6


def test_plugin_registers_the_report_only_with_ckanext_report():
    from ckan.plugins import PluginImplementations, get_plugin

    plugin = get_plugin("archiver")
    assert [r["name"] for r in plugin.register_reports()] == ["broken-links"]
    if REPORT_INSTALLED:
        from ckanext.report.interfaces import IReport

        assert plugin in list(PluginImplementations(IReport))
    else:
        from ckanext.archiver import plugin as plugin_module

        assert plugin_module.IReport is None


def test_template_renders_both_forms(orgs, app):
    with app.flask_app.test_request_context():
        data = report.broken_links()
        index = tk.render_snippet("report/broken_links.html",
                                  {"table": data["table"], "data": data})
        data = report.broken_links(organization="parent")
        org = tk.render_snippet("report/broken_links.html", {"table": data["table"], "data": data})
    assert "/report/broken-links/parent" in index and "1 / 2 (50%)" in index
    assert "Server returned 404" in org and "Download error" in org
