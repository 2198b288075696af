"""The public API is listed in one place (each module's ``__all__``), and the property suite covers all of it.

Every ``tests/test_props_*.py`` file declares ``COVERED`` (fully qualified public names whose bad-argument
behaviour it tests with generated inputs) and ``EXEMPT`` (public names that take no checkable argument, with the
reason). A new public function that is in neither fails here, so the suite cannot silently miss it.
"""

import importlib
import importlib.util
import inspect
import pkgutil
from pathlib import Path

import pytest

import lwkit

TESTS = Path(__file__).resolve().parent


def lwkit_modules() -> list[str]:
    return sorted(f"lwkit.{m.name}" for m in pkgutil.iter_modules(lwkit.__path__) if not m.name.startswith("_"))


def props_declarations() -> tuple[set[str], dict[str, str]]:
    covered: set[str] = set()
    exempt: dict[str, str] = {}
    for path in sorted(TESTS.glob("test_props_*.py")):
        spec = importlib.util.spec_from_file_location(f"_props_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        covered |= set(getattr(module, "COVERED", set()))
        exempt.update(getattr(module, "EXEMPT", {}))
    return covered, exempt


def public_names() -> list[str]:
    names = []
    for mod_name in lwkit_modules():
        module = importlib.import_module(mod_name)
        names += [f"{mod_name}.{n}" for n in getattr(module, "__all__", [])]
    return names


@pytest.mark.parametrize("mod_name", lwkit_modules())
def test_every_module_declares_its_public_api(mod_name):
    module = importlib.import_module(mod_name)
    assert hasattr(module, "__all__"), f"{mod_name} has no __all__"
    assert len(module.__all__) == len(set(module.__all__)), f"{mod_name}.__all__ lists a name twice"
    for name in module.__all__:
        assert hasattr(module, name), f"{mod_name}.__all__ names {name!r}, which the module does not define"
        obj = getattr(module, name)
        if inspect.isfunction(obj) or inspect.isclass(obj):
            # Listed where it is defined; a re-export for users' convenience is not listed twice.
            assert obj.__module__ == mod_name, f"{mod_name}.__all__ lists {name}, defined in {obj.__module__}"


def test_public_functions_of_each_module_are_listed():
    """A public (no leading underscore) function or class defined in a module is in its __all__."""
    missing = []
    for mod_name in lwkit_modules():
        module = importlib.import_module(mod_name)
        listed = set(getattr(module, "__all__", []))
        for name, obj in vars(module).items():
            if name.startswith("_") or name == "main":
                continue
            if (inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__module__ == mod_name:
                if name not in listed:
                    missing.append(f"{mod_name}.{name}")
    assert not missing, f"public but not in __all__ (add it, or rename with a leading underscore): {missing}"


def test_the_property_suite_covers_every_public_name():
    covered, exempt = props_declarations()
    assert covered, "no tests/test_props_*.py declares COVERED"
    for name, reason in exempt.items():
        assert isinstance(reason, str) and reason.strip(), f"EXEMPT[{name!r}] needs a reason"
    names = set(public_names())
    uncovered = sorted(names - covered - set(exempt))
    assert not uncovered, f"public names with no property test and no exemption: {uncovered}"
    stale = sorted((covered | set(exempt)) - names)
    assert not stale, f"COVERED/EXEMPT name things that are not public API: {stale}"
