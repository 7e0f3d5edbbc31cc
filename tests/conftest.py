"""Test-wide settings: TF32 off on CUDA so float32 results are float32-exact."""

import torch

if torch.cuda.is_available():
    # The oracle gate is float32-exact; TF32 would need a looser tolerance.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
