"""common.py - the plumbing that two or more of the numbered scripts share.

Copy one numbered script together with this file into another project and it runs. What is here:

- the command line: one-line errors with exit code 2 (`UserError`, `cli`; SIGTERM ends a run as Ctrl-C
  does), argument types, the shared flags `--seed --device --out --run_name --overwrite --quick --deterministic` (`add_common_args`);
- device choice (`pick_device`: auto = cuda, then mps, then cpu) and seeding (`set_seed`);
- one rule for defaults: a preset's values, then `--quick`'s, become the defaults, and flags given
  explicitly win (`parse_settings`, `given_flags`); a sibling script such as `06_metrics` loaded on
  first use, its absence one line (`Sibling`);
- run folders `runs/<script>/<run-name>/` that never silently replace an earlier run (`make_run_dir`),
  with `config.json` (`start_run`); an --out that is a file or not writable, and a run refused before
  it wrote anything but config.json (its folder is removed again by `cli`: `wrote_nothing`), are one-line
  errors;
- memory: estimate before allocating (`check_memory`), an allocation failure as one line
  (`memory_errors_as_user_error`);
- atomic writes (`atomic_open`, `save_json`, `save_torch`): a kill, an exception or a full disk mid-write
  leaves the old file intact (a full disk is one line naming the folder and its free space);
- checkpoints with models, optimisers, step, config and every RNG state (`save_checkpoint`,
  `load_checkpoint`), so a resumed run continues exactly; `checkpoint_to_resume` refuses a --resume with
  nothing to resume; `load_torch` reads any file saved with `save_torch`, a damaged one as one line;
- curves kept in memory and written as CSV (`Curves`), progress lines with an ETA (`Progress`);
- figures with the Agg backend (`pyplot`, `savefig`, `save_grid`);
- MNIST through torchvision with a clear message when it is missing and cannot be downloaded, or when a
  file is truncated or damaged (`check_mnist_file`);
- the Gaussian-mixture benchmarks and the PacGAN mode metrics (`GaussianMixture`, `ring_mixture`,
  `grid_mixture`, `temperature_mixture`, `mode_stats`) and the Wilson interval for collapse rates.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import errno
import functools
import importlib
import io
import json
import math
import os
import platform
import random
import re
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

REPO_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = REPO_DIR / "runs"
DEFAULT_DATA_ROOT = REPO_DIR / "data"


# ----------------------------------------------------------------------------- errors, command line
class UserError(Exception):
    """Something the user can fix (a bad flag, missing data, an unreadable file).

    `cli` turns it into one line on stderr and exit code 2, never a traceback."""


class TrainingDiverged(Exception):
    """A loss became NaN or infinite. `cli` reports it in one line and exits with code 3."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, a job scheduler's time limit), raised where the run is, so that it ends as Ctrl-C does."""


def _raise_terminated(signum, frame):
    raise Terminated


def cli(main_fn: Callable[..., dict]) -> Callable[..., dict]:
    """Wrap a script's `main(argv) -> dict` so that expected failures end in one clear line.

    UserError (and a full disk) -> exit code 2; TrainingDiverged -> exit code 3; Ctrl-C -> exit code 130;
    SIGTERM -> exit code 143 (128 + 15, as the shell reports a process it ended). A run folder that holds
    nothing yet but its config.json is removed again. Tests that call `main([...])` directly see these as
    `SystemExit` with the same codes."""

    @functools.wraps(main_fn)
    def wrapper(argv: list[str] | None = None) -> dict:
        prog = Path(getattr(sys.modules.get(main_fn.__module__), "__file__", None) or "script").name
        first_new, finished = len(_NEW_RUN_DIRS), False
        on_term = threading.current_thread() is threading.main_thread()  # signals reach the main thread only
        if on_term:
            before = signal.signal(signal.SIGTERM, _raise_terminated)
        try:
            out = main_fn(argv)
            finished = True
            return out
        except UserError as e:
            _remove_unused_run_dirs(first_new)
            print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
            raise SystemExit(2) from None
        except OSError as e:  # a full disk where no atomic write turned it into a UserError
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            _remove_unused_run_dirs(first_new)
            print(f"{prog}: error: {no_space_message(e.filename2 or e.filename)}", file=sys.stderr)
            raise SystemExit(2) from None
        except TrainingDiverged as e:
            _remove_unused_run_dirs(first_new)  # a run that diverged before writing anything leaves nothing
            print(f"{prog}: stopped: {one_line(e)}", file=sys.stderr)
            raise SystemExit(3) from None
        except KeyboardInterrupt as e:
            what = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
            runs = [path for path, _ in _NEW_RUN_DIRS[first_new:]]
            if _remove_unused_run_dirs(first_new):
                print(f"{prog}: {what} before the run wrote anything; its run folder is removed", file=sys.stderr)
            elif runs and all(path in _NOT_RESUMABLE for path in runs):
                print(f"{prog}: {what}; what it wrote is kept in {runs[-1]}; run the command again to finish "
                      f"(this script has no --resume)", file=sys.stderr)
            else:
                print(f"{prog}: {what}; the last checkpoint (if any) is kept, continue with --resume",
                      file=sys.stderr)
            raise SystemExit(143 if isinstance(e, Terminated) else 130) from None
        finally:
            if on_term:
                signal.signal(signal.SIGTERM, before if before is not None else signal.SIG_DFL)
            _settle_replaced_runs(first_new, finished)
            del _NEW_RUN_DIRS[first_new:]

    return wrapper


def one_line(e: BaseException | str) -> str:
    return " ".join(str(e).split()) or type(e).__name__


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: ...)" to every help text that does not already say its default in its own words."""

    def _get_help_string(self, action):
        if "(default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class ArgParser(argparse.ArgumentParser):
    """argparse, but a bad flag raises UserError (one line) instead of printing usage plus a message."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)
        # a word that starts with -digit is a value (--shard -1/4, --x0 -1e300), not an unknown flag, so
        # that the flag's own check names what is wrong with it (argparse's pattern: only -5 and -.5)
        self._negative_number_matcher = re.compile(r"^-\.?\d")

    def error(self, message: str):
        raise UserError(f"{message} (see --help)")


def _typed(convert: Callable[[str], Any], check: Callable[[Any], bool], what: str):
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not check(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value

    parse.__name__ = what  # argparse shows this name in its messages
    return parse


positive_int = _typed(int, lambda v: v > 0, "a positive integer")
nonneg_int = _typed(int, lambda v: v >= 0, "a non-negative integer")
positive_float = _typed(float, lambda v: math.isfinite(v) and v > 0, "a positive number")
nonneg_float = _typed(float, lambda v: math.isfinite(v) and v >= 0, "a non-negative number")
unit_float = _typed(float, lambda v: 0 <= v <= 1, "a number between 0 and 1")
beta_float = _typed(float, lambda v: 0 <= v < 1, "a number in [0, 1)")
SEED_MAX = 2**32 - 1  # NumPy's seed range; the scripts derive more seeds from it (seed + 1, seed + 10_000, ...)
seed_int = _typed(int, lambda v: 0 <= v <= SEED_MAX, f"a seed from 0 to {SEED_MAX}")

_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def device_arg(text: str) -> str:
    """argparse type for --device: auto, cpu, cuda, cuda:N or mps, and it must exist on this machine."""
    if not _DEVICE_RE.match(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device (use auto, cpu, cuda, cuda:N or mps)")
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text!r}: CUDA is not available on this machine")
        idx = int(text.split(":")[1]) if ":" in text else 0
        if idx >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text!r}: this machine has {torch.cuda.device_count()} GPU(s)")
    if text == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise argparse.ArgumentTypeError("'mps': MPS is not available on this machine")
    return text


def pick_device(name: str = "auto") -> torch.device:
    """auto = cuda if available, then mps, then cpu; anything else is taken as given."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if hasattr(torch.backends, "mps") and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device_arg(name))


def add_common_args(p: argparse.ArgumentParser, *, resume: bool = False) -> None:
    """The flags every script has. `--out` is the root: the run goes to OUT/<script>/<run_name>/."""
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=seed_int, default=0, help="random seed")
    g.add_argument("--device", type=device_arg, default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps")
    g.add_argument("--out", type=out_folder, default=str(DEFAULT_OUT),
                   help="root folder of the run folders (OUT/<script>/<run_name>/)")
    g.add_argument("--run_name", default=None, help="name of the run folder (default: made from the flags)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing run folder of the same name")
    g.add_argument("--quick", action="store_true", help="a tiny run that finishes in seconds on a CPU (smoke test)")
    g.add_argument("--deterministic", action="store_true", help="deterministic algorithms only (slower on GPU)")
    if resume:
        g.add_argument("--resume", action="store_true",
                       help="continue the newest run folder of this name from its last checkpoint")


Defaults = "dict | Callable[[argparse.Namespace], dict] | None"


def parse_settings(p: argparse.ArgumentParser, argv: list[str] | None, *, presets: Defaults = None,
                   quick: Defaults = None) -> argparse.Namespace:
    """The one rule for defaults in every script. Parse `argv` once to learn --quick and whichever flag
    picks a preset (--setting, --task, --protocol); then the preset's values (`presets`: dest -> value, or
    a function of that first parse), and over them --quick's (`quick`, likewise), become the defaults and
    `argv` is parsed again, so a flag given explicitly always wins."""
    args = p.parse_args(argv)
    values = lambda d: (d(args) if callable(d) else d) or {}  # noqa: E731
    defaults = {**values(presets), **(values(quick) if getattr(args, "quick", False) else {})}
    if defaults:
        p.set_defaults(**defaults)
        args = p.parse_args(argv)
    return args


def given_flags(p: argparse.ArgumentParser, argv: list[str] | None) -> set[str]:
    """The dests that `argv` sets explicitly (abbreviated and --flag=value spellings included)."""
    probe = argparse.ArgumentParser(add_help=False, allow_abbrev=p.allow_abbrev)
    for action in p._actions:
        if action.option_strings and not isinstance(action, argparse._HelpAction):
            kwargs = {"dest": action.dest, "default": argparse.SUPPRESS, "required": False}
            if action.nargs != 0:
                kwargs["nargs"] = action.nargs
            probe.add_argument(*action.option_strings, action="store_true" if action.nargs == 0 else "store", **kwargs)
    return set(vars(probe.parse_known_args(argv)[0]))


def parse_with_quick(p: argparse.ArgumentParser, argv: list[str] | None, quick: dict) -> argparse.Namespace:
    """`parse_settings` with --quick's values only; each such flag's --help says what --quick changes, and
    so does --quick's own."""
    for action in p._actions:
        if action.dest in quick:
            action.help = f"{action.help or ''} (--quick: {_flag_value(quick[action.dest])})".lstrip()
        if action.dest == "quick":
            action.help = ("a smaller run that finishes in seconds on a CPU (smoke test): "
                           + ", ".join(f"--{k} {_flag_value(v)}" for k, v in quick.items())
                           + "; flags given explicitly win")
    return parse_settings(p, argv, quick=quick)


class Sibling:
    """A numbered script beside this one (`06_metrics`, whose name an import statement cannot spell),
    loaded on first use. Where it is missing, `load()` is a one-line UserError that says what it is needed
    for, or None with `required=False`."""

    def __init__(self, name: str, needed_for: str, script: str):
        self.name, self.needed_for, self.script = name, needed_for, Path(script).name
        self.module = None

    def load(self, required: bool = True):
        if self.module is None:
            try:
                self.module = importlib.import_module(self.name)
            except ModuleNotFoundError as e:
                if e.name != self.name:
                    raise
                if not required:
                    return None
                raise UserError(f"{self.script} needs {self.name}.py ({self.needed_for}): copy it from this "
                                f"repository beside {self.script}") from None
        return self.module


def _flag_value(v) -> str:
    return " ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


def flag_value(v) -> str:
    """A flag's value as one types it: 1e-3 rather than 0.001, lists space-separated."""
    if isinstance(v, (list, tuple)):
        return " ".join(flag_value(x) for x in v)
    if isinstance(v, float) and math.isfinite(v):
        mantissa, exponent = f"{v:e}".split("e")
        short = f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
        return short if len(short) < len(f"{v:g}") else f"{v:g}"
    return str(v)


# flags that name, place or keep a run, or set its seeds (a table says them once): not the experiment's
NOT_SETTINGS = frozenset({"seed", "seeds", "out", "run_name", "overwrite", "device", "records", "table", "quick"})


def setting_flags(recorded: dict, parse_args: Callable, not_settings: Iterable[str] = NOT_SETTINGS) -> str:
    """The flags of a recorded run (its config.json "args") that differ from the defaults `parse_args([])`
    gives (--quick's, for a --quick run), in the order of --help; flags a record lacks (added after it was
    made) had their default."""
    quick = bool(recorded.get("quick"))
    flags = ["--quick"] if quick else []
    for dest, default in vars(parse_args(["--quick"] if quick else [])).items():
        if dest in not_settings or dest not in recorded or recorded[dest] == default:
            continue
        flags.append(f"--{dest}" if isinstance(default, bool) else f"--{dest} {flag_value(recorded[dest])}")
    return " ".join(flags)


def seeds_text(recorded: dict) -> tuple[str, str]:
    """The seed flags of a recorded run ("--seeds 20") and the seeds they mean ("seeds 0-19")."""
    first, n = recorded.get("seed", 0), recorded.get("seeds", 1)
    flags = " ".join(f for f in (f"--seed {first}" if first else "", f"--seeds {n}" if n > 1 else "") if f)
    return flags, f"seeds {first}-{first + n - 1}" if n > 1 else f"seed {first}"


def flags_text(args: argparse.Namespace, names: Iterable[str], defaults: argparse.Namespace | None = None) -> str:
    """The flags `names` as typed on a command line ("--seeds 8 --latent_dim 2"); with `defaults`, only
    those whose value differs from it (all of them when none does): the flags a one-line error names."""
    names = list(names)
    if defaults is not None:
        names = [n for n in names if getattr(args, n) != getattr(defaults, n)] or names
    return " ".join(f"--{n} {_flag_value(getattr(args, n))}" for n in names)


# ----------------------------------------------------------------------------- memory
def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} TB"


def available_memory(device: torch.device) -> int | None:
    """Bytes free for new tensors: free GPU memory on CUDA, MemAvailable of /proc/meminfo (or the physical
    memory) on the CPU; None where it cannot be told."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    with contextlib.suppress(ValueError, OSError, AttributeError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return None


def check_memory(need_bytes: float, flags: str, device: torch.device | str = "cpu", fraction: float = 0.8) -> None:
    """Refuse, before allocating, a run whose big tensors would need more than `fraction` of the free
    memory: one-line UserError naming `flags` (e.g. "--seeds 100000000 --latent_dim 1") and both sizes."""
    free = available_memory(torch.device(device))
    if free is not None and need_bytes > fraction * free:
        where = "GPU memory" if torch.device(device).type == "cuda" else "memory"
        raise UserError(f"{flags}: needs about {format_bytes(need_bytes)} of {where}, more than this machine "
                        f"has free ({format_bytes(free)}); use smaller values")


@contextlib.contextmanager
def memory_errors_as_user_error(flags: str):
    """Turn an allocation failure inside the block (CPU or GPU) into a one-line UserError naming `flags`."""
    try:
        yield
    except (MemoryError, RuntimeError) as e:
        text = str(e)
        if not (isinstance(e, MemoryError) or any(s in text.lower() for s in ("out of memory", "can't allocate",
                                                                              "not enough memory"))):
            raise
        raise UserError(f"out of memory ({flags}): {one_line(text)[:160]}; use smaller values") from None


@contextlib.contextmanager
def cpu_threads(device: torch.device, n: int = 1):
    """Run the block with `n` torch threads when `device` is the CPU; the old count is restored after.

    Small networks (01, 05) run several times faster on one thread than on two: their ops are too small
    to split, and two threads that wait for each other lose most when anything else runs beside them."""
    before = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ----------------------------------------------------------------------------- trials as one network
def stacked_weights(fan_in: int, fan_out: int, gens: list[torch.Generator], init: str, scale: float) -> torch.Tensor:
    """One (fan_in, fan_out) weight per trial, stacked to (S, fan_in, fan_out), each drawn from its trial's
    own generator, so a trial starts from the same weights alone or beside others. init: "uniform" in
    +-scale (nn.Linear's default with scale 1/sqrt(fan_in)), "normal" with std scale, or "orthogonal"
    (Saxe et al. 2014) with gain scale, as nn.init.orthogonal_. Used by 01's and 04's batched networks,
    whose layers are batched matrix products: x (S, N, fan_in) @ w -> (S, N, fan_out)."""
    if init == "uniform":
        return torch.stack([torch.empty(fan_in, fan_out).uniform_(-scale, scale, generator=g) for g in gens])
    if init == "normal":
        return torch.stack([torch.randn(fan_in, fan_out, generator=g) * scale for g in gens])
    if init != "orthogonal":
        raise ValueError(f"unknown init {init!r}")
    out = []
    for g in gens:
        q, r = torch.linalg.qr(torch.randn(max(fan_in, fan_out), min(fan_in, fan_out), generator=g))
        q = q * torch.sign(torch.diagonal(r))
        out.append(scale * (q if fan_in >= fan_out else q.T))
    return torch.stack(out)


# ----------------------------------------------------------------------------- seeding
def set_seed(seed: int, deterministic: bool = False) -> None:
    """Seed Python's random, NumPy and torch (all devices); optionally ask for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def rng_state() -> dict:
    """Every global RNG state, in a form `torch.load(weights_only=True)` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------- atomic writes
@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w"):
    """Open a temporary file beside `path`; rename it over `path` only when the block succeeds.

    An exception or a kill inside the block leaves the previous `path` untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UserError(no_space_message(path)) from None
        raise


def no_space_message(path: str | os.PathLike | None) -> str:
    """The one line for a full disk: the file, the space left in its folder, and that what was written
    before is kept (a checkpoint is replaced only by a complete new one: `atomic_open`)."""
    if path is None:
        return "no space left on the device; what was written before is kept: free some space and run again"
    path = Path(path)
    try:
        free = f"{format_bytes(shutil.disk_usage(path.parent).free)} free"
    except OSError:
        free = "free space unknown"
    then = "continue with --resume" if path.suffix == ".pt" and path.exists() else "run again"  # a checkpoint kept
    return (f"no space left on the device to write {path} ({free} in {path.parent}); what was written before "
            f"is kept: free some space and {then}")


def to_jsonable(obj: Any) -> Any:
    """Plain JSON types; NaN and infinities become null (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def save_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_open(path) as f:
        json.dump(to_jsonable(obj), f, indent=2)
        f.write("\n")


def load_json(path: str | os.PathLike) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {one_line(e)}") from None


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    """torch.save, atomically. Serialised in memory first: torch's zip writer reports a full disk as a bare
    RuntimeError ("unexpected pos ..."), a plain write as OSError(ENOSPC), which atomic_open names."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_open(path, "wb") as f:
        f.write(buffer.getbuffer())


def load_torch(path: str | os.PathLike, what: str = "checkpoint", keys: Iterable[str] = (),
               fix: str = "delete it or point to the right run folder", map_location="cpu") -> Any:
    """torch.load (weights only) of a file a script of this project wrote with `save_torch`: a checkpoint,
    a finished cell, a generator snapshot. Missing, damaged, or not one of ours (a dict without `keys`):
    a one-line UserError naming `what` and how to `fix` it, never PyTorch's advice about trusted files."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no {what} at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # not a zip of tensors, or pickled objects we do not load: not ours
        first = re.split(r"(?<=[.:])\s", one_line(e), maxsplit=1)[0][:160]
        raise UserError(f"cannot read {what} {path}: not a {what} of this script, or a damaged one "
                        f"(torch.load: {type(e).__name__}: {first}); {fix}") from None
    if keys and not (isinstance(state, dict) and set(keys) <= set(state)):
        raise UserError(f"cannot read {what} {path}: not a {what} of this script (it lacks "
                        f"{', '.join(keys)}); {fix}")
    return state


# ----------------------------------------------------------------------------- run folders
def make_run_dir(out: str | os.PathLike, script: str, run_name: str, *, overwrite: bool = False,
                 resume: bool = False, resumable: bool = True) -> Path:
    """`out/<script>/<run_name>/`, never reusing an existing folder unless asked.

    - new run, folder free: create it;
    - new run, folder taken: use `<run_name>_2`, `_3`, ... (and say so), or replace it with --overwrite;
    - --resume: the newest existing folder of that name (the highest suffix), which must exist and be
      writable, with every folder in it (checked now, not when the first epoch is saved).
    `resumable`: the script has --resume (the note about a taken name mentions it only then).
    """
    if overwrite and resume:
        raise UserError("--overwrite and --resume contradict each other: choose one")
    if not RUN_NAME.fullmatch(run_name):
        shown = run_name if len(run_name) <= 40 else run_name[:37] + "..."
        raise UserError(f"--run_name {shown!r}: an ordinary folder name of at most 100 letters, digits and "
                        f". _ - = +, not starting with '.'")
    check_writable_folder(out, "--out")
    base = Path(out) / script
    if base.exists() and not base.is_dir():
        raise UserError(f"--out {out}: {base} is a file, not a folder; choose another --out")
    taken = _taken_run_dirs(base, run_name)
    if resume:
        if not taken:
            raise UserError(f"nothing to resume: no run folder {base / run_name}")
        for folder in [taken[-1], *sorted(p for p in taken[-1].rglob("*") if p.is_dir())]:
            if not os.access(folder, os.W_OK | os.X_OK):
                raise UserError(f"--resume: {folder} is not writable (no permission, or a read-only file system), "
                                f"so the run cannot continue there; make it writable, or copy the run folder "
                                f"into a writable --out and resume it there")
        return taken[-1]
    path = base / run_name
    replaced = None
    if path.exists():
        if overwrite:  # set aside, not deleted: it is deleted once this run ends well, restored if it ends unused
            replaced = _free_name(base, f"{run_name}.replaced")
            try:
                path.rename(replaced)
            except OSError as e:
                raise UserError(f"--overwrite: cannot move {path} aside ({one_line(e)})") from None
        else:
            n = 2
            while (base / f"{run_name}_{n}").exists():
                n += 1
            path = base / f"{run_name}_{n}"
            print(f"note: {base / run_name} exists; writing to {path} (--overwrite replaces it"
                  + (", --resume continues it)" if resumable else ")"), file=sys.stderr)
    created = [p for p in (Path(out), base, path) if not p.exists()]
    try:
        path.mkdir(parents=True, exist_ok=False)
    except OSError as e:
        if replaced is not None:
            replaced.rename(path)
        raise UserError(f"--out {out}: cannot create the run folder {path} ({one_line(e)})") from None
    _NEW_RUN_DIRS.append((path, created))
    if not resumable:
        _NOT_RESUMABLE.add(path)
    if replaced is not None:
        _REPLACED_RUN_DIRS.append((len(_NEW_RUN_DIRS) - 1, path, replaced))
    return path


RUN_NAME = re.compile(r"[\w=+-][\w.=+-]{0,99}")   # an ordinary folder name: never '.', '..' or hidden


def _free_name(base: Path, name: str) -> Path:
    n, path = 1, base / name
    while path.exists():
        n += 1
        path = base / f"{name}_{n}"
    return path


def _settle_replaced_runs(first: int, finished: bool) -> None:
    """--overwrite's old run folders, set aside by make_run_dir: deleted when the run finished; put back
    when the new folder holds nothing but its config.json (a refused or failed start); otherwise kept
    beside it under <name>.replaced, and said so."""
    keep = []
    for index, path, replaced in _REPLACED_RUN_DIRS:
        if index < first:
            keep.append((index, path, replaced))
            continue
        with contextlib.suppress(OSError):
            if finished:
                shutil.rmtree(replaced)
            elif wrote_nothing(path):
                shutil.rmtree(path, ignore_errors=True)
                replaced.rename(path)
            else:
                print(f"note: the run folder that --overwrite was to replace is kept in {replaced}", file=sys.stderr)
    _REPLACED_RUN_DIRS[:] = keep


# Run folders made by `make_run_dir` in this process, with the folders that did not exist before it, so
# that `cli` can take back a folder that a run refused (or that diverged) before it wrote anything but its
# config.json: later runs then do not get ever higher _N suffixes.
_NEW_RUN_DIRS: list[tuple[Path, list[Path]]] = []
_REPLACED_RUN_DIRS: list[tuple[int, Path, Path]] = []   # (entry in _NEW_RUN_DIRS, new folder, old one set aside)
_NOT_RESUMABLE: set[Path] = set()   # run folders of scripts without --resume (01, 02, 06: they simply rerun)
_RUN_DIR_OWN_FILES = {"config.json"}


def wrote_nothing(run_dir: str | os.PathLike) -> bool:
    """True when a run folder holds nothing but its config.json and empty folders (such as the samples/
    made at the start): a run refused, diverged or stopped before it wrote anything. Nothing is lost by
    removing it, or by starting it again in it."""
    run_dir = Path(run_dir)
    return all((p.is_dir() and not p.is_symlink()) or (p.parent == run_dir and p.name in _RUN_DIR_OWN_FILES)
               for p in run_dir.rglob("*"))


def _remove_unused_run_dirs(first: int = 0) -> list[Path]:
    """Remove the run folders made since entry `first` that hold nothing but config.json (written by
    this run) and empty folders, and the parent folders made with them if they are empty now. Anything
    else is kept. Returns the run folders removed."""
    removed = []
    for path, created in reversed(_NEW_RUN_DIRS[first:]):
        with contextlib.suppress(OSError):
            if not path.is_dir() or not wrote_nothing(path):
                continue
            for name in _RUN_DIR_OWN_FILES & set(os.listdir(path)):
                (path / name).unlink()
            for folder in sorted([*path.rglob("*"), *created], key=lambda p: len(p.parts), reverse=True):
                folder.rmdir()  # only empty folders go; a folder someone else filled meanwhile stays
            removed.append(path)
    del _NEW_RUN_DIRS[first:]
    return removed


def folder_problem(folder: str | os.PathLike) -> str | None:
    """Why `folder` cannot be (or be made as) a folder this process writes in, or None when it can."""
    existing = Path(folder)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"no permission to write in {existing}"
    return None


def check_writable_folder(folder: str | os.PathLike, flag: str) -> None:
    """A one-line UserError unless `folder` is (or can be made as) a folder this process may write in."""
    problem = folder_problem(folder)
    if problem:
        raise UserError(f"{flag} {folder}: {problem}; choose another {flag}")


def out_folder(text: str) -> str:
    """argparse type for --out: a folder that exists or can be made, and that this process may write in
    (checked when the flags are parsed, before any data is loaded or anything is trained)."""
    problem = folder_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(f"{text}: {problem}; choose another --out")
    return text


def _taken_run_dirs(base: Path, run_name: str) -> list[Path]:
    found = []
    if (base / run_name).is_dir():
        found.append((1, base / run_name))
    if base.is_dir():
        for p in base.iterdir():
            m = re.match(re.escape(run_name) + r"_(\d+)$", p.name)
            if m and p.is_dir():
                found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def hardware() -> dict:
    """What the numbers were measured on, recorded next to them."""
    cpu, fields = platform.processor() or platform.machine(), {}
    with contextlib.suppress(OSError):  # the first processor's entry (Linux)
        for line in open("/proc/cpuinfo"):
            if not line.strip():
                break
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    cpu = fields.get("model name", cpu)
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform()}
    if "cpu family" in fields:  # "AMD EPYC" alone names three generations with different vector units
        flags = set(fields.get("flags", "").split())
        info["cpu_family_model"] = f"{fields['cpu family']}/{fields.get('model', '?')}"
        info["cpu_flags"] = " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags)
    with contextlib.suppress(Exception):
        info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def check_run_of(run_dir: str | os.PathLike, script_file: str, flag: str) -> None:
    """A one-line UserError unless run_dir is a run folder of the script `script_file`: its config.json,
    or its parent's (a grid writes its runs' config.json without the script's name), names the script."""
    run_dir, script = Path(run_dir), Path(script_file)
    for folder in (run_dir, run_dir.parent):
        config = load_json(folder / "config.json") if (folder / "config.json").is_file() else None
        made_by = config.get("script") if isinstance(config, dict) else None
        if made_by:
            if made_by != script.stem:
                raise UserError(f"{flag} {run_dir}: a run folder of {made_by}.py, not of {script.name}")
            return
    raise UserError(f"{flag} {run_dir}: not a run folder of {script.name} (no config.json naming it)")


def start_run(args: argparse.Namespace, script_file: str, default_name: str, argv: list[str] | None) -> Path:
    """Create (or, with --resume, find) the run folder and write config.json into it."""
    script = Path(script_file).stem
    run_dir = make_run_dir(args.out, script, args.run_name or default_name,
                           overwrite=args.overwrite, resume=getattr(args, "resume", False),
                           resumable=hasattr(args, "resume"))
    if not getattr(args, "resume", False):
        argv = sys.argv[1:] if argv is None else argv
        config = {"script": script, "command": " ".join(["python", Path(script_file).name] + [shlex.quote(a) for a in argv]),
                  "args": vars(args), "hardware": hardware(),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        try:
            save_json(run_dir / "config.json", config)
        except OSError as e:
            raise UserError(f"--out {args.out}: cannot write {run_dir / 'config.json'} ({one_line(e)})") from None
    return run_dir


# ----------------------------------------------------------------------------- records
RECORD_FILES = ("config.json", "metrics.json")   # a run's small record: what its tables are built from


def add_record_args(p: argparse.ArgumentParser, example: str, table_help: str, table_metavar: str = "DIR",
                    group: bool = True) -> None:
    """--records DIR (keep a finished run's small record) and --table (print the tables of records and
    run nothing); `example` names the committed folder, e.g. "results/01". With `table_or_records`,
    `keep_record`."""
    r = p.add_argument_group("records") if group else p
    r.add_argument("--records", metavar="DIR", default=None,
                   help="after the run, copy its small record (config.json, metrics.json) to DIR/<run_name>, "
                        f"replacing an older record of that name (default: none, e.g. {example})")
    r.add_argument("--table", metavar=table_metavar, default=None, help=table_help)


def table_or_records(args: argparse.Namespace, print_table: Callable[[str], dict], what: str = "the table") -> dict | None:
    """--table: print_table(args.table)'s result (nothing runs); otherwise None, with --records' folder
    checked for writing before anything runs."""
    if args.table is not None:
        if args.records is not None:
            raise UserError(f"--table prints {what} of existing records and --records keeps a new run's "
                            f"record: choose one")
        return print_table(args.table)
    if args.records is not None:
        check_writable_folder(args.records, "--records")
    return None


def keep_record(args: argparse.Namespace, run_dir: str | os.PathLike, name: str) -> Path | None:
    """--records DIR: copy the finished run's record to DIR/<--run_name or name> and say where."""
    if args.records is None:
        return None
    record = copy_record(run_dir, Path(args.records) / (args.run_name or name))
    print(f"{Path(run_dir).parent.name[:2]}: the record of this run is in {record}")
    return record


def copy_record(run_dir: str | os.PathLike, dest: str | os.PathLike, names: Iterable[str] = RECORD_FILES,
                fill: Callable[[Path], None] | None = None) -> Path:
    """Copy the small record of a finished run (`names`: config.json and metrics.json, no figures, curves
    or checkpoints) from `run_dir` to the folder `dest`; or let `fill(folder)` write it (a script whose
    record holds more). An older record in `dest` is replaced as a whole: the new one is built beside it
    (<dest>.partial) and swapped in, so a failed copy leaves the old one."""
    src, dest = Path(run_dir).resolve(), Path(dest).resolve()
    if src == dest or src in dest.parents or dest in src.parents:
        raise UserError(f"--records: the record {dest} and the run folder {src} must not contain each other; "
                        f"choose another --records")
    tmp, old = dest.with_name(dest.name + ".partial"), dest.with_name(dest.name + ".old")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        if fill is not None:
            fill(tmp)
        for name in names if fill is None else ():
            shutil.copyfile(src / name, tmp / name)
        shutil.rmtree(old, ignore_errors=True)
        if dest.exists():
            dest.rename(old)
        tmp.rename(dest)
    except Exception as e:   # whatever stopped it (a fill callback may raise anything): no half record is left
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not dest.exists():
            old.rename(dest)   # the swap failed half-way: the old record goes back
        if not isinstance(e, OSError):
            raise
        raise UserError(f"--records: cannot write the record {dest} ({one_line(e)})") from None
    shutil.rmtree(old, ignore_errors=True)
    return dest


def load_records(folder: str | os.PathLike, script: str, flag: str = "--table") -> list[tuple[str, dict, dict]]:
    """The records of `script` (e.g. "01_bimodal_gan") in `folder`, as (name, config, metrics): the folder
    itself when it holds a config.json, else each sub-folder that does, sorted by name. A folder without
    records, another script's record or one without metrics.json is a one-line UserError naming `flag`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{flag} {folder}: not a folder of records (no such folder)" if not folder.exists()
                        else f"{flag} {folder}: a file, not a folder of records")
    if (folder / "config.json").is_file():
        dirs = [folder]
    else:
        dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")
                      and not p.name.endswith((".partial", ".old")) and (p / "config.json").is_file())
    if not dirs:
        raise UserError(f"{flag} {folder}: no records there (folders holding the config.json and metrics.json "
                        f"of a run of {script}.py, made with --records)")
    records = []
    for d in dirs:
        config = load_json(d / "config.json")
        made_by = config.get("script") if isinstance(config, dict) else None
        if made_by != script:
            raise UserError(f"{flag} {folder}: {d} is not a record of {script}.py (its config.json "
                            f"{'names ' + repr(made_by) if made_by else 'names no script'})")
        if not (d / "metrics.json").is_file():
            raise UserError(f"{flag} {folder}: {d} holds no metrics.json (a run that did not finish)")
        records.append((d.name, config, load_json(d / "metrics.json")))
    return records


MALFORMED = (KeyError, TypeError, ValueError, IndexError, AttributeError)  # what a record of other keys raises


def table_of_records(folder: str | os.PathLike, script: str, build: Callable[[list], str], one: bool = False,
                     flag: str = "--table") -> tuple[str, list]:
    """--table DIR: the text `build(records)` makes of the records of `script` in `folder`
    (`load_records`), printed and returned with the records. one=True: DIR must hold a single record
    (else a UserError names the first). A record that lacks what `build` reads is a one-line UserError."""
    records = load_records(folder, script, flag)
    if one and len(records) > 1:
        raise UserError(f"{flag} {folder}: {len(records)} records there ({', '.join(r[0] for r in records)}); "
                        f"name one: {flag} {Path(folder) / records[0][0]}")
    try:
        text = build(records)
    except MALFORMED as e:
        raise UserError(f"{flag} {folder}: a record there is not one of a finished run of {script}.py "
                        f"({type(e).__name__}: {one_line(e)[:100]})") from None
    print(text)
    return text, records


# ----------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: str | os.PathLike, *, models: dict, optimizers: dict | None = None, step: int = 0,
                    config: dict | None = None, **extra) -> None:
    """Models, optimisers, step, config and all RNG states, written atomically."""
    state = {"models": {k: m.state_dict() for k, m in models.items()},
             "optimizers": {k: o.state_dict() for k, o in (optimizers or {}).items()},
             "step": step, "config": to_jsonable(config or {}), "rng": rng_state(), **extra}
    save_torch(path, state)


def load_checkpoint(path: str | os.PathLike, *, models: dict | None = None, optimizers: dict | None = None,
                    restore_rng: bool = True) -> dict:
    """Load a checkpoint written by `save_checkpoint` into the given models and optimisers.

    Anything unreadable (missing, truncated, wrong content) becomes a one-line UserError."""
    state = load_torch(path, "checkpoint", keys=("models", "rng"))
    try:
        for k, m in (models or {}).items():
            m.load_state_dict(state["models"][k])
        for k, o in (optimizers or {}).items():
            o.load_state_dict(state["optimizers"][k])
        if restore_rng:
            set_rng_state(state["rng"])
    except Exception as e:  # key and shape errors: a checkpoint, but of other flags or another script
        raise UserError(f"cannot read checkpoint {path}: it does not fit this run's networks "
                        f"({type(e).__name__}: {one_line(e)[:200]})") from None
    return state


def checkpoint_to_resume(run_dir: str | os.PathLike, name: str = "checkpoint.pt") -> Path:
    """For --resume: the checkpoint `run_dir/name`, which must exist. A resume with nothing to resume
    refuses (one-line UserError) rather than training from scratch over the folder's curves and metrics."""
    path = Path(run_dir) / name
    if not path.is_file():
        raise UserError(f"--resume: nothing to resume in {run_dir}: it holds no {name} (finished, deleted or "
                        f"never written); start a new run without --resume, or give --run_name of another run")
    return path


def check_same_config(saved: dict, current: dict, ignore: Iterable[str] = (), added: dict | None = None) -> None:
    """A resumed run must use the flags it was started with (bar those in `ignore`). `added`: flags that
    came after some runs were started, with their defaults; a saved config without one had its default."""
    skip = {"resume", "overwrite", "device", "out", "run_name", *ignore}
    saved = {**(added or {}), **saved}
    diff = [f"--{k} {saved.get(k)!r} -> {current.get(k)!r}" for k in sorted(set(saved) | set(current))
            if k not in skip and to_jsonable(saved.get(k)) != to_jsonable(current.get(k))]
    if diff:
        raise UserError("--resume with other flags than the run was started with: " + ", ".join(diff))


# ----------------------------------------------------------------------------- cells of a study
def shard_arg(text: str) -> tuple[int, int]:
    """--shard i/n: run only every n-th cell, from the i-th (0-based), for a study split over machines."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not i/n (e.g. 0/4)") from None
    if not (n >= 1 and 0 <= i < n):
        raise argparse.ArgumentTypeError(f"{text!r}: need 0 <= i < n")
    return (i, n)


def shard_of(cells: list, shard: tuple[int, int] = (0, 1)) -> list:
    """The share of shard (i, n) of the cells: cells i, i + n, i + 2n, ..."""
    i, n = shard
    return cells[i::n]


def run_cells(cells: Iterable, train: Callable[[Any], Any], *, done: Callable[[Any], bool] | None = None,
              load: Callable[[Any], Any] | None = None, keep: Callable[[Any, Any], None] | None = None,
              after_each: Callable[[int, Any, Any, list], None] | None = None) -> list:
    """The cells of a study (method x benchmark, activation x seed, ...), trained one after another.

    train(cell) -> its result, or None when the cell paused (its checkpoint kept, nothing stored);
    done(cell): an earlier, cut run finished it, so load(cell) reads it back instead of training it;
    keep(cell, result) stores a finished cell before the next starts, so a killed study loses at most
    the cell in training (which continues from its own checkpoint); after_each(i, cell, result or None,
    results so far) runs after every cell (tables and records that survive a kill). -> the results (a
    load that gives None adds nothing), in cell order."""
    results = []
    for i, cell in enumerate(cells):
        if done is not None and done(cell):
            result = load(cell) if load is not None else None
        else:
            result = train(cell)
            if result is not None and keep is not None:
                keep(cell, result)
        if result is not None:
            results.append(result)
        if after_each is not None:
            after_each(i, cell, result, results)
    return results


# ----------------------------------------------------------------------------- curves, progress
class Curves:
    """Rows of numbers over training, written as CSV. Kept in memory so a checkpoint can carry them
    and a resumed run continues the same file with no duplicated or missing rows."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.rows: list[dict] = []

    def log(self, **row) -> None:
        self.rows.append({k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in row.items()})

    def column(self, name: str) -> list:
        return [r.get(name) for r in self.rows]

    def save(self) -> None:
        fields: list[str] = []
        for r in self.rows:
            fields += [k for k in r if k not in fields]
        with atomic_open(self.path) as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(self.rows)

    def state_dict(self) -> dict:
        return {"rows": to_jsonable(self.rows)}

    def load_state_dict(self, state: dict) -> None:
        self.rows = [dict(r) for r in state["rows"]]


def format_seconds(s: float) -> str:
    s = max(0, int(round(s)))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


class Progress:
    """Progress lines with elapsed time and an ETA, on stderr, at most one every `every` seconds.

    `update(n, info)`: `info` may be a dict or a function returning one; a function is only called
    when a line is printed, so host-device syncs (`.item()`) stay out of the hot loop."""

    def __init__(self, total: int, desc: str = "", every: float = 5.0, start: int = 0, stream=None):
        self.total, self.desc, self.every = total, desc, every
        self.start_count = self.count = start
        self.stream = stream or sys.stderr
        self.t0 = self.last = time.perf_counter()

    def update(self, n: int = 1, info: dict | Callable[[], dict] | None = None, force: bool = False) -> None:
        self.count += n
        now = time.perf_counter()
        if not (force or now - self.last >= self.every or self.count >= self.total):
            return
        self.last = now
        done = self.count - self.start_count
        elapsed = now - self.t0
        eta = elapsed / done * (self.total - self.count) if done > 0 else float("nan")
        extra = info() if callable(info) else (info or {})
        fields = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in extra.items())
        pct = 100.0 * self.count / max(self.total, 1)
        eta_s = format_seconds(eta) if math.isfinite(eta) else "?"
        print(f"{self.desc} {self.count}/{self.total} ({pct:3.0f}%) {format_seconds(elapsed)} elapsed, "
              f"ETA {eta_s}  {fields}".rstrip(), file=self.stream, flush=True)


# ----------------------------------------------------------------------------- figures
def pyplot():
    """matplotlib.pyplot with the Agg backend (files only, no window)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def savefig(fig, path: str | os.PathLike, dpi: int = 120, tight: bool = True) -> None:
    """Write a figure atomically and close it. tight=False for a figure already laid out by tight_layout
    (cropping it again measures every text box a second time: seconds on a figure of many panels)."""
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format=Path(path).suffix.lstrip(".") or "png", dpi=dpi, bbox_inches="tight" if tight else None)
    pyplot().close(fig)


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int = 5, padding: int = 2,
              value_range: tuple[float, float] | None = None) -> None:
    """A sample grid (images in [-1, 1] or [0, 1]; value_range: which, else told from the images) as PNG,
    written atomically."""
    from torchvision.utils import save_image

    if value_range is None:
        value_range = (-1, 1) if images.min() < 0 else (0, 1)
    with atomic_open(path, "wb") as f:
        save_image(images.detach().float().cpu(), f, nrow=nrow, padding=padding, normalize=True,
                   value_range=value_range, format="png")


def save_strip(tiles: list[tuple[str, Path]], path: str | os.PathLike, per_row: int = 10,
               max_bytes: int = 300_000) -> Path | None:
    """A strip of labelled image files (label, PNG path) in grey, `per_row` a row, each tile under its
    label, written atomically as a PNG below max_bytes: 256 grey levels, else 16, else half the size
    (again) until it fits. None when there are no tiles."""
    from PIL import Image, ImageDraw

    if not tiles:
        return None
    images = [(text, Image.open(f).convert("L")) for text, f in tiles]
    w, h = images[0][1].size
    label, rows = 12, math.ceil(len(images) / per_row)
    strip = Image.new("L", (min(len(images), per_row) * w, rows * (h + label)), 255)
    draw = ImageDraw.Draw(strip)
    for i, (text, tile) in enumerate(images):
        x, y = (i % per_row) * w, (i // per_row) * (h + label)
        strip.paste(tile.resize((w, h)), (x, y + label))
        draw.text((x + 2, y), text, fill=0)
    image, scale = strip, 1
    while True:
        buf = io.BytesIO()
        image.save(buf, format="png", optimize=True)
        if buf.tell() < max_bytes or min(image.size) < 16:
            break
        if image.mode == "L":
            image = strip.quantize(16)
        else:
            scale *= 2
            image = strip.resize((max(strip.width // scale, 1), max(strip.height // scale, 1))).quantize(16)
    with atomic_open(path, "wb") as f:
        f.write(buf.getvalue())
    return Path(path)


def save_gif(frames: list[Path], path: str | os.PathLike, ms_per_frame: int = 300) -> None:
    """An animated GIF of image files, looping, written atomically."""
    from PIL import Image

    images = [Image.open(f).convert("P") for f in frames]
    with atomic_open(path, "wb") as f:
        images[0].save(f, format="GIF", save_all=True, append_images=images[1:], duration=ms_per_frame, loop=0)


# ----------------------------------------------------------------------------- MNIST
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte")


# The official uncompressed files: size in bytes and CRC-32 (their MD5s are those of the MD5SUMS that came
# with this repository's copy: 6bbc9ace..., a25bea73..., 2646ac64..., 27ae3e4e...).
MNIST_CHECKS = {"train-images-idx3-ubyte": (47040016, 0xE9F4D8B3), "train-labels-idx1-ubyte": (60008, 0xE0CB4AD2),
                "t10k-images-idx3-ubyte": (7840016, 0x91373BDF), "t10k-labels-idx1-ubyte": (10008, 0x4AB9EFF9)}


def check_mnist_file(path: str | os.PathLike) -> None:
    """A one-line UserError when an MNIST raw file is truncated or damaged (size and CRC-32 against the
    official file, about 0.05 s for the training images); a missing file is left to torchvision."""
    path = Path(path)
    with contextlib.suppress(FileNotFoundError):
        st = path.stat()
        _check_mnist_file(str(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _check_mnist_file(path: str, size: int, mtime_ns: int) -> None:
    want_size, want_crc = MNIST_CHECKS[Path(path).name]
    if size != want_size:
        problem = f"{size} bytes instead of {want_size} (truncated or damaged)"
    else:
        import zlib

        with open(path, "rb") as f:
            crc = zlib.crc32(f.read())
        problem = None if crc == want_crc else "its content differs from the official file (CRC-32 mismatch)"
    if problem:
        raise UserError(f"MNIST file {path} is damaged: {problem}; delete it (and its .gz if that is damaged "
                        f"too) so that it is extracted or downloaded again, or copy an intact one there")


def load_mnist(data_root: str | os.PathLike, train: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST as uint8 images (N, 28, 28) and int64 labels, through torchvision.

    torchvision reads `<data_root>/MNIST/raw/` and downloads there when the files are missing. When
    they are missing and the download fails, this raises a one-line UserError saying where to put them;
    a truncated or damaged file is named in a one-line UserError (`check_mnist_file`)."""
    root = Path(data_root)
    raw = root / "MNIST" / "raw"
    for name in MNIST_FILES[:2] if train else MNIST_FILES[2:]:
        check_mnist_file(raw / name)
    made = [p for p in (raw, raw.parent, root) if not p.exists()]  # torchvision makes them to download into
    try:
        from torchvision.datasets import MNIST

        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            ds = MNIST(root=str(root), train=train, download=True)
        for name in MNIST_FILES[:2] if train else MNIST_FILES[2:]:
            check_mnist_file(raw / name)  # also what was just downloaded or extracted
    except UserError:
        raise
    except Exception as e:  # network errors come as RuntimeError/URLError/OSError depending on the version
        for folder in made:  # a failed download leaves no empty folders behind (a mistyped --data_root stays absent)
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise UserError(
            f"MNIST is not in {root / 'MNIST' / 'raw'} and could not be downloaded ({one_line(e)[:120]}); "
            f"put the four files {', '.join(MNIST_FILES)} (or their .gz) there, or point --data_root at "
            f"the folder that holds MNIST/raw") from None
    return ds.data, ds.targets


def mnist_fingerprint(data_root: str | os.PathLike) -> str:
    """A short hash of the raw MNIST files, to tie cached models to the data they were made from."""
    import hashlib

    h = hashlib.sha256()
    raw = Path(data_root) / "MNIST" / "raw"
    for name in MNIST_FILES:
        p = raw / name
        h.update(p.read_bytes() if p.exists() else name.encode())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- mixtures and mode metrics
class GaussianMixture:
    """K isotropic Gaussians with the given centres (K, D), standard deviation(s) and weights."""

    def __init__(self, centers, std, weights=None, name: str = "mixture", labels: list[str] | None = None):
        self.centers = torch.as_tensor(centers, dtype=torch.float32)
        if self.centers.ndim == 1:
            self.centers = self.centers[:, None]
        k = len(self.centers)
        self.std = torch.as_tensor(std, dtype=torch.float32).expand(k).clone()
        w = torch.ones(k) if weights is None else torch.as_tensor(weights, dtype=torch.float32)
        self.weights = w / w.sum()
        self.name = name
        self.labels = labels or [str(i) for i in range(k)]

    @property
    def n_modes(self) -> int:
        return len(self.centers)

    @property
    def dim(self) -> int:
        return self.centers.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """n samples (n, D); `generator` decides them completely."""
        idx = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, generator=generator)
        x = self.centers[idx] + noise * self.std[idx, None]
        return x.to(device) if device is not None else x

    def mode_stats(self, samples: torch.Tensor, n_sigma: float = 3.0) -> dict:
        return mode_stats(samples, self.centers, self.std, n_sigma)


def ring_mixture(n_modes: int = 8, radius: float = 1.0, std: float = 0.01) -> GaussianMixture:
    """PacGAN's 2-D ring: centres at angles 2*pi*k/K (k = 0..K-1), so all K are distinct.
    (Some public code uses linspace(0, 2*pi, K), whose first and last centres coincide.)"""
    angles = 2 * math.pi * torch.arange(n_modes, dtype=torch.float64) / n_modes
    centers = radius * torch.stack([angles.cos(), angles.sin()], 1)
    return GaussianMixture(centers, std, name=f"ring{n_modes}")


def grid_mixture(side: int = 5, spacing: float = 2.0, std: float = 0.05) -> GaussianMixture:
    """PacGAN's 2-D grid: centres at {-4, -2, 0, 2, 4}^2 for side 5 and spacing 2."""
    ticks = (torch.arange(side, dtype=torch.float64) - (side - 1) / 2) * spacing
    centers = torch.cartesian_prod(ticks, ticks)
    return GaussianMixture(centers, std, name=f"grid{side * side}")


# Summer (January) temperatures, degrees Celsius, daily maxima:
# - Alice Springs: mean January daily maximum 36.4 C (Australian Bureau of Meteorology climate
#   statistics, as quoted by the Alice Springs Town Council, alicesprings.nt.gov.au).
# - Amundsen-Scott South Pole station: mean January daily maximum -25.9 C (1957-1988 station
#   climatology, as tabled by coolantarctica.com; the BAS READER January mean temperature is -28.1 C).
# The day-to-day spread (standard deviation) of 3 C for both is our round choice, not a sourced value.
TEMPERATURE_MODES = {"South Pole": -25.9, "Alice Springs": 36.4}
TEMPERATURE_STD = 3.0


def temperature_mixture() -> GaussianMixture:
    """The 1-D bimodal example: South Pole (cold) and Alice Springs (hot) summer temperatures, equal weights."""
    return GaussianMixture(list(TEMPERATURE_MODES.values()), TEMPERATURE_STD, name="temperature",
                           labels=list(TEMPERATURE_MODES))


def mode_stats(samples: torch.Tensor, centers: torch.Tensor, std, n_sigma: float = 3.0) -> dict:
    """The PacGAN protocol (Lin et al. 2018, Sec. 5.1) for samples of a mixture with known modes.

    A sample is high quality when it lies within `n_sigma` standard deviations of its nearest centre;
    a mode is captured when at least one high-quality sample has it as nearest centre; reverse KL is
    KL(p || uniform) = ln K - H(p), p the proportions of high-quality samples per mode (nan when there
    are none). Returns modes (captured count), high_quality (fraction), reverse_kl, counts per mode."""
    x = torch.as_tensor(samples, dtype=torch.float32).detach().cpu().reshape(len(samples), -1)
    c = torch.as_tensor(centers, dtype=torch.float32).reshape(-1, x.shape[1])
    k = len(c)
    s = torch.as_tensor(std, dtype=torch.float32).expand(k)
    d = torch.cdist(x, c)
    dist, nearest = d.min(1)
    hq = dist < n_sigma * s[nearest]
    counts = torch.bincount(nearest[hq], minlength=k)
    n_hq = int(counts.sum())
    if n_hq:
        p = counts.double() / n_hq
        nz = p[p > 0]
        reverse_kl = float(math.log(k) + (nz * nz.log()).sum())
    else:
        reverse_kl = float("nan")
    return {"modes": int((counts > 0).sum()), "high_quality": n_hq / max(len(x), 1),
            "reverse_kl": max(reverse_kl, 0.0) if n_hq else reverse_kl, "counts": counts.tolist()}


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval for k successes in n trials (Wilson 1927)."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def mean_sem(values: Iterable[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (nan-free values; sem 0 for a single value)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if len(v) == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0
