"""Run folders: creation and resume (`folder`), records (`records`), checkpoints (`checkpoint`),
durable writes (`durable`), stop requests (`signals`), lost processes (`peers`) and the job
as its launcher started it (`launcher`)."""
