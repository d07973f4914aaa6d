"""The built-in methods' names and keys, read from their files without importing them.

A method's file imports torch and timm (about 4 s on a 2-core CPU), and a mistyped `distill.*` key or
`distill.type` should be refused at once, as every other key is. So the command line's first check
reads what each file in `distill/methods/` declares: every class under `@register_method` with a
literal `name = "..."` and `keys = {"...": Key(...)}`. The registry stays the truth and the loader
checks against it again; `tests/test_command_line.py` checks this reading against the registry, key
by key. (Why not import lazily: `Method` is an `nn.Module`, so a method's class cannot exist
without torch.) A recipe with `plugins:` skips this check: a plugin's keys are known only once the
loader imports it.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from distill import config as leaf

METHODS_DIR = Path(__file__).parent / "methods"


@functools.lru_cache(maxsize=None)
def declared_methods() -> Dict[str, Tuple[str, ...]]:
    """{`distill.type`: its own `distill.*` keys} of each built-in method, as its file declares them."""
    found = {}
    for path in sorted(METHODS_DIR.glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef) and any(
                    getattr(d, "id", None) == "register_method" for d in node.decorator_list):
                attrs = {t.id: s.value for s in node.body if isinstance(s, ast.Assign)
                         for t in s.targets if isinstance(t, ast.Name)}
                keys = attrs.get("keys")
                found[ast.literal_eval(attrs["name"])] = tuple(ast.literal_eval(k) for k in keys.keys) if keys else ()
    return found


def _schema() -> type:
    """The leaf's `Config` with every declared method key in its `distill` section, typed `Any`: the
    names are checked here; the types and bounds by the loader, from the methods' `Key`s."""
    own = [(key, Any, dataclasses.field(default=None)) for keys in declared_methods().values() for key in keys]
    section = dataclasses.make_dataclass("DistillConfig", own, bases=(leaf.DistillConfig,))
    return dataclasses.make_dataclass("Config", [("distill", section, dataclasses.field(default_factory=section))],
                                      bases=(leaf.Config,))


def precheck(recipe: Optional[str], overrides: List[str] = ()) -> None:
    """Every refusal that needs no model before anything heavy is imported: a missing or broken recipe,
    an unknown key (`distill.*` included, unless plugins add keys), a type, a bound, an unknown method."""
    if leaf.read_plugins(recipe, overrides):
        leaf.precheck(recipe, overrides)
        return
    leaf.precheck(recipe, overrides, _schema(), {"distill.type": tuple(declared_methods())})
