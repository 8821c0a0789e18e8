"""The jobs behind the commands: one pass through the flow per command (probe and
calibration read once, in :mod:`advisor.app.environment`), then recommend, estimate and
export; the bounds on what a user can type (:mod:`advisor.app.limits`)."""
