"""Reading a large CSV table: schema inference and encoding the attacked records, against reading the
file with the csv module alone (the floor), in time and peak memory.

    python bench/table_schema.py [--rows 100000] [--categories 5000] [--standardize-onehot]

Generates an Adult-like table (6 continuous columns, 7 categorical ones of 2-16 categories, one with
``--categories`` categories, a 1-4 integer code and a two-class label) in a temporary folder, then
runs, each in a fresh process: ``reference`` (``list(csv.reader(f))``) and ``leakage``
(``VictimDataModule(CSVTable(...))`` inferring the schema from the file, then the 8 attacked
records encoded by ``load_victims``). Prints each one's wall time and peak resident memory (the
process's ``ru_maxrss``, less that of the same process before the work), and their ratios.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

WORK = {
    "reference": "import csv\nwith open(PATH, newline='') as f:\n    rows = list(csv.reader(f))\n",
    "leakage": ("from leakage.data.datamodule import VictimDataModule\n"
                "from leakage.data.sources import CSVTable\n"
                "dm = VictimDataModule(CSVTable(PATH, label_column='y', standardize_onehot=STD), batch_size=8)\n"
                "secret = dm.load_victims()\nassert secret.images.shape == (1, 8, dm.input_shape[0])\n"),
}


def table(path: Path, rows: int, categories: int) -> None:
    rng = random.Random(0)
    words = [[f"w{j}_{k}" for k in range(n)] for j, n in enumerate((2, 4, 5, 7, 9, 14, 16))]
    with open(path, "w") as f:
        f.write(",".join([f"c{i}" for i in range(6)] + [f"k{j}" for j in range(7)] + ["many", "code", "y"]) + "\n")
        for _ in range(rows):
            cont = [str(rng.randint(17, 90)), str(rng.randint(10000, 1500000)), f"{rng.gauss(0, 1):.6f}",
                    str(rng.choice((0, 0, 0, rng.randint(1, 99999)))), f"{rng.uniform(0, 100):.3f}",
                    str(rng.randint(1, 99))]
            cats = [rng.choice(w) for w in words]
            f.write(",".join(cont + cats + [f"m{rng.randrange(categories)}", str(rng.randint(1, 4)),
                                            rng.choice((">50K", "<=50K"))]) + "\n")


def measure(name: str, path: Path, standardize: bool) -> dict:
    code = (f"import resource, time\nPATH = {str(path)!r}\nSTD = {standardize}\n"
            "import torch, numpy, leakage.data.datamodule\n"  # imports are not the work: both pay them first
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\nstart = time.perf_counter()\n"
            + WORK[name] +
            "import json\nprint(json.dumps({'seconds': time.perf_counter() - start, "
            "'peak_mib': (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--categories", type=int, default=5000)
    ap.add_argument("--standardize-onehot", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "table.csv"
        table(path, args.rows, args.categories)
        size = path.stat().st_size / 2 ** 20
        ref = measure("reference", path, args.standardize_onehot)
        ours = measure("leakage", path, args.standardize_onehot)
    print(f"{args.rows} rows, {args.categories} categories in one column, {size:.1f} MiB"
          f"{', one-hot standardised' if args.standardize_onehot else ''}")
    print(f"reference (csv.reader):  {ref['seconds']:6.2f} s  peak +{ref['peak_mib']:7.1f} MiB")
    print(f"leakage (infer, encode): {ours['seconds']:6.2f} s  peak +{ours['peak_mib']:7.1f} MiB")
    print(f"ratio: time {ours['seconds'] / ref['seconds']:.1f}x, peak memory {ours['peak_mib'] / ref['peak_mib']:.1f}x")


if __name__ == "__main__":
    main()
