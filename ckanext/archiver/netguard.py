"""Old import path of ``ckanext.archiver.engine.netguard`` (the same module object)."""

import sys

from ckanext.archiver.engine import netguard

sys.modules[__name__] = netguard
