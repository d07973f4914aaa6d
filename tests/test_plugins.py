"""Methods from outside the package: a recipe's `plugins:` (module or file), the `distill.methods` entry
points, `distill methods` saying where each came from, and a run's record of its plugin's sha256."""
import json
import textwrap

import pytest

from conftest import ROOT, run_cli, run_main
from distill.config import ConfigError
from distill.recipe import load_config
from distill.methods import METHODS, plugins

PLUGIN = textwrap.dedent('''
    from distill.methods import Key, Method, register_method

    @register_method
    class Halves(Method):
        name = "{name}"
        summary = "half the teacher's logits matched by MSE (a test plugin)"
        keys = {{"{name}_scale": Key(float, 0.5, "the factor", min=0.0)}}
        token = False

        def term(self, logits, teacher_logits, targets):
            d = ((logits - self.scale * teacher_logits) ** 2).mean()
            return d, {{}}

        def __init__(self, cfg, base):
            super().__init__(cfg, base)
            self.scale = cfg.{name}_scale
''')


@pytest.fixture
def registry():
    """Put the registry back afterwards: a plugin a test loads stays out of the other tests."""
    saved = dict(METHODS), dict(plugins.SOURCES), dict(plugins._LOADED)
    yield
    for live, before in zip((METHODS, plugins.SOURCES, plugins._LOADED), saved):
        live.clear()
        live.update(before)


def write_plugin(folder, name):
    path = folder / f"{name}.py"
    path.write_text(PLUGIN.format(name=name))
    return path


def recipe(folder, name, plugin_entry):
    path = folder / "recipe.yaml"
    path.write_text(f"base: {ROOT / 'recipes/fashion_mnist/kd_tiny.yaml'}\nplugins: [{plugin_entry}]\n"
                    f"distill:\n  type: {name}\n  tau: 1.0\n  {name}_scale: 0.25\n")  # kd_tiny's tau: not read here
    return path


def test_a_recipe_loads_a_plugin_file_relative_to_itself_with_its_keys(tmp_path, registry):
    write_plugin(tmp_path, "halves_a")
    cfg = load_config(str(recipe(tmp_path, "halves_a", "halves_a.py")))
    assert cfg.distill.type == "halves_a" and cfg.distill.halves_a_scale == 0.25
    assert cfg.plugins == [str(tmp_path / "halves_a.py")]
    source = plugins.SOURCES["halves_a"]
    assert source["file"] == str(tmp_path / "halves_a.py") and len(source["sha256"]) == 64
    with pytest.raises(ConfigError, match=r"distill.halves_a_scale"):
        load_config(str(recipe(tmp_path, "halves_a", "halves_a.py")), ["distill.halves_a_scale=many"])


@pytest.mark.parametrize("entry, message", [
    ("missing.py", "plugins: .*missing.py is not a file"),
    ("no_such_pkg.no_module", "plugins: no_such_pkg.no_module cannot be imported"),
    ("empty.py", "registered no method; decorate"),
    ("broken.py", r"failed on import \(ZeroDivisionError"),
])
def test_a_bad_plugin_is_one_line(tmp_path, registry, entry, message):
    (tmp_path / "empty.py").write_text("x = 1\n")
    (tmp_path / "broken.py").write_text("x = 1 / 0\n")
    with pytest.raises(ConfigError, match=message):
        load_config(str(recipe(tmp_path, "kd", entry)))


def test_a_run_records_its_plugin_and_a_changed_plugin_refuses_the_resume(tmp_path, registry):
    path = write_plugin(tmp_path, "halves_b")
    cfg = load_config(str(recipe(tmp_path, "halves_b", "halves_b.py")))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    plugins.write_record(run_dir, cfg.distill.type, cfg.plugins, lambda p, t: p.write_text(t))
    (record,) = json.loads((run_dir / plugins.RECORD).read_text())
    assert record["file"] == str(path) and record["sha256"] == plugins.sha256(str(path))
    plugins.check_unchanged(run_dir)  # the same file: resumes
    path.write_text(path.read_text() + "\n# edited\n")
    with pytest.raises(ConfigError, match=r"plugin .*halves_b.py changed since the run began \(sha256 [0-9a-f]{12}"):
        plugins.check_unchanged(run_dir)


@pytest.mark.slow  # a fresh interpreter, so the installed entry point is found as a user's would be
def test_distill_methods_lists_an_entry_point_and_a_file_plugin_with_their_origin(tmp_path):
    site = tmp_path / "site"
    (site / "halves_ep-0.1.dist-info").mkdir(parents=True)
    (site / "halves_ep-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: halves-ep\nVersion: 0.1\n")
    (site / "halves_ep-0.1.dist-info" / "entry_points.txt").write_text("[distill.methods]\nhalves_ep = halves_ep\n")
    write_plugin(site, "halves_ep")
    file_plugin = write_plugin(tmp_path, "halves_f")
    res = run_cli("methods", file_plugin, env={"PYTHONPATH": f"{ROOT}:{site}"})
    assert res.returncode == 0, res.stderr[-2000:]
    assert "from: plugin halves_ep (module halves_ep" in res.stdout
    assert f"from: plugin {file_plugin} (module distill_plugin_halves_f_" in res.stdout
    assert "distill.halves_ep_scale (default 0.5" in res.stdout


def test_distill_methods_names_a_bad_plugin_in_one_line(tmp_path):
    res = run_main("methods", tmp_path / "nothing.py")
    assert res.returncode == 2 and res.stderr.strip().count("\n") == 0 and "is not a file" in res.stderr


def test_resume_with_a_changed_plugin_is_one_line_before_anything_runs(tmp_path, registry):
    """The run folder as a run made with the plugin leaves it (config.yaml, plugins.json); the plugin file
    then changes, and `train.resume=auto` stops in one line naming it."""
    from distill.config import to_yaml

    path = write_plugin(tmp_path, "halves_c")
    rec = recipe(tmp_path, "halves_c", "halves_c.py")
    cfg = load_config(str(rec), [f"output_dir={tmp_path / 'runs'}", "train.mixed_precision=no"])  # as run_main runs
    run_dir = tmp_path / "runs" / cfg.name
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    plugins.write_record(run_dir, cfg.distill.type, cfg.plugins, lambda p, t: p.write_text(t))
    path.write_text(path.read_text().replace("0.5", "0.75"))
    res = run_main("train", rec, f"output_dir={tmp_path / 'runs'}", "train.resume=auto")
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr[-2000:]
    assert res.stderr.startswith("error: plugin ") and "changed since the run began" in res.stderr


def test_a_plugin_key_out_of_range_is_one_line(tmp_path, registry):
    write_plugin(tmp_path, "halves_d")
    with pytest.raises(ConfigError, match=r"distill.halves_d_scale=-1.0 must be >= 0$"):
        load_config(str(recipe(tmp_path, "halves_d", "halves_d.py")), ["distill.halves_d_scale=-1"])
