"""Data: sources (`sources/`, one registered file per `data.name`, with its facts), splits, view seeds
(`seeds`), batches (`loader`), per-sample transforms (`transforms`), batch augmentation on the device
(`augment`), the device path (`device/`; `decode`) and the
`data.*` checks (`checks`)."""
