"""MT3's released t5x checkpoints: a fake checkpoint directory in t5x's layout (msgpack
``checkpoint`` file, zarr v2 arrays beside it) with random values under MT3's parameter names,
for both model types (``mt3``, ``ismir2021``), loads into MT3Model and transcribes.

The zarr arrays are written by tensorstore (as t5x writes them) where it is installed, and by
hand from the zarr v2 specification (``.zarray`` + chunk files, gzip or raw) in every case."""

from __future__ import annotations

import gzip
import json
import math
import os
import types
from pathlib import Path

import msgpack
import numpy as np
import pretty_midi
import pytest
import soundfile as sf
import torch

from musicgen import transcribe as cli
from musicgen.errors import UserError
from musicgen.transcription.model import MT3Model
from musicgen.transcription.segments import stitch_segments
from musicgen.transcription.t5x_checkpoint import read_t5x_checkpoint
from musicgen.transcription.transcriber import MODEL_TYPES, Transcriber
from musicgen.transcription.vocabulary import EOS_ID, NUM_SPECIAL_IDS, Codec
from tests.fixtures import mt3_source

D_MODEL, HEADS, D_FF, LAYERS, INPUT_DEPTH = 32, 1, 48, 2, 512
VOCAB = {"mt3": 1536, "ismir2021": 1664}
WRITERS = ["by_hand", "tensorstore"]


def mt3_parameter_shapes(vocab: int) -> dict[str, tuple[int, ...]]:
    """MT3's t5x parameter paths (magenta/mt3 ``network.py``) and shapes of a tiny model."""
    inner = HEADS * 64
    attention = {
        "query/kernel": (D_MODEL, inner),
        "key/kernel": (D_MODEL, inner),
        "value/kernel": (D_MODEL, inner),
        "out/kernel": (inner, D_MODEL),
    }
    mlp = {
        "mlp/wi_0/kernel": (D_MODEL, D_FF),
        "mlp/wi_1/kernel": (D_MODEL, D_FF),
        "mlp/wo/kernel": (D_FF, D_MODEL),
    }
    shapes = {
        "encoder/continuous_inputs_projection/kernel": (INPUT_DEPTH, D_MODEL),
        "encoder/encoder_norm/scale": (D_MODEL,),
        "decoder/token_embedder/embedding": (vocab, D_MODEL),
        "decoder/decoder_norm/scale": (D_MODEL,),
        "decoder/logits_dense/kernel": (D_MODEL, vocab),
    }
    for i in range(LAYERS):
        enc, dec = f"encoder/layers_{i}/", f"decoder/layers_{i}/"
        shapes[enc + "pre_attention_layer_norm/scale"] = (D_MODEL,)
        shapes[enc + "pre_mlp_layer_norm/scale"] = (D_MODEL,)
        shapes.update({enc + "attention/" + k: v for k, v in attention.items()})
        shapes.update({enc + k: v for k, v in mlp.items()})
        for norm in ("pre_self_attention_layer_norm", "pre_cross_attention_layer_norm"):
            shapes[dec + norm + "/scale"] = (D_MODEL,)
        shapes[dec + "pre_mlp_layer_norm/scale"] = (D_MODEL,)
        for block in ("self_attention", "encoder_decoder_attention"):
            shapes.update({dec + block + "/" + k: v for k, v in attention.items()})
        shapes.update({dec + k: v for k, v in mlp.items()})
    return shapes


def distinct_params(vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    """float32 arrays whose values are all distinct, over all arrays: a permutation of an even
    grid in [-0.3, 0.3], plus 1 for the norm scales."""
    shapes = mt3_parameter_shapes(vocab)
    total = sum(math.prod(s) for s in shapes.values())
    grid = np.random.default_rng(seed).permutation(np.linspace(-0.3, 0.3, total))
    params, at = {}, 0
    for path, shape in shapes.items():
        values = grid[at : at + math.prod(shape)].reshape(shape)
        at += values.size
        params[path] = (values + path.endswith("scale")).astype(np.float32)
    flat = np.concatenate([v.ravel() for v in params.values()])
    assert len(np.unique(flat)) == len(flat)
    return params


def _pack(obj: object) -> msgpack.ExtType:
    """flax's msgpack extension for numpy arrays (1) and numpy scalars (3)."""
    array = np.asarray(obj)
    code = 1 if isinstance(obj, np.ndarray) else 3
    payload = msgpack.packb((array.shape, array.dtype.name, array.tobytes("C")), use_bin_type=True)
    return msgpack.ExtType(code, payload)


def _write_zarr_by_hand(directory: Path, array: np.ndarray, compress: bool) -> None:
    """A zarr v2 array as its specification lays it out: edge chunks stored whole."""
    chunks = [max(1, (n + 2) // 3) for n in array.shape]  # 3 chunks per axis, ragged edges
    directory.mkdir(parents=True)
    meta = {
        "zarr_format": 2,
        "shape": list(array.shape),
        "chunks": chunks,
        "dtype": "<f4",
        "compressor": {"id": "gzip", "level": 1} if compress else None,
        "fill_value": None,
        "order": "C",
        "filters": None,
    }
    (directory / ".zarray").write_text(json.dumps(meta))
    grid = [-(-n // c) for n, c in zip(array.shape, chunks, strict=True)]
    for index in np.ndindex(*grid):
        block = np.zeros(chunks, dtype="<f4")
        part = array[tuple(slice(i * c, (i + 1) * c) for i, c in zip(index, chunks, strict=True))]
        block[tuple(slice(0, n) for n in part.shape)] = part
        data = block.tobytes()
        (directory / ".".join(map(str, index))).write_bytes(
            gzip.compress(data) if compress else data
        )


def _write_zarr_tensorstore(directory: Path, array: np.ndarray) -> None:
    ts = pytest.importorskip("tensorstore")
    spec = {
        "driver": "zarr",
        "kvstore": {"driver": "file", "path": str(directory)},
        "metadata": {
            "compressor": {"id": "gzip"},
            "shape": list(array.shape),
            "chunks": [max(1, (n + 1) // 2) for n in array.shape],
            "dtype": "<f4",
        },
    }
    ts.open(spec, create=True).result().write(array).result()


def write_t5x_checkpoint(
    directory: Path, params: dict[str, np.ndarray], writer: str, version: int = 3
) -> Path:
    """A t5x checkpoint directory: 1-D parameters inside the msgpack file, the others as zarr
    arrays beside it referenced by tensorstore specs (t5x's current spec by tensorstore; by
    hand alternately the current and the older GCS spec with a top-level path, gzip or raw);
    Adafactor-like optimizer state and a step counter, which the reader skips. Version 0
    files hold the optimizer tree at the top, later ones under ``optimizer``."""
    directory.mkdir(parents=True, exist_ok=True)
    target: dict = {}
    for i, (path, array) in enumerate(params.items()):
        *scopes, leaf = path.split("/")
        node = target
        for scope in scopes:
            node = node.setdefault(scope, {})
        if array.ndim == 1:
            node[leaf] = array
            continue
        name = "target." + path.replace("/", ".")
        if writer == "tensorstore":
            _write_zarr_tensorstore(directory / name, array)
            node[leaf] = {
                "driver": "zarr",
                "dtype": "float32",
                "kvstore": {"driver": "file", "path": name},
            }
        else:
            _write_zarr_by_hand(directory / name, array, compress=i % 2 == 0)
            node[leaf] = (
                {"driver": "zarr", "kvstore": {"driver": "file", "path": name}}
                if i % 4 < 2
                else {"driver": "zarr", "kvstore": {"driver": "gcs", "bucket": "b"}, "path": name}
            )
    state = {
        "step": np.int32(1_000_000),
        "param_states": {
            "decoder": {"decoder_norm": {"scale": {"v": np.ones(D_MODEL, np.float32)}}}
        },
    }
    tree = {"target": target, "state": state}
    if version:
        tree = {"version": version, "optimizer": tree}
    (directory / "checkpoint").write_bytes(msgpack.packb(tree, default=_pack, use_bin_type=True))
    return directory


@pytest.fixture(scope="module", params=[(k, w) for k in VOCAB for w in WRITERS], ids=str)
def checkpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    model_type, writer = request.param
    params = distinct_params(VOCAB[model_type])
    directory = tmp_path_factory.mktemp(f"{model_type}_{writer}") / "checkpoint_1000000"
    return model_type, write_t5x_checkpoint(directory, params, writer), params


def test_reader_returns_every_array_of_target(checkpoint) -> None:
    _, directory, params = checkpoint
    loaded = read_t5x_checkpoint(directory)
    assert set(loaded) == {"target/" + k for k in params}
    for path, array in params.items():
        np.testing.assert_array_equal(loaded["target/" + path], array, err_msg=path)


def test_version_0_layout(tmp_path: Path) -> None:
    params = distinct_params(1536)
    loaded = read_t5x_checkpoint(write_t5x_checkpoint(tmp_path, params, "by_hand", version=0))
    assert set(loaded) == {"target/" + k for k in params}
    for path, array in params.items():
        np.testing.assert_array_equal(loaded["target/" + path], array, err_msg=path)


def test_every_tensor_lands_where_it_belongs(checkpoint) -> None:
    """Each torch tensor equals exactly one t5x array (kernels transposed), each array is used
    once, and the sizes come from the shapes."""
    model_type, directory, params = checkpoint
    model = MT3Model.from_t5x(directory)
    cfg = model.config
    assert (cfg.vocab_size, cfg.d_model, cfg.num_heads, cfg.d_ff) == (
        VOCAB[model_type],
        D_MODEL,
        HEADS,
        D_FF,
    )
    assert (cfg.num_encoder_layers, cfg.num_decoder_layers, cfg.input_depth) == (
        LAYERS,
        LAYERS,
        INPUT_DEPTH,
    )
    by_first_value = {float(a.ravel()[0]): path for path, a in params.items()}
    used = set()
    for name, tensor in model.state_dict().items():
        value = tensor.numpy()
        value = value.T if value.ndim == 2 and name != "decoder.token_embedder.weight" else value
        path = by_first_value[float(value.ravel()[0])]
        np.testing.assert_array_equal(value, params[path], err_msg=f"{name} <- {path}")
        assert path.rsplit("/", 2)[-2] == name.rsplit(".", 2)[-2], (name, path)
        used.add(path)
    assert used == set(params)


def _rms_norm(x: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return x / np.sqrt((x**2).mean(-1, keepdims=True) + 1e-6) * scale


def _attention(
    p: dict, prefix: str, x: np.ndarray, context: np.ndarray, causal: bool
) -> np.ndarray:
    """T5 attention without the 1/sqrt(d) factor, on ``(L, d_model)`` inputs."""
    q, k, v = (
        (inp @ p[prefix + n + "/kernel"]).reshape(len(inp), HEADS, 64)
        for n, inp in (("query", x), ("key", context), ("value", context))
    )
    logits = np.einsum("qhd,khd->hqk", q, k)
    if causal:
        logits = np.where(np.tril(np.ones(logits.shape[1:], dtype=bool)), logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("hqk,khd->qhd", weights, v).reshape(len(x), -1) @ p[prefix + "out/kernel"]


def _mlp(p: dict, prefix: str, x: np.ndarray) -> np.ndarray:
    h = x @ p[prefix + "wi_0/kernel"]
    gelu = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3)))
    return (gelu * (x @ p[prefix + "wi_1/kernel"])) @ p[prefix + "wo/kernel"]


def _positions(length: int) -> np.ndarray:
    """MT3's fixed sinusoidal table (``layers.sinusoidal``): sines, then cosines."""
    half = D_MODEL // 2
    rates = np.exp(np.arange(half) * -np.log(10_000.0) / (half - 1))
    angles = np.arange(length)[:, None] * rates
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def numpy_logits(
    params: dict[str, np.ndarray], frames: np.ndarray, tokens: np.ndarray
) -> np.ndarray:
    """MT3's T5.1.1 forward in float64 straight from the t5x arrays, one sequence."""
    p = {k: v.astype(np.float64) for k, v in params.items()}
    x = frames @ p["encoder/continuous_inputs_projection/kernel"] + _positions(len(frames))
    for i in range(LAYERS):
        pre = f"encoder/layers_{i}/"
        h = _rms_norm(x, p[pre + "pre_attention_layer_norm/scale"])
        x = x + _attention(p, pre + "attention/", h, h, causal=False)
        x = x + _mlp(p, pre + "mlp/", _rms_norm(x, p[pre + "pre_mlp_layer_norm/scale"]))
    encoded = _rms_norm(x, p["encoder/encoder_norm/scale"])
    y = p["decoder/token_embedder/embedding"][tokens] + _positions(len(tokens))
    for i in range(LAYERS):
        pre = f"decoder/layers_{i}/"
        h = _rms_norm(y, p[pre + "pre_self_attention_layer_norm/scale"])
        y = y + _attention(p, pre + "self_attention/", h, h, causal=True)
        h = _rms_norm(y, p[pre + "pre_cross_attention_layer_norm/scale"])
        y = y + _attention(p, pre + "encoder_decoder_attention/", h, encoded, causal=False)
        y = y + _mlp(p, pre + "mlp/", _rms_norm(y, p[pre + "pre_mlp_layer_norm/scale"]))
    return _rms_norm(y, p["decoder/decoder_norm/scale"]) @ p["decoder/logits_dense/kernel"]


def test_logits_equal_a_direct_computation_with_the_arrays(checkpoint) -> None:
    model_type, directory, params = checkpoint
    model = MT3Model.from_t5x(directory).eval()
    rng = np.random.default_rng(1)
    frames = rng.standard_normal((12, INPUT_DEPTH)).astype(np.float32)
    tokens = rng.integers(0, VOCAB[model_type], size=7)
    with torch.no_grad():
        logits = model(torch.from_numpy(frames)[None], torch.from_numpy(tokens)[None])[0].numpy()
    expected = numpy_logits(params, frames.astype(np.float64), tokens)
    assert np.abs(expected).max() > 1.0  # not a trivially small output
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


def test_model_type_follows_the_checkpoint(checkpoint) -> None:
    model_type, directory, _ = checkpoint
    transcriber = Transcriber.from_pretrained(directory)
    assert transcriber.model_type == MODEL_TYPES[model_type]
    assert Transcriber.from_checkpoint(directory / "checkpoint").model_type.name == model_type
    assert Transcriber.from_pretrained(directory, model_type="mt3").model_type.name == "mt3"
    expected = (512, False, 127, 1664) if model_type == "ismir2021" else (256, True, 1, 1536)
    if model_type == "mt3":  # too few ids for the piano codec
        with pytest.raises(UserError, match="smaller than"):
            Transcriber.from_pretrained(directory, model_type="ismir2021")
    else:  # constrained decoding in the piano token format: the decoder drops nothing and
        # rejects at most note-offs of pitches the previous segment left silent
        constrained = Transcriber.from_pretrained(directory, grammar="flat", max_length=48)
        decoded = constrained.transcribe_notes(
            np.random.default_rng(0).standard_normal(70_000), 16000
        )
        assert decoded.dropped == 0 and decoded.invalid <= 128
    kind = transcriber.model_type
    assert (
        kind.segment_frames,
        kind.ties,
        kind.codec.num_velocity_bins,
        kind.codec.vocab_size,
    ) == expected


def test_piano_decoding_has_127_velocities_and_no_ties() -> None:
    """ismir2021's codec: 1514 codec ids (1517 with PAD/EOS/UNK); a note carries on across
    segments with no tie section, and a ``tie`` there is invalid."""
    codec = MODEL_TYPES["ismir2021"].codec
    assert codec.num_codec_ids + NUM_SPECIAL_IDS == 1517 and codec.vocab_size == 1664
    assert codec == Codec(num_velocity_bins=127)

    def ids(*events: tuple[str, int]) -> list[int]:
        return [codec.encode_event(k, v) + NUM_SPECIAL_IDS for k, v in events] + [EOS_ID]

    first = ids(("velocity", 80), ("pitch", 60))
    second = ids(("tie", 0), ("shift", 50), ("velocity", 0), ("pitch", 60))
    decoded = stitch_segments([first, second], [0.0, 4.09], codec=codec, ties=False)
    assert decoded.invalid == 1
    np.testing.assert_allclose(decoded.notes[:, :4], [[0.0, 4.59, 60, 80]])


class _Notes(list):
    """``NoteSequence.notes`` with protobuf's ``add``."""

    def add(self, **fields: object) -> None:
        self.append(types.SimpleNamespace(instrument=0, **fields))


class _Sequence:
    def __init__(self, **kwargs: object) -> None:
        self.notes, self.total_time = _Notes(), 0.0


def _random_segment(rng: np.random.Generator, codec: Codec) -> list[int]:
    """Codec ids of a plausible-to-garbled piano segment: shifts, velocities (many note-offs),
    pitches in one octave, and a few ties, drums and programs."""
    kinds = ["shift", "velocity", "pitch", "tie", "drum", "program"]
    ids, step = [], 0
    for kind in rng.choice(kinds, size=80, p=[0.25, 0.25, 0.44, 0.02, 0.02, 0.02]):
        if kind == "shift":
            step = max(1, step + int(rng.integers(-3, 40)))
            value = step
        elif kind == "velocity":
            value = 0 if rng.random() < 0.4 else int(rng.integers(1, 128))
        elif kind == "tie":
            value = 0
        else:
            value = int(rng.integers(55, 66)) if kind != "program" else int(rng.integers(0, 3))
        ids.append(codec.encode_event(str(kind), value))
    return ids


@pytest.mark.skipif(
    not os.environ.get("MT3_SOURCE"),
    reason="set MT3_SOURCE to a magenta/mt3 checkout to run MT3's own code",
)
def test_piano_codec_and_decoding_match_mt3s_own_code() -> None:
    """MT3's ``build_codec`` with 127 velocity bins and its note decoding without ties
    (``NoteEncodingSpec``: ``decode_events`` + ``decode_note_event`` per segment in time order,
    no tie section, then ``flush_note_decoding_state``) give our ids, notes and counts."""
    mt3 = mt3_source.load(Path(os.environ["MT3_SOURCE"]))
    mt3.note_sequences.note_seq.NoteSequence = _Sequence
    theirs_codec = mt3.vocabularies.build_codec(
        mt3.vocabularies.VocabularyConfig(num_velocity_bins=127)
    )
    codec = MODEL_TYPES["ismir2021"].codec
    assert theirs_codec.num_classes == codec.num_codec_ids
    for i in range(codec.num_codec_ids):
        event = theirs_codec.decode_event_index(i)
        assert (event.type, event.value) == codec.decode_event(i)
    rng = np.random.default_rng(21)
    starts = [0.0, 4.09, 8.19]
    for _ in range(50):
        segments = [_random_segment(rng, codec) for _ in starts]
        state = mt3.note_sequences.NoteDecodingState()
        invalid = dropped = 0
        for i, (tokens, start) in enumerate(zip(segments, starts, strict=True)):
            max_time = starts[i + 1] if i + 1 < len(starts) else None
            counts = mt3.run_length_encoding.decode_events(
                state, tokens, start, max_time, theirs_codec, mt3.note_sequences.decode_note_event
            )
            invalid, dropped = invalid + counts[0], dropped + counts[1]
        ns = mt3.note_sequences.flush_note_decoding_state(state)
        expected = sorted(
            (n.start_time, n.end_time, n.pitch, n.velocity, n.program, int(n.is_drum))
            for n in ns.notes
        )
        model_ids = [[t + NUM_SPECIAL_IDS for t in seg] + [EOS_ID] for seg in segments]
        ours = stitch_segments(model_ids, starts, codec=codec, ties=False)
        got = sorted(tuple(row) for row in ours.notes[:, :6].tolist())
        assert (ours.invalid, ours.dropped) == (invalid, dropped)
        assert len(got) == len(expected)
        np.testing.assert_allclose(np.array(got, ndmin=2), np.array(expected, ndmin=2), atol=1e-6)


@pytest.mark.parametrize("model_type", list(VOCAB))
def test_cli_transcribes_with_a_t5x_checkpoint(model_type: str, tmp_path: Path) -> None:
    directory = write_t5x_checkpoint(
        tmp_path / "ckpt", distinct_params(VOCAB[model_type]), "by_hand"
    )
    wav, mid = tmp_path / "in.wav", tmp_path / "out.mid"
    sf.write(wav, np.random.default_rng(0).uniform(-0.5, 0.5, 12_000).astype(np.float32), 16_000)
    assert cli.main([str(wav), str(mid), "--checkpoint", str(directory), "--max-length", "24"]) == 0
    assert mid.is_file()
    pretty_midi.PrettyMIDI(str(mid))


def test_bfloat16_and_absolute_paths(tmp_path: Path) -> None:
    """bfloat16 arrays (in the msgpack file and as zarr) read as float32; a spec whose path
    (here a kvstore URL) was absolute where it was written finds the folder of that name beside
    the file."""
    values = np.array([[1.5, -2.0, 0.15625], [3.0, 0.0, -0.5]], dtype=np.float32)
    bits = (values.view(np.uint32) >> 16).astype("<u2")
    array_dir = tmp_path / "target.b"
    array_dir.mkdir()
    meta = {"zarr_format": 2, "shape": [2, 3], "chunks": [2, 3], "dtype": "bfloat16"}
    (array_dir / ".zarray").write_text(json.dumps({**meta, "compressor": None, "order": "C"}))
    (array_dir / "0.0").write_bytes(bits.tobytes())
    inline = msgpack.ExtType(1, msgpack.packb(((2, 3), "bfloat16", bits.tobytes())))
    spec = {"driver": "zarr", "kvstore": "file:///elsewhere/target.b/"}
    tree = {"version": 3, "optimizer": {"target": {"a": inline, "b": spec}}}
    (tmp_path / "checkpoint").write_bytes(msgpack.packb(tree, use_bin_type=True))
    params = read_t5x_checkpoint(tmp_path)
    for name in ("target/a", "target/b"):
        assert params[name].dtype == np.float32
        np.testing.assert_array_equal(params[name], values)


def _break(directory: Path, how: str) -> None:
    array = directory / "target.decoder.logits_dense.kernel"
    if how == "garbage checkpoint file":
        (directory / "checkpoint").write_bytes(b"\xc1 not msgpack")
    elif how == "truncated checkpoint file":
        data = (directory / "checkpoint").read_bytes()
        (directory / "checkpoint").write_bytes(data[: len(data) // 2])
    elif how == "missing array":
        for file in array.iterdir():
            file.unlink()
        array.rmdir()
    elif how == "unsupported compressor":
        meta = json.loads((array / ".zarray").read_text())
        (array / ".zarray").write_text(json.dumps({**meta, "compressor": {"id": "blosc"}}))
    elif how == "corrupt chunk":
        meta = json.loads((array / ".zarray").read_text())
        (array / ".zarray").write_text(json.dumps({**meta, "compressor": {"id": "gzip"}}))
        (array / "0.0").write_bytes(b"\x1f\x8b broken")
    elif how == "wrong shape":
        meta = json.loads((array / ".zarray").read_text())
        (array / ".zarray").write_text(json.dumps({**meta, "shape": [7, 3]}))
    elif how == "no checkpoint file":
        (directory / "checkpoint").unlink()


@pytest.mark.parametrize(
    "how",
    [
        "garbage checkpoint file",
        "truncated checkpoint file",
        "missing array",
        "unsupported compressor",
        "corrupt chunk",
        "wrong shape",
        "no checkpoint file",
    ],
)
def test_a_broken_checkpoint_is_one_error_line(how: str, tmp_path: Path, capsys) -> None:
    directory = write_t5x_checkpoint(tmp_path / "ckpt", distinct_params(1536), "by_hand")
    _break(directory, how)
    wav = tmp_path / "in.wav"
    sf.write(wav, np.zeros(4000, dtype=np.float32), 16_000)
    with pytest.raises(UserError):
        MT3Model.from_t5x(directory)
    assert cli.main([str(wav), str(tmp_path / "out.mid"), "--checkpoint", str(directory)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
