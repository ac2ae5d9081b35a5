"""Write the ImageNet label lists that ``hf_vit_flax.from_timm`` puts into ``config.id2label``.

timm ships the class lists of its ImageNet subsets (``timm/data/_info``: WordNet synsets per subset
plus synset -> lemma); ``timm.data.ImageNetInfo`` reads them. This script stores, per subset, one
``synset<TAB>lemmas`` line per class index in ``hf_vit_flax/assets/<subset>.tsv.gz``, so that the
library needs neither torch nor timm at runtime. Re-run it after a timm upgrade:

    python conversion/make_label_lists.py
"""

from __future__ import annotations

import gzip
from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "hf_vit_flax" / "assets"


def main() -> None:
    from timm.data import ImageNetInfo
    from timm.data.imagenet_info import _NUM_CLASSES_TO_SUBSET

    ASSETS.mkdir(exist_ok=True)
    for num_classes, subset in sorted(_NUM_CLASSES_TO_SUBSET.items()):
        info = ImageNetInfo(subset)
        synsets = info.label_names()
        assert len(synsets) == num_classes, (subset, len(synsets), num_classes)
        lines = [f"{synset}\t{info.label_name_to_description(synset)}" for synset in synsets]
        path = ASSETS / f"{subset}.tsv.gz"
        # mtime=0: the same lists give byte-identical files.
        with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
            f.write(("\n".join(lines) + "\n").encode("utf-8"))
        print(f"{path.name}: {num_classes} classes, {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
