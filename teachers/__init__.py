"""Teachers: any timm model, frozen, taking the student's batch and returning logits."""
from teachers.teacher import (RUN_WEIGHTS, Teacher, TeacherError, adapt_small_input_stem, create_model,
                              create_model_at, load_teacher, load_weights, read_state_dict, strip_prefixes)

__all__ = ["RUN_WEIGHTS", "Teacher", "TeacherError", "adapt_small_input_stem", "create_model", "create_model_at",
           "load_teacher", "load_weights", "read_state_dict", "strip_prefixes"]
