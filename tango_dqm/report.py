"""Old path of :mod:`tango_dqm.products.report` (kept so existing imports and ``python -m`` work).

An alias of the moved module, not a copy, so patching ``tango_dqm.report.x`` patches the real one.
"""

import sys

from .products import report as _moved

if __name__ == "__main__":
    sys.exit(_moved.main())
sys.modules[__name__] = _moved
