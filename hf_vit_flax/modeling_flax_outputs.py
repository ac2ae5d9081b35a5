"""The model output classes of transformers' Flax models, on every transformers release line.

transformers 4.x has them (``transformers.modeling_flax_outputs``) and they are used as they are, so
generic code that checks their types keeps working; transformers 5 removed them with its Flax models,
and the same classes are defined here: ``flax.struct`` dataclasses (they pass through ``jax.jit``)
that behave as transformers' ``ModelOutput`` (attributes, ``output["logits"]``, ``output[0]`` and
``to_tuple()`` over the fields that are set).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax

try:  # transformers 4.x
    from transformers.modeling_flax_outputs import FlaxBaseModelOutputWithPooling, FlaxSequenceClassifierOutput
except ImportError:  # transformers 5.x

    class _ModelOutput:
        """``ModelOutput``'s mapping behaviour over the fields that are not None, in declaration order."""

        def items(self) -> list[tuple[str, Any]]:
            pairs = ((f.name, getattr(self, f.name)) for f in dataclasses.fields(self))
            return [(name, value) for name, value in pairs if value is not None]

        def keys(self) -> list[str]:
            return [name for name, _ in self.items()]

        def values(self) -> list[Any]:
            return [value for _, value in self.items()]

        def to_tuple(self) -> tuple:
            return tuple(self.values())

        def __getitem__(self, key):
            if isinstance(key, str):
                return dict(self.items())[key]
            return self.to_tuple()[key]

        def __iter__(self):
            return iter(self.keys())

        def __len__(self) -> int:
            return len(self.items())

        def __contains__(self, key) -> bool:
            return key in self.keys()

    @flax.struct.dataclass
    class FlaxBaseModelOutputWithPooling(_ModelOutput):
        """``last_hidden_state`` (batch, tokens, hidden), ``pooler_output``, optional ``hidden_states`` and ``attentions``."""

        last_hidden_state: Any = None
        pooler_output: Any = None
        hidden_states: tuple | None = None
        attentions: tuple | None = None

    @flax.struct.dataclass
    class FlaxSequenceClassifierOutput(_ModelOutput):
        """``logits`` (batch, num_labels), optional ``hidden_states`` and ``attentions``."""

        logits: Any = None
        hidden_states: tuple | None = None
        attentions: tuple | None = None


__all__ = ["FlaxBaseModelOutputWithPooling", "FlaxSequenceClassifierOutput"]
