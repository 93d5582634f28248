"""Every private API the package uses (compat.PRIVATE_APIS) is still there in the pinned versions."""

import dataclasses
import importlib
import inspect

import pytest

from sasa_lightning.compat import PRIVATE_APIS


def resolve(api):
    target = importlib.import_module(api.module)
    *owners, name = api.name.split(".")
    for owner in owners:
        target = getattr(target, owner)
    if api.instance and dataclasses.is_dataclass(target):
        assert name in {field.name for field in dataclasses.fields(target)}, f"no field {name} in {target.__qualname__}"
        return
    if api.instance:
        # Set on instances, by the class or a base class: the assignment is in their source.
        sources = "".join(inspect.getsource(cls) for cls in target.__mro__ if cls.__module__.split(".")[0] != "builtins")
        assert f"self.{name} =" in sources or f"self.{name}:" in sources, f"no self.{name} in {target.__qualname__}"
        return
    getattr(target, name)


@pytest.mark.parametrize("api", PRIVATE_APIS, ids=str)
def test_the_private_api_is_still_there(api):
    try:
        resolve(api)
    except (ImportError, AttributeError, AssertionError) as error:
        pytest.fail(f"{api} changed in the installed version ({error}); sasa_lightning/compat.py says where it is "
                    f"used: adapt that code, then the entry")


def test_the_package_reaches_private_apis_only_through_compat():
    """No module but compat.py imports from a private module or names a listed private class."""
    from pathlib import Path

    import sasa_lightning

    root = Path(sasa_lightning.__file__).parent
    private_names = ("._utils", "_BatchNorm", "_accelerator_connector", "batch_progress", "torch._dynamo.config",
                     "experimental import _config", "next_traversal_order")
    offenders = [f"{path.relative_to(root)}: {name}" for path in root.rglob("*.py") if path.name != "compat.py"
                 for name in private_names if name in path.read_text()]
    assert offenders == []


# Private-looking names of the standard library that its documentation makes public.
DOCUMENTED = {"_exit"}  # os._exit


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.endswith("__")


def _foreign_bases_have(cls: type, name: str) -> bool:
    return any(hasattr(base, name) for base in cls.__mro__[1:] if not base.__module__.startswith("sasa_lightning"))


def private_names_reached():
    """{name: [where]} of the private names the package's code reaches that are not its own: an
    attribute it reads (or getattr's) that the package defines nowhere, a private module it
    imports, and a method or `self.` attribute of one of its classes that a base class of another
    library has (an override, a call, or an assignment over it)."""
    import ast
    from collections import defaultdict
    from pathlib import Path

    import sasa_lightning

    root = Path(sasa_lightning.__file__).parent
    trees = {path: ast.parse(path.read_text()) for path in sorted(root.rglob("*.py"))}
    own = set()
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                own.add(node.name)
            elif isinstance(node, ast.arg):
                own.add(node.arg)
            elif isinstance(node, (ast.Name, ast.Attribute)) and isinstance(node.ctx, ast.Store):
                own.add(node.id if isinstance(node, ast.Name) else node.attr)
    reached = defaultdict(list)
    for path, tree in trees.items():
        where = str(path.relative_to(root.parent))
        name = ".".join(path.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__")
        module = importlib.import_module(name) if path.name != "__main__.py" else None  # which runs the command
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Attribute) and node.attr not in own:
                names = [node.attr]
            elif isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("getattr", "hasattr", "setattr") \
                    and len(node.args) > 1 and isinstance(node.args[1], ast.Constant) and node.args[1].value not in own:
                names = [node.args[1].value]
            elif isinstance(node, ast.ImportFrom) and node.module and node.module != "__future__":
                names = [*node.module.split("."), *(alias.name for alias in node.names)]
            elif isinstance(node, ast.Import):
                names = [part for alias in node.names for part in alias.name.split(".")]
            elif isinstance(node, ast.ClassDef) and isinstance(getattr(module, node.name, None), type):
                cls = getattr(module, node.name)
                members = [n.name for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
                members += [n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)
                            and isinstance(n.value, ast.Name) and n.value.id == "self"]
                names = [name for name in members if _is_private(name) and _foreign_bases_have(cls, name)]
            for name in names:
                if isinstance(name, str) and _is_private(name):
                    reached[name].append(f"{where}:{node.lineno}")
    return reached


def test_the_code_reaches_no_private_name_compat_does_not_list():
    listed = {part for api in PRIVATE_APIS for part in (*api.module.split("."), *api.name.split(".")) if _is_private(part)}
    unlisted = {name: where for name, where in private_names_reached().items() if name not in listed | DOCUMENTED}
    assert unlisted == {}, "private names of other libraries used but not in compat.PRIVATE_APIS"


def test_the_reading_finds_what_it_looks_for():
    """The reading itself: names known to be reached are found, each kind of use at least once."""
    reached = private_names_reached()
    assert {"_get", "_option_string_actions", "_subcommands_action", "_dynamo", "_utils", "_config", "_BatchNorm",
            "_parse_ckpt_path", "_write_common", "_exit"} <= set(reached)
    assert "_positions" not in reached  # LocalSelfAttention2d's own
