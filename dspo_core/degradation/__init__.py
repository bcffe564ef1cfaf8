"""Real-ESRGAN second-order degradation with a replayable record of every random draw.

Typical use::

    config = DegradationConfig()                    # Real-ESRGAN x4plus defaults, gt_size 512
    hr_crop, lq, params = degrade(hr, config, seed)  # hr: (H, W, 3) uint8 RGB
    row = {"degradation_params": params.to_json()}
    _, lq_again = replay(row, hr)                    # bit-identical to lq

``sample_params`` and ``apply`` are the two halves of ``degrade``.
"""

from .config import KERNEL_TYPES, DegradationConfig
from .kernels import (
    build_kernel,
    circular_lowpass_kernel,
    gaussian_kernel,
    generalized_gaussian_kernel,
    mesh_grid,
    plateau_kernel,
    sigma_matrix,
)
from .params import (
    RECORD_VERSION,
    CropParams,
    DegradationParams,
    FinalParams,
    KernelParams,
    NoiseParams,
    ResizeParams,
    StageParams,
)
from .pipeline import PARAMS_KEY, apply, degrade, replay
from .sampling import crop_size, sample_params

__all__ = [
    "KERNEL_TYPES",
    "PARAMS_KEY",
    "RECORD_VERSION",
    "CropParams",
    "DegradationConfig",
    "DegradationParams",
    "FinalParams",
    "KernelParams",
    "NoiseParams",
    "ResizeParams",
    "StageParams",
    "apply",
    "build_kernel",
    "circular_lowpass_kernel",
    "crop_size",
    "degrade",
    "gaussian_kernel",
    "generalized_gaussian_kernel",
    "mesh_grid",
    "plateau_kernel",
    "replay",
    "sample_params",
    "sigma_matrix",
]
