"""Moved to chainlens_ops.repository.walcodec (the repository package owns every codec).
Kept as an alias for code merged alongside that move; import the new module."""

from chainlens_ops.repository.walcodec import CorruptObject as CorruptObject
from chainlens_ops.repository.walcodec import decode as decode
