"""Edge bundles: the signing key, the runner's Ed25519 check, and the round trip.

The round trip builds bundles with ``maas export-edge`` (local mode: the job runs in
a worker process), unzips them, and runs ``run.py`` in a fresh virtual environment
that holds only onnxruntime, tokenizers and numpy (made once per session from PyPI),
then compares its answers with a real ``maas serve`` on the same registry: the same
labels, probabilities within 1e-4, embeddings at cosine > 0.9999. Tampered bundles
and bundles signed by another key are refused there with a clear message.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from maas.cli.main import app
from maas.config import Settings
from maas.crypto import has_magic
from maas.errors import ConflictError, IntegrityError, InvalidRequestError, NotFoundError
from maas.jobs import edge, edge_runner
from maas.jobs.base import JobOutput
from maas.jobs.edge_graph import is_int8, prepare_graph
from maas.jobs.specs import SPEC_KEYS
from maas.registry.edge_keys import EdgeSigningKeys
from maas.registry.store import Registry
from tests.e2e.conftest import LiveServer, start_server
from tests.jobs.ml_fixtures import LocalJobContext, save_tokenizer
from tests.jobs.test_specs import _spec_keys_read

MASTER_KEY = "11" * 32
TEXTS = [
    "the soup was wonderful",
    "what a boring film",
    "i found the ending dreadful",
    "Ünïcödé, CAPITALS and 12345 numbers!",
    " ".join(["honestly a superb meal overall"] * 40),  # past the 64-position table
]

# ------------------------------------------------------------------- Ed25519 in run.py


def test_the_runner_verifies_ed25519_signatures_made_by_cryptography() -> None:
    key = Ed25519PrivateKey.generate()
    public = edge_runner.read_public_key(_pem(key))  # PEM, as bundles carry it
    for message in (b"", b"manifest", bytes(range(256)) * 9):
        signature = key.sign(message)
        assert edge_runner.ed25519_verify(public, message, signature)
        assert not edge_runner.ed25519_verify(public, message + b"!", signature)
        flipped = bytes([signature[0] ^ 1]) + signature[1:]
        assert not edge_runner.ed25519_verify(public, message, flipped)
        other = edge_runner.read_public_key(_pem(Ed25519PrivateKey.generate()))
        assert not edge_runner.ed25519_verify(other, message, signature)


def test_a_public_key_that_is_not_ed25519_is_refused() -> None:
    with pytest.raises(edge_runner.BundleError, match="not an Ed25519 public key"):
        edge_runner.read_public_key(base64.b64encode(b"x" * 40).decode())
    with pytest.raises(edge_runner.BundleError, match="neither PEM nor base64"):
        edge_runner.read_public_key("-----BEGIN PUBLIC KEY-----\n***\n-----END PUBLIC KEY-----")


def _pem(key: Ed25519PrivateKey) -> str:
    from maas.registry.edge_keys import public_info

    return public_info(key.public_key()).pem


# ------------------------------------------------------------------------ key store


def test_the_signing_key_is_created_once_with_mode_0600_and_rotated_keeping_the_old_public_key(
    tmp_path: Path,
) -> None:
    keys = EdgeSigningKeys(Settings(home=tmp_path))
    with pytest.raises(NotFoundError, match="no edge-signing key yet"):
        keys.public()
    made = keys.create()
    assert keys.private_path.stat().st_mode & 0o777 == 0o600
    assert keys.public_path.read_text() == made.pem
    assert keys.public().key_id == made.key_id
    with pytest.raises(ConflictError, match="rotate"):
        keys.create()
    old, new = keys.rotate()
    assert old == made and new.key_id != made.key_id
    assert keys.public() == new
    assert [r.key_id for r in keys.retired()] == [made.key_id]
    assert keys.private_path.stat().st_mode & 0o777 == 0o600


def test_with_encryption_at_rest_the_private_key_is_sealed_by_the_master_key(
    tmp_path: Path,
) -> None:
    sealed = EdgeSigningKeys(Settings(home=tmp_path, master_key=MASTER_KEY))  # type: ignore[arg-type]
    made = sealed.create()
    with sealed.private_path.open("rb") as f:
        assert has_magic(f)
    assert b"PRIVATE KEY" not in sealed.private_path.read_bytes()
    assert sealed.public().key_id == made.key_id
    with pytest.raises(IntegrityError, match="encrypted at rest; set the master key"):
        EdgeSigningKeys(Settings(home=tmp_path)).private()


# --------------------------------------------------------------------- graph choices


def test_the_edge_job_reads_only_declared_spec_keys() -> None:
    read = _spec_keys_read(Path(edge.__file__))
    assert read and read <= set(SPEC_KEYS["edge"])


@pytest.mark.slow
def test_an_int8_version_is_bundled_as_it_is_and_refused_as_fp32(
    tmp_path: Path, int8_quantized: tuple[LocalJobContext, JobOutput]
) -> None:
    int8_dir = int8_quantized[0].output_dir
    registry = Registry(Settings(home=tmp_path / "home"))
    try:
        info = registry.push(int8_dir, "clf", task="text-classification")
    finally:
        registry.close()
    graph = prepare_graph(int8_dir, info, "onnx-int8", tmp_path, tolerance=1e-3, log=print)
    assert graph.path == int8_dir / "model.onnx" and is_int8(graph.path)
    assert graph.quantization is not None and graph.quantization["applied"] == "in clf:1"
    with pytest.raises(
        InvalidRequestError, match="already int8: bundle it with --target onnx-int8"
    ):
        prepare_graph(int8_dir, info, "onnx", tmp_path, tolerance=1e-3, log=print)


# ----------------------------------------------------------------------- round trip


@pytest.fixture(scope="module")
def tiny_encoder_dir(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    """A random 2-layer BERT encoder (hidden 32, 64 positions) with MiniLM's tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    root = tmp_path_factory.mktemp("tiny-encoder")
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        BertModel(config).save_pretrained(str(root))
    save_tokenizer(minilm_dir, root)
    return root


# name -> (reference, target): the bundles the round trip builds
BUNDLES = {
    "int8-as-is": ("clf:2", "onnx-int8"),
    "classifier-fp32": ("clf:1", "onnx"),
    "encoder-fp32": ("enc:1", "onnx"),
    "classifier-quantized-at-export": ("clf:1", "onnx-int8"),
}
# Those whose graph is the one the server runs (or its exact fp32 export): equal answers.
SAME_AS_SERVED = ("int8-as-is", "classifier-fp32", "encoder-fp32")


@pytest.fixture(scope="module")
def edge_home(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_classifier_dir: Path,
    int8_quantized: tuple[LocalJobContext, JobOutput],
    tiny_encoder_dir: Path,
) -> Path:
    home = tmp_path_factory.mktemp("edge-home")
    registry = Registry(Settings(home=home))
    try:
        registry.push(tiny_classifier_dir, "clf", task="text-classification")
        registry.push(
            int8_quantized[0].output_dir,
            "clf",
            task="text-classification",
            params=int8_quantized[1].params,
            parent="clf:1",
        )
        registry.push(tiny_encoder_dir, "enc", task="embeddings")
    finally:
        registry.close()
    return home


def _maas(home: Path, *args: str) -> Any:
    env = {"MAAS_HOME": str(home), "MAAS_URL": "", "MAAS_API_KEY": ""}
    return CliRunner().invoke(app, list(args), env=env)


@pytest.fixture(scope="module")
def bundles(edge_home: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each bundle of BUNDLES made by ``maas export-edge``, unzipped."""
    root = tmp_path_factory.mktemp("bundles")
    made = {}
    for name, (ref, target) in BUNDLES.items():
        zipped = root / f"{name}.zip"
        result = _maas(edge_home, "export-edge", ref, "--target", target, "--out", str(zipped))
        assert result.exit_code == 0, result.output
        assert result.stdout.strip() == str(zipped)
        with zipfile.ZipFile(zipped) as archive:
            archive.extractall(root / name)
        made[name] = root / name
    return made


@pytest.fixture(scope="module")
def live(edge_home: Path, bundles: dict[str, Path]) -> Iterator[LiveServer]:
    yield from start_server(edge_home)


@pytest.fixture(scope="module")
def registry_pem(edge_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    result = _maas(edge_home, "keys", "edge-signing", "show")
    assert result.exit_code == 0, result.output
    path = tmp_path_factory.mktemp("pinned") / "registry.pem"
    path.write_text(result.stdout)
    return path


@pytest.fixture(scope="session")
def edge_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with only onnxruntime, tokenizers and numpy (from PyPI); its python."""
    root = tmp_path_factory.mktemp("edge-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
    python = root / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", *edge.REQUIREMENTS],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if install.returncode != 0:
        pytest.skip(f"cannot install {', '.join(edge.REQUIREMENTS)}: {install.stderr[-400:]}")
    return python


def _run(python: Path, bundle: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python run.py ARGS`` in the bundle, isolated (-I) from this checkout and its env."""
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(bundle)}
    return subprocess.run(
        [str(python), "-I", "run.py", *args],
        cwd=bundle,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _predictions(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def _served(live: LiveServer, ref: str, texts: list[str]) -> list[dict[str, Any]]:
    """The server's answers, one request per text: embeddings, or label + probabilities."""
    name, version = ref.split(":")
    answers = []
    with httpx.Client(headers={"Authorization": f"Bearer {live.key}"}, timeout=60) as http:
        for text in texts:
            if name == "enc":
                r = http.post(f"{live.url}/v1/embeddings", json={"model": ref, "input": [text]})
                assert r.status_code == 200, r.text
                answers.append({"embedding": r.json()["data"][0]["embedding"]})
                continue
            body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}]}
            r = http.post(f"{live.url}/v2/models/{name}/versions/{version}/infer", json=body)
            assert r.status_code == 200, r.text
            outputs = {o["name"]: o["data"] for o in r.json()["outputs"]}
            answers.append(
                {"label": outputs["label"][0], "probabilities": outputs["probabilities"]}
            )
    return answers


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_venv_has_the_runner_dependencies_and_neither_torch_nor_maas(
    edge_venv: Path,
) -> None:
    check = (
        "import onnxruntime, tokenizers, numpy\n"
        "import importlib.util as u\n"
        "found = [m for m in ('torch', 'maas', 'transformers', 'cryptography') if u.find_spec(m)]\n"
        "raise SystemExit(', '.join(found) or None)"
    )
    result = subprocess.run([str(edge_venv), "-I", "-c", check], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", SAME_AS_SERVED)
def test_a_bundle_run_in_a_fresh_venv_answers_as_the_server(
    name: str,
    bundles: dict[str, Path],
    live: LiveServer,
    edge_venv: Path,
    registry_pem: Path,
) -> None:
    bundle = bundles[name]
    got = _predictions(
        _run(edge_venv, bundle, "--verify", "--public-key", str(registry_pem), *TEXTS)
    )
    want = _served(live, BUNDLES[name][0], TEXTS)
    assert len(got) == len(want) == len(TEXTS)
    manifest = json.loads((bundle / "manifest.json").read_text())
    for mine, server in zip(got, want, strict=True):
        if "embedding" in server:
            a, b = np.asarray(mine["embedding"]), np.asarray(server["embedding"])
            assert set(mine) == {"embedding"} and a.shape == b.shape
            assert float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) > 0.9999
            continue
        assert set(mine) == {"label", "scores"}
        assert list(mine["scores"]) == manifest["labels"]  # the server's label order
        assert mine["label"] == server["label"]
        np.testing.assert_allclose(
            list(mine["scores"].values()), server["probabilities"], atol=1e-4
        )


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_program_loads_a_bundle_with_load_and_gets_what_run_py_prints(
    bundles: dict[str, Path], edge_venv: Path
) -> None:
    bundle = bundles["int8-as-is"]
    program = (
        "import json, sys\nsys.path.insert(0, sys.argv[1])\nfrom run import load\n"
        "predict = load(sys.argv[1])\nprint(json.dumps(predict(sys.argv[2:])))"
    )
    result = subprocess.run(
        [str(edge_venv), "-I", "-c", program, str(bundle), *TEXTS[:3]],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    printed = _predictions(_run(edge_venv, bundle, *TEXTS[:3]))
    assert json.loads(result.stdout) == printed


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_bundle_quantized_at_export_is_int8_signed_and_says_how(
    bundles: dict[str, Path], edge_venv: Path, registry_pem: Path, edge_home: Path
) -> None:
    bundle = bundles["classifier-quantized-at-export"]
    manifest = json.loads((bundle / "manifest.json").read_text())
    reports = [json.loads(p.read_text()) for p in edge_home.glob("jobs/*/report.json")]
    (report,) = [r for r in reports if (r["source"], r["target"]) == ("clf:1", "onnx-int8")]
    assert report["int8_vs_fp32"]["top_label_agreement"] >= 0.5  # measured and reported
    assert 0 <= report["int8_vs_fp32"]["max_probability_diff"] < 1
    assert is_int8(bundle / "model.onnx")
    assert manifest["quantization"]["applied"] == "at export"
    assert manifest["quantization"]["per_channel"] is True
    assert manifest["source"]["ref"] == "clf:1" and manifest["task"] == "text-classification"
    assert set(manifest["files"]) == {
        "model.onnx",
        "tokenizer.json",
        "run.py",
        "signing-key.pem",
    }
    assert manifest["labels"] == ["negative", "positive"]
    got = _predictions(_run(edge_venv, bundle, "--public-key", str(registry_pem), *TEXTS))
    for answer in got:
        assert answer["label"] in manifest["labels"]
        assert sum(answer["scores"].values()) == pytest.approx(1.0, abs=1e-5)


def _copy(bundle: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_bundle_with_one_byte_of_its_model_changed_is_refused(
    bundles: dict[str, Path], edge_venv: Path, tmp_path: Path
) -> None:
    bundle = _copy(bundles["int8-as-is"], tmp_path)
    graph = bytearray((bundle / "model.onnx").read_bytes())
    graph[len(graph) // 2] ^= 0x01
    (bundle / "model.onnx").write_bytes(bytes(graph))
    result = _run(edge_venv, bundle, "--verify", "a good film")
    assert result.returncode == edge_runner.EXIT_REFUSED and result.stdout == ""
    assert "refused: model.onnx does not match the signed manifest" in result.stderr


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_bundle_whose_manifest_was_edited_is_refused(
    bundles: dict[str, Path], edge_venv: Path, tmp_path: Path
) -> None:
    bundle = _copy(bundles["classifier-fp32"], tmp_path)
    text = (bundle / "manifest.json").read_text()
    (bundle / "manifest.json").write_text(text.replace('"positive"', '"approved"'))
    result = _run(edge_venv, bundle, "--verify", "a good film")
    assert result.returncode == edge_runner.EXIT_REFUSED and result.stdout == ""
    assert "manifest.json does not match its signature" in result.stderr


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_bundle_signed_by_another_key_is_refused_when_the_registry_key_is_pinned(
    bundles: dict[str, Path], edge_venv: Path, registry_pem: Path, tmp_path: Path
) -> None:
    bundle = _copy(bundles["encoder-fp32"], tmp_path)
    manifest = json.loads((bundle / "manifest.json").read_text())
    for name in ("manifest.json", "manifest.sig", "signing-key.pem"):
        (bundle / name).unlink()
    manifest.pop("files")
    manifest.pop("signing")
    edge.sign_bundle(bundle, manifest, Ed25519PrivateKey.generate())  # a consistent forgery
    assert _run(edge_venv, bundle, "--verify", "a good film").returncode == 0
    result = _run(edge_venv, bundle, "--public-key", str(registry_pem), "a good film")
    assert result.returncode == edge_runner.EXIT_REFUSED and result.stdout == ""
    pinned = edge_runner.key_id(edge_runner.read_public_key(registry_pem.read_text()))
    assert f"not by the pinned key {pinned}" in result.stderr


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_edge_job_runs_through_the_jobs_api_and_records_the_bundle_size(
    live: LiveServer,
) -> None:
    auth = {"Authorization": f"Bearer {live.key}"}
    with httpx.Client(base_url=live.url, headers=auth, timeout=60) as http:
        body = {"kind": "edge", "spec": {"model": "enc:1", "target": "onnx-int8"}}
        created = http.post("/admin/v1/jobs", json=body)
        assert created.status_code == 201, created.text
        job_id = created.json()["id"]
        deadline = time.monotonic() + 300
        while (job := http.get(f"/admin/v1/jobs/{job_id}").json())["status"] in (
            "queued",
            "running",
        ):
            assert time.monotonic() < deadline, job
            time.sleep(0.5)
        assert job["status"] == "succeeded", job
        report = http.get(f"/admin/v1/jobs/{job_id}/report.json").json()
        assert Path(report["bundle"]).is_file()
        assert report["runner_vs_server"]["min_cosine"] > 0.9999
        version = http.get("/admin/v1/models/enc/versions/1").json()
        assert version["metrics"]["edge_onnx_int8_bundle_bytes"] == report["bundle_bytes"]
        refused = http.post(
            "/admin/v1/jobs", json={"kind": "edge", "spec": {"model": "enc:1", "target": "tflite"}}
        )
        assert refused.status_code == 400
        assert "unknown edge target 'tflite'" in refused.json()["error"]["message"]


def test_the_edge_signing_commands_create_show_and_rotate_the_key(tmp_path: Path) -> None:
    made = _maas(tmp_path, "keys", "edge-signing", "create")
    assert made.exit_code == 0, made.output
    assert made.stdout.startswith("-----BEGIN PUBLIC KEY-----")
    again = _maas(tmp_path, "keys", "edge-signing", "create")
    assert again.exit_code == 1 and "`maas keys edge-signing rotate` replaces it" in again.output
    first = json.loads(_maas(tmp_path, "keys", "edge-signing", "show", "--json").stdout)
    assert first["public_key_pem"] == made.stdout and first["retired"] == []
    rotated = _maas(tmp_path, "keys", "edge-signing", "rotate")
    assert rotated.exit_code == 0, rotated.output
    assert rotated.stdout != made.stdout
    second = json.loads(_maas(tmp_path, "keys", "edge-signing", "show", "--json").stdout)
    assert second["public_key_pem"] == rotated.stdout
    assert second["retired"] == [first["key_id"]]


def test_a_model_of_another_task_is_refused_naming_its_task(tmp_path: Path) -> None:
    from tests.helpers import make_onnx_file

    registry = Registry(Settings(home=tmp_path / "home"))
    try:
        info = registry.push(make_onnx_file(tmp_path / "affine" / "model.onnx").parent, "affine")
    finally:
        registry.close()
    with pytest.raises(InvalidRequestError, match="affine:1 is a model of task tensor; edge"):
        prepare_graph(
            tmp_path / "affine", info, "onnx", tmp_path / "work", tolerance=1e-3, log=print
        )
    with pytest.raises(InvalidRequestError, match="unknown edge target 'tflite'"):
        prepare_graph(
            tmp_path / "affine", info, "tflite", tmp_path / "work", tolerance=1, log=print
        )


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_export_edge_against_a_server_says_where_the_bundle_is(live: LiveServer) -> None:
    env = {"MAAS_URL": live.url, "MAAS_API_KEY": live.key, "MAAS_HOME": str(live.home)}
    result = CliRunner().invoke(app, ["export-edge", "enc:1", "--target", "onnx"], env=env)
    assert result.exit_code == 0, result.output
    assert "the bundle is on the server: " in result.stderr
    path = Path(result.stderr.split("the bundle is on the server: ")[1].split(" (job")[0])
    assert path.name == "bundle.zip" and path.is_file()  # the server's disk is this disk here
