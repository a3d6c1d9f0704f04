from __future__ import annotations

import ckan.plugins.toolkit as tk
from ckan.types import Schema


def id_schema() -> Schema:
    not_empty = tk.get_validator("not_empty")
    unicode_safe = tk.get_validator("unicode_safe")
    return {"id": [not_empty, unicode_safe]}
