"""Usage: python results/03/redraw_state_figure.py runs/03_dcgan_mnist/causes_study/lr_d=1e-3_seed0 figures/03_state_lr_d_1e-3_seed0.png

Redraw one run's losses.png with its states recomputed under the README's thresholds (--grace_epochs 6)."""
import argparse, csv, importlib, shutil, sys, tempfile
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
m = importlib.import_module("03_dcgan_mnist")
run, out = Path(sys.argv[1]), Path(sys.argv[2])
args = m.parse_args(["--grace_epochs", "6"])
rows = list(csv.DictReader(open(run / "curves.csv")))
st = m.RunState(args)
for row in rows:
    state, why, _ = st.update(m.row_signals(row))
    row.update(state=state, reason=why, collapsed=int(state in m.FAILURES))
    for k, v in row.items():
        if k not in ("state", "reason"):
            row[k] = float(v)
    row["epoch"] = int(row["epoch"])
tmp = Path(tempfile.mkdtemp()) / run.name
shutil.rmtree(tmp, ignore_errors=True)
shutil.copytree(run / "samples", tmp / "samples")
c = m.common.Curves(tmp / "curves.csv"); c.rows = rows
m.make_figures(c, tmp, argparse.Namespace(act="leakyrelu", seed=int(run.name.rsplit("seed", 1)[1])))
shutil.copy(tmp / "losses.png", out)
print([r["state"] for r in rows])
