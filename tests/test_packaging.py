"""pyproject.toml and environment.yml install the same things; the Makefile and CI keep their promises."""

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parent.parent


def name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_names_the_same_packages_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {name(r) for r in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        wanted |= {name(r) for r in extra}
    env = (ROOT / "environment.yml").read_text()
    pip_section = env.split("- pip:", 1)[1]
    listed = {name(m) for m in re.findall(r"^\s+-\s+([^\s#][^\n#]*)", pip_section, flags=re.M)}
    listed = {n for n in listed if n and not n.startswith(("-e", "."))}
    assert "conda-forge" in env and re.search(r"^\s+- python", env, flags=re.M)
    assert wanted == listed, f"only in pyproject: {wanted - listed}; only in environment.yml: {listed - wanted}"
    assert "-e .[dev]" in env


def test_ci_runs_make_test_and_readme_shows_the_commands():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    for command in ("make run", "make test", "make lab"):
        assert command in readme
    makefile = (ROOT / "Makefile").read_text()
    assert "--nbval-lax" in makefile and "ruff" in makefile
