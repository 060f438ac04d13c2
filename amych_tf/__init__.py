"""amych_tf: audio identification with playable prototypes, in TensorFlow/Keras.

Modules:
  spectral    log-Mel front end (FeatureConfig, log_mel, LogMel) and its inverse
  transforms  the paper's spectral transformations, eqs. 1-5
"""

import os as _os

# TensorFlow's oneDNN kernels (convolutions, batch norm, their gradients) whatever the CPU.
# TensorFlow turns them on by default only on CPUs with AVX-512 VNNI/BF16 or AMX; on an AVX2
# CPU (AMD EPYC, benchmarks/RESULTS-train.md) it falls back to its Eigen kernels, and the
# networks' forward and backward took twice the CPU time (1.37 against 0.64 CPU-s per
# training step). Read once, when TensorFlow is imported: this only counts if amych_tf is
# imported first (the command-line tools and benchmarks are); an explicit setting wins.
# Same equations; oneDNN sums in another order (float32 round-off).
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

from amych_tf import _lean_keras  # noqa: E402

_lean_keras.install()

__version__ = "0.1.0"
