"""One lock for the netCDF/HDF5 C libraries of the process.

The netCDF4 wheels' HDF5 is not built thread-safe: two threads inside it at once (the
service decoding two request bodies, a product read while another is written) crash the
whole process. Every call into netCDF4 here, and every radar importer that may use it,
holds this lock; h5py serialises its own calls already.
"""

from __future__ import annotations

import threading

#: re-entrant, so a reader that calls another reader under it does not deadlock
NETCDF_LOCK = threading.RLock()
