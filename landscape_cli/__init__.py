"""landscape: loss-landscape geometry of saved PyTorch checkpoints."""

import time

__version__ = "0.1.0"

#: When the package was first imported: ``cost.total_s`` counts from here.
STARTED = time.perf_counter()
