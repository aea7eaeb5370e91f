"""Backends: the only modules with side effects (processes, Docker, the Kubernetes API)."""
