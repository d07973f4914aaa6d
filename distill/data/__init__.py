"""Data: sources (`sources/`, one file per `data.name`), splits, view randomness (`views`), batches
(`loader`), per-sample transforms (`transforms`) and batch augmentation on the device (`augment`)."""
