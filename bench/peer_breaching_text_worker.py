"""The breaching side of ``bench/peer_breaching_text.py``; runs in breaching's own virtual environment.

    <venv>/bin/python bench/peer_breaching_text_worker.py JOB_DIR

``JOB_DIR/inputs.pt`` (tensors only, written by the driver) holds the victims' token ids and labels,
the target classifier's weights under its ``transformers`` parameter names, its logits on the ids and
the client update both tools attack (``update``, in the model's parameter order);
``JOB_DIR/job.json`` holds the classifier's ``transformers`` config and the attack's budget. This script:

1. builds the classifier the way breaching builds a text classifier
   (``breaching/cases/models/model_preparation.py``: ``AutoModelForSequenceClassification.from_config``
   wrapped in its ``HuggingFaceContainer``), the one change being that the config comes from the
   job (``AutoConfig.for_model(**config)``) instead of ``AutoConfig.from_pretrained(name)``, which
   needs the hub; loads the weights; its logits must equal the driver's;
2. computes the update again with breaching's own client (``UserSingleStep``, the ids under
   ``input_ids``) and records how far it is from the driver's;
3. attacks, sentence by sentence, the update bytes from the driver (their SHA-256 is recorded) with
   breaching's ``tag`` attack config as shipped (its joint optimisation of inputs and labels, 1,000
   steps of its BERT-Adam with warm-up, the TAG objective, tokens read back by nearest embedding),
   the server's metadata a text classification task of ``seq_len`` tokens and 2 classes;
4. writes ``JOB_DIR/breaching.pt`` (the recovered token ids) and ``breaching.json`` (times, checks).

No tokenizer is built here: breaching's attack works on token ids and embeddings only; the driver
decodes and scores. Only torch, transformers and breaching are imported: never ``leakage``.
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


def main(job_dir: Path) -> None:
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.disable(logging.INFO)
    import breaching
    from breaching.cases.models.model_preparation import HuggingFaceContainer
    from breaching.cases.users import UserSingleStep
    from omegaconf import OmegaConf
    from transformers import AutoConfig, AutoModelForSequenceClassification

    job = json.loads((job_dir / "job.json").read_text())
    inputs = torch.load(job_dir / "inputs.pt", weights_only=True)
    ids, labels = inputs["ids"], inputs["labels"]  # [V, 1, n] long, [V, 1]
    V, _, n = ids.shape

    config = AutoConfig.for_model(**job["hf_config"])
    config._attn_implementation = "eager"  # as leakage's classifier runs it (a double backward)
    hf = AutoModelForSequenceClassification.from_config(config)
    hf.load_state_dict(inputs["weights"])
    model = HuggingFaceContainer(hf)
    model.name = job["model_name"]
    model.eval()
    names = [name for name, _ in model.named_parameters()]
    if names != job["update_names"]:
        raise ValueError("breaching's container names its parameters differently from the update's")
    out = {}
    with torch.no_grad():
        logits = torch.cat([model(input_ids=ids[v]) for v in range(V)])
    out["logits_max_diff"] = float((logits - inputs["logits"]).abs().max())
    out["logits_equal"] = bool(torch.equal(logits, inputs["logits"]))

    cfg = breaching.get_config(overrides=["case=1_single_image_small", "attack=tag",
                                          f"attack.optim.max_iterations={job['steps']}",
                                          "case.user.provide_labels=False", "case.user.num_data_points=1"])
    setup = dict(device=torch.device("cpu"), dtype=torch.float)
    loss_fn = torch.jit.script(torch.nn.CrossEntropyLoss())  # breaching's loss for a classification task
    metadata = OmegaConf.create(dict(name="bundled", modality="text", task="classification", shape=[n],
                                     classes=int(job["num_classes"]), vocab_size=int(config.vocab_size)))
    user = UserSingleStep(model, loss_fn, None, setup, idx=0, cfg_user=cfg.case.user)
    user.data_key = "input_ids"
    attacker = breaching.attacks.prepare_attack(model, loss_fn, cfg.attack, setup)
    payload = dict(parameters=[p for p in model.parameters()], buffers=None, metadata=metadata)

    recon, client_diff, digests = [], [], []
    seconds = cpu_seconds = 0.0
    for v in range(V):
        own, _ = user.compute_local_updates(payload, custom_data={"input_ids": ids[v], "labels": labels[v]})
        theirs = [inputs["update"][k][v] for k in names]
        scale = max(float(t.abs().max()) for t in theirs)
        client_diff.append(max(float((a - b).abs().max()) for a, b in zip(own["gradients"], theirs)) / scale)
        shared = dict(gradients=[t.clone() for t in theirs], buffers=None,
                      metadata=dict(num_data_points=1, labels=None, local_hyperparams=None))
        digests.append(digest(shared["gradients"]))
        torch.manual_seed(job["seed"] + v)
        t0, c0 = time.perf_counter(), time.process_time()
        result, _ = attacker.reconstruct([payload], [shared], server_secrets={}, dryrun=False)
        seconds += time.perf_counter() - t0
        cpu_seconds += time.process_time() - c0
        recon.append(result["data"].detach().long().reshape(1, n))
    torch.save({"recon": torch.stack(recon)}, job_dir / "breaching.pt")
    out.update(seconds=seconds, cpu_seconds=cpu_seconds, client_max_diff=max(client_diff),
               update_sha256=hashlib.sha256("".join(digests).encode()).hexdigest(),
               threads=torch.get_num_threads(), steps=int(cfg.attack.optim.max_iterations),
               attack=str(cfg.attack.type), token_recovery=str(cfg.attack.token_recovery))
    (job_dir / "breaching.json").write_text(json.dumps(out))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
