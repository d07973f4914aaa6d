"""Training: one place that builds a run (`build`), one step (`step`, captured by `graphed`), one
source of the teacher's logits (`teacher_logits`, over the logit `cache`), the loop (`trainer`),
evaluation (`evaluate`), and what runs cost (`cost`, `timing`)."""
