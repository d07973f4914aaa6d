"""Distillation methods, one file each, registered by name (`distill.type`).

To add one: a file here with a `Method` subclass under `@register_method` (its loss terms as pure
functions, its `keys`, what it supports), its import below, and a test that checks its terms
against the paper's formula computed by hand. `distill methods` lists what is registered.
"""
from distill.methods.base import METHODS, Key, Method, build_criterion, build_method, class_ids, register_method
from distill.methods import plain, soft, hard, kd, dkd, dist, feature, crd, vitkd  # noqa: F401,E402  (each registers itself)

__all__ = ["METHODS", "Key", "Method", "build_criterion", "build_method", "class_ids", "register_method"]
