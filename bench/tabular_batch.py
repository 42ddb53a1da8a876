"""Batch-size study on tables: TabLeak against the cosine (Inverting Gradients) and DLG baselines on
the same client updates of the bundled Adult records (labels known, TabLeak's untrained
d-100-100-2 MLP), one victim per batch size: records 0..B-1 of the complete records.

    python bench/tabular_batch.py [--batch-sizes 1 2 4 8 16 32 64 128] [--attacks tableak cosine dlg]
                                  [--steps 1500] [--restarts 30] [--victims 1] [--refine-steps 0]
                                  [--standardize-onehot]

Each row: TabLeak's accuracy (overall, categorical, continuous), the wall time of the attack alone
(the Trainer's fit) and its CPU time (the process's; less sensitive to other jobs on a shared
machine than the wall time), for each attack; for pooled TabLeak also the entropy calibration: the
accuracy of the cells in each quarter of the entropies (lowest first), per feature type; the settings are those of configs/adult_*.yaml.
``--refine-steps N`` gives TabLeak and the cosine baseline TabLeak's two-staged mode: the last N of
the steps with the categorical features fixed to their argmax (``--model.budget.refine_steps``).
``--standardize-onehot``: TabLeak's encoding, the one-hot columns standardised too
(``--data.source.standardize_onehot``, as in ``configs/adult_tableak.yaml``); default plain one-hot, as in
``configs/adult_batch_sweep.yaml``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import time

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from leakage.attacks.gradient_inversion import GradientInversion
from leakage.attacks.settings import apply_options
from leakage.data.datamodule import VictimDataModule, _Steps
from leakage.data.sources import BundledTable

BASE = dict(model="tabular_mlp", model_seed=1234, init="uniform", labels="known")
ATTACKS = {
    "tableak": dict(distance="cosine", optimizer="signed_adam", lr=0.06, relax=True, ensemble="pool"),
    "cosine": dict(distance="cosine", optimizer="signed_adam", lr=0.06, box_constraint=True, restarts=1),
    "dlg": dict(distance="l2", optimizer="lbfgs", lr=1.0, restarts=1),
}


def timed_attack(dm: VictimDataModule, settings: dict, steps: int) -> tuple:
    """One attack of ``steps`` steps on ``dm``'s update, as ``leakage fit`` runs it without logging: the
    module, its results (the best iterate, decoded), and the wall and CPU time of the fit and the final
    evaluation."""
    arguments = apply_options({}, settings, inspect.signature(GradientInversion).parameters)  # settings by name too
    module = GradientInversion(**{**arguments, "input_shape": dm.input_shape, "num_classes": dm.num_classes})
    module.attach(dm.prepare(module.target))
    trainer = pl.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_model_summary=False,
                         enable_progress_bar=False, num_sanity_val_steps=0, limit_val_batches=0)
    start, cpu = time.perf_counter(), time.process_time()
    trainer.fit(module, train_dataloaders=DataLoader(_Steps(), batch_size=None))
    result = module.results(module.final_evaluation())
    return module, result, time.perf_counter() - start, time.process_time() - cpu


def run(batch: int, attack: str, steps: int, restarts: int, victims: int, refine: int = 0,
        standardize_onehot: bool = False) -> dict:
    dm = VictimDataModule(BundledTable(standardize_onehot=standardize_onehot), batch_size=batch, num_victims=victims, public_labels=True)
    settings = {"restarts": restarts, **BASE, **ATTACKS[attack]}
    if refine and attack != "dlg":
        settings["refine_steps"] = refine
    budget = 300 if attack == "dlg" else steps
    module, result, seconds, cpu = timed_attack(dm, settings, budget)
    m = module.kind.evaluate(result["recon"], dm.secret.images, result["entropy"])
    out = {}
    if "entropy" in m:  # calibration: accuracy of the cells by entropy quartile, per feature type
        cat = torch.tensor([f.type == "categorical" for f in module.kind.schema.features])
        for name, cols in (("categorical", cat), ("continuous", ~cat)):
            ent, ok = m["entropy"][..., cols].flatten(), m["correct"][..., cols].flatten()
            q = ent.quantile(torch.tensor([0.25, 0.5, 0.75]))
            bins = torch.bucketize(ent, q)
            out[f"{name}_accuracy_by_entropy_quartile"] = [round(100 * float(ok[bins == i].mean()), 1) for i in range(4)]
    return {**out, "B": batch, "attack": attack, "standardize_onehot": standardize_onehot, "steps": budget,
            "refine_steps": settings.get("refine_steps", 0),
            "restarts": settings["restarts"], "seconds": round(seconds, 1),
            "cpu_seconds": round(cpu, 1),
            **{k: round(100 * float(m[k].mean()), 1) for k in ("accuracy", "accuracy_categorical", "accuracy_continuous")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64, 128])
    ap.add_argument("--attacks", nargs="+", default=list(ATTACKS), choices=list(ATTACKS))
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--restarts", type=int, default=30)
    ap.add_argument("--victims", type=int, default=1)
    ap.add_argument("--refine-steps", type=int, default=0)
    ap.add_argument("--standardize-onehot", action="store_true")
    args = ap.parse_args()
    for b in args.batch_sizes:
        for a in args.attacks:
            print(json.dumps(run(b, a, args.steps, args.restarts, args.victims, args.refine_steps, args.standardize_onehot)), flush=True)


if __name__ == "__main__":
    main()
