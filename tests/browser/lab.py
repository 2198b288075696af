"""Drive a real JupyterLab in Debian's Chromium (Playwright) and check what each widget update leaves on screen.

Used by ``make test-browser`` (tests/browser). The checker, ``output_problems``, reads one widget's output
area as the browser renders it: each update must leave exactly one figure, no traceback and no stray repr
(``<function ...>``, ``interactive(children=...)``).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Flags for a closed network: no background connections, no first-run or sync traffic.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]
STRAY_REPRS = ("<function ", "interactive(children=", "<Figure size", "<matplotlib.")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Lab:
    """A JupyterLab server on a free loopback port, token authentication on, serving `root`."""

    root: Path
    port: int = field(default_factory=free_port)
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, log: Path, timeout: float = 90) -> Lab:
        env = {k: v for k, v in os.environ.items() if k != "LWKIT_HEADLESS"}  # the widgets must be live
        env["JUPYTER_PLATFORM_DIRS"] = "1"
        # A fresh workspaces folder: JupyterLab would otherwise reopen (and run kernels for) earlier tabs.
        workspaces = log.parent / f"workspaces-{self.port}"
        cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={self.port}",
               f"--LabApp.workspaces_dir={workspaces}",
               f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root}",
               "--ServerApp.open_browser=False", "--LabApp.news_url=", "--LabServerApp.check_for_updates_class="
               "jupyterlab.NeverCheckForUpdate"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-root")
        self._log = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {self.proc.returncode}; see {log}")
            try:
                self.api("status")
                return self
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"jupyter lab did not answer on {self.url} within {timeout} s; see {log}")

    def api(self, path: str, method: str = "GET"):
        req = urllib.request.Request(f"{self.url}/api/{path}", method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as r:  # loopback only
            body = r.read()
            return json.loads(body) if body else None

    def session(self, notebook: str) -> dict | None:
        """The server's session for `notebook` (its kernel's state in ['kernel']['execution_state'])."""
        return next((s for s in self.api("sessions") if s.get("path") == notebook), None)

    def notebook_idle(self, notebook: str) -> bool:
        s = self.session(notebook)
        return s is not None and s["kernel"]["execution_state"] == "idle"

    def shutdown(self, notebook: str) -> None:
        s = self.session(notebook)
        if s is not None:
            self.api(f"sessions/{s['id']}", method="DELETE")

    def kernels_idle(self) -> bool:
        return all(k["execution_state"] == "idle" for k in self.api("kernels"))

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if getattr(self, "_log", None):
            self._log.close()


@dataclass
class OutputState:
    """What one widget's output area shows: number of figures, error/traceback texts, plain texts."""

    figures: int
    errors: list[str]
    texts: list[str]


def output_problems(state: OutputState, expected_figures: int = 1) -> list[str]:
    """The checker: an update must leave exactly `expected_figures` figures, no traceback, no stray repr."""
    problems = []
    if state.figures != expected_figures:
        problems.append(f"{state.figures} figures after the update (expected {expected_figures})")
    for text in state.errors:
        problems.append(f"error output: {text[:200]!r}")
    for text in state.texts:
        if "Traceback" in text or "Error" in text.split(":")[0]:
            problems.append(f"traceback text: {text[:200]!r}")
        for stray in STRAY_REPRS:
            if stray in text:
                problems.append(f"stray repr {stray!r} in output: {text[:120]!r}")
    return problems


# JavaScript run in the page: reads the output area of the n-th widget container of the notebook.
READ_WIDGET_OUTPUT = """
(el) => {
  const out = el.querySelector('.widget-output') || el;
  const imgs = out.querySelectorAll('img, svg.main-svg, canvas');
  const errors = [...out.querySelectorAll('[data-mime-type="application/vnd.jupyter.stderr"]')]
    .map(e => e.innerText);
  const texts = [...out.querySelectorAll('.jp-RenderedText, pre')].map(e => e.innerText);
  return {figures: imgs.length, errors: errors, texts: texts};
}
"""

# Output areas of the notebook as rendered: per code cell, its error and text outputs.
READ_CELL_OUTPUTS = """
() => [...document.querySelectorAll('.jp-Notebook .jp-CodeCell')].map((cell, i) => ({
  index: i,
  prompt: (cell.querySelector('.jp-InputPrompt') || {}).innerText || '',
  errors: [...cell.querySelectorAll('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')]
    .map(e => e.innerText),
  texts: [...cell.querySelectorAll('.jp-OutputArea-output[data-mime-type="text/plain"]')].map(e => e.innerText),
  widgets: cell.querySelectorAll('.widget-interact, .jupyter-widgets.widget-vbox').length,
}))
"""
