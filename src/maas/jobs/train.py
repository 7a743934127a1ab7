"""The ``train`` job: fine-tune a text classifier, or train a small image classifier.

Spec keys: ``dataset`` (required), ``base`` (the encoder or classifier to start
from; required for text, optional for images), ``epochs`` (3), ``max_steps``
(none), ``batch_size`` (16), ``learning_rate`` or ``lr`` (5e-5 for text, 3e-3
for an image model trained from scratch), ``max_length`` (128 tokens),
``weight_decay`` (0.01), ``warmup_ratio`` (0), ``patience`` (2 evaluations
without a better validation macro-F1 stop training; 0 never stops early),
``eval_every`` (steps between validation passes; default once per epoch),
``nproc`` (1; more runs the same loop under torchrun, see :mod:`maas.jobs.ddp`)
and, for images from scratch, ``embedding_size`` (16), ``hidden_sizes``
([16, 32]), ``depths`` ([1, 1]).

Text: ``AutoModelForSequenceClassification`` on top of the base encoder, with
``num_labels``/``id2label`` from the dataset; the head is new, the encoder
weights are the base's.

Images from scratch: a tiny ResNet (``ResNetConfig``, basic blocks). It is a
plain CNN, it learns small images in a few epochs on a CPU, and it is an
``AutoModelForImageClassification`` model, so the ``image-classification``
runtime serves the result like any Hugging Face checkpoint. The version gets a
``preprocessor_config.json`` (resize to the dataset's image size, rescale by
1/255, normalise with mean = std = 0.5); training preprocesses with the
runtime's own :class:`~maas.runtimes.image_classification.ImagePreprocessing`
so served inputs match trained ones exactly. (A ViT of the same size learnt
far slower on 8x8 digits.)

The training loop itself (settings, examples, DDP world, :func:`~maas.jobs.fit.fit`)
is in :mod:`maas.jobs.fit`. It keeps the state with the best validation macro-F1; this
job saves that one (safetensors, Hugging Face layout, tokenizer or preprocessor config
beside it).
"""

from __future__ import annotations

from typing import Any

from maas.errors import InvalidRequestError
from maas.jobs.base import JobContext, JobOutput
from maas.jobs.dataset_files import Dataset, read_dataset
from maas.jobs.evaluate import evaluation_sections
from maas.jobs.reports import LineChart, Paragraph, Section, Table, render_report
from maas.jobs.training import TrainPlan, execute


def run(ctx: JobContext) -> JobOutput:
    spec = ctx.spec
    if not spec.get("dataset"):
        raise InvalidRequestError("train needs 'dataset'", param="dataset")
    dataset_dir = ctx.dataset_path(str(spec["dataset"]))
    base_ref = spec.get("base") or spec.get("model")
    base_dir = ctx.model_path(str(base_ref)) if base_ref else None
    plan = TrainPlan(
        dataset=str(dataset_dir),
        base=str(base_dir) if base_dir else None,
        output_dir=str(ctx.output_dir),
        spec=dict(spec),
        seed=ctx.seed,
    )
    nproc = int(spec.get("nproc", 1))
    if nproc > 1:
        from maas.jobs import ddp

        result = ddp.launch(ctx, plan, nproc)
    else:
        result = execute(plan, ctx)
    dataset = read_dataset(dataset_dir)
    return _output(ctx, dataset, result, base_ref=str(base_ref) if base_ref else None)


def _output(
    ctx: JobContext, dataset: Dataset, result: dict[str, Any], *, base_ref: str | None
) -> JobOutput:
    fit_result = result["fit"]
    best = fit_result["best"]
    metrics: dict[str, Any] = {
        "train_loss": fit_result["train_loss"][-1][1] if fit_result["train_loss"] else None,
        "steps": fit_result["steps"],
    }
    if best:
        metrics.update(val_accuracy=best["accuracy"], val_macro_f1=best["macro_f1"])
    test = result.get("test")
    if test:
        metrics.update(accuracy=test["accuracy"], macro_f1=test["macro_f1"], ece=test["ece"])
    params = {**result["settings"], "seed": ctx.seed, "dataset": ctx.spec["dataset"]}
    if base_ref:
        params["base"] = base_ref
    report = {"metrics": metrics, "params": params, **result}
    curves = {"train loss": [tuple(p) for p in fit_result["train_loss"]]}
    if fit_result["validation"]:
        curves["validation loss"] = [(v["step"], v["loss"]) for v in fit_result["validation"]]
    sections = [
        Section(
            "Summary",
            [
                Paragraph(
                    f"{fit_result['steps']} steps on {result['world_size']} process(es); "
                    f"best validation macro-F1 at step {fit_result['best_step']}"
                    + (" (early stop)." if fit_result["stopped_early"] else ".")
                ),
                Table(["metric", "value"], [[k, v] for k, v in metrics.items() if v is not None]),
                Table(["parameter", "value"], [[k, str(v)] for k, v in params.items()]),
            ],
        ),
        Section("Loss", [LineChart(curves, y_label="loss")]),
    ]
    if fit_result["validation"]:
        sections.append(
            Section(
                "Validation",
                [
                    LineChart(
                        {
                            "accuracy": [
                                (v["step"], v["accuracy"]) for v in fit_result["validation"]
                            ],
                            "macro-F1": [
                                (v["step"], v["macro_f1"]) for v in fit_result["validation"]
                            ],
                        },
                        y_label="score",
                    )
                ],
            )
        )
    if test:
        test_report = {
            "model": "trained model",
            "format": "hf",
            "dataset": ctx.spec["dataset"],
            "split": "test",
            "metrics": {k: test[k] for k in ("accuracy", "macro_f1", "ece")},
            "quality": test,
        }
        sections.extend(
            Section(f"Test split: {s.title.lower()}", s.blocks)
            for s in evaluation_sections(test_report, dataset)
        )
    return JobOutput(
        task=dataset.task,
        format="hf",
        metrics=metrics,
        params=params,
        report=report,
        report_html=render_report("Training report", sections),
        parent=base_ref,
        description=f"trained on {ctx.spec['dataset']}",
    )
