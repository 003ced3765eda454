"""Install compressor: `pip install .` (add extras in brackets, e.g. `pip install .[test,digits]`)."""
from setuptools import find_packages, setup

with open("README.md", encoding="utf-8") as f:
    long_description = f.read()

setup(
    name="compressor",
    version="0.1.0",
    description="Compress PyTorch networks while they train: pruning, regularization and thinning "
                "driven by Distiller-compatible YAML schedules",
    long_description=long_description,
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    # the library, and the command-line apps that drive it (kept out of the library package)
    packages=find_packages(include=["compressor", "compressor.*", "compressor_apps",
                                    "compressor_apps.*"]),
    install_requires=[
        "torch>=2.1",
        "pyyaml>=5.4",
        "pandas>=1.3",
        "tabulate>=0.8",
        "numpy>=1.21",
    ],
    extras_require={
        # Real images shipped inside a package: scikit-learn's 8x8 digits, the offline default.
        "digits": ["scikit-learn>=1.0"],
        "images": ["pillow>=9"],                  # ImageNet-style class folders
        "plot": ["matplotlib>=3.5"],              # sensitivity-analysis plots
        "onnx": ["onnx>=1.14"],                   # --export-onnx
        # benchmarks/bench_reach.py: every torchvision classifier, beside Torch-Pruning
        "reach": ["torchvision>=0.16", "torch-pruning>=1.4"],
        # Hugging Face models (BERT, Llama-style) thinned block by block; gguf reads GGUF weights.
        # transformers does not require torch, so it never replaces the torch installed here.
        # its Trainer runs on accelerate; compressor.integrations.hf drives a schedule inside it
        "hf": ["transformers>=5.0", "gguf>=0.10", "accelerate>=1.0"],
        "lightning": ["lightning>=2.0"],          # compressor.integrations.lightning
        "quant": ["torchao>=0.14"],               # --quantize-eval: int8 through torchao PT2E
        "test": ["pytest>=7", "hypothesis>=6", "scikit-learn>=1.0", "pillow>=9", "matplotlib>=3.5",
                 "transformers>=5.0", "accelerate>=1.0", "lightning>=2.0", "torchao>=0.14"],
    },
    entry_points={"console_scripts": [
        "compress-classifier=compressor_apps.compress_classifier:main",
        "compare-checkpoints=compressor_apps.compare:main",
        "compress-lm=compressor_apps.compress_lm:main",
    ]},
    classifiers=["Programming Language :: Python :: 3", "License :: OSI Approved :: Apache Software License"],
)
