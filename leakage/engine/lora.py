"""LoRA adapters on a built-in text model: the model a client that "trains only adapters" receives.

LoRA (Hu et al., 2022) adds to a frozen linear layer ``y = x W`` a low-rank update ``y = x W + s x A B``
(``A`` ``[d, r]``, ``B`` ``[r, d_out]``, ``s = alpha / r``); a client that fine-tunes with LoRA trains ``A`` and
``B`` (and usually the classifier head) and shares their update only. The adapters come from ``peft``
(``inject_adapter_in_model``: the layers are wrapped in place, the base weight renamed ``base_layer.weight``),
the ``text`` extra. The client's side is :class:`leakage.federated.client.Client`'s ``trainable``
(``[lora_, score]``).

What the adapters' gradients give away: ``dL/dA = s X^T (G B^T)``, whose columns lie in the span of the layer's
inputs ``X`` as a full weight's do (DAGER's span test, :mod:`leakage.attacks.dager_search`), but with rank at
most ``r``: the span is all of ``X``'s only while ``X`` has at most ``r`` independent rows. At PEFT's own
initialisation ``B = 0``, so ``dL/dA = 0`` (a fresh adapter's first update carries ``dL/dB`` only, in the
span of ``X A``: ``r`` dimensions). ``adapter_std`` > 0 draws ``B`` at random instead, as after earlier rounds.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from leakage.engine.textmodels import GPT2_PAD, TEXT_MODELS, TextClassifier, text_model


class LoraText(TextClassifier):
    """A built-in text model (``gpt2_tiny``, ``gpt2_small``, ``bert_tiny``, ``bert_base``) at random
    initialisation with LoRA adapters (``peft``) on its attention projections; give it as the attack's model:
    ``--model.model leakage.engine.lora.LoraText --model.model.base gpt2_small --model.model.rank 64``, and the
    client ``--data.client.trainable "[lora_, score]"`` so that it shares the adapters and the head only.

    Args:
        base: the built-in model.
        seq_len: the longest sequence (the data's ``seq_len``).
        num_classes: the classifier's classes (the data's).
        rank: the adapters' rank ``r``.
        alpha: LoRA's scale numerator (``s = alpha / r``); None: ``2 r``.
        targets: the layers that get adapters, by module name (``peft``'s ``target_modules``); None: GPT-2's
            ``c_attn``, BERT's ``query``, ``key`` and ``value``.
        adapter_std: 0: ``peft``'s initialisation (``B = 0``, a fresh adapter); above 0: ``B`` drawn from
            ``N(0, adapter_std)``, as an adapter trained in earlier rounds.
        seed: seed of the base weights and the adapters.
        layers: blocks of the base model (None: the built-in's).
    """

    def __init__(self, base: str = "gpt2_tiny", seq_len: int = 16, num_classes: int = 2, rank: int = 8,
                 alpha: Optional[float] = None, targets: Optional[Sequence[str]] = None, adapter_std: float = 0.0,
                 seed: int = 1234, layers: Optional[int] = None) -> None:
        if base not in TEXT_MODELS:
            raise ValueError(f"unknown base {base!r}; choose one of {', '.join(TEXT_MODELS)}")
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"rank must be an integer >= 1, got {rank!r}")
        if not isinstance(adapter_std, (int, float)) or adapter_std < 0:
            raise ValueError(f"adapter_std must be a number >= 0, got {adapter_std!r}")
        try:
            from peft import LoraConfig, inject_adapter_in_model
        except ImportError:
            raise ValueError("LoraText needs peft: pip install 'leakage[text]' (or pip install peft)") from None
        family = TEXT_MODELS[base][0]
        targets = list(targets) if targets else (["c_attn"] if family == "gpt2" else ["query", "key", "value"])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            inner = text_model(base, seq_len, num_classes, layers).model
            config = LoraConfig(r=rank, lora_alpha=2 * rank if alpha is None else alpha, target_modules=targets,
                                lora_dropout=0.0, fan_in_fan_out=family == "gpt2")
            inner = inject_adapter_in_model(config, inner)
            if adapter_std > 0:
                for name, p in inner.named_parameters():
                    if "lora_B" in name:
                        nn.init.normal_(p, std=adapter_std)
        super().__init__(inner, GPT2_PAD)
        self.rank = rank
