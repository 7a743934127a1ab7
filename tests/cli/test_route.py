"""``maas models route``: show, set and clear a model's routing policy (local mode)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.test_deploy import maas, pushed


def test_a_split_with_a_shadow_is_set_shown_and_cleared(home: Path, hf_dir: Path) -> None:
    pushed(home, hf_dir)
    pushed(home, hf_dir)
    code, out, _ = maas(home, "models", "route", "clf")
    assert code == 0 and "no routing policy" in out
    code, out, err = maas(
        home, "models", "route", "clf", "--split", "1=90,2=10", "--shadow", "2:0.25"
    )
    assert code == 0, err
    assert "v1 90%" in out and "v2 10%" in out and "v2 gets 25% as mirrors" in out
    assert "local:" in out
    code, out, _ = maas(home, "models", "route", "clf", "--json")
    policy = json.loads(out)
    assert policy["split"] == {"1": 90, "2": 10} and policy["sticky"] is None
    assert policy["shadow"] == {"version": 2, "fraction": 0.25}
    code, out, _ = maas(home, "models", "route", "clf", "--split", "@production=1", "--sticky-key")
    assert code == 0 and "v@production" not in out and "@production 100%" in out
    assert "sticky per key" in out
    code, out, _ = maas(home, "models", "route", "clf", "--clear")
    assert code == 0 and "cleared" in out
    code, out, _ = maas(home, "models", "route", "clf")
    assert "no routing policy" in out


def test_malformed_options_and_targets_are_clear_errors(home: Path, hf_dir: Path) -> None:
    pushed(home, hf_dir)
    for args, words in [
        (["--split", "1:90"], "is not TARGET=WEIGHT"),
        (["--split", "1=1", "--shadow", "two"], "is not VERSION[:FRACTION]"),
        (["--shadow", "1"], "need --split"),
        (["--clear", "--split", "1=1"], "--clear takes no other option"),
        (["--split", "5=1"], "clf:5 does not exist"),
    ]:
        code, out, err = maas(home, "models", "route", "clf", *args)
        assert code != 0, args
        assert words in out + err, (args, out, err)
