"""The archiver's pages, in two blueprints (names and endpoints are public):

* ``archiver.report_index``  ``/report/broken-links``            (``views.report``)
* ``archiver.report_org``    ``/report/broken-links/<org>``      (``views.report``)
* ``archiver.cached_copy``   ``/dataset/<id>/resource/<resource_id>/archive/<filename>``
  (``views.cached_copy``)
* ``archiver.check_now``     ``POST /dataset/<id>/archiver/check`` (``views.check``)
* ``archiver_extra.package_zip``      ``/dataset/<id>/archive.zip``  (``views.zips``)
* ``archiver_extra.package_request``  ``POST /dataset/<id>/archive.zip/request``
* ``archiver_extra.metrics``          ``/archiver/metrics``         (``views.metrics``)

``archiver_extra`` keeps the name it was published with; inside the code it
is the blueprint of dataset zips and metrics. Shared request helpers:
``views.common``.
"""

from __future__ import annotations

from flask import Blueprint

from ckanext.archiver.urls import cached_copy_url
from ckanext.archiver.views import cached_copy, check, metrics, report, zips

__all__ = ["archiver", "archiver_extra"]  # blanket.blueprints registers what is listed here

archiver = Blueprint("archiver", __name__)
archiver.add_url_rule("/report/broken-links", view_func=report.report_index,
                      endpoint="report_index")
archiver.add_url_rule("/report/broken-links/<org>", view_func=report.report_org,
                      endpoint="report_org")
archiver.add_url_rule("/dataset/<id>/resource/<resource_id>/archive/<filename>",
                      view_func=cached_copy.cached_copy, endpoint="cached_copy")
archiver.add_url_rule("/dataset/<id>/archiver/check", view_func=check.check_now,
                      endpoint="check_now", methods=["POST"])

# dataset zips and metrics
archiver_extra = Blueprint("archiver_extra", __name__)
archiver_extra.add_url_rule("/dataset/<id>/archive.zip", view_func=zips.package_zip,
                            endpoint="package_zip")
archiver_extra.add_url_rule("/dataset/<id>/archive.zip/request", view_func=zips.package_request,
                            endpoint="package_request", methods=["POST"])
archiver_extra.add_url_rule("/archiver/metrics", view_func=metrics.metrics, endpoint="metrics")

_ = cached_copy_url  # old import path: ckanext.archiver.views.cached_copy_url
