"""amych_tf: audio identification with playable prototypes, in TensorFlow/Keras.

Modules:
  spectral    log-Mel front end (FeatureConfig, log_mel, LogMel) and its inverse
  transforms  the paper's spectral transformations, eqs. 1-5
"""

__version__ = "0.1.0"
