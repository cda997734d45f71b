"""vision-rwkv: Vision-RWKV backbones registered in timm, fast bidirectional WKV operators, RWKV-CLIP and
RWKV segmentation. Importing the package registers the models with timm."""
from . import ops
from . import models

__version__ = "0.1.0"
