"""Concurrent pushes from real threads and real processes get distinct, consecutive numbers."""

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from maas.config import Settings
from maas.registry.store import Registry


def test_four_threads_pushing_one_model_get_versions_1_to_4(
    settings: Settings, hf_dir: Path
) -> None:
    registries = [Registry(settings) for _ in range(4)]
    try:
        with ThreadPoolExecutor(4) as pool:
            refs = list(
                pool.map(
                    lambda r: r.push(hf_dir, "m", task="text-classification").version, registries
                )
            )
        assert sorted(refs) == [1, 2, 3, 4]
        assert registries[0].check_consistency() == []
    finally:
        for r in registries:
            r.close()


@pytest.mark.slow
def test_four_processes_pushing_one_model_get_versions_1_to_4(
    settings: Settings, hf_dir: Path
) -> None:
    # A fresh MAAS_HOME: the processes also race to create the schema.
    env = {"MAAS_HOME": str(settings.home), "PATH": "/usr/bin:/bin"}
    cmd = [
        sys.executable,
        "-m",
        "maas.cli",
        "models",
        "push",
        str(hf_dir),
        "--name",
        "m",
        "--task",
        "text-classification",
    ]
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    for p, (_out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
    assert sorted(out.strip() for out, _ in outputs) == ["m:1", "m:2", "m:3", "m:4"]
    reg = Registry(settings)
    try:
        assert [v.version for v in reg.list_versions("m")] == [1, 2, 3, 4]
        assert reg.check_consistency(deep=True) == []
    finally:
        reg.close()
