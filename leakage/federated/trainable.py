"""Which parameters a client trains and shares: all of them (the default), or only some.

A client that fine-tunes part of a model (frozen token embeddings, LoRA adapters and the classifier head)
computes and sends the update of the parameters it trains and nothing else: the server sees no entry for
a frozen parameter, not a zero. The client's ``trainable`` and ``freeze`` settings
(:class:`leakage.federated.client.Client`) are regular expressions searched in the parameter names
(``re.search``: ``wte`` matches ``model.transformer.wte.weight``; ``lora_|score`` every LoRA adapter and
GPT-2's classifier head). The client trains the parameters that match a ``trainable`` pattern (every
parameter when ``trainable`` is unset) and no ``freeze`` pattern. The choice is public: the shared update's
names say which parameters were trained.
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping, Optional, Sequence

from torch import Tensor


def check_patterns(patterns: Optional[Sequence[str]], setting: str) -> Optional[tuple[str, ...]]:
    """``patterns`` as a tuple of regular expressions, checked (None stays None); a bad one is a one-line ValueError."""
    if patterns is None:
        return None
    if isinstance(patterns, str):
        patterns = [patterns]
    out = []
    for p in patterns:
        if not isinstance(p, str) or not p:
            raise ValueError(f"{setting} takes parameter-name patterns (non-empty strings), got {p!r}")
        try:
            re.compile(p)
        except re.error as err:
            raise ValueError(f"{setting} pattern {p!r} is not a regular expression: {err}") from None
        out.append(p)
    if not out and setting.endswith("trainable"):
        raise ValueError(f"{setting} is empty: the client would train and share nothing (leave it unset to train "
                         "every parameter)")
    return tuple(out)


def trained_names(names: Iterable[str], trainable: Optional[Sequence[str]], freeze: Sequence[str] = ()) -> list[str]:
    """The parameter ``names`` a client with these ``trainable`` and ``freeze`` patterns trains, in order.

    A pattern that matches no parameter, or settings that leave nothing to train, are a one-line ValueError
    (a misspelt pattern would otherwise silently share everything, or nothing)."""
    names = list(names)
    for setting, patterns in (("trainable", trainable or ()), ("freeze", freeze or ())):
        for p in patterns:
            if not any(re.search(p, n) for n in names):
                raise ValueError(f"client {setting} pattern {p!r} matches no parameter of the model; its parameters are "
                                 f"named like {', '.join(names[:4])}{', ...' if len(names) > 4 else ''}")
    kept = [n for n in names if (trainable is None or any(re.search(p, n) for p in trainable))
            and not any(re.search(p, n) for p in freeze or ())]
    if not kept:
        raise ValueError("the client's trainable and freeze settings leave no parameter to train: nothing would be "
                         "shared")
    return kept


def only(update: Mapping[str, Tensor], names: Sequence[str]) -> dict[str, Tensor]:
    """The entries of ``update`` the client shares (those of ``names``), in ``names``' order."""
    return {n: update[n] for n in names}


def require(gradients: Mapping[str, Tensor], name: str, what: str) -> None:
    """A one-line ValueError when the shared update holds no gradient for parameter ``name``, which ``what``
    (an attack, a step of it: "the token set cannot be read") needs."""
    if name not in gradients:
        raise ValueError(f"the update has no gradient for {name} (the client did not train it: frozen, or "
                         f"outside its trainable patterns): {what}")


def shared_names(names: Sequence[str], update: Mapping[str, Tensor]) -> list[str]:
    """Those of ``names`` (the parameters an attack would match) that the update holds; a one-line ValueError
    when it holds none of them."""
    kept = [n for n in names if n in update]
    if names and not kept:
        raise ValueError(f"the update holds none of the parameters the attack matches ({', '.join(list(names)[:3])}"
                         f"{', ...' if len(names) > 3 else ''}): the client trained others")
    return kept
