"""The paper's baselines (section 4), trained by `amych_tf.train --model=NAME`.

    direct       temporal CNN classifier, cross-entropy            (Table 3)
    autoencoder  2-D conv autoencoder + K-means on its bottleneck  (Table 2)
    apnet        APNet (Zinemanas et al. 2021): classifier, and
                 APNet + K-means on its prototype similarities     (Tables 2 and 3)
    vae          the waveform VAE of the sounds thesis (seed 004): bottleneck classifier,
                 and K-means on its latent means                   (Tables 3 and 2);
                 reads waveforms, not log-Mels: its training, evaluation and listening
                 live in `amych_tf.baselines.vae_run`

Every baseline is a subclassed, registered-serializable `keras.Model` with
`get_config`, built as `Model(feature_config, num_classes, class_names=..., **hyper)`,
that shares our data pipeline and evaluation:

* inputs: features {"log_mel": [B, T, F], "mask": [B, T]} (T a multiple of 16;
  training crops are all real frames, evaluation clips are tile-padded and
  `mask` marks the real frames) and integer labels [B];
* `train_step` / `test_step` return logs with "loss" (and "accuracy" when it
  classifies);
* `build_for_frames(num_frames)` creates every weight with a dummy batch;
* `default_optimizer(learning_rate)` returns the optimizer its paper uses;
* `mode`: "supervised" if `predict_classes` names classes, "unsupervised" if it
  only clusters (evaluate then maps clusters to classes by the training majority);
* `num_prototypes`: how many values its predictions take (classes or clusters);
* `predict_classes(features) -> [B] int32` (classifiers only);
* clustering (autoencoder, apnet): `embed(features) -> [B, D]`,
  `fit_clusters(embeddings, seed)` (scikit-learn K-means, K = number of classes,
  centres stored in a non-trainable weight `cluster_centres` so checkpoints hold
  them) and `predict_clusters(features) -> [B] int32` (nearest centre).
  `amych_tf.train` fits the clusters on the train split after training.
"""

from __future__ import annotations

MODELS = ("prototypes", "direct", "autoencoder", "apnet", "vae")


def model_class(name: str):
    """The keras.Model class of --model=name (prototypes: PlayablePrototypes)."""
    if name == "prototypes":
        from amych_tf.model import PlayablePrototypes

        return PlayablePrototypes
    if name == "direct":
        from amych_tf.baselines.direct import DirectClassifier

        return DirectClassifier
    if name == "autoencoder":
        from amych_tf.baselines.autoencoder import ConvAutoencoder

        return ConvAutoencoder
    if name == "apnet":
        from amych_tf.baselines.apnet import APNet

        return APNet
    if name == "vae":
        from amych_tf.baselines.vae import WaveformVAE

        return WaveformVAE
    raise ValueError(f"unknown model {name!r}; choose one of {MODELS}")
