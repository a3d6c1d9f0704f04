"""Old import path of ``ckanext.archiver.engine.storage`` (the same module object)."""

import sys

from ckanext.archiver.engine import storage

sys.modules[__name__] = storage
