"""Options live with what reads them: `PruneConfig` is the flat record of a run (what result.json keeps and a
sweep compares), and every option in it but the method belongs to exactly one stage's frozen dataclass, with the
same default, validated there."""
from __future__ import annotations

import dataclasses

import pytest

from synprune.config import PruneConfig, owners
from synprune.errors import SynpruneError


def test_every_option_has_one_owner_with_the_same_default():
    owned = [(f.name, f.default, owner) for owner in owners() for f in dataclasses.fields(owner)]
    names = [name for name, _, _ in owned]
    assert len(names) == len(set(names)), "an option has two owners"
    record = {f.name: f.default for f in dataclasses.fields(PruneConfig)}
    assert set(names) == set(record) - {"method"}, "give the option an owner, or drop it from PruneConfig"
    for name, default, owner in owned:
        assert record[name] == default, f"{owner.__name__}.{name} defaults to {default!r}, PruneConfig to {record[name]!r}"


@pytest.mark.parametrize("owner", owners(), ids=lambda o: o.__name__)
def test_owner_options_are_frozen_and_their_defaults_valid(owner):
    options = owner()
    assert owner.__dataclass_params__.frozen and options.validate() == options
    assert PruneConfig().options(owner) == options


@pytest.mark.parametrize("change, needle", [
    ({"calib_size": 0}, "--calib-size"), ({"k": 0}, "--k 0"), ({"threshold": "median"}, "--threshold"),
    ({"units": "groups"}, "--units"), ({"budget": "flops"}, "bad budget"), ({"tolerance": 2.0}, "--tolerance 2.0"),
    ({"repair": "glue"}, "--repair"), ({"neuron_score": "loud"}, "--neuron-score"),
])
def test_the_record_is_validated_by_each_owner(change, needle):
    bad = PruneConfig(**change)
    owner = next(o for o in owners() if set(change) <= {f.name for f in dataclasses.fields(o)})
    with pytest.raises(SynpruneError, match=needle):
        bad.options(owner).validate()
    with pytest.raises(SynpruneError, match=needle):
        bad.validate()
