"""Builders for real, small model artifacts used across the suite."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import save_file


def make_hf_dir(root: Path, *, hidden: int = 8, seed: int = 0) -> Path:
    """A Hugging Face style directory: config.json + model.safetensors (real tensors)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    config = {
        "architectures": ["BertForSequenceClassification"],
        "model_type": "bert",
        "hidden_size": hidden,
        "id2label": {"0": "neg", "1": "pos"},
    }
    (root / "config.json").write_text(json.dumps(config))
    save_file(
        {
            "classifier.weight": rng.standard_normal((2, hidden)).astype(np.float32),
            "classifier.bias": np.zeros(2, dtype=np.float32),
        },
        str(root / "model.safetensors"),
    )
    (root / "tokenizer").mkdir(exist_ok=True)
    (root / "tokenizer" / "vocab.txt").write_text("[PAD]\n[UNK]\nhello\nworld\n")
    return root


def make_onnx_file(path: Path) -> Path:
    """A real ONNX graph: y = x @ W + b with W (4, 3)."""
    weight = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3), "W")
    bias = numpy_helper.from_array(np.ones(3, dtype=np.float32), "b")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["y"]),
        ],
        "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        initializer=[weight, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def tar_bytes(files: dict[str, bytes], *, gz: bool = False) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def tar_of_dir(root: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                tar.add(path, arcname=path.relative_to(root).as_posix())
    return buf.getvalue()


def tar_with_symlink(target: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = b"{}"
        info = tarfile.TarInfo("config.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("model.safetensors")
        link.type = tarfile.SYMTYPE
        link.linkname = target
        tar.addfile(link)
    return buf.getvalue()


def zip_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def blob_count(home: Path) -> int:
    root = home / "blobs" / "sha256"
    return sum(1 for p in root.rglob("*") if p.is_file()) if root.exists() else 0


def leftover_temp_files(home: Path) -> list[Path]:
    found: list[Path] = []
    for sub in (home / "tmp", home / "blobs" / "tmp"):
        if sub.exists():
            found.extend(p for p in sub.rglob("*") if not p.name.startswith("ready-"))
    return found


def make_tiny_image_classifier(root: Path) -> Path:
    """A tiny random ViT image classifier saved the Hugging Face way, 32x32 RGB, 10 labels.

    config.json + model.safetensors + preprocessor_config.json (ViT recipe:
    bilinear resize to 32x32, rescale by 1/255, normalise with mean = std = 0.5).
    """
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    root.mkdir(parents=True, exist_ok=True)
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=10,
        id2label={i: f"digit-{i}" for i in range(10)},
        label2id={f"digit-{i}": i for i in range(10)},
    )
    with torch.random.fork_rng():  # seeded weights without touching the global RNG
        torch.manual_seed(0)
        model = ViTForImageClassification(config)
    model.save_pretrained(str(root), safe_serialization=True)
    preprocessor = {
        "image_processor_type": "ViTImageProcessor",
        "do_resize": True,
        "size": {"height": 32, "width": 32},
        "resample": 2,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }
    (root / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return root


CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Model serving with continuous batching streams tokens to many clients.",
    "北京是中国的首都。上海是一座大城市。你好，世界！",
    "Hello world, hello maas. Count: one two three four five six seven.",
]


def make_tiny_llm(root: Path, *, arch: str = "llama", seed: int = 0, chat: bool = True) -> Path:
    """A tiny random decoder (Llama or GPT-2) with a byte-level BPE tokenizer, saved HF-style.

    The tokenizer is trained here from a few sentences (no downloads); byte-level
    BPE splits Chinese characters over several tokens, which the streaming tests need.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    root.mkdir(parents=True, exist_ok=True)
    specials = ["<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="<|end|>",
        model_max_length=256,
    )
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(root)
    vocab = fast.vocab_size
    eos = fast.convert_tokens_to_ids("<|end|>")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if arch == "llama":
            config = LlamaConfig(
                vocab_size=vocab,
                hidden_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                intermediate_size=128,
                max_position_embeddings=256,
                bos_token_id=1,
                eos_token_id=eos,
                pad_token_id=0,
            )
            model: torch.nn.Module = LlamaForCausalLM(config)
        else:
            config = GPT2Config(
                vocab_size=vocab,
                n_embd=64,
                n_layer=2,
                n_head=4,
                n_positions=256,
                bos_token_id=1,
                eos_token_id=eos,
                pad_token_id=0,
            )
            model = GPT2LMHeadModel(config)
        model.save_pretrained(root, safe_serialization=True)  # type: ignore[operator]
    return root


TINY_BERT_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "good", "bad", "film", "day"]


def make_tiny_bert(
    root: Path, *, classifier: bool, labels: tuple[str, ...] = ("neg", "pos")
) -> Path:
    """A random one-layer BERT, hidden size 16: an encoder, or a classifier with its head.

    Saved the Hugging Face way with a WordPiece tokenizer from a ten-word vocabulary.
    """
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizerFast

    root.mkdir(parents=True)
    (root / "vocab.txt").write_text("\n".join(TINY_BERT_VOCAB) + "\n")
    BertTokenizerFast(vocab_file=str(root / "vocab.txt")).save_pretrained(str(root))
    config = BertConfig(
        vocab_size=len(TINY_BERT_VOCAB),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    with torch.random.fork_rng():  # seeded weights without touching the global RNG
        torch.manual_seed(0)
        model = BertForSequenceClassification(config) if classifier else BertModel(config)
    model.save_pretrained(str(root))
    return root
