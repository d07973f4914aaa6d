"""Methods from outside the package: the recipe's `plugins:` list and the `distill.methods` entry points.

A plugin is a module that registers one or more methods with `@register_method` when imported, as a
file here does. It is named in a recipe (`plugins: [my_pkg.my_method, path/to/my_method.py]`; a path
in a recipe is relative to the recipe, on the command line to the working directory) or installed
with an entry point in the group `distill.methods` (`[project.entry-points."distill.methods"]
my_method = "my_pkg.my_method"`), which every command loads. `SOURCES` says where each method came
from; a run records each plugin's module, file and sha256 (`plugins.json` in its folder), and a resume
whose plugin file changed is refused in one line (`check_unchanged`).
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from distill.config import is_plugin_path
from distill.errors import ConfigError, first_line
from distill.methods.base import METHODS

GROUP = "distill.methods"
RECORD = "plugins.json"
SOURCES: Dict[str, dict] = {}  # method name -> {"plugin", "module", "file", "sha256"} of methods from plugins
_LOADED: Dict[str, List[str]] = {}  # plugin (module name or resolved file) -> the methods it registered


def sha256(path: Optional[str]) -> Optional[str]:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest() if path and Path(path).is_file() else None


def _import(spec: str):
    """The module `spec` names: a dotted module path, or a .py file imported under its own name."""
    if not is_plugin_path(spec):
        return importlib.import_module(spec)
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"plugins: {spec} is not a file; give a .py file or an importable module (my_pkg.my_method)")
    name = f"distill_plugin_{path.stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # dataclasses and pickling look a module up by name
    module_spec.loader.exec_module(module)
    return module


def load_plugin(spec: str, origin: str = "plugins") -> List[str]:
    """Import the plugin `spec` once; returns the methods it registered. A plugin that cannot be
    imported, or registers nothing, is one line naming it."""
    key = str(Path(spec).resolve()) if is_plugin_path(spec) else spec
    if key in _LOADED:
        return _LOADED[key]
    before = set(METHODS)
    try:
        module = _import(key)
    except ConfigError:
        raise
    except ModuleNotFoundError as e:
        raise ConfigError(f"{origin}: {spec} cannot be imported ({first_line(e)}); install it, or give the "
                          ".py file's path") from None
    except (AssertionError, Exception) as e:  # noqa: BLE001  (any failure in a user's module is one line)
        raise ConfigError(f"{origin}: {spec} failed on import ({type(e).__name__}: {first_line(e)})") from None
    added = [name for name in METHODS if name not in before]
    if not added:
        raise ConfigError(f"{origin}: {spec} registered no method; decorate its Method subclass with "
                          "@register_method (from distill.methods import register_method)")
    file = getattr(module, "__file__", None)
    for name in added:
        SOURCES[name] = {"plugin": spec, "module": module.__name__, "file": file, "sha256": sha256(file)}
    _LOADED[key] = added
    return added


def load_entry_points() -> None:
    """Every installed plugin of the group `distill.methods` (the entry point's value: its module)."""
    for ep in importlib.metadata.entry_points(group=GROUP):
        load_plugin(ep.value.split(":")[0], origin=f"entry point {ep.name} ({ep.dist.name if ep.dist else '?'})")


def load_plugins(specs: Sequence[str]) -> None:
    """The entry points, then the recipe's plugins, in order."""
    load_entry_points()
    for spec in specs:
        load_plugin(spec)


def records(method: str, specs: Sequence[str]) -> List[dict]:
    """What a run records of its plugins: the one its method came from and those its recipe names, each
    with module, file and sha256; [] for a run of built-in methods alone."""
    names = [method] + [name for spec in specs for name in _LOADED.get(_key(spec), [])]
    found = {}
    for name in names:
        if name in SOURCES:
            found.setdefault(SOURCES[name]["module"], dict(SOURCES[name]))
    return list(found.values())


def write_record(run_dir: Path, method: str, specs: Sequence[str], write_text) -> None:
    """`plugins.json` in a new run folder, if the run has plugins (`write_text(path, text)`: a durable write)."""
    found = records(method, specs)
    if found:
        write_text(run_dir / RECORD, json.dumps(found, indent=2) + "\n")


def check_unchanged(run_dir: Path) -> None:
    """A resume with the plugin that started the run: its file's sha256 must be the one recorded."""
    path = run_dir / RECORD
    if not path.exists():
        return
    for rec in json.loads(path.read_text()):
        now = next((s for s in SOURCES.values() if s["module"] == rec["module"]), None)
        if now is None:
            raise ConfigError(f"the run was made with plugin {rec['plugin']} ({rec['module']}), which is not loaded "
                              f"now; add it to plugins (see {path})")
        digest = sha256(now["file"])  # the file as it is now
        if digest != rec["sha256"]:
            raise ConfigError(f"plugin {rec['plugin']} changed since the run began (sha256 {str(rec['sha256'])[:12]} "
                              f"in {path}, {str(digest)[:12]} now in {now['file']}); resume with the file "
                              "the run used, or start a new run with name=...")


def _key(spec: str) -> str:
    return str(Path(spec).resolve()) if is_plugin_path(spec) else spec
