"""The versions CI tests are the versions pyproject.toml admits (issue 26, item 4)."""

import pytest
from conftest import PROJECT_ROOT
from packaging.requirements import Requirement

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11


def _lowest_constraints() -> dict[str, str]:
    lines = (PROJECT_ROOT / ".ci" / "lowest-constraints.txt").read_text().splitlines()
    pins = [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]
    return {pin.name: str(pin.specifier).removeprefix("==") for pin in pins}


def test_ci_lowest_constraints_are_pyprojects_lower_bounds():
    dependencies = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    lower = {}
    for requirement in map(Requirement, dependencies):
        for spec in requirement.specifier:
            if spec.operator == ">=":
                lower[requirement.name] = spec.version
    pins = _lowest_constraints()
    assert set(pins) == {"pandas", "numpy"}
    assert {name: lower[name] for name in pins} == pins
