"""The recommended recipe per kind of model: what `synprune prune` runs when no --method is given.

One small table (`RECOMMENDED`): model kind (`lm` decoder, `classifier` encoder, `embedding` model) and whether
feed-forward neurons are pruned too -> a method and the options it runs with. Where the numbers come from:
- decoder, `--units heads,neurons`: the best synprune recipe of `benchmarks/decoder_peers.py`
  (`benchmarks/results/decoder_peers.md`, docs/decoders.md);
- encoder classifier, heads and neurons: Kwon et al.'s recipe, the best or within 0.3 of it on the task models
  at FLOPs 0.6-0.4 (`benchmarks/results/ffn_table.md`);
- embedding model (label-free), heads and neurons: `output-fisher --repair bias` (README, "Half the FLOPs");
- heads alone, any kind: SAP, the project's method and the command's default before recipes existed.

A recipe's options fill only options left at their defaults, so `--repair none` with a recipe that repairs
is the recipe's repair; `--method` picks any method and then no recipe applies.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from synprune.config import PruneConfig, coerce_option
from synprune.errors import SynpruneError


@dataclass(frozen=True)
class Recipe:
    """A method and its options, written `METHOD[/key=value...]` (e.g. `fisher/repair=ls`)."""

    method: str
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def spec(self) -> str:
        return "/".join([self.method, *(f"{k}={v}" for k, v in self.options)])

    def command_line(self) -> str:
        return " ".join([f"--method {self.method}", *(f"--{k.replace('_', '-')} {v}" for k, v in self.options)])

    def apply(self, options: dict[str, Any]) -> dict[str, Any]:
        """`options` with this method and, where an option is absent or at its default, this recipe's value."""
        default = PruneConfig()
        out = {**options, "method": self.method}
        for k, v in self.options:
            if k not in out or out[k] == getattr(default, k):
                out[k] = v
        return out


def parse_recipe(text: str) -> Recipe:
    """`METHOD[/key=value...]` -> Recipe, each value typed as its PruneConfig field."""
    method, *pairs = [p.strip() for p in text.strip().split("/")]
    if not method:
        raise SynpruneError(f"recipe {text!r}: write METHOD[/key=value...], e.g. fisher/repair=ls")
    options = []
    fields = set(PruneConfig.__dataclass_fields__)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in fields:
            raise SynpruneError(f"recipe {text!r}: {pair!r} is not key=value with key a prune option")
        try:
            options.append((key, coerce_option(key, value)))
        except SynpruneError:  # its message names --grid, where most values come from
            raise SynpruneError(f"recipe {text!r}: {value.strip()!r} is not a valid value for {key}") from None
    return Recipe(method, tuple(options))


# (model kind, feed-forward neurons pruned too) -> recipe. The decoder row is the one line to change when the
# benchmark finds a better one.
RECOMMENDED: dict[tuple[str, bool], Recipe] = {
    ("lm", True): Recipe("recon"),
    ("classifier", True): Recipe("kwon"),
    ("embedding", True): Recipe("output-fisher", (("repair", "bias"),)),
    ("lm", False): Recipe("sap"),
    ("classifier", False): Recipe("sap"),
    ("embedding", False): Recipe("sap"),
}
KIND_NAMES = {"lm": "decoder LM", "classifier": "encoder classifier", "embedding": "embedding model"}


def recommended(kind: str, neurons: bool) -> Recipe:
    if (kind, neurons) not in RECOMMENDED:
        raise SynpruneError(f"no recommended recipe for a {kind} model; pass --method (see `synprune methods`)")
    return RECOMMENDED[(kind, neurons)]
