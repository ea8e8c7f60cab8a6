"""The token-weighting schemes, one module each, and their registry (:mod:`.base`).

Importing this package registers the built-ins, in the order every list shows them.
A new built-in is a module here that calls :func:`register`, named in ``_BUILTIN``.
"""

import importlib

from infosft.schemes.base import (ALWAYS, FIELDS, Knob, Scheme, all_knob_names, get,  # noqa: F401
                                  load_custom, names, probe_fields, register)

_BUILTIN = ("sft", "dft", "infosft_scheme", "profit", "eaft", "excess")
for _module in _BUILTIN:
    importlib.import_module(f"{__name__}.{_module}")

#: The built-in schemes' names, in display order.
BUILTIN = names()
