"""inference.py's building blocks: config schema, resumable generated-file I/O, the run loop."""
