"""Code for the tests and the demo only, never loaded by the archiver plugin:
``nosearch`` (a stand-in for CKAN's search index; plugin ``archiver_nosearch``),
``imports`` (the import graph the layering test checks) and ``pipe`` (plugin
``archiver_test_pipe``: an ``IPipe`` as ckanext-qa implements it, recording
the events it gets)."""
