"""Bad input and faults, table-driven over the six scripts (issue 15).

Each row: (script, flags, expected exit code, a word the one-line message must contain). Every case must
end with exactly one line on stderr, no traceback, the expected exit code, and must fail before any
training (each case is bounded by a short timeout). Rows that need MNIST are in MNIST_CASES and are skipped
without it. Each script's rows live in its own block below. "{tmp}" in a flag is replaced by the test's
temporary folder, and "{file}" by a regular file inside it (for an --out that is not a folder).
"""
from __future__ import annotations

import pytest

from conftest import mnist_root_or_none, run_cli

# --- 01_bimodal_gan.py -------------------------------------------------------------------------------
CASES_01: list[tuple[str, list[str], int, str]] = [
]

# --- 02_xy_game.py -----------------------------------------------------------------------------------
CASES_02: list[tuple[str, list[str], int, str]] = [
]

# --- 03_dcgan_mnist.py (rows here need MNIST unless they fail at parsing) ------------------------------
CASES_03: list[tuple[str, list[str], int, str]] = [
]

# --- 04_remedies.py ----------------------------------------------------------------------------------
CASES_04: list[tuple[str, list[str], int, str]] = [
]

# --- 05_msgan_pix2pix.py ----------------------------------------------------------------------------
CASES_05: list[tuple[str, list[str], int, str]] = [
]

# --- 06_metrics.py -----------------------------------------------------------------------------------
CASES_06: list[tuple[str, list[str], int, str]] = [
]

CASES = CASES_01 + CASES_02 + CASES_03 + CASES_04 + CASES_05 + CASES_06
MNIST_SCRIPTS = {"03_dcgan_mnist.py", "05_msgan_pix2pix.py", "06_metrics.py"}


@pytest.mark.parametrize("script,flags,code,word", CASES,
                         ids=[f"{c[0][:2]}:{' '.join(c[1])}"[:80] for c in CASES])
def test_bad_input_one_line_and_exit_code(script, flags, code, word, tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    args = [f.replace("{file}", str(tmp_path / "a_file")).replace("{tmp}", str(tmp_path)) for f in flags]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "runs")]
    if script in MNIST_SCRIPTS and "--data_root" not in args:
        root = mnist_root_or_none()
        if root is None:
            pytest.skip("MNIST not found")
        args += ["--data_root", root]
    if "--device" not in args:
        args += ["--device", "cpu"]
    r = run_cli(script, *args, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == code, r.stderr[-2000:]
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    assert len(lines) == 1, r.stderr[-2000:]
    assert word.lower() in lines[0].lower(), lines[0]
