"""Old path of :mod:`tango_dqm.quality.references` (kept so existing imports work).

An alias of the moved module, not a copy, so patching ``tango_dqm.references.x`` patches the real one.
"""

import sys

from .quality import references as _moved

sys.modules[__name__] = _moved
