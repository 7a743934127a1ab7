"""``edge``: a signed, self-contained bundle that runs a text model on a device.

``maas export-edge model:3 --target onnx-int8`` (or ``POST /admin/v1/jobs`` with kind
``edge``, spec ``{"model": "model:3", "target": "onnx-int8"}``) writes
``MAAS_HOME/jobs/<id>/bundle.zip``; the CLI copies it to ``--out``. Unzipped::

    run.py             the runner: needs onnxruntime, tokenizers, numpy (jobs/edge_runner.py)
    model.onnx         the graph (int8 for onnx-int8; see jobs/edge_graph.py)
    tokenizer.json     the fast tokenizer the server builds, truncation and padding unset
    signing-key.pem    the registry's Ed25519 public key (``maas keys edge-signing show``)
    LICENSE...         the version's licence files, when it has any
    manifest.json      task, inputs/outputs, labels, preprocessing, quantization, licence,
                       the source version and its parent, sha256 + size of every file above
    manifest.sig       Ed25519 signature of manifest.json's bytes (base64)

After signing, the job checks that the runner, with nothing but those files, gives the
server's answers: the same texts go, one at a time, through the runner and through the
runtime the server would load for the bundled graph (``runtimes/onnx_text.py``), and it
fails unless
the top labels agree and probabilities are within 1e-4 (embeddings: cosine > 0.9999).
Tokenizer ids are compared with transformers' first, so a tokenizer that ``tokenizers``
alone cannot reproduce is refused rather than bundled.

The job makes no new version: it records the bundle's size on the source version
(``edge_<target>_bundle_bytes``), and its report names the bundle, its digest and key.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import importlib.resources
import json
import re
import shutil
import zipfile
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from maas.errors import InvalidRequestError, MaasError
from maas.jobs import edge_runner
from maas.jobs.base import JobCancelled, JobContext, JobOutput
from maas.jobs.edge_graph import copy_graph, prepare_graph
from maas.jobs.onnx_export import SAMPLE_TEXTS, write_onnx_companions
from maas.jobs.reports import Paragraph, Section, Table, render_report
from maas.registry.edge_keys import EdgeSigningKeys, public_info
from maas.registry.schemas import VersionInfo
from maas.runtimes.base import RuntimeContext, sequence_limit
from maas.runtimes.registry import runtime_class

BUNDLE_ZIP = "bundle.zip"
GRAPH_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
RUNNER_FILE = "run.py"
REQUIREMENTS = ("onnxruntime", "tokenizers", "numpy")
LICENCE_FILES = re.compile(r"^(LICEN[CS]E|COPYING|NOTICE)(\.[A-Za-z]+)?$", re.IGNORECASE)
# The runner must give the server's answers within these (module docstring).
PROBABILITY_TOLERANCE = 1e-4
MIN_COSINE = 0.9999


def run(ctx: JobContext) -> JobOutput:
    """The job body: build, check, sign and zip the bundle of ``spec["model"]``."""
    ref = str(ctx.spec.get("model") or ctx.spec.get("base") or "")
    if not ref:
        raise InvalidRequestError("edge needs 'model'", param="model")
    target = str(ctx.spec.get("target", "onnx-int8"))
    tolerance = float(ctx.spec.get("tolerance", 1e-3))
    if ctx.registry is None:
        raise MaasError("the edge job needs a registry (its signing key lives there)")
    info = ctx.model_info(ref)
    source = ctx.model_path(info.ref)
    keys = EdgeSigningKeys(ctx.registry.settings)
    key, made = keys.signing_key()
    if made:
        ctx.log(f"made the registry's edge-signing key {public_info(key.public_key()).key_id}")
    staging = ctx.workdir / "bundle"
    shutil.rmtree(staging, ignore_errors=True)

    def step(number: int, message: str) -> None:
        if ctx.cancelled():
            raise JobCancelled()
        ctx.log(message)
        ctx.progress(number, 4)

    step(0, f"preparing the {target} graph of {info.ref}")
    graph = prepare_graph(
        source, info, target, ctx.workdir / "graph", tolerance=tolerance, log=ctx.log
    )
    step(1, "writing the bundle")
    manifest = build_bundle(source, info, graph.path, graph.quantization, target, staging)
    step(2, "signing")
    sign_bundle(staging, manifest, key)
    step(3, "checking the runner against the server's runtime")
    agreement = check_against_server(staging, source, info, ctx.workdir / "served")
    ctx.log(f"runner vs server: {json.dumps(agreement)}")
    drift = None
    if graph.fp32 is not None:
        drift = quantization_drift(graph.fp32, staging / GRAPH_FILE, source, info, ctx.workdir)
        ctx.log(f"int8 vs fp32: {json.dumps(drift)}")
    bundle = ctx.workdir / BUNDLE_ZIP
    zip_bundle(staging, bundle)
    ctx.progress(4, 4)
    size = bundle.stat().st_size
    digest = _sha256(bundle)
    unpacked = sum(p.stat().st_size for p in staging.iterdir() if p.is_file())
    for scratch in (staging, ctx.workdir / "graph", ctx.workdir / "served"):
        shutil.rmtree(scratch, ignore_errors=True)  # the zip is the product
    report = {
        "bundle": str(bundle),
        "bundle_bytes": size,
        "bundle_sha256": digest,
        "unpacked_bytes": unpacked,
        "key_id": manifest["signing"]["key_id"],
        "source": info.ref,
        "target": target,
        "quantization": graph.quantization,
        "export_parity_max_abs_diff": graph.parity_max_abs_diff,
        "runner_vs_server": agreement,
        "int8_vs_fp32": drift,
        "files": manifest["files"],
    }
    metric = f"edge_{target.replace('-', '_')}_bundle_bytes"
    return JobOutput(
        task=info.task,
        format="onnx",
        metrics={metric: size},
        params={"target": target},
        report=report,
        report_html=_report_html(info, target, report),
        parent=info.ref,
        description=f"edge bundle ({target}) of {info.ref}",
        new_version=False,
    )


# ------------------------------------------------------------------------------ build


def build_bundle(
    source: Path,
    info: VersionInfo,
    graph: Path,
    quantization: dict[str, Any] | None,
    target: str,
    out: Path,
) -> dict[str, Any]:
    """Write every file but the signature into ``out``; the (unsigned) manifest."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    out.mkdir(parents=True)
    copy_graph(graph, out / GRAPH_FILE)
    runner = importlib.resources.files("maas.jobs").joinpath("edge_runner.py").read_bytes()
    (out / RUNNER_FILE).write_bytes(runner)
    config = _read_json(source / "config.json")
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise InvalidRequestError(
            f"{info.ref} has no fast tokenizer (tokenizer.json); the runner needs one",
            param="model",
        )
    bare = Tokenizer.from_str(backend.to_str())
    bare.no_truncation()  # the runner sets both from the manifest
    bare.no_padding()
    bare.save(str(out / TOKENIZER_FILE))
    positions = config.get("max_position_embeddings")
    max_length = sequence_limit(int(positions) if positions else None, tokenizer, 512)
    preprocessing: dict[str, Any] = {
        "tokenizer": TOKENIZER_FILE,
        "max_length": max_length,
        "truncation": "longest_first, right; special tokens count",
        "padding": "right",
        "pad_token_id": int(tokenizer.pad_token_id or 0),
    }
    _check_tokenizer(tokenizer, out / TOKENIZER_FILE, max_length)
    labels = _labels(config) if info.task == "text-classification" else []
    if info.task == "embeddings":
        preprocessing.update(pooling="mean over the attention mask", normalize="l2")
    else:
        preprocessing.update(scores="softmax of logits, in label order")
    licence_files = [p for p in sorted(source.iterdir()) if LICENCE_FILES.match(p.name)]
    for path in licence_files:
        shutil.copyfile(path, out / path.name)
    graph_io = _graph_io(out / GRAPH_FILE)
    manifest: dict[str, Any] = {
        "format": edge_runner.BUNDLE_FORMAT,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "task": info.task,
        "target": target,
        "source": {
            "ref": info.ref,
            "model": info.model,
            "version": info.version,
            "format": info.format,
            "digest": info.digest,
            "parent": info.parent,
            "job_id": info.job_id,
        },
        "licence": _licence(info, source, licence_files),
        "graph": {"file": GRAPH_FILE, **graph_io},
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "outputs": _outputs(info.task, labels, graph_io, config),
        "labels": labels,
        "preprocessing": preprocessing,
        "quantization": quantization,
        "runner": {"file": RUNNER_FILE, "requires": list(REQUIREMENTS)},
    }
    return manifest


def sign_bundle(folder: Path, manifest: dict[str, Any], key: Ed25519PrivateKey) -> bytes:
    """Add the public key, the file digests and the signature; the signed manifest bytes."""
    public = public_info(key.public_key())
    (folder / edge_runner.PUBLIC_KEY_FILE).write_text(public.pem)
    skip = {edge_runner.MANIFEST_FILE, edge_runner.SIGNATURE_FILE}
    files = {
        p.name: {"sha256": _sha256(p), "size": p.stat().st_size}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name not in skip
    }
    signed = {
        **manifest,
        "signing": {
            "algorithm": "Ed25519",
            "key_id": public.key_id,
            "public_key_file": edge_runner.PUBLIC_KEY_FILE,
        },
        "files": files,
    }
    manifest.update(signed)
    raw = (json.dumps(signed, indent=2, sort_keys=True) + "\n").encode()
    (folder / edge_runner.MANIFEST_FILE).write_bytes(raw)
    signature = base64.b64encode(key.sign(raw)).decode()
    (folder / edge_runner.SIGNATURE_FILE).write_text(signature + "\n")
    return raw


def zip_bundle(folder: Path, out: Path) -> None:
    """The bundle's files at the root of a zip (deflated), written then renamed."""
    tmp = out.with_name(out.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.iterdir()):
            if path.is_file():
                archive.write(path, path.name)
    tmp.replace(out)


# ------------------------------------------------------------------------------ check


def check_against_server(
    bundle: Path, source: Path, info: VersionInfo, work: Path
) -> dict[str, float]:
    """The signed bundle's runner against the server runtime on the same graph (see above)."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    write_onnx_companions(work, source=source)  # the graph as an onnx version holds it
    copy_graph(bundle / GRAPH_FILE, work / GRAPH_FILE)
    texts = [*SAMPLE_TEXTS, " ".join(["the delivery was late"] * 200)]  # the last is truncated
    served = _served_predictions(work, info, texts)
    predict = edge_runner.load(bundle, verify_bundle=True, threads=1)
    answers = predict(texts)
    if info.task == "embeddings":
        got = np.asarray([a["embedding"] for a in answers], dtype=np.float64)
        want = np.stack([s.vector for s in served]).astype(np.float64)
        cosine = (got * want).sum(axis=1) / (
            np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1)
        )
        worst = float(cosine.min())
        if not worst > MIN_COSINE:
            raise MaasError(
                f"the bundle's runner does not reproduce the server: cosine {worst:.6f} "
                f"<= {MIN_COSINE}"
            )
        return {"texts": float(len(texts)), "min_cosine": worst}
    diff, same = 0.0, True
    for answer, result in zip(answers, served, strict=True):
        scores = dict(result.labels)
        diff = max(diff, *(abs(answer["scores"][k] - scores[k]) for k in scores))
        same = same and answer["label"] == result.labels[0][0]
    if not (same and diff <= PROBABILITY_TOLERANCE):
        raise MaasError(
            "the bundle's runner does not reproduce the server: "
            f"top labels {'agree' if same else 'differ'}, max |probability difference| "
            f"{diff:.3e} (tolerance {PROBABILITY_TOLERANCE})"
        )
    return {"texts": float(len(texts)), "max_probability_diff": diff}


def quantization_drift(
    fp32: Path, int8: Path, source: Path, info: VersionInfo, work: Path
) -> dict[str, float]:
    """How far quantizing at export moved the answers: the server runtime on each graph,
    over the sample texts (top-label agreement and the largest probability difference,
    or the lowest cosine for embeddings)."""
    answers = []
    for name, graph in (("fp32", fp32), ("int8", int8)):
        folder = work / f"drift-{name}"
        shutil.rmtree(folder, ignore_errors=True)
        write_onnx_companions(folder, source=source)
        copy_graph(graph, folder / GRAPH_FILE)
        answers.append(_served_predictions(folder, info, list(SAMPLE_TEXTS)))
        shutil.rmtree(folder, ignore_errors=True)
    before, after = answers
    if info.task == "embeddings":
        a = np.stack([r.vector for r in before]).astype(np.float64)
        b = np.stack([r.vector for r in after]).astype(np.float64)
        cosine = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        return {"min_cosine": float(cosine.min()), "mean_cosine": float(cosine.mean())}
    same = [x.labels[0][0] == y.labels[0][0] for x, y in zip(before, after, strict=True)]
    diff = max(
        abs(p - dict(y.labels)[label])
        for x, y in zip(before, after, strict=True)
        for label, p in x.labels
    )
    return {"top_label_agreement": sum(same) / len(same), "max_probability_diff": diff}


def _served_predictions(model_dir: Path, info: VersionInfo, texts: list[str]) -> list[Any]:
    version = info.model_copy(update={"format": "onnx"})
    with ThreadPoolExecutor(1, thread_name_prefix="maas-edge") as pool:
        runtime = runtime_class(info.task, "onnx")(RuntimeContext(model_dir, version, pool))

        async def predict() -> list[Any]:
            await runtime.load()
            try:  # one text per call, as the runner runs them by default
                return [(await runtime.predict([text]))[0] for text in texts]
            finally:
                await runtime.unload()

        return asyncio.run(predict())


# ---------------------------------------------------------------------------- helpers


def _check_tokenizer(tokenizer: Any, saved: Path, max_length: int) -> None:
    """Refuse a tokenizer whose ids ``tokenizers`` alone does not reproduce."""
    from tokenizers import Tokenizer

    bare = Tokenizer.from_file(str(saved))
    bare.enable_truncation(max_length=max_length)
    texts = [*SAMPLE_TEXTS, "Ünïcödé, CAPITALS and 12345 numbers!", "word " * (max_length + 8)]
    expected = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    got = [enc.ids for enc in bare.encode_batch(texts)]
    if [list(ids) for ids in expected] != got:
        raise MaasError(
            "the tokenizer cannot be reproduced from tokenizer.json alone (its ids differ "
            "from transformers'); this model cannot be bundled for the edge runner"
        )


def _labels(config: dict[str, Any]) -> list[str]:
    """Labels in output order, as the ONNX text classification runtime reads them."""
    id2label = config.get("id2label") or {}
    count = len(id2label) or int(config.get("num_labels", 0))
    return [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(count)]


def _graph_io(graph: Path) -> dict[str, Any]:
    import onnx

    model = onnx.load(str(graph), load_external_data=False)
    names = {v: k for k, v in onnx.TensorProto.DataType.items()}

    def describe(value: Any) -> dict[str, Any]:
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        return {"name": value.name, "type": names[tensor.elem_type].lower(), "shape": dims}

    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return {
        "opset": opset,
        "inputs": [describe(v) for v in model.graph.input],
        "outputs": [describe(v) for v in model.graph.output],
    }


def _outputs(
    task: str, labels: list[str], graph_io: dict[str, Any], config: dict[str, Any]
) -> list[dict[str, Any]]:
    if task == "text-classification":
        return [
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
            {"name": "scores", "datatype": "FP32", "shape": [-1, len(labels)]},
        ]
    dim = graph_io["outputs"][0]["shape"][-1]
    if dim < 0:
        dim = int(config.get("hidden_size", -1))
    return [{"name": "embedding", "datatype": "FP32", "shape": [-1, dim]}]


def _licence(info: VersionInfo, source: Path, files: list[Path]) -> dict[str, Any]:
    """The version's licence: a tag or metadata entry, else the model card's front matter."""
    name = None
    for mapping in (info.tags, info.metadata):
        for key in ("license", "licence"):
            if mapping.get(key):
                name = str(mapping[key])
    card = source / "README.md"
    if name is None and card.is_file():
        text = card.read_text(encoding="utf-8", errors="replace")
        if text.startswith("---"):
            front = text.split("---", 2)[1]
            found = re.search(r"^licen[cs]e:\s*(\S.*)$", front, re.MULTILINE)
            name = found.group(1).strip().strip("'\"") if found else None
    return {"name": name or "unspecified", "files": [p.name for p in files]}


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    loaded = json.loads(path.read_text(encoding="utf-8"))
    return loaded if isinstance(loaded, dict) else {}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as src:
        for block in iter(lambda: src.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _report_html(info: VersionInfo, target: str, report: dict[str, Any]) -> str:
    rows = [[name, entry["size"], entry["sha256"][:16]] for name, entry in report["files"].items()]
    summary = (
        f"{report['bundle_bytes']:,} bytes zipped ({report['unpacked_bytes']:,} unpacked), "
        f"signed by key {report['key_id']}; sha256 {report['bundle_sha256']}."
    )
    agreement = ", ".join(f"{k} {v:.6g}" for k, v in report["runner_vs_server"].items())
    drift = report["int8_vs_fp32"]
    moved = ", ".join(f"{k} {v:.6g}" for k, v in drift.items()) if drift else "not quantized here"
    return render_report(
        f"Edge bundle ({target}) of {info.ref}",
        [
            Section("Bundle", [Paragraph(summary)]),
            Section("Runner against the server", [Paragraph(agreement)]),
            Section("int8 against fp32 (sample texts)", [Paragraph(moved)]),
            Section("Files", [Table(["file", "bytes", "sha256 (first 16)"], rows)]),
        ],
    )
