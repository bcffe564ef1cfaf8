"""Real-ESRGAN second-order degradation with a replayable record of every random draw.

Typical use::

    config = DegradationConfig()                    # Real-ESRGAN x4plus defaults, gt_size 512
    hr_crop, lq, params = degrade(hr, config, seed)  # hr: (H, W, 3) uint8 RGB, any size
    params.crop.padded                               # True where hr was below gt_size on a side
    hr_usm = usm_sharp(hr_crop)                      # the sharpened GT that was degraded (gt_usm on)
    row = {"degradation_params": params.to_json()}
    _, lq_again = replay(row, hr)                    # bit-identical to lq

``sample_params`` and ``apply`` are the two halves of ``degrade``.
"""

from dspo_core.lazy import lazy_exports

# Public name -> submodule, imported on first use (dspo_core.lazy).
_EXPORTS = {
    "KERNEL_TYPES": ".config",
    "DegradationConfig": ".config",
    "build_kernel": ".kernels",
    "circular_lowpass_kernel": ".kernels",
    "gaussian_kernel": ".kernels",
    "generalized_gaussian_kernel": ".kernels",
    "mesh_grid": ".kernels",
    "plateau_kernel": ".kernels",
    "sigma_matrix": ".kernels",
    "RECORD_VERSION": ".params",
    "CropParams": ".params",
    "DegradationParams": ".params",
    "FinalParams": ".params",
    "KernelParams": ".params",
    "NoiseParams": ".params",
    "ResizeParams": ".params",
    "StageParams": ".params",
    "usm_sharp": ".ops",
    "PARAMS_KEY": ".pipeline",
    "apply": ".pipeline",
    "degrade": ".pipeline",
    "replay": ".pipeline",
    "crop_padding": ".sampling",
    "sample_params": ".sampling",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
