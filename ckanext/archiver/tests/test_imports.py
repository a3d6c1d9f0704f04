"""The layout's contract (docs/architecture.rst), read from the source:
no import cycle, no function-level import of the package, imports only
downwards (engine <- common <- model <- worker <- logic <- compat <- views,
cli, plugin), an engine free of CKAN, Flask, Celery and SQLAlchemy, and a web
process that loads no Celery."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ckanext.archiver.testing import imports

GRAPH = imports.graph()
P = imports.PACKAGE

# Lowest layer first; a module may import its own layer and those below.
LAYERS = [
    ("engine", lambda m: m == f"{P}.status" or m.startswith(f"{P}.engine")),
    ("common", lambda m: m in {f"{P}.{n}" for n in ("config", "keys", "urls", "mail",
                                                   "interfaces")}),
    ("model", lambda m: m.startswith(f"{P}.model")),
    ("worker", lambda m: m.startswith(f"{P}.worker")),
    ("logic", lambda m: m.startswith(f"{P}.logic")),
    # the older archiver's names for ckanext-qa and ckanext-report
    ("compat", lambda m: m.startswith(f"{P}.compat")),
    ("top", lambda m: m.startswith((f"{P}.views", f"{P}.testing")) or m in {
        f"{P}.cli", f"{P}.cli_storage", f"{P}.clitools", f"{P}.plugin", f"{P}.helpers",
        f"{P}.logfilter", P}),
]
# Old import paths: thin re-exports that nothing in the package may import
# (``lib``: the older archiver's module, for ckanext-qa).
SHIMS = {f"{P}.{n}" for n in ("fetch", "tasks", "queue", "celery_app", "netguard", "storage",
                               "politeness", "pool", "stats", "notify", "packages", "lib")}
FORBIDDEN_IN_ENGINE = ("ckan", "flask", "celery", "sqlalchemy", "werkzeug", "kombu")


def _layer(module: str) -> int:
    for rank, (_name, member) in enumerate(LAYERS):
        if member(module):
            return rank
    if module in SHIMS:
        return len(LAYERS)
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS")


def test_every_module_has_a_layer():
    for module in GRAPH:
        _layer(module)


def test_no_import_cycle():
    assert imports.cycles(GRAPH) == []


def test_no_function_level_import_of_the_package():
    late = [f"{i.source}:{i.line} imports {i.target}" for imps in GRAPH.values() for i in imps
            if i.in_function and (i.target == P or i.target.startswith(P + "."))]
    assert late == []


def test_imports_go_downwards_only():
    wrong = []
    for module, imps in GRAPH.items():
        for i in imps:
            if i.target not in GRAPH or i.target == module:
                continue
            if i.target in SHIMS:
                wrong.append(f"{module} imports the old path {i.target}")
            elif _layer(i.target) > _layer(module):
                wrong.append(f"{module} ({LAYERS[_layer(module)][0]}) imports {i.target} "
                             f"({LAYERS[_layer(i.target)][0]})")
    assert wrong == []


def test_engine_imports_no_ckan_flask_celery_or_sqlalchemy():
    found = [f"{i.source}:{i.line} imports {i.target}" for module, imps in GRAPH.items()
             if _layer(module) == 0 for i in imps
             if i.target.split(".")[0] in FORBIDDEN_IN_ENGINE
             or (i.target.startswith(P + ".") and _layer(i.target) > 0)]
    assert found == []


def test_the_checker_sees_a_function_level_import_and_a_cycle(tmp_path):
    """The contract tests above can fail."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "a.py").write_text("from ckanext.archiver import b\n")
    (pkg / "b.py").write_text("def f():\n    from ckanext.archiver import a\n")
    g = imports.graph(str(pkg))
    assert [i.in_function for i in g[f"{P}.b"]] == [True]
    assert imports.cycles(g) == [[f"{P}.a", f"{P}.b"]]


def _modules_loaded_by(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys\n"
                          "print(' '.join(sorted(sys.modules)))"],
                         capture_output=True, text=True, timeout=120, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize("module", ["plugin", "views", "cli", "logic.action", "helpers",
                                    "celery_app"])
def test_web_process_modules_load_no_celery(module):
    loaded = _modules_loaded_by(f"import ckanext.archiver.{module}")
    assert not {m for m in loaded if m.split(".")[0] in ("celery", "kombu")}


def test_importing_celery_app_connects_no_worker_signal():
    code = ("import ckanext.archiver.celery_app\n"
            "from celery import signals\n"
            "print(len(signals.worker_ready.receivers or []),"
            " len(signals.worker_process_init.receivers or []),"
            " len(signals.worker_process_shutdown.receivers or []))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.split() == ["0", "0", "0"]


def test_the_app_connects_the_signals_when_a_worker_starts():
    from ckanext.archiver.worker import app

    assert app.SIGNALS_STEP in app.build().steps["worker"]
