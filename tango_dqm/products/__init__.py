"""What a scan leaves behind, and who makes it.

scanfile (the HDF5 layout, paths, reading) <- writer (ScanWriter) and marks (Flag/Archive) <- runlog (run list)
<- report (reading, plots, page) <- scan (ScanProducts: one scan's file, report and marks for the engine);
output_stream (results over ZeroMQ) stands apart.
"""

from .scan import AUTO_ARCHIVE_REASON, ScanProducts

__all__ = ["AUTO_ARCHIVE_REASON", "ScanProducts"]
