"""Routes, one module per API dialect."""
