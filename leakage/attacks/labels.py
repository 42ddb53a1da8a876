"""Analytic label recovery from a shared gradient."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def idlg_labels(last_weight_grad: Tensor, last_bias_grad: Tensor | None = None) -> Tensor:
    """iDLG (Zhao et al., 2020): the label of a single-image update from the last linear layer.

    With cross-entropy, the last layer's bias gradient is ``softmax(z) - onehot(y)``: its only
    negative entry is the true class. Without a bias, the weight gradient row of the true class is
    ``(p_y - 1) * h`` and the others ``p_j * h``; for non-negative features ``h`` (sigmoid, ReLU)
    the true class has the smallest row sum.

    Takes gradients with a leading victim dimension (``[V, K, F]`` and ``[V, K]``) and returns
    ``[V]`` labels.
    """
    if last_bias_grad is not None:
        return last_bias_grad.argmin(dim=-1)
    return last_weight_grad.sum(dim=-1).argmin(dim=-1)


BATCH_STRATEGIES = ("bias_count", "weight_count", "yin", "ilrg")


def last_linear(model: torch.nn.Module) -> tuple[str, torch.nn.Linear]:
    """Name and module of the model's last ``nn.Linear`` (the classifier)."""
    found = None
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear):
            found = (name, m)
    if found is None:
        raise ValueError("analytic label recovery needs a model whose last layer is nn.Linear")
    return found


@torch.no_grad()
def probe_statistics(model: torch.nn.Module, input_shape, data_range=(0.0, 1.0), probes: int = 256, seed: int = 0):
    """The model's mean softmax output and mean summed last-layer input over random inputs.

    Inputs are drawn uniformly in the data range (public metadata), so the attack needs no data.
    Returns ``(p_bar [K], s_bar)``.
    """
    _, layer = last_linear(model)
    feats = []
    hook = layer.register_forward_hook(lambda m, inp, out: feats.append(inp[0].flatten(1).sum(1)))
    gen = torch.Generator().manual_seed(seed)
    lo, hi = data_range
    device = next(model.parameters()).device
    x = (lo + (hi - lo) * torch.rand((probes, *input_shape), generator=gen)).to(device)
    try:
        p_bar = torch.softmax(model(x), dim=-1).mean(0)
    finally:
        hook.remove()
    return p_bar.cpu(), float(torch.cat(feats).mean())


def _check_logits_layer(model: torch.nn.Module, name: str, layer: torch.nn.Linear, input_shape) -> None:
    """Refuse in one line a model whose output is not its last ``nn.Linear``'s output (iLRG needs the logits)."""
    seen = []
    hook = layer.register_forward_hook(lambda m, inp, out: seen.append(out))
    probe = torch.rand((2, *input_shape), generator=torch.Generator().manual_seed(0))
    training = model.training
    model.eval()  # no side effect on running statistics
    try:
        with torch.no_grad():
            out = model(probe.to(layer.weight.device))
    finally:
        hook.remove()
        model.train(training)
    if len(seen) != 1 or seen[0].shape != out.shape or not torch.equal(seen[0], out):
        raise ValueError(f"strategy 'ilrg' needs the model's output (the logits) to be its last nn.Linear's output; "
                         f"the output of {name!r} is not what the model returns")


def ilrg_counts(layer: torch.nn.Linear, weight_grad: Tensor, bias_grad: Tensor, batch_size: int) -> Tensor:
    """iLRG (Ma et al., ICLR 2023): estimated class counts ``[V, K]`` from the last layer's gradient.

    With cross-entropy averaged over the batch, class ``c``'s rows are ``dW_c = mean_n g_nc h_n``
    and ``db_c = mean_n g_nc`` (``g = softmax(z) - onehot(y)``), so ``dW_c / db_c`` is an average of
    the batch's embeddings ``h_n`` dominated by the images of class ``c``. Through the last layer
    and a softmax it gives that class's mean prediction ``P[c]``; the bias gradient then satisfies
    ``B db_j = sum_c counts_c P[c, j] - counts_j``, which with ``sum_c counts_c = B`` is solved for
    the counts by least squares (:func:`torch.linalg.lstsq`).
    """
    gw, gb = weight_grad.double(), bias_grad.double()  # [V, K, F], [V, K]
    V, K = gb.shape
    safe = torch.where(gb == 0, torch.ones_like(gb), gb)
    emb = torch.where((gb == 0)[..., None], torch.zeros_like(gw), gw / safe[..., None])  # [V, K, F]
    logits = torch.nn.functional.linear(emb, layer.weight.detach().double().cpu(), layer.bias.detach().double().cpu())
    probs = torch.softmax(logits, dim=-1)  # [V, K (class of the embedding), K]
    eye = torch.eye(K, dtype=probs.dtype)
    system = torch.cat([torch.ones(V, 1, K, dtype=probs.dtype), probs.transpose(1, 2) - eye], dim=1)  # [V, 1 + K, K]
    rhs = torch.cat([torch.full((V, 1), float(batch_size), dtype=probs.dtype), batch_size * gb], dim=1)
    counts = torch.linalg.lstsq(system, rhs[..., None], driver="gelsd").solution[..., 0]
    return torch.nan_to_num(counts, nan=0.0).clamp(0, batch_size).float()  # an ill-posed system: no count above B


def _round_to_total(estimate: Tensor, total: int) -> Tensor:
    """Non-negative integer counts close to ``estimate`` ``[V, K]`` that sum to ``total`` (largest remainders;
    a shortfall of more than one label per class is first spread evenly over the classes)."""
    est = estimate.clamp(min=0)
    counts = est.floor()
    K = est.shape[1]
    for v in range(est.shape[0]):
        missing = int(total - counts[v].sum())
        if missing > 0:
            counts[v] += missing // K  # a defended update's counts can fall short by more than K labels
            order = (est[v] - counts[v]).argsort(descending=True)
            counts[v, order[:missing % K]] += 1
        elif missing < -K:  # far too many (an estimate that overshoots the batch): _trim in closed form
            counts[v] = _trim(counts[v], est[v] - counts[v], -missing)
        elif missing < 0:  # too many: take from the smallest remainders among non-zero counts
            frac = torch.where(counts[v] > 0, est[v] - counts[v], torch.full_like(est[v], float("inf")))
            for _ in range(-missing):
                c = int(frac.argmin())
                counts[v, c] -= 1
                frac[c] = float("inf") if counts[v, c] == 0 else frac[c] + 1
    return counts.long()


def _trim(counts: Tensor, frac: Tensor, surplus: int) -> Tensor:
    """``counts`` ``[K]`` less ``surplus`` labels taken as the one-at-a-time rule above takes them (a label
    from the class of smallest remainder ``frac`` among non-zero counts, that class's remainder then one
    more), without a step per label: every class gives ``r`` labels (or all it has) in ``r`` whole
    rounds, ``r`` the most rounds the surplus covers, then the rest go one each in order of remainder."""
    n = counts.long()
    lo, hi = 0, int(n.max())
    while lo < hi:  # the largest r with sum(min(n, r)) <= surplus
        mid = (lo + hi + 1) // 2
        if int(n.clamp(max=mid).sum()) <= surplus:
            lo = mid
        else:
            hi = mid - 1
    left = surplus - int(n.clamp(max=lo).sum())
    out = (n - n.clamp(max=lo)).to(counts.dtype)
    if left:
        order = torch.argsort(torch.where(n > lo, frac, torch.full_like(frac, float("inf"))), stable=True)
        out[order[:left]] -= 1
    return out


def _shortfall_notes(estimate: Tensor, total: int, strategy: str, notes: Optional[list]) -> None:
    """Say, in ``notes``, where the update's estimated class counts ``[V, K]`` do not account for the batch's
    ``total`` labels to within one (a defended or inconsistent update: noise shifts the bias gradient's sum);
    :func:`_round_to_total` completes or trims them to ``total``."""
    if notes is None:
        return
    found = estimate.clamp(min=0).sum(dim=1)
    off = [(v, float(f)) for v, f in enumerate(found) if abs(float(f) - total) >= 1]
    if off:
        worst = max(off, key=lambda item: abs(item[1] - total))
        how = "completed" if worst[1] < total else "trimmed"
        notes.append(f"label strategy {strategy!r}: the update's class counts account for {worst[1]:.1f} of the batch's "
                     f"{total} labels (victim {worst[0]}; {len(off)} of {estimate.shape[0]} victims off by one or more: a "
                     f"defended or inconsistent update); the labels were {how} to {total} by largest remainders, a guess")


def _counts_to_labels(counts: Tensor) -> Tensor:
    """``[V, K]`` class counts -> ``[V, B]`` sorted labels."""
    return torch.stack([torch.repeat_interleave(torch.arange(c.numel()), c) for c in counts])


def restore_batch_labels(
    model: torch.nn.Module,
    gradients: dict[str, Tensor],
    batch_size: int,
    input_shape,
    strategy: str = "bias_count",
    data_range=(0.0, 1.0),
    probes: int = 256,
    seed: int = 0,
    notes: Optional[list] = None,
) -> Tensor:
    """The multiset of labels of each update's batch, from its shared gradient: ``[V, B]`` sorted.

    - ``bias_count`` (the count estimate of Geiping et al. 2020 / LLG, Wainakh et al. 2022): with
      cross-entropy averaged over ``B`` images the last layer's bias gradient is
      ``mean_i(p_i) - counts / B``, so ``counts = B * (p_bar - g_bias)``, with ``p_bar`` the model's
      mean prediction, estimated on random inputs (:func:`probe_statistics`).
    - ``weight_count``: the same from the last layer's weight gradient, for models without a bias:
      its row sums are ``(p_bar - counts / B) * s_bar`` with ``s_bar`` the mean summed feature.
    - ``yin`` (GradInversion, Yin et al. 2021): the ``B`` classes whose weight-gradient rows have
      the most negative minimum; assumes the batch's labels are all different (``B <= K``).
    - ``ilrg`` (iLRG, Ma et al. 2023): the count system of ``bias_count`` with each class's own
      mean prediction, from the class-average embeddings ``dW_c / db_c`` (:func:`ilrg_counts`),
      instead of one mean prediction on random inputs; needs a last ``nn.Linear`` with a bias
      whose output the model returns.

    The estimates are exact when the model's predictions hardly depend on the input (an untrained
    network); on a trained model they degrade, which the label-restoration benchmark measures.

    Always ``B`` labels per update: where a count strategy's counts do not sum to ``B`` to within one
    label (noise on the update shifts them), they are completed (or trimmed) to ``B`` by largest
    remainders, and a one-line note saying so is appended to ``notes`` (when given).
    """
    if strategy not in BATCH_STRATEGIES:
        raise ValueError(f"unknown label restoration strategy {strategy!r}; choose one of {', '.join(BATCH_STRATEGIES)}")
    name, layer = last_linear(model)
    gw = gradients[f"{name}.weight"].float().cpu()  # [V, K, F]
    K = gw.shape[1]
    if strategy == "yin":
        if batch_size > K:
            raise ValueError(f"strategy 'yin' assumes distinct labels: batch_size {batch_size} > {K} classes")
        picked = gw.amin(dim=2).topk(batch_size, dim=1, largest=False).indices
        return picked.sort(dim=1).values
    if strategy == "ilrg":
        if layer.bias is None:
            raise ValueError("strategy 'ilrg' needs a last nn.Linear layer with a bias; use 'weight_count'")
        _check_logits_layer(model, name, layer, input_shape)
        estimate = ilrg_counts(layer, gw, gradients[f"{name}.bias"].float().cpu(), batch_size)
        _shortfall_notes(estimate, batch_size, strategy, notes)
        return _counts_to_labels(_round_to_total(estimate, batch_size))
    p_bar, s_bar = probe_statistics(model, input_shape, data_range, probes, seed)
    if strategy == "bias_count":
        if layer.bias is None:
            raise ValueError("strategy 'bias_count' needs a last layer with a bias; use 'weight_count'")
        estimate = batch_size * (p_bar[None] - gradients[f"{name}.bias"].float().cpu())
    else:
        estimate = batch_size * (p_bar[None] - gw.sum(dim=2) / s_bar)
    _shortfall_notes(estimate, batch_size, strategy, notes)
    return _counts_to_labels(_round_to_total(estimate, batch_size))


def check_strategy(strategy: str, batch_size: int, num_classes: int, public: bool = False,
                   model: Optional[torch.nn.Module] = None) -> None:
    """Refuse, in one line and before any attack runs, a label strategy that cannot give ``batch_size``
    labels from an update of ``num_classes`` classes (``public``: the observation carries public labels)
    of ``model`` (when given: a last ``nn.Linear``, with a bias for ``bias_count`` and ``ilrg``)."""
    if model is not None and strategy in ("idlg", *BATCH_STRATEGIES):
        _, layer = last_linear(model)
        if strategy in ("bias_count", "ilrg") and layer.bias is None:
            raise ValueError(f"strategy {strategy!r} needs a last nn.Linear layer with a bias; use 'weight_count'")
    if strategy == "idlg" and batch_size != 1:
        raise ValueError("label strategy 'idlg' recovers the label of a single image: use batch_size 1, "
                         f"labels 'joint' or a batch strategy ({', '.join(BATCH_STRATEGIES)})")
    if strategy == "yin" and batch_size > num_classes:
        raise ValueError(f"strategy 'yin' assumes distinct labels: batch_size {batch_size} > {num_classes} classes "
                         "(use bias_count, weight_count or ilrg, which allow repeated labels)")
    if strategy == "known" and not public:
        raise ValueError("label strategy 'known' needs public labels: set --data.public_labels true "
                         "(the threat model where the server knows the labels)")


def observed_labels(model: torch.nn.Module, gradients: dict[str, Tensor], batch_size: int, input_shape,
                    strategy: str, data_range=(0.0, 1.0), notes: Optional[list] = None) -> Tensor:
    """Labels ``[V, B]`` fixed from the shared updates before an attack: ``idlg`` (one image per
    update) or a batch restoration (:func:`restore_batch_labels`; a shortfall it completed is said in
    ``notes``). ``gradients`` are the updates as batch-mean gradients (:func:`label_gradients`)."""
    V = next(iter(gradients.values())).shape[0]
    if strategy == "idlg" and batch_size != 1:
        raise ValueError("label strategy 'idlg' recovers the label of a single image: use batch_size 1, "
                         f"labels 'joint' or a batch strategy ({', '.join(BATCH_STRATEGIES)})")
    if V == 0:  # a process with an empty shard: nothing to restore
        return torch.zeros(0, batch_size, dtype=torch.long)
    try:
        head = f"{last_linear(model)[0]}.weight"
    except ValueError:  # no linear classifier: the strategy says so itself
        head = None
    if head is not None and head not in gradients:  # a client that trained only part of the model (its trainable)
        raise ValueError(f"the update has no gradient for {head} (the client did not train the classifier head): "
                         f"label strategy {strategy!r} reads it; use labels 'joint' or 'known', or a client that "
                         "trains the head")
    if strategy == "idlg":
        name, layer = last_linear(model)
        bias = gradients[f"{name}.bias"] if layer.bias is not None else None
        return idlg_labels(gradients[f"{name}.weight"], bias).view(V, 1)
    return restore_batch_labels(model, gradients, batch_size, input_shape, strategy, data_range, notes=notes)


def label_gradients(observation) -> dict[str, Tensor]:
    """The shared updates as the batch-mean gradients the label strategies read: as shared for
    FedSGD; for FedAvg the pseudo-gradient (the sum of the ``local_steps`` local gradients,
    :meth:`leakage.records.Observation.gradient_estimate`) divided by ``local_steps``: the mean of the
    local mini-batch gradients, the batch's gradient when the weights move little between steps."""
    grads = observation.gradient_estimate()
    if observation.client is None or observation.client.local_steps == 1:
        return grads
    return {k: v / observation.client.local_steps for k, v in grads.items()}


def public_labels(observation) -> Tensor:
    """Labels ``[V, B]`` the server knows (label strategy ``known``: the threat model of TabLeak's
    experiments, where labels are public metadata), from the observation."""
    if observation.labels is None:
        raise ValueError("label strategy 'known' needs public labels: set --data.public_labels true "
                         "(the threat model where the server knows the labels)")
    return observation.labels.long()
