"""The package's structure: a library layer under thin command-line tools (README, "Architecture").

The library never imports a command-line module and never reads absl flags; the
import graph of amych_tf has no cycle; every model `--model` names implements the
model contract; every config resolves to the flags it had before the configs got
their shared bases.
"""

import ast
import dataclasses
import glob
import json
import os

import pytest
from absl import flags

from amych_tf import registry
from amych_tf.contract import ModelContract

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "amych_tf")
COMMANDS = ("train", "evaluate", "listen", "export", "report", "compare")
SHIMS = {f"amych_tf.{command}" for command in COMMANDS}  # `python -m amych_tf.<command>`


def module_name(path: str) -> str:
    relative = os.path.relpath(path, REPO)[:-len(".py")].split(os.sep)
    return ".".join(relative[:-1] if relative[-1] == "__init__" else relative)


MODULES = {module_name(path): path for path in glob.glob(os.path.join(PACKAGE, "**", "*.py"), recursive=True)}


def is_cli(module: str) -> bool:
    return module == "amych_tf.cli" or module.startswith("amych_tf.cli.") or module in SHIMS


def imports(module: str) -> set[str]:
    """The amych_tf modules `module` imports, at any depth of its code (lazy imports included)."""
    with open(MODULES[module], encoding="utf-8") as f:
        tree = ast.parse(f.read())
    package = module if MODULES[module].endswith("__init__.py") else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            # `from package import module` imports that module; `from module import name` the module.
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in MODULES and name != module}
    return found


GRAPH = {module: imports(module) for module in MODULES}


def test_the_library_imports_no_command_line_module():
    offending = {module: sorted(filter(is_cli, targets)) for module, targets in GRAPH.items()
                 if not is_cli(module) and any(map(is_cli, targets))}
    assert offending == {}


def test_the_import_graph_has_no_cycle():
    state, cycles = {}, []

    def visit(module, path):
        state[module] = "open"
        for target in sorted(GRAPH[module]):
            if state.get(target) == "open":
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_flags_are_read_only_by_the_command_line_layer():
    readers = set()
    for module, path in MODULES.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            absl_flags = (isinstance(node, ast.ImportFrom) and node.module == "absl"
                          and any(alias.name in ("flags", "app") for alias in node.names)) or (
                isinstance(node, ast.Import) and any(alias.name in ("absl.flags", "absl.app") for alias in node.names))
            if absl_flags or (isinstance(node, ast.Name) and node.id == "FLAGS"):
                readers.add(module)
    assert readers and all(map(is_cli, readers)), sorted(readers - set(filter(is_cli, readers)))


def test_entry_point_shims_only_run_their_command():
    for module in SHIMS:
        assert GRAPH[module] == {module.replace("amych_tf.", "amych_tf.cli.")}, module


@pytest.mark.parametrize("name", registry.names())
def test_every_registered_model_implements_the_contract(name):
    model_class = registry.model_class(name)
    assert issubclass(model_class, ModelContract) and model_class.registry_name == name
    capabilities = {"clusters": ("embed", "fit_clusters", "predict_clusters"),
                    "decodes_prototypes": ("decode_prototypes", "prototype_classes"),
                    "refinable": ("refined_copy",), "playable": ("explain_winner", "build_for_frames")}
    for capability, methods in capabilities.items():
        if getattr(model_class, capability):
            assert all(callable(getattr(model_class, method, None)) for method in methods), (name, capability)
    assert set(model_class.modes) <= {"supervised", "unsupervised"}


def test_every_config_resolves_to_its_recorded_flags(monkeypatch):
    """configs/ include shared bases (configs/base/, `--flagfile` nests); each experiment resolves to
    exactly the flags recorded in tests/config_flags.json, which were those of the configs before
    they had bases."""
    from amych_tf.cli import train
    from amych_tf.training.config import TrainConfig

    monkeypatch.chdir(REPO)  # nested --flagfile paths are relative to the repository's root
    with open(os.path.join(REPO, "tests", "config_flags.json"), encoding="utf-8") as f:
        expected = json.load(f)
    configs = sorted(os.path.basename(path) for path in glob.glob(os.path.join(REPO, "configs", "*.cfg")))
    assert configs == sorted(expected)
    for name in configs:
        flag_values = flags.FlagValues()
        train.define_flags(flag_values)
        flag_values(["train", f"--flagfile=configs/{name}"])
        config = train.config_from_flags(flag_values)
        assert config.to_dict() == expected[name], name
        assert config.to_dict().keys() == {field.name for field in dataclasses.fields(TrainConfig)}
