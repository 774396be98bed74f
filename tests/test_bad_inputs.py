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
    ("01_bimodal_gan.py", ["--latent_dim", "1000000000"], 2, "--latent_dim 1000000000: needs about"),
    ("01_bimodal_gan.py", ["--quick", "--seeds", "100000000"], 2, "--seeds 100000000: needs about"),
    ("01_bimodal_gan.py", ["--quick", "--batch_size", "1000000000"], 2, "--batch_size"),
    ("01_bimodal_gan.py", ["--quick", "--g_hidden", "100000", "100000"], 2, "--g_hidden"),
    ("01_bimodal_gan.py", ["--quick", "--n_steps", "100000000000", "--log_every", "1"], 2, "--n_steps"),
    ("01_bimodal_gan.py", ["--quick", "--out", "{file}"], 2, "is a file, not a folder"),
    ("01_bimodal_gan.py", ["--quick", "--out", "{file}/runs"], 2, "is a file, not a folder"),
    ("01_bimodal_gan.py", ["--quick", "--resume"], 2, "unrecognized arguments: --resume"),  # no --resume
    ("01_bimodal_gan.py", ["--quick", "--lr", "inf"], 2, "not a positive number"),
]

# --- 02_xy_game.py -----------------------------------------------------------------------------------
CASES_02: list[tuple[str, list[str], int, str]] = [
    ("02_xy_game.py", ["--lr", "1e300"], 2, "--lr 1e+300"),
    ("02_xy_game.py", ["--quick", "--n_steps", "1000000000"], 2, "use --n_steps 17594 or fewer"),
    ("02_xy_game.py", ["--quick", "--lr", "1e-9", "--n_steps", "1000000000"], 2, "--n_steps 1000000000: needs"),
    ("02_xy_game.py", ["--mu_max", "1e300"], 2, "--mu_max 100 or less"),
    ("02_xy_game.py", ["--x0", "1e300"], 2, "--x0 1e+300"),
    ("02_xy_game.py", ["--quick", "--psi0=-1e300"], 2, "--psi0 -1e+300"),
    ("02_xy_game.py", ["--quick", "--swing_lrs", "0.1", "1e200"], 2, "--swing_lrs 1e+200"),
    ("02_xy_game.py", ["--quick", "--n_mu", "100000000"], 2, "--n_mu 100000000: needs"),
    ("02_xy_game.py", ["--quick", "--noise_samples", "10000000000"], 2, "--noise_samples"),
    ("02_xy_game.py", ["--quick", "--dirac_lr", "1e300"], 3, "left float64 range"),
    ("02_xy_game.py", ["--quick", "--out", "{file}"], 2, "is a file, not a folder"),
    ("02_xy_game.py", ["--quick", "--out", "{file}/runs"], 2, "is a file, not a folder"),
    ("02_xy_game.py", ["--quick", "--resume"], 2, "unrecognized arguments: --resume"),  # no --resume
    ("02_xy_game.py", ["--quick", "--lr", "1e999"], 2, "not a positive number"),
]

# --- 03_dcgan_mnist.py (rows here need MNIST unless they fail at parsing) ------------------------------
CASES_03: list[tuple[str, list[str], int, str]] = [
    ("03_dcgan_mnist.py", ["--quick", "--latent_dim", "100000000"], 2, "--latent_dim"),
    ("03_dcgan_mnist.py", ["--quick", "--n_train", "10000000", "--batch_size", "100000"], 2, "60,000"),
    ("03_dcgan_mnist.py", ["--quick", "--n_train", "60001"], 2, "--n_train"),
    ("03_dcgan_mnist.py", ["--quick", "--n_train", "60000", "--batch_size", "60000"], 2, "--batch_size"),
    ("03_dcgan_mnist.py", ["--quick", "--batch_size", "5000"], 2, "larger than --n_train"),
    ("03_dcgan_mnist.py", ["--quick", "--batch_size", "1", "--n_train", "8"], 2, "BatchNorm"),
    ("03_dcgan_mnist.py", ["--quick", "--n_eval", "1"], 2, "--n_eval"),
    ("03_dcgan_mnist.py", ["--quick", "--ndb_k", "100000"], 2, "--ndb_k"),
    ("03_dcgan_mnist.py", ["--quick", "--kernel_size", "4"], 2, "kernel size"),
    ("03_dcgan_mnist.py", ["--quick", "--amp", "sometimes"], 2, "--amp"),
    ("03_dcgan_mnist.py", ["--quick", "--causes", "baseline"], 2, "--seeds"),
    ("03_dcgan_mnist.py", ["--quick", "--resume"], 2, "nothing to resume"),
    ("03_dcgan_mnist.py", ["--quick", "--lr", "1e30", "--n_train", "512", "--batch_size", "128", "--n_eval", "300"],
     3, "last good checkpoint"),
    ("03_dcgan_mnist.py", ["--quick", "--lr", "1000", "--n_train", "512", "--batch_size", "128", "--n_eval", "300"],
     3, "saturated"),
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
