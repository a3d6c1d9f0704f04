"""The report's SQL (model/report.py): what counts, for whom, and the trend."""

from __future__ import annotations

import datetime

import pytest
from ckan import model
from ckan.tests import factories

from ckanext.archiver import status as st
from ckanext.archiver.model import Archival, ArchivalHistory, report
from ckanext.archiver.tests import factories as archiver_factories

pytestmark = pytest.mark.usefixtures("with_plugins", "clean_db")

SYSADMIN = report.Viewer(sysadmin=True)
TODAY = datetime.date(2026, 6, 30)


def make_archival(resource, status_id=st.ARCHIVED, **fields):
    """make_archival, replacing the row queueing the resource may have made."""
    model.Session.query(Archival).filter_by(resource_id=resource["id"]).delete()
    model.Session.commit()
    return archiver_factories.make_archival(resource, status_id, **fields)


def test_only_checked_active_resources_of_active_datasets_count():
    org = factories.Organization(name="org")
    other = factories.Organization(name="other")
    dataset = factories.Dataset(owner_org=org["id"])
    broken = factories.Resource(package_id=dataset["id"])
    deleted_res = factories.Resource(package_id=dataset["id"])
    queued = factories.Resource(package_id=dataset["id"])
    gone = factories.Dataset(owner_org=org["id"])
    gone_res = factories.Resource(package_id=gone["id"])
    moved_from = factories.Dataset(owner_org=other["id"])
    unowned = factories.Dataset()
    unowned_res = factories.Resource(package_id=unowned["id"])
    never = factories.Resource(package_id=dataset["id"])  # queued, not checked

    make_archival(broken, st.DOWNLOAD_ERROR)
    make_archival(deleted_res, st.DOWNLOAD_ERROR)
    make_archival(gone_res, st.DOWNLOAD_ERROR)
    make_archival(unowned_res, st.URL_INVALID)
    # a row left with a stale package_id counts in the resource's dataset now
    make_archival(dict(broken, id=queued["id"], package_id=moved_from["id"]),
                  st.REQUEST_FAILED)
    model.Resource.get(deleted_res["id"]).state = "deleted"
    model.Package.get(gone["id"]).state = "deleted"
    model.Session.commit()
    row = Archival.get_for_resource(never["id"])
    assert row is None or row.status_id is None

    summaries = report.organization_summaries(report.ANONYMOUS)
    assert [(s.name, s.datasets, s.resources, s.broken_resources)
            for s in summaries] == [("org", 1, 2, 2), (None, 1, 1, 1)]
    totals = report.totals(summaries)
    assert (totals.datasets, totals.resources, totals.broken_resources,
            totals.broken_datasets) == (2, 3, 3, 2)
    assert totals.broken_resources_percent == 100.0

    rows = report.resource_rows(report.ANONYMOUS, org["id"])
    assert {r.resource_id for r in rows} == {broken["id"], queued["id"]}
    assert all(r.package_id == dataset["id"] for r in rows)
    assert report.count_resource_rows(report.ANONYMOUS, org["id"]) == 2
    assert report.count_resource_rows(report.ANONYMOUS, other["id"]) == 0


def test_viewer_clause_private_datasets():
    org = factories.Organization()
    public = factories.Dataset(owner_org=org["id"])
    private = factories.Dataset(owner_org=org["id"], private=True)
    for dataset in (public, private):
        make_archival(factories.Resource(package_id=dataset["id"]),
                      st.DOWNLOAD_ERROR)
    member = report.Viewer(org_ids=(org["id"],), user_id="u")
    stranger = report.Viewer(org_ids=("elsewhere",), user_id="u")
    for viewer, expected in [(report.ANONYMOUS, 1), (stranger, 1),
                             (member, 2), (SYSADMIN, 2)]:
        (summary,) = report.organization_summaries(viewer)
        assert summary.broken_resources == expected
        assert len(list(report.iter_resource_rows(viewer, org["id"]))) == expected


def _history(resource, *days_ago_broken, ok=()):
    for days, broken in [(d, True) for d in days_ago_broken] + [
            (d, False) for d in ok]:
        model.Session.add(ArchivalHistory(
            resource_id=resource["id"], package_id=resource["package_id"],
            checked_at=datetime.datetime.combine(
                TODAY - datetime.timedelta(days=days), datetime.time(12)),
            status_id=st.DOWNLOAD_ERROR if broken else st.ARCHIVED,
            is_broken=broken))
    model.Session.commit()


def test_broken_trend():
    org = factories.Organization()
    dataset = factories.Dataset(owner_org=org["id"])
    private = factories.Dataset(owner_org=org["id"], private=True)
    weekly = factories.Resource(package_id=dataset["id"])
    old = factories.Resource(package_id=dataset["id"])
    deleted = factories.Resource(package_id=dataset["id"])
    hidden = factories.Resource(package_id=private["id"])
    # broken at every weekly check since 10 days ago: one interval
    _history(weekly, 10, 3, ok=[17])
    # broken once, 20 days ago: counts for the 7 days from then
    _history(old, 20, ok=[13])
    _history(deleted, 5)
    _history(hidden, 1)
    model.Resource.get(deleted["id"]).state = "deleted"
    model.Session.commit()

    def counts(viewer, org_id=None):
        trend = report.broken_trend(viewer, org_id, days=15, window=7,
                                    today=TODAY)
        assert [d for d, _n in trend] == [
            TODAY - datetime.timedelta(days=14 - n) for n in range(15)]
        return [n for _d, n in trend]

    # days ago:    14 13 12 11 10  9  8  7  6  5  4  3  2  1  0
    anonymous = [1, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]
    assert counts(report.ANONYMOUS) == anonymous
    assert counts(report.ANONYMOUS, org["id"]) == anonymous
    assert counts(SYSADMIN) == anonymous[:-2] + [2, 2]
    assert counts(SYSADMIN, "another-org") == [0] * 15
