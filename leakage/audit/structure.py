"""The checks that read the received weights alone: architecture drift, imprint-like rows, trap weights,
a class-targeted last layer and the transmit-SNR of the first layer (:mod:`leakage.audit.base`).

Thresholds were calibrated on honest models: the built-in ``lenet`` and ``mlp`` (MNIST, the client's batch
64 bundled images), ``simple_cnn`` and ``resnet18`` (CIFAR-10, 10 images), four random initialisations
each (two for ResNet-18), at init and after 5 SGD steps of rate 0.1 on other bundled images (the server's
model is trained on other clients' data); the worst honest score
of each check is in its docstring (``bench/audit_checks.py --calibrate`` prints them, with malicious
models' scores beside them).
"""

from __future__ import annotations

import math

import torch

from leakage.audit.base import Check, Finding, Received, first_weight, module_classes, ratio, row_snr, shapes


#: the imprint check compares the first this many rows of a layer pairwise (an imprint module has at most
#: :data:`leakage.federated.server.MAX_BINS` of them)
MAX_ROWS = 8192


class ArchitectureDrift(Check):
    """Parameters missing, extra or reshaped against the pinned architecture (or, where none is pinned,
    the previous round's weights), and modules inserted or changed in kind; then, against the previous
    round, layers replaced rather than trained.

    Score: the number of names that differ (missing, extra, reshaped, or a submodule of another class):
    an honest round changes values, never names or shapes, so one difference fails (``fail=1``). Where
    every name fits and the previous round is given, a layer whose weights have a cosine below
    ``1 - replaced`` with the previous round's is reported replaced (a warning: a server may re-initialise
    a layer for honest reasons).

    Args:
        warn: the score from which the check warns.
        fail: the score from which it fails (``inf``: never).
        replaced: a layer counts as replaced when its cosine with the previous round's is below ``1 - replaced``.
    """

    name = "architecture"

    def __init__(self, warn: float = 0.5, fail: float = 1.0, replaced: float = 0.5) -> None:
        super().__init__(warn, fail)
        self.replaced = float(replaced)

    def run(self, received: Received) -> Finding:
        reference = received.architecture or (shapes(received.previous) if received.previous is not None else None)
        if reference is None:
            return self.skipped("nothing to compare with: give the previous round's weights or a pinned architecture")
        against = "the pinned architecture" if received.architecture else "the previous round"
        got = shapes(received.state)
        missing = [k for k in reference if k not in got]
        extra = [k for k in got if k not in reference]
        reshaped = [k for k in got if k in reference and tuple(got[k]) != tuple(reference[k])]
        kinds = []
        if received.modules is not None and received.model is not None:
            mine = module_classes(received.model)
            kinds = [k for k in mine if k in received.modules and mine[k] != received.modules[k]]
        moved = {e: m for e in extra for m in missing if e.endswith("." + m) and tuple(got[e]) == tuple(reference[m])}
        prefixes = sorted({e[: -len(m)] for e, m in moved.items()})
        inserted = sorted({k.rpartition(".")[0] or k for k in extra if k not in moved})
        differences = len(missing) + len(extra) + len(reshaped) + len(kinds)
        details = {"against": against, "missing": missing, "extra": extra, "reshaped": reshaped,
                   "changed_modules": kinds, "inserted_modules": inserted, "moved_under": prefixes}
        if differences:
            parts = []
            if inserted:
                parts.append(f"modules inserted: {_few(inserted)} ({len(extra) - len(moved)} extra parameters)")
            if moved:
                parts.append(f"the model wrapped: {len(moved)} parameters moved under {_few([repr(p) for p in prefixes])}")
            if len(missing) > len(set(moved.values())):
                gone = [m for m in missing if m not in set(moved.values())]
                parts.append(f"{len(gone)} missing ({_few(gone)})")
            if reshaped:
                parts.append(f"{len(reshaped)} reshaped ({_few([f'{k} {got[k]} not {tuple(reference[k])}' for k in reshaped])})")
            if kinds:
                parts.append(f"{len(kinds)} modules of another class ({_few(kinds)})")
            return self.found(differences, f"the received weights differ from {against}: " + "; ".join(parts), **details)
        replaced = []
        if received.previous is not None:
            for name, w in received.state.items():
                old = received.previous.get(name)
                if w.dim() < 2 or old is None or tuple(old.shape) != tuple(w.shape):
                    continue
                cos = float(torch.nn.functional.cosine_similarity(w.double().flatten(), old.double().flatten(), dim=0))
                if cos < 1 - self.replaced:
                    replaced.append((name, round(cos, 3)))
        details["replaced"] = replaced
        if replaced:
            found = self.found(self.warn, f"every name and shape fits {against}, but {len(replaced)} layer{'s' if len(replaced) > 1 else ''} {'were' if len(replaced) > 1 else 'was'} replaced, "
                               f"not trained ({_few([f'{n} cosine {c}' for n, c in replaced])})", **details)
            return found
        return self.found(0, f"every name and shape fits {against}", **details)

    def settings(self) -> dict:
        return {**super().settings(), "replaced": self.replaced}


class ImprintRows(Check):
    """Rows of one layer that share one weight direction, with distinct (ramped) biases: the imprint module
    of Robbing the Fed (:class:`leakage.federated.server.ImprintServer`), whose units all measure one feature
    and differ only in their cut.

    Score: the largest number of rows of one layer (with a bias, fan-in >= 16) whose pairwise cosine
    exceeds ``cosine`` (0.99). Honest layers measured: 1 (no two rows that close; random rows of fan-in
    >= 16 have cosines of about ``1/sqrt(fan-in)``); an imprint module of ``k`` bins scores ``k``.
    Warn at 2 rows, fail at 4.

    Args:
        warn: the score from which the check warns.
        fail: the score from which it fails (``inf``: never).
        cosine: two rows share a direction above this cosine.
        min_fan_in: layers with fewer inputs per unit are not read (their random rows can be close).
    """

    name = "imprint rows"

    def __init__(self, warn: float = 2, fail: float = 4, cosine: float = 0.99, min_fan_in: int = 16) -> None:
        super().__init__(warn, fail)
        self.cosine, self.min_fan_in = float(cosine), int(min_fan_in)

    def run(self, received: Received) -> Finding:
        best = (0, "", None)
        for name, rows, bias in received.weights(self.min_fan_in):
            if bias is None or rows.shape[0] < 2:
                continue
            if rows.shape[0] > MAX_ROWS:  # the cosines of every pair: at most MAX_ROWS rows (the first), no more memory
                rows, bias = rows[:MAX_ROWS], bias[:MAX_ROWS]
            norms = rows.norm(dim=1)
            live = norms > 0
            unit = rows[live] / norms[live, None]
            if unit.shape[0] < 2:
                continue
            close = (unit @ unit.T) > self.cosine
            counts = close.sum(dim=1)
            i = int(counts.argmax())
            if int(counts[i]) > best[0]:
                members = close[i].nonzero().flatten()
                best = (int(counts[i]), name, bias[live][members])
        size, name, group = best
        if not name:
            return self.skipped(f"no layer with a bias and a fan-in of {self.min_fan_in} or more")
        if size < 2:
            return self.found(1, "no two rows of any layer share a weight direction", layer=name)
        distinct = int(torch.unique(group).numel())
        diffs = group[1:] - group[:-1]
        sorted_ = bool((diffs >= 0).all() or (diffs <= 0).all())
        return self.found(size, f"{size} rows of {name!r} share one weight direction (cosine > {self.cosine:g}) with "
                          f"{distinct} distinct biases{' in sorted order' if sorted_ else ''}: an imprint module's bins",
                          layer=name, rows=size, distinct_biases=distinct, sorted_biases=sorted_,
                          bias_range=[float(group.min()), float(group.max())])

    def settings(self) -> dict:
        return {**super().settings(), "cosine": self.cosine, "min_fan_in": self.min_fan_in}


class TrapWeights(Check):
    """Rows whose positive weights are scaled down against their negative ones: the trap weights of When the
    Curious Abandon Honesty (:class:`leakage.federated.server.TrapWeightServer`: each row half negative, its
    positive half scaled by ``trap_scale < 1``, no bias), which make each ReLU unit fire for few inputs.

    Score, per layer with fan-in >= 64 and at least 32 rows (fewer rows leave the median too noisy: a last layer of 10 rows measured 0.20): ``|ln(b)|`` for ``b`` the median over rows of
    (sum of the positive weights) / (sum of the magnitudes of the negative ones); the worst layer counts.
    Honest layers are symmetric (``b`` near 1): worst honest score measured 0.066 (ResNet-18 after 5 SGD steps). Trap weights of scale
    ``s`` score ``|ln s|`` (0.36 for the default 0.7). Warn at 0.1 (a scale of 0.9), fail at 0.15 (0.86).

    Args:
        warn: the score from which the check warns.
        fail: the score from which it fails (``inf``: never).
        min_fan_in: layers with fewer inputs per unit are not read.
        min_rows: layers with fewer rows are not read (their median is too noisy).
    """

    name = "trap weights"

    def __init__(self, warn: float = 0.1, fail: float = 0.15, min_fan_in: int = 64, min_rows: int = 32) -> None:
        super().__init__(warn, fail)
        self.min_fan_in, self.min_rows = int(min_fan_in), int(min_rows)

    def run(self, received: Received) -> Finding:
        worst = None
        for name, rows, bias in received.weights(self.min_fan_in):
            if rows.shape[0] < self.min_rows:
                continue
            pos, neg = rows.clamp_min(0).sum(dim=1), (-rows).clamp_min(0).sum(dim=1)
            live = (pos > 0) & (neg > 0)
            if int(live.sum()) < self.min_rows:
                continue
            balance = float((pos[live] / neg[live]).median())
            score = abs(math.log(balance))
            if worst is None or score > worst[0]:
                half = (rows < 0).sum(dim=1)
                exactly_half = float(((half - rows.shape[1] // 2).abs() <= 1).float().mean())
                zero_bias = bias is None or bool((bias == 0).all())
                worst = (score, name, balance, exactly_half, zero_bias)
        if worst is None:
            return self.skipped(f"no layer with a fan-in of {self.min_fan_in} or more and {self.min_rows} rows")
        score, name, balance, exactly_half, zero_bias = worst
        what = (f"the rows of {name!r} have positive weights {balance:.3g} times their negative ones (median over rows; "
                f"{exactly_half:.0%} of rows exactly half negative{', no bias' if zero_bias else ''})")
        if self.verdict(score) != "pass":
            what += ": trap weights, which make each unit fire for few inputs"
        return self.found(score, what, layer=name, balance=balance, exactly_half=exactly_half, zero_bias=zero_bias)

    def settings(self) -> dict:
        return {**super().settings(), "min_fan_in": self.min_fan_in, "min_rows": self.min_rows}


class ClassTargeted(Check):
    """A last layer that singles out one class (Wen et al.'s class fishing, "Fishing for User Data", ICML 2022):
    one class's row boosted by a multiplier against the others (or the others shrunk), or its bias set apart.

    Score: the largest row norm of the last layer over the median of the other rows' norms; the bias's
    robust z-score (distance from the median in units of 1.4826 median absolute deviations) is given too. Honest last layers measured: norm ratio at most 1.21 in the calibration
    (ResNet-18 after 5 SGD steps), and 1.61 for ResNet-18 after 3 SGD steps of rate 0.1 on 8 CIFAR-10
    images (its small initial rows grow fast for the batch's classes). Warn at 2, fail at 3 (a class multiplier of
    3 or more). The bias's z fails the check at ``bias_z`` (default: only when infinite, every other class's
    bias exactly equal and this one apart, as breaching's class attack sets them): honest trained biases of 10
    classes measured z up to 9.6 (the median absolute deviation of 10 values is itself noisy).

    Args:
        warn: the score from which the check warns.
        fail: the score from which it fails (``inf``: never).
        bias_z: the bias's robust z-score from which the check fails (``inf``: only an infinite one).
    """

    name = "class-targeted last layer"

    def __init__(self, warn: float = 2.0, fail: float = 3.0, bias_z: float = math.inf) -> None:
        super().__init__(warn, fail)
        self.bias_z = float(bias_z)

    def run(self, received: Received) -> Finding:
        layers = list(received.weights())
        if not layers:
            return self.skipped("the model has no weight matrix")
        name, rows, bias = layers[-1]
        if rows.shape[0] < 3:
            return self.skipped(f"the last layer {name!r} has {rows.shape[0]} rows: too few to single one out")
        norms = rows.norm(dim=1).double()
        k = int(norms.argmax())
        others = torch.cat([norms[:k], norms[k + 1:]])
        score = ratio(float(norms[k]), float(others.median()))
        z, zk = 0.0, k
        if bias is not None:
            b = bias.double()
            mad = float((b - b.median()).abs().median()) * 1.4826
            dev = (b - b.median()).abs()
            zk = int(dev.argmax())
            z = ratio(float(dev[zk]), mad) if float(dev[zk]) > 1e-6 * max(1.0, float(b.abs().max())) else 0.0
        verdict_score = max(score, self.fail if z >= self.bias_z else 0.0)
        return self.found(verdict_score, f"the last layer {name!r}: class {k}'s row is {score:.3g} times the median row norm"
                          + (f"; class {zk}'s bias lies {z:.3g} robust deviations from the others'" if bias is not None else ""),
                          layer=name, norm_ratio=score, target_class=k, bias_z=z, bias_class=zk)

    def settings(self) -> dict:
        return {**super().settings(), "bias_z": self.bias_z}


class TransmitSNR(Check):
    """The transmit-SNR of the first layer (SEER, Garov et al., ICLR 2024): its largest row norm over the sum of
    the other rows' norms. A layer that passes one input's signal through one unit has one row that
    outweighs the rest; SEER measured it below 1 on every benign ResNet-18. Honest built-ins measured:
    at most 0.10 (LeNet's first convolution, 12 filters). Warn at 0.5, fail at 1.

    Args:
        warn: the score from which the check warns.
        fail: the score from which it fails (``inf``: never).
    """

    name = "transmit-SNR"

    def __init__(self, warn: float = 0.5, fail: float = 1.0) -> None:
        super().__init__(warn, fail)

    def run(self, received: Received) -> Finding:
        first = first_weight(received)
        if first is None:
            return self.skipped("the model has no weight matrix")
        name, rows, _ = first
        snr, unit = row_snr(rows.norm(dim=1))
        return self.found(snr, f"the first layer {name!r}: unit {unit}'s weights are {snr:.3g} times the others' together",
                          layer=name, unit=unit)


def _few(items: list, most: int = 3) -> str:
    shown = ", ".join(str(i) for i in items[:most])
    return shown + (f" and {len(items) - most} more" if len(items) > most else "")
