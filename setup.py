"""Maps the repository layout onto import names: shared/ is `zsc`, services/ is `zsc_services`."""

from setuptools import find_packages, setup


def _packages(root: str, name: str) -> list[str]:
    return [name] + [f"{name}.{sub}" for sub in find_packages(root)]


setup(
    # profiles/configs holds data only (JSON architectures); listing it keeps setuptools from warning about it.
    packages=_packages("shared", "zsc") + ["zsc.profiles.configs"] + _packages("services", "zsc_services"),
    package_dir={"zsc": "shared", "zsc_services": "services"},
    package_data={"zsc": ["py.typed", "recipe_tables/*.json"], "zsc.profiles.configs": ["*.json"]},
)
