"""ivx: causal interventions on Hugging Face causal language models, from one YAML file."""

__version__ = "0.1.0"
