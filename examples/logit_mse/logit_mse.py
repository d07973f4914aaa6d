"""`distill.type=logit_mse`, a method from outside the package: the student's logits regressed on the
teacher's by mean squared error (Ba & Caruana 2014, "Do deep nets really need to be deep?").

`logit_mse_center=true` subtracts each row's mean first: Hinton et al. 2015 show that KD at a high
temperature becomes this regression on zero-meaned logits. The term is the mean over batch and
classes; the loss is (1 - alpha) x label term + alpha x this term, as every built-in method's.

A plugin is a module that registers its method on import; name it in a recipe
(`plugins: [logit_mse.py]`) or install it with an entry point in the group `distill.methods`.
"""
import torch
import torch.nn.functional as F

from distill.methods import Key, Method, register_method


def logit_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor, center: bool) -> torch.Tensor:
    """Mean over (B, K) of (z_s - z_t)^2, each row's mean removed first when `center`."""
    if center:
        student_logits = student_logits - student_logits.mean(-1, keepdim=True)
        teacher_logits = teacher_logits - teacher_logits.mean(-1, keepdim=True)
    return F.mse_loss(student_logits, teacher_logits)


@register_method
class LogitMSE(Method):
    name = "logit_mse"
    summary = "the teacher's logits regressed by MSE (an example plugin, examples/logit_mse)"
    paper = "Ba & Caruana 2014, Do deep nets really need to be deep?, NeurIPS"
    keys = {"logit_mse_center": Key(bool, True, "subtract each row's mean from both logits first")}
    token = False

    def __init__(self, cfg, base_criterion):
        super().__init__(cfg, base_criterion)
        self.center = cfg.logit_mse_center

    def term(self, logits, teacher_logits, targets):
        mse = logit_mse(logits, teacher_logits, self.center)
        return mse, {"logit_mse": mse}
