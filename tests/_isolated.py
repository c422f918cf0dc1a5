"""Load exported folders in a fresh Python that cannot import synprune (isolated mode, the source folders off
sys.path, and an import hook that refuses `synprune`), and return their outputs: what a user without synprune
installed gets from transformers alone. One subprocess checks many folders."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

PRELUDE = r'''
import importlib.abc, sys
class _NoSynprune(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "synprune" or name.startswith("synprune."):
            raise ImportError("synprune is not installed here")
sys.meta_path.insert(0, _NoSynprune())
sys.path = [p for p in sys.path if not p.rstrip("/").endswith(("/src", "/tests")) and p not in ("", ".")]
'''

CHILD = PRELUDE + r'''
import json
import torch, transformers
transformers.utils.logging.set_verbosity_error()
torch.set_num_threads(1)
jobs = json.load(open(sys.argv[1]))
for job in jobs:
    auto = getattr(transformers, job["auto"])
    kwargs = {"trust_remote_code": True} if job.get("remote") else {}
    try:
        model = auto.from_pretrained(job["dir"], **kwargs).eval()
        inputs = torch.load(job["inputs"])
        with torch.no_grad():
            out = model(**inputs)[0]
        torch.save({"out": out, "class": type(model).__name__, "synprune_loaded": "synprune" in sys.modules}, job["out"])
    except Exception as e:  # reported per folder
        torch.save({"error": f"{type(e).__name__}: {e}"}, job["out"])
'''


def _env(tmp: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_MODULES_CACHE=f"{tmp}/modules")
    return env


def run_without_synprune(code: str, cwd: str | Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `code` in a Python that cannot import synprune, in folder `cwd`."""
    with tempfile.TemporaryDirectory() as tmp:
        return subprocess.run([sys.executable, "-I", "-c", PRELUDE + code], cwd=cwd, env=_env(tmp),
                              capture_output=True, text=True, timeout=timeout)


def outputs_without_synprune(jobs: list[dict], timeout: float = 600) -> list[dict]:
    """jobs: {"dir", "auto" (transformers Auto class name), "remote" (trust_remote_code), "inputs" (dict of
    tensors)}; returns per job {"out": first output, "class": loaded class name} or {"error": ...}."""
    with tempfile.TemporaryDirectory() as tmp:
        spec = []
        for i, job in enumerate(jobs):
            torch.save(job["inputs"], f"{tmp}/in{i}.pt")
            spec.append({"dir": str(job["dir"]), "auto": job["auto"], "remote": bool(job.get("remote")),
                         "inputs": f"{tmp}/in{i}.pt", "out": f"{tmp}/out{i}.pt"})
        Path(tmp, "jobs.json").write_text(json.dumps(spec))
        r = subprocess.run([sys.executable, "-I", "-c", CHILD, f"{tmp}/jobs.json"], env=_env(tmp), capture_output=True,
                           text=True, timeout=timeout)
        assert r.returncode == 0, r.stderr[-3000:]
        return [torch.load(f"{tmp}/out{i}.pt", weights_only=False) for i in range(len(jobs))]
