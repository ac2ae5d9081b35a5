"""Fine-tuning: ``TrainConfig`` and ``train(config)``, the API of ``hf-vit-flax train``.

Needs the ``train`` extra (grain, optax, orbax-checkpoint, scikit-learn, matplotlib, datasets):
``pip install "hf-vit-flax[train]"``. Importing this module needs none of them.
"""

from __future__ import annotations

import importlib.util

from .config import TrainConfig

# Distribution names of what fine-tuning imports, by module.
REQUIREMENTS = {
    "grain": "grain",
    "optax": "optax",
    "orbax.checkpoint": "orbax-checkpoint",
    "matplotlib": "matplotlib",
    "tqdm": "tqdm",
}


def require_dependencies() -> None:
    """An ImportError naming the extra when a package fine-tuning needs is not installed."""
    missing = []
    for module, dist in REQUIREMENTS.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            missing.append(dist)
    if missing:
        raise ImportError(f'fine-tuning needs {", ".join(missing)}: pip install "hf-vit-flax[train]"')


def train(config: TrainConfig):
    """Fine-tune a model (see :class:`TrainConfig`); returns a :class:`~hf_vit_flax.training.trainer.TrainResult`."""
    from .trainer import train as _train

    return _train(config)


__all__ = ["TrainConfig", "require_dependencies", "train"]
