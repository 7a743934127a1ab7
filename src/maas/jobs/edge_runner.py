"""run.py of a maas edge bundle: verify the bundle, then run its model on texts.

This file is copied as it is to the root of every bundle that ``maas export-edge``
writes, so it imports nothing from maas (nor torch): only the standard library,
``numpy``, ``onnxruntime`` and ``tokenizers``, which are what a device installs::

    pip install onnxruntime tokenizers numpy
    python run.py --verify "some text" "more text"      # one JSON line per text
    python run.py --public-key registry.pem "some text"  # also pin the signer

    from run import load
    predict = load("path/to/bundle")                      # verifies, then loads
    predict(["some text"])  # [{"label": "positive", "scores": {...}}] or [{"embedding": [...]}]

What a prediction is, step by step, and why it matches the server (maas serves the
same graph with ``runtimes/onnx_text.py``):

* Tokenization: ``tokenizer.json`` is the fast tokenizer the server's
  ``AutoTokenizer`` builds, saved by the exporter; texts are truncated to
  ``preprocessing.max_length`` tokens, special tokens included (the server's one
  truncation rule, ``runtimes/base.py`` ``sequence_limit``: the position table or
  the tokenizer's limit, the smaller), padded on the right with ``pad_token_id``.
* Classifiers: softmax of the logits; ``scores`` lists every label in the model's
  label order (``manifest.labels``, the order of the server's ``probabilities``)
  and ``label`` is the most probable one (the first label on a tie, as the server).
* Embeddings: the mean of the last hidden state over the real tokens (mask
  weighted), L2-normalised, float32.
* One text per graph run by default (``--batch-size``): an int8 graph quantizes its
  activations with one scale for the whole batch, so a text's answer would move
  (about 1e-4) with the other texts beside it; alone, it is the answer the server
  gives a request of that one text.

Verification (``--verify``, ``--public-key``, or ``load(..., verify=True)``): the
Ed25519 signature of ``manifest.json`` (in ``manifest.sig``, base64) must verify
under the bundle's ``signing-key.pem`` or, when given, the pinned public key; then
every file the manifest lists must have its size and sha256. Ed25519 is checked
here in pure Python (RFC 8032, section 5.1.7) so no crypto library is needed; it
takes a few milliseconds. Exit status: 0 ok, 2 usage, 3 verification refused.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

BUNDLE_FORMAT = "maas-edge-bundle/1"
MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.sig"
PUBLIC_KEY_FILE = "signing-key.pem"
EXIT_REFUSED = 3

Prediction = dict[str, Any]
Predictor = Callable[[Sequence[str]], list[Prediction]]


class BundleError(Exception):
    """The bundle failed verification or is not a bundle this runner reads."""


# ------------------------------------------------------------------ Ed25519 (RFC 8032)

_P = 2**255 - 19  # the field prime
_L = 2**252 + 27742317777372353535851937790883648493  # the group order
_D = -121665 * pow(121666, _P - 2, _P) % _P  # the curve constant d
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)
Point = tuple[int, int, int, int]  # extended coordinates (X, Y, Z, T), x = X/Z, y = Y/Z


def _recover_x(y: int, sign: int) -> int | None:
    if y >= _P:
        return None
    x2 = (y * y - 1) * pow(_D * y * y + 1, _P - 2, _P) % _P
    if x2 == 0:
        return None if sign else 0
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P:
        x = x * _SQRT_M1 % _P
    if (x * x - x2) % _P:
        return None
    return _P - x if (x & 1) != sign else x


def _decode_point(data: bytes) -> Point | None:
    if len(data) != 32:
        return None
    y = int.from_bytes(data, "little")
    sign, y = y >> 255, y & ((1 << 255) - 1)
    x = _recover_x(y, sign)
    return None if x is None else (x, y, 1, x * y % _P)


def _add(p: Point, q: Point) -> Point:
    # Twisted Edwards addition with a = -1 (RFC 8032, section 5.1.4).
    a = (p[1] - p[0]) * (q[1] - q[0]) % _P
    b = (p[1] + p[0]) * (q[1] + q[0]) % _P
    c = 2 * p[3] * q[3] * _D % _P
    d = 2 * p[2] * q[2] % _P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _multiply(scalar: int, point: Point) -> Point:
    result: Point = (0, 1, 1, 0)  # the neutral element
    while scalar:
        if scalar & 1:
            result = _add(result, point)
        point = _add(point, point)
        scalar >>= 1
    return result


def _same(p: Point, q: Point) -> bool:
    return (p[0] * q[2] - q[0] * p[2]) % _P == 0 and (p[1] * q[2] - q[1] * p[2]) % _P == 0


_BASE_Y = 4 * pow(5, _P - 2, _P) % _P
_BASE_X = _recover_x(_BASE_Y, 0) or 0
_BASE: Point = (_BASE_X, _BASE_Y, 1, _BASE_X * _BASE_Y % _P)


def ed25519_verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is a valid Ed25519 signature of ``message`` by ``public_key``."""
    if len(signature) != 64:
        return False
    a = _decode_point(public_key)
    r = _decode_point(signature[:32])
    s = int.from_bytes(signature[32:], "little")
    if a is None or r is None or s >= _L:
        return False
    digest = hashlib.sha512(signature[:32] + public_key + message).digest()
    k = int.from_bytes(digest, "little") % _L
    return _same(_multiply(s, _BASE), _add(r, _multiply(k, a)))


# DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): the 32 key bytes follow.
_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")


def read_public_key(text: str) -> bytes:
    """The 32 raw bytes of an Ed25519 public key written as PEM or as base64 of the raw key."""
    body = "".join(line.strip() for line in text.splitlines() if not line.startswith("-----"))
    try:
        der = base64.b64decode(body, validate=True)
    except ValueError as exc:
        raise BundleError("the public key is neither PEM nor base64") from exc
    if len(der) == 32:
        return der
    if len(der) == len(_SPKI_PREFIX) + 32 and der.startswith(_SPKI_PREFIX):
        return der[len(_SPKI_PREFIX) :]
    raise BundleError("the public key is not an Ed25519 public key")


def key_id(public_key: bytes) -> str:
    """The short name of a public key: the first 16 hex digits of its sha256."""
    return hashlib.sha256(public_key).hexdigest()[:16]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as src:
        for block in iter(lambda: src.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(root: str | Path, public_key: bytes | None = None) -> dict[str, Any]:
    """Check the bundle at ``root``; its manifest, or :class:`BundleError` saying what failed.

    ``public_key`` pins the signer: the signature must verify under it, whatever key
    the bundle carries. Without it the bundle's own key is used, which proves the
    files are those the key's holder signed, not who that was: pin the registry's
    key (``maas keys edge-signing show``) to know.
    """
    folder = Path(root)
    try:
        raw = (folder / MANIFEST_FILE).read_bytes()
        signature = base64.b64decode((folder / SIGNATURE_FILE).read_text().strip(), validate=True)
        shipped = read_public_key((folder / PUBLIC_KEY_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(f"not a complete edge bundle: {exc}") from exc
    key = public_key if public_key is not None else shipped
    if not ed25519_verify(key, raw, signature):
        if public_key is not None and public_key != shipped:
            raise BundleError(
                f"signature refused: the bundle was signed by key {key_id(shipped)}, "
                f"not by the pinned key {key_id(public_key)}"
            )
        raise BundleError(
            f"signature refused: {MANIFEST_FILE} does not match its signature under key "
            f"{key_id(key)} (the manifest was modified after signing)"
        )
    manifest: dict[str, Any] = json.loads(raw)
    if manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"unknown bundle format {manifest.get('format')!r}")
    for name, entry in sorted(manifest["files"].items()):
        path = folder / name
        if not path.is_file():
            raise BundleError(f"{name} is missing from the bundle")
        if path.stat().st_size != entry["size"] or _sha256(path) != entry["sha256"]:
            raise BundleError(
                f"{name} does not match the signed manifest (sha256 differs): "
                "the file was modified after signing"
            )
    return manifest


# ------------------------------------------------------------------------ prediction


def load(
    root: str | Path = ".",
    *,
    verify_bundle: bool = True,
    public_key: bytes | None = None,
    threads: int = 0,
    batch_size: int = 1,
) -> Predictor:
    """A function from a list of texts to one prediction per text (see the module doc).

    Verifies the bundle first unless ``verify_bundle`` is False; ``threads`` sets ONNX
    Runtime's intra-op threads (0: its default, one per core). ``batch_size`` texts run
    together: 1 (the default) makes each answer independent of the other texts, as a
    request of one text to the server is; an int8 graph quantizes its activations with
    one scale per batch, so larger batches move probabilities by about 1e-4.
    """
    folder = Path(root)
    if verify_bundle or public_key is not None:
        manifest = verify(folder, public_key)
    else:
        manifest = json.loads((folder / MANIFEST_FILE).read_bytes())
    import numpy as np
    import onnxruntime as ort  # type: ignore[import-untyped]
    from tokenizers import Tokenizer

    pre = manifest["preprocessing"]
    tokenizer = Tokenizer.from_file(str(folder / pre["tokenizer"]))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=int(pre["max_length"]))
    pad_id = int(pre["pad_token_id"])
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(
        str(folder / manifest["graph"]["file"]), options, providers=["CPUExecutionProvider"]
    )
    feeds = {i.name for i in session.get_inputs()}
    task = manifest["task"]
    labels = [str(label) for label in manifest.get("labels") or []]

    def forward(texts: Sequence[str]) -> tuple[Any, Any]:
        encodings = tokenizer.encode_batch([str(t) for t in texts])
        longest = max(len(e.ids) for e in encodings)
        ids = np.full((len(texts), longest), pad_id, dtype=np.int64)  # (batch, seq)
        mask = np.zeros((len(texts), longest), dtype=np.int64)  # (batch, seq)
        for row, enc in enumerate(encodings):
            ids[row, : len(enc.ids)] = enc.ids
            mask[row, : len(enc.ids)] = 1
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        (first, *_) = session.run(None, {k: v for k, v in feed.items() if k in feeds})
        return np.asarray(first), mask

    def classify(texts: Sequence[str]) -> list[Prediction]:
        logits, _ = forward(texts)  # (batch, labels)
        shifted = logits - logits.max(axis=1, keepdims=True)
        probs = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
        names = labels or [f"LABEL_{i}" for i in range(probs.shape[1])]
        out = []
        for row in probs.tolist():
            best = max(range(len(row)), key=lambda i: (row[i], -i))  # first label on a tie
            out.append({"label": names[best], "scores": dict(zip(names, row, strict=True))})
        return out

    def embed(texts: Sequence[str]) -> list[Prediction]:
        hidden, mask = forward(texts)  # (batch, seq, dim), (batch, seq)
        weights = mask[:, :, None].astype(np.float32)  # (batch, seq, 1)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return [{"embedding": row} for row in pooled.astype(np.float32).tolist()]

    def predict(texts: Sequence[str]) -> list[Prediction]:
        if isinstance(texts, str):
            raise TypeError("predict takes a list of texts, not one string")
        run = classify if task == "text-classification" else embed
        out: list[Prediction] = []
        for start in range(0, len(texts), max(1, batch_size)):
            out.extend(run(texts[start : start + max(1, batch_size)]))
        return out

    if task not in ("text-classification", "embeddings"):
        raise BundleError(f"this runner does not run task {task!r}")
    return predict


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="run.py", description="Run the model of this maas edge bundle on texts."
    )
    parser.add_argument("texts", nargs="*", help="texts to run (else one per line on stdin)")
    parser.add_argument("--verify", action="store_true", help="check signature and digests first")
    parser.add_argument(
        "--public-key", type=Path, help="PEM file of the signer's key to pin (implies --verify)"
    )
    parser.add_argument("--bundle", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0: auto)")
    parser.add_argument(
        "--batch-size", type=int, default=1, help="texts per run (1: each on its own)"
    )
    args = parser.parse_args(argv)
    try:
        pinned = read_public_key(args.public_key.read_text()) if args.public_key else None
        predict = load(
            args.bundle,
            verify_bundle=args.verify,
            public_key=pinned,
            threads=args.threads,
            batch_size=args.batch_size,
        )
    except (BundleError, OSError) as exc:
        print(f"run.py: refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    texts = list(args.texts) or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    for prediction in predict(texts):
        print(json.dumps(prediction))
    return 0


if __name__ == "__main__":
    sys.exit(main())
