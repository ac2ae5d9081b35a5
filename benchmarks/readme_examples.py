"""The README's seed-style examples (``v = <Module>(...)``, vit-pytorch's configurations), read from README.md.

The tests check them as written and the benchmark times them, so neither keeps a copy that could drift
from what the README shows.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
DROPOUTS = ("dropout", "emb_dropout", "layer_dropout")


def seed_readme_examples() -> dict[str, dict]:
    """The keyword arguments of each ``v = <Module>(...)`` in the README's Python blocks, by module name."""
    examples = {}
    for block in re.findall(r"```python\n(.*?)```", README.read_text(), re.S):
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["v"]:
                examples[node.value.func.id] = {kw.arg: ast.literal_eval(kw.value) for kw in node.value.keywords}
    return examples


def without_dropout(kwargs: dict) -> dict:
    """``kwargs`` with every dropout rate at 0: eval-mode parity and a deterministic training step."""
    return {**kwargs, **{name: 0.0 for name in DROPOUTS if name in kwargs}}
