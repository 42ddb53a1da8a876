"""The breaching side of ``bench/peer_breaching.py``; runs in breaching's own virtual environment.

    <venv>/bin/python bench/peer_breaching_worker.py JOB_DIR

``JOB_DIR/inputs.pt`` (tensors only, written by the driver) holds the victims' images and labels, the
target model's weights under ``leakage``'s parameter names, that model's logits on the images, the
client update that both tools attack (``update``) and the same update before any defense
(``clean``); ``JOB_DIR/job.json`` says which model, which attack, which budget. This script:

1. builds breaching's own model (``LeNetZhu`` or its CIFAR ``ResNet18``) through
   ``breaching.cases.construct_model`` and loads the weights into it by position (shapes checked);
   its logits must equal the driver's;
2. computes the update again with breaching's own client (``UserSingleStep`` / ``UserMultiStep``)
   and records how far it is from ``clean`` (bytes equal, or the largest difference relative to
   the largest entry);
3. attacks, image by image, the update bytes from the driver (their SHA-256 is recorded), with
   breaching's attack config (``breaching.get_config``, ``breaching.attacks.prepare_attack``,
   ``attacker.reconstruct``), its normalisation off (mean 0, std 1: it works in [0, 1]);
4. writes ``JOB_DIR/breaching.pt``: the reconstructions, the labels breaching reports, the labels
   its joint (DLG) optimisation really optimised, the attack's wall and CPU time and the objective
   evaluations it ran.

Only torch and breaching are imported: this file never imports ``leakage``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
import warnings
from pathlib import Path

import torch


def digest(tensors) -> str:
    """SHA-256 of the tensors' bytes, in order (the driver computes the same)."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def load_by_position(model: torch.nn.Module, state: dict) -> None:
    """Copy ``state`` (leakage's names) into ``model`` by position; every shape must agree."""
    own = model.state_dict()
    if len(own) != len(state):
        raise ValueError(f"breaching's model has {len(own)} state entries, leakage's {len(state)}")
    mapped = {}
    for (name, mine), (theirs_name, theirs) in zip(own.items(), state.items()):
        if mine.shape != theirs.shape:
            raise ValueError(f"{name} {tuple(mine.shape)} does not fit leakage's {theirs_name} {tuple(theirs.shape)}")
        mapped[name] = theirs
    model.load_state_dict(mapped)


def main(job_dir: Path) -> None:
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.disable(logging.INFO)
    import breaching
    from breaching.cases.users import UserMultiStep, UserSingleStep

    job = json.loads((job_dir / "job.json").read_text())
    inputs = torch.load(job_dir / "inputs.pt", weights_only=True)
    images, labels = inputs["images"], inputs["labels"]  # [V, 1, C, H, W], [V, 1]
    V = images.shape[0]
    fedavg = job.get("fedavg")
    train_mode = job["client_mode"] == "train"

    overrides = [
        "case=1_single_image_small", f"attack={job['breaching_attack']}",
        *(["case/user=local_updates"] if fedavg else []),
        f"case.model={job['breaching_model']}",
        "case.data.normalize=False", "case.data.mean=[0,0,0]", "case.data.std=[1,1,1]",
        "case.user.provide_labels=False", "case.user.num_data_points=1",
        f"attack.optim.max_iterations={job['steps']}",
        *([f"attack.restarts.num_trials={job['restarts']}"] if job.get("restarts") else []),
        # train mode: no public buffers, so the client and the attack use the batch's own BatchNorm statistics
        f"case.server.provide_public_buffers={not train_mode}",
    ]
    if fedavg:
        overrides += [f"case.user.num_local_updates={fedavg['local_steps']}",
                      f"case.user.num_data_per_local_update_step={fedavg['local_batch_size']}",
                      f"case.user.local_learning_rate={fedavg['local_lr']}",
                      "case.user.provide_local_hyperparams=True"]
    overrides += job.get("breaching_overrides", [])
    cfg = breaching.get_config(overrides=overrides)
    setup = dict(device=torch.device("cpu"), dtype=torch.float)

    model, loss_fn = breaching.cases.construct_model(cfg.case.model, cfg.case.data, pretrained=False)
    load_by_position(model, inputs["weights"])
    model.eval()
    out = {}
    with torch.no_grad():
        logits = torch.cat([model(images[v]) for v in range(V)])
    out["logits_max_diff"] = float((logits - inputs["logits_eval"]).abs().max())
    out["logits_equal"] = bool(torch.equal(logits, inputs["logits_eval"]))

    server = breaching.cases.construct_server(model, loss_fn, cfg.case, setup)
    model = server.vet_model(model)
    user = (UserMultiStep if fedavg else UserSingleStep)(model, loss_fn, None, setup, idx=0, cfg_user=cfg.case.user)
    user.data_key = "inputs"
    attacker = breaching.attacks.prepare_attack(model, loss_fn, cfg.attack, setup)

    evals = [0]
    objective_forward = attacker.objective.forward

    def counted(*args, **kwargs):
        evals[0] += 1
        return objective_forward(*args, **kwargs)

    attacker.objective.forward = counted
    trials = []
    run_trial = attacker._run_trial

    def recording(*args, **kwargs):  # the joint attack's optimised labels, before reconstruct() drops them
        result = run_trial(*args, **kwargs)
        trials.append(result)
        return result

    attacker._run_trial = recording

    names = list(inputs["update"])
    recon, reported, optimised, given, client_diff, client_equal, digests = [], [], [], [], [], [], []
    seconds = cpu_seconds = 0.0
    for v in range(V):
        payload = server.distribute_payload()
        data = {"inputs": images[v], "labels": labels[v]}
        if fedavg:
            user._load_data = lambda setup=None, data=data: dict(data)
            own, _ = user.compute_local_updates(payload)
        else:
            own, _ = user.compute_local_updates(payload, custom_data=dict(data))
        clean = [inputs["clean"][k][v] for k in names]
        scale = max(float(b.abs().max()) for b in clean)
        client_diff.append(max(float((a - b).abs().max()) for a, b in zip(own["gradients"], clean)) / scale)
        client_equal.append(all(torch.equal(a, b) for a, b in zip(own["gradients"], clean)))
        shared = dict(own, gradients=[inputs["update"][k][v].clone() for k in names])
        digests.append(digest(shared["gradients"]))
        trials.clear()
        torch.manual_seed(job["seed"] + v)
        t0, c0 = time.perf_counter(), time.process_time()
        result, _ = attacker.reconstruct([payload], [shared], server_secrets={}, dryrun=False)
        seconds += time.perf_counter() - t0
        cpu_seconds += time.process_time() - c0
        recon.append(result["data"].detach().reshape(1, *images.shape[1:]))
        reported.append(torch.as_tensor(result["labels"]).reshape(-1)[:1])
        if fedavg:  # its multi-step objective trains with the labels its client shares, whatever it reports
            given.append(own["metadata"]["local_hyperparams"]["labels"][0].reshape(-1)[:1])
        if trials and isinstance(trials[0], tuple):  # joint optimisation: (data, soft labels) per trial
            chosen = next((lab for d, lab in trials if torch.equal(d, result["data"])), trials[0][1])
            optimised.append(chosen.argmax(dim=-1).reshape(-1)[:1])
    tensors = dict(recon=torch.cat(recon), labels_reported=torch.cat(reported),
                   labels_optimised=torch.cat(optimised) if optimised else torch.empty(0, dtype=torch.long),
                   labels_given=torch.cat(given) if given else torch.empty(0, dtype=torch.long))
    torch.save(tensors, job_dir / "breaching.pt")
    out.update(seconds=seconds, cpu_seconds=cpu_seconds, evals=evals[0], client_max_diff=max(client_diff), client_equal=all(client_equal),
               update_sha256=hashlib.sha256("".join(digests).encode()).hexdigest(), threads=torch.get_num_threads(),
               restarts=int(cfg.attack.restarts.num_trials))
    (job_dir / "breaching.json").write_text(json.dumps(out))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
