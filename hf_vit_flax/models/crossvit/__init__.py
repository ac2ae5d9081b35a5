"""CrossViT (Chen et al., arXiv 2103.14899): vit-pytorch's and timm's, as one Flax module."""
