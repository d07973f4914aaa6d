"""Run folders: creation and resume (`folder`), records (`records`), checkpoints (`checkpoint`),
durable writes (`durable`), stop requests (`signals`) and lost processes (`peers`)."""
