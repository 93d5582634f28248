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
