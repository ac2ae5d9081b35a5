"""The benchmark's code path on tiny models, one call per measurement (no timing is asserted)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers

pytest.importorskip("torch")
pytest.importorskip("optax")

from benchmarks import run  # noqa: E402

TINY_VIT = dict(image_size=32, patch_size=8, num_classes=10, dim=32, depth=2, heads=2, dim_head=16, mlp_dim=64)


def tiny_timm_vit():
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=10).eval()


def test_count_flops_dense_conv_and_nested_calls():
    x = jnp.ones((4, 16))
    w = jnp.ones((16, 8))
    assert run.count_flops(lambda x, w: x @ w, x, w) == 2 * 4 * 16 * 8
    # Inside a nested jit and a scan of length 3, each matmul counts once per execution.
    assert run.count_flops(jax.jit(lambda x, w: x @ w), x, w) == 2 * 4 * 16 * 8

    def scanned(x, w):
        return jax.lax.scan(lambda c, _: (c @ w[:, :16].T @ w[:, :16] * 0 + c, None), x, None, length=3)[0]

    w16 = jnp.ones((16, 16))
    assert run.count_flops(scanned, x, w16) == 3 * 2 * (2 * 4 * 16 * 16)
    # An NHWC convolution with a 2x2 kernel, 3 -> 5 channels, stride 2 on 4x4: 2x2 outputs per image.
    img, kernel = jnp.ones((2, 4, 4, 3)), jnp.ones((2, 2, 3, 5))
    conv = lambda i, k: jax.lax.conv_general_dilated(i, k, (2, 2), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))  # noqa: E731
    assert run.count_flops(conv, img, kernel) == 2 * (2 * 2 * 2 * 5) * (2 * 2 * 3)


@pytest.mark.skipif(not hasattr(transformers, "FlaxViTForImageClassification"), reason="transformers 5 has no FlaxViT")
def test_transformers_flax_vit_holds_the_same_weights():
    ours = run._from_timm(tiny_timm_vit())
    theirs = run.to_transformers_flax_vit(ours)
    images = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    ours_logits = np.asarray(ours(images).logits)
    theirs_logits = np.asarray(theirs(images, params=theirs.params).logits)
    assert np.max(np.abs(ours_logits - theirs_logits)) <= 1e-5


def test_a_run_writes_the_table_and_json(tmp_path):
    entries = [
        run.vit_pytorch_entry("tiny_seed", "tiny ViT", "vit_pytorch.vit.ViT", TINY_VIT),
        run.Entry(
            "tiny_hf",
            "tiny ViT",
            "transformers FlaxViT",
            "hf_flax",
            lambda: (lambda ours: (run.to_transformers_flax_vit(ours), ours))(run._from_timm(tiny_timm_vit())),
            32,
        ),
        run.vit_pytorch_entry("missing", "no converter", "vit_pytorch.no_such_module.Model", {}),
    ]
    argv = [
        "--rounds",
        "1",
        "--train-rounds",
        "1",
        "--min-block",
        "0",
        "--matmul-size",
        "128",
        "--output",
        str(tmp_path),
    ]
    result = run.main(argv, entries=entries)

    seed, hf, missing = result["entries"]
    assert seed["max_abs_logits_diff"] <= 1e-4
    if hasattr(transformers, "FlaxViTForImageClassification"):
        assert hf["max_abs_logits_diff"] <= 1e-4
    else:  # transformers 5: the FlaxViT anchor is recorded as not runnable, and the run goes on
        assert "FlaxViTForImageClassification" in hf["failed"]
    assert seed["gflops_per_image"] > 0 and seed["params"] > 0
    assert {"batch1", "batch8", "train"} <= set(seed) and "train" not in hf  # no training step for a Flax reference
    assert seed["batch8"]["speedup"] > 0 and seed["train"]["speedup"] > 0
    assert "no_such_module" in missing["skipped"]

    saved = json.loads((tmp_path / "latest.json").read_text())
    assert saved["machine"]["cores"] >= 1 and saved["matmul"]["jax_gflops"] > 0
    table = (tmp_path / "latest.md").read_text()
    assert "| tiny ViT | vit-pytorch ViT |" in table
    if hasattr(transformers, "FlaxViTForImageClassification"):
        assert "| tiny ViT | transformers FlaxViT |" in table
    assert "Training step" in table and "no converter vs vit-pytorch Model: skipped" in table


def test_the_torch_compile_anchor_and_the_machine_facts_are_recorded(tmp_path, monkeypatch):
    """The compile anchor's code path, with torch.compile's 'eager' backend (dynamo only: seconds, not minutes)."""
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_min_max=true")
    entries = [run.vit_pytorch_entry("tiny_seed", "tiny ViT", "vit_pytorch.vit.ViT", TINY_VIT)]
    argv = [
        "--rounds",
        "1",
        "--min-block",
        "0",
        "--matmul-size",
        "64",
        "--no-train",
        "--output",
        str(tmp_path),
        "--compile",
        "--compile-backend",
        "eager",
    ]
    result = run.main(argv, entries=entries)
    (seed,) = result["entries"]
    assert seed["compiled_first_call_s"] > 0 and seed["compiled_max_abs_logits_diff"] <= 1e-4
    assert seed["batch8"]["speedup_compiled"] > 0 and seed["batch8"]["compiled_over_eager"] > 0
    assert "compiled_s" not in seed["batch1"]  # batch 1 would compile a second graph: not timed
    machine = result["machine"]
    assert machine["cpu_family"] and isinstance(machine["cpu_vector_extensions"], list)
    assert machine["torch_build"]["blas"] and machine["XLA_FLAGS_user"] == "--xla_cpu_enable_fast_min_max=true"
    assert result["settings"]["compile"] == "all" and result["settings"]["compile_backend"] == "eager"
    table = (tmp_path / "latest.md").read_text()
    assert "torch.compile anchor" in table and "| tiny ViT | vit-pytorch ViT |" in table.split("torch.compile")[-1]

    # --no-compile: no anchor, no table; the default compiles only the entries marked for it.
    result = run.main([*argv[:-3], "--no-compile"], entries=entries)
    assert "compiled_s" not in result["entries"][0]["batch8"] and result["settings"]["compile"] == "none"
    assert run.parse_args([]).compile == "default"
    assert {e.key for e in run.ENTRIES if e.compile} == {"vit_ti16", "vit_b16", "cait_xxs24", "crossvit_ti"}


def test_cpu_facts_from_cpuinfo():
    from hf_vit_flax._cpu import cpu_info

    intel = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Processor\n"
    intel += "flags\t\t: fpu avx2 fma avx512f avx512_bf16 amx_bf16 amx_tile\n\nprocessor\t: 1\nflags\t: sse\n"
    info = cpu_info(intel)
    assert info.family == "intel-xeon-amx" and info.isa == "amx"
    assert info.vector_extensions == ["avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"]
    amd = "vendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13 64-Core Processor\nflags\t: avx2 fma\n"
    assert cpu_info(amd).family == "amd-epyc-avx2"
    assert cpu_info("").family and cpu_info().model_name  # unknown, and this machine


def test_every_entry_is_well_formed():
    keys = [e.key for e in run.ENTRIES]
    assert len(keys) == len(set(keys))
    assert any(e.quick for e in run.ENTRIES) and all(e.kind in ("torch", "hf_flax") for e in run.ENTRIES)
    with pytest.raises(SystemExit):
        run.main(["--only", "no_such_entry"], entries=run.ENTRIES)


# -- the performance changes keep values: attention and the gradient barrier --------------------------


def _reference_attention(q, k, v, scale, bias=None):
    logits = np.einsum("bqhd,bkhd->bhqk", q, k).astype(np.float64) * scale
    if bias is not None:
        logits = logits + bias
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", weights, v), weights


def test_attend_is_softmax_attention_whether_or_not_weights_are_returned():
    from hf_vit_flax.layers import attend

    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((2, 5, 3, 4)).astype(np.float32) for _ in range(3))
    bias = rng.standard_normal((1, 3, 5, 5)).astype(np.float32)
    want, want_weights = _reference_attention(q, k, v, 0.5, bias)
    out, none = attend(q, k, v, scale=0.5, bias=bias)
    out_w, weights = attend(q, k, v, scale=0.5, bias=bias, return_weights=True)
    assert none is None and weights.shape == (2, 3, 5, 5)
    np.testing.assert_allclose(out, want, atol=1e-6)
    np.testing.assert_allclose(weights, want_weights, atol=1e-6)
    np.testing.assert_array_equal(out, out_w)  # asking for the weights never changes the output


def test_gradient_barrier_keeps_values_gradients_and_tangents():
    from hf_vit_flax.layers import gradient_barrier

    x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32))
    plain = lambda x: jnp.sum(jnp.sin(x * 2.0) ** 2)  # noqa: E731
    barred = lambda x: jnp.sum(jnp.sin(gradient_barrier(x) * 2.0) ** 2)  # noqa: E731
    assert float(barred(x)) == float(plain(x))
    np.testing.assert_array_equal(jax.grad(barred)(x), jax.grad(plain)(x))
    np.testing.assert_array_equal(jax.jvp(barred, (x,), (x,))[1], jax.jvp(plain, (x,), (x,))[1])
    np.testing.assert_array_equal(jax.vmap(jax.grad(barred))(x), jax.vmap(jax.grad(plain))(x))
    if jax.default_backend() == "cpu":  # the conditional that stops XLA:CPU from fusing across blocks
        assert "conditional" in jax.jit(jax.grad(barred)).lower(x).compile().as_text()


def test_fused_attention_values_and_gradients_are_softmax_attention():
    """The GPU path's attention (cuDNN forward where present, XLA backward), here on XLA alone."""
    from hf_vit_flax.layers import fused_attention

    rng = np.random.default_rng(1)
    q, k, v = (jnp.asarray(rng.standard_normal((2, 7, 3, 8)).astype(np.float32)) for _ in range(3))
    want, _ = _reference_attention(*(np.asarray(x) for x in (q, k, v)), 0.3)
    np.testing.assert_allclose(fused_attention(q, k, v, 0.3), want, atol=1e-6)

    def loss(attention, q, k, v):
        return jnp.sum(jnp.tanh(attention(q, k, v)))

    def plain(q, k, v):
        weights = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) * 0.3, axis=-1)
        return jnp.einsum("bhqk,bkhd->bqhd", weights, v)

    def fused(q, k, v):
        return fused_attention(q, k, v, 0.3)

    want = jax.grad(loss, argnums=(1, 2, 3))(plain, q, k, v)
    for attention in (fused, jax.checkpoint(fused)):
        got = jax.grad(loss, argnums=(1, 2, 3))(attention, q, k, v)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w, atol=1e-5)


def test_a_failing_entry_is_recorded_and_the_run_goes_on(tmp_path):
    def broken():
        raise MemoryError("out of device memory")

    entries = [
        run.Entry("broken", "broken model", "nothing", "torch", broken, 32),
        run.vit_pytorch_entry("tiny_seed", "tiny ViT", "vit_pytorch.vit.ViT", TINY_VIT),
    ]
    argv = ["--rounds", "1", "--min-block", "0", "--matmul-size", "64", "--no-train", "--output", str(tmp_path)]
    broken_record, seed = run.main(argv, entries=entries)["entries"]
    assert "MemoryError: out of device memory" in broken_record["failed"] and "batch8" in seed
    assert "broken model vs nothing: failed (MemoryError" in (tmp_path / "latest.md").read_text()


def test_the_busy_machine_note_discounts_the_benchmarks_own_threads():
    def note(start, end):
        return run._load_warning({"cores": 2, "load_average_start": [start, 0, 0], "load_average_end": [end, 0, 0]})

    assert note(0.2, 1.9) == []  # the benchmark's own two threads
    assert note(2.6, 1.9) and note(0.2, 3.5)  # other work before it started, or beside it


def test_the_gpu_attention_branch_computes_the_same_attention(monkeypatch):
    """The bfloat16 GPU branch of ``attend`` (layout, fused_attention), run here on XLA's attention."""
    from hf_vit_flax.layers import Attention

    x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 9, 32)), jnp.bfloat16)
    module = Attention(dim=32, heads=4, dim_head=8, qkv_bias=True, dtype=jnp.bfloat16)
    params = module.init(jax.random.key(0), x)

    def loss(params):
        return jnp.sum(module.apply(params, x)[0].astype(jnp.float32) ** 2)

    want, want_grad = jax.value_and_grad(loss)(params)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")  # cuDNN is absent: fused_attention uses XLA's
    got, got_grad = jax.value_and_grad(loss)(params)
    np.testing.assert_allclose(got, want, rtol=2e-2)
    for g, w in zip(jax.tree.leaves(got_grad), jax.tree.leaves(want_grad), strict=True):
        g, w = np.asarray(g, np.float32), np.asarray(w, np.float32)
        assert np.linalg.norm(g - w) <= 2e-2 * np.linalg.norm(w)  # bfloat16 rounding, not a different gradient


# -- XLA:CPU settings chosen from the CPU -----------------------------------------------------------

INTEL_AMX = "vendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Processor\nflags\t: avx2 fma avx512f amx_tile\n"
AMD_AVX2 = "vendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13 64-Core Processor\nflags\t: avx2 fma\n"


def test_xla_cpu_settings_follow_the_cpu_and_never_override_the_user(monkeypatch):
    from hf_vit_flax import _cpu

    (option,) = _cpu.xla_cpu_options(_cpu.cpu_info(INTEL_AMX))
    assert option.flag == "xla_cpu_experimental_ynn_fusion_type" and option.flag_value == "reduce"
    assert _cpu.xla_cpu_options(_cpu.cpu_info(AMD_AVX2)) == []

    intel = _cpu.cpu_info(INTEL_AMX)
    monkeypatch.setattr(_cpu, "cpu_info", lambda: intel)
    monkeypatch.setattr(_cpu, "_backends_initialised", lambda: False)
    environ = {"XLA_FLAGS": "--xla_cpu_enable_fast_math=false"}
    assert _cpu.set_xla_flags(environ) == ["--xla_cpu_experimental_ynn_fusion_type=reduce"]
    assert environ["XLA_FLAGS"] == "--xla_cpu_enable_fast_math=false --xla_cpu_experimental_ynn_fusion_type=reduce"
    mine = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=dot"}
    assert _cpu.set_xla_flags(mine) == [] and mine["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=dot"
    off = {_cpu.DISABLE_ENV: "0"}
    assert _cpu.set_xla_flags(off) == [] and "XLA_FLAGS" not in off
    monkeypatch.setattr(_cpu, "_backends_initialised", lambda: True)  # too late: XLA has read its flags
    assert _cpu.set_xla_flags({}) == []

    if jax.default_backend() == "cpu":
        monkeypatch.setenv("XLA_FLAGS", "")
        assert _cpu.jit_compiler_options() == {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}
        monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=dot")
        assert _cpu.jit_compiler_options() == {}


def test_the_wrapper_with_compiler_options_runs_inside_a_callers_jit_and_grad(monkeypatch):
    """jax takes compiler options on a top-level jit only: the wrapper drops them when it is traced."""
    from hf_vit_flax import modeling_utils

    if jax.default_backend() == "cpu":
        options = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}
        monkeypatch.setattr(modeling_utils, "jit_compiler_options", lambda: options)
    model = run._from_timm(tiny_timm_vit())
    images = jnp.asarray(np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32))
    direct = model(images).logits
    inside = jax.jit(lambda params, x: model(x, params=params).logits)(model.params, images)
    np.testing.assert_allclose(inside, direct, atol=1e-5)
    grads = jax.grad(lambda params: jnp.sum(model(images, params=params).logits ** 2))(model.params)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
