"""Shared test helpers: load the numbered scripts as modules, find MNIST, run a script's command line."""
from __future__ import annotations

import importlib
import multiprocessing
import os
import runpy
import subprocess
import sys
import tempfile
import traceback
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


# The command line without the interpreter's start: a fork server imports torch once, and each call forks
# from it a fresh process that runs the script as __main__ with sys.argv set, exactly as `python script
# args` would after its imports. Seconds saved per call on a 2-core machine; used by the long tables of
# short command-line cases (bad input), while the smoke tests keep run_cli.
_FORK = multiprocessing.get_context("forkserver")
_FORK.set_forkserver_preload(["torch", "torch._dynamo", "torchvision", "numpy", "matplotlib"])


def _forked_main(script: str, args: list, env: dict, out_path: str, err_path: str) -> None:
    os.chdir(REPO)
    os.environ.clear()
    os.environ.update(env)
    for fd, path in ((1, out_path), (2, err_path)):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(f, fd)
        os.close(f)
    sys.stdout = open(1, "w", buffering=1, encoding="utf-8", closefd=False)
    sys.stderr = open(2, "w", buffering=1, encoding="utf-8", closefd=False)
    sys.argv = [str(REPO / script), *args]
    sys.path.insert(0, str(REPO))
    try:
        runpy.run_path(str(REPO / script), run_name="__main__")
        code = 0
    except SystemExit as e:  # what the interpreter does with it
        code = e.code
        if code is not None and not isinstance(code, int):
            print(code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


def run_cli_forked(script: str, *args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """run_cli's result for `python <script> args...`, forked from the fork server (see above)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with tempfile.TemporaryDirectory() as tmp:
        out, err = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
        p = _FORK.Process(target=_forked_main, args=(script, list(args), full_env, out, err))
        p.start()
        p.join(timeout)
        if p.is_alive():
            p.kill()
            p.join()
            raise subprocess.TimeoutExpired([script, *args], timeout)
        read = lambda path: Path(path).read_text(encoding="utf-8", errors="replace") if os.path.exists(path) else ""
        return subprocess.CompletedProcess([script, *args], p.exitcode, read(out), read(err))


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
