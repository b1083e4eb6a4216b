"""``python -m tango_dqm.products.report``."""

import sys

from . import main

sys.exit(main())
