"""An app module that fails while it is imported."""

raise RuntimeError("configuration missing at import time")
