"""A model back to a PyTorch library's own format: ``hf_vit_flax.export(model, to=..., output_dir=...)``.

Each target is one row of :data:`EXPORTERS`: a function that writes a model into an existing, empty
folder (it may raise ``NotImplementedError`` naming what the target cannot express). :func:`export`
makes the writing atomic: everything goes to a temporary folder next to ``output_dir``, which is renamed
into place only when complete, so ``output_dir`` is never half-written.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from .convert import save_vit_pytorch
from .modeling_utils import FlaxVisionPreTrainedModel
from .timm_weights import save_timm
from .transformers_weights import save_transformers

# target name -> writer(model, folder). A family's state-dict exporters (``export_timm(params, config)``,
# ``export_vit_pytorch(params, config)``) sit in its converter; a target's writer adds its files around them.
EXPORTERS: dict[str, Callable[[FlaxVisionPreTrainedModel, Path], None]] = {
    "transformers": save_transformers,
    "timm": save_timm,
    "vit-pytorch": save_vit_pytorch,
}


def export(
    model: FlaxVisionPreTrainedModel, to: str, output_dir: str | os.PathLike, *, overwrite: bool = False
) -> Path:
    """Write ``model`` to ``output_dir`` in the format of ``to`` (a key of :data:`EXPORTERS`).

    ``"transformers"``: a folder that transformers' ``ViTForImageClassification`` /
    ``DeiTForImageClassificationWithTeacher`` / ``ViTModel`` ... ``.from_pretrained`` loads (see
    :func:`hf_vit_flax.transformers_weights.save_transformers`).
    ``"timm"``: timm's Hub layout, ``timm.create_model("local-dir:" + output_dir, pretrained=True)``
    (:func:`hf_vit_flax.timm_weights.save_timm`; ViT/DeiT, CaiT, CrossViT).
    ``"vit-pytorch"``: the state dict and the constructor call, ``hf_vit_flax.load_vit_pytorch(output_dir)``
    (:func:`hf_vit_flax.convert.save_vit_pytorch`; the four seed families).

    An existing ``output_dir`` that is not empty is replaced only with ``overwrite=True``. Returns the
    folder's path.
    """
    writer = EXPORTERS.get(to)
    if writer is None:
        raise ValueError(f"unknown export target {to!r}; the targets are {', '.join(sorted(EXPORTERS))}")
    with staged_folder(output_dir, overwrite=overwrite) as folder:
        writer(model, folder)
    return Path(output_dir)


@contextlib.contextmanager
def staged_folder(output_dir: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """A temporary folder beside ``output_dir`` that becomes ``output_dir`` when the block completes.

    On an error the temporary folder is removed and ``output_dir`` is left as it was. A non-empty
    ``output_dir`` raises ``FileExistsError`` unless ``overwrite``; it is then swapped out in one rename
    and removed after the new folder is in place.
    """
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder: choose another output folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty: choose another output folder, or overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes it private; the result is an ordinary folder
    try:
        yield staging
        if out.is_dir():
            previous = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".previous", dir=out.parent))
            os.replace(out, previous)  # onto an empty folder: one rename
            try:
                os.replace(staging, out)
            except BaseException:
                os.replace(previous, out)
                raise
            shutil.rmtree(previous, ignore_errors=True)
        else:
            os.replace(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
