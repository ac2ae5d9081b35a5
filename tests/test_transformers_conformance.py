"""transformers' Flax model contract (``FlaxModelTesterMixin``) over the four families.

The mixin is transformers' own (v4.52.4, vendored as ``tests/vendor/transformers_flax_common.py``; see
its header), run unchanged where it applies: outputs as tuples and dicts, save/load, save/load from and to
the base model (the parameter layout: a base model's tree is the backbone, a classifier's holds it
under ``base_model_prefix``), ``_do_init=False`` (``test_no_automatic_init``), jit, hidden states and attentions, dtypes
(``test_default_params_dtype``, ``test_to_bf16`` ...), naming, the main input, gradient checkpointing.
It runs on transformers 4.x and 5.x (the vendored copy takes its Auto mappings from hf_vit_flax).

Deviations, each for a reason:

* ``test_jit_compilation`` / ``test_forward_signature`` / ``test_load_with_mismatched_shapes``: the
  mixin's versions call text models (``input_ids``, ``attention_mask``, ``vocab_size``); overridden here
  with the ``pixel_values`` versions transformers' own ``FlaxViTModelTest`` used, and a mismatched-head
  load through ``hf_vit_flax.FlaxAutoModelForImageClassification`` (``num_labels`` +
  ``ignore_mismatched_sizes=True``).
* ``test_checkpoint_sharding_from_hub``: skipped; it downloads a BERT checkpoint (no network here).
* ``test_checkpoint_sharding_local``: the mixin's loads that BERT from the Hub too and expects sharded
  ``flax_model.msgpack`` files; this package writes shards as safetensors only (a sharded msgpack save
  is refused, sharded msgpack is read). Overridden: the same checks (an index and no single weights
  file per size, a shard above the limit only with a single tensor, index and files agree, an exact
  reload) on a ViT built here, in safetensors. More in tests/test_save_load.py.
* ``test_from_pretrained_with_no_automatic_init``: the mixin drops a random key from the checkpoint
  and expects ``from_pretrained(_do_init=False)`` to leave it for ``init_weights``. Loading here is
  strict by design (README): a checkpoint missing a backbone key is refused, and only the
  classification head may be absent (the load initialises it). Overridden: the rest of the test as is,
  then a dropped backbone key must raise ``ValueError`` and a dropped head key must load and pass
  ``init_weights(params=...)`` complete.
* ``test_headmasking``: the mixin skips it (``test_head_masking = False``); these models take no head mask.
* PyTorch cross-equivalence tests (``test_equivalence_pt_to_flax`` ...): not in the v4.52.4 mixin; they
  would need transformers PyTorch classes of the same architectures, which do not exist. Parity with
  the PyTorch references (timm, vit-pytorch, the original CrossFormer) is in tests/models/.
* Hidden states and attentions of CaiT (a patch stack then a class-attention stack), CrossViT (two
  branches) and CrossFormer (stages of windowed attention) differ in shape along the tuple; the testers
  give the first element's shape, which is what the mixin checks. CrossViT's ``hidden_states`` and
  ``attentions`` are the small-patch branch's (the mixin's checks run on them unchanged); the
  large-patch branch's ``lg_hidden_states`` / ``lg_attentions`` are checked by ``test_large_branch_outputs``.
  CrossFormer's attentions are windowed (one map per window), so ``test_attention_outputs`` checks
  their count and square maps.
"""

from __future__ import annotations

import inspect
import json
import os
import random
import tempfile
import unittest

import jax
import numpy as np
from flax.core.frozen_dict import freeze, unfreeze
from flax.traverse_util import flatten_dict, unflatten_dict
from safetensors.numpy import load_file

from hf_vit_flax import (
    CaiTConfig,
    CrossFormerConfig,
    CrossViTConfig,
    FlaxAutoModelForImageClassification,
    FlaxCaiTForImageClassification,
    FlaxCaiTModel,
    FlaxCrossFormerForImageClassification,
    FlaxCrossFormerModel,
    FlaxCrossViTForImageClassification,
    FlaxCrossViTModel,
    FlaxViTForImageClassification,
    FlaxViTModel,
    ViTConfig,
)

from .helpers import TINY_CONFIGS, crossvit_config
from .vendor.transformers_flax_common import FlaxModelTesterMixin, floats_tensor


class ModelTester:
    """What the mixin reads: a config, NCHW ``pixel_values``, and the expected output shapes."""

    def __init__(
        self,
        config,
        *,
        num_hidden_layers,
        num_attention_heads,
        seq_length,
        hidden_size,
        key_length=None,
        expected_num_hidden_layers=None,
        batch_size=2,
    ):
        self.config = config
        self.batch_size = batch_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.seq_length = seq_length
        self.key_length = key_length if key_length is not None else seq_length
        self.hidden_size = hidden_size
        if expected_num_hidden_layers is not None:
            self.expected_num_hidden_layers = expected_num_hidden_layers

    def prepare_config_and_inputs_for_common(self):
        height, width = self.config.image_size_hw
        shape = (self.batch_size, self.config.channels, height, width)
        pixel_values = np.asarray(floats_tensor(shape), dtype=np.float32)
        return self.config.__class__.from_dict(self.config.to_dict()), {"pixel_values": pixel_values}


class VisionConformance(FlaxModelTesterMixin):
    test_mismatched_shapes = True

    @unittest.skip("downloads a BERT checkpoint from the Hub; sharded loading is test_checkpoint_sharding_local")
    def test_checkpoint_sharding_from_hub(self):
        pass

    def test_from_pretrained_with_no_automatic_init(self):
        # The mixin's test, except the key it drops from the checkpoint: it drops a random one and expects
        # the load to leave it for init_weights; loading here is strict (a partial backbone is refused)
        # and only the classification head may be absent, freshly initialised by the load itself.
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()

        def assert_all_params_initialised(model, params):
            flat_params = flatten_dict(unfreeze(params))
            self.assertTrue(all(k in flat_params for k in model.required_params))
            for k, v in flatten_dict(unfreeze(model.params_shape_tree)).items():
                self.assertEqual(v.shape, flat_params[k].shape, f"Shapes of {k} do not match.")

        for model_class in self.all_model_classes:
            model = model_class(config)
            with tempfile.TemporaryDirectory() as tmpdirname:
                model.save_pretrained(tmpdirname)
                model, params = model_class.from_pretrained(tmpdirname, _do_init=False)
            with self.assertRaises(ValueError):
                _ = model.params
            assert_all_params_initialised(model, params)
            with self.assertRaises(ValueError):
                model.params = params

            flat_params = flatten_dict(unfreeze(params))
            heads = [k for k in flat_params if k[0] in model.head_param_names]
            body = [k for k in flat_params if k[0] not in model.head_param_names]
            for dropped, loads in ((random.choice(body), False), *(((random.choice(heads), True),) if heads else ())):
                partial = freeze(unflatten_dict({k: v for k, v in flat_params.items() if k != dropped}))
                with tempfile.TemporaryDirectory() as tmpdirname:
                    model.save_pretrained(tmpdirname, params=partial)
                    if not loads:
                        with self.assertRaises(ValueError):
                            model_class.from_pretrained(tmpdirname, _do_init=False)
                        continue
                    model, loaded = model_class.from_pretrained(tmpdirname, _do_init=False)
                    assert_all_params_initialised(
                        model, model.init_weights(model.key, model.input_shape, params=loaded)
                    )

    def test_checkpoint_sharding_local(self):
        # The mixin's test on a ViT built here (its BERT comes from the Hub) and in safetensors, the
        # format this package shards (a sharded msgpack save is refused; sharded msgpack is read only).
        config = ViTConfig(image_size=32, patch_size=8, dim=64, depth=4, heads=4, dim_head=16, mlp_dim=256)
        model = FlaxViTModel(config)
        with tempfile.TemporaryDirectory() as tmp_dir:
            for max_size in ["150kB", "150kiB", "200kB", "200kiB"]:
                model.save_pretrained(tmp_dir, max_shard_size=max_size)
                shard_to_size = {
                    os.path.join(tmp_dir, f): os.path.getsize(os.path.join(tmp_dir, f))
                    for f in os.listdir(tmp_dir)
                    if f.endswith(".safetensors")
                }
                index_file = os.path.join(tmp_dir, "model.safetensors.index.json")
                self.assertTrue(os.path.isfile(index_file))
                self.assertFalse(os.path.isfile(os.path.join(tmp_dir, "model.safetensors")))
                max_size_int = int(max_size[:-3]) * 2**10 if max_size.endswith("kiB") else int(max_size[:-2]) * 10**3
                for shard_file, size in shard_to_size.items():
                    if size >= max_size_int + 50000:
                        self.assertEqual(len(load_file(shard_file)), 1)
                with open(index_file, encoding="utf-8") as f:
                    index = json.load(f)
                self.assertSetEqual(set(index["weight_map"].values()), {os.path.basename(f) for f in shard_to_size})
                self.assertGreater(len(shard_to_size), 1)
                new_model = FlaxViTModel.from_pretrained(tmp_dir)
                loaded = flatten_dict(new_model.params)
                self.assertSetEqual(set(loaded), set(flatten_dict(model.params)))
                for key, value in flatten_dict(model.params).items():
                    np.testing.assert_array_equal(np.asarray(loaded[key]), np.asarray(value))

    def test_jit_compilation(self):
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            with self.subTest(model_class.__name__):
                model = model_class(config)

                @jax.jit
                def model_jitted(pixel_values, **kwargs):
                    return model(pixel_values=pixel_values, **kwargs).to_tuple()  # noqa: B023 (called in this iteration)

                jitted_outputs = model_jitted(**inputs_dict)
                with jax.disable_jit():
                    outputs = model_jitted(**inputs_dict)
                self.assertEqual(len(outputs), len(jitted_outputs))
                for jitted_output, output in zip(jitted_outputs, outputs, strict=True):
                    self.assertEqual(jitted_output.shape, output.shape)

    def test_forward_signature(self):
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            arg_names = [*inspect.signature(model_class(config, _do_init=False).__call__).parameters]
            self.assertListEqual(arg_names[:1], ["pixel_values"])

    def test_load_with_mismatched_shapes(self):
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        classifier = self.all_model_classes[-1]
        with tempfile.TemporaryDirectory() as tmp_dir:
            classifier(config).save_pretrained(tmp_dir)
            with self.assertRaises(ValueError):
                FlaxAutoModelForImageClassification.from_pretrained(tmp_dir, num_labels=42)
            model = FlaxAutoModelForImageClassification.from_pretrained(
                tmp_dir, num_labels=42, ignore_mismatched_sizes=True
            )
            self.assertIsInstance(model, classifier)
            self.assertEqual(model(**inputs_dict).logits.shape, (self.model_tester.batch_size, 42))


class FlaxViTConformanceTest(VisionConformance, unittest.TestCase):
    all_model_classes = (FlaxViTModel, FlaxViTForImageClassification)

    def setUp(self):
        config = ViTConfig(image_size=32, patch_size=8, dim=32, depth=2, heads=4, dim_head=8, mlp_dim=64, num_classes=5)
        self.model_tester = ModelTester(
            config, num_hidden_layers=2, num_attention_heads=4, seq_length=17, hidden_size=32
        )


class FlaxCaiTConformanceTest(VisionConformance, unittest.TestCase):
    all_model_classes = (FlaxCaiTModel, FlaxCaiTForImageClassification)

    def setUp(self):
        config = CaiTConfig(
            image_size=32, patch_size=8, dim=32, depth=2, cls_depth=1, heads=4, dim_head=8, mlp_dim=64, num_classes=5
        )
        # Embeddings, then the patch stack's layers, then [class token, patches] after each class-attention layer.
        self.model_tester = ModelTester(
            config,
            num_hidden_layers=3,
            num_attention_heads=4,
            seq_length=16,
            hidden_size=32,
            expected_num_hidden_layers=1 + 2 + 1,
        )


class FlaxCrossFormerConformanceTest(VisionConformance, unittest.TestCase):
    all_model_classes = (FlaxCrossFormerModel, FlaxCrossFormerForImageClassification)

    def setUp(self):
        # 32x32 images: stage maps of 8, 4, 2 and 1 tokens a side, with windows that tile them; one kernel per
        # cross-scale embedding (less to compile: several kernels are the family's parity tests' business).
        config = CrossFormerConfig(
            **{**TINY_CONFIGS["crossformer"], "cross_embed_kernel_sizes": ((4,), (2,), (2,), (2,))}
        )
        heads = config.heads or tuple(d // config.dim_head for d in config.dim)  # None: dim // dim_head (vit-pytorch)
        depth = config.depth if isinstance(config.depth, (list, tuple)) else [config.depth] * len(config.dim)
        blocks = 2 * sum(depth)  # vit-pytorch's depth counts (short, long) pairs per stage
        # hidden_states: the stem's tokens, then each block's; attentions: one windowed map per block.
        self.model_tester = ModelTester(
            config,
            num_hidden_layers=blocks,
            num_attention_heads=heads[0],
            seq_length=8 * 8,
            hidden_size=config.dim[0],
            expected_num_hidden_layers=1 + blocks,
        )

    def test_attention_outputs(self):  # windowed attention: (batch * windows, heads, window tokens, window tokens)
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            out = model_class(config)(**inputs_dict, output_attentions=True)
            self.assertEqual(len(out.attentions), self.model_tester.num_hidden_layers)
            self.assertEqual(out.attentions[0].shape[-2], out.attentions[0].shape[-1])


# One multi-scale layer (the mixin's checks need no more, and each layer costs compile time): 16 small patches of
# width 32 and 4 large ones of width 48, each branch with its class token.
CROSSVIT = crossvit_config(
    dict(image_size=32, num_classes=5, depth=1, cross_attn_depth=1, cross_attn_heads=2, cross_attn_dim_head=16),
    sm=dict(dim=32, patch_size=8, enc_depth=1, enc_heads=2, enc_mlp_dim=64, enc_dim_head=16),
    lg=dict(dim=48, patch_size=16, enc_depth=1, enc_heads=3, enc_mlp_dim=64, enc_dim_head=16),
)


class FlaxCrossViTConformanceTest(VisionConformance, unittest.TestCase):
    all_model_classes = (FlaxCrossViTModel, FlaxCrossViTForImageClassification)

    def setUp(self):
        config = CrossViTConfig(**CROSSVIT)
        self.model_tester = ModelTester(
            config, num_hidden_layers=1, num_attention_heads=2, seq_length=17, hidden_size=32
        )
        self.model_tester.num_hidden_states_types = 2  # hidden_states and lg_hidden_states

    def test_large_branch_outputs(self):  # the mixin's checks cover the small branch; the large one here
        config, inputs_dict = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            out = model_class(config)(**inputs_dict, output_hidden_states=True, output_attentions=True)
            self.assertEqual(len(out.lg_hidden_states), config.depth + 1)
            self.assertEqual(out.lg_hidden_states[0].shape[-2:], (5, 48))
            self.assertEqual(len(out.lg_attentions), config.depth * config.lg_enc_depth)
            self.assertEqual(out.lg_attentions[0].shape[-3:], (3, 5, 5))
