"""The downstream interface: how other extensions (ckanext-qa, zip
packagers, previews) learn that the archiver has done something.

``IPipe`` is compatible with the older ckanext-archiver's: implement
``receive_data(operation, queue, **params)``. Operations:

* ``archived``: ``resource_id``, ``queue``, ``cache_filepath`` (None when no
  file is kept) after each check of a resource;
* ``package-archived``: ``package_id``, ``queue`` once none of the
  dataset's active resources is still queued or running, sent once per
  round of checks by the worker that committed the last result (whatever
  queue, batch, retry or selection checked them), or by the deletion of
  a resource when nothing else of its dataset is waiting.

The same events are sent as the CKAN signal ``archiver:<operation>`` (use
``tk.signals.ckanext.signal("archiver:archived")``), with the params as
keyword arguments. A failing listener is logged and never undoes the
archival.
"""

from __future__ import annotations

import logging
from typing import Any

import ckan.plugins as p
import ckan.plugins.toolkit as tk

log = logging.getLogger(__name__)

OPERATIONS = ("archived", "package-archived")


class IPipe(p.Interface):
    """Receive the archiver's events."""

    def receive_data(self, operation: str, queue: str, **params: Any) -> None:
        """Called after an archival event (see the module docstring)."""

    @classmethod
    def send_data(cls, operation: str, queue: str, **params: Any) -> None:
        """Send an event to every IPipe plugin (the older archiver's API;
        also sends the signal). A failing plugin is logged, not raised."""
        notify(operation, queue, **params)


def signal(operation: str):
    return tk.signals.ckanext.signal(f"archiver:{operation}")


def notify(operation: str, queue: str, **params: Any) -> None:
    """Send an event (any operation: IPipe plugins may pass on their own)."""
    for plugin in p.PluginImplementations(IPipe):
        try:
            plugin.receive_data(operation, queue, **params)
        except Exception:
            log.exception("Plugin %s failed on archiver event %s", plugin.name, operation)
    try:
        signal(operation).send(operation, queue=queue, **params)
    except Exception:
        log.exception("A listener failed on the signal archiver:%s", operation)
