"""The package list; everything else is in setup.cfg (which cannot combine ``find:`` with more packages).

``configs/`` and ``projects/`` stay at the repository root, LAVIS style, and are mapped into the
package as ``lavis_listwise.configs`` and ``lavis_listwise.projects`` (``package_dir`` in setup.cfg):
a wheel carries them inside ``lavis_listwise/``, an editable install reads them in place, and
``lavis_listwise.resources`` finds them through ``importlib.resources`` in both cases.
"""

from setuptools import find_namespace_packages, find_packages, setup


def yaml_packages(package: str, directory: str) -> list[str]:
    """``package`` (``directory``) and one package per sub-directory, so each directory's YAMLs ship."""
    subdirectories = find_namespace_packages(where=directory, exclude=["__pycache__", "*.__pycache__"])
    return [package, *(f"{package}.{name}" for name in subdirectories)]


setup(
    packages=[
        *find_packages(
            include=["lavis_listwise", "lavis_listwise.*", "listwise_ranking", "listwise_ranking.*"]
        ),
        *yaml_packages("lavis_listwise.configs", "configs"),
        *yaml_packages("lavis_listwise.projects", "projects"),
    ]
)
