"""The ``broken-links`` report for ckanext-report (``IReport``), with the
older archiver's name, options and result keys, computed by the queries of
this archiver's own report (``model.report``).

Imports nothing from ckanext-report: the plugin registers this only when
ckanext-report is installed. ckanext-report caches a report's data and
shows it to everyone who may see reports, so the data covers public
datasets only (the archiver's own pages at /report/broken-links show each
reader what they may see). Percentages are whole numbers, as before.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Iterator, Optional, Sequence

import ckan.plugins.toolkit as tk
from ckan import model

from ckanext.archiver import status as st
from ckanext.archiver.model import report as queries

__all__ = ["broken_links_report_info", "broken_links", "option_combinations", "percent"]

VIEWER = queries.ANONYMOUS  # public datasets only (see the module docstring)


def percent(numerator: int, denominator: int) -> int:
    """ckanext-report's rule: a whole number; 100 when dividing by 0 what
    is not 0."""
    if denominator == 0:
        return 100 if numerator else 0
    return int(numerator * 100.0 / denominator)


def _tree(org: model.Group) -> list[model.Group]:
    """``org`` and every active organization below it."""
    found, todo = [org], [org]
    while todo:
        for child in todo.pop().get_children_groups(type="organization"):
            if child.state == "active" and child not in found:
                found.append(child)
                todo.append(child)
    return found


def _totals(summaries: Sequence[queries.OrgSummary]) -> dict[str, Any]:
    """The older archiver's totals of a report, from the organizations'
    own counts (a dataset counts once)."""
    total = queries.totals(summaries)
    return {
        "num_broken_packages": total.broken_datasets,
        "num_broken_resources": total.broken_resources,
        "num_packages": total.datasets,
        "num_resources": total.resources,
        "broken_package_percent": percent(total.broken_datasets, total.datasets),
        "broken_resource_percent": percent(total.broken_resources, total.resources),
    }


def _iso(value: Any) -> Optional[str]:
    return value.isoformat() if value else None


def broken_links(organization: Optional[str] = None,
                 include_sub_organizations: bool = False) -> dict[str, Any]:
    """The report: the index of organizations, or one organization's
    broken links."""
    if organization is None:
        return _index(include_sub_organizations)
    return _organization(organization, include_sub_organizations)


def _index(include_sub_organizations: bool) -> dict[str, Any]:
    summaries = {s.org_id: s for s in queries.organization_summaries(VIEWER)
                 if s.org_id is not None}
    rows = []
    for summary in summaries.values():
        counted = [summary]
        if include_sub_organizations:
            org = model.Group.get(summary.org_id)
            counted = [summaries[o.id] for o in _tree(org) if o.id in summaries]
        datasets = sum(s.datasets for s in counted)
        resources = sum(s.resources for s in counted)
        broken_datasets = sum(s.broken_datasets for s in counted)
        broken_resources = sum(s.broken_resources for s in counted)
        rows.append(OrderedDict((
            ("organization_title", summary.title),
            ("organization_name", summary.name),
            ("package_count", datasets),
            ("resource_count", resources),
            ("broken_package_count", broken_datasets),
            ("broken_package_percent", percent(broken_datasets, datasets)),
            ("broken_resource_count", broken_resources),
            ("broken_resource_percent", percent(broken_resources, resources)),
        )))
    rows.sort(key=lambda r: (-r["broken_package_count"], -r["broken_resource_count"],
                             r["organization_name"]))
    # totals from each organization's own counts: a dataset counts once
    return {"table": rows, **_totals(list(summaries.values()))}


def _organization(organization: str, include_sub_organizations: bool) -> dict[str, Any]:
    org = model.Group.get(organization)
    if org is None or not org.is_organization or org.state != "active":
        raise tk.ObjectNotFound(tk._("Organization not found"))
    orgs = _tree(org) if include_sub_organizations else [org]
    wanted = {o.id for o in orgs}
    summaries = [s for s in queries.organization_summaries(VIEWER) if s.org_id in wanted]
    table = []
    for child in orgs:
        rows = list(queries.iter_resource_rows(VIEWER, child.id))
        positions = dict(model.Session.query(model.Resource.id, model.Resource.position).filter(
            model.Resource.id.in_([r.resource_id for r in rows])).all()) if rows else {}
        for row in rows:
            table.append(OrderedDict((
                ("dataset_title", row.package_title),
                ("dataset_name", row.package_name),
                ("dataset_notes", ""),
                ("organization_title", child.title),
                ("organization_name", child.name),
                ("resource_position", positions.get(row.resource_id)),
                ("resource_id", row.resource_id),
                ("resource_url", row.url),
                ("url_up_to_date", True),
                ("via", ""),
                ("first_failure", _iso(row.first_failure)),
                ("last_updated", _iso(row.updated)),
                ("last_success", _iso(row.last_success)),
                ("url_redirected_to", row.url_redirected_to),
                ("reason", row.reason),
                ("status", st.text(row.status_id)),
                ("failure_count", row.failure_count),
            )))
    return {"organization_name": org.name, "organization_title": org.title,
            **_totals(summaries), "table": table}


def option_combinations() -> Iterator[dict[str, Any]]:
    orgs = model.Session.query(model.Group.name).filter(
        model.Group.is_organization.is_(True), model.Group.state == "active").order_by(
        model.Group.name)
    for organization in [None] + [name for (name,) in orgs]:
        for include_sub_organizations in (False, True):
            yield {"organization": organization,
                   "include_sub_organizations": include_sub_organizations}


def broken_links_report_info() -> dict[str, Any]:
    """The report's registration (a function: its texts are translated
    when ckanext-report asks)."""
    return {
        "name": "broken-links",
        "title": tk._("Broken links"),
        "description": tk._("Dataset resource URLs that are found to result in errors "
                            "when resolved."),
        "option_defaults": OrderedDict((("organization", None),
                                        ("include_sub_organizations", False))),
        "option_combinations": option_combinations,
        "generate": broken_links,
        "template": "report/broken_links.html",
    }
