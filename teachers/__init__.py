"""Teachers: any timm model, frozen, taking the student's batch and returning logits."""
from teachers.teacher import Teacher, TeacherError, load_teacher

__all__ = ["Teacher", "TeacherError", "load_teacher"]
