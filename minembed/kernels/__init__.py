"""CUDA sources of minembed's GPU kernels (kernels.cu), loaded by minembed.cuda."""
