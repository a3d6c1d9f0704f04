"""Old import path of the service figures: ``worker.figures``."""

from ckanext.archiver.worker.figures import PROMETHEUS_CONTENT_TYPE, numbers, prometheus_text

__all__ = ["numbers", "prometheus_text", "PROMETHEUS_CONTENT_TYPE"]
