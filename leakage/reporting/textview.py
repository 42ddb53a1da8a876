"""How the report shows text: ROUGE in the outcome line, and per victim its true sentences against the
recovered ones, token by token, with wrong tokens marked (printed: ``[token]*``; TensorBoard Markdown:
bold and struck through; report.html: red). The view of :class:`leakage.data.kinds.text.TextKind`
(:func:`leakage.reporting.views.view_of`)."""

from __future__ import annotations

import html as _html
from typing import Optional

from torch import Tensor


class TextView:
    """Text: ROUGE-1/2 and token accuracy, and the sentences of truth against reconstruction."""

    figure_heading = "Sentences"
    figure_alt = "sentences"
    figure_caption = ""

    def __init__(self, kind) -> None:
        self.kind = kind

    def outcome(self, summary: dict, success: float, style: str = "text") -> str:
        s = summary
        scores = (f"mean ROUGE-1 {s['rouge1_mean']:.3f}, ROUGE-2 {s['rouge2_mean']:.3f}, token accuracy "
                  f"{100 * s['token_accuracy_mean']:.1f}%, exact sequences {100 * s['exact_sequences_mean']:.1f}%, token set precision "
                  f"{s['token_precision_mean']:.3f} and recall {s['token_recall_mean']:.3f}")
        if style == "text":
            return (f"reconstructed (ROUGE-1 >= {success}): {s['success']}/{s['victims']}  {scores}  label accuracy "
                    f"{100 * s['label_acc']:.1f}%  failed {s['failed']}")
        ge = "&ge;" if style == "html" else ">="
        bold = ("<b>", "</b>") if style == "html" else ("**", "**")
        return (f"{bold[0]}{s['success']}/{s['victims']} victims reconstructed{bold[1]} (ROUGE-1 {ge} {success:g}); "
                f"{scores}; label accuracy {100 * s['label_acc']:.1f}%, numerically failed {s['failed']}.")

    def figure(self, recon, labels, *, truth, true_labels, indices, metrics, failed, success, title) -> Optional[bytes]:
        return None

    def _pieces(self, ids, real=None, right=None) -> list[tuple[str, bool]]:
        """Each token as text and whether it is wrong (padding left out of a true sentence)."""
        tok, pad = self.kind.tokenizer, self.kind.pad_token_id
        out = []
        for j, t in enumerate(ids.tolist()):
            if real is not None and not bool(real[j]):
                continue
            if real is None and t == pad:
                continue
            out.append((tok.piece(t), right is not None and not bool(right[j])))
        return out

    def sentences(self, recon: Tensor, truth: Optional[Tensor], metrics: Optional[dict], v: int):
        """Victim ``v``'s rows ``(name, [(token text, wrong)])``: each true sentence, then its reconstruction
        (matched by the metrics' ``perm``, wrong tokens marked); without the truth the reconstruction only."""
        if truth is None or metrics is None:
            rec = self.kind.decode(recon[v])
            return [(f"rec {i}", self._pieces(rec[i])) for i in range(rec.shape[0])]
        true_ids = truth[v].round().long().cpu()
        rows = []
        for i in range(true_ids.shape[0]):
            real = true_ids[i] != self.kind.pad_token_id
            rows.append((f"true {i}", self._pieces(true_ids[i], real)))
            right = metrics["correct"][v, i] | ~real
            rows.append((f"rec {i}", self._pieces(metrics["recovered"][v, i], None, right)))
        return rows

    def details(self, recon: Tensor, truth: Optional[Tensor], metrics: Optional[dict]) -> dict[str, str]:
        text, md, html = [], [], []
        for v in range(recon.shape[0]):
            rows = self.sentences(recon, truth, metrics, v)
            scored = ""
            if metrics is not None:
                scored = (f": ROUGE-1 {float(metrics['rouge1'][v]):.3f}, ROUGE-2 {float(metrics['rouge2'][v]):.3f}, "
                          f"token accuracy {100 * float(metrics['token_accuracy'][v]):.1f}%")
            text.append(f"victim {v}{scored} (a wrong token is [bracketed]*)")
            md.append(f"**victim {v}**{scored}\n")
            html.append(f"<h3>Victim {v}{_html.escape(scored)}</h3><table><tbody>")
            for name, pieces in rows:
                text.append(f"  {name:<7} " + "".join(f"[{p}]*" if w else p for p, w in pieces))
                md.append(f"- {name}: " + "".join(f"**~~{p}~~**" if w else p for p, w in pieces).replace("\n", " "))
                cells = "".join(f'<span style="color:#cf222e;font-weight:bold;text-decoration:line-through">'
                                f"{_html.escape(p)}</span>" if w else _html.escape(p) for p, w in pieces)
                html.append(f'<tr><td>{_html.escape(name)}</td><td class="text">{cells}</td></tr>')
            html.append("</tbody></table>")
        return {"text": "\n".join(text), "markdown": "\n".join(md), "html": "\n".join(html)}
