"""Every schema of the archiver's actions."""

from __future__ import annotations

import ckan.plugins.toolkit as tk
from ckan.types import Schema


def id_schema() -> Schema:
    not_empty = tk.get_validator("not_empty")
    unicode_safe = tk.get_validator("unicode_safe")
    return {"id": [not_empty, unicode_safe]}


def update_schema() -> Schema:
    v = tk.get_validator
    return {
        "id": [v("not_empty"), v("unicode_safe")],
        "queue": [v("ignore_missing"), v("unicode_safe"), v("one_of")(["priority", "bulk"])],
        "force": [v("ignore_missing"), v("boolean_validator")],
    }


def notify_optout_schema() -> Schema:
    v = tk.get_validator
    return {
        "id": [v("not_empty"), v("unicode_safe")],
        "opt_out": [v("default")(True), v("boolean_validator")],
    }


def status_schema() -> Schema:
    v = tk.get_validator
    return {
        "with_workers": [v("default")(True), v("boolean_validator")],
        "hours": [v("ignore_missing"), v("natural_number_validator")],
    }
