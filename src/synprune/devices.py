"""Models spread over several devices with accelerate's `device_map` (`synprune prune --device-map`).

Such a model's modules sit on different GPUs, on the CPU, or offloaded (to the CPU or to disk: their parameters
are then on the `meta` device outside a forward pass, and accelerate's hook on the module loads them for it).
What synprune needs from it, and nothing else assumes one device:

- `input_device`: where the model's inputs go (accelerate's main device: the first GPU of the map, else the CPU);
  accelerate moves activations between devices itself, and masks and hooks follow their input's device.
- `tensor`: a module's parameter as a real tensor wherever it lives (read back from an offload if need be), for
  the scores and repairs that read weights (`arch.weight_rows`).
- `gathered`: a plain copy of the whole model on the CPU (offloaded weights read back), which export slices.
- `placement`: the `from_pretrained` keyword arguments of a `--device-map` / `--max-memory` pair.
"""
from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from synprune.errors import SynpruneError

NAMED_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def dispatched(model: nn.Module) -> bool:
    """Loaded (or dispatched) with an accelerate device map: weights may sit on several devices or be offloaded."""
    return bool(getattr(model, "hf_device_map", None))


def input_device(model: nn.Module) -> torch.device:
    """Where inputs go: a dispatched model's main device (accelerate's rule: the first device of the map that is
    neither "cpu" nor "disk", else the CPU), else the device of the first parameter not on `meta`."""
    device_map = getattr(model, "hf_device_map", None)
    if device_map:
        placed = [d for d in device_map.values() if str(d) not in ("cpu", "disk")]
        return torch.device(placed[0]) if placed else torch.device("cpu")
    for t in itertools.chain(model.parameters(), model.buffers()):
        if t.device.type != "meta":
            return t.device
    return torch.device("cpu")


def tensor(module: nn.Module, name: str) -> torch.Tensor | None:
    """`module`'s own parameter or buffer `name` (e.g. "weight", "bias") as a real tensor: itself where it is
    loaded, else (offloaded by accelerate: on `meta` outside a forward pass) a CPU copy read from the offload."""
    t = getattr(module, name, None)
    if t is None or t.device.type != "meta":
        return t
    with _loaded(module):
        return getattr(module, name).detach()


def gathered(model: nn.Module) -> nn.Module:
    """A plain copy of a dispatched `model` with every weight on the CPU (offloaded ones read back), for export.
    Needs the whole model's memory on the CPU, as the exported file does; `model` itself is left as it was."""
    with torch.device("meta"):
        twin = type(model)._from_config(model.config)
    made: dict[int, nn.Parameter] = {}  # tied weights stay one parameter
    theirs = dict(model.named_modules())
    for name, mine in twin.named_modules():
        source = theirs[name]
        params = list(source.named_parameters(recurse=False))
        with _loaded(source):  # an offloaded module's weights, read back once for all of them
            for pname, p in params:
                if id(p) not in made:
                    made[id(p)] = nn.Parameter(getattr(source, pname).detach().to("cpu", copy=True),
                                               requires_grad=p.requires_grad)
            for bname, b in list(source.named_buffers(recurse=False)):
                mine._buffers[bname] = None if b is None else getattr(source, bname).to("cpu", copy=True)
        for pname, p in params:
            setattr(mine, pname, made[id(p)])
    left = [n for n, t in itertools.chain(twin.named_parameters(), twin.named_buffers()) if t.device.type == "meta"]
    if left:
        raise SynpruneError(f"could not gather {left[0]} (and {len(left) - 1} more) of the device-mapped model to the CPU")
    return twin.eval()


@contextlib.contextmanager
def _loaded(module: nn.Module) -> Iterator[None]:
    """Inside the block, an offloaded module holds its real weights (on the CPU); other modules as they are."""
    if not any(t.device.type == "meta" for t in itertools.chain(module.parameters(recurse=False),
                                                                  module.buffers(recurse=False))):
        yield
        return
    from accelerate.utils import align_module_device, has_offloaded_params

    if not has_offloaded_params(module):
        raise SynpruneError(f"{type(module).__name__} has weights on the meta device and no accelerate offload holds them")
    with align_module_device(module, torch.device("cpu")):
        yield


def parse_device_map(text: str | None) -> str | dict[str, Any] | None:
    """`--device-map`: a named strategy (auto, balanced, balanced_low_0, sequential) or a JSON file mapping module
    names to devices (a GPU index, "cuda:N", "cpu" or "disk")."""
    if text is None or text == "":
        return None
    if text in NAMED_MAPS:
        return text
    path = Path(text)
    if not path.is_file():
        raise SynpruneError(f"--device-map {text}: use {', '.join(NAMED_MAPS)} or a JSON file mapping module names to devices")
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise SynpruneError(f"--device-map {text} is not valid JSON: {e}") from None
    if not isinstance(mapping, dict) or not mapping or not all(
            isinstance(k, str) and isinstance(v, (int, str)) and not isinstance(v, bool) for k, v in mapping.items()):
        raise SynpruneError(f"--device-map {text}: give a JSON object of module name -> device "
                            '(e.g. {"model.layers.0": 0, "model.layers.1": "cpu", "lm_head": "disk"})')
    return mapping


def parse_max_memory(text: str | None) -> dict[int | str, str] | None:
    """`--max-memory 0=20GiB,1=20GiB,cpu=60GiB`: the most each device may hold (accelerate's max_memory)."""
    if not text:
        return None
    out: dict[int | str, str] = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        device, sep, amount = item.partition("=")
        if not sep or not amount.strip() or not device.strip():
            raise SynpruneError(f"--max-memory {item!r}: write DEVICE=AMOUNT pairs, e.g. 0=20GiB,cpu=60GiB")
        device = device.strip()
        out[int(device) if device.isdigit() else device] = amount.strip()
    return out


def placement(device_map: str | dict | None, max_memory: dict | None = None) -> dict[str, Any]:
    """`from_pretrained` keyword arguments placing a model by `device_map`; a map that may offload to disk gets
    an offload folder (temporary, removed when the process ends)."""
    if device_map is None:
        if max_memory:
            raise SynpruneError("--max-memory bounds what --device-map places on each device; add --device-map auto")
        return {}
    try:
        import accelerate  # noqa: F401
    except ImportError:
        raise SynpruneError("--device-map needs the accelerate package: `pip install accelerate`") from None
    kwargs: dict[str, Any] = {"device_map": device_map}
    if max_memory:
        kwargs["max_memory"] = max_memory
    if not isinstance(device_map, dict) or "disk" in device_map.values():
        kwargs["offload_folder"] = _offload_folder()
    return kwargs


_FOLDERS: list[str] = []


def _offload_folder() -> str:
    if not _FOLDERS:
        _FOLDERS.append(tempfile.mkdtemp(prefix="synprune-offload-"))
        atexit.register(shutil.rmtree, _FOLDERS[0], True)
    return _FOLDERS[0]
