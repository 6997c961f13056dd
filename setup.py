"""Maps the repository layout onto import names: shared/ is `zsc`, services/ is `zsc_services`."""

from setuptools import find_packages, setup


def _packages(root: str, name: str) -> list[str]:
    return [name] + [f"{name}.{sub}" for sub in find_packages(root)]


setup(
    packages=_packages("shared", "zsc") + _packages("services", "zsc_services"),
    package_dir={"zsc": "shared", "zsc_services": "services"},
    package_data={"zsc": ["profiles/configs/*.json", "py.typed"]},
)
