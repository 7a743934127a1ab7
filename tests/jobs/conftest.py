"""Fixtures shared by the tests of maas.jobs.

The ML fixtures (tiny models, datasets) are defined in ``ml_fixtures.py``, which
also holds importable helpers (``make_ctx``, ``LocalJobContext``, ...); they are
re-exported here so pytest finds them for every test module of this folder.
"""

from tests.jobs.ml_fixtures import (  # noqa: F401  (fixtures, found by name)
    digits_dataset,
    int8_quantized,
    sentiment_dataset,
    skewed_dataset,
    tiny_bert_dir,
    tiny_classifier_dir,
)
