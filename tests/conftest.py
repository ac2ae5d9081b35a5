import os

# No network at test time: everything Hub-related is served from local caches or a loopback server
# (in subprocesses that set their own environment).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Parity is checked in full float32 precision (TF32 matmuls on GPUs would miss 1e-5).
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
