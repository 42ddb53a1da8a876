"""The token set of a text update, in closed form (the first step of TAG, LAMP and DAGER).

A transformer looks every token of its batch up in its token embedding ``E`` (``[vocab, d]``): the
gradient of ``E`` is ``dL/dE[t] = sum of dL/de over the positions holding token t``, zero for every token
the batch does not hold. So the non-zero rows of the embedding's shared gradient are the batch's
tokens (padding excepted: a pad position that no real position attends to gets no gradient).

- **Untied input embedding** (a sequence classifier: GPT-2's and BERT's classes use ``E`` at the input
  only): the non-zero rows are exactly the set of tokens (a row could vanish only if a token's
  position gradients summed to exactly zero). The attack reports the set as read, ``threshold`` 0.
- **Tied embedding** (a model whose output layer reuses ``E``, e.g. a language-model head): every row
  gets an output gradient, so no row is exactly zero; the rows whose norm is above ``threshold`` times
  the largest row norm are taken (a rule, never exact), and the metrics give its precision and recall.
- **Defenses**: noise makes every row non-zero, top-k removes rows: set ``threshold`` above the noise.

The length leaks the same way: a learned position embedding's gradient is non-zero on the positions a
real token holds, so its non-zero rows count the longest sequence's tokens (:func:`sequence_lengths`).

The result fits the record of every attack as a reconstruction ``[V, B, n]`` of token ids whose
positions are unknown: the set's tokens in ascending id, each once, filling the batch's sequences one
after the other, the rest padding. It is scored as any text reconstruction; the token set's precision
and recall (:class:`leakage.data.kinds.text.TextKind`) are its own measure, ROUGE-1 its word overlap.
The positions are unknown, so no victim is reported exact: the note says whether the set is.
"""

from __future__ import annotations

from typing import Literal, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from leakage.attacks.closedform import ClosedFormAttack
from leakage.attacks.labels import BATCH_STRATEGIES
from leakage.federated.trainable import require
from leakage.records import Observation

LABELS = ("idlg", *BATCH_STRATEGIES)
#: the default threshold of a tied embedding (a fraction of the largest row norm). Measured
#: (``python bench/text_clients.py --sections tied``: tied gpt2_tiny at random init, 5 batches of B = 1, 4, 8
#: bundled sentences): recall 1.000 from 1e-4 to 3e-3 at every B, and the same precision (0.92-0.97: the only
#: extra rows are the labels' tokens, which the output layer's gradient makes the largest); 1e-2 loses
#: recall at B = 8 (0.49), 0 takes the whole vocabulary
TIED_THRESHOLD = 1e-3


def embedding_names(model: nn.Module) -> tuple[str, Optional[str], bool]:
    """The parameter names of the model's token embedding and of its learned position embedding (None
    without one), and whether the token embedding is tied to an output layer."""
    layer = getattr(model, "embedding", None)
    if layer is None and hasattr(model, "get_input_embeddings"):
        layer = model.get_input_embeddings()
    if not isinstance(layer, nn.Embedding):
        raise ValueError(f"the token set needs a model with a token embedding; {type(model).__name__} has none "
                         "(a transformers model, or leakage.engine.textmodels.TextClassifier)")
    names: dict[int, str] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), n)  # a tied weight by its first name, the one its gradient is shared under
    token = names[id(layer.weight)]
    position = next((names[id(m.weight)] for n, m in model.named_modules()
                     if isinstance(m, nn.Embedding) and m is not layer and "position" in n or n.endswith("wpe")), None)
    inner = getattr(model, "model", model)
    out = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    tied = out is not None and getattr(out, "weight", None) is layer.weight
    return token, position, tied


def token_sets(observation: Observation, model: nn.Module, threshold: float = 0.0) -> list[Tensor]:
    """Every update's token set: the rows of the token embedding's gradient whose L2 norm is above
    ``threshold`` times the update's largest row norm (0: every non-zero row), ascending ids."""
    name, _, _ = embedding_names(model)
    grads = observation.gradient_estimate()
    require(grads, name, "the token set cannot be read (it is the non-zero rows of the token embedding's gradient)")
    grad = grads[name]  # [V, vocab, d]
    norms = grad.double().norm(dim=-1)
    cut = threshold * norms.amax(dim=1, keepdim=True)
    return [(norms[v] > cut[v]).nonzero().flatten().cpu() for v in range(norms.shape[0])]


def sequence_lengths(observation: Observation, model: nn.Module, seq_len: int) -> Tensor:
    """Every update's longest sequence ``[V]``: the position embedding's non-zero rows (one past the last
    one), or ``seq_len`` for a model without a learned position embedding or an update without its gradient
    (a client that froze it)."""
    _, name, _ = embedding_names(model)
    V = observation.num_victims
    if name is None or name not in observation.gradients:
        return torch.full((V,), seq_len, dtype=torch.long)
    rows = observation.gradient_estimate()[name][:, :seq_len].double().norm(dim=-1) > 0  # [V, n]
    last = torch.where(rows, torch.arange(seq_len), -1).amax(dim=1)
    return (last + 1).clamp_min(1).cpu()


class TokenSetAttack(ClosedFormAttack):
    """The batch's token set from the token embedding's gradient, in closed form (see
    :mod:`leakage.attacks.tokenset`): exact for an untied input embedding (every sequence classifier),
    a thresholded rule for a tied one. Positions are unknown: the reconstruction lists the set.

    Args:
        model: a text model (``gpt2_tiny``, ``bert_tiny``, ``gpt2_small``, ``bert_base``, or your own
            ``leakage.engine.textmodels.PretrainedText``).
        input_shape: ``[seq_len]``; linked from the data by the CLI.
        num_classes: linked from the data by the CLI.
        model_seed: seed of a built-in model's weights.
        model_weights: optional weights file, read without unpickling.
        labels: ``idlg`` or a batch label restoration (:mod:`leakage.attacks.labels`).
        threshold: a row counts when its norm is above this fraction of the largest row norm; 0: every
            non-zero row, the exact rule of an untied embedding without defense. None (the default): 0 for
            an untied embedding, :data:`TIED_THRESHOLD` (1e-3, measured) for a tied one.
    """

    def __init__(
        self,
        model: Union[nn.Module, str] = "gpt2_tiny",
        input_shape: Sequence[int] = (16,),
        num_classes: int = 2,
        model_seed: int = 1234,
        model_weights: Optional[str] = None,
        labels: Literal["idlg", "bias_count", "weight_count", "yin", "ilrg"] = "idlg",
        threshold: Optional[float] = None,
    ) -> None:
        super().__init__()
        if labels not in LABELS:
            raise ValueError(f"unknown label strategy {labels!r}; choose one of {', '.join(LABELS)}")
        if threshold is not None and not 0 <= threshold < 1:
            raise ValueError(f"threshold must be in [0, 1) (a fraction of the largest row norm), got {threshold}")
        self._settings_and_target(model, input_shape, num_classes, model_seed, model_weights)
        _, _, self.tied = embedding_names(self.target)
        #: every victim's token set as read (ascending ids), once solved
        self.sets: list[Tensor] = []

    @property
    def threshold(self) -> float:
        """The threshold in use: as set, else 0 (untied) or :data:`TIED_THRESHOLD` (tied)."""
        t = self.hparams.threshold
        return (TIED_THRESHOLD if self.tied else 0.0) if t is None else float(t)

    def check_observation(self, observation: Observation) -> None:
        super().check_observation(observation)
        require(observation.gradients, embedding_names(self.target)[0],
                "the token set cannot be read (it is the non-zero rows of the token embedding's gradient)")

    def solve(self, observation: Observation) -> tuple[Tensor, Tensor, Tensor]:
        V, B = observation.num_victims, observation.batch_size
        n = observation.input_shape[0]
        kind = observation.kind
        self.sets = token_sets(observation, self.target, self.threshold)
        x = torch.full((V, B * n), float(kind.pad_token_id))
        for v, tokens in enumerate(self.sets):
            tokens = tokens[tokens != kind.pad_token_id][: B * n]
            x[v, : tokens.numel()] = tokens.float()
        sizes = [int(s.numel()) for s in self.sets]
        rule = "non-zero rows" if self.threshold == 0 else f"rows above {self.threshold:g} x the largest"
        how = ("a thresholded rule: the embedding is tied to the output layer, every row has a gradient" if self.tied
               else "exact where the update is undefended: the input embedding is untied")
        self.notes.append(f"token set: {rule} of the token embedding's gradient ({how}); {min(sizes)}-{max(sizes)} "
                          "distinct tokens per update; positions unknown (listed in ascending id)")
        self.unread = torch.tensor([s == 0 for s in sizes])
        labels = self.restored_labels(observation)
        return x.view(V, B, n), labels, torch.zeros(V, dtype=torch.bool)

    def describe(self) -> str:
        return "token set of the embedding gradient (closed form)"
