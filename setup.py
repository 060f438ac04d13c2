"""amych_tf: audio identification with playable prototypes (TensorFlow/Keras)."""

import pathlib

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).parent

setup(
    name="amych_tf",
    version="0.1.0",
    description=(
        "TensorFlow/Keras implementation of 'A Model You Can Hear: Audio "
        "Identification with Playable Prototypes' (ISMIR 2022)."
    ),
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["amych_tf", "amych_tf.*", "data_tools", "data_tools.*"]),
    # TensorFlow itself comes from an extra: `cpu` (tensorflow-cpu) or `gpu`
    # (tensorflow[and-cuda]); both pin the 2.21 series that the code is tested on.
    install_requires=[
        # 3.15 at least: Keras 3.10-3.14 leave the weights of layers kept in nested lists
        # (the encoder's and decoders' levels) out of `.weights.h5`, so 21 of the model's 121
        # variables were saved, silently (measured with 3.10.0, 3.12.0, 3.13.0, 3.14.0;
        # tests/test_model.py::test_checkpoint_layout_is_unchanged_by_the_fast_layers fails there).
        "keras>=3.15,<4",
        "numpy>=1.26",
        "librosa>=0.10",
        "soundfile>=0.12",
        "absl-py>=2.0",
        "tensorboard>=2.21,<2.22",
        "matplotlib>=3.7",
        # librosa depends on soxr already; we call it directly for resampling.
        "soxr>=0.3",
    ],
    extras_require={
        "cpu": ["tensorflow-cpu==2.21.*"],
        "gpu": ["tensorflow[and-cuda]==2.21.*"],
        # playwright drives the system's Chromium (apt-get install chromium) in the
        # listening page's browser test; its own browser downloads are not used.
        "dev": ["pytest>=8", "pytest-xdist>=3", "scipy>=1.11", "playwright>=1.40"],
        # Warm-up requests of exported models (amych_tf.export). It requires the
        # `tensorflow` distribution, which `gpu` provides; with `cpu` install it as
        # `pip install --no-deps "tensorflow-serving-api==2.21.*"` (its other
        # requirements, grpcio and protobuf, come with tensorflow-cpu), or pip adds
        # a second TensorFlow over tensorflow-cpu.
        "serving": ["tensorflow-serving-api==2.21.*"],
        # Rendering SoundFont notes (data_tools.render_soundfont) also needs the
        # FluidSynth library: `apt-get install fluidsynth fluid-soundfont-gm`.
        "soundfont": ["pyfluidsynth>=1.3"],
        # Data preparation on Apache Beam (`data_tools.prepare --runner=...`, data_tools.beam_prepare);
        # Dataflow also needs `apache-beam[gcp]`. apache-beam 2.77 (the newest) caps protobuf
        # below 7, pillow below 13 and python-dateutil below 3, so pip moves them down (to
        # 6.33, 12.3, 2.9) from what `cpu` alone installs; tensorflow-cpu 2.21 accepts protobuf
        # >= 6.31.1, and the tests pass on both. Not in `dev` for that reason: CI installs it
        # after the suite and then runs tests/test_prepare_beam.py (.ci/run).
        "beam": ["apache-beam>=2.77,<3"],
    },
    entry_points={
        "console_scripts": [
            "amych-prepare = data_tools.prepare:run",
            "amych-make-demo = data_tools.make_demo:run",
            "amych-render-soundfont = data_tools.render_soundfont:run",
            "amych-train = amych_tf.cli.train:console_main",
            "amych-evaluate = amych_tf.cli.evaluate:console_main",
            "amych-report = amych_tf.cli.report:console_main",
            "amych-listen = amych_tf.cli.listen:console_main",
            "amych-export = amych_tf.cli.export:console_main",
            "amych-compare = amych_tf.cli.compare:console_main",
        ]
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Multimedia :: Sound/Audio :: Analysis",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
