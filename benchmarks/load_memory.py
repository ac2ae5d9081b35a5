"""Peak memory of ``from_pretrained``: loading a checkpoint should hold about one copy of the model.

For one variant (default ViT-L/16, 304 M parameters, 1.2 GB in float32) the script writes a checkpoint of
random weights, with shapes from ``jax.eval_shape`` and ``save_pretrained``, once as one file and once in
shards, then loads each layout in a fresh process and records, from ``/proc/self/status``:

* the resident memory before loading (the imports and the config only),
* the peak during ``from_pretrained`` (``VmHWM``, reset through ``/proc/self/clear_refs`` just before),
* the resident memory after it, anonymous (the arrays) and file-backed (mapped files),

and reports the peak above the start as a multiple of the model's size. Linux only.

Usage (from the repository root)::

    python -m benchmarks.load_memory
    python -m benchmarks.load_memory --variant vit_base_patch16_224 --shard-size 100MB

Results go to ``benchmarks/results/load_memory.md`` and ``.json`` (``--output`` to change).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs in a fresh process: argv = variant, folder. Prints one JSON line.
LOAD = """
import json, sys, time
sys.path.insert(0, {root!r})

def status():
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return {{k: int(fields[k].split()[0]) * 1024 for k in ("VmRSS", "VmHWM", "RssAnon", "RssFile")}}

import jax, numpy as np
from hf_vit_flax.families import FAMILIES
from hf_vit_flax.timm_weights import load_variant_config

variant, folder = sys.argv[1], sys.argv[2]
config = load_variant_config(variant)
family = next(f for f in FAMILIES.values() if f.config_class.model_type == config.model_type)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets VmHWM to the current resident size
before = status()
start = time.perf_counter()
model = family.classifier_class.from_pretrained(folder)
seconds = time.perf_counter() - start
after = status()
model_bytes = sum(int(leaf.nbytes) for leaf in jax.tree.leaves(model.params))
print(json.dumps({{"before": before, "after": after, "seconds": seconds, "model_bytes": model_bytes}}))
"""


def write_checkpoint(variant: str, folder: str, max_shard_size: str) -> int:
    """A checkpoint of random float32 weights for ``variant`` in ``folder``; returns its size in bytes."""
    import jax
    import numpy as np

    from hf_vit_flax.families import FAMILIES
    from hf_vit_flax.timm_weights import load_variant_config

    config = load_variant_config(variant)
    family = next(f for f in FAMILIES.values() if f.config_class.model_type == config.model_type)
    model = family.classifier_class(config, _do_init=False)
    rng = np.random.default_rng(0)
    params = jax.tree.map(
        lambda s: (rng.standard_normal(s.shape, dtype=np.float32) * 0.02).astype(s.dtype), model.params_shape_tree
    )
    model.save_pretrained(folder, params=params, max_shard_size=max_shard_size)
    return sum(int(leaf.nbytes) for leaf in jax.tree.leaves(params))


def measure(variant: str, folder: str) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    code = LOAD.format(root=ROOT)
    done = subprocess.run([sys.executable, "-c", code, variant, folder], env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"loading {folder} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="vit_large_patch16_224", help="a config in configs/ (timm name)")
    parser.add_argument("--shard-size", default="200MB", help="max_shard_size of the sharded layout")
    parser.add_argument("--repeat", type=int, default=2, help="loads per layout (the smallest peak is kept)")
    parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results", "load_memory"))
    args = parser.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for layout, shard_size in (("one file", "100GB"), (f"shards of {args.shard_size}", args.shard_size)):
            folder = os.path.join(tmp, layout.replace(" ", "_"))
            start = time.perf_counter()
            size = write_checkpoint(args.variant, folder, shard_size)
            files = sorted(n for n in os.listdir(folder) if n.endswith(".safetensors"))
            print(f"{layout}: wrote {len(files)} file(s), {size / 1e9:.2f} GB, in {time.perf_counter() - start:.0f} s")
            runs = [measure(args.variant, folder) for _ in range(args.repeat)]
            best = min(runs, key=lambda r: r["after"]["VmHWM"])
            peak = best["after"]["VmHWM"] - best["before"]["VmRSS"]
            rows.append(
                {
                    "layout": layout,
                    "files": len(files),
                    "model_bytes": best["model_bytes"],
                    "rss_before": best["before"]["VmRSS"],
                    "peak": best["after"]["VmHWM"],
                    "peak_above_start": peak,
                    "peak_over_model": peak / best["model_bytes"],
                    "anon_after": best["after"]["RssAnon"],
                    "file_after": best["after"]["RssFile"],
                    "seconds": min(r["seconds"] for r in runs),
                    "runs": runs,
                }
            )
            print(f"  peak above start {peak / 1e9:.2f} GB = {peak / best['model_bytes']:.2f} x the model")

    def gb(n):
        return f"{n / 1e9:.2f}"

    lines = [
        f"# Peak memory of from_pretrained: {args.variant}",
        "",
        f"{platform.platform()}, Python {platform.python_version()}; "
        f"the smallest of {args.repeat} loads per layout, each in a fresh process.",
        "",
        "| layout | files | model GB | RSS before | peak | peak above start | x model | anon after | file-backed after "
        "| load s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['layout']} | {r['files']} | {gb(r['model_bytes'])} | {gb(r['rss_before'])} | {gb(r['peak'])} "
            f"| {gb(r['peak_above_start'])} | {r['peak_over_model']:.2f} | {gb(r['anon_after'])} "
            f"| {gb(r['file_after'])} | {r['seconds']:.1f} |"
        )
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output + ".md", "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    with open(args.output + ".json", "w", encoding="utf-8") as f:
        json.dump({"variant": args.variant, "shard_size": args.shard_size, "rows": rows}, f, indent=2)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
