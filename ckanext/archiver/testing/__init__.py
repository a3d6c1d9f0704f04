"""Code for the tests and the demo only, never loaded by the archiver plugin:
``nosearch`` (a stand-in for CKAN's search index; plugin ``archiver_nosearch``)
and ``imports`` (the import graph the layering test checks)."""
