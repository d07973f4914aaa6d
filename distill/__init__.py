"""distill: DeiT-style knowledge distillation of small Vision Transformers."""
__version__ = "0.1.0"
