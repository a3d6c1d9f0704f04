"""Pages as CKAN renders them, reduced to the text a reader sees (for the
page tests). The text of each page part asked for with a ``case`` is
written to ``test-artifacts/link-truth.txt`` (gitignored) for the record."""

from __future__ import annotations

import html
import pathlib
import re

from ckanext.archiver.tests.helpers import login

ARTIFACTS = pathlib.Path(__file__).resolve().parents[4] / "test-artifacts"


def record(case: str, text: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    with open(ARTIFACTS / "link-truth.txt", "a") as f:
        f.write(f"[{case}] {text}\n")


def text_of(fragment: str) -> str:
    """What a reader sees of an HTML fragment (tags out, spaces folded)."""
    text = re.sub(r"<[^>]+>", " ", fragment)
    return re.sub(r"\s+", " ", html.unescape(text)).strip()


def page(app, url: str, user=None) -> str:
    """The page at ``url`` as ``user`` (anonymous by default)."""
    login(app, user)
    return app.get(url).get_data(as_text=True)


def resource_page(app, dataset, res, user=None) -> str:
    return page(app, f"/dataset/{dataset['name']}/resource/{res['id']}", user)


def status_section(app, dataset, res, user=None, case=None) -> str:
    """The text of the resource page's link status section (as ``user``,
    anonymous by default)."""
    body = resource_page(app, dataset, res, user)
    match = re.search(r'<section class="archiver-resource-status".*?</section>', body, re.S)
    assert match, "no link status section on the page"
    text = text_of(match.group(0))
    if case:
        record(case, text)
    return text


def resource_items(app, dataset, user=None, case=None, lang="") -> dict[str, str]:
    """Resource id -> the text of its item in the dataset page's resource
    list (its name, format and the link's short state), in ``lang``."""
    body = page(app, f"{'/' + lang if lang else ''}/dataset/{dataset['name']}", user)
    found = re.findall(r'<li class="resource-item" data-id="([^"]+)">(.*?)<p class="description"',
                       body, re.S)
    assert found, "no resource list on the dataset page"
    items = {rid: text_of(fragment) for rid, fragment in found}
    if case:
        record(case, " | ".join(items.values()))
    return items


def csrf_token(body: str) -> str:
    return re.search(r'name="_csrf_token" value="([^"]+)"', body).group(1)


def check_link_now(app, dataset, res, user) -> None:
    """Press "Check link now" on the resource page, as ``user``."""
    body = resource_page(app, dataset, res, user)
    assert "Check link now" in body
    answer = app.post(f"/dataset/{dataset['name']}/archiver/check",
                      data={"_csrf_token": csrf_token(body), "resource_id": res["id"]},
                      follow_redirects=False)
    assert answer.status_code == 302
