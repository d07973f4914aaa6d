"""Models for any role: building by name (`create`), reading weights (`weights`), the run's student
(`student`), and what a model costs (`cost`: parameters and FLOPs)."""
from distill.models.create import adapt_small_input_stem, create_model, create_model_at
from distill.models.student import build_student
from distill.models.weights import RUN_WEIGHTS, load_weights, read_state_dict, strip_prefixes

__all__ = ["RUN_WEIGHTS", "adapt_small_input_stem", "build_student", "create_model", "create_model_at", "load_weights",
           "read_state_dict", "strip_prefixes"]
