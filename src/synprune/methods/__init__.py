"""The catalogue of head-scoring methods. Each is one function registered by name:

    @register("magnitude")
    def magnitude(ctx: Calibration, cfg) -> HeadScores: ...

It reads its options from `cfg` (the run's options, a `synprune.config.PruneConfig`: `uses` names those it reads) and its data from the shared `Calibration` context (parses, attention statistics, gradients are
computed once there and reused across methods) and returns its scores and its pruning order.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import numpy as np

from ..errors import SynpruneError

if TYPE_CHECKING:
    from synprune.calibrate.context import Calibration

Head = tuple[int, int]


@dataclass
class HeadScores:
    """A method's verdict: `scores` (layers x heads, the method's own units) and `order`, most prunable first."""

    scores: np.ndarray
    order: list[Head]
    details: dict = field(default_factory=dict)


MethodFn = Callable[["Calibration", Any], HeadScores]  # (context, the run's options)
METHODS: dict[str, MethodFn] = {}
USES: dict[str, frozenset[str]] = {}
NEEDS: dict[str, tuple[str, ...]] = {}
OPTIONS: dict[str, type] = {}  # a method's own options: a frozen dataclass of PruneConfig fields, validated there
# Collectors of an attention scan a method reads from the calibration context's memo, by memo key: a sweep plans
# them (`Calibration.planned_scans`) so that the first scan of the run collects them too.
SCANS: dict[str, dict[str, Callable[["Calibration"], object]]] = {}
# What a method may need from the calibration run (listed by `synprune methods`).
NEED_TEXT = {"parser": "dependency parses (spaCy, or --parses)", "attention": "an attention scan",
             "gradients": "backward passes", "activations": "a forward pass over the calibration data", "labels": "labels (without them: the label-free output Fisher)"}


def register(name: str, uses: Iterable[str] = (), needs: Iterable[str] = (),
             scans: dict[str, Callable[["Calibration"], object]] | None = None,
             options: type | None = None) -> Callable[[MethodFn], MethodFn]:
    """Register a method. `options`: its own options, a frozen dataclass with `validate()` whose fields are
    PruneConfig fields (SAP: k, threshold, ...). `uses`: the PruneConfig options its scores depend on besides the
    calibration data, `options`' fields included (random: seed), so a sweep reruns it only when one of those
    changes. `needs`: keys of `NEED_TEXT`, what it computes or reads. `scans`: memo key -> a new collector it
    reads (one that looks at arcs with punctuation), for `SCANS`."""
    unknown = set(needs) - set(NEED_TEXT)
    if unknown:
        raise ValueError(f"unknown needs {sorted(unknown)}; use {sorted(NEED_TEXT)}")

    def deco(fn: MethodFn) -> MethodFn:
        METHODS[name] = fn
        USES[name] = frozenset(uses) | frozenset(f.name for f in (fields(options) if options is not None else ()))
        if options is not None:
            OPTIONS[name] = options
        NEEDS[name] = tuple(needs)
        SCANS[name] = dict(scans or {})
        return fn

    return deco


def order_by(scores: np.ndarray, highest_first: bool, tiebreak: np.ndarray | None = None) -> list[Head]:
    """Heads sorted by score (then by `tiebreak` ascending, then by layer and head): a deterministic order."""
    L, H = scores.shape
    primary = -scores if highest_first else scores
    second = tiebreak if tiebreak is not None else np.zeros_like(scores)
    keys = sorted(((primary[l, h], second[l, h], l, h) for l in range(L) for h in range(H)))
    return [(l, h) for _, _, l, h in keys]


def fuse_orders(*orders: Sequence[Head]) -> list[Head]:
    """Rank fusion: heads by their mean position over the orders (ties: the last order's position)."""
    pos = [{h: i for i, h in enumerate(o)} for o in orders]
    return sorted(orders[0], key=lambda h: (sum(p[h] for p in pos) / len(pos), pos[-1][h]))


def _load_all() -> None:
    for mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{mod.name}")


def get_method(name: str) -> MethodFn:
    _load_all()
    if name not in METHODS:
        raise SynpruneError(f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def uses(name: str) -> frozenset[str]:
    """The options `name`'s scores depend on (see `register`)."""
    get_method(name)
    return USES.get(name, frozenset())


def unused_options(name: str) -> list[str]:
    """Scoring options some method reads but `name` does not (the seed is never one: it draws the sample)."""
    get_method(name)
    return sorted(set().union(*USES.values()) - USES.get(name, frozenset()) - {"seed"})


def method_options() -> list[type]:
    """Every registered method's own options class, once each."""
    _load_all()
    return list(dict.fromkeys(OPTIONS.values()))


def available() -> list[str]:
    _load_all()
    return sorted(METHODS)


def score(ctx: "Calibration", cfg) -> HeadScores:
    """A method's scores, computed once per context and scoring options (not per budget)."""
    # the seed always: gradient methods draw the output Fisher's directions from it when there are no labels
    key = ("scores", cfg.method, cfg.seed, *((o, getattr(cfg, o)) for o in sorted(uses(cfg.method))))
    with ctx.timed("score"):
        return ctx.memo(key, lambda: get_method(cfg.method)(ctx, cfg))
