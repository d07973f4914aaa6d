"""Data: sources (`sources/`, one registered file per `data.name`, with its facts), splits, view seeds
(`views`), batches (`loader`), per-sample transforms (`transforms`), batch augmentation on the device
(`augment`), the device path (`device_views`, `device_augment`, `device_ops`, `decode`) and the
`data.*` checks (`checks`)."""
