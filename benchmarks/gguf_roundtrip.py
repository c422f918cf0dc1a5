"""How close a GGUF file written by synprune is to the pruned model it came from, per file type (f32, f16, Q8_0).

Takes an exported standard checkpoint (`synprune prune ... --layout uniform --export DIR`, or `synprune export`),
writes it as GGUF in each type (`synprune.export.gguf.write_gguf`, the tokenizer copied from `--source-gguf` when
given), reads every file back with transformers' GGUF loader (`read_back`: float32, dequantized) and compares, on
windows of UD English-EWT test text: the largest |logit difference| (also relative to the largest |logit|), the
mean |difference|, how often the top-1 next token agrees, and the perplexity of each. Also the file sizes.

With `--llama-cpp [WHEEL_OR_REQUIREMENT]` every file is also run by llama.cpp itself (its C library through the
`llama-cpp-cffi` binding, CPU build, in its own venv, `--llama-cpp-venv`, built on first use like
decoder_peers.py's peers venv; never a synprune dependency): the same windows' logits (same columns), llama.cpp's
tokenization of a few prompts against the export's tokenizer, and greedy continuations of those prompts against
transformers' greedy decoding of the export. A file llama.cpp cannot load gets llama.cpp's one-line error.

    heavy python benchmarks/gguf_roundtrip.py --export DIR --source-gguf smollm2 --llama-cpp \
        --out benchmarks/results/gguf_roundtrip.md
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
LLAMA_CPP = "llama-cpp-cffi==0.4.42"
PROMPTS = ["The capital of France is", "Once upon a time, there was a", "The best way to learn a new language is",
           "def fibonacci(n):"]
# The binding's CPU library is built against GCC 14's libstdc++ and asks for two symbols that GCC 12's (Debian 12)
# lacks; this shim, preloaded, supplies them (the same behaviour: std::terminate, the iostreams' initialisation).
SHIM = """#include <exception>
#include <ios>
extern "C" void __cxa_call_terminate(void*) noexcept { std::terminate(); }
namespace std { void ios_base_library_init() { static ios_base::Init init; } }
"""
EWT = ROOT.parent / "shared" / "data" / "ud" / "en_ewt" / "en_ewt-ud-test.conllu"


def windows(tokenizer, n: int, length: int) -> torch.Tensor:
    """`n` windows of `length` tokens of consecutive EWT test sentences."""
    text = " ".join(line[len("# text = "):].strip() for line in EWT.read_text(encoding="utf-8").splitlines()
                    if line.startswith("# text = "))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) < n * length:
        raise SystemExit(f"EWT gives {len(ids)} tokens, fewer than {n} x {length}")
    return torch.tensor(ids[: n * length]).view(n, length)


@torch.no_grad()
def run_logits(model, ids: torch.Tensor) -> torch.Tensor:
    return torch.cat([model(input_ids=row[None]).logits.float() for row in ids])


def perplexity(logits: torch.Tensor, ids: torch.Tensor) -> float:
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    return math.exp(float(loss))


# ------------------------------------------------------------------------------------- llama.cpp (own venv)

def llama_cpp_env(venv: Path, spec: str) -> tuple[Path, dict]:
    """The binding's interpreter and environment (with the libstdc++ shim preloaded where it is needed)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from decoder_peers import ensure_venv

    py = ensure_venv(venv, (spec, "cffi", "pycparser", "attrs"))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "LLAMA_CPP_BACKEND": "cpu", "HF_HUB_OFFLINE": "1"}
    probe = subprocess.run([str(py), "-c", "import llama.llama_cpp"], env=env, capture_output=True, text=True)
    if probe.returncode and "undefined symbol" in probe.stderr:
        shim = venv / "libstdcxx_shim.so"
        if not shim.is_file():
            (venv / "libstdcxx_shim.cpp").write_text(SHIM)
            subprocess.run(["g++", "-O2", "-shared", "-fPIC", "-o", str(shim), str(venv / "libstdcxx_shim.cpp")], check=True)
        env["LD_PRELOAD"] = str(shim)
    return py, env


def llama_cpp_run(py: Path, env: dict, job: dict) -> dict:
    """Run one file in llama.cpp (a child process in the binding's venv): its outputs, or its one-line error."""
    proc = subprocess.run([str(py), __file__, "--llama-cpp-job", json.dumps(job)], env=env, capture_output=True,
                          text=True, timeout=1800)
    if proc.returncode == 0 and Path(job["out"]).is_file():
        return torch.load(job["out"])
    lines = [l.strip() for l in (proc.stderr + proc.stdout).splitlines() if l.strip()]
    errors = [l for l in lines if "error" in l.lower() or "failed" in l.lower()]
    return {"error": ((errors or lines or [f"exit {proc.returncode}"])[-1])[:300]}


def llama_cpp_job(job: dict) -> None:
    """Inside the binding's venv: load the GGUF with llama.cpp, score the windows, tokenize and continue the
    prompts greedily (argmax of llama.cpp's logits)."""
    from llama.llama_cpp import ffi, lib

    lib.llama_log_set(ffi.NULL, ffi.NULL)  # llama.cpp's own log on stderr (the binding silences it)
    params = lib.llama_model_default_params()
    params.n_gpu_layers = 0
    model = lib.llama_model_load_from_file(job["gguf"].encode(), params)
    if model == ffi.NULL:
        raise SystemExit(f"error: llama.cpp could not load {job['gguf']}")
    ids = torch.load(job["ids"])
    cparams = lib.llama_context_default_params()
    cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = ids.shape[1] + job["new_tokens"] + 64
    cparams.n_threads = cparams.n_threads_batch = job["threads"]
    ctx = lib.llama_init_from_model(model, cparams)
    vocab = lib.llama_model_get_vocab(model)
    n_vocab = lib.llama_vocab_n_tokens(vocab)

    def decode(tokens: list[int], start: int, every: bool) -> torch.Tensor:
        batch = lib.llama_batch_init(len(tokens), 0, 1)
        for i, t in enumerate(tokens):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = t, start + i, 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = every or i == len(tokens) - 1
        batch.n_tokens = len(tokens)
        if lib.llama_decode(ctx, batch) != 0:
            raise SystemExit("error: llama_decode failed")
        rows = range(len(tokens)) if every else [len(tokens) - 1]
        out = torch.stack([torch.frombuffer(bytearray(ffi.buffer(lib.llama_get_logits_ith(ctx, i), 4 * n_vocab)),
                                            dtype=torch.float32) for i in rows])
        lib.llama_batch_free(batch)
        return out

    logits = []
    for row in ids.tolist():
        lib.llama_kv_cache_clear(ctx)
        logits.append(decode(row, 0, True))
    tokens, greedy = [], []
    for text, prompt in zip(job["prompts"], job["prompt_ids"]):
        buf = ffi.new("int32_t[]", 256)
        n = lib.llama_tokenize(vocab, text.encode(), len(text.encode()), buf, 256, False, False)
        tokens.append(list(buf[0:n]))
        lib.llama_kv_cache_clear(ctx)
        last, got = decode(prompt, 0, False), []
        for _ in range(job["new_tokens"]):
            got.append(int(last[-1].argmax()))
            last = decode([got[-1]], len(prompt) + len(got) - 1, False)
        greedy.append(got)
    torch.save({"logits": torch.stack(logits), "tokens": tokens, "greedy": greedy, "n_vocab": n_vocab,
                "system": ffi.string(lib.llama_print_system_info()).decode().strip()}, job["out"])
    lib.llama_free(ctx)
    lib.llama_model_free(model)


def prefix(a: list[int], b: list[int]) -> int:
    """How many tokens two continuations share before they first differ."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def compare(got: torch.Tensor, reference: torch.Tensor, ids: torch.Tensor, scale: float) -> dict:
    diff = (got - reference).abs()
    return {"max_abs_diff": float(diff.max()), "relative": float(diff.max()) / scale, "mean_abs_diff": float(diff.mean()),
            "top1_agree": float((got.argmax(-1) == reference.argmax(-1)).float().mean()), "perplexity": perplexity(got, ids)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--export", help="a standard checkpoint folder (uniform layout); required")
    ap.add_argument("--source-gguf", default=None, help="copy the tokenizer from this GGUF file (or 'smollm2')")
    ap.add_argument("--types", nargs="+", default=["f32", "f16", "q8_0"])
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--out", type=Path, default=None, help="write the table (markdown) and a .json beside it")
    ap.add_argument("--made-by", default=None, help="the command that wrote --export, for the record")
    ap.add_argument("--llama-cpp", nargs="?", const=LLAMA_CPP, default=None, metavar="WHEEL_OR_REQUIREMENT",
                    help=f"also run every file with llama.cpp (llama-cpp-cffi; default {LLAMA_CPP}, or a wheel file)")
    ap.add_argument("--llama-cpp-venv", type=Path, default=ROOT / "runs" / "llamacpp-venv")
    ap.add_argument("--new-tokens", type=int, default=16, help="greedy continuation length of the prompts")
    ap.add_argument("--llama-cpp-job", help=argparse.SUPPRESS)  # internal: one file, inside the binding's venv
    args = ap.parse_args()
    if args.llama_cpp_job:
        return llama_cpp_job(json.loads(args.llama_cpp_job))
    if not args.export:
        ap.error("--export DIR is required")

    from transformers import AutoModelForCausalLM, AutoTokenizer

    import synprune
    from synprune.export.gguf import read_back, write_gguf
    from synprune.model.load import smollm2_path

    torch.set_num_threads(2)
    source = str(smollm2_path()) if args.source_gguf == "smollm2" else args.source_gguf
    model = AutoModelForCausalLM.from_pretrained(args.export, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.export)
    ids = windows(tokenizer, args.windows, args.length)
    reference = run_logits(model, ids)
    scale = float(reference.abs().max())
    rows = [{"type": "export (transformers)", "bytes": None, "max_abs_diff": 0.0, "relative": 0.0, "mean_abs_diff": 0.0,
             "top1_agree": 1.0, "perplexity": perplexity(reference, ids)}]
    llama = llama_cpp_env(args.llama_cpp_venv, args.llama_cpp) if args.llama_cpp else None
    prompt_ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in PROMPTS]
    with torch.no_grad():
        hf_greedy = [model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                    max_new_tokens=args.new_tokens, do_sample=False,
                                    pad_token_id=tokenizer.eos_token_id)[0, len(p):].tolist() for p in prompt_ids]
    cpp_rows = []
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(ids, Path(tmp) / "ids.pt")
        for gtype in args.types:
            path = Path(tmp) / f"model-{gtype}.gguf"
            t0 = time.perf_counter()
            info = write_gguf(model, tokenizer, path, gtype, tokenizer_gguf=source, verify=False)
            t_write = time.perf_counter() - t0
            t0 = time.perf_counter()
            back = read_back(path)
            t_read = time.perf_counter() - t0
            got = run_logits(back, ids)
            rows.append({"type": gtype, "bytes": info["bytes"], **compare(got, reference, ids, scale),
                         "write_s": round(t_write, 1), "read_s": round(t_read, 1), "tensor_types": info["tensor_types"]})
            del back
            print(json.dumps(rows[-1]), file=sys.stderr)
            if llama:
                job = {"gguf": str(path), "ids": str(Path(tmp) / "ids.pt"), "out": str(Path(tmp) / f"cpp-{gtype}.pt"),
                       "prompts": PROMPTS, "prompt_ids": prompt_ids, "new_tokens": args.new_tokens, "threads": 2}
                t0 = time.perf_counter()
                res = llama_cpp_run(*llama, job)
                row = {"type": f"{gtype}, llama.cpp", "bytes": info["bytes"], "run_s": round(time.perf_counter() - t0, 1)}
                if "error" in res:
                    row["error"] = res["error"]
                else:
                    row.update(compare(res["logits"], reference, ids, scale), system=res["system"],
                               same_file_max_abs_diff=float((res["logits"] - got).abs().max()),
                               tokenization_same=[a == b for a, b in zip(res["tokens"], prompt_ids)],
                               greedy=res["greedy"], greedy_same=[prefix(a, b) for a, b in zip(res["greedy"], hf_greedy)])
                cpp_rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "greedy"}), file=sys.stderr)
    pruning = json.loads((Path(args.export) / "synprune_pruning.json").read_text())
    lines = ["# GGUF round trip: written by synprune, read back by transformers"
             + (" and run by llama.cpp" if args.llama_cpp else ""), "",
             "| file | size MB | max abs logit diff | relative to max logit | mean abs diff | top-1 agreement | perplexity |",
             "|---|---|---|---|---|---|---|"]
    for r in rows + cpp_rows:
        size = "" if r["bytes"] is None else f"{r['bytes'] / 1e6:.1f}"
        if "error" in r:
            lines.append(f"| {r['type']} | {size} | llama.cpp failed: {r['error']} | | | | |")
            continue
        lines.append(f"| {r['type']} | {size} | {r['max_abs_diff']:.3g} | {r['relative']:.2e} | {r['mean_abs_diff']:.3g} "
                     f"| {100 * r['top1_agree']:.2f}% | {r['perplexity']:.3f} |")
    ran = [r for r in cpp_rows if "error" not in r]
    if ran:
        lines += ["", f"llama.cpp against transformers on the same file (read back, float32): largest |logit difference| "
                  + ", ".join(f"{r['type'].split(',')[0]} {r['same_file_max_abs_diff']:.3g}" for r in ran) + ".", "",
                  f"Greedy continuations ({args.new_tokens} new tokens, argmax) of llama.cpp running each file against "
                  "transformers' `generate(do_sample=False)` on the export: tokens equal before the first difference; "
                  "and whether llama.cpp's tokenizer (the file's) gives the export tokenizer's ids for the prompt.", "",
                  "| prompt | transformers (export) | " + " | ".join(r["type"] for r in ran) + " |",
                  "|---|---|" + "---|" * len(ran)]
        for i, text in enumerate(PROMPTS):
            cells = [f"{r['greedy_same'][i]}/{args.new_tokens}"
                     + ("" if r["tokenization_same"][i] else " (tokenized differently)") for r in ran]
            lines.append(f"| `{text}` | {tokenizer.decode(hf_greedy[i])!r} | " + " | ".join(cells) + " |")
    lines += ["", f"- model: {args.export} ({pruning.get('model_class')}, heads per layer {pruning['heads_per_layer'][0]}, "
              f"KV groups per layer {pruning['kv_groups_per_layer'][0]}, parameters {pruning['parameters']['pruned']:,} "
              f"of {pruning['parameters']['dense']:,}); tokenizer copied from {source or 'the export folder'}",
              f"- text: {args.windows} windows of {args.length} tokens of UD English-EWT test; logits in float32 on CPU; "
              f"largest |logit| {scale:.3g}",
              f"- synprune {synprune.__version__}, torch {torch.__version__}, gguf "
              f"{__import__('importlib.metadata').metadata.version('gguf')}, transformers "
              f"{__import__('transformers').__version__}",
              *([f"- llama.cpp: the CPU library of `{Path(args.llama_cpp).name}` (llama-cpp-cffi), {len(PROMPTS)} "
                 f"prompts, 2 threads; its system info: `{ran[0]['system']}`"] if args.llama_cpp and ran else []),
              *([f"- export made by: `{args.made_by}`"] if args.made_by else []),
              "- command: `python benchmarks/gguf_roundtrip.py " + " ".join(
                  a if " " not in a else repr(a) for a in sys.argv[1:]) + "`"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        from synprune.io import atomic_write_json, atomic_write_text

        atomic_write_text(args.out, text)
        atomic_write_json(args.out.with_suffix(".json"), rows + cpp_rows)


if __name__ == "__main__":
    main()
