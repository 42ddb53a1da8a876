"""TabLeak's own code (eth-sri/tableak) on given Adult test records; run by ``bench/peer_tableak.py``.

    python bench/peer_tableak_worker.py TABLEAK_CHECKOUT JOB.json OUT.json

Runs inside the TabLeak checkout (its modules import each other by top-level names and read
``datasets/ADULT/`` relative to the working directory), one thread. For every batch of test-split
indices in the job (indices into TabLeak's test records after it drops the ones with a missing
value): TabLeak's untrained ``FullyConnected(d, [100, 100, 2])``, seeded, the batch's FedSGD
gradient of the cross-entropy with the true labels, and its TabLeak setting (config 46 of its
``run_inversion_attacks.py``: cosine loss, signed Adam lr 0.06, uniform init, softmax and sigmoid
tricks, ``post_selection`` restarts pooled by ``median+softmax``, labels known) through its
``invert_grad``, timed (wall and CPU). Written out per batch: the true rows and the reconstruction
as values (categories by name, continuous values de-standardised with TabLeak's statistics, clamped
to its bounds, not rounded), and TabLeak's own metric on its output (its ``post_process_continuous``,
``decode_batch`` and ``match_reconstruction_ground_truth`` with its tolerance map, as its
``run_inversion_attacks.py`` scores), plus its standard deviations of the continuous features.

This file is never imported by ``leakage``; none of TabLeak's code is copied here.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def patch_for_current_torch() -> list[str]:
    """The run-time patch today's torch needs (nothing in the checkout is changed); returns what was patched.

    ``naive_invert_grad`` ends with ``continuous_sigmoid_bound(x_reconstruct, ...)`` on its optimised
    leaf tensor, which writes into it in place: torch >= 1.7 refuses that for a leaf that requires grad
    ("a leaf Variable that requires grad is being used in an in-place operation"). The patch hands
    that one call a detached copy (the same values; the other call, inside the loss, gets a non-leaf
    tensor and is unchanged)."""
    import attacks.gradient_inversion_attack as gia

    bound = gia.continuous_sigmoid_bound

    def continuous_sigmoid_bound(x, dataset, T=1.0):
        if x.is_leaf and x.requires_grad:
            x = x.detach().clone()
        return bound(x, dataset=dataset, T=T)

    gia.continuous_sigmoid_bound = continuous_sigmoid_bound
    return ["attacks.gradient_inversion_attack.continuous_sigmoid_bound: a detached copy of a leaf that requires grad"]


def main() -> None:
    checkout, job_path, out_path = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve(), Path(sys.argv[3]).resolve()
    job = json.loads(job_path.read_text())
    os.chdir(checkout)
    sys.path.insert(0, str(checkout))
    import numpy as np
    import torch

    torch.set_num_threads(1)
    patched = patch_for_current_torch()
    from attacks import invert_grad
    from datasets import ADULT
    from models import FullyConnected
    from utils import match_reconstruction_ground_truth, post_process_continuous

    dataset = ADULT(device="cpu")
    dataset.standardize()
    tolerance_map = dataset.create_tolerance_map(tol=0.319)
    Xtest, ytest = dataset.get_Xtest(), dataset.get_ytest()
    names = list(dataset.train_features)
    cont = {k: idx[0] for k, (kind, idx) in dataset.train_feature_index_map.items() if kind == "cont"}
    bounds = dataset.standardized_continuous_bounds

    def values(batch: "torch.Tensor") -> list[list]:
        """Rows as values: argmax categories, continuous values de-standardised and clamped (not rounded)."""
        cats = dataset.decode_batch(batch.detach().clone(), standardized=True)
        rows = []
        for i in range(batch.shape[0]):
            row = []
            for j, name in enumerate(names):
                if name in cont:
                    z = float(batch[i, cont[name]].clamp(bounds[name][0], bounds[name][1]))
                    row.append(z * float(dataset.std[cont[name]]) + float(dataset.mean[cont[name]]))
                else:
                    row.append(str(cats[i, j]))
            rows.append(row)
        return rows

    results = []
    for indices in job["batches"]:
        idx = torch.tensor(indices)
        np.random.seed(job["seed"])
        torch.manual_seed(job["seed"])
        net = FullyConnected(dataset.num_features, [100, 100, 2])
        criterion = torch.nn.CrossEntropyLoss()
        x, y = Xtest[idx].clone(), ytest[idx].clone()
        grad = [g.detach() for g in torch.autograd.grad(criterion(net(x), y), net.parameters())]
        wall, cpu = time.perf_counter(), time.process_time()
        recon, _ = invert_grad(
            net=net, training_criterion=criterion, true_grad=grad, true_label=y, true_data=x,
            reconstruction_loss="cosine_sim", initialization_mode="uniform", learning_rates=0.06, alpha=1.,
            priors=None, dataset=dataset, max_iterations=job["steps"], optimization_mode="naive", refill="fuzzy",
            post_selection=job["restarts"], return_all=True, sign_trick=True, weight_trick=False,
            gumbel_softmax_trick=False, softmax_trick=True, sigmoid_trick=True, temperature_mode="constant",
            pooling="median+softmax", perfect_pooling=False, true_bn_stats=None, lr_scheduler=False,
            soteria_defended_layer=None, verbose=False, device="cpu")
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        # TabLeak's own score, as its run_inversion_attacks.py computes it
        truth_cat = dataset.decode_batch(x, standardized=True)
        recon_cat = dataset.decode_batch(post_process_continuous(recon.detach().clone(), dataset), standardized=True)
        _, err_all, err_cat, err_cont = match_reconstruction_ground_truth(truth_cat, recon_cat, tolerance_map)
        results.append({
            "indices": indices, "labels": y.tolist(), "wall_seconds": wall, "cpu_seconds": cpu,
            "truth": values(x), "recon": values(recon),
            "own_metric": {"accuracy": 1 - float(np.mean(err_all)), "accuracy_categorical": 1 - float(np.mean(err_cat)),
                           "accuracy_continuous": 1 - float(np.mean(err_cont))},
        })
        print(json.dumps({"batch": indices[0] // len(indices), "B": len(indices), "wall_seconds": round(wall, 1),
                          "cpu_seconds": round(cpu, 1), **results[-1]["own_metric"]}), flush=True)
    out = {"features": names, "continuous_std": {k: float(dataset.std[i]) for k, i in cont.items()},
           "continuous_mean": {k: float(dataset.mean[i]) for k, i in cont.items()},
           "categories": {k: list(v) for k, v in dataset.train_features.items() if v is not None},
           "num_test_records": int(Xtest.shape[0]), "torch": torch.__version__, "patched": patched,
           "threads": torch.get_num_threads(), "batches": results}
    out_path.write_text(json.dumps(out))


if __name__ == "__main__":
    main()
