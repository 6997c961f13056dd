"""Maps the repository layout onto import names: shared/ is `zsc`, services/ is `zsc_services`."""

from setuptools import find_packages, setup


def _packages(root: str, name: str) -> list[str]:
    return [name] + [f"{name}.{sub}" for sub in find_packages(root)]


DATA_PACKAGES = ["zsc.profiles.configs", "zsc.recipe_tables"]

setup(
    # Folders of data only (JSON architectures, recipe tables); listing them keeps setuptools from warning about them.
    packages=[*_packages("shared", "zsc"), *DATA_PACKAGES, *_packages("services", "zsc_services")],
    package_dir={"zsc": "shared", "zsc_services": "services"},
    package_data={"zsc": ["py.typed"], **{name: ["*.json"] for name in DATA_PACKAGES}},
)
