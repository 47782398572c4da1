"""KL divergence between the label distributions of reference and generated audio (MusicGen's KL).

As AudioCraft's ``PasstKLDivergenceMetric``: an AudioSet classifier (PaSST) sees each clip at
32 kHz mono in ``segment_seconds`` chunks (chunks of ``min_seconds`` or less are dropped); the
softmax of its logits, averaged over a chunk, is one label distribution; ``kl_pq`` is
``KL(reference || generated)`` summed over classes (``eps`` added to the generated probabilities)
and averaged over chunks; ``kl_qp`` is the reverse. The table reports ``kl_pq``.

The classifier runs only when its weights are given (``passt-s-f128-p16-s10-ap.476-swa.pt``) and
``hear21passt`` is installed (``pip install -e .[eval]``); otherwise :meth:`KLDivergence.compute`
returns ``value=None`` and the reason, for the table.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from musicgen.audio import convert_audio
from musicgen.errors import UserError

PASST_FILE = "passt-s-f128-p16-s10-ap.476-swa.pt"
PASST_URL = "https://github.com/kkoutini/PaSST/releases/download/v0.0.1-audioset/"
PASST_RATE = 32000
PASST_ARCH = "passt_s_swa_p16_128_ap476"
EPS = 1e-6


def kl_divergence(
    pred_probs: torch.Tensor, target_probs: torch.Tensor, eps: float = EPS
) -> torch.Tensor:
    """``(B,)`` ``KL(target || pred)`` of ``(B, classes)`` distributions (``eps`` in the log)."""
    return F.kl_div((pred_probs + eps).log(), target_probs, reduction="none").sum(dim=-1)


@dataclass(frozen=True)
class KLResult:
    """``value`` is ``kl_pq`` (``None`` when not computed; ``note`` says why) over ``n`` chunks."""

    value: float | None
    kl_qp: float | None
    n: int
    note: str = ""


class KLDivergence:
    """Accumulates the KL of classifier label distributions over (generated, reference) pairs.

    ``classifier`` maps ``(B, T)`` mono audio at ``sample_rate`` to ``(B, classes)`` logits;
    ``None`` makes an empty slot whose result is ``note``.
    """

    def __init__(
        self,
        classifier: Callable[[torch.Tensor], torch.Tensor] | None,
        sample_rate: int = PASST_RATE,
        segment_seconds: float = 10.0,
        note: str = "",
        min_seconds: float = 0.15,
    ) -> None:
        self.classifier = classifier
        self.sample_rate = sample_rate
        self.segment = round(segment_seconds * sample_rate)
        self.min_samples = round(min_seconds * sample_rate)
        self.note = note
        self.kl_pq_sum = 0.0
        self.kl_qp_sum = 0.0
        self.n = 0

    @property
    def available(self) -> bool:
        return self.classifier is not None

    @torch.no_grad()
    def _label_distribution(self, wav: torch.Tensor, sample_rate: int) -> torch.Tensor | None:
        """``(chunks, classes)`` softmax per chunk of one ``(C, T)`` clip; ``None`` without chunks."""
        mono = convert_audio(wav.float(), sample_rate, self.sample_rate, 1)[0]
        chunks = [c for c in mono.split(self.segment) if c.shape[0] > self.min_samples]
        if not chunks:
            return None
        return torch.stack([self.classifier(c[None]).softmax(dim=-1).mean(dim=0) for c in chunks])

    def update(
        self,
        preds: torch.Tensor,
        targets: torch.Tensor,
        sample_rate: int,
        sizes: list[int] | None = None,
    ) -> None:
        """Add ``(B, C, T)`` generated and reference audio; ``sizes`` trims each item (samples)."""
        if self.classifier is None:
            return
        if preds.shape[0] != targets.shape[0]:
            raise ValueError(
                f"batch sizes differ: {preds.shape[0]} generated vs {targets.shape[0]} reference"
            )
        for i in range(preds.shape[0]):
            size = sizes[i] if sizes is not None else min(preds.shape[-1], targets.shape[-1])
            p = self._label_distribution(preds[i, :, :size], sample_rate)
            q = self._label_distribution(targets[i, :, :size], sample_rate)
            if p is None or q is None:
                continue
            p, q = p.double(), q.double()
            self.kl_pq_sum += float(kl_divergence(p, q).sum())
            self.kl_qp_sum += float(kl_divergence(q, p).sum())
            self.n += len(p)

    def compute(self) -> KLResult:
        if self.classifier is None:
            return KLResult(None, None, 0, self.note)
        if self.n == 0:
            raise ValueError("KL divergence of zero clips: update with some audio first")
        return KLResult(self.kl_pq_sum / self.n, self.kl_qp_sum / self.n, self.n, self.note)


class QuietClassifier:
    """Calls ``model`` on its own device, without gradients and with its prints (PaSST's first
    forward) silenced."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    @torch.no_grad()
    def __call__(self, wav: torch.Tensor) -> torch.Tensor:
        device = next(self.model.parameters()).device
        with contextlib.redirect_stdout(io.StringIO()):
            return self.model(wav.to(device))


def load_passt(weights: str | Path) -> QuietClassifier:
    """PaSST-S (AudioSet, 10 s, logits) from a local checkpoint, as ``hear21passt.base``'s
    ``get_basic_model(mode="logits")`` builds it (its filter adapts the released file)."""
    from hear21passt.models.passt import checkpoint_filter_fn, get_model
    from hear21passt.models.preprocess import AugmentMelSTFT
    from hear21passt.wrapper import PasstBasicWrapper

    mel = AugmentMelSTFT(
        n_mels=128, sr=PASST_RATE, win_length=800, hopsize=320, n_fft=1024, freqm=48, timem=192,
        htk=False, fmin=0.0, fmax=None, norm=1, fmin_aug_range=10, fmax_aug_range=2000,
    )  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        net = get_model(arch=PASST_ARCH, pretrained=False)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    net.load_state_dict(checkpoint_filter_fn(state, net))
    return QuietClassifier(PasstBasicWrapper(mel=mel, net=net, mode="logits").eval())


def build_kl(weights: str | Path | None, hint: str = "kl_weights=PATH") -> KLDivergence:
    """The PaSST KL metric given ``weights`` and an installed hear21passt, else an empty slot."""
    if weights is None:
        return KLDivergence(
            None, note=f"not computed: no PaSST weights (pass {hint} to {PASST_URL}{PASST_FILE})"
        )
    if not Path(weights).is_file():
        raise UserError(f"PaSST weights {weights} do not exist: download {PASST_URL}{PASST_FILE}")
    try:
        model = load_passt(weights)
    except ImportError:
        return KLDivergence(
            None, note="not computed: hear21passt is not installed (pip install -e .[eval])"
        )
    return KLDivergence(model, note="PaSST-S AudioSet label distributions")
