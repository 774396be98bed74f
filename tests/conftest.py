"""Shared test helpers: load the numbered scripts as modules, find MNIST, run a script's command line."""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def load_script(name: str):
    """Import a numbered script (its name starts with a digit, so `import` cannot) as a module."""
    return importlib.import_module(name)


def run_cli(script: str, *args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python <script> args...` from the repository root, as a user would."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, str(REPO / script), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=full_env)


def kill_on_call(monkeypatch, owner, name: str, n: int) -> dict:
    """Patch `owner.name` so that its n-th call raises KeyboardInterrupt, as if the run were killed there.
    Returns the call counter ({"n": calls so far}); later calls go through to the original."""
    original, calls = getattr(owner, name), {"n": 0}

    def wrapper(*a, **k):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return original(*a, **k)

    monkeypatch.setattr(owner, name, wrapper)
    return calls


def mnist_root_or_none() -> str | None:
    """$MNIST_ROOT if set, else ../shared/data beside the repository if it holds MNIST/raw."""
    root = os.environ.get("MNIST_ROOT")
    if root:
        return root
    shared = REPO.parent / "shared" / "data"
    return str(shared) if (shared / "MNIST" / "raw").is_dir() else None


@pytest.fixture
def mnist_root() -> str:
    root = mnist_root_or_none()
    if root is None:
        pytest.skip("MNIST not found: set MNIST_ROOT to the folder holding MNIST/raw")
    return root


# No network for the code under test: urllib honours these, so a download attempt fails at once.
OFFLINE_ENV = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
               "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "no_proxy": ""}


@pytest.fixture(scope="session", autouse=True)
def shared_metrics_cache(tmp_path_factory):
    """One cache folder for the whole test session (06's classifier and NDB bins are fitted once),
    unless MODE_COLLAPSE_CACHE is already set; subprocesses inherit it."""
    if os.environ.get("MODE_COLLAPSE_CACHE"):
        yield os.environ["MODE_COLLAPSE_CACHE"]
        return
    path = tmp_path_factory.mktemp("mode_collapse_cache")
    os.environ["MODE_COLLAPSE_CACHE"] = str(path)
    try:
        yield str(path)
    finally:
        os.environ.pop("MODE_COLLAPSE_CACHE", None)
