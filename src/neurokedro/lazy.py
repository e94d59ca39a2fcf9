"""Stand-ins for heavy imports (torch, Lightning, MONAI) that import them on first use.

``kedro run`` imports every pipeline's node modules at start-up (the pipeline registry), so a
node module that imported torch at its top would make every run pay for it, even a run of
``data_engineering`` that never touches a network. Node modules therefore import heavy code
inside the functions that use it. Their annotations still name those types (``nn.Module``), and
Kedro evaluates the annotations of the nodes it validates parameters for
(``typing.get_type_hints``), so the names must exist in the module. The pattern::

    from typing import TYPE_CHECKING

    if TYPE_CHECKING:
        from torch import nn
    else:
        nn = LazyImport("torch.nn")   # imported when nn.Module is first resolved

A :class:`LazyImport` of a module resolves attributes on it; one of a module's attribute
(``LazyImport("neurokedro.training.module", "FoldEnsemble")``) also calls through and answers
``isinstance`` as the real object would.
"""

from __future__ import annotations

import importlib
from typing import Any


class LazyImport:
    """The module ``module`` (or its attribute ``attribute``), imported when first used.

    Args:
        module: a dotted module name (``"torch.nn"``).
        attribute: a name in that module, or None for the module itself.

    Raises:
        ImportError: (on first use, not on creation) when the module cannot be imported.
        AttributeError: (on first use) when it has no such attribute.
    """

    __slots__ = ("_module", "_attribute")

    def __init__(self, module: str, attribute: str | None = None) -> None:
        self._module = module
        self._attribute = attribute

    def resolve(self) -> Any:
        """The real module or object (imported now if it was not yet)."""
        target = importlib.import_module(self._module)
        return target if self._attribute is None else getattr(target, self._attribute)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):  # protocols probed by copy, pickle, inspect
            raise AttributeError(name)
        return getattr(self.resolve(), name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)

    def __instancecheck__(self, instance: Any) -> bool:
        return isinstance(instance, self.resolve())

    def __subclasscheck__(self, subclass: type) -> bool:
        return issubclass(subclass, self.resolve())

    def __repr__(self) -> str:
        name = self._module if self._attribute is None else f"{self._module}.{self._attribute}"
        return f"<lazy import of {name}>"
