"""The listening page (listen --html): its content, and the page loaded in a real headless browser."""

import json
import os
from html.parser import HTMLParser
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
import soundfile

from helpers import FEATURES, class_coded_log_mel, harmonic_tone, make_prepared_dir, write_model_dir

from amych_tf import listen_page, registry

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


class Links(HTMLParser):
    """Every linked file of a page (img/audio src, a href) and the alt text of its images."""

    def __init__(self):
        super().__init__()
        self.links, self.image_alts, self.audio_labels = [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for name in ("src", "href"):
            if attrs.get(name):
                self.links.append(attrs[name])
        if tag == "img":
            self.image_alts.append(attrs.get("alt"))
        if tag == "audio":
            self.audio_labels.append(attrs.get("aria-label"))


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """A page for a small run: 3 prototypes, stage checkpoints, a test split of 5 clips, 2 examples, and
    the source audio of the test clips (a tone per clip)."""
    root = tmp_path_factory.mktemp("listening_page")
    data_dir, model_dir, audio_dir = str(root / "data"), str(root / "run"), str(root / "audio")
    lengths = {"train": [16, 20, 24, 28, 32, 36], "validation": [], "test": [16, 20, 24, 28, 32]}
    make_prepared_dir(data_dir, lengths, num_mels=FEATURES.n_mels, sample_rate=FEATURES.sample_rate,
                      n_fft=FEATURES.n_fft, hop_length=FEATURES.hop_length, spectrogram=class_coded_log_mel)
    for i in range(len(lengths["test"])):
        os.makedirs(os.path.join(audio_dir, "test"), exist_ok=True)
        soundfile.write(os.path.join(audio_dir, "test", f"clip-{i:04d}.wav"),
                        harmonic_tone(220.0 * (i + 1), FEATURES.sample_rate, seconds=0.3), FEATURES.sample_rate)
    model = write_model_dir(model_dir, data_dir=data_dir)
    for index, stage in enumerate(["raw", "gain"]):
        model.save_weights(os.path.join(model_dir, "checkpoints", f"stage-{index}-{stage}.weights.h5"))
    with open(os.path.join(model_dir, "metrics.json"), "w") as f:
        json.dump({"curriculum_stage": "gain", "checkpoint": "latest"}, f)
    model, config = registry.load_model(model_dir)
    out_dir = str(root / "run" / "listen")
    path = listen_page.write_page(model, config, model_dir, data_dir, out_dir, examples=2, audio_dir=audio_dir,
                                  batch_size=4, n_iter=4)
    with open(path, encoding="utf-8") as f:
        return {"path": path, "html": f.read(), "model": model, "out_dir": out_dir}


def test_page_lists_every_prototype_and_the_metrics_with_relative_links_only(page):
    html, out_dir = page["html"], page["out_dir"]
    links = Links()
    links.feed(html)
    for name in page["model"].class_names:
        assert f"<td>{name}</td>" in html
    for heading in ("OA", "AA", "L_rec", "Fine structure explained", "Prototype crispness median / min",
                    "Pitch tracking r median", "Pitch tracking slope median"):
        assert f'<th scope="row">{heading}</th>' in html
    assert "Curriculum stages reached: raw prototypes, + gain" in html
    assert html.count("<section ") == 2  # --examples
    assert "runner-up" in html
    # Each example plays its original recording (the audio dir was given), input, reconstruction, prototype,
    # and its reconstruction after each of the 2 stages.
    assert sum("Original recording" in label for label in links.audio_labels) == 2
    assert len(links.audio_labels) == 3 + 2 * (4 + 2) and all(links.audio_labels)
    assert sum(link.endswith("/stages.png") for link in links.links) == 2
    assert links.image_alts and all(links.image_alts)
    for link in links.links:
        assert not urlparse(link).scheme and not link.startswith("/"), link
        assert os.path.isfile(os.path.join(out_dir, unquote(link))), link


def test_page_loads_in_a_headless_browser(page):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install "
                                   "playwright; the browser itself comes from apt-get install chromium)")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"no browser at {CHROMIUM} (apt-get install chromium)")
    errors = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            browser_page = browser.new_page()
            browser_page.on("console", lambda message: message.type == "error" and errors.append(message.text))
            browser_page.on("pageerror", lambda error: errors.append(str(error)))
            browser_page.goto("file://" + os.path.abspath(page["path"]), wait_until="load")
            widths = browser_page.eval_on_selector_all("img", "images => images.map(i => [i.src, i.naturalWidth])")
            durations = browser_page.evaluate("""() => Promise.all(Array.from(document.querySelectorAll("audio"))
                .map(audio => new Promise(resolve => {
                    if (audio.readyState >= 1) { resolve([audio.src, audio.duration]); return; }
                    audio.addEventListener("loadedmetadata", () => resolve([audio.src, audio.duration]));
                    audio.addEventListener("error", () => resolve([audio.src, -1]));
                    audio.load();
                })))""")
        finally:
            browser.close()
    assert not errors
    assert widths and all(width > 0 for _, width in widths), widths
    assert len(durations) == 15, durations
    assert all(0 < duration < np.inf for _, duration in durations), durations


def test_examples_are_wrong_clips_first_then_correct_ones_one_class_at_a_time():
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    correct = np.array([1, 0, 1, 1, 1, 0, 1, 1, 1], bool)
    assert listen_page.choose_examples(correct, labels, 5) == [1, 5, 0, 3, 6]
    assert listen_page.choose_examples(correct, labels, 2) == [1, 0]  # half of them wrong
    assert listen_page.choose_examples(np.ones(9, bool), labels, 4) == [0, 3, 6, 1]  # no wrong clips


SMALL_SPLITS = {"train": [16, 20, 24, 28, 32, 36], "validation": [], "test": [16, 20, 24]}


def test_unsupervised_page_maps_clusters_to_classes(tmp_path):
    data_dir = str(tmp_path / "data")
    make_prepared_dir(data_dir, SMALL_SPLITS, num_mels=FEATURES.n_mels, sample_rate=FEATURES.sample_rate,
                      n_fft=FEATURES.n_fft, hop_length=FEATURES.hop_length, spectrogram=class_coded_log_mel)
    write_model_dir(str(tmp_path / "run"), mode="unsupervised", data_dir=data_dir)
    model, config = registry.load_model(str(tmp_path / "run"))
    path = listen_page.write_page(model, config, str(tmp_path / "run"), data_dir, str(tmp_path / "listen"),
                                  examples=1, batch_size=4, n_iter=2)
    with open(path, encoding="utf-8") as f:
        html = f.read()
    assert "<h3>Cluster to class</h3>" in html
    assert all(f"<td>cluster{k}</td>" in html for k in range(3))
    assert html.count("<section ") == 1 and "Original recording" not in html  # no --audio_dir


def test_apnet_page_shows_its_decoded_prototypes(tmp_path):
    from amych_tf.baselines.apnet import APNet
    from amych_tf.spectral import FeatureConfig

    features = FeatureConfig(sample_rate=16000, n_fft=1024, hop_length=512, n_mels=16)
    data_dir = str(tmp_path / "data")
    make_prepared_dir(data_dir, SMALL_SPLITS)  # its default features are `features`
    model = APNet(features, 3, class_names=["class0", "class1", "class2"], num_frames=32, num_prototypes_latent=4,
                  filters=4)
    model.build_for_frames()
    model_dir = str(tmp_path / "run")
    os.makedirs(model_dir)
    config = {"model_name": "apnet", "model": model.get_config(), "dataset": {"data_dir": data_dir}}
    path = listen_page.write_page(model, config, model_dir, data_dir, str(tmp_path / "listen"), batch_size=4,
                                  n_iter=2)
    with open(path, encoding="utf-8") as f:
        html = f.read()
    links = Links()
    links.feed(html)
    assert "<h2>Prototypes (decoded)</h2>" in html and "Confusion matrix" in html
    assert len(links.audio_labels) == 4 and "<h2>Test clips</h2>" not in html
    assert "Fine structure explained" not in html  # a baseline has no hearing fidelity
    for link in links.links:
        assert os.path.isfile(os.path.join(str(tmp_path / "listen"), unquote(link))), link
