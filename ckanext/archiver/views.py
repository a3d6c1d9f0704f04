"""Blueprint of the archiver: broken-links report and cached copies."""

from __future__ import annotations

from flask import Blueprint

archiver = Blueprint("archiver", __name__)

__all__ = ["archiver"]
