"""Real-browser widget tests: run only by `make test-browser` (LWKIT_BROWSER=1), which needs Debian's chromium."""

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "build" / "browser"


def pytest_collection_modifyitems(config, items):
    if os.environ.get("LWKIT_BROWSER") == "1":
        return
    skip = pytest.mark.skip(reason="browser tests run with `make test-browser` (LWKIT_BROWSER=1)")
    for item in items:
        if "tests/browser" in str(item.fspath):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def lab_root(tmp_path_factory):
    """A copy of notebooks/ for the lab to serve: autosave must never write outputs into the course's sources."""
    root = tmp_path_factory.mktemp("lab")
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        shutil.copy(nb, root / nb.name)
    return root


@pytest.fixture(scope="session")
def lab(lab_root):
    from lab import Lab

    SHOTS.mkdir(parents=True, exist_ok=True)
    server = Lab(lab_root).start(SHOTS / "jupyterlab.log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def browser():
    from lab import CHROMIUM, CHROMIUM_ARGS
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"Debian's chromium is not installed at {CHROMIUM}: apt-get install chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()
