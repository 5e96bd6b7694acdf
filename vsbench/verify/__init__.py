"""Verification: the built-in verifier, external tools, the Ray runner and the audit.

``vsbench.verify`` is also the API function ``vsbench.api.verify``: this package's module object is
callable, so ``vsbench.verify(model, spec)`` works whether or not a submodule such as
``vsbench.verify.runner`` has been imported (importing one binds ``vsbench.verify`` to this package,
which would shadow a plain function of the same name).
"""

import sys
import types


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from vsbench.api import verify

        return verify(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
