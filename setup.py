from setuptools import find_namespace_packages, setup

with open("README.rst", encoding="utf-8") as f:
    long_description = f.read()

setup(
    name="ckanext-archiver",
    version="0.1.0",
    description="Checks and archives every resource of a CKAN portal: "
                "broken-link report, cached copies, conditional re-checks",
    long_description=long_description,
    long_description_content_type="text/x-rst",
    license="AGPL-3.0-or-later",
    python_requires=">=3.10",
    packages=find_namespace_packages(include=["ckanext", "ckanext.*"],
                                     exclude=["*.tests", "*.tests.*"]),
    include_package_data=True,
    zip_safe=False,
    install_requires=[],  # see requirements.txt (CKAN itself is not pinned here)
    entry_points={
        "ckan.plugins": [
            "archiver = ckanext.archiver.plugin:ArchiverPlugin",
            "archiver_nosearch = ckanext.archiver.nosearch:NoSearchPlugin",
        ],
    },
    # babel extraction (python setup.py extract_messages, see setup.cfg)
    message_extractors={
        "ckanext": [
            ("**/tests/**", "ignore", None),
            ("**.py", "python", None),
            ("**/templates/**.html", "ckan", None),
            ("**/templates/**.txt", "ckan", None),
        ],
    },
    classifiers=[
        "Framework :: CKAN",
        "License :: OSI Approved :: GNU Affero General Public License v3 or later (AGPLv3+)",
        "Programming Language :: Python :: 3.11",
    ],
)
