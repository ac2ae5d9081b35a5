"""CrossFormer (Wang et al., arXiv 2108.00154): vit-pytorch's and the original release's, one family."""
