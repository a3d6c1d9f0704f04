"""Registration of the archiver in CKAN. Only hooks live here; the work is
done by the modules they call (see docs/architecture.rst: which module owns
what, and the direction of imports).

Importing the plugin loads no Celery: resources are queued by task name
(``worker.dispatch``), and the Celery app is built on first use."""

from __future__ import annotations

import json
import logging
from typing import Any

import ckan.plugins as p
import ckan.plugins.toolkit as tk
from ckan import model
from ckan.common import CKANConfig
from ckan.lib.plugins import DefaultTranslation
from ckan.types import Context

from ckanext.archiver import logfilter
from ckanext.archiver import model as archiver_model
from ckanext.archiver.compat import report as compat_report
from ckanext.archiver.logic import link_state
from ckanext.archiver.logic.visibility import show_cache_filepath
from ckanext.archiver.worker import dispatch, zips

log = logging.getLogger(__name__)

try:  # ckanext-report is optional: its interface only when it is installed
    from ckanext.report.interfaces import IReport
except ImportError:
    IReport = None


@tk.blanket.config_declarations
@tk.blanket.actions
@tk.blanket.auth_functions
@tk.blanket.helpers
@tk.blanket.blueprints
@tk.blanket.cli
class ArchiverPlugin(p.SingletonPlugin, DefaultTranslation):
    p.implements(p.IConfigurer)
    p.implements(p.ITranslation)  # ckanext/archiver/i18n, domain ckanext-archiver
    p.implements(p.IPackageController, inherit=True)
    p.implements(p.IResourceController, inherit=True)
    p.implements(p.ISignal)
    if IReport is not None:
        p.implements(IReport)

    # IConfigurer

    def update_config(self, config: CKANConfig):
        tk.add_template_directory(config, "templates")
        tk.add_resource("assets", "ckanext-archiver")
        # CKAN checks Redis right after loading the plugins: one line, no
        # traceback, when it is down (the commands then say what to do)
        logfilter.install()

    # IReport (ckanext-report; the older archiver's broken-links report)

    def register_reports(self):
        return [compat_report.broken_links_report_info()]

    # ISignal

    def get_signal_subscriptions(self):
        # dataset zips refreshed after archiving (option package_on_archived)
        return zips.signal_subscriptions()

    # IPackageController

    def after_dataset_show(self, context: Context, pkg_dict: dict[str, Any]):
        archiver_model.add_to_package_dict(pkg_dict, show_cache_filepath(context))
        link_state.add_pending(pkg_dict)

    def after_dataset_create(self, context: Context, pkg_dict: dict[str, Any]):
        self._queue_changed(pkg_dict)

    def after_dataset_update(self, context: Context, pkg_dict: dict[str, Any]):
        # resource_create / resource_update / resource_patch end up here too
        self._queue_changed(pkg_dict)

    def _queue_changed(self, pkg_dict: dict[str, Any]) -> None:
        try:
            items = dispatch.needing_check(pkg_dict["id"])
            if items:
                dispatch.after_commit(model.Session, enqueue_items=items)
        except Exception:  # never fail a dataset save
            log.exception("Could not work out which resources to archive")

    # IResourceController

    def before_resource_delete(self, context: Context, resource: dict[str, Any],
                               resources: list[dict[str, Any]]):
        dispatch.after_commit(model.Session, forget_ids=[resource["id"]])

    def before_dataset_index(self, pkg_dict: dict[str, Any]) -> dict[str, Any]:
        archiver_model.remove_from_package_dict(pkg_dict)
        for key in ("data_dict", "validated_data_dict"):
            if isinstance(pkg_dict.get(key), str):
                data = json.loads(pkg_dict[key])
                archiver_model.remove_from_package_dict(data)
                pkg_dict[key] = json.dumps(data)
        return pkg_dict
