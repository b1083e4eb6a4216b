"""Old path of the scan file modules, now split in :mod:`tango_dqm.products` (kept so existing imports work).

The layout and reader are :mod:`.products.scanfile`, the writer :mod:`.products.writer`, operator marks
:mod:`.products.marks`.
"""

from .products.marks import *  # noqa: F403
from .products.marks import mark_scan, read_marks_log, scan_files  # noqa: F401
from .products.scanfile import *  # noqa: F403
from .products.scanfile import (CHUNK_CACHE_BYTES, CHUNK_CACHE_SLOTS, INT_MISSING, METADATA_CACHE_BYTES,  # noqa: F401
                                SCAN_SUFFIXES, _decode, confined_path, scan_file_name, write_lost_frames)
from .products.writer import ScanWriter  # noqa: F401
