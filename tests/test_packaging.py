"""The install never backtracks: the pins of the ``[test]`` extra agree with each other and
with what ``datasets`` accepts, read from the installed packages' own metadata (no network).

pip backtracks when a package it picked requires a version another one refuses: s3fs pins
fsspec to its own release while datasets caps fsspec, aiobotocore pins a narrow botocore,
and boto3 requires the botocore of its own release. Pinned together, each requirement
below is met by the pinned version of the other, so the resolver takes the first
candidates it meets.
"""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

PYPROJECT = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
EXTRAS = PYPROJECT["project"]["optional-dependencies"]
PINS = {
    (r := Requirement(spec)).name: r for spec in EXTRAS["test"] if not spec.startswith("modfactory")
}
# (package, its dependency): the dependency's version must satisfy the package's requirement.
AGREEMENTS = [
    ("s3fs", "fsspec"),
    ("datasets", "fsspec"),
    ("s3fs", "aiobotocore"),
    ("aiobotocore", "botocore"),
    ("boto3", "botocore"),
    ("moto", "boto3"),
    ("moto", "botocore"),
]


def requirement_of(package: str, dependency: str) -> Requirement:
    for spec in metadata.requires(package) or []:
        requirement = Requirement(spec)
        if requirement.name == dependency and requirement.marker is None:
            return requirement
    raise AssertionError(f"{package} does not require {dependency}")


@pytest.mark.parametrize("name", ["s3fs", "aiobotocore", "boto3", "botocore", "moto"])
def test_the_packages_that_backtracked_are_pinned_and_installed_as_pinned(name: str) -> None:
    pin = PINS.get(name)
    assert pin is not None, f"[test] must pin {name}: pip backtracks through it otherwise"
    assert str(pin.specifier).startswith("=="), f"{name} is not pinned: {pin}"
    assert metadata.version(name) in pin.specifier, (name, metadata.version(name), str(pin))


@pytest.mark.parametrize(("package", "dependency"), AGREEMENTS)
def test_each_pinned_package_accepts_the_version_pinned_beside_it(
    package: str, dependency: str
) -> None:
    wanted = requirement_of(package, dependency)
    installed = metadata.version(dependency)
    assert wanted.specifier.contains(installed, prereleases=True), (
        f"{package} {metadata.version(package)} requires {wanted}, but {dependency} "
        f"{installed} is what the pins install: move the pins in pyproject.toml together"
    )


def test_the_s3_extra_cannot_pull_an_fsspec_that_datasets_refuses() -> None:
    """s3fs X.Y.Z requires fsspec X.Y.Z: that release must be within datasets' range."""
    s3fs_wants = requirement_of("s3fs", "fsspec").specifier
    datasets_accepts = requirement_of("datasets", "fsspec").specifier
    pinned = next(iter(PINS["s3fs"].specifier)).version
    assert pinned in s3fs_wants, (pinned, str(s3fs_wants))
    assert datasets_accepts.contains(pinned), (
        f"s3fs=={pinned} needs fsspec {s3fs_wants}; datasets accepts fsspec {datasets_accepts}"
    )
