"""Keskar et al. (2017) at laptop scale: do large batches find sharper minima on digits?

Trains a 64-64-10 tanh MLP on scikit-learn's bundled ``load_digits`` with Adam at batch 32 and at
batch 512 (41% of the training set) over three seeds, as one ``gdjax.sweep``; then prints, for each
solution, train/test accuracy, the top Hessian eigenvalue and epsilon-sharpness (eps = 1e-3 and
5e-4), and draws the train/test loss along the line from the small-batch to the large-batch
solution (the paper's Figure 3).

Run: ``python examples/keskar_study.py [--out DIR] [--scale-lr] [--epochs N]``
(``GDJAX_EXAMPLES_FAST=1`` trains fewer epochs; ``GDJAX_EXAMPLES_OUT`` sets the folder).
"""

import argparse
import json
import os
from pathlib import Path

from rich.console import Console
from rich.table import Table

from gdjax.batch_study import batch_size_study


def main() -> None:
    fast = os.environ.get("GDJAX_EXAMPLES_FAST") == "1"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("GDJAX_EXAMPLES_OUT", "gdjax-out"))
    parser.add_argument("--epochs", type=int, default=3 if fast else 150)
    parser.add_argument("--scale-lr", action="store_true",
                        help="linear scaling rule: lr x (512 / 32) for the large batch")
    args = parser.parse_args()

    quick = dict(seeds=(0,), hidden=(16,), eigen_iters=10, ascent_steps=3) if fast else {}
    study = batch_size_study(epochs=args.epochs, scale_lr=args.scale_lr, **quick)
    console = Console(width=130)
    table = Table(title=f"Batch-size study, {args.epochs} epochs ({study.seconds:.0f} s)")
    columns = ["batch_size", "seed", "learning_rate", "train_acc", "test_acc", "train_loss",
               "top_eigenvalue", "sharpness_0.001", "sharpness_0.0005"]
    for c in columns:
        table.add_column(c, justify="right")
    for row in study.rows:
        table.add_row(*(f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c])
                        for c in columns))
    console.print(table)
    console.print(study.note)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "keskar_study.json").write_text(json.dumps(
        {"rows": study.rows, "summary": study.summary(), "seconds": study.seconds,
         "epochs": args.epochs, "scale_lr": args.scale_lr, "note": study.note}, indent=2))

    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=90)
    ax = fig.add_subplot()
    ax.semilogy(study.alphas, study.line_train_loss, label="train loss")
    ax.semilogy(study.alphas, study.line_test_loss, "--", label="test loss")
    for a, name in ((0, "batch 32"), (1, "batch 512")):
        ax.axvline(a, color="grey", lw=0.8)
        ax.annotate(name, (a, 1), xycoords=("data", "axes fraction"), ha="center", va="bottom")
    ax.set_xlabel(r"$\alpha$:  $(1-\alpha)\,x_{SB} + \alpha\,x_{LB}$")
    ax.set_ylabel("cross-entropy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "keskar_interpolation.png")
    console.print(f"wrote {out / 'keskar_study.json'} and {out / 'keskar_interpolation.png'}")


if __name__ == "__main__":
    main()
