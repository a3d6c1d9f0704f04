"""The download engine: one HTTP attempt (``attempt.fetch``), header parsing,
mimetype sniffing, the SSRF guard, storage of files, per-host politeness,
download threads and dataset zips on disk.

Imports nothing from CKAN, Flask, Celery or SQLAlchemy (a test enforces it):
it can be run, tested and benchmarked without a portal.
"""
