"""The README's seed-style examples, read from the README itself: each runs as written (jax.tree.leaves /
jax.tree.map for the aliases JAX removed) and has vit-pytorch's parameter count, the one the README states.

The models have 29M to 122M parameters: the snippet's steps are traced with ``jax.eval_shape``, which checks
every shape without computing; the family tests run small models of each for real."""

import dataclasses
import re

import jax
import numpy as np
import pytest
import torch
import vit_pytorch.cait
import vit_pytorch.cross_vit
import vit_pytorch.crossformer
import vit_pytorch.vit

import hf_vit_flax
from hf_vit_flax.families import FAMILIES
from tests.helpers import README, seed_readme_examples

EXAMPLES = seed_readme_examples()
REFERENCES = {
    "ViT": vit_pytorch.vit.ViT,
    "CaiT": vit_pytorch.cait.CaiT,
    "CrossViT": vit_pytorch.cross_vit.CrossViT,
    "CrossFormer": vit_pytorch.crossformer.CrossFormer,
}


def stated_counts() -> dict[str, int]:
    """The parameter counts the README states after its examples: "ViT 54,630,376; CaiT ..."."""
    sentence = re.search(
        r"Parameter counts equal vit-pytorch's for these configurations: (.*?)\.", README.read_text(), re.S
    )
    return {name: int(count.replace(",", "")) for name, count in re.findall(r"(\w+) ([\d,]+)", sentence[1])}


def test_every_seed_module_has_an_example():
    assert sorted(EXAMPLES) == sorted(REFERENCES) == sorted(stated_counts())


@pytest.mark.parametrize("name", REFERENCES)
def test_seed_readme_snippet(name):
    kwargs = EXAMPLES[name]
    key = jax.random.PRNGKey(0)
    size = kwargs.get("image_size", 224)  # CrossFormer takes 224x224 images
    img = jax.random.normal(key, (1, size, size, 3))
    v = getattr(hf_vit_flax, name)(**kwargs)
    init_rngs = {
        "params": jax.random.PRNGKey(1),
        "dropout": jax.random.PRNGKey(2),
        "emb_dropout": jax.random.PRNGKey(3),
    }
    params = jax.eval_shape(v.init, init_rngs, img)
    output = jax.eval_shape(lambda p: v.apply(p, img, rngs=init_rngs), params)
    assert output.shape == (1, 1000)
    n_params_flax = sum(jax.tree.leaves(jax.tree.map(lambda x: np.prod(x.shape), params)))
    with torch.device("meta"):
        torch_count = sum(p.numel() for p in REFERENCES[name](**kwargs).parameters())
    assert n_params_flax == torch_count == stated_counts()[name]
    # The Hugging Face classifier built from the same keyword arguments holds the same parameters.
    family = next(f for f in FAMILIES.values() if f.core_module_class.__name__ == name)
    model = family.classifier_class(family.config_class(**kwargs), _do_init=False)
    assert sum(np.prod(x.shape) for x in jax.tree.leaves(model.params_shape_tree)) == torch_count


@pytest.mark.parametrize("name", REFERENCES)
def test_the_arguments_vit_pytorch_requires_are_required(name):
    """The constructor takes vit-pytorch's arguments with its defaults: no default where it has none."""
    import inspect

    reference = inspect.signature(REFERENCES[name].__init__).parameters
    required = [p for p, param in reference.items() if p != "self" and param.default is param.empty]
    ours = {field.name: field for field in dataclasses.fields(getattr(hf_vit_flax, name))}
    for argument, param in reference.items():
        if argument == "self" or param.kind is param.VAR_KEYWORD:
            continue
        has_default = ours[argument].default is not dataclasses.MISSING
        assert has_default == (argument not in required), argument
