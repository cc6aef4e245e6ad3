"""World plug-ins and provided worlds come from installed entry points, never from a module a world.json names."""

import json
import shutil
import sys
import warnings

import pytest

from core.errors import InputError
from core.workspace import plugins
from core.workspace import world as world_mod
from workbench.demo import SAMPLE_WORLDS


def _world_naming(tmp_path, plugin) -> world_mod.World:
    """A copy of the sample world's manifest (its files stay where they are) whose ``plugin`` field is ``plugin``."""
    src = SAMPLE_WORLDS["text"]
    manifest = json.loads((src / "world.json").read_text())
    manifest["plugin"] = plugin
    return world_mod.World(tmp_path, manifest, [])


def _install(tmp_path, monkeypatch, name: str, entry_points: str, modules: dict[str, str]) -> None:
    """A package installed the way pip leaves one (modules and a ``.dist-info`` with entry_points.txt) on sys.path."""
    site = tmp_path / "site"
    dist = site / f"{name}-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(entry_points)
    for module, text in modules.items():
        (site / f"{module}.py").write_text(text)
    monkeypatch.syspath_prepend(str(site))
    plugins.installed.cache_clear()  # read again with the new package (the fixture clears it after the test)


@pytest.fixture(autouse=True)
def fresh_entry_points():
    plugins.installed.cache_clear()
    yield
    plugins.installed.cache_clear()


def test_the_demo_registers_its_plug_ins_and_worlds():
    assert {"cxr-demo", "cxr-demo-multimodal"} <= set(plugins.installed(plugins.PLUGIN_GROUP))
    provided = plugins.provided_worlds()
    assert provided == {"text": SAMPLE_WORLDS["text"].resolve(), "multimodal": SAMPLE_WORLDS["multimodal"].resolve()}
    assert list(provided) == ["text", "multimodal"]  # by folder: what a page on its own opens first is the text one
    for path in SAMPLE_WORLDS.values():  # the committed worlds name their plug-in by its entry point
        w = world_mod.load_world(path)
        assert w.manifest["plugin"] in plugins.installed(plugins.PLUGIN_GROUP) and w.chart_metrics()


@pytest.mark.parametrize("name", ["cxr-demo", "workbench.demo.plugin", "core.sample.plugin"])
def test_an_entry_point_name_or_a_former_module_path_loads_the_plug_in(tmp_path, name):
    import workbench.demo.plugin as demo

    assert _world_naming(tmp_path, name).plugin is demo


def test_former_module_paths_of_the_multimodal_plug_in_load_it_too(tmp_path):
    import workbench.demo.vlplugin as vl

    assert _world_naming(tmp_path, "core.sample.vlplugin").plugin is vl
    assert _world_naming(tmp_path, "workbench.demo.vlplugin").plugin is vl
    assert _world_naming(tmp_path, None).plugin is None and _world_naming(tmp_path, "").plugin is None


@pytest.mark.parametrize("value", ["antigravity", ".relative", "os", 5, ["cxr-demo"], {"x": 1}, True])
def test_anything_but_an_installed_plug_in_is_refused_and_never_imported(tmp_path, value):
    sys.modules.pop("antigravity", None)
    with pytest.raises(InputError) as e:
        _ = _world_naming(tmp_path, value).plugin
    msg = str(e.value)
    assert str(tmp_path / "world.json") in msg and "'plugin'" in msg and repr(value) in msg
    assert "installed: cxr-demo, cxr-demo-multimodal" in msg and plugins.PLUGIN_GROUP in msg
    assert "antigravity" not in sys.modules  # it opens a web browser when imported


def test_a_world_from_another_package_works_the_same_way(tmp_path, monkeypatch):
    """A package of someone else's registers a plug-in and a world; both are found, the world opens with it."""
    world = tmp_path / "acme-world"
    shutil.copytree(SAMPLE_WORLDS["text"], world, ignore=shutil.ignore_patterns("analysis", "rft", "examples"))
    manifest = json.loads((world / "world.json").read_text())
    (world / "world.json").write_text(json.dumps({**manifest, "checkpoints": [], "name": "ACME", "plugin": "acme"}))
    _install(tmp_path, monkeypatch, "acme_worlds",
             "[cot_drift_workbench.plugins]\nacme = acme_plugin\n\n"
             "[cot_drift_workbench.worlds]\nacme-world = acme_plugin:WORLD\nacme-broken = acme_broken:world\n",
             {"acme_plugin": f"learning_rate = 0.5\nWORLD = {str(world)!r}\n"
                             "chart_metrics = {'acme': ('ACME score', '#000000', 'dot')}\n",
              "acme_broken": "raise RuntimeError('no data here')\n"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        provided = plugins.provided_worlds()
    assert provided["acme-world"] == world.resolve() and "acme-broken" not in provided
    assert any("acme-broken" in str(w.message) and "no data here" in str(w.message) for w in caught)
    with pytest.raises(InputError, match="acme-broken.*acme_broken:world.*RuntimeError: no data here"):
        plugins.provided_world("acme-broken")
    w = world_mod.load_world(plugins.provided_world("acme-world"))
    assert w.plugin.learning_rate == 0.5 and w.chart_metrics() == {"acme": ("ACME score", "#000000", "dot")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the broken one, told above
        assert world.resolve() in world_mod.known_worlds()


def test_a_plug_in_that_fails_to_import_is_an_input_error_naming_it(tmp_path, monkeypatch):
    _install(tmp_path, monkeypatch, "bad_plugin", "[cot_drift_workbench.plugins]\nbad = bad_plugin_mod\n",
             {"bad_plugin_mod": "import no_such_module_here\n"})
    with pytest.raises(InputError, match=r"plugin 'bad' \(bad_plugin_mod\) failed to load: ModuleNotFoundError"):
        _ = _world_naming(tmp_path, "bad").plugin


def test_an_unknown_provided_world_names_the_installed_ones():
    with pytest.raises(InputError, match="world 'nope'.*installed: multimodal, text"):
        plugins.provided_world("nope")
