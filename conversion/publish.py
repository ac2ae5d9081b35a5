"""Publish converted checkpoints to the project's Hub organisation.

For every entry of the manifest (``conversion/manifest.json``): convert the source checkpoint,
verify it against the original (max |logits difference| <= 1e-4, else it is not pushed), write its
model card and push it. An entry whose published card records the same source revision and
converter version is skipped without converting. A summary table closes the run.

    python conversion/publish.py                       # everything in the manifest
    python conversion/publish.py --only 'deit_*'       # a subset (fnmatch on the repo id's name)
    python conversion/publish.py --dry-run             # what would be done
    HF_ENDPOINT=http://127.0.0.1:PORT python conversion/publish.py   # against a local Hub

Needs ``pip install -e ".[torch]"`` for verification (``--no-verify`` to skip it).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

HERE = Path(__file__).resolve().parent


@dataclass
class Outcome:
    source: str
    repo_id: str
    status: str = "pending"  # published | skipped (unchanged) | failed: ... | would publish
    parity: float | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


ORGANISATION = "hf-vit-flax"
CROSSFORMER_RELEASES = {"t": "crossformer-t", "s": "crossformer-s", "b": "crossformer-b", "l": "crossformer-l"}
# Checkpoints in transformers' own format (hf_vit_flax.from_transformers): Google's ViTs (ImageNet-21k, and
# fine-tuned on ImageNet-1k), Facebook's DeiTs (plain ones are ViTForImageClassification; distilled ones
# DeiTForImageClassificationWithTeacher) and DINO's self-supervised ViTs (ViTModel).
TRANSFORMERS_REPOS = (
    "google/vit-base-patch16-224",
    "google/vit-base-patch16-224-in21k",
    "google/vit-base-patch16-384",
    "google/vit-base-patch32-224-in21k",
    "google/vit-base-patch32-384",
    "google/vit-large-patch16-224",
    "google/vit-large-patch16-224-in21k",
    "google/vit-large-patch16-384",
    "google/vit-large-patch32-224-in21k",
    "google/vit-large-patch32-384",
    "google/vit-huge-patch14-224-in21k",
    "facebook/deit-tiny-patch16-224",
    "facebook/deit-small-patch16-224",
    "facebook/deit-base-patch16-224",
    "facebook/deit-base-patch16-384",
    "facebook/deit-tiny-distilled-patch16-224",
    "facebook/deit-small-distilled-patch16-224",
    "facebook/deit-base-distilled-patch16-224",
    "facebook/deit-base-distilled-patch16-384",
    "facebook/dino-vits8",
    "facebook/dino-vits16",
    "facebook/dino-vitb8",
    "facebook/dino-vitb16",
)


def default_manifest() -> dict:
    """Every pretrained timm tag the package supports, the transformers-format repos of ``TRANSFORMERS_REPOS``
    (published under their own names) and the four CrossFormer releases.

    The CrossFormer checkpoints are distributed outside the Hub: download them into
    ``conversion/checkpoints/`` (``crossformer-t.pth`` ...) before publishing those entries.
    """
    from hf_vit_flax.timm_weights import list_timm_models

    models = [{"source": f"timm:{name}", "repo_id": f"{ORGANISATION}/{name}"} for name in list_timm_models(True)]
    models += [
        {"source": f"transformers:{repo}", "repo_id": f"{ORGANISATION}/{repo.split('/')[1]}"}
        for repo in TRANSFORMERS_REPOS
    ]
    models += [
        {
            "source": f"crossformer:conversion/checkpoints/{name}.pth",
            "variant": variant,
            "repo_id": f"{ORGANISATION}/{name}",
        }
        for variant, name in CROSSFORMER_RELEASES.items()
    ]
    return {"organisation": ORGANISATION, "models": models}


def load_manifest(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        manifest = json.load(f)
    entries = manifest["models"]
    for entry in entries:
        if "source" not in entry or "repo_id" not in entry:
            raise ValueError(f"manifest entry {entry} needs 'source' and 'repo_id'")
    return entries


def published_provenance(repo_id: str) -> dict | None:
    """The provenance recorded in the published card of ``repo_id`` (None if not published)."""
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.utils import RepositoryNotFoundError

    from hf_vit_flax.hub import PROVENANCE_KEY, card_metadata

    try:
        info = HfApi().model_info(repo_id)
    except RepositoryNotFoundError:
        return None
    if "README.md" not in {s.rfilename for s in info.siblings or []}:
        return None
    card = Path(hf_hub_download(repo_id, "README.md", revision=info.sha)).read_text(encoding="utf-8")
    return card_metadata(card).get(PROVENANCE_KEY)


def publish_one(entry: dict, *, verify: bool, force: bool, dry_run: bool) -> Outcome:
    import hf_vit_flax
    from hf_vit_flax.sources import Source
    from hf_vit_flax.verify import PUSH_TOLERANCE

    outcome = Outcome(entry["source"], entry["repo_id"])
    start = time.perf_counter()
    try:
        source = Source.parse(entry["source"], variant=entry.get("variant"), image_size=entry.get("image_size"))
        provenance = {
            "source": entry["source"],
            "source_revision": source.revision(),
            "converter_version": hf_vit_flax.__version__,
        }
        if not force and published_provenance(entry["repo_id"]) == provenance:
            outcome.status = "skipped (unchanged)"
            return outcome
        if dry_run:
            outcome.status = "would publish"
            return outcome
        model = source.convert()
        if verify:
            try:
                outcome.parity = source.verify(model)
            except NotImplementedError as err:  # no runnable original (CrossFormer): tested offline instead
                outcome.notes.append(str(err).split(";")[0])
            else:
                model.card_data["parity"] = outcome.parity
                if outcome.parity > PUSH_TOLERANCE:
                    outcome.status = f"failed: parity {outcome.parity:.2e} > {PUSH_TOLERANCE:.0e}"
                    return outcome
        model.card_data["provenance"] = provenance
        model.card_data.setdefault("repo_id", entry["repo_id"])
        model.push_to_hub(entry["repo_id"], commit_message=f"Convert {entry['source']} with hf-vit-flax")
        outcome.status = "published"
    except Exception as err:  # one bad entry must not stop the others; the summary says what failed
        outcome.status = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:160]}"
    finally:
        outcome.seconds = time.perf_counter() - start
    return outcome


def summary_table(outcomes: list[Outcome]) -> str:
    lines = ["| source | Hub repo | status | max abs logits diff | seconds |", "|---|---|---|---|---|"]
    for o in outcomes:
        parity = f"{o.parity:.2e}" if o.parity is not None else "n/a"
        lines.append(f"| {o.source} | {o.repo_id} | {o.status} | {parity} | {o.seconds:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", type=Path, default=HERE / "manifest.json")
    parser.add_argument("--only", default=None, help="fnmatch pattern on the repo id (e.g. 'deit_*')")
    parser.add_argument("--no-verify", dest="verify", action="store_false")
    parser.add_argument("--force", action="store_true", help="publish even when the published card is current")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--summary", type=Path, default=None, help="also write the summary table here")
    parser.add_argument("--write-manifest", action="store_true", help="regenerate the manifest and exit")
    args = parser.parse_args(argv)

    if args.write_manifest:
        args.manifest.write_text(json.dumps(default_manifest(), indent=1) + "\n", encoding="utf-8")
        print(f"wrote {args.manifest}")
        return 0

    entries = load_manifest(args.manifest)
    if args.only:
        entries = [e for e in entries if fnmatch.fnmatch(e["repo_id"].split("/")[-1], args.only)]
    outcomes = []
    for entry in (bar := tqdm(entries, desc="publishing", unit="model")):
        bar.set_postfix_str(entry["repo_id"].split("/")[-1])
        outcomes.append(publish_one(entry, verify=args.verify, force=args.force, dry_run=args.dry_run))
    table = summary_table(outcomes)
    print(table)
    if args.summary:
        args.summary.write_text(table + "\n", encoding="utf-8")
    return 1 if any(o.status.startswith("failed") for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
