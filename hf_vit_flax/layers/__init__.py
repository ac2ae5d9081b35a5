"""Building blocks shared by every family, each with its weight map beside it.

Conventions (see the package README): activations are NHWC / (batch, tokens, features); parameters are
created in ``param_dtype`` (float32 by default) and the computation runs in ``dtype``; softmax and
LayerNorm statistics are always computed in float32. Parameter names follow timm (``norm1``,
``attn.qkv``, ``attn.proj``, ``mlp.fc1`` ...), and each layer that a converter reads has a table
function (``block_table``, ``patch_embedding_table`` ...) giving its map to the PyTorch names, in both
directions (``hf_vit_flax.weight_tables``).

- ``core``: the core-module base class, its outputs, the linear head, input checks
- ``linear``: the linear layer (``nn.Dense`` whose kernel gradient needs no transposed copy)
- ``norm``: PyTorch-exact LayerNorm and the norm factory
- ``attention``: scaled dot-product attention and multi-head self-attention
- ``mlp``: feed-forward layers, activations and the LayerNorm -> Linear projection
- ``transformer``: pre-norm blocks, LayerScale, stochastic depth, stacks
- ``patch_embed``: vit-pytorch's and timm's patch embeddings
- ``pooling``: attention pooling by a latent query
- ``pos_embed``: position embeddings at another resolution
"""

from .attention import Attention, attend, fused_attention
from .core import (
    CoreModule,
    Features,
    LinearHead,
    as_tuples,
    check_divisible,
    check_image,
    pair,
)
from .linear import Dense, merged_dot_general
from .mlp import ACTIVATIONS, FeedForward, NormLinear, gelu, quick_gelu
from .norm import LayerNorm, NormLayer, layer_norm, norm_factory
from .patch_embed import (
    ConvPatchEmbedding,
    PatchEmbedding,
    PatchEmbeddingBase,
    conv_patch_embedding_table,
    flatten_tokens,
    patch_embedding_table,
    patchify,
)
from .pooling import AttentionPoolLatent, attention_pool_table
from .pos_embed import interpolate_pos_embedding, torch_bicubic_matrix
from .transformer import (
    TIMM_BLOCK,
    TRANSFORMERS_BLOCK,
    VIT_PYTORCH_BLOCK,
    DropPath,
    LayerScale,
    Transformer,
    TransformerBlock,
    block_table,
    gradient_barrier,
    remat_if,
    transformer_table,
)

__all__ = [
    "ACTIVATIONS",
    "TIMM_BLOCK",
    "TRANSFORMERS_BLOCK",
    "VIT_PYTORCH_BLOCK",
    "Attention",
    "AttentionPoolLatent",
    "ConvPatchEmbedding",
    "CoreModule",
    "Dense",
    "DropPath",
    "Features",
    "FeedForward",
    "LayerNorm",
    "LayerScale",
    "LinearHead",
    "NormLayer",
    "NormLinear",
    "PatchEmbedding",
    "PatchEmbeddingBase",
    "Transformer",
    "TransformerBlock",
    "as_tuples",
    "attend",
    "attention_pool_table",
    "block_table",
    "check_divisible",
    "check_image",
    "conv_patch_embedding_table",
    "flatten_tokens",
    "fused_attention",
    "gelu",
    "gradient_barrier",
    "interpolate_pos_embedding",
    "layer_norm",
    "merged_dot_general",
    "norm_factory",
    "pair",
    "patch_embedding_table",
    "patchify",
    "quick_gelu",
    "remat_if",
    "torch_bicubic_matrix",
    "transformer_table",
]
