"""Network Dissection (Bau et al. 2017) and textual explanations (Selvaraju et al. Sec. 7).

``mx.dissect`` is this package and also its main function: ``mx.dissect(model, layer, data)``
calls :func:`dissect`, and ``mx.dissect.NeuronLabels`` reaches the rest.
"""

import sys
import types

from .core import *  # noqa: F401,F403
from .core import __all__, dissect  # noqa: F401


class _CallablePackage(types.ModuleType):
    """The package, callable as :func:`dissect` (a package and a function share one name)."""

    def __call__(self, *args, **kwargs):
        return dissect(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
