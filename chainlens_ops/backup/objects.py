"""Moved to chainlens_ops.repository.datacodec (the repository package owns every codec).
Kept as an alias for code merged alongside that move; import the new module."""

from chainlens_ops.repository.datacodec import LOGICAL_WINDOW_LOG as LOGICAL_WINDOW_LOG
from chainlens_ops.repository.datacodec import READ_SIZE as READ_SIZE
from chainlens_ops.repository.datacodec import CheckedReader as CheckedReader
from chainlens_ops.repository.datacodec import Progress as Progress
from chainlens_ops.repository.datacodec import store_compressed as store_compressed
