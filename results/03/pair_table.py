"""Usage: python results/03/pair_table.py results/03/keras_fp32_20ep     (or results/03/fp32_50ep)

The tables of a LeakyReLU/ReLU pair in results/03/README.md, from its committed records
(<dir>/<act>_seed<s>/curves.csv and metrics.json, or config.json for a run still training): per run, the state of every epoch under the default
rule and with a grace period as long as the run (then only a won discriminator, or a failure after a
healthy epoch, counts), the epochs that the single "collapsed" rule flags (`detect_collapse`, the
diversity half of `epoch_state`, after the first epoch it passes), and the
scores of the last epoch. Prints markdown (three tables of at most 7 columns); writes nothing."""
import csv
import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
m = importlib.import_module("03_dcgan_mnist")
SHORT = {"not yet diverse": "n", "healthy": "H", "mode collapse": "C", "non-convergence": "X"}


def table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(r) + " |" for r in rows])


base = Path(sys.argv[1])
states_rows, score_rows, d_rows, mnist = [], [], [], set()
for run in sorted(base.glob("*_seed*/curves.csv")):
    with open(run) as f:
        rows = list(csv.DictReader(f))
    done = (run.parent / "metrics.json").is_file()  # a run still training has no metrics.json yet
    metrics = m.common.load_json(run.parent / "metrics.json") if done else m.common.load_json(run.parent / "config.json")["args"]
    n_epochs = str(len(rows)) if done else f"{len(rows)} of {metrics['n_epochs']}"
    cells = []
    for grace in (5, len(rows)):
        s = m.restate(rows, m.parse_args(["--grace_epochs", str(grace)]), metrics.get("diverged"))
        cells.append(s)
    states = "".join(SHORT[x] for x in cells[0]["states"])
    first = lambda s: f"{s['first_failure_epoch']} ({s['first_failure_state']})" if s["failed"] else "none"
    flagged, diverse = [], False
    for r in rows:
        sig = m.row_signals(r)
        why = m.detect_collapse(sig["digit_fractions"], sig["diversity"], sig["data_diversity"])
        if why and diverse:
            flagged.append(f"{r['epoch']} ({why.split(' of the')[0].split(' is below')[0]})")
        diverse = diverse or why is None
    last = rows[-1]
    mnist.add(f"{float(last['data_diversity']):.2f}")
    top = max(float(last[f"digit_{d}"]) for d in range(10))
    who = [metrics["act"], str(metrics["seed"])]
    states_rows.append(who + [n_epochs, f"`{states}`", first(cells[0]), first(cells[1]), ", ".join(flagged) or "none"])
    score_rows.append(who + [f"{float(last['confidence']):.2f}", f"{float(last['frechet_clf']):.0f}",
                             str(int(float(last["digits_covered"]))), f"{top:.0%}", f"{float(last['diversity']):.2f}"])
    d_rows.append(who + [f"{float(last['d_real']):.2f}", f"{float(last['d_fake']):.2f}", f"{float(last['digit_kl']):.2f}",
                         str(int(float(last["ndb"])))])
print(table(["generator", "seed", "epochs", "state per epoch (n not yet diverse, H healthy, C mode collapse, "
             "X non-convergence)", "first failure: default rule", "with a grace period as long as the run",
             "single collapse rule: flagged epochs"], states_rows))
print()
print(table(["generator", "seed", "last epoch: confidence", "FD", "digits covered", "largest digit",
             f"diversity (MNIST {'/'.join(sorted(mnist))})"], score_rows))
print()
print(table(["generator", "seed", "last epoch: D(x)", "D(G(z))", "digit KL", "NDB / 100"], d_rows))
