"""Old path of :mod:`tango_dqm.products.output_stream` (kept so existing imports work).

An alias of the moved module, not a copy, so patching ``tango_dqm.output_stream.x`` patches the real one.
"""

import sys

from .products import output_stream as _moved

sys.modules[__name__] = _moved
