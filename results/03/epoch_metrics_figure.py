"""Usage: python results/03/epoch_metrics_figure.py results/03/fp32_50ep figures/03_fp32_50ep_metrics.png

The scores of every epoch of each run in a record folder (<dir>/<act>_seed<s>/curves.csv), one line per
run: the Frechet distance in the classifier's features, NDB (of 100 bins), the digit histogram's KL from
uniform, the largest digit's share, D(x) and D(G(z)). The dashed line marks epoch 16, where the material
says the ReLU generator collapses. Reads the committed records only; writes the one PNG."""
import csv
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PANELS = [("frechet_clf", "Frechet distance (classifier features)", True), ("ndb", "NDB (statistically different bins of 100)", False),
          ("digit_kl", "KL(digits || uniform), nats", False), ("largest", "largest digit's share of the samples", False),
          ("d_real", "D(x)", False), ("d_fake", "D(G(z))", False)]


def main(folder: str, out: str) -> None:
    runs = sorted(Path(folder).glob("*_seed*/curves.csv"))
    if not runs:
        sys.exit(f"{folder}: no <act>_seed<s>/curves.csv records there")
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5), sharex=True)
    for path in runs:
        rows = list(csv.DictReader(open(path)))
        epochs = [int(r["epoch"]) for r in rows]
        for r in rows:
            r["largest"] = max(float(r[f"digit_{d}"]) for d in range(10))
        for ax, (key, title, log) in zip(axes.flat, PANELS):
            ax.plot(epochs, [float(r[key]) for r in rows], marker=".", label=path.parent.name)
    for ax, (key, title, log) in zip(axes.flat, PANELS):
        ax.set_title(title, fontsize=10)
        ax.axvline(16, color="grey", ls="--", lw=1)
        if log:
            ax.set_yscale("log")
    for ax in axes[1]:
        ax.set_xlabel("epoch")
    axes[0, 0].legend(fontsize=9)
    fig.suptitle(f"every epoch's scores ({folder}); dashed: epoch 16", fontsize=11)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    print(f"wrote {out}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
