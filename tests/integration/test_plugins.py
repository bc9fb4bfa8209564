"""Plugins: an installed package (entry point), a local file, a broken one, duplicates, unknown names.

Entry points are real ones: a distribution's ``*.dist-info`` with ``entry_points.txt``
on the path of a fresh ``hashbench`` process, exactly as ``pip install`` leaves them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hashbench.model.method import Method
from hashbench.model.registry import DuplicateMethodError, Registry

REPO = Path(__file__).resolve().parents[2]
HASHBENCH = str(Path(sys.executable).with_name("hashbench"))

DEMO_MODULE = """
import torch
from torch import nn
from hashbench.model.method import Method, TanhHead
from hashbench.model.registry import register_method


class PullToClass(nn.Module):
    def __init__(self, n_classes, bits):
        super().__init__()
        self.register_buffer("targets", torch.linspace(-1, 1, n_classes)[:, None].repeat(1, bits))

    def forward(self, output, labels, indices, info):
        return {"pull": (output.code - labels @ self.targets).pow(2).mean()}


@register_method("demo-hash")
class DemoHash(Method):
    paper = "a test plugin"

    def build_loss(self):
        return PullToClass(self.context.n_classes, self.bits)
"""


def fake_distribution(
    site: Path, name: str, version: str, entry_points: dict[str, str], modules: dict[str, str]
) -> None:
    """What ``pip install`` leaves: the modules and a dist-info with METADATA and entry_points.txt."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(
        "[hashbench.methods]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    )
    for module, source in modules.items():
        (site / f"{module}.py").write_text(textwrap.dedent(source))


@pytest.fixture
def site(tmp_path):
    site = tmp_path / "site"
    fake_distribution(site, "hb-demo-plugin", "0.3", {"demo-hash": "hb_demo_plugin"}, {"hb_demo_plugin": DEMO_MODULE})
    fake_distribution(
        site,
        "hb-broken-plugin",
        "1.0",
        {"broken-hash": "hb_broken_plugin"},
        {"hb_broken_plugin": "import a_dependency_that_is_not_installed\n"},
    )
    return site


def hashbench(site, *args, home):
    env = {**os.environ, "PYTHONPATH": str(site), "HASHBENCH_HOME": str(home), "COLUMNS": "250"}
    return subprocess.run([HASHBENCH, *args], capture_output=True, text=True, env=env, timeout=600, cwd=site.parent)


def test_listing_shows_plugins_with_origin_and_a_broken_one_with_its_cause(site, hashbench_home):
    result = hashbench(site, "list", home=hashbench_home)
    assert result.returncode == 0, result.stderr
    lines = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if line.count("│") >= 4}
    assert "hb-demo-plugin==0.3" in lines["demo-hash"] and " ok " in lines["demo-hash"]
    assert "hb-broken-plugin==1.0" in lines["broken-hash"] and "broken" in lines["broken-hash"]
    assert "a_dependency_that_is_not_installed" in lines["broken-hash"]
    assert "built-in" in lines["hashnet"]
    wildcard = hashbench(site, "list", "d*", home=hashbench_home)
    assert "demo-hash" in wildcard.stdout and "dpn" in wildcard.stdout and "hashnet" not in wildcard.stdout


def test_entry_point_and_local_file_plugins_run_beside_a_broken_one(site, tiny_phantom, hashbench_home, tmp_path):
    out = tmp_path / "out"
    result = hashbench(
        site,
        "run",
        "--methods",
        "demo-hash,center-hash",
        "dpn",
        "--bits",
        "8",
        "16",
        "--plugin",
        str(REPO / "examples" / "my_method.py"),
        "--dataset",
        "phantom-tiny-seed0",
        "--epochs",
        "1",
        "--out",
        str(out),
        "--set",
        "center-hash.quantisation=0.1",
        home=hashbench_home,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(
        r"center-hash 8 bits: epoch 1/1 .*centre [\d.]+, quantisation [\d.]+", result.stdout + result.stderr
    )  # the plugin's typed option reached its loss
    for method in ("demo-hash", "center-hash", "dpn"):
        for bits in (8, 16):
            assert f"done phantom-tiny-seed0/{method}/{bits} bits/seed 0" in result.stdout
    assert "MAP@10" in result.stdout
    import json

    origins = {p.parts[-4]: json.loads(p.read_text())["origin"] for p in out.glob("*/*/8bits/*/metrics.json")}
    assert origins["demo-hash"] == "hb-demo-plugin==0.3"
    assert origins["center-hash"] == f"file:{REPO / 'examples' / 'my_method.py'}"
    assert origins["dpn"] == "built-in"


def test_asking_for_a_broken_or_unknown_method_is_an_actionable_error(site, tiny_phantom, hashbench_home, tmp_path):
    broken = hashbench(
        site,
        "run",
        "--methods",
        "broken-hash",
        "--dataset",
        "phantom-tiny-seed0",
        "--out",
        str(tmp_path),
        home=hashbench_home,
    )
    assert (
        broken.returncode == 2
        and "hb-broken-plugin==1.0" in broken.stdout
        and "a_dependency_that_is_not_installed" in broken.stdout
    )
    unknown = hashbench(
        site,
        "run",
        "--methods",
        "hashnett",
        "--dataset",
        "phantom-tiny-seed0",
        "--out",
        str(tmp_path),
        home=hashbench_home,
    )
    assert (
        unknown.returncode == 2
        and "unknown method 'hashnett'; valid:" in unknown.stdout
        and "demo-hash" in unknown.stdout
        and "dpsh" in unknown.stdout
    )


def test_a_duplicate_name_is_an_error_and_the_first_one_stays(tmp_path):
    registry = Registry()
    registry._discovered = True  # only what this test registers

    class First(Method):
        pass

    class Second(Method):
        pass

    registry.register("same", First)
    plugin = tmp_path / "dup.py"
    plugin.write_text("from hashbench.model.method import Method\n")
    with (
        registry._loading_from("file:dup.py"),
        pytest.raises(DuplicateMethodError, match="already registered by built-in"),
    ):
        registry.register("same", Second)
    assert registry.get("same") is First


def test_a_local_plugin_that_redefines_a_built_in_is_broken_not_a_replacement(tmp_path, monkeypatch):
    from hashbench.model.registry import REGISTRY

    REGISTRY.discover()
    monkeypatch.setattr(REGISTRY, "entries", dict(REGISTRY.entries))  # the broken entry leaves with this test
    plugin = tmp_path / "impostor.py"
    plugin.write_text(
        "from hashbench.model.method import Method\nfrom hashbench.model.registry import register_method\n\n@register_method('hashnet')\nclass Impostor(Method):\n    pass\n"
    )
    names = REGISTRY.load_file(plugin)
    assert REGISTRY.entries[names[0]].error.startswith("hashbench.model.registry.DuplicateMethodError")
    assert REGISTRY.get("hashnet").origin == "built-in"


@pytest.mark.parametrize("name", ["team/dsh", "../../escaped", ".hidden", ""])
def test_a_method_name_that_is_not_a_plain_folder_name_is_refused(name):
    """A method's name becomes a folder under every results root: it must never point elsewhere."""
    from hashbench.store.paths import UnsafeNameError

    registry = Registry()
    registry._discovered = True

    class Escaping(Method):
        pass

    with pytest.raises(UnsafeNameError, match="method name .* is not allowed"):
        registry.register(name, Escaping)
    assert name not in registry.entries
