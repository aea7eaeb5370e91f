"""Programs that run inside a job's pods, shipped as files (read with importlib.resources)."""
