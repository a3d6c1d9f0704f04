"""Old import path of ``ckanext.archiver.engine.politeness`` (the same module object)."""

import sys

from ckanext.archiver.engine import politeness

sys.modules[__name__] = politeness
