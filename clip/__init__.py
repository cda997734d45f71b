"""rwkv_clip: RWKV-CLIP (RWKV-6 image and text towers) with the open_clip interface."""
