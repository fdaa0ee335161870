"""Maps the repository folders onto the ``edgec`` package: ``passes/`` and ``targets/`` install as
``edgec.passes`` and ``edgec.targets`` (pyproject.toml alone cannot list nested mapped packages)."""

from setuptools import find_packages, setup

PACKAGE_DIRS = {"edgec": "edgec", "edgec.passes": "passes", "edgec.targets": "targets"}


def _packages_under(package: str, folder: str) -> list[str]:
    return [package] + [f"{package}.{sub}" for sub in find_packages(folder)]


setup(
    package_dir=PACKAGE_DIRS,
    packages=sorted(
        {name for package, folder in PACKAGE_DIRS.items() for name in _packages_under(package, folder)}
    ),
)
