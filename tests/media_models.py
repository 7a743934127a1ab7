"""Tiny random speech and image models, built in the tests (no downloads), and test audio.

* ``make_whisper_dir``: a ``WhisperForConditionalGeneration`` with a few hundred
  thousand parameters, its feature extractor, a byte-level tokenizer holding
  Whisper's special tokens (three languages, the two tasks, timestamps), and
  a generation config that ``generate`` understands.
* ``make_vits_dir``: a ``VitsModel`` and a character tokenizer.
* ``make_diffusion_dir``: a diffusers ``StableDiffusionPipeline`` of a tiny
  UNet, VAE and CLIP text encoder, saved as safetensors.
* ``speak``: speech synthesised by ``espeak-ng`` and converted by ``sox``
  (Debian packages; ``.ci/run`` installs them).

Weights are random but seeded, so every build of a directory is the same model.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from maas.registry.schemas import VersionInfo

LANGUAGES = ("en", "fr", "de")
N_MELS = 80
# Kept short: a random model rarely emits end-of-text, so it decodes to this length.
MAX_TARGET_POSITIONS = 24


def _byte_level_tokenizer(special: list[str]) -> object:
    """A byte-level BPE tokenizer (no merges: one token per byte) plus ``special`` tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    alphabet = list(bytes_to_unicode().values())  # 256 printable stand-ins for the bytes
    vocab = {char: i for i, char in enumerate(alphabet)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def whisper_special_tokens() -> list[str]:
    timestamps = [f"<|{i * 0.02:.2f}|>" for i in range(1501)]
    return [
        "<|endoftext|>",
        "<|startoftranscript|>",
        *[f"<|{code}|>" for code in LANGUAGES],
        "<|translate|>",
        "<|transcribe|>",
        "<|startoflm|>",
        "<|startofprev|>",
        "<|nospeech|>",
        "<|notimestamps|>",
        *timestamps,
    ]


def make_whisper_dir(path: Path) -> Path:
    import torch
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )

    path.mkdir(parents=True, exist_ok=True)
    special = whisper_special_tokens()
    tokenizer = WhisperTokenizer(
        tokenizer_object=_byte_level_tokenizer(special),
        unk_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=MAX_TARGET_POSITIONS,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": special[1:]})
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in special}
    eot = ids["<|endoftext|>"]
    vocab_size = len(tokenizer)
    feature_extractor = WhisperFeatureExtractor(feature_size=N_MELS)
    WhisperProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer).save_pretrained(path)

    torch.manual_seed(0)
    config = WhisperConfig(
        vocab_size=vocab_size,
        num_mel_bins=N_MELS,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_source_positions=1500,
        max_target_positions=MAX_TARGET_POSITIONS,
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        decoder_start_token_id=ids["<|startoftranscript|>"],
        suppress_tokens=[],
        begin_suppress_tokens=[eot],
    )
    model = WhisperForConditionalGeneration(config)
    _make_it_listen(model, tokenizer)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=ids["<|startoftranscript|>"],
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        max_length=MAX_TARGET_POSITIONS,
        is_multilingual=True,
        lang_to_id={f"<|{code}|>": ids[f"<|{code}|>"] for code in LANGUAGES},
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        no_timestamps_token_id=ids["<|notimestamps|>"],
        prev_sot_token_id=ids["<|startofprev|>"],
        max_initial_timestamp_index=50,
        suppress_tokens=[],
        begin_suppress_tokens=[eot],
    )
    model.save_pretrained(path, safe_serialization=True)
    return path


def _make_it_listen(model: object, tokenizer: object) -> None:
    """Reshape random weights so the text depends on the audio and reads as letters.

    At init scale a one-layer decoder attends almost evenly over the 1500 encoder
    positions (mostly padding), so every input gives the same text. Sharper
    cross-attention and a stronger encoder input make the transcript follow the
    audio; only letters and the space may be emitted as text (other bytes would
    decode to replacement characters), and the special tokens start out neutral.
    """
    import torch

    allowed = [tokenizer.convert_tokens_to_ids(c) for c in "abcdefghijklmnopqrstuvwxyzĠ"]  # type: ignore[attr-defined]
    with torch.no_grad():
        decoder = model.model.decoder  # type: ignore[attr-defined]
        embed = decoder.embed_tokens.weight  # (vocab, d_model), tied to the output projection
        text = torch.zeros(embed.shape[0], dtype=torch.bool)
        text[allowed] = True
        text[256:] = True
        embed[~text] = 0.0
        first_special = 256
        embed[first_special : first_special + 11] = 0.0  # eot, sot, languages, tasks, ...
        embed[first_special + 11 :] *= 0.3  # timestamps
        cross = decoder.layers[0].encoder_attn
        cross.out_proj.weight *= 10
        cross.q_proj.weight *= 30
        cross.k_proj.weight *= 30
        encoder = model.model.encoder  # type: ignore[attr-defined]
        encoder.conv1.weight *= 10
        encoder.embed_positions.weight *= 0.01


def make_vits_dir(path: Path) -> Path:
    import torch
    from transformers import VitsConfig, VitsModel, VitsTokenizer

    path.mkdir(parents=True, exist_ok=True)
    characters = list(" abcdefghijklmnopqrstuvwxyz',.?!")
    vocab = {"<pad>": 0, **{c: i + 1 for i, c in enumerate(characters)}}
    vocab_file = path / "vocab.json"
    vocab_file.write_text(json.dumps(vocab), encoding="utf-8")
    tokenizer = VitsTokenizer(str(vocab_file), add_blank=True, normalize=True, phonemize=False)
    tokenizer.save_pretrained(path)
    torch.manual_seed(0)
    config = VitsConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        ffn_dim=32,
        flow_size=16,
        spectrogram_bins=17,
        upsample_initial_channel=16,
        # 256 samples per spectrogram frame, as MMS-TTS: durations near speech's
        upsample_rates=[8, 8, 4],
        upsample_kernel_sizes=[16, 16, 8],
        resblock_kernel_sizes=[3],
        resblock_dilation_sizes=[[1, 3]],
        prior_encoder_num_flows=1,
        prior_encoder_num_wavenet_layers=1,
        posterior_encoder_num_wavenet_layers=1,
        duration_predictor_num_flows=1,
        duration_predictor_filter_channels=16,
        depth_separable_num_layers=1,
        sampling_rate=16_000,
    )
    model = VitsModel(config)
    model.save_pretrained(path, safe_serialization=True)
    return path


def _clip_tokenizer_files(path: Path) -> None:
    """A CLIP tokenizer with one token per lower-case letter (plus its end-of-word form)."""
    from transformers import CLIPTokenizer

    path.mkdir(parents=True, exist_ok=True)
    letters = list("abcdefghijklmnopqrstuvwxyz")
    tokens = ["<|startoftext|>", "<|endoftext|>", *letters, *[f"{c}</w>" for c in letters]]
    (path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (path / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt")).save_pretrained(path)


def make_diffusion_dir(path: Path) -> Path:
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    path.mkdir(parents=True, exist_ok=True)
    tokenizer_dir = path.parent / (path.name + "-tokenizer")
    _clip_tokenizer_files(tokenizer_dir)
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=2,
        norm_num_groups=4,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=16,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    tokenizer.model_max_length = 16
    pipeline = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=DDIMScheduler(clip_sample=False, steps_offset=1),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(path, safe_serialization=True)
    shutil.rmtree(tokenizer_dir)
    return path


def require_speech_tools() -> None:
    """Skip (failing under CI, tests/conftest.py) without espeak-ng and sox."""
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (apt-get install espeak-ng sox)")


def speak(text: str, path: Path, *, seconds: float | None = None) -> Path:
    """``text`` spoken by espeak-ng into a WAV at ``path``; padded with silence (sox) to
    ``seconds`` when given. Other formats: ``convert``."""
    require_speech_tools()
    raw = path.with_name(path.stem + "-espeak.wav")
    subprocess.run(["espeak-ng", "-w", str(raw), text], check=True, capture_output=True)
    if seconds is None:
        subprocess.run(["sox", str(raw), "-r", "16000", str(path)], check=True)
    else:
        subprocess.run(
            [
                "sox",
                str(raw),
                "-r",
                "16000",
                str(path),
                "pad",
                "0",
                str(seconds),
                "trim",
                "0",
                str(seconds),
            ],
            check=True,
        )
    raw.unlink()
    return path


def convert(wav: Path, suffix: str) -> Path:
    """The same audio in another container (``.ogg``, ``.mp3``, ``.flac``) by sox."""
    out = wav.with_suffix(suffix)
    subprocess.run(["sox", str(wav), str(out)], check=True, capture_output=True)
    return out


def repeat_to(wav: Path, seconds: float, out: Path) -> Path:
    """``wav`` repeated until it lasts ``seconds`` (a long recording for chunking)."""
    duration = float(
        subprocess.run(["soxi", "-D", str(wav)], check=True, capture_output=True, text=True).stdout
    )
    repeats = max(0, int(seconds / max(duration, 0.1)))
    subprocess.run(
        ["sox", str(wav), str(out), "repeat", str(repeats), "trim", "0", str(seconds)],
        check=True,
        capture_output=True,
    )
    return out


_BUILT: dict[str, Path] = {}


def built(name: str, factory: pytest.TempPathFactory) -> Path:
    """The model directory ``name`` (whisper, vits, diffusion), built once per test session."""
    if name not in _BUILT:
        builder = {
            "whisper": make_whisper_dir,
            "vits": make_vits_dir,
            "diffusion": make_diffusion_dir,
        }[name]
        _BUILT[name] = builder(factory.mktemp("media-models") / name)
    return _BUILT[name]


def version_info(model_dir: Path, task: str, fmt: str = "hf", name: str = "m") -> VersionInfo:
    """A ready version for a runtime built straight from a directory (no registry)."""
    return VersionInfo(
        model=name,
        version=1,
        task=task,
        format=fmt,
        digest="sha256:" + "0" * 64,
        size_bytes=sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file()),
        status="ready",
        description="",
        metadata={},
        metrics={},
        params={},
        tags={},
        parent=None,
        job_id=None,
        created_at=datetime.now(UTC),
        created_by=None,
        aliases=[],
    )
