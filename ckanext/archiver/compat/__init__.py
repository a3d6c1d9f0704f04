"""What extensions written for the older ckanext-archiver (ckanext-qa,
ckanext-report) import from it, served on top of this archiver. The old
import paths (``ckanext.archiver.tasks``, ``.model``, ``.interfaces``,
``.lib``) re-export these names; see README "Compatibility"."""
