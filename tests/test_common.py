"""The shared plumbing: seeding, run folders, atomic writes, checkpoints, MNIST errors, mode metrics."""
from __future__ import annotations

import argparse
import json
import math
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import common
from conftest import OFFLINE_ENV, REPO


def draw():
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_same_seed_same_numbers_and_other_seed_other_numbers():
    common.set_seed(7)
    a = draw()
    common.set_seed(7)
    b = draw()
    common.set_seed(8)
    c = draw()
    assert a == b
    assert all(x != y for x, y in zip(a, c))


def test_second_run_never_overwrites_the_first(tmp_path):
    first = common.make_run_dir(tmp_path, "script", "run")
    (first / "metrics.json").write_text("first")
    second = common.make_run_dir(tmp_path, "script", "run")
    third = common.make_run_dir(tmp_path, "script", "run")
    assert (first.name, second.name, third.name) == ("run", "run_2", "run_3")
    assert (first / "metrics.json").read_text() == "first"
    # --resume finds the newest of them; --overwrite replaces the named one
    assert common.make_run_dir(tmp_path, "script", "run", resume=True) == third
    replaced = common.make_run_dir(tmp_path, "script", "run", overwrite=True)
    assert replaced == first and not (first / "metrics.json").exists()
    assert (tmp_path / "script" / "run.replaced" / "metrics.json").read_text() == "first"   # set aside, not deleted
    with pytest.raises(common.UserError, match="nothing to resume"):
        common.make_run_dir(tmp_path, "script", "other", resume=True)
    with pytest.raises(common.UserError):
        common.make_run_dir(tmp_path, "script", "../escape")


def test_interrupted_write_leaves_old_file_intact(tmp_path):
    path = tmp_path / "metrics.json"
    common.save_json(path, {"value": 1})
    with pytest.raises(RuntimeError):
        with common.atomic_open(path) as f:
            f.write('{"value": 2, "half-writ')
            raise RuntimeError("killed mid-write")
    assert json.loads(path.read_text()) == {"value": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]  # no temporary left behind


def test_json_has_no_nan(tmp_path):
    common.save_json(tmp_path / "m.json", {"a": float("nan"), "b": np.float32(1.5), "c": torch.tensor([1, 2])})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": None, "b": 1.5, "c": [1, 2]}


def _train_steps(model, opt, n):
    losses = []
    for _ in range(n):
        x = torch.randn(16, 4)                       # global torch RNG
        noise = float(np.random.rand()) + random.random()  # numpy and Python RNGs
        loss = ((model(x) - noise) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_checkpoint_round_trip_continues_identically(tmp_path):
    common.set_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    _train_steps(model, opt, 5)
    common.save_checkpoint(tmp_path / "ckpt.pt", models={"m": model}, optimizers={"m": opt}, step=5,
                           config={"lr": 1e-2})
    uninterrupted = _train_steps(model, opt, 5)

    model2 = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    opt2 = torch.optim.Adam(model2.parameters(), lr=1e-2)
    common.set_seed(123)  # scramble the RNGs: the checkpoint must restore them
    state = common.load_checkpoint(tmp_path / "ckpt.pt", models={"m": model2}, optimizers={"m": opt2})
    assert state["step"] == 5 and state["config"] == {"lr": 1e-2}
    assert _train_steps(model2, opt2, 5) == uninterrupted


def test_unreadable_checkpoint_is_a_user_error(tmp_path):
    bad = tmp_path / "ckpt.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(common.UserError, match="cannot read checkpoint"):
        common.load_checkpoint(bad, models={})
    with pytest.raises(common.UserError, match="no checkpoint"):
        common.load_checkpoint(tmp_path / "missing.pt", models={})


def test_resume_refuses_other_flags():
    common.check_same_config({"lr": 1.0, "device": "cpu"}, {"lr": 1.0, "device": "cuda"})
    with pytest.raises(common.UserError, match="--lr"):
        common.check_same_config({"lr": 1.0}, {"lr": 2.0})
    # a flag added after the run started: the saved config had its default
    common.check_same_config({"lr": 1.0}, {"lr": 1.0, "compile": False}, added={"compile": False})
    with pytest.raises(common.UserError, match="--compile"):
        common.check_same_config({"lr": 1.0}, {"lr": 1.0, "compile": True}, added={"compile": False})


def test_curves_csv_and_state(tmp_path):
    c = common.Curves(tmp_path / "curves.csv")
    c.log(step=1, loss=0.5)
    c.log(step=2, loss=torch.tensor(0.25), extra=3)
    c.save()
    lines = (tmp_path / "curves.csv").read_text().splitlines()
    assert lines[0] == "step,loss,extra" and lines[2] == "2,0.25,3"
    d = common.Curves(tmp_path / "other.csv")
    d.load_state_dict(c.state_dict())
    assert d.column("loss") == [0.5, 0.25]


def test_progress_prints_an_eta(capsys):
    p = common.Progress(10, "job", every=0.0)
    p.update(5, info=lambda: {"loss": 0.123456})
    err = capsys.readouterr().err
    assert "job 5/10" in err and "ETA" in err and "loss=0.1235" in err


def test_device_choice():
    assert common.pick_device("cpu") == torch.device("cpu")
    auto = common.pick_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else auto.type)
    with pytest.raises(Exception):
        common.device_arg("tpu")


def test_missing_mnist_without_network_is_one_clear_error(tmp_path, monkeypatch):
    for k, v in OFFLINE_ENV.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(common.UserError) as e:
        common.load_mnist(tmp_path / "nowhere")
    msg = str(e.value)
    assert "MNIST" in msg and str(tmp_path / "nowhere" / "MNIST" / "raw") in msg and "\n" not in msg


def test_missing_mnist_exit_code_2_through_a_command_line(tmp_path):
    prog = ("import sys; sys.path.insert(0, %r); import common\n"
            "@common.cli\ndef main(argv=None):\n    common.load_mnist(%r)\nmain()") % (str(REPO), str(tmp_path))
    r = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, timeout=120,
                       env={**__import__("os").environ, **OFFLINE_ENV})
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "MNIST" in r.stderr and "Traceback" not in r.stderr


def test_mixtures_have_exactly_k_distinct_centres():
    for mix, k in [(common.ring_mixture(), 8), (common.grid_mixture(), 25), (common.temperature_mixture(), 2)]:
        assert mix.n_modes == k
        assert len(torch.unique(mix.centers.round(decimals=6), dim=0)) == k
    ring = common.ring_mixture()
    assert torch.allclose(ring.centers.norm(dim=1), torch.ones(8))
    assert set(common.grid_mixture().centers[:, 0].tolist()) == {-4.0, -2.0, 0.0, 2.0, 4.0}


def test_mixture_sampling_is_seeded_and_balanced():
    mix = common.ring_mixture()
    a = mix.sample(4000, torch.Generator().manual_seed(1))
    b = mix.sample(4000, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    s = mix.mode_stats(a)
    assert s["modes"] == 8 and s["high_quality"] > 0.98 and s["reverse_kl"] < 0.01


def test_mode_stats_on_hand_made_sets():
    centers = common.ring_mixture().centers
    # all samples on one mode: 1 mode, reverse KL = ln 8
    one = centers[[0] * 100]
    s = common.mode_stats(one, centers, 0.01)
    assert s["modes"] == 1 and s["high_quality"] == 1.0 and math.isclose(s["reverse_kl"], math.log(8))
    # two modes equally: ln 8 - ln 2; far-away samples are not high quality and capture nothing
    two = torch.cat([centers[[1] * 50], centers[[5] * 50], torch.full((100, 2), 10.0)])
    s = common.mode_stats(two, centers, 0.01)
    assert s["modes"] == 2 and s["high_quality"] == 0.5 and math.isclose(s["reverse_kl"], math.log(4))
    # just inside / outside 3 standard deviations
    near = centers[:1] + torch.tensor([[0.0299, 0.0]])
    far = centers[:1] + torch.tensor([[0.0301, 0.0]])
    assert common.mode_stats(near, centers, 0.01)["high_quality"] == 1.0
    assert common.mode_stats(far, centers, 0.01)["high_quality"] == 0.0


def test_wilson_interval_known_values():
    lo, hi = common.wilson_interval(18, 20)
    assert abs(lo - 0.6990) < 1e-3 and abs(hi - 0.9721) < 1e-3
    assert common.wilson_interval(0, 10)[0] == 0.0 and math.isclose(common.wilson_interval(10, 10)[1], 1.0)


def test_cpu_threads_sets_and_restores():
    before = torch.get_num_threads()
    with common.cpu_threads(torch.device("cpu"), 1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError):
        with common.cpu_threads(torch.device("cpu"), 1):
            raise RuntimeError
    assert torch.get_num_threads() == before


# ----------------------------------------------------------------------------- --out, run folders
def test_out_that_is_a_file_is_a_user_error(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for out in (a_file, a_file / "below"):
        with pytest.raises(common.UserError, match="is a file, not a folder"):
            common.make_run_dir(out, "script", "run")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "script").write_text("x")  # the script's folder itself is a file
    with pytest.raises(common.UserError, match="is a file, not a folder"):
        common.make_run_dir(tmp_path / "out", "script", "run")
    assert a_file.read_text() == "x"


def _as_a_user_without_override(cmd: list[str]) -> list[str]:
    """`cmd` run so that folder permissions apply: as root, without the DAC override capabilities."""
    import os
    import shutil

    if os.geteuid() != 0:
        return cmd
    if shutil.which("setpriv") is None:
        pytest.skip("running as root and setpriv is not available to drop the DAC override")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *cmd]


def test_out_in_an_unwritable_folder_is_one_line_exit_2(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        r = subprocess.run(_as_a_user_without_override([sys.executable, str(REPO / "02_xy_game.py"), "--quick",
                                                         "--out", str(locked / "runs")]),
                           capture_output=True, text=True, timeout=120, cwd=REPO)
    finally:
        locked.chmod(0o755)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "no permission to write" in lines[0] and str(locked) in lines[0]
    assert list(locked.iterdir()) == []


def _cli_main(run_dir_box: dict, write_more: bool, fail: bool = True):
    @common.cli
    def main(argv=None):
        import argparse

        args = argparse.Namespace(out=run_dir_box["out"], run_name="run", overwrite=False, resume=False)
        run_dir = common.start_run(args, "script.py", "run", [])
        run_dir_box["run_dir"] = run_dir
        if write_more:
            (run_dir / "curves.csv").write_text("step\n1\n")
        if fail:
            raise common.UserError("refused after the folder was made")
        return {}

    return main


def test_run_refused_before_writing_anything_leaves_no_folder(tmp_path, capsys):
    box = {"out": tmp_path / "runs"}
    with pytest.raises(SystemExit) as e:
        _cli_main(box, write_more=False)([])
    assert e.value.code == 2 and "refused" in capsys.readouterr().err
    assert not box["run_dir"].exists() and not (tmp_path / "runs").exists()  # the folders it made are gone
    # the next run gets the plain name again, not run_2
    _cli_main(box, write_more=False, fail=False)([])
    assert box["run_dir"].name == "run"


def test_run_refused_after_writing_more_keeps_its_folder_and_never_touches_others(tmp_path):
    box = {"out": tmp_path / "runs"}
    with pytest.raises(SystemExit):
        _cli_main(box, write_more=True)([])
    assert (box["run_dir"] / "curves.csv").is_file() and (box["run_dir"] / "config.json").is_file()
    # an earlier run's folder, and the script folder holding it, survive a later refused run
    earlier = box["run_dir"]
    with pytest.raises(SystemExit):
        _cli_main(box, write_more=False)([])
    assert box["run_dir"].name == "run_2" and not box["run_dir"].exists()
    assert (earlier / "curves.csv").is_file() and earlier.parent.is_dir()


def test_resume_folder_is_never_removed_on_a_refusal(tmp_path):
    first = common.make_run_dir(tmp_path, "script", "run")
    (first / "config.json").write_text("{}")

    @common.cli
    def main(argv=None):
        common.make_run_dir(tmp_path, "script", "run", resume=True)
        raise common.UserError("no checkpoint")

    with pytest.raises(SystemExit):
        main([])
    assert (first / "config.json").is_file()


def test_checkpoint_to_resume_refuses_when_there_is_nothing(tmp_path):
    with pytest.raises(common.UserError, match="nothing to resume"):
        common.checkpoint_to_resume(tmp_path)
    (tmp_path / "checkpoint.pt").write_bytes(b"x")
    assert common.checkpoint_to_resume(tmp_path) == tmp_path / "checkpoint.pt"


# ----------------------------------------------------------------------------- checkpoints, MNIST
@pytest.mark.parametrize("content", ["random", "other_torch_file"])
def test_a_file_that_is_not_our_checkpoint_says_so_in_one_line(tmp_path, content):
    bad = tmp_path / "checkpoint.pt"
    if content == "random":
        bad.write_bytes(np.random.default_rng(0).bytes(4096))
    else:
        torch.save({"weights": torch.zeros(3)}, bad)
    with pytest.raises(common.UserError) as e:
        common.load_checkpoint(bad, models={})
    msg = str(e.value)
    assert "not a checkpoint of this script" in msg and str(bad) in msg
    assert "\n" not in msg and "weights_only=False" not in msg and len(msg) < 400


def _mnist_copy(tmp_path, mnist_root, damaged: str, how: str) -> Path:
    """A raw MNIST folder in tmp_path: links to the intact files, a damaged copy of `damaged`."""
    import os

    src, raw = Path(mnist_root) / "MNIST" / "raw", tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in common.MNIST_FILES:
        if name != damaged:
            os.symlink(src / name, raw / name)
    data = bytearray((src / damaged).read_bytes())
    if how == "truncated":
        data = data[: len(data) // 3]
    else:
        data[len(data) // 2] ^= 0xFF  # one byte changed, same size
    (raw / damaged).write_bytes(bytes(data))
    return raw / damaged



@pytest.mark.parametrize("damaged,how,train", [("train-images-idx3-ubyte", "truncated", True),
                                               ("t10k-labels-idx1-ubyte", "truncated", False),
                                               ("train-images-idx3-ubyte", "one_byte", True)])
def test_damaged_mnist_file_is_named_in_one_line(tmp_path, mnist_root, damaged, how, train):
    bad = _mnist_copy(tmp_path, mnist_root, damaged, how)
    with pytest.raises(common.UserError) as e:
        common.load_mnist(tmp_path, train=train)
    msg = str(e.value)
    assert str(bad) in msg and "damaged" in msg and "delete it" in msg and "\n" not in msg
    assert ("bytes instead of" in msg) == (how == "truncated")
    # the other split, whose files are intact, still loads
    x, y = common.load_mnist(tmp_path, train=not train)
    assert x.shape[1:] == (28, 28) and len(x) == len(y) == (60000 if not train else 10000)


def test_official_mnist_passes_the_check(mnist_root):
    for name in common.MNIST_FILES:
        common.check_mnist_file(Path(mnist_root) / "MNIST" / "raw" / name)  # no error


# ----------------------------------------------------------------------------- --quick, memory
def _parser():
    p = common.ArgParser()
    p.add_argument("--n_steps", type=common.positive_int, default=1000, help="steps")
    p.add_argument("--widths", type=common.positive_int, nargs="+", default=[8, 8], help="widths")
    common.add_common_args(p)
    return p


def test_quick_sets_smaller_defaults_and_explicit_flags_win(capsys):
    quick = {"n_steps": 10, "widths": [2]}
    assert common.parse_with_quick(_parser(), [], quick).n_steps == 1000
    args = common.parse_with_quick(_parser(), ["--quick"], quick)
    assert (args.n_steps, args.widths) == (10, [2])
    args = common.parse_with_quick(_parser(), ["--quick", "--n_steps", "5000"], quick)
    assert (args.n_steps, args.widths) == (5000, [2])   # larger than the quick value: still given explicitly
    with pytest.raises(SystemExit):
        common.parse_with_quick(_parser(), ["--help"], quick)
    out = " ".join(capsys.readouterr().out.split())
    assert "steps (--quick: 10) (default: 1000)" in out and "widths (--quick: 2) (default: [8, 8])" in out
    assert "--n_steps 10, --widths 2; flags given explicitly win" in out


def test_flags_text_names_what_differs_from_the_defaults():
    p = _parser()
    args, defaults = p.parse_args(["--n_steps", "7"]), p.parse_args([])
    assert common.flags_text(args, ["n_steps", "widths"], defaults) == "--n_steps 7"
    assert common.flags_text(defaults, ["n_steps", "widths"], defaults) == "--n_steps 1000 --widths 8 8"


def test_memory_check_refuses_what_does_not_fit_and_names_the_flags():
    free = common.available_memory(torch.device("cpu"))
    assert free is None or free > 0
    common.check_memory(1e6, "--small 1")                      # a megabyte always fits
    with pytest.raises(common.UserError, match=r"--latent_dim 1000000000: needs about .* TB of memory"):
        common.check_memory(1e15, "--latent_dim 1000000000")
    assert common.format_bytes(3 * 1024 ** 3) == "3 GB" and common.format_bytes(512) == "512 B"


def test_allocation_failures_become_one_line_user_errors():
    with pytest.raises(common.UserError, match=r"out of memory \(--seeds 9\)"):
        with common.memory_errors_as_user_error("--seeds 9"):
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")
    with pytest.raises(common.UserError, match="out of memory"):
        with common.memory_errors_as_user_error("--seeds 9"):
            raise MemoryError
    with pytest.raises(common.UserError, match="out of memory"):   # in any letter case
        with common.memory_errors_as_user_error("--seeds 9"):
            raise RuntimeError("Can't allocate 4 GB")
    with pytest.raises(RuntimeError, match="shape mismatch"):   # other errors pass through unchanged
        with common.memory_errors_as_user_error("--seeds 9"):
            raise RuntimeError("shape mismatch")


def test_run_that_diverged_before_writing_anything_leaves_no_folder(tmp_path, capsys):
    import argparse

    @common.cli
    def main(argv=None):
        args = argparse.Namespace(out=tmp_path / "runs", run_name="run", overwrite=False, resume=False)
        common.start_run(args, "script.py", "run", [])
        raise common.TrainingDiverged("loss became nan at step 3")

    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 3 and "nan at step 3" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


# ----------------------------------------------------------------------------- defaults: presets, --quick
def _settings_parser():
    p = common.ArgParser(prog="x")
    p.add_argument("--setting", choices=["small", "large"], default="large")
    p.add_argument("--n_steps", type=int, default=1000)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--plot", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--quick", action="store_true")
    return p


PRESETS = {"small": {"n_steps": 100, "width": 8}, "large": {}}


@pytest.mark.parametrize("argv, n_steps, width, plot", [
    ([], 1000, 64, True),                                       # the plain defaults
    (["--setting", "small"], 100, 8, True),                     # the preset's values
    (["--setting", "small", "--quick"], 10, 8, False),          # --quick over the preset
    (["--quick", "--n_steps", "7"], 7, 64, False),              # an explicit flag over --quick
    (["--setting=small", "--wid", "5", "--quick", "--plot"], 10, 5, True),   # abbreviated and = spellings win too
])
def test_parse_settings_preset_then_quick_then_explicit_flags(argv, n_steps, width, plot):
    args = common.parse_settings(_settings_parser(), argv, presets=lambda a: PRESETS[a.setting],
                                 quick={"n_steps": 10, "plot": False})
    assert (args.n_steps, args.width, args.plot) == (n_steps, width, plot)


def test_given_flags_names_only_what_the_command_line_sets():
    p = _settings_parser()
    assert common.given_flags(p, []) == set()
    assert common.given_flags(p, ["--setting=small", "--wid", "5", "--no-plot"]) == {"setting", "width", "plot"}
    assert common.given_flags(p, ["--quick"]) == {"quick"}


def test_sibling_loads_on_first_use_and_a_missing_one_is_one_line():
    metrics = common.Sibling("06_metrics", "the digit classifier", "03_dcgan_mnist.py")
    assert metrics.module is None                          # nothing imported until it is needed
    assert hasattr(metrics.load(), "NDB") and metrics.module is metrics.load()
    missing = common.Sibling("07_nowhere", "the digit classifier", "/x/03_dcgan_mnist.py")
    assert missing.load(required=False) is None
    with pytest.raises(common.UserError, match=r"^03_dcgan_mnist.py needs 07_nowhere.py \(the digit classifier\)"):
        missing.load()


def test_records_flags_print_a_table_or_keep_the_record(tmp_path, capsys):
    p = argparse.ArgumentParser()
    common.add_record_args(p, "results/NN", "print the table of the records in DIR")
    args = p.parse_args(["--table", "somewhere"])
    assert common.table_or_records(args, lambda folder: {"table": folder}) == {"table": "somewhere"}
    with pytest.raises(common.UserError, match="choose one"):
        common.table_or_records(p.parse_args(["--table", "a", "--records", "b"]), lambda folder: {})
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(common.UserError, match="--records"):   # checked before anything runs
        common.table_or_records(p.parse_args(["--records", str(blocker / "sub")]), lambda folder: {})
    args = p.parse_args(["--records", str(tmp_path / "rec")])
    assert common.table_or_records(args, lambda folder: {}) is None
    run_dir = tmp_path / "runs" / "07_example" / "r1"
    run_dir.mkdir(parents=True)
    for name in common.RECORD_FILES:
        (run_dir / name).write_text("{}")
    (run_dir / "big.pt").write_text("x")
    args.run_name = None
    kept = common.keep_record(args, run_dir, "default_name")
    assert kept == (tmp_path / "rec" / "default_name").resolve()
    assert sorted(q.name for q in kept.iterdir()) == sorted(common.RECORD_FILES)
    assert "07: the record of this run is in" in capsys.readouterr().out
    args.records = None
    assert common.keep_record(args, run_dir, "x") is None


def test_copy_record_replaces_a_record_whole_and_keeps_the_old_one_when_filling_fails(tmp_path):
    run_dir, dest = tmp_path / "run", tmp_path / "rec" / "r"
    run_dir.mkdir()
    dest.mkdir(parents=True)
    (dest / "stale.json").write_text("old")
    common.copy_record(run_dir, dest, fill=lambda folder: (folder / "a.json").write_text("new"))
    assert sorted(p.name for p in dest.iterdir()) == ["a.json"]      # the old record replaced as a whole

    def broken(folder):
        (folder / "half.json").write_text("x")
        raise OSError("disk full")
    with pytest.raises(common.UserError, match="cannot write the record"):
        common.copy_record(run_dir, dest, fill=broken)
    assert sorted(p.name for p in dest.iterdir()) == ["a.json"] and not list((tmp_path / "rec").glob("*.partial"))
    def bad_image(folder):
        (folder / "half.png").write_text("x")
        raise ValueError("not an image")
    with pytest.raises(ValueError, match="not an image"):              # any other error passes through, cleaned up
        common.copy_record(run_dir, dest, fill=bad_image)
    assert sorted(p.name for p in dest.iterdir()) == ["a.json"] and not list((tmp_path / "rec").glob("*.partial"))
    with pytest.raises(common.UserError, match="must not contain"):
        common.copy_record(run_dir, run_dir / "rec", fill=lambda folder: None)


def test_run_cells_reads_back_finished_cells_keeps_each_and_skips_paused_ones():
    trained, kept, seen = [], {}, []
    stored = {"b": "B from an earlier run"}

    def train(cell):
        trained.append(cell)
        return None if cell == "c" else cell.upper()   # c pauses

    results = common.run_cells(["a", "b", "c", "d"], train, done=lambda c: c in stored, load=stored.get,
                               keep=kept.__setitem__, after_each=lambda i, c, r, rs: seen.append((i, c, r, list(rs))))
    assert trained == ["a", "c", "d"]                       # b was read back, not trained
    assert results == ["A", "B from an earlier run", "D"]
    assert kept == {"a": "A", "d": "D"}                      # nothing kept for a paused cell
    assert seen[2] == (2, "c", None, ["A", "B from an earlier run"])
    assert seen[-1][3] == results


@pytest.mark.parametrize("text, ok", [("0/1", (0, 1)), ("2/3", (2, 3)), ("3/3", None), ("-1/2", None), ("1", None),
                                      ("a/b", None), ("0/0", None)])
def test_shards_split_the_cells_without_overlap(text, ok):
    if ok is None:
        with pytest.raises(argparse.ArgumentTypeError):
            common.shard_arg(text)
        return
    assert common.shard_arg(text) == ok
    cells = list(range(10))
    parts = [common.shard_of(cells, (i, ok[1])) for i in range(ok[1])]
    assert sorted(sum(parts, [])) == cells and parts[ok[0]] == cells[ok[0]::ok[1]]


def test_setting_flags_name_what_a_record_changed_as_one_types_it():
    def parse(argv):
        p = argparse.ArgumentParser()
        p.add_argument("--lr", type=float, default=0.001)
        p.add_argument("--g_hidden", type=int, nargs="+", default=[32, 32])
        p.add_argument("--fast", action="store_true")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--quick", action="store_true")
        args = p.parse_args(argv)
        if args.quick:
            args.lr = 0.01
        return args
    assert common.flag_value(0.0003) == "3e-4" and common.flag_value(0.5) == "0.5" and common.flag_value([8, 16]) == "8 16"
    assert common.flag_value(float("inf")) == "inf" and common.flag_value(float("nan")) == "nan"
    assert common.setting_flags({"lr": 0.001, "g_hidden": [32, 32], "seed": 4}, parse) == ""   # the seed is said apart
    assert common.setting_flags({"lr": 0.0003, "g_hidden": [8], "fast": True}, parse) == "--lr 3e-4 --g_hidden 8 --fast"
    assert common.setting_flags({"quick": True, "lr": 0.01}, parse) == "--quick"            # --quick's own defaults
    assert common.seeds_text({"seed": 0, "seeds": 20}) == ("--seeds 20", "seeds 0-19")
    assert common.seeds_text({"seed": 3}) == ("--seed 3", "seed 3")


def test_table_of_records_builds_prints_and_refuses_in_one_line(tmp_path, capsys):
    def record(name, metrics, script="01_bimodal_gan"):
        (tmp_path / name).mkdir()
        common.save_json(tmp_path / name / "config.json", {"script": script, "args": {}})
        common.save_json(tmp_path / name / "metrics.json", metrics)

    record("a", {"rate": 0.5})
    record("b", {"rate": 0.25})
    rows = lambda records: "\n".join(f"| {n} | {m['rate']} |" for n, _, m in records)  # noqa: E731
    text, records = common.table_of_records(tmp_path, "01_bimodal_gan", rows)
    assert text == "| a | 0.5 |\n| b | 0.25 |" and capsys.readouterr().out == text + "\n"
    assert [n for n, _, _ in records] == ["a", "b"]
    with pytest.raises(common.UserError, match=r"2 records there \(a, b\); name one: --table .*a$"):
        common.table_of_records(tmp_path, "01_bimodal_gan", rows, one=True)
    assert common.table_of_records(tmp_path / "b", "01_bimodal_gan", rows, one=True)[0] == "| b | 0.25 |"
    record("c", {"seeds": 3})   # a finished run's record without the key the table reads
    with pytest.raises(common.UserError, match=r"^--table .*: a record there is not one of a finished run of "
                                               r"01_bimodal_gan.py \(KeyError: 'rate'\)$"):
        common.table_of_records(tmp_path, "01_bimodal_gan", rows)


def test_stacked_weights_are_each_trials_own_draw():
    gens = lambda *seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    w = common.stacked_weights(5, 3, gens(1, 2), "uniform", 0.4)
    assert w.shape == (2, 5, 3) and float(w.abs().max()) <= 0.4
    assert torch.equal(w[1], common.stacked_weights(5, 3, gens(2), "uniform", 0.4)[0])  # alone or beside others
    g = torch.Generator().manual_seed(1)   # nn.Linear's draw: uniform in +-1/sqrt(fan_in), from the trial's generator
    assert torch.equal(w[0], torch.empty(5, 3).uniform_(-0.4, 0.4, generator=g))
    n = common.stacked_weights(400, 300, gens(0), "normal", 0.02)
    assert abs(float(n.std()) - 0.02) < 0.001
    with pytest.raises(ValueError, match="unknown init"):
        common.stacked_weights(2, 2, gens(0), "xavier", 1.0)
