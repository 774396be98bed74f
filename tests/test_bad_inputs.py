"""Bad input and faults, table-driven over the six scripts.

Each row: (script, flags, expected exit code, a word the one-line message must contain), run as the command
line `python script flags` (forked from a process that has imported torch: conftest.run_cli_forked). Every case must
end with exactly one line on stderr, no traceback, the expected exit code, and must fail before any
training (each case is bounded by a short timeout). Rows that need MNIST are in MNIST_CASES and are skipped
without it. Each script's rows live in its own block below. "{tmp}" in a flag is replaced by the test's
temporary folder, and "{file}" by a regular file inside it (for an --out that is not a folder).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import mnist_root_or_none, run_cli_forked

# --- 01_bimodal_gan.py -------------------------------------------------------------------------------
CASES_01: list[tuple[str, list[str], int, str]] = [
    ("01_bimodal_gan.py", ["--latent_dim", "1000000000"], 2, "--latent_dim 1000000000: needs about"),
    ("01_bimodal_gan.py", ["--quick", "--seeds", "100000000"], 2, "--seeds 100000000: needs about"),
    ("01_bimodal_gan.py", ["--quick", "--batch_size", "1000000000"], 2, "--batch_size"),
    ("01_bimodal_gan.py", ["--quick", "--g_hidden", "100000", "100000"], 2, "--g_hidden"),
    ("01_bimodal_gan.py", ["--quick", "--n_steps", "100000000000", "--log_every", "1"], 2, "--n_steps"),
    ("01_bimodal_gan.py", ["--quick", "--out", "{file}"], 2, "is a file, not a folder"),
    ("01_bimodal_gan.py", ["--quick", "--resume"], 2, "unrecognized arguments: --resume"),  # no --resume
    ("01_bimodal_gan.py", ["--quick", "--collapse_threshold", "0.3"], 2, "not a fraction in [0.5, 1)"),
    ("01_bimodal_gan.py", ["--quick", "--seed", "99999999999999999999"], 2, "a seed from 0 to 4294967295"),
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
    ("02_xy_game.py", ["--quick", "--x0", "0", "--y0", "0"], 2, "the equilibrium (0, 0) itself"),
    ("02_xy_game.py", ["--quick", "--tol", "1e300"], 2, "--tol 1e+300: every rule would count as converged"),
    ("02_xy_game.py", ["--quick", "--n_mu", "1"], 2, "at least 2 shifts"),
    ("02_xy_game.py", ["--quick", "--momentum", "1e300"], 2, "negative_momentum iterates would grow"),
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
    ("03_dcgan_mnist.py", ["--quick", "--out", "{file}"], 2, "not a folder"),
    ("03_dcgan_mnist.py", ["--record_run", "{tmp}"], 2, "--records"),
    ("03_dcgan_mnist.py", ["--record_run", "{tmp}", "--records", "{tmp}/rec"], 2, "no finished run"),
    ("03_dcgan_mnist.py", ["--record_run", "{tmp}", "--records", "{file}"], 2, "--records"),
    ("03_dcgan_mnist.py", ["--quick", "--records", "{file}"], 2, "--records"),
    ("03_dcgan_mnist.py", ["--quick", "--lr", "1e30", "--n_train", "512", "--batch_size", "128", "--n_eval", "300"],
     3, "last good checkpoint"),
    ("03_dcgan_mnist.py", ["--quick", "--lr", "1000", "--n_train", "512", "--batch_size", "128", "--n_eval", "300"],
     3, "saturated"),
]

# --- 04_remedies.py ----------------------------------------------------------------------------------
CASES_04: list[tuple[str, list[str], int, str]] = [
    ("04_remedies.py", ["--latent_dim", "100000000", "--method", "gan", "--data", "ring"], 2, "latent_dim"),
    ("04_remedies.py", ["--quick", "--seeds", "100000000"], 2, "seeds"),
    ("04_remedies.py", ["--n_eval", "1"], 2, "n_eval"),
    ("04_remedies.py", ["--lr_final", "10"], 2, "lr_final"),
    ("04_remedies.py", ["--batch_size", "1"], 2, "batch_size"),
    ("04_remedies.py", ["--n_train", "10"], 2, "n_train"),
    ("04_remedies.py", ["--quick", "--method", "adagan", "--n_steps", "3", "--adagan_components", "5"], 2, "adagan"),
    ("04_remedies.py", ["--resume", "--run_name", "nothing_here"], 2, "nothing to resume"),
    ("04_remedies.py", ["--shard", "3/2"], 2, "shard"),
    ("04_remedies.py", ["--until_step", "12345"], 2, "until_step"),
    ("04_remedies.py", ["--until_step", "400000"], 2, "until_step"),
    ("04_remedies.py", ["--table", "{tmp}/no_records_here"], 2, "table"),
    ("04_remedies.py", ["--out", "{file}"], 2, "out"),
    ("04_remedies.py", ["--setting", "huge"], 2, "setting"),
    ("04_remedies.py", ["--quick", "--seed", "99999999999999999999"], 2, "a seed from 0 to 4294967295"),
]

# --- 05_msgan_pix2pix.py ----------------------------------------------------------------------------
CASES_05: list[tuple[str, list[str], int, str]] = [
    ("05_msgan_pix2pix.py", ["--quick", "--out", "{file}"], 2, "not a folder"),
    ("05_msgan_pix2pix.py", ["--task", "class", "--quick", "--out", "{file}"], 2, "not a folder"),
    ("05_msgan_pix2pix.py", ["--quick", "--resume", "--run_name", "never_started"], 2, "nothing to resume"),
    ("05_msgan_pix2pix.py", ["--task", "class", "--quick", "--resume"], 2, "nothing to resume"),
    ("05_msgan_pix2pix.py", ["--table", "{file}"], 2, "cannot read"),
    ("05_msgan_pix2pix.py", ["--quick", "--lambda_ms", "0"], 2, "positive"),
    ("05_msgan_pix2pix.py", ["--quick", "--n_epochs", "3"], 2, "other task"),
    ("05_msgan_pix2pix.py", ["--dataset", "folder", "--data_root", "{file}"], 2, "not a folder"),
    ("05_msgan_pix2pix.py", ["--task", "class", "--dataset", "folder"], 2, "other task"),
    ("05_msgan_pix2pix.py", ["--task", "class", "--models", "pix2pix"], 2, "baseline"),
    ("05_msgan_pix2pix.py", ["--task", "class", "--n_train", "70000"], 2, "60,000"),
    ("05_msgan_pix2pix.py", ["--task", "class", "--batch_size", "100", "--n_train", "50"], 2, "batch_size"),
    ("05_msgan_pix2pix.py", ["--task", "class", "--n_eval_per_label", "1"], 2, "at least 2"),
    ("05_msgan_pix2pix.py", ["--task", "class", "--nz", "1000000000"], 2, "memory"),
    ("05_msgan_pix2pix.py", ["--task", "class", "--ngf", "100000"], 2, "memory"),
    ("05_msgan_pix2pix.py", ["--task", "class", "--n_eval_per_label", "100000000"], 2, "memory"),
    ("05_msgan_pix2pix.py", ["--task", "class", "--quick", "--ndb_k", "100000"], 2, "ndb_k"),
]

# --- 06_metrics.py -----------------------------------------------------------------------------------
CASES_06: list[tuple[str, list[str], int, str]] = [
    ("06_metrics.py", ["--k", "100000"], 2, "--k"),                    # more bins than images
    ("06_metrics.py", ["--quick", "--k", "501"], 2, "--k"),            # an explicit flag wins over --quick
    ("06_metrics.py", ["--nn_k", "100000"], 2, "--nn_k"),
    ("06_metrics.py", ["--diversity_samples", "1"], 2, "--diversity_samples"),  # was a ZeroDivisionError
    ("06_metrics.py", ["--alpha", "0"], 2, "--alpha"),                 # NDB would be 0 whatever the samples
    ("06_metrics.py", ["--z_threshold", "0"], 2, "--z_threshold"),
    ("06_metrics.py", ["--resume"], 2, "--resume"),                    # 06 has nothing to resume
    ("06_metrics.py", ["--out", "{file}"], 2, "--out"),
    ("06_metrics.py", ["--seed", "99999999999999999999"], 2, "a seed from 0 to 4294967295"),
]  # more of 06's sizes and flag clashes, in-process (faster): tests/test_06_metrics.py

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
    r = run_cli_forked(script, *args, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == code, r.stderr[-2000:]
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    assert len(lines) == 1, r.stderr[-2000:]
    assert word.lower() in lines[0].lower(), lines[0]


# --- runs that must not delete earlier runs ------------------------------------------------------------
# (script, flags, a word of the message); OUT holds earlier runs of 01, 02, 03 and 04, one of them named
# "old" in the script's own folder; each case must exit 2 and leave every earlier file byte for byte.
DATA_LOSS_CASES = [
    ("01_bimodal_gan.py", ["--quick", "--run_name", ".", "--overwrite"], "ordinary folder name"),
    ("01_bimodal_gan.py", ["--quick", "--run_name", "..", "--overwrite"], "ordinary folder name"),
    ("01_bimodal_gan.py", ["--quick", "--run_name", "."], "ordinary folder name"),
    ("02_xy_game.py", ["--quick", "--run_name", ".hidden"], "ordinary folder name"),
    ("01_bimodal_gan.py", ["--quick", "--run_name", "x" * 300], "at most 100"),
    ("03_dcgan_mnist.py", ["--quick", "--run_name", "old", "--overwrite", "--data_root", "{tmp}/no_mnist"], "MNIST"),
    ("04_remedies.py", ["--quick", "--run_name", "old", "--overwrite", "--records", "{file}"], "--records"),
]


def _tree_hashes(root):
    import hashlib
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("script,flags,word", DATA_LOSS_CASES, ids=[f"{c[0][:2]}-{' '.join(c[1])[:40]}" for c in DATA_LOSS_CASES])
def test_a_refused_run_deletes_no_earlier_run(script, flags, word, tmp_path):
    out = tmp_path / "out"
    for name in ("01_bimodal_gan", "02_xy_game", "03_dcgan_mnist", "04_remedies"):
        for run in ("old", "other"):
            (out / name / run).mkdir(parents=True)
            (out / name / run / "metrics.json").write_text(f'{{"run": "{name}/{run}"}}')
            (out / name / run / "curves.csv").write_text("step,loss\n1,0.5\n")
    (tmp_path / "afile").write_text("not a folder")
    before = _tree_hashes(out)
    flags = [f.replace("{tmp}", str(tmp_path)).replace("{file}", str(tmp_path / "afile")) for f in flags]
    r = run_cli_forked(script, *flags, "--device", "cpu", "--out", str(out), timeout=120)
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert r.returncode == 2, r.stderr[-1500:]
    assert "Traceback" not in r.stderr and len(lines) == 1 and word in lines[0] and len(lines[0]) < 600, r.stderr
    assert _tree_hashes(out) == before                        # every earlier file still there, unchanged
    assert sorted(p.name for p in (out / Path(script).stem).iterdir()) == ["old", "other"]
