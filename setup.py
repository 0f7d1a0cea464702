"""mambaswelu_jax: a JAX/Flax study toolkit for MambaSWELU language models."""

from setuptools import find_packages, setup

setup(
    name="mambaswelu_jax",
    version="0.1.0",
    description="MambaSWELU language models in JAX/Flax: a real selective SSM, "
    "a Pallas-fused scan, data-parallel training and a comparative study.",
    python_requires=">=3.10",
    packages=find_packages(include=["mambaswelu_jax*", "kernels*"]),
    install_requires=[
        "jax>=0.8,<0.11",  # the versions the tests cover (docs/model-and-kernels.md)
        "flax>=0.11",
        "optax",
        "orbax-checkpoint",
        "ml_collections",
        "absl-py",
        "numpy",
        "clu",
        # CLU's metric writers need TensorFlow's summary ops and TensorBoard.
        "tensorflow-cpu",
        "tensorboard",
        "tensorflow-datasets",
        "grain",
        "sentencepiece",
        "zstandard",
    ],
    # The commands, beside `python -m mambaswelu_jax.main` and `python -m
    # mambaswelu_jax.cli.<command>` (the same functions).
    entry_points={"console_scripts": [
        "mambaswelu-train = mambaswelu_jax.main:run",
        "mambaswelu-eval = mambaswelu_jax.cli.eval:run",
        "mambaswelu-generate = mambaswelu_jax.cli.generate:run",
        "mambaswelu-gen-quality = mambaswelu_jax.cli.gen_quality:run",
        "mambaswelu-summary = mambaswelu_jax.cli.summary:run",
        "mambaswelu-bench-train = mambaswelu_jax.cli.bench_train:run",
        "mambaswelu-torch-checkpoint = mambaswelu_jax.cli.torch_checkpoint:run",
        "mambaswelu-lm-eval = mambaswelu_jax.cli.lm_eval:run",
        "mambaswelu-check-data = mambaswelu_jax.cli.check_data:run",
        "mambaswelu-train-tokenizer = mambaswelu_jax.cli.train_tokenizer:run",
        "mambaswelu-pretokenize = mambaswelu_jax.cli.pretokenize:run",
    ]},
    extras_require={
        "test": ["pytest", "hypothesis", "matplotlib", "scipy"],
        # experiments/: the study's report figures (compare.py, run_study.py).
        "study": ["matplotlib", "scipy"],
        # Zero-shot benchmarks (mambaswelu_jax/lm_eval_adapter.py); CI installs it to run
        # the adapter's tests. lm-eval needs torch: install a CPU build of torch first
        # (pip install torch==2.13.0 where that is the CPU wheel, as in .ci/run), or pip
        # fetches a multi-GB CUDA build. The adapter is tested with lm-eval 0.4.13.
        # safetensors: the checkpoint command's .safetensors files (checkpointing/torch_format.py).
        "eval": ["lm-eval>=0.4.13,<0.5", "safetensors"],
    },
)
