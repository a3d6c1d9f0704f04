"""README.rst stays true: its option list is the declaration's, and the
test command CI runs is the one it documents."""

import pathlib
import runpy

ROOT = pathlib.Path(__file__).resolve().parents[3]


def test_options_table_in_sync():
    tool = runpy.run_path(str(ROOT / "scripts" / "options_table.py"))
    readme = (ROOT / "README.rst").read_text(encoding="utf-8")
    assert tool["replaced"](readme) == readme, (
        "README.rst options are stale: run python scripts/options_table.py --write")


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.rst").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "make test\n" in ci
    assert "make test " in readme


def test_readme_renders_without_warnings():
    import docutils.core
    import docutils.utils

    source = (ROOT / "README.rst").read_text(encoding="utf-8")
    docutils.core.publish_string(source, writer_name="null", settings_overrides={
        "report_level": docutils.utils.Reporter.WARNING_LEVEL,
        "halt_level": docutils.utils.Reporter.WARNING_LEVEL})
