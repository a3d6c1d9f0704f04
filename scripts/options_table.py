"""Print (or, with --write, update README.rst with) the table of options,
generated from ckanext/archiver/config_declaration.yaml.

A test checks that README.rst holds exactly what this prints, so the
README never lists options that differ from the declaration.
"""

from __future__ import annotations

import pathlib
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
DECLARATION = ROOT / "ckanext" / "archiver" / "config_declaration.yaml"
README = ROOT / "README.rst"
START = ".. options-table-start"
END = ".. options-table-end"


def _cell(value: object) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return " ".join(str(v) for v in value) or "(empty)"
    return str(value)


def table() -> str:
    data = yaml.safe_load(DECLARATION.read_text(encoding="utf-8"))
    lines = []
    for group in data["groups"]:
        lines += ["", f"**{group['annotation']}**", ""]
        for option in group["options"]:
            default = _cell(option.get("default"))
            kind = option.get("type", "string")
            desc = " ".join(str(option.get("description", "")).split())
            lines.append(f"``{option['key']}`` ({kind}"
                         + (f", default ``{default}``" if default else "") + ")")
            lines.append(f"    {desc}")
            if option.get("example") is not None:
                lines.append(f"    Example: ``{_cell(option['example'])}``.")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def replaced(readme: str) -> str:
    head, rest = readme.split(START, 1)
    _old, tail = rest.split(END, 1)
    return f"{head}{START}\n{table()}\n{END}{tail}"


if __name__ == "__main__":
    if "--write" in sys.argv:
        README.write_text(replaced(README.read_text(encoding="utf-8")), encoding="utf-8")
    else:
        sys.stdout.write(table())
