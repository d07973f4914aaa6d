"""Student ViTs, registered in timm as `distill_vit_{tiny,small,medium,base}` on import."""
from students.vit import DistillViT

__all__ = ["DistillViT"]
