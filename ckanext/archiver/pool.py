"""Old import path of ``ckanext.archiver.engine.pool`` (the same module object)."""

import sys

from ckanext.archiver.engine import pool

sys.modules[__name__] = pool
