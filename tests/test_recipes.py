"""The recommended recipe: what `prune` runs without a method, per model kind; said in result.json; --method wins."""
from __future__ import annotations

import json

import pytest

from _tiny_lm import tiny_lm
from synprune.errors import SynpruneError
from synprune.run.recipes import RECOMMENDED, Recipe, parse_recipe, recommended


def test_recipes_parse_type_and_fill_only_default_options():
    r = parse_recipe("fisher/repair=ls/calib_size=256/rearrange=false")
    assert r == Recipe("fisher", (("repair", "ls"), ("calib_size", 256), ("rearrange", False)))
    assert r.spec == "fisher/repair=ls/calib_size=256/rearrange=False"
    assert r.command_line() == "--method fisher --repair ls --calib-size 256 --rearrange False"
    assert r.apply({"repair": "none", "calib_size": 64}) == {"method": "fisher", "repair": "ls", "calib_size": 64,
                                                            "rearrange": False}
    for bad in ("", "fisher/repair", "fisher/nope=1", "fisher/calib_size=abc"):
        with pytest.raises(SynpruneError):
            parse_recipe(bad)
    for (kind, neurons), recipe in RECOMMENDED.items():  # every row names a registered method and real options
        from synprune.methods import get_method

        get_method(recipe.method)
        assert parse_recipe(recipe.spec) == recipe
    with pytest.raises(SynpruneError, match="--method"):
        recommended("robot", True)


def _text(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("\n".join(f"Line {i} says something about the weather today." for i in range(40)), encoding="utf-8")
    return str(text)


def test_no_method_runs_the_decoder_recipe_and_says_so(tmp_path):
    from synprune.run.prune import prune

    expected = recommended("lm", True)
    r = prune(tiny_lm(), None, _text(tmp_path), 0.25, method=None, units="heads,neurons", budget="flops:0.7",
              calib_size=4, eval_size=4, out=tmp_path / "p")
    saved = json.loads((tmp_path / "p" / "result.json").read_text())
    assert saved["details"]["recipe"]["spec"] == expected.spec and saved["details"]["recipe"]["kind"] == "lm"
    own = {"recon": "refit", "kwon": "ls"}.get(expected.method, "none")  # methods that always repair
    assert r.method == expected.method and r.config["repair"] == dict(expected.options).get("repair", own)
    heads_only = prune(tiny_lm(), None, _text(tmp_path), 0.25, method=None, calib_size=4, eval_size=4)
    assert heads_only.method == recommended("lm", False).method
    chosen = prune(tiny_lm(), None, _text(tmp_path), 0.25, method="magnitude", units="heads,neurons",
                   calib_size=4, eval_size=4)
    assert chosen.method == "magnitude" and "recipe" not in chosen.details and chosen.config["repair"] == "none"


def test_a_bad_recipe_value_is_named_as_the_recipes():
    with pytest.raises(SynpruneError, match=r"recipe 'fisher/calib_size=abc': 'abc' is not a valid value for calib_size"):
        parse_recipe("fisher/calib_size=abc")
