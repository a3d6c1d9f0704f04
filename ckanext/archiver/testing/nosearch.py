"""A stand-in for CKAN's search index, for the tests and the demo only.

Solr cannot be installed on the machines this project is built on, and CKAN
calls the search index on package_create and on list pages. ``install()``
swaps CKAN's package index for a no-op and its package query for one that
finds nothing. The archiver plugin never loads this module: the test
conftest calls ``install()``, and the demo configuration enables the
separate ``archiver_nosearch`` plugin. A real deployment uses its Solr.
"""

from __future__ import annotations

import collections
from typing import Any

import ckan.plugins as p
from ckan.lib import search
from ckan.lib.search.index import NoopSearchIndex
from ckan.lib.search.query import PackageSearchQuery


class EmptyPackageSearchQuery(PackageSearchQuery):
    """Finds nothing, never connects to Solr."""

    def get_all_entity_ids(self, max_results: int = 1000) -> list[str]:
        return []

    def get_index(self, reference: str) -> dict[str, Any]:
        raise search.SearchError("search index disabled (nosearch)")

    def run(self, query: dict[str, Any], permission_labels: Any = None,
            **kwargs: Any) -> dict[str, Any]:
        self.count = 0
        self.results = []
        self.facets = collections.defaultdict(dict)
        return {"results": [], "count": 0, "facets": self.facets}


def install() -> None:
    search._INDICES["package"] = NoopSearchIndex  # type: ignore[assignment]
    search._QUERIES["package"] = EmptyPackageSearchQuery
    # some core code builds the query class directly
    search.PackageSearchQuery = EmptyPackageSearchQuery  # type: ignore[misc]


class NoSearchPlugin(p.SingletonPlugin):
    """``archiver_nosearch``: demo-only plugin that calls ``install()``."""

    p.implements(p.IConfigurable)

    def configure(self, config: Any) -> None:
        install()
