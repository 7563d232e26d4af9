"""Calibrate a deployed bundle (density model, conformal sets, abstention thresholds) through
the device runtime, and the `edgeuq calibrate` / `edgeuq diagnose` commands."""
from .fit import DENSITY_FILE, CalibrationOptions, CalibrationResult, calibrate_bundle
from .scores import WindowScores, score_windows, trunk_pooled

__all__ = ["CalibrationOptions", "CalibrationResult", "calibrate_bundle", "DENSITY_FILE", "WindowScores",
           "score_windows", "trunk_pooled"]
