"""transformers' Flax parameter layout, for every family.

``Flax<Family>Model(...).params`` is the bare backbone tree; ``Flax<Family>ForImageClassification(...)``
holds it under ``base_model_prefix`` with the head's names next to it. So the backbone moves between the
two through ``params[prefix]``, freezing everything under the prefix trains only the head (linear
probing), and checkpoints written in the package's earlier layout (the head under the prefix) still load.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.traverse_util import flatten_dict

from hf_vit_flax.checkpoint import save_weights
from hf_vit_flax.families import FAMILIES

from .helpers import TINY_CONFIGS


def build(family: str):
    config = FAMILIES[family].config_class(**TINY_CONFIGS[family])
    classifier = FAMILIES[family].classifier_class(config, seed=0)
    pixel_values = np.random.default_rng(0).normal(size=(2, config.channels, *config.image_size_hw))
    return config, classifier, pixel_values.astype(np.float32)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_backbone_moves_between_base_model_and_classifier(family):
    config, classifier, x = build(family)
    base_class = FAMILIES[family].model_class
    prefix, heads = classifier.base_model_prefix, classifier.head_param_names
    assert set(classifier.params) == {prefix, *heads} & ({prefix, *classifier.params})  # head_dist: DeiT only
    assert set(classifier.params) - set(heads) == {prefix}
    base = base_class(config, seed=1)
    assert set(base.params) == set(classifier.params[prefix])  # the bare backbone, no prefix
    np.testing.assert_array_equal(
        base(x, params=classifier.params[prefix], output_hidden_states=True).hidden_states[-1],
        classifier(x, output_hidden_states=True).hidden_states[-1],
    )
    # The other way: a base model's tree is the classifier's backbone, the head stays.
    moved = {**classifier.params, prefix: base.params}
    np.testing.assert_array_equal(
        classifier(x, params=moved, output_hidden_states=True).hidden_states[-1],
        base(x, output_hidden_states=True).hidden_states[-1],
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_linear_probing_freezes_the_backbone_with_one_rule(family):
    _, classifier, x = build(family)
    prefix = classifier.base_model_prefix
    labels = jax.tree.map(lambda _: "frozen", classifier.params[prefix])
    label_tree = {
        k: (labels if k == prefix else jax.tree.map(lambda _: "train", v)) for k, v in classifier.params.items()
    }
    optimizer = optax.multi_transform({"train": optax.sgd(0.1), "frozen": optax.set_to_zero()}, label_tree)
    params = classifier.params
    state = optimizer.init(params)

    def loss(params):
        logits = classifier(x, params=params, train=True, dropout_rng=jax.random.key(0)).logits
        return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.array([0, 1])).mean()

    updates, _ = optimizer.update(jax.grad(loss)(params), state, params)
    new = optax.apply_updates(params, updates)
    before = flatten_dict(params)
    for key, value in flatten_dict(new).items():
        assert np.array_equal(value, before[key]) == (key[0] == prefix), key  # only the head moved


@pytest.mark.parametrize("family", FAMILIES)
def test_a_checkpoint_in_the_earlier_layout_loads(family, tmp_path):
    # Until this layout, the head sat under the prefix: {prefix: {backbone..., head...}}.
    config, classifier, x = build(family)
    prefix, heads = classifier.base_model_prefix, classifier.head_param_names
    earlier = {
        prefix: {**classifier.params[prefix], **{k: classifier.params[k] for k in heads if k in classifier.params}}
    }
    classifier.save_pretrained(tmp_path)
    for stale in tmp_path.glob("*.safetensors"):
        stale.unlink()
    flat = {".".join(key): np.asarray(value) for key, value in flatten_dict(earlier).items()}
    save_weights(str(tmp_path), flat, safe_serialization=True, max_shard_size=None)
    reloaded = FAMILIES[family].classifier_class.from_pretrained(tmp_path)
    np.testing.assert_array_equal(reloaded(x).logits, classifier(x).logits)
    base = FAMILIES[family].model_class.from_pretrained(tmp_path)
    np.testing.assert_array_equal(
        base(x, output_hidden_states=True).hidden_states[-1],
        classifier(x, output_hidden_states=True).hidden_states[-1],
    )
