"""Distillation: a student with fewer layers, initialised from the teacher, learns its soft labels.

See ``maas.jobs.optimize`` for the shared export, comparison and report helpers.
"""

from __future__ import annotations

import copy
import re
from typing import TYPE_CHECKING, Any

from maas.errors import InvalidRequestError
from maas.jobs.base import JobContext, JobOutput
from maas.jobs.dataset_files import Dataset, inputs, targets
from maas.jobs.fit import TextExamples
from maas.jobs.predictors import config_labels, label_mapping
from maas.jobs.reports import Section, Table
from maas.jobs.training import build_text_classifier

if TYPE_CHECKING:
    import torch
from maas.jobs.comparison import (
    comparison_metrics,
    comparison_output,
    eval_records,
)
from maas.jobs.optimize import _check, _load_hf_classifier, _model_ref, compare_served
from maas.jobs.prune import _finetune, encoder_layers

_LAYER_KEY = re.compile(r"(^|\.)encoder\.layer\.(\d+)\.")


def student_layer_indices(teacher_layers: int, student_layers: int) -> list[int]:
    """Teacher layers that initialise the student: evenly spaced, first and last included."""
    if student_layers == 1:
        return [teacher_layers - 1]
    return [round(i * (teacher_layers - 1) / (student_layers - 1)) for i in range(student_layers)]


def make_student(teacher: Any, student_layers: int) -> tuple[Any, list[int]]:
    """A copy of ``teacher`` with ``student_layers`` of its layers (weights copied)."""
    from transformers import AutoModelForSequenceClassification

    encoder_layers(teacher)  # fail early on unsupported architectures
    total = int(teacher.config.num_hidden_layers)
    if not 1 <= student_layers < total:
        raise InvalidRequestError(
            f"student_layers must be between 1 and {total - 1}", param="student_layers"
        )
    chosen = student_layer_indices(total, student_layers)
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = student_layers
    student = AutoModelForSequenceClassification.from_config(config)  # type: ignore[no-untyped-call]
    state = {}
    for key, value in teacher.state_dict().items():
        match = _LAYER_KEY.search(key)
        if match is None:
            state[key] = value
            continue
        layer = int(match.group(2))
        if layer in chosen:
            new_index = chosen.index(layer)
            state[key[: match.start(2)] + str(new_index) + key[match.end(2) :]] = value
    student.load_state_dict(state, strict=True)
    return student, chosen


def distill(ctx: JobContext) -> JobOutput:
    """Train a smaller student on the teacher's soft labels mixed with the true labels.

    The student is the teacher cut to ``student_layers`` layers (see
    :func:`make_student`), or the registered model ``student`` given a fresh
    head for the teacher's labels. Loss per example:
    ``alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) * CE``.
    """
    import torch
    import torch.nn.functional as F

    ref = _model_ref(ctx, "teacher", "model")
    temperature = float(ctx.spec.get("temperature", 2.0))
    alpha = float(ctx.spec.get("alpha", 0.5))
    if temperature <= 0 or not 0 <= alpha <= 1:
        raise InvalidRequestError("temperature must be > 0 and alpha in [0, 1]")
    _check(ctx, 0, 3, f"loading teacher {ref}")
    source = ctx.model_path(ref)
    teacher, teacher_tokenizer = _load_hf_classifier(source)
    teacher_labels = config_labels(teacher.config)
    torch.manual_seed(ctx.seed)
    chosen: list[int] = []
    if ctx.spec.get("student"):
        student, tokenizer = build_text_classifier(
            ctx.model_path(str(ctx.spec["student"])), teacher_labels
        )
        what = f"student {ctx.spec['student']}"
    else:
        layers = int(ctx.spec.get("student_layers", max(1, teacher.config.num_hidden_layers // 2)))
        student, chosen = make_student(teacher, layers)
        tokenizer = teacher_tokenizer
        what = f"{layers} layers (teacher layers {chosen})"
    student_labels = config_labels(student.config)
    max_length = int(ctx.spec.get("max_length", 128))

    def soft_targets(records: list[dict[str, Any]], dataset: Dataset) -> Any:
        # Teacher logits for every train example, computed once with the teacher's own
        # tokenizer, columns put in the student's label order; looked up by example index.
        seen = TextExamples(
            inputs(records, dataset), targets(records, dataset), teacher_tokenizer, max_length
        )
        with torch.inference_mode():
            chunks = [
                teacher(**seen.batch(torch.arange(s, min(s + 64, len(seen))))).logits.float()
                for s in range(0, len(seen), 64)
            ]
        raw = torch.cat(chunks)  # (n, labels), teacher order
        teacher_logits = torch.empty_like(raw)
        teacher_logits[:, torch.from_numpy(label_mapping(teacher_labels, student_labels))] = raw

        def loss(logits: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            # Hinton et al.: T^2 keeps the soft-target gradients on the CE scale.
            soft = (
                F.kl_div(
                    F.log_softmax(logits / temperature, dim=-1),
                    F.softmax(teacher_logits[idx] / temperature, dim=-1),
                    reduction="none",
                ).sum(dim=-1)
                * temperature**2
            )  # (b,)
            hard = F.cross_entropy(logits, labels, reduction="none")  # (b,)
            return (alpha * soft + (1 - alpha) * hard).sum()

        return loss

    _check(ctx, 1, 3, f"distilling into {what} (T={temperature}, alpha={alpha})")
    training = _finetune(ctx, student, tokenizer, 0, loss_factory=soft_targets, default_lr=1e-4)
    student.eval()
    student.save_pretrained(str(ctx.output_dir))
    tokenizer.save_pretrained(str(ctx.output_dir))
    _check(ctx, 2, 3, "comparing with the teacher")
    dataset, records = eval_records(ctx)
    layers = int(student.config.num_hidden_layers)
    # Both are measured as the server runs them, from their folders (jobs/served.py).
    comparison = compare_served(ctx, source, dataset, records)
    ctx.progress(3, 3)
    metrics = {
        **comparison_metrics(comparison),
        "student_layers": layers,
        "train_loss": training["train_loss"][-1][1] if training["train_loss"] else None,
    }
    params = {
        "student": ctx.spec.get("student"),
        "student_layers": layers,
        "teacher_layers": chosen,
        "temperature": temperature,
        "alpha": alpha,
        "steps": training["steps"],
    }
    return comparison_output(
        ctx,
        title=f"distillation of {ref}",
        fmt="hf",
        metrics=metrics,
        params=params,
        comparison=comparison,
        parent=ref,
        names=("teacher", "student"),
        extra=[
            Section(
                "Training",
                [
                    Table(
                        ["measure", "value"],
                        [
                            ["steps", training["steps"]],
                            ["best step", training["best_step"]],
                            *[[f"validation {k}", v] for k, v in training["best"].items()],
                        ],
                    )
                ],
            )
        ],
    )
