"""Bad input and faults, table-driven over the six scripts.

Each row: (script, flags, expected exit code, a word the one-line message must contain), run as the command
line `python script flags` (forked from a process that has imported torch: conftest.run_cli_forked). Every case must
end with exactly one line on stderr, no traceback, the expected exit code, and must fail before any
training (each case is bounded by a short timeout), and must leave no run folder behind. Rows that need MNIST
are skipped without it. Each script's rows live in its own block below. "{tmp}" in a flag is replaced by the
test's temporary folder, "{file}" by a regular file inside it (for an --out that is not a folder; "{file}.npy"
is a text file too), "{run03}" by a finished-looking run folder of 03 whose generator snapshots are damaged
(epoch 1) or another network's weights (epoch 2), and "{run04}" by a finished run folder of 04.
Faults that a row cannot express (a read-only run folder, a full disk, SIGTERM, damaged checkpoints of a
real run) have their own tests below the tables.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import OFFLINE_ENV, REPO, load_script, mnist_root_or_none, run_cli_forked

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
    ("01_bimodal_gan.py", ["--quick", "--seed", "-1"], 2, "a seed from 0 to 4294967295"),
]

# --- 02_xy_game.py -----------------------------------------------------------------------------------
CASES_02: list[tuple[str, list[str], int, str]] = [
    ("02_xy_game.py", ["--lr", "1e300"], 2, "--lr 1e+300"),
    ("02_xy_game.py", ["--quick", "--n_steps", "1000000000"], 2, "use --n_steps 17594 or fewer"),
    ("02_xy_game.py", ["--quick", "--lr", "1e-9", "--n_steps", "1000000000"], 2, "--n_steps 1000000000: needs"),
    ("02_xy_game.py", ["--mu_max", "1e300"], 2, "--mu_max 100 or less"),
    ("02_xy_game.py", ["--x0", "1e300"], 2, "--x0 1e+300"),
    ("02_xy_game.py", ["--quick", "--psi0=-1e300"], 2, "--psi0 -1e+300"),
    ("02_xy_game.py", ["--quick", "--psi0", "-1e300"], 2, "--psi0 -1e+300"),   # a negative value after a space
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
     3, "diverged before its first checkpoint"),   # no checkpoint.pt to point to, and its folder is removed
    ("03_dcgan_mnist.py", ["--quick", "--lr", "1000", "--n_train", "512", "--batch_size", "128", "--n_eval", "300"],
     3, "saturated"),
    ("03_dcgan_mnist.py", ["--record_run", "{run04}", "--records", "{tmp}/rec"], 2, "a run folder of 04_remedies.py"),
    ("03_dcgan_mnist.py", ["--probe_run", "{run04}"], 2, "a run folder of 04_remedies.py"),
    ("03_dcgan_mnist.py", ["--probe_run", "{run03}", "--probe_epochs", "1"], 2, "not a generator snapshot of this"),
    ("03_dcgan_mnist.py", ["--probe_run", "{run03}", "--probe_epochs", "1", "2"], 2, "not a generator snapshot of this"),
    ("03_dcgan_mnist.py", ["--probe_run", "{run03}", "--probe_epochs", "2"], 2, "does not fit the generator"),
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
    ("04_remedies.py", ["--shard", "-1/4"], 2, "need 0 <= i < n"),
    ("04_remedies.py", ["--quick", "--records", "{file}"], 2, "--records"),
    ("04_remedies.py", ["--quick", "--records", "{file}/sub"], 2, "--records"),
    # stacked MNIST: missing MNIST, an unknown setting, settings and data that do not go together
    ("04_remedies.py", ["--quick", "--data", "stacked_mnist", "--data_root", "{tmp}/no_mnist"], 2, "MNIST is not in"),
    ("04_remedies.py", ["--quick", "--data", "stacked_mnist", "--data_root", "{file}"], 2, "MNIST"),
    ("04_remedies.py", ["--setting", "stacked_d8"], 2, "invalid choice: 'stacked_d8'"),
    ("04_remedies.py", ["--setting", "stacked_d4", "--data", "ring"], 2, "is for --data stacked_mnist"),
    ("04_remedies.py", ["--setting", "pacgan", "--data", "stacked_mnist"], 2, "needs a convolutional --arch"),
    ("04_remedies.py", ["--data", "stacked_mnist", "ring"], 2, "run them apart"),
    ("04_remedies.py", ["--data", "stacked_mnist", "--method", "adagan"], 2, "not built for stacked MNIST"),
    ("04_remedies.py", ["--data", "stacked_mnist", "--d_act", "maxout"], 2, "relu_bn, lrelu_bn"),
    ("04_remedies.py", ["--data", "stacked_mnist", "--d_hidden", "2"], 2, "too small to halve"),
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
    ("06_metrics.py", ["--fake", "{file}.npy"], 2, "not a NumPy file"),   # a text file, not "pickled data"
]  # more of 06's sizes and flag clashes, in-process (faster): tests/test_06_metrics.py

CASES = CASES_01 + CASES_02 + CASES_03 + CASES_04 + CASES_05 + CASES_06
MNIST_SCRIPTS = {"03_dcgan_mnist.py", "05_msgan_pix2pix.py", "06_metrics.py"}


@pytest.mark.parametrize("script,flags,code,word", CASES,
                         ids=[f"{c[0][:2]}:{' '.join(c[1])}"[:80] for c in CASES])
def test_bad_input_one_line_and_exit_code(script, flags, code, word, tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "a_file.npy").write_text("not an array")
    places = {"{file}": tmp_path / "a_file", "{tmp}": tmp_path}
    for key, make in (("{run03}", _fake_run_03), ("{run04}", _fake_run_04)):
        if any(key in f for f in flags):
            places[key] = make(tmp_path / key.strip("{}"))
    args = list(flags)
    for key, value in places.items():
        args = [f.replace(key, str(value)) for f in args]
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
    out = tmp_path / "runs"
    assert not out.exists() or not any(out.iterdir()), sorted(out.rglob("*"))   # no run folder left behind


def _fake_run_03(run: Path) -> Path:
    """A run folder of 03 as --probe_gradients leaves it, with a damaged snapshot (epoch 1) and one that
    holds other weights than a generator's (epoch 2)."""
    run.mkdir()
    args = {"act": "relu", "latent_dim": 100, "seed": 0, "n_train": 256, "batch_size": 64, "lr": 2e-4, "b1": 0.5,
            "b2": 0.999, "eps": 1e-8, "kernel_size": 5}
    (run / "config.json").write_text(json.dumps({"script": "03_dcgan_mnist", "args": args}))
    (run / "metrics.json").write_text("{}")
    (run / "generator_epoch001.pt").write_bytes(b"PK\x03\x04 cut short")
    torch.save({"models": {"G": {"w": torch.zeros(2)}}}, run / "generator_epoch002.pt")
    return run


def _fake_run_04(run: Path) -> Path:
    """A finished run folder of 04 (its config.json names the script)."""
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"script": "04_remedies", "args": {"method": ["gan"]}}))
    (run / "metrics.json").write_text("{}")
    return run


# --- runs that must not delete earlier runs ------------------------------------------------------------
# (script, flags, exit code, a word of the message); OUT holds earlier runs of 01, 02, 03 and 04, one of them
# named "old" in the script's own folder; each case must fail in one line and leave every earlier file byte
# for byte. "{mnist}" is MNIST's folder (the row is skipped without it).
DATA_LOSS_CASES = [
    ("01_bimodal_gan.py", ["--quick", "--run_name", ".", "--overwrite"], 2, "ordinary folder name"),
    ("01_bimodal_gan.py", ["--quick", "--run_name", "..", "--overwrite"], 2, "ordinary folder name"),
    ("01_bimodal_gan.py", ["--quick", "--run_name", "."], 2, "ordinary folder name"),
    ("02_xy_game.py", ["--quick", "--run_name", ".hidden"], 2, "ordinary folder name"),
    ("01_bimodal_gan.py", ["--quick", "--run_name", "x" * 300], 2, "at most 100"),
    ("03_dcgan_mnist.py", ["--quick", "--run_name", "old", "--overwrite", "--data_root", "{tmp}/no_mnist"], 2, "MNIST"),
    ("04_remedies.py", ["--quick", "--run_name", "old", "--overwrite", "--records", "{file}"], 2, "--records"),
    ("04_remedies.py", ["--quick", "--run_name", "old", "--overwrite", "--data", "stacked_mnist", "--data_root",
                        "{tmp}/no_mnist"], 2, "MNIST"),
    # diverged in epoch 1, before writing anything but config.json and an empty samples/: the old run is put back
    ("03_dcgan_mnist.py", ["--quick", "--run_name", "old", "--overwrite", "--data_root", "{mnist}", "--lr", "1e30",
                           "--n_train", "256", "--batch_size", "128", "--n_eval", "100"], 3, "before its first checkpoint"),
]


def _tree_hashes(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("script,flags,code,word", DATA_LOSS_CASES,
                         ids=[f"{c[0][:2]}-{' '.join(c[1])[:40]}" for c in DATA_LOSS_CASES])
def test_a_refused_run_deletes_no_earlier_run(script, flags, code, word, tmp_path):
    out = tmp_path / "out"
    for name in ("01_bimodal_gan", "02_xy_game", "03_dcgan_mnist", "04_remedies"):
        for run in ("old", "other"):
            (out / name / run).mkdir(parents=True)
            (out / name / run / "metrics.json").write_text(f'{{"run": "{name}/{run}"}}')
            (out / name / run / "curves.csv").write_text("step,loss\n1,0.5\n")
    (tmp_path / "afile").write_text("not a folder")
    before = _tree_hashes(out)
    if "{mnist}" in flags and mnist_root_or_none() is None:
        pytest.skip("MNIST not found")
    flags = [f.replace("{tmp}", str(tmp_path)).replace("{file}", str(tmp_path / "afile"))
             .replace("{mnist}", mnist_root_or_none() or "") for f in flags]
    r = run_cli_forked(script, *flags, "--device", "cpu", "--out", str(out), timeout=120)
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert r.returncode == code, r.stderr[-1500:]
    assert "Traceback" not in r.stderr and len(lines) == 1 and word in lines[0] and len(lines[0]) < 600, r.stderr
    assert _tree_hashes(out) == before                        # every earlier file still there, unchanged
    assert sorted(p.name for p in (out / Path(script).stem).iterdir()) == ["old", "other"]


# --- faults a table row cannot express ---------------------------------------------------------------------
QUICK_04 = ["--quick", "--device", "cpu", "--method", "gan", "pacgan2", "--data", "ring", "--run_name", "r"]


def _one_line(capsys) -> str:
    lines = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    return lines[0]


@pytest.fixture(scope="module")
def paused_04_run(tmp_path_factory):
    """A 04 run of two cells, both paused at step 20 with their cell checkpoints (cells/*.state.pt)."""
    out = tmp_path_factory.mktemp("paused_04")
    load_script("04_remedies").main(QUICK_04 + ["--out", str(out), "--until_step", "20"])
    return out


@pytest.mark.parametrize("name,damage,word", [
    ("ring_gan.pt", "text", "not a finished cell of this script"),
    ("ring_gan.state.pt", "text", "not a cell checkpoint of this script"),
    ("ring_gan.state.pt", "cut", "not a cell checkpoint of this script"),
    ("ring_gan.state.pt", "other cell", "does not fit this cell's networks"),
])
def test_04_resume_with_a_damaged_cell_file_is_one_line_and_changes_nothing(name, damage, word, paused_04_run,
                                                                            tmp_path, capsys):
    import shutil
    shutil.copytree(paused_04_run, tmp_path / "out")
    cells = tmp_path / "out" / "04_remedies" / "r" / "cells"
    content = {"text": b"not a checkpoint", "cut": (cells / "ring_gan.state.pt").read_bytes()[:300],
               "other cell": (cells / "ring_pacgan2.state.pt").read_bytes()}[damage]
    (cells / name).write_bytes(content)
    before = _tree_hashes(tmp_path / "out")
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        load_script("04_remedies").main(QUICK_04 + ["--out", str(tmp_path / "out"), "--resume"])
    line = _one_line(capsys)
    assert e.value.code == 2 and word in line and "PyTorch 2.6" not in line, line
    assert _tree_hashes(tmp_path / "out") == before


@pytest.mark.parametrize("script,sub", [("03_dcgan_mnist", "samples"), ("04_remedies", ".")])
def test_resume_in_a_read_only_run_folder_is_refused_before_training(script, sub, tmp_path, monkeypatch, capsys):
    run = tmp_path / script / "r"
    (run / "samples").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (run / "checkpoint.pt").write_bytes(b"kept as it is")
    before = _tree_hashes(tmp_path)
    real_access = os.access  # root may write anywhere: answer as the mode bits say, as for any other user

    def access(path, mode, **kw):
        return real_access(path, mode, **kw) and not (mode & os.W_OK and not os.stat(path).st_mode & 0o200)

    monkeypatch.setattr(os, "access", access)
    os.chmod(run / sub, 0o555)
    try:
        with pytest.raises(SystemExit) as e:
            load_script(script).main(["--quick", "--device", "cpu", "--out", str(tmp_path), "--run_name", "r",
                                      "--resume"])
    finally:
        os.chmod(run / sub, 0o755)
    line = _one_line(capsys)
    assert e.value.code == 2 and "is not writable" in line and str((run / sub).resolve().relative_to(tmp_path.resolve())) \
        in line, line
    assert _tree_hashes(tmp_path) == before


class _FullDisk:
    """A file open for writing on a disk with no space left: every write fails as the OS reports it."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_a_full_disk_is_one_line_and_keeps_every_file(paused_04_run, tmp_path, monkeypatch, capsys):
    import shutil
    common = load_script("common")
    real_fdopen = os.fdopen
    # a checkpoint: torch's own zip writer would report the failed write as a bare RuntimeError
    ckpt = tmp_path / "checkpoint.pt"
    common.save_torch(ckpt, {"step": 1})
    kept = ckpt.read_bytes()
    monkeypatch.setattr(os, "fdopen", lambda *a, **k: _FullDisk(real_fdopen(*a, **k)))
    with pytest.raises(common.UserError, match="no space left on the device to write .*checkpoint.pt .*free in"):
        common.save_torch(ckpt, {"step": 2, "w": torch.zeros(1000)})
    assert ckpt.read_bytes() == kept and sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
    # a paused 04 run resumed on the full disk: one line, exit code 2, every file of the run as it was
    shutil.copytree(paused_04_run, tmp_path / "out")
    before = _tree_hashes(tmp_path / "out")
    argv = QUICK_04 + ["--out", str(tmp_path / "out"), "--resume"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        load_script("04_remedies").main(argv)
    line = _one_line(capsys)
    assert e.value.code == 2 and "no space left" in line and "free in" in line and "run again" in line, line
    assert _tree_hashes(tmp_path / "out") == before
    monkeypatch.undo()  # space freed: the run continues
    assert load_script("04_remedies").main(argv)["paused"] == []


def test_sigterm_ends_a_run_with_one_line_as_ctrl_c_does(tmp_path):
    cmd = [sys.executable, str(REPO / "04_remedies.py"), "--quick", "--device", "cpu", "--method", "gan", "--data",
           "ring", "--n_steps", "1000000", "--out", str(tmp_path)]
    p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert "writing" in p.stdout.readline()  # the run has started
        time.sleep(0.5)
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=60)
    finally:
        p.kill()
    lines = err.strip().splitlines()
    assert p.returncode == 143 and len(lines) == 1 and "terminated (SIGTERM)" in lines[0], err[-1500:]


def _tiny_pix2pix_folder(root: Path) -> Path:
    from torchvision.io import write_png
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 4), ("test", 2)):
        (root / split).mkdir(parents=True)
        for i in range(n):
            write_png(torch.randint(0, 256, (3, 16, 32), generator=g, dtype=torch.uint8), str(root / split / f"{i}.png"))
    return root


def test_05_run_stopped_before_its_first_checkpoint_resumes_from_the_start(tmp_path, monkeypatch):
    m = load_script("05_msgan_pix2pix")
    flags = ["--dataset", "folder", "--data_root", str(_tiny_pix2pix_folder(tmp_path / "tiny")), "--img_size", "16",
             "--num_D", "1", "--batch_size", "2", "--quick", "--device", "cpu", "--n_steps", "8",
             "--checkpoint_every", "4", "--log_every", "4", "--models", "msgan"]
    whole = m.main(flags + ["--out", str(tmp_path / "a")])

    def killed(*a, **k):  # the process dies (SIGKILL: no clean-up) before the first training step
        raise SystemExit(137)

    monkeypatch.setattr(m, "train_model", killed)
    with pytest.raises(SystemExit):
        m.main(flags + ["--out", str(tmp_path / "b")])
    monkeypatch.undo()
    runs = tmp_path / "b" / "05_msgan_pix2pix"
    assert [p.name for p in runs.iterdir()] == ["folder_ms1_seed0_quick"]
    assert [p.name for p in (runs / "folder_ms1_seed0_quick").iterdir()] == ["config.json"]
    resumed = m.main(flags + ["--out", str(tmp_path / "b"), "--resume"])
    a, b = whole["per_run"][0], resumed["per_run"][0]  # the numbers of a run never stopped
    assert (a["eval"]["diversity_l1"], a["eval"]["l1_to_target"], a["train"]["final_losses"]) == \
        (b["eval"]["diversity_l1"], b["eval"]["l1_to_target"], b["train"]["final_losses"])
    assert [p.name for p in runs.iterdir()] == ["folder_ms1_seed0_quick"]  # no _2


def test_a_missing_data_root_is_not_created(tmp_path):
    r = run_cli_forked("06_metrics.py", "--quick", "--device", "cpu", "--data_root", str(tmp_path / "no_such_root"),
                       "--out", str(tmp_path / "runs"), env=OFFLINE_ENV, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "MNIST is not in" in lines[0], r.stderr[-1500:]
    assert not (tmp_path / "no_such_root").exists()


def test_the_note_on_a_taken_run_name_names_only_flags_the_script_has(tmp_path):
    (tmp_path / "01_bimodal_gan" / "old").mkdir(parents=True)
    r = run_cli_forked("01_bimodal_gan.py", "--quick", "--device", "cpu", "--run_name", "old", "--out", str(tmp_path),
                       "--n_steps", "20", timeout=120)
    assert r.returncode == 0, r.stderr[-1500:]
    assert "writing to" in r.stderr and "--overwrite replaces it" in r.stderr and "--resume" not in r.stderr
