"""kdist: one kdist.yaml -> elastic torchrun jobs, simulated locally or on Compose and Kubernetes."""

__version__ = "0.1.0"
