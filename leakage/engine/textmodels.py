"""Text target models: transformer sequence classifiers (``transformers``' GPT-2 and BERT classes)
behind one wrapper, :class:`TextClassifier`, that takes token ids (the client) or input embeddings
(an attack's dummy) and gives the logits ``[B, K]``.

Built-ins are built from a config at random initialisation, seeded (no download): ``gpt2_tiny`` and
``bert_tiny`` (two layers, width 64: for tests and quick runs), ``gpt2_small`` (GPT-2 small's size:
width 768, 12 layers, 12 heads) and ``bert_base`` (BERT base's size). Their vocabulary is the bundled
GPT-2 BPE's 50,257 tokens; the pad token is GPT-2's ``<|endoftext|>`` (50256). A model of your own:
:class:`PretrainedText` (a local folder ``from_pretrained``, or a hub name with internet).

The wrapper runs under ``torch.func.vmap`` (the client's per-problem gradients): GPT-2 is causal, so
padding after a sequence cannot change its real positions; it runs without a mask and is read at the
last real token (what ``GPT2ForSequenceClassification`` reads with its pad token). BERT is given its
padding mask as a 4-D additive mask, which ``transformers`` passes through without data-dependent
checks. Attention runs eagerly (plain matrix products: the attack's double backward needs them). Dropout never runs (the inner model stays in eval mode): a client's dropout mask is a private
random draw no attacker could reproduce (see :func:`leakage.federated.client.client_view`).

Input embeddings mark padding as ids do: a position whose embedding is exactly the pad token's is
padding (an attack that knows a sequence's length fills the rest with the pad token's embedding).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

#: the bundled GPT-2 BPE: its vocabulary size and its ``<|endoftext|>`` token, used as padding
GPT2_VOCAB = 50257
GPT2_PAD = 50256
#: the built-in text models: name -> (family, width, layers, heads)
TEXT_MODELS = {
    "gpt2_tiny": ("gpt2", 64, 2, 2),
    "gpt2_small": ("gpt2", 768, 12, 12),
    "bert_tiny": ("bert", 64, 2, 2),
    "bert_base": ("bert", 768, 12, 12),
}
#: longest sequence the built-ins take (their position embeddings)
MAX_POSITIONS = 512


class TextClassifier(nn.Module):
    """A ``transformers`` sequence classifier that takes token ids ``[B, n]`` (integers, or floats
    holding integers: the client's batch) or input embeddings ``[B, n, d]`` (an attack's dummy), and
    gives logits ``[B, K]``.

    Args:
        model: a ``GPT2ForSequenceClassification``, ``BertForSequenceClassification`` or another
            ``transformers`` sequence classifier whose forward takes ``inputs_embeds``.
        pad_token_id: the padding token: positions holding it are padding (masked for
            bidirectional models; a causal model is read at the last other token).
    """

    def __init__(self, model: nn.Module, pad_token_id: int = GPT2_PAD) -> None:
        super().__init__()
        self.model = model
        self.pad_token_id = int(pad_token_id)
        config = getattr(model, "config", None)
        #: whether the model is causal (GPT-2 style: read at the last real token) or bidirectional
        self.causal = bool(getattr(config, "is_decoder", False)) or getattr(config, "model_type", "") in (
            "gpt2", "gpt_neo", "gptj", "llama", "mistral", "qwen2", "opt")
        self.model.eval()

    def train(self, mode: bool = True) -> "TextClassifier":
        """The wrapper's mode; the inner model stays in eval mode (no dropout; transformers have no BatchNorm)."""
        super().train(mode)
        self.model.eval()
        return self

    @property
    def embedding(self) -> nn.Embedding:
        """The token embedding the ids are looked up in (its gradient's non-zero rows are the batch's tokens)."""
        return self.model.get_input_embeddings()

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2:  # token ids
            ids = x.long() if x.is_floating_point() else x
            mask = ids != self.pad_token_id
            embeds = self.embedding(ids)
        elif x.dim() == 3:  # a position holding exactly the pad token's embedding is padding, as its id is
            embeds = x
            mask = (x != self.embedding.weight[self.pad_token_id].to(x)).any(-1)
        else:
            raise ValueError(f"a text model takes token ids [B, n] or input embeddings [B, n, d], got {tuple(x.shape)}")
        if self.causal:
            base = self.model.base_model
            hidden = base(inputs_embeds=embeds).last_hidden_state
            head = next(h for h in (getattr(self.model, k, None) for k in ("score", "classifier", "lm_head"))
                        if h is not None)  # lm_head: a language model's tied head (:func:`tied_text_model`)
            logits = head(hidden)  # [B, n, K]
            last = (mask.long().sum(-1) - 1).clamp_min(0)
            return logits.gather(1, last[:, None, None].expand(-1, 1, logits.shape[-1])).squeeze(1)
        additive = torch.zeros(mask.shape, dtype=embeds.dtype, device=embeds.device)
        additive = additive.masked_fill(~mask, torch.finfo(embeds.dtype).min)
        n = mask.shape[1]
        return self.model(inputs_embeds=embeds, attention_mask=additive[:, None, None, :].expand(-1, 1, n, n)).logits


def _config(name: str, num_classes: int, seq_len: int):
    family, width, layers, heads = TEXT_MODELS[name]
    positions = max(MAX_POSITIONS, seq_len)
    if family == "gpt2":
        from transformers import GPT2Config

        return GPT2Config(vocab_size=GPT2_VOCAB, n_positions=positions, n_embd=width, n_layer=layers, n_head=heads,
                          num_labels=num_classes, pad_token_id=GPT2_PAD, attn_pdrop=0.0, resid_pdrop=0.0,
                          embd_pdrop=0.0, summary_first_dropout=0.0)
    from transformers import BertConfig

    return BertConfig(vocab_size=GPT2_VOCAB, hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
                      intermediate_size=4 * width, max_position_embeddings=positions, num_labels=num_classes,
                      pad_token_id=GPT2_PAD, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


#: attention as plain matrix products: the attack differentiates the client's gradient again (a double
#: backward), which PyTorch's fused CPU attention kernels do not implement
ATTENTION = "eager"


def text_model(name: str, seq_len: int, num_classes: int, layers: Optional[int] = None) -> TextClassifier:
    """A built-in text model (:data:`TEXT_MODELS`) at random initialisation from the global RNG (the
    caller seeds it), for sequences of ``seq_len`` tokens; ``layers``: that many blocks instead of the
    built-in's."""
    if seq_len > MAX_POSITIONS:
        raise ValueError(f"the built-in text models take sequences of up to {MAX_POSITIONS} tokens, got seq_len {seq_len}")
    config = _config(name, num_classes, seq_len)
    if layers is not None:
        config.num_hidden_layers = layers  # GPT-2's n_layer is an alias of it
    config._attn_implementation = ATTENTION
    if TEXT_MODELS[name][0] == "gpt2":
        from transformers import GPT2ForSequenceClassification as cls
    else:
        from transformers import BertForSequenceClassification as cls
    return TextClassifier(cls(config), GPT2_PAD)


class PretrainedText(TextClassifier):
    """Your own text classifier: a ``transformers`` sequence-classification model read with
    ``AutoModelForSequenceClassification.from_pretrained`` from a local folder (offline), or from a
    hub name (needs the internet). Give it as the attack's model:
    ``--model.model leakage.engine.textmodels.PretrainedText --model.model.path DIR``.

    Args:
        path: the model's folder (``config.json`` and ``model.safetensors``), or a hub name.
        num_classes: the classifier's classes (a head of another size is replaced, at random).
        pad_token_id: the padding token of its tokenizer (default: the model config's, else GPT-2's 50256).
        local_only: read only local files (no download).
    """

    def __init__(self, path: str, num_classes: int = 2, pad_token_id: Optional[int] = None,
                 local_only: bool = True) -> None:
        from transformers import AutoModelForSequenceClassification

        if not path:
            raise ValueError("PretrainedText needs --model.model.path DIR (a transformers model folder)")
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=num_classes, local_files_only=local_only, ignore_mismatched_sizes=True,
                use_safetensors=True, attn_implementation=ATTENTION)
        except (OSError, ValueError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            raise ValueError(f"cannot read a sequence classifier from {path!r}: {first} (give a folder with "
                             "config.json and model.safetensors, or local_only false and a hub name)") from None
        pad = pad_token_id if pad_token_id is not None else getattr(model.config, "pad_token_id", None)
        super().__init__(model, GPT2_PAD if pad is None else int(pad))


def tied_text_model(name: str, seq_len: int) -> TextClassifier:
    """A GPT-2 built-in (``gpt2_tiny`` or ``gpt2_small``) whose output layer is its token embedding, tied
    (``GPT2LMHeadModel``, ``tie_word_embeddings``): it classifies a sequence by the next token it predicts at
    the last real token, so its logits are the whole vocabulary's (class ``k`` is token ``k``) and, unlike a
    sequence classifier's untied embedding, every row of the embedding's gradient is non-zero (the output
    layer's part). At random initialisation from the global RNG (the caller seeds it); built for the token
    set's thresholded rule (:mod:`leakage.attacks.tokenset`), not a built-in name of ``--model.model``."""
    if TEXT_MODELS.get(name, ("",))[0] != "gpt2":
        raise ValueError(f"a tied text model is built from gpt2_tiny or gpt2_small, got {name!r}")
    from transformers import GPT2LMHeadModel

    config = _config(name, 2, seq_len)
    config.tie_word_embeddings = True
    config._attn_implementation = ATTENTION
    model = GPT2LMHeadModel(config)
    if model.lm_head.weight is not model.transformer.wte.weight:
        model.tie_weights()
    return TextClassifier(model, GPT2_PAD)
