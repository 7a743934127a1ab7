"""Structured pruning: attention heads and FFN neurons removed, so the model is really smaller.

See ``maas.jobs.optimize`` for the shared export, comparison and report helpers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from maas.errors import InvalidRequestError, MaasError
from maas.jobs.base import JobContext, JobOutput
from maas.jobs.dataset_files import Dataset, has_split, inputs, read_dataset, read_split, targets
from maas.jobs.fit import TextExamples, TrainSettings, fit
from maas.jobs.predictors import HFTextPredictor, config_labels, label_mapping
from maas.jobs.reports import Section, Table

if TYPE_CHECKING:
    pass
from maas.jobs.comparison import (
    comparison_metrics,
    comparison_output,
    eval_records,
    sample_texts,
)
from maas.jobs.onnx_export import (
    DEFAULT_OPSET,
    ONNX_GRAPH,
    export_onnx,
    logits_parity,
    require_parity,
    write_onnx_companions,
)
from maas.jobs.optimize import _check, _load_hf_classifier, _model_ref, compare_served


def encoder_layers(model: Any) -> list[Any]:
    """The transformer layers of a BERT-style encoder (BERT, RoBERTa, ELECTRA naming)."""
    base = getattr(model, model.base_model_prefix, model)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if layers is None or not all(
        hasattr(layer, "attention")
        and hasattr(layer.attention, "self")
        and hasattr(layer, "intermediate")
        and hasattr(layer, "output")
        for layer in layers
    ):
        raise InvalidRequestError(
            "pruning and distillation support BERT-style encoders "
            "(encoder.layer[i].attention.self / intermediate / output)",
            param="model",
        )
    return list(layers)


def _slice_linear(linear: Any, *, rows: Any = None, cols: Any = None) -> Any:
    """A new Linear keeping output ``rows`` and/or input ``cols`` (index tensors)."""
    import torch

    weight = linear.weight.detach()  # (out, in)
    bias = linear.bias.detach() if linear.bias is not None else None
    if rows is not None:
        weight = weight[rows]
        bias = bias[rows] if bias is not None else None
    if cols is not None:
        weight = weight[:, cols]
    new = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new


def prune_ffn(model: Any, fraction: float) -> int:
    """Drop the ``fraction`` of FFN neurons with the smallest L1 weight, per layer; new width."""
    import torch

    layers = encoder_layers(model)
    width = layers[0].intermediate.dense.out_features
    keep = max(1, round(width * (1 - fraction)))
    for layer in layers:
        up, down = layer.intermediate.dense, layer.output.dense  # (I, H), (H, I)
        score = up.weight.abs().sum(dim=1) + down.weight.abs().sum(dim=0)  # (I,)
        kept = torch.sort(torch.topk(score, keep).indices).values
        layer.intermediate.dense = _slice_linear(up, rows=kept)
        layer.output.dense = _slice_linear(down, cols=kept)
    model.config.intermediate_size = keep
    return int(keep)


def prune_heads(model: Any, fraction: float) -> int:
    """Drop the ``fraction`` of attention heads with the smallest L1 weight, per layer."""
    import torch

    layers = encoder_layers(model)
    heads = int(model.config.num_attention_heads)
    keep = max(1, round(heads * (1 - fraction)))
    for layer in layers:
        attn, out = layer.attention.self, layer.attention.output
        size = attn.attention_head_size
        # (heads,) importance: q/k/v rows of the head plus its columns of the output projection.
        score = sum(
            lin.weight.abs().reshape(heads, size, -1).sum(dim=(1, 2))
            for lin in (attn.query, attn.key, attn.value)
        ) + out.dense.weight.abs().reshape(-1, heads, size).sum(dim=(0, 2))
        kept_heads = torch.sort(torch.topk(score, keep).indices).values
        kept = (kept_heads[:, None] * size + torch.arange(size)).reshape(-1)  # (keep * size,)
        attn.query = _slice_linear(attn.query, rows=kept)
        attn.key = _slice_linear(attn.key, rows=kept)
        attn.value = _slice_linear(attn.value, rows=kept)
        out.dense = _slice_linear(out.dense, cols=kept)
        attn.num_attention_heads = keep
        attn.all_head_size = keep * size
    return int(keep)


# Builds the summed-loss function of a run from its train records and the dataset.
LossFactory = Callable[[list[dict[str, Any]], Dataset], Any]


def _finetune(
    ctx: JobContext,
    model: Any,
    tokenizer: Any,
    steps: int,
    *,
    loss_factory: LossFactory | None = None,
    default_lr: float = 5e-5,
) -> dict[str, Any]:
    """A supervised run on the dataset's train split (validation picks the best state).

    Targets are expressed in the model's own label order (its ``id2label``),
    which need not be the dataset's.
    """
    ref = ctx.spec.get("dataset")
    if not ref:
        raise InvalidRequestError(f"{ctx.kind} needs 'dataset' to train", param="dataset")
    dataset = read_dataset(ctx.dataset_path(str(ref)))
    spec = {**ctx.spec, "max_steps": steps} if steps else dict(ctx.spec)
    spec.pop("nproc", None)  # these short runs stay in this process
    settings = TrainSettings.from_spec(spec, default_lr=default_lr)
    model_labels = config_labels(model.config)
    # label_mapping: model column -> dataset index; invert it for dataset index -> model column.
    to_model = np.argsort(label_mapping(model_labels, dataset.label_names))
    train_records = read_split(dataset, "train")
    val_records = read_split(dataset, "validation") if has_split(dataset, "validation") else []

    def examples(records: list[dict[str, Any]]) -> TextExamples:
        labels = to_model[targets(records, dataset)]
        return TextExamples(inputs(records, dataset), labels, tokenizer, settings.max_length)

    train, validation = examples(train_records), examples(val_records) if val_records else None
    kwargs = {"loss_fn": loss_factory(train_records, dataset)} if loss_factory else {}
    result = fit(model, train, validation, model_labels, settings, ctx, seed=ctx.seed, **kwargs)
    return {
        "steps": result.steps,
        "best_step": result.best_step,
        "best": result.best,
        "train_loss": result.train_loss,
    }


def prune(ctx: JobContext) -> JobOutput:

    ref = _model_ref(ctx, "model", "base")
    heads_fraction = float(ctx.spec.get("heads_fraction", 0.0))
    ffn_fraction = float(ctx.spec.get("ffn_fraction", 0.5 if heads_fraction == 0 else 0.0))
    steps = int(ctx.spec.get("finetune_steps", 0))
    fmt = str(ctx.spec.get("format", "onnx" if heads_fraction > 0 else "hf"))
    for name, value in (("heads_fraction", heads_fraction), ("ffn_fraction", ffn_fraction)):
        if not 0 <= value < 1:
            raise InvalidRequestError(f"{name} must be in [0, 1)", param=name)
    if heads_fraction == 0 and ffn_fraction == 0:
        raise InvalidRequestError("nothing to prune: set heads_fraction and/or ffn_fraction")
    if fmt not in ("hf", "onnx"):
        raise InvalidRequestError("format must be hf or onnx", param="format")
    if heads_fraction > 0 and fmt == "hf":
        raise InvalidRequestError(
            "a model with pruned heads cannot be described by its Hugging Face config "
            "(head size = hidden_size / num_attention_heads); use format onnx",
            param="format",
        )
    _check(ctx, 0, 4, f"loading {ref}")
    source = ctx.model_path(ref)
    model, tokenizer = _load_hf_classifier(source)
    dataset, records = eval_records(ctx)
    before = sum(p.numel() for p in model.parameters())
    _check(ctx, 1, 4, "pruning")
    pruning: dict[str, Any] = {}
    if ffn_fraction > 0:
        pruning["intermediate_size"] = prune_ffn(model, ffn_fraction)
    if heads_fraction > 0:
        pruning["attention_heads_per_layer"] = prune_heads(model, heads_fraction)
    after = sum(p.numel() for p in model.parameters())
    ctx.log(f"parameters {before} -> {after} ({pruning})")
    finetune: dict[str, Any] | None = None
    if steps > 0:
        _check(ctx, 2, 4, f"fine-tuning for {steps} steps")
        finetune = _finetune(ctx, model, tokenizer, steps)
    model.eval()
    _check(ctx, 3, 4, f"saving ({fmt})")
    if fmt == "hf":
        from transformers import AutoModelForSequenceClassification

        model.save_pretrained(str(ctx.output_dir))
        tokenizer.save_pretrained(str(ctx.output_dir))
        reloaded = AutoModelForSequenceClassification.from_pretrained(str(ctx.output_dir)).eval()
        check = HFTextPredictor(reloaded, tokenizer)
        texts = sample_texts(records)
        diff = float(
            np.abs(
                check.predict_proba(texts) - HFTextPredictor(model, tokenizer).predict_proba(texts)
            ).max()
        )
        if diff > 1e-4:
            raise MaasError(f"the saved pruned model does not reload faithfully (diff {diff:.2e})")
    else:
        model.config.maas_pruning = pruning  # informational: the graph holds the real sizes
        export_onnx(
            model, tokenizer, ctx.output_dir / ONNX_GRAPH, int(ctx.spec.get("opset", DEFAULT_OPSET))
        )
        write_onnx_companions(ctx.output_dir, tokenizer=tokenizer, config=model.config)
        require_parity(logits_parity(model, tokenizer, ctx.output_dir, sample_texts(records)), ctx)
    # Both measured as the server runs them, from their directories (jobs/served.py).
    comparison = compare_served(ctx, source, dataset, records)
    ctx.progress(4, 4)
    metrics = {
        **comparison_metrics(comparison),
        "parameter_count": after,
        "parameter_ratio": before / after,
    }
    params = {
        "heads_fraction": heads_fraction,
        "ffn_fraction": ffn_fraction,
        "finetune_steps": steps,
        "format": fmt,
        **pruning,
    }
    extra = [
        Section(
            "Pruning",
            [
                Table(
                    ["measure", "value"],
                    [
                        ["parameters before", before],
                        ["parameters after", after],
                        *[[k, v] for k, v in pruning.items()],
                        *([["fine-tune steps", finetune["steps"]]] if finetune else []),
                    ],
                )
            ],
        )
    ]
    return comparison_output(
        ctx,
        title=f"structured pruning of {ref}",
        fmt=fmt,
        metrics=metrics,
        params=params,
        comparison=comparison,
        parent=ref,
        names=("original", "pruned"),
        extra=extra,
    )
