"""Old path of :mod:`tango_dqm.sources.compression` (kept so existing imports work).

The name is an alias of the moved module, not a copy, so patching ``tango_dqm.compression.x``
still patches what the sources use.
"""

import sys

from .sources import compression as _moved

sys.modules[__name__] = _moved
