"""`data.augment_on=device`: the workers read, decode (or ship JPEG bytes) and draw each view's crop and
RandAugment/erasing parameters; the device resizes, augments, normalises and erases batch-wise
(`views`: the batch; `randaugment`: timm's RandAugment draws and erasing, applied per batch; `ops`:
Pillow's pixel arithmetic and affine sampling on uint8 tensors)."""
