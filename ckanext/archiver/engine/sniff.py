"""Mimetype sniffing from the first bytes of a body. No CKAN imports."""

from __future__ import annotations

import csv
import json
import mimetypes
import re
from typing import Optional

import puremagic

HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
GENERIC_TYPES = frozenset(
    {
        "application/octet-stream",
        "binary/octet-stream",
        "text/plain",
        "application/binary",
        "application/unknown",
        "application/download",
        "application/x-download",
        "application/force-download",
        "application/x-unknown",
        "content/unknown",
        "unknown/unknown",
    }
)
ZIP_TYPES = frozenset({"application/zip", "application/x-zip-compressed", "application/x-zip"})
SNIFF_BYTES = 64 * 1024


# -- mimetype sniffing -----------------------------------------------------

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
PPTX = "application/vnd.openxmlformats-officedocument.presentationml.presentation"
XLS = "application/vnd.ms-excel"
OLE_SIGNATURE = bytes.fromhex("D0CF11E0A1B11AE1")
_GEOJSON = re.compile(
    r'"type"\s*:\s*"(FeatureCollection|Feature|Point|MultiPoint|LineString|MultiLineString'
    r'|Polygon|MultiPolygon|GeometryCollection)"'
)
_HTML_START = re.compile(r"<(!doctype\s+html|html|head|body|title|meta|script|div|p|table)[\s>/]")


def sniff_mimetype(head: bytes, filename: Optional[str] = None) -> Optional[str]:
    """Guess a mimetype from the first bytes of a file (None when empty).

    Office formats are told apart by the names inside the ZIP / OLE2
    container, binary formats by puremagic, and CSV, JSON, GeoJSON, HTML and
    XML by small text heuristics; ``filename``'s extension is the last hint.
    """
    if not head:
        return None
    found = _sniff_container(head, filename)
    if found:
        return found
    text = _as_text(head)
    if text is None:
        try:
            found = puremagic.from_string(head, mime=True)
        except (puremagic.PureError, ValueError):
            found = None
        return found or _guess_from_name(filename) or "application/octet-stream"
    return _sniff_text(text, truncated=len(head) >= SNIFF_BYTES) or "text/plain"


def _sniff_container(head: bytes, filename: Optional[str]) -> Optional[str]:
    if head.startswith(b"PK\x03\x04"):
        if b"xl/" in head:
            return XLSX
        if b"word/" in head:
            return DOCX
        if b"ppt/" in head:
            return PPTX
        match = re.match(rb"PK\x03\x04.{26}mimetype(application/vnd\.oasis\.[a-z.-]+)", head, re.S)
        if match:
            return match.group(1).decode("ascii")
        return "application/zip"
    if head.startswith(OLE_SIGNATURE):
        if "Workbook".encode("utf-16-le") in head or "Book\x00".encode("utf-16-le") in head:
            return XLS
        if "WordDocument".encode("utf-16-le") in head:
            return "application/msword"
        if "PowerPoint Document".encode("utf-16-le") in head:
            return "application/vnd.ms-powerpoint"
        return _guess_from_name(filename) or XLS  # on data portals, most OLE2 files are XLS
    if head.startswith(b"%PDF-"):
        return "application/pdf"
    return None


def _as_text(head: bytes) -> Optional[str]:
    if b"\x00" in head[:8192]:
        if head.startswith((b"\xff\xfe", b"\xfe\xff")):
            try:
                return head.decode("utf-16")[:SNIFF_BYTES]
            except UnicodeDecodeError:
                return None
        return None
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 4:  # not just a character cut at the end
            text = head.decode("latin-1")
            if sum(not (ch.isprintable() or ch in "\r\n\t\f") for ch in text[:4096]) > 40:
                return None
        else:
            text = head[: e.start].decode("utf-8")
    return text.lstrip("\ufeff")


def _sniff_text(text: str, truncated: bool) -> Optional[str]:
    stripped = text.lstrip()
    low = stripped[:2048].lower()
    if _HTML_START.match(low) or (
        low.startswith("<?xml") and re.search(r"<(!doctype\s+)?html", low)
    ):
        return "text/html"
    if low.startswith("<"):
        return "application/xml"
    if stripped[:1] in ("{", "["):
        if _GEOJSON.search(stripped[:SNIFF_BYTES]):
            return "application/geo+json"
        if not truncated:
            try:
                json.loads(stripped)
                return "application/json"
            except ValueError:
                return None
        if re.match(r'[\[{]\s*(["{\[\]}0-9-]|true|false|null)', stripped):
            return "application/json"
        return None
    return _sniff_csv(text, truncated)


def _sniff_csv(text: str, truncated: bool) -> Optional[str]:
    lines = text.splitlines()
    if truncated and len(lines) > 1:
        lines = lines[:-1]  # probably cut in the middle
    lines = [line for line in lines[:50] if line.strip()]
    if len(lines) < 2:
        return None
    for delimiter, mimetype in (
        (",", "text/csv"),
        (";", "text/csv"),
        ("\t", "text/tab-separated-values"),
        ("|", "text/csv"),
    ):
        if delimiter not in lines[0]:
            continue
        try:
            widths = [len(row) for row in csv.reader(lines, delimiter=delimiter)]
        except csv.Error:
            continue
        if widths[0] >= 2 and sum(w == widths[0] for w in widths) >= 0.9 * len(widths):
            return mimetype
    return None


def _guess_from_name(filename: Optional[str]) -> Optional[str]:
    if not filename:
        return None
    guessed, _ = mimetypes.guess_type(filename, strict=False)
    return guessed


def decide_mimetype(
    declared: Optional[str], head: bytes, filename: Optional[str]
) -> Optional[str]:
    if declared and declared not in GENERIC_TYPES and declared not in ZIP_TYPES:
        return declared
    sniffed = sniff_mimetype(head, filename)
    if declared in ZIP_TYPES:
        return (
            sniffed
            if sniffed and sniffed != "application/zip" and "zip" not in sniffed
            else declared
        )
    if declared == "text/plain" and sniffed in (None, "application/octet-stream"):
        return declared
    return sniffed or declared or _guess_from_name(filename)
