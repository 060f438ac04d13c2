"""The waveform VAE of the sounds thesis (shared/papers/vae-sounds-thesis2018.md), a sixth system.

A variational autoencoder on the raw waveform (8 kHz, 4096 samples, stored by
`data_tools.prepare --waveform`); sounds come out of its decoder. Thesis sections
4.1 (Table 4.1), 4.2.1 and 5.1.1:

  convolution encoder (Table 4.1, left), every layer + batch norm + tanh:
    conv1d 128 k5 s2, 128 k4 s2, 256 k4 s2, 512 k4 s2, 1024 k4 s2  -> [B, N/32, 1024]
    conv1d 1 k1 (the 1x1 collapse, linear: the thesis tried linear and tanh)  -> [B, N/32]
  dilation encoder (Table 4.1, right; --vae_architecture=dilation):
    conv1d 16 k32 s1, a dilation block (50 residual layers of two parallel conv1d 32 k2
    with dilation 2^((i-1) mod 10) and 2^((i-1) mod 5), input_i = input_{i-1} + a*b,
    output = mean of the 50 products a*b), 5 x conv1d 1 k2 s2, conv1d 1 k1
  bottleneck (4.2.1): two parallel dense layers to the mean and log-variance of a
    20-D Gaussian; z = mean + exp(log_var / 2) * eps; two dense layers (tanh) back to
    the N/32 values of the collapsed encoder output
  decoder: the mirror image with conv1d_transpose, tanh output (a waveform in [-1, 1])
  bottleneck classifier (5.1.1, supervised): three dense hidden layers (tanh) on z, logits.

Loss per clip (thesis section 3.3, "Loss calculation"), summed, not averaged, so the
weighting is the thesis' own:
  L = sum_n (x_n - x^_n)^2 + KL(N(mean, exp(log_var)) || N(0, I)) [+ cross-entropy]
  KL = 0.5 * sum_d (exp(log_var_d) + mean_d^2 - 1 - log_var_d),
trained with free bits: each dimension's KL term is max(0.5, KL_d) ("Decisions").
The thesis' code parametrises the standard deviation (its `z_var` is log sigma) and
drops the constant -1/2 per dimension; log_var = 2 log sigma is the same model and
the constant changes no gradient, so this KL is the textbook one (it is 0 at the prior).

Decisions (the thesis leaves these open):
  * The dilation block's residual stream has the sub-layers' 32 channels, so a 1x1
    convolution takes the first layer's 16 channels to 32 at the block's entry; both
    sub-layers are tanh (the thesis: tanh everywhere), non-causal ("same" padding).
  * `conv_layers` (default Table 4.1's) and `dilation_layers` (default 50) exist so tests can
    build a narrow, shallow copy; every run uses the thesis' numbers.
  * Dense widths not given: the decoder's first dense layer 64 (then N/32 = 128), the
    classifier's hidden layers 64, 64, 64.
  * Supervised training follows the thesis' "optimise both [losses] sequentially at each
    training iteration" (section 5.1.1): each batch, Adam steps the whole VAE on the ELBO,
    then a second Adam, with its own moments, steps the encoder, the latent layers and the
    classifier on the cross-entropy. Both gradients are taken at the batch's one forward
    pass (the thesis' second step sees the weights after the first). With one optimiser on
    the sum, the summed squared error (~70-450 per clip) dominates the shared Adam moments
    over the cross-entropy (~2); on the demo, training accuracy after 3 epochs was 17% with
    one optimiser and 23% with two (benchmarks/RESULTS.md, section (e)).
  * Outside training (and in test_step) z = mean: evaluation and listening are
    deterministic; the classifier also reads the mean then.
  * Batch normalisation after every layer as the thesis, momentum 0.9 as the other baselines.
  * The batch norms before a tanh start with the shift beta = 0.5 (`tanh_offset`; Keras' default
    is 0). With zero shifts the freshly initialised network (biases 0, zero-mean waveforms)
    is an odd function of its input, f(-x) = -f(x), and its features change sign with the
    phase of every partial; the demo's notes start at random phases, so such features carry
    no class. tanh(u + 0.5) has an even part (~ -0.36 u^2: rectification, an energy-like
    feature) from the first step. Measured on the demo, encoder + classifier alone, 4 epochs
    at batch 8: validation accuracy 29% with shift 0, 60% with 0.5; with waveforms randomly
    delayed and inverted, shift 0 stayed at chance for 6 epochs (benchmarks/RESULTS.md (e)).
    The architecture, its weights and the loss are the thesis'; only this initial value differs.
  * The KL term is trained with free bits (`free_bits_kl`, 0.5 nats per dimension, 10 of the
    20-D latent's): the demo's random-phase waveforms cannot be reconstructed sample by sample,
    so the squared error gives the latent nothing to carry and the thesis' KL drives it to the
    prior. Measured on the demo (with the two decisions above): the KL fell from 27 to 1.5
    nats per clip in two epochs and validation accuracy stayed at 15-21%. 10 nats hold the
    class of 8 or 16 classes (log 8 = 2.1, log 16 = 2.8) with room; above them the loss is the
    thesis'. `kl` in the logs and metrics is the true KL; `loss` is what was minimised.
  * Each clip is divided by its peak before the VAE reads it, and the decoder reconstructs that
    normalised clip (`peak_normalise`, on by default; `input_waveform`). The thesis' data had one
    level (its sines "sharing all the same constant amplitude", its digits one speaker's); the
    demo's notes peak between -21 and -5 dBFS (a factor of 9.5 in amplitude over the training
    clips), and a tanh network sees a quiet and a loud note of one instrument in different
    regimes (linear, saturated). Measured on the demo (the three other decisions on, classifier
    on the latent mean, validation split): latent 1-NN after 2 epochs 79% normalised, 52%
    without; 92% after 4 normalised (benchmarks/RESULTS.md (e)). The summed squared error is then
    over clips of energy ~735 rather than ~73 (the sum of x^2, mean over the demo's clips).
  * Training clips are augmented (`augment_waveform`, on with the training option `augment`):
    each is inverted (x -> -x) with probability 1/2, which turns every partial's phase by pi and
    keeps the class. The demo's notes have random phases: without it the encoder learns the
    training clips' phases (training accuracy rises, validation does not follow); measured in
    benchmarks/RESULTS.md (e). Session 8 also delayed each onset by up to 128 ms; with the peak
    normalisation that cost the classes, since the dense mean layer reads the 128 collapsed
    values by their position in the clip. Demo, classifier and latent 1-NN on the validation
    split after 4 epochs, classifier on z as the thesis: with the delay, classifier 48%
    (training accuracy 39%, flat since epoch 2); without it, classifier 79% and latent 1-NN 94%
    (training accuracy 75%, rising); see RESULTS.md (e).
"""

from __future__ import annotations

from typing import Any, Mapping

import keras
import numpy as np
import tensorflow as tf

from amych_tf.baselines.autoencoder import kmeans, nearest_centre
from amych_tf.baselines.direct import batch_norm
from amych_tf.contract import MODES
from amych_tf.model import PrebuiltModel, distributed_logs
from amych_tf.spectral import FeatureConfig

WAVEFORM_KEY = "waveform"
ARCHITECTURES = ("convolution", "dilation")
# Table 4.1, left: (filters, kernel) of the five stride-2 layers.
CONVOLUTION_LAYERS = ((128, 5), (128, 4), (256, 4), (512, 4), (1024, 4))
DILATION_STEM = (16, 32)  # filters, kernel of the dilation encoder's first layer
DILATION_LAYERS, DILATION_FILTERS, DILATION_CYCLES = 50, 32, (10, 5)
DOWNSAMPLING = 32  # 2^5: both encoders shorten the waveform 32 times
# Initial shift (beta) of the batch norms that feed a tanh (module docstring, "Decisions").
TANH_OFFSET = 0.5
# Nats per latent dimension that the KL term does not penalise (`free_bits_kl`; module docstring).
FREE_BITS = 0.5
# Each clip is divided by its peak before the VAE reads it (`peak_normalise`; module docstring).
PEAK_NORMALISE = True


def kl_per_dimension(mean: tf.Tensor, log_var: tf.Tensor) -> tf.Tensor:
    """KL(N(mean, exp(log_var)) || N(0, 1)) of each latent dimension: [B, D] -> [B, D]."""
    return 0.5 * (tf.exp(log_var) + tf.square(mean) - 1.0 - log_var)


def kl_divergence(mean: tf.Tensor, log_var: tf.Tensor) -> tf.Tensor:
    """KL(N(mean, exp(log_var)) || N(0, I)) per example: [B, D] -> [B]."""
    return tf.reduce_sum(kl_per_dimension(mean, log_var), axis=-1)


def free_bits_kl(mean: tf.Tensor, log_var: tf.Tensor, free_bits: float) -> tf.Tensor:
    """The KL term as trained: sum_d max(free_bits, KL_d) per example, [B, D] -> [B].

    Kingma et al. 2016 ("Improving variational inference with inverse autoregressive flow",
    free bits): a dimension whose KL is below `free_bits` nats costs a constant, so nothing
    pushes it further towards the prior; above, the gradient is the thesis' KL's. 0: the KL.
    """
    return tf.reduce_sum(tf.maximum(kl_per_dimension(mean, log_var), free_bits), axis=-1)


def augment_waveform(waveform: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """A training clip [N], inverted half the time; `seed`: int [2] of a stateless draw (same
    seed, same result).

    Inversion turns every partial's phase by pi and keeps the class, so the encoder cannot tell
    classes apart by the phases of the training clips (module docstring, "Decisions"). Not the
    thesis' (it trains on the clips as they are).
    """
    return tf.where(tf.random.stateless_uniform([], seed) < 0.5, -waveform, waveform)


def peak_normalised(waveform: tf.Tensor) -> tf.Tensor:
    """Each clip [B, N] divided by its largest absolute sample (a silent clip stays 0)."""
    return tf.math.divide_no_nan(waveform, tf.reduce_max(tf.abs(waveform), axis=-1, keepdims=True))


def squared_error_sum(reconstruction: tf.Tensor, waveform: tf.Tensor) -> tf.Tensor:
    """The thesis' generation loss: squared error summed over the samples, [B, N] -> [B]."""
    return tf.reduce_sum(tf.square(reconstruction - waveform), axis=-1)


@keras.saving.register_keras_serializable(package="amych_tf")
class ConvolutionStack(keras.layers.Layer):
    """Conv1D (or Conv1DTranspose) + batch norm + tanh per (filters, kernel), all with one stride.

    The encoder's five stride-2 layers, or, `transpose=True`, the decoder's mirror image.
    [B, L, C] -> [B, L / stride^n, filters] (transpose: L * stride^n).
    """

    def __init__(self, layers_spec, strides: int = 2, transpose: bool = False, tanh_offset: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.layers_spec = [tuple(int(v) for v in spec) for spec in layers_spec]
        self.strides, self.transpose, self.tanh_offset = int(strides), bool(transpose), float(tanh_offset)
        conv = keras.layers.Conv1DTranspose if self.transpose else keras.layers.Conv1D
        self.convolutions = [conv(filters, kernel, strides=self.strides, padding="same", name=f"conv{i}")
                             for i, (filters, kernel) in enumerate(self.layers_spec)]
        self.norms = [batch_norm(f"bn{i}", self.tanh_offset) for i in range(len(self.layers_spec))]

    def call(self, x, training=None):
        for convolution, norm in zip(self.convolutions, self.norms):
            x = tf.tanh(norm(convolution(x), training=training))
        return x

    def get_config(self):
        return {**super().get_config(), "layers_spec": [list(spec) for spec in self.layers_spec],
                "strides": self.strides, "transpose": self.transpose, "tanh_offset": self.tanh_offset}


@keras.saving.register_keras_serializable(package="amych_tf")
class DilationBlock(keras.layers.Layer):
    """The thesis' WaveNet-like block (figure 4.1): [B, L, C] -> [B, L, filters].

    A 1x1 convolution to `filters` channels, then `num_layers` residual layers of two
    parallel dilated convolutions a, b (tanh; dilations 2^((i-1) mod cycles[0]) and
    2^((i-1) mod cycles[1])): x <- x + a*b; the output is the mean of the products a*b.
    """

    def __init__(self, num_layers: int = DILATION_LAYERS, filters: int = DILATION_FILTERS, kernel_size: int = 2,
                 cycles=DILATION_CYCLES, **kwargs):
        super().__init__(**kwargs)
        self.num_layers, self.filters, self.kernel_size = int(num_layers), int(filters), int(kernel_size)
        self.cycles = tuple(int(c) for c in cycles)
        self.entry = keras.layers.Conv1D(self.filters, 1, name="entry")
        self.pairs = [
            [keras.layers.Conv1D(self.filters, self.kernel_size, dilation_rate=2 ** (i % cycle), padding="same",
                                 activation="tanh", name=f"layer{i}_{j}") for j, cycle in enumerate(self.cycles)]
            for i in range(self.num_layers)
        ]

    def call(self, x):
        x = self.entry(x)
        skips = 0.0
        for first, second in self.pairs:
            product = first(x) * second(x)
            x = x + product
            skips = skips + product
        return skips / self.num_layers

    def get_config(self):
        return {**super().get_config(), "num_layers": self.num_layers, "filters": self.filters,
                "kernel_size": self.kernel_size, "cycles": list(self.cycles)}


class _WaveformCoder(keras.layers.Layer):
    """What the encoder and the decoder share: the architecture, its options, running the body."""

    def __init__(self, architecture: str = "convolution", dilation_layers: int = DILATION_LAYERS,
                 conv_layers=CONVOLUTION_LAYERS, tanh_offset: float = TANH_OFFSET, **kwargs):
        super().__init__(**kwargs)
        if architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
        self.architecture, self.dilation_layers = architecture, int(dilation_layers)
        self.conv_layers = [tuple(int(v) for v in spec) for spec in conv_layers]
        self.tanh_offset = float(tanh_offset)
        self.body = []

    def run_body(self, x, training):
        for layer in self.body:
            x = layer(x, training=training) if isinstance(layer, ConvolutionStack) else layer(x)
        return x

    def get_config(self):
        return {**super().get_config(), "architecture": self.architecture, "dilation_layers": self.dilation_layers,
                "conv_layers": [list(spec) for spec in self.conv_layers], "tanh_offset": self.tanh_offset}


@keras.saving.register_keras_serializable(package="amych_tf")
class WaveformEncoder(_WaveformCoder):
    """Waveform [B, N] -> the collapsed encoder output [B, N/32] (Table 4.1, layers up to the 1x1)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.architecture == "convolution":
            self.body = [ConvolutionStack(self.conv_layers, tanh_offset=self.tanh_offset, name="convolutions")]
        else:
            self.body = [ConvolutionStack([DILATION_STEM], strides=1, tanh_offset=self.tanh_offset, name="stem"),
                         DilationBlock(self.dilation_layers, name="dilation"),
                         ConvolutionStack([(1, 2)] * 5, tanh_offset=self.tanh_offset, name="downsampling")]
        self.collapse = keras.layers.Conv1D(1, 1, name="collapse")
        self.collapse_norm = batch_norm("collapse_bn")

    def call(self, waveform, training=None):
        x = self.run_body(waveform[..., tf.newaxis], training)
        return self.collapse_norm(self.collapse(x), training=training)[..., 0]


@keras.saving.register_keras_serializable(package="amych_tf")
class WaveformDecoder(_WaveformCoder):
    """The encoder's mirror image: [B, N/32] -> waveform [B, N] in [-1, 1] (tanh)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.architecture == "convolution":
            self.body = [ConvolutionStack(self.conv_layers[::-1], transpose=True, tanh_offset=self.tanh_offset,
                                          name="convolutions")]
        else:
            stack = dict(transpose=True, tanh_offset=self.tanh_offset)
            self.body = [ConvolutionStack([(1, 2)] * 5, name="upsampling", **stack),
                         ConvolutionStack([(DILATION_FILTERS, 1)], strides=1, name="widen", **stack),
                         DilationBlock(self.dilation_layers, name="dilation"),
                         ConvolutionStack([DILATION_STEM], strides=1, name="stem", **stack)]
        self.output_layer = keras.layers.Conv1DTranspose(1, 1, activation="tanh", name="output")

    def call(self, collapsed, training=None):
        return self.output_layer(self.run_body(collapsed[..., tf.newaxis], training))[..., 0]


@keras.saving.register_keras_serializable(package="amych_tf")
class GaussianSample(keras.layers.Layer):
    """The reparametrised draw z = mean + exp(log_var / 2) * eps when training, the mean otherwise."""

    def __init__(self, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, mean, log_var, training=None):
        if not training:
            return mean
        noise = keras.random.normal(tf.shape(mean), seed=self.seed_generator)
        return mean + tf.exp(0.5 * log_var) * noise

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


def features_waveform(features) -> tf.Tensor:
    """The waveform [B, N] of a features dict ({"waveform": ...}) or of a bare tensor."""
    if isinstance(features, Mapping):
        if WAVEFORM_KEY not in features:
            raise ValueError("the VAE reads waveforms: features need a 'waveform' entry "
                             "(prepare the data with data_tools.prepare --waveform)")
        features = features[WAVEFORM_KEY]
    return tf.convert_to_tensor(features, tf.float32)


@keras.saving.register_keras_serializable(package="amych_tf")
class WaveformVAE(PrebuiltModel):
    """The thesis' VAE; call(features) -> reconstructed waveform [B, N].

    features: {"waveform": [B, N]} (or the tensor), N = waveform["num_samples"], a multiple of 32.
    `feature_config` is the dataset's log-Mel front end: the VAE does not read log-Mels,
    but its L_rec is measured on them and dataset_info.json must match the model.
    """

    registry_name = "vae"
    clusters = True
    reads_waveforms = True
    modes = MODES

    @classmethod
    def from_train_config(cls, config, info, **prepared):
        del prepared
        return cls(info.features, info.num_classes, class_names=info.class_names, waveform=info.waveform,
                   architecture=config.vae_architecture, supervised=config.mode == "supervised", seed=config.seed)

    def __init__(
        self,
        feature_config: FeatureConfig | Mapping[str, Any],
        num_classes: int,
        *,
        class_names: list[str] | None = None,
        waveform: Mapping[str, int] | None = None,
        architecture: str = "convolution",
        supervised: bool = True,
        latent_dim: int = 20,
        decoder_widths=(64,),
        classifier_widths=(64, 64, 64),
        dilation_layers: int = DILATION_LAYERS,
        conv_layers=CONVOLUTION_LAYERS,
        tanh_offset: float = TANH_OFFSET,
        free_bits: float = FREE_BITS,
        peak_normalise: bool = PEAK_NORMALISE,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(feature_config, FeatureConfig):
            feature_config = FeatureConfig.from_dict(feature_config)
        waveform = dict(waveform or {"sample_rate": 8000, "num_samples": 4096})
        if waveform["num_samples"] % DOWNSAMPLING:
            raise ValueError(f"the waveform length ({waveform['num_samples']}) must be a multiple of {DOWNSAMPLING}")
        self.feature_config = feature_config
        self.num_classes = int(num_classes)
        self.class_names = list(class_names) if class_names is not None else None
        self.waveform = {"sample_rate": int(waveform["sample_rate"]), "num_samples": int(waveform["num_samples"])}
        self.architecture, self.supervised = architecture, bool(supervised)
        self.latent_dim, self.dilation_layers, self.seed = int(latent_dim), int(dilation_layers), seed
        self.conv_layers = [tuple(int(v) for v in spec) for spec in conv_layers]
        self.tanh_offset, self.free_bits = float(tanh_offset), float(free_bits)
        self.peak_normalise = bool(peak_normalise)
        if len(self.conv_layers) != 5:  # 2^5 = DOWNSAMPLING
            raise ValueError(f"conv_layers must give (filters, kernel) of 5 stride-2 layers, got {self.conv_layers}")
        self.decoder_widths = tuple(int(w) for w in decoder_widths)
        self.classifier_widths = tuple(int(w) for w in classifier_widths)
        self.mode = "supervised" if self.supervised else "unsupervised"
        collapsed = self.num_samples // DOWNSAMPLING

        self.encoder = WaveformEncoder(architecture, self.dilation_layers, self.conv_layers, self.tanh_offset,
                                       name="encoder")
        self.mean_layer = keras.layers.Dense(self.latent_dim, name="mean")
        self.log_var_layer = keras.layers.Dense(self.latent_dim, name="log_var")
        self.sample = GaussianSample(seed, name="sample")
        self.expand = [keras.layers.Dense(width, activation="tanh", name=f"expand{i}")
                       for i, width in enumerate((*self.decoder_widths, collapsed))]
        self.decoder = WaveformDecoder(architecture, self.dilation_layers, self.conv_layers, self.tanh_offset,
                                       name="decoder")
        self.classifier = []
        if self.supervised:
            self.classifier = [keras.layers.Dense(width, activation="tanh", name=f"classifier{i}")
                               for i, width in enumerate(self.classifier_widths)]
            self.classifier.append(keras.layers.Dense(self.num_classes, name="logits"))

        # K-means on the latent means (Table 2 row), K = number of classes; zeros until fit_clusters.
        self.cluster_centres = self.add_weight(name="cluster_centres", shape=(self.num_classes, self.latent_dim),
                                               initializer="zeros", trainable=False)
        names = ["loss", "rec", "kl"] + (["ce", "accuracy"] if self.supervised else [])
        self.trackers = {name: keras.metrics.Mean(name=name) for name in names}

    @property
    def num_samples(self) -> int:
        return self.waveform["num_samples"]

    @property
    def num_prototypes(self) -> int:
        """Values the predictions take: the classes (classifier, or K-means with K = classes)."""
        return self.num_classes

    @property
    def embedding_size(self) -> int:
        return self.latent_dim

    @staticmethod
    def default_optimizer(learning_rate: float) -> keras.optimizers.Optimizer:
        """Adam, as the thesis (section 4.1.1)."""
        return keras.optimizers.Adam(learning_rate)

    def compile(self, optimizer="adam", **kwargs):
        """Keras' compile; supervised, also the classifier's own Adam (the thesis' second step).

        It reads the main optimiser's learning rate at every step (so a reduction on plateau,
        --lr_plateau_patience, slows both steps) and is built here (inside the caller's
        distribution scope), so train_step creates no variable.
        """
        super().compile(optimizer=optimizer, **kwargs)
        if self.supervised:
            self.classification_optimizer = keras.optimizers.Adam(lambda: self.optimizer.learning_rate)
            self.classification_optimizer.build(self.classification_variables)

    @property
    def classification_variables(self) -> list:
        """What the cross-entropy step trains: encoder, mean and log-variance layers, classifier."""
        layers = [self.encoder, self.mean_layer, self.log_var_layer, *self.classifier]
        return [variable for layer in layers for variable in layer.trainable_variables]

    def build_for_frames(self, num_frames: int | None = None) -> None:
        """Create every weight with a dummy batch (the length is the stored waveform's, not frames)."""
        del num_frames
        features = {WAVEFORM_KEY: tf.zeros([1, self.num_samples])}
        self(features, training=False)
        if self.supervised:
            self.classify(tf.zeros([1, self.latent_dim]))

    # -- the network ---------------------------------------------------------------------

    def input_waveform(self, features) -> tf.Tensor:
        """The waveform [B, N] the VAE encodes and reconstructs: the clip, peak-normalised if
        `peak_normalise` (module docstring, "Decisions")."""
        waveform = features_waveform(features)
        return peak_normalised(waveform) if self.peak_normalise else waveform

    def encode(self, features, training=None) -> tuple[tf.Tensor, tf.Tensor]:
        """features -> (mean, log_var), each [B, latent_dim]."""
        return self.encode_waveform(self.input_waveform(features), training=training)

    def encode_waveform(self, waveform: tf.Tensor, training=None) -> tuple[tf.Tensor, tf.Tensor]:
        """An input waveform [B, N] (`input_waveform`'s) -> (mean, log_var), each [B, latent_dim]."""
        collapsed = self.encoder(waveform, training=training)
        return self.mean_layer(collapsed), self.log_var_layer(collapsed)

    def decode(self, z: tf.Tensor, training=None) -> tf.Tensor:
        """Latent points [B, latent_dim] -> waveforms [B, N]."""
        x = z
        for layer in self.expand:
            x = layer(x)
        return self.decoder(x, training=training)

    def classify(self, z: tf.Tensor) -> tf.Tensor:
        """Bottleneck classifier: latent points [B, latent_dim] -> logits [B, classes]."""
        if not self.supervised:
            raise ValueError("an unsupervised VAE has no bottleneck classifier")
        x = z
        for layer in self.classifier:
            x = layer(x)
        return x

    def call(self, inputs, training=None):
        mean, log_var = self.encode(inputs, training=training)
        return self.decode(self.sample(mean, log_var, training=training), training=training)

    def embed(self, features) -> tf.Tensor:
        """The latent mean of each clip (inference mode): features -> [B, latent_dim]."""
        return self.encode(features, training=False)[0]

    def predict_classes(self, features) -> tf.Tensor:
        """The bottleneck classifier's argmax on the latent mean: features -> int32 [B]."""
        return tf.argmax(self.classify(self.embed(features)), axis=-1, output_type=tf.int32)

    # -- clustering ----------------------------------------------------------------------

    def fit_clusters(self, embeddings, seed: int) -> np.ndarray:
        """K-means (K = classes) on latent means [N, D], as the autoencoder's (`autoencoder.kmeans`).

        Stores the centres in `cluster_centres`; returns each embedding's cluster, int32 [N].
        """
        centres, clusters = kmeans(embeddings, self.num_classes, self.latent_dim, seed)
        self.cluster_centres.assign(centres)
        return clusters

    def predict_clusters(self, features) -> tf.Tensor:
        """Nearest K-means centre of each clip's latent mean: features -> int32 [B]."""
        return nearest_centre(self.embed(features), tf.convert_to_tensor(self.cluster_centres))

    # -- training ------------------------------------------------------------------------

    def per_example_losses(self, features, labels, training) -> dict[str, tf.Tensor]:
        """{"loss", "rec", "kl", "elbo"[, "ce", "hits"]} per example [B]: "kl" the KL, "elbo" the trained
        rec + free-bits KL, "loss" = elbo [+ ce], the monitored total."""
        waveform = self.input_waveform(features)
        mean, log_var = self.encode_waveform(waveform, training=training)
        z = self.sample(mean, log_var, training=training)
        losses = {"rec": squared_error_sum(self.decode(z, training=training), waveform),
                  "kl": kl_divergence(mean, log_var)}
        losses["elbo"] = losses["rec"] + free_bits_kl(mean, log_var, self.free_bits)
        losses["loss"] = losses["elbo"]
        if self.supervised:
            labels = tf.cast(labels, tf.int32)
            logits = self.classify(z)
            losses["ce"] = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
            losses["loss"] = losses["loss"] + losses["ce"]
            losses["hits"] = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float32)
        return losses

    def _update_metrics(self, losses):
        for name, tracker in self.trackers.items():
            tracker.update_state(losses["hits" if name == "accuracy" else name])
        return distributed_logs({name: tracker.result() for name, tracker in self.trackers.items()})

    def train_step(self, data):
        features, labels = data
        with tf.GradientTape(persistent=self.supervised) as tape:
            losses = self.per_example_losses(features, labels, training=True)
            # Divided by the *global* batch size: summing replicas' gradients gives the mean.
            elbo = tf.nn.compute_average_loss(losses["elbo"])
            if self.supervised:
                cross_entropy = tf.nn.compute_average_loss(losses["ce"])
        classifier = {id(v) for layer in self.classifier for v in layer.trainable_variables}
        elbo_variables = [v for v in self.trainable_variables if id(v) not in classifier]  # the ELBO's
        gradients = tape.gradient(elbo, elbo_variables)
        if self.supervised:  # the thesis' two steps per batch (module docstring)
            classification_gradients = tape.gradient(cross_entropy, self.classification_variables)
            del tape
        self.optimizer.apply_gradients(zip(gradients, elbo_variables))
        if self.supervised:
            self.classification_optimizer.apply_gradients(zip(classification_gradients,
                                                              self.classification_variables))
        return self._update_metrics(losses)

    def test_step(self, data):
        features, labels = data
        return self._update_metrics(self.per_example_losses(features, labels, training=False))

    @property
    def metrics(self):
        return list(self.trackers.values())

    def get_config(self):
        return {
            **super().get_config(),
            "feature_config": self.feature_config.to_dict(),
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "waveform": dict(self.waveform),
            "architecture": self.architecture,
            "supervised": self.supervised,
            "latent_dim": self.latent_dim,
            "decoder_widths": list(self.decoder_widths),
            "classifier_widths": list(self.classifier_widths),
            "dilation_layers": self.dilation_layers,
            "conv_layers": [list(spec) for spec in self.conv_layers],
            "tanh_offset": self.tanh_offset,
            "free_bits": self.free_bits,
            "peak_normalise": self.peak_normalise,
            "seed": self.seed,
        }
