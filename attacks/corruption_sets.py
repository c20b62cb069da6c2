"""Which corruptions each data set gets, and their five severities: MedMNIST-C's published parameters.

The parameters are those of ``medmnistc`` 0.1.0's corruption registry (Di Salvo, Doerrich and Ledig, "MedMNIST-C:
Comprehensive benchmark and improved classifier robustness by simulating realistic image corruptions", 2024),
one tuple of five values per corruption, severity 1 first. Each data set keeps MedMNIST-C's own selection of
corruptions for its modality (PneumoniaMNIST: 13, BreastMNIST: 7). The grey radiology and histology sets whose
corruptions are all implemented here are listed; any other data set (and tensors given without a data set name)
gets the generic set, MedMNIST-C's ChestMNIST selection and parameters, and its rows say so.

MedMNIST-C sets its parameters on 224-pixel images. Noises, JPEG quality, pixelation factors, brightness,
contrast and gamma are per pixel or relative and apply unchanged at any size; blur radii, widths and kernel
sizes are in pixels of a 224-pixel image and are multiplied by side/224, so a blur covers the same share of
the image at 28 or 64 pixels as at 224 (a blur well below a pixel at 28 pixels is what downsampling a blurred
224-pixel scan would leave of it).
"""
from __future__ import annotations

REFERENCE_SIDE = 224  # the image side MedMNIST-C's parameters were set at
SOURCE = "MedMNIST-C (Di Salvo et al., 2024), medmnistc 0.1.0 corruption registry"
GENERIC = "generic"
GENERIC_PARAMETERS = "chestmnist"  # the set the generic one copies

# corruption name → the operation of robustmed.attacks.corruption_ops it applies
OPERATION = {
    "pixelate": "pixelate", "jpeg_compression": "jpeg_compression", "gaussian_noise": "gaussian_noise",
    "speckle_noise": "speckle_noise", "impulse_noise": "impulse_noise", "shot_noise": "shot_noise",
    "gaussian_blur": "gaussian_blur", "motion_blur": "motion_blur", "brightness_up": "brightness",
    "brightness_down": "brightness", "contrast_up": "contrast", "contrast_down": "contrast",
    "gamma_corr_up": "gamma_correction", "gamma_corr_down": "gamma_correction",
}

_RADIOLOGY_LIGHT = {
    "brightness_up": (1.1, 1.2, 1.3, 1.4, 1.5), "brightness_down": (0.9, 0.8, 0.7, 0.6, 0.5),
    "contrast_up": (1.1, 1.2, 1.3, 1.4, 1.6), "contrast_down": (0.9, 0.8, 0.7, 0.6, 0.4),
    "gamma_corr_up": (1.1, 1.2, 1.3, 1.4, 1.6), "gamma_corr_down": (0.9, 0.8, 0.7, 0.6, 0.4),
}
_ORGAN = {
    "pixelate": (0.7, 0.6, 0.5, 0.4, 0.35), "jpeg_compression": (50, 30, 15, 10, 7),
    "gaussian_noise": (0.04, 0.08, 0.12, 0.16, 0.20), "speckle_noise": (0.05, 0.10, 0.20, 0.30, 0.40),
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.08), "shot_noise": (200, 100, 50, 25, 15),
    "gaussian_blur": (11, 13, 15, 17, 21),
    "brightness_up": (1.2, 1.3, 1.4, 1.5, 1.6), "brightness_down": (0.8, 0.75, 0.7, 0.65, 0.6),
    "contrast_up": (1.3, 1.4, 1.6, 1.7, 1.8), "contrast_down": (0.8, 0.7, 0.6, 0.55, 0.5),
    "gamma_corr_up": (1.3, 1.4, 1.6, 1.8, 2.0), "gamma_corr_down": (0.9, 0.8, 0.7, 0.6, 0.4),
}

SETS: dict[str, dict[str, tuple]] = {
    "pneumoniamnist": {
        "pixelate": (0.8, 0.7, 0.6, 0.5, 0.4), "jpeg_compression": (50, 30, 15, 10, 7),
        "gaussian_noise": (0.04, 0.05, 0.06, 0.07, 0.08), "speckle_noise": (0.05, 0.07, 0.10, 0.15, 0.20),
        "impulse_noise": (0.005, 0.01, 0.013, 0.017, 0.02), "shot_noise": (300, 200, 150, 100, 80),
        "gaussian_blur": (3, 5, 7, 9, 11), **_RADIOLOGY_LIGHT,
    },
    "breastmnist": {
        "pixelate": (0.30, 0.25, 0.20, 0.15, 0.10), "jpeg_compression": (50, 30, 15, 10, 7),
        "speckle_noise": (0.10, 0.15, 0.20, 0.25, 0.30),
        "motion_blur": ((5, 5), (9, 7), (9, 10), (13, 10), (17, 12)),
        "brightness_up": (1.4, 1.5, 1.6, 1.8, 2.0), "brightness_down": (0.55, 0.5, 0.45, 0.4, 0.3),
        "contrast_down": (0.9, 0.8, 0.7, 0.6, 0.4),
    },
    "chestmnist": {
        "pixelate": (0.30, 0.25, 0.20, 0.15, 0.10), "jpeg_compression": (50, 30, 15, 10, 7),
        "gaussian_noise": (0.04, 0.08, 0.12, 0.18, 0.26), "speckle_noise": (0.05, 0.15, 0.2, 0.35, 0.45),
        "impulse_noise": (0.01, 0.03, 0.06, 0.09, 0.17), "shot_noise": (60, 25, 18, 10, 5),
        "gaussian_blur": (3, 5, 7, 9, 11), **_RADIOLOGY_LIGHT,
    },
    "organamnist": _ORGAN, "organcmnist": _ORGAN, "organsmnist": _ORGAN,
    "tissuemnist": {
        "pixelate": (0.40, 0.30, 0.20, 0.15, 0.10), "jpeg_compression": (25, 20, 15, 10, 7),
        "impulse_noise": (0.01, 0.015, 0.02, 0.025, 0.03), "gaussian_blur": (13, 15, 17, 21, 25),
        "brightness_up": (1.3, 1.4, 1.5, 1.6, 1.7), "brightness_down": (0.8, 0.7, 0.6, 0.5, 0.4),
        "contrast_up": (1.1, 1.2, 1.3, 1.4, 1.6), "contrast_down": (0.9, 0.8, 0.7, 0.6, 0.4),
    },
}
SEVERITIES = 5
SPATIAL = ("gaussian_blur", "motion_blur")  # operations whose parameters are pixels of a 224-pixel image


def base_name(dataset: str | None) -> str | None:
    """A data set's MedMNIST name without its size suffix: ``breastmnist_64`` → ``breastmnist``."""
    if not dataset:
        return None
    stem, _, size = dataset.rpartition("_")
    return stem if stem and size.isdigit() else dataset


def corruption_set(dataset: str | None) -> tuple[str, dict[str, tuple]]:
    """(the set's name, corruption → five parameters) for a data set; the generic set when it has none."""
    name = base_name(dataset)
    if name in SETS:
        return name, SETS[name]
    return GENERIC, SETS[GENERIC_PARAMETERS]
